//! Signing keys made fresh in tests: RSA, ECDSA (P-256, P-384) and Ed25519, each
//! with its public key as PEM (for `client.token.*_public_key`) and as a JWK (for a
//! JWKS endpoint), and tokens signed with them the way an identity provider would.
//!
//! ECDSA and Ed25519 keys come from `ring`, which jsonwebtoken already builds on;
//! RSA keys from the `rsa` crate. RSA generation is slow, so one 2048-bit key is
//! made per test process and shared.

use std::sync::OnceLock;

use anyhow::Context as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use serde_json::{json, Value};

/// A key pair that signs tokens, with its public halves.
#[derive(Clone)]
pub struct TestKey {
    /// The `kid` put in token headers and in the JWK.
    pub kid: String,
    /// The algorithm [`TestKey::sign`] uses.
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// `-----BEGIN PUBLIC KEY-----` (SPKI).
    pub public_pem: String,
    /// The public key as a JWK with `kid` (no `alg`, as many providers publish).
    pub jwk: Value,
}

/// DER prefixes of SubjectPublicKeyInfo, followed by the raw public key.
const SPKI_P256: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";
const SPKI_P384: &str = "3076301006072a8648ce3d020106052b81040022036200";
const SPKI_ED25519: &str = "302a300506032b6570032100";

impl TestKey {
    /// The process-wide RSA key (RS256 by default; sign with RS384/RS512 through
    /// [`TestKey::sign_as`]).
    ///
    /// # Errors
    /// Fails when key generation or encoding fails.
    pub fn rsa(kid: &str) -> anyhow::Result<TestKey> {
        static RSA: OnceLock<(String, String, Value)> = OnceLock::new();
        let (private_pem, public_pem, jwk) = match RSA.get() {
            Some(v) => v.clone(),
            None => {
                let made = make_rsa()?;
                RSA.get_or_init(|| made).clone()
            }
        };
        let mut jwk = jwk;
        jwk["kid"] = json!(kid);
        Ok(TestKey {
            kid: kid.to_owned(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(private_pem.as_bytes())
                .context("RSA private key")?,
            public_pem,
            jwk,
        })
    }

    /// A new P-256 key (ES256).
    ///
    /// # Errors
    /// Fails when the system random source fails.
    pub fn p256(kid: &str) -> anyhow::Result<TestKey> {
        make_ec(
            kid,
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            Algorithm::ES256,
            "P-256",
            SPKI_P256,
        )
    }

    /// A new P-384 key (ES384).
    ///
    /// # Errors
    /// Fails when the system random source fails.
    pub fn p384(kid: &str) -> anyhow::Result<TestKey> {
        make_ec(
            kid,
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            Algorithm::ES384,
            "P-384",
            SPKI_P384,
        )
    }

    /// A new Ed25519 key (EdDSA).
    ///
    /// # Errors
    /// Fails when the system random source fails.
    pub fn ed25519(kid: &str) -> anyhow::Result<TestKey> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("Ed25519 key generation failed"))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("Ed25519 key parse failed"))?;
        let public = pair.public_key().as_ref().to_vec();
        Ok(TestKey {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            public_pem: spki_pem(SPKI_ED25519, &public),
            jwk: json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&public),
            }),
        })
    }

    /// Signs `claims` with this key's algorithm and `kid`.
    ///
    /// # Errors
    /// Fails when the claims cannot be encoded.
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        self.sign_as(self.alg, claims)
    }

    /// Signs with another algorithm of the same family (RS384 with the RSA key).
    ///
    /// # Errors
    /// Fails when the algorithm does not fit the key.
    pub fn sign_as(&self, alg: Algorithm, claims: &Value) -> anyhow::Result<String> {
        let mut header = Header::new(alg);
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    /// Signs with a header of the caller's making (to add `jku`, drop `kid`, …).
    ///
    /// # Errors
    /// Fails when the header's algorithm does not fit the key.
    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> anyhow::Result<String> {
        encode(header, claims, &self.encoding).context("signing token")
    }

    /// A JWK set holding these keys.
    pub fn jwks(keys: &[&TestKey]) -> Value {
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }
}

fn make_rsa() -> anyhow::Result<(String, String, Value)> {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
    use rsa::traits::PublicKeyParts as _;
    let private =
        rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).context("RSA key generation")?;
    let public = rsa::RsaPublicKey::from(&private);
    let private_pem = private
        .to_pkcs1_pem(LineEnding::LF)
        .context("RSA private PEM")?
        .to_string();
    let public_pem = public
        .to_public_key_pem(LineEnding::LF)
        .context("RSA public PEM")?;
    let jwk = json!({
        "kty": "RSA",
        "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
    });
    Ok((private_pem, public_pem, jwk))
}

fn make_ec(
    kid: &str,
    alg: &'static signature::EcdsaSigningAlgorithm,
    jwt_alg: Algorithm,
    crv: &str,
    spki_prefix: &str,
) -> anyhow::Result<TestKey> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng)
        .map_err(|_| anyhow::anyhow!("ECDSA key generation failed"))?;
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("ECDSA key parse failed"))?;
    // Uncompressed point: 0x04, then X and Y of equal length.
    let point = pair.public_key().as_ref().to_vec();
    let half = (point.len() - 1) / 2;
    Ok(TestKey {
        kid: kid.to_owned(),
        alg: jwt_alg,
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        public_pem: spki_pem(spki_prefix, &point),
        jwk: json!({
            "kty": "EC",
            "crv": crv,
            "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..=half]),
            "y": URL_SAFE_NO_PAD.encode(&point[1 + half..]),
        }),
    })
}

fn spki_pem(prefix_hex: &str, key: &[u8]) -> String {
    let mut der: Vec<u8> = (0..prefix_hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&prefix_hex[i..i + 2], 16).ok())
        .collect();
    der.extend_from_slice(key);
    let body = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

/// A token with any header and an HMAC signature over it, for headers jsonwebtoken
/// will not produce (`alg: none` needs no signature at all: pass `None`).
pub fn raw_token(header: &Value, claims: &Value, hmac_secret: Option<&[u8]>) -> String {
    let head = URL_SAFE_NO_PAD.encode(header.to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let message = format!("{head}.{body}");
    let signature = match hmac_secret {
        Some(secret) => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, message.as_bytes()).as_ref())
        }
        None => String::new(),
    };
    format!("{message}.{signature}")
}

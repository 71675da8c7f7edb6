//! Token verification with real keys: every algorithm against its configured key,
//! the algorithm pinning, and the JWKS cache against a real HTTP endpoint.

use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};
use tidings::auth::jwks::JwksCache;
use tidings::auth::{unix_now, TokenError, TokenVerifier};
use tidings::config::TokenConfig;
use tidings_testkit::keys::{raw_token, TestKey};
use tidings_testkit::stub::JsonStub;

const SECRET: &str = "tokens-test-secret-of-32-bytes-at-least";

fn claims(user: &str) -> Value {
    json!({ "sub": user, "exp": unix_now() + 300 })
}

fn verifier(cfg: TokenConfig) -> TokenVerifier {
    TokenVerifier::new(&cfg, "client.token", false).expect("valid token config")
}

async fn user_of(v: &TokenVerifier, token: &str) -> Result<String, TokenError> {
    v.verify_connect(token).await.map(|c| c.sub)
}

#[tokio::test]
async fn every_algorithm_verifies_with_its_configured_key() -> anyhow::Result<()> {
    let rsa = TestKey::rsa("r")?;
    let p256 = TestKey::p256("e")?;
    let p384 = TestKey::p384("e3")?;
    let ed = TestKey::ed25519("d")?;
    for (cfg, key, algs) in [
        (
            TokenConfig {
                rsa_public_key: rsa.public_pem.clone(),
                ..Default::default()
            },
            &rsa,
            vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
        ),
        (
            TokenConfig {
                ecdsa_public_key: p256.public_pem.clone(),
                ..Default::default()
            },
            &p256,
            vec![Algorithm::ES256],
        ),
        (
            TokenConfig {
                ecdsa_public_key: p384.public_pem.clone(),
                ..Default::default()
            },
            &p384,
            vec![Algorithm::ES384],
        ),
        (
            TokenConfig {
                ed25519_public_key: ed.public_pem.clone(),
                ..Default::default()
            },
            &ed,
            vec![Algorithm::EdDSA],
        ),
    ] {
        let v = verifier(cfg);
        assert_eq!(v.static_algorithms(), algs);
        for alg in algs {
            let token = key.sign_as(alg, &claims("42"))?;
            assert_eq!(user_of(&v, &token).await, Ok("42".into()), "{alg:?}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn algorithms_outside_the_configured_keys_are_rejected() -> anyhow::Result<()> {
    let rsa = TestKey::rsa("r")?;
    let p256 = TestKey::p256("e")?;
    let p384 = TestKey::p384("e3")?;
    let ed = TestKey::ed25519("d")?;
    let only_rsa = verifier(TokenConfig {
        rsa_public_key: rsa.public_pem.clone(),
        ..Default::default()
    });
    for token in [
        p256.sign(&claims("1"))?,
        ed.sign(&claims("1"))?,
        tidings_testkit::hs256_token(SECRET, "1", None)?,
    ] {
        assert_eq!(user_of(&only_rsa, &token).await, Err(TokenError::Invalid));
    }
    // A P-256 key enables ES256 only: an ES384 token is refused before its
    // signature is looked at.
    let only_p256 = verifier(TokenConfig {
        ecdsa_public_key: p256.public_pem.clone(),
        ..Default::default()
    });
    assert_eq!(
        user_of(&only_p256, &p384.sign(&claims("1"))?).await,
        Err(TokenError::Invalid)
    );
    // The right algorithm with a key that is not the configured one.
    let other = TestKey::p256("e")?;
    assert_eq!(
        user_of(&only_p256, &other.sign(&claims("1"))?).await,
        Err(TokenError::Invalid)
    );
    Ok(())
}

#[tokio::test]
async fn rsa_public_key_used_as_hmac_secret_is_rejected() -> anyhow::Result<()> {
    let rsa = TestKey::rsa("r")?;
    // The classic confusion attack: HS256 keyed with the (public) PEM text.
    let forged = raw_token(
        &json!({ "alg": "HS256", "typ": "JWT" }),
        &claims("admin"),
        Some(rsa.public_pem.as_bytes()),
    );
    let rsa_only = verifier(TokenConfig {
        rsa_public_key: rsa.public_pem.clone(),
        ..Default::default()
    });
    assert_eq!(user_of(&rsa_only, &forged).await, Err(TokenError::Invalid));
    // With an HMAC secret configured too, HS256 is checked against that secret only.
    let both = verifier(TokenConfig {
        rsa_public_key: rsa.public_pem.clone(),
        hmac_secret_key: SECRET.into(),
        ..Default::default()
    });
    assert_eq!(user_of(&both, &forged).await, Err(TokenError::Invalid));
    assert_eq!(
        user_of(&both, &rsa.sign(&claims("7"))?).await,
        Ok("7".into())
    );
    Ok(())
}

#[tokio::test]
async fn alg_none_and_tampered_tokens_are_rejected() -> anyhow::Result<()> {
    let v = verifier(TokenConfig {
        hmac_secret_key: SECRET.into(),
        ..Default::default()
    });
    for alg in ["none", "None", "NONE", ""] {
        let token = raw_token(&json!({ "alg": alg }), &claims("1"), None);
        assert_eq!(user_of(&v, &token).await, Err(TokenError::Invalid), "{alg}");
    }
    let good = raw_token(
        &json!({ "alg": "HS256" }),
        &claims("1"),
        Some(SECRET.as_bytes()),
    );
    assert_eq!(user_of(&v, &good).await, Ok("1".into()));
    // Same signature, payload changed to another user.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = raw_token(&json!({}), &claims("2"), None)
        .split('.')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        user_of(&v, &parts.join(".")).await,
        Err(TokenError::Invalid)
    );
    Ok(())
}

#[tokio::test]
async fn jwks_keys_of_every_type_verify_and_are_fetched_once() -> anyhow::Result<()> {
    let rsa = TestKey::rsa("rsa-1")?;
    let p256 = TestKey::p256("ec-1")?;
    let p384 = TestKey::p384("ec-2")?;
    let ed = TestKey::ed25519("okp-1")?;
    let endpoint = JsonStub::start(&TestKey::jwks(&[&rsa, &p256, &p384, &ed])).await?;
    let v = verifier(TokenConfig {
        jwks_public_endpoint: endpoint.url().to_owned(),
        ..Default::default()
    });
    for (key, alg) in [
        (&rsa, Algorithm::RS256),
        (&rsa, Algorithm::RS512),
        (&p256, Algorithm::ES256),
        (&p384, Algorithm::ES384),
        (&ed, Algorithm::EdDSA),
    ] {
        let token = key.sign_as(alg, &claims("u"))?;
        assert_eq!(user_of(&v, &token).await, Ok("u".into()), "{alg:?}");
    }
    assert_eq!(endpoint.hits(), 1, "one fetch serves every known kid");
    // The key's type decides the algorithm: an ES256 header on the RSA kid fails.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("rsa-1".into());
    let wrong = p256.sign_with_header(&header, &claims("u"))?;
    assert_eq!(user_of(&v, &wrong).await, Err(TokenError::Invalid));
    // No kid, no key.
    let no_kid = p256.sign_with_header(&Header::new(Algorithm::ES256), &claims("u"))?;
    assert_eq!(user_of(&v, &no_kid).await, Err(TokenError::Invalid));
    // HMAC is not available through JWKS, whatever the header says.
    let hs = raw_token(
        &json!({ "alg": "HS256", "kid": "rsa-1" }),
        &claims("u"),
        Some(rsa.public_pem.as_bytes()),
    );
    assert_eq!(user_of(&v, &hs).await, Err(TokenError::Invalid));
    Ok(())
}

#[tokio::test]
async fn urls_in_token_headers_are_never_fetched() -> anyhow::Result<()> {
    let trusted = TestKey::p256("trusted")?;
    let attacker = TestKey::p256("evil")?;
    let endpoint = JsonStub::start(&TestKey::jwks(&[&trusted])).await?;
    // The attacker's own key set, which a careless verifier would load from `jku`.
    let trap = JsonStub::start(&TestKey::jwks(&[&attacker])).await?;
    let v = verifier(TokenConfig {
        jwks_public_endpoint: endpoint.url().to_owned(),
        ..Default::default()
    });
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("evil".into());
    header.jku = Some(trap.url().to_owned());
    header.x5u = Some(trap.url().to_owned());
    let token = attacker.sign_with_header(&header, &claims("admin"))?;
    assert_eq!(user_of(&v, &token).await, Err(TokenError::Invalid));
    assert_eq!(trap.hits(), 0, "the URL from the token was fetched");
    assert_eq!(endpoint.hits(), 1, "the configured endpoint was asked");
    Ok(())
}

#[tokio::test]
async fn unknown_kid_refetches_and_rotated_keys_are_picked_up() -> anyhow::Result<()> {
    let old = TestKey::ed25519("2024")?;
    let new = TestKey::ed25519("2025")?;
    let endpoint = JsonStub::start(&TestKey::jwks(&[&old])).await?;
    let cache =
        JwksCache::with_intervals(endpoint.url(), Duration::ZERO, Duration::from_secs(3600))
            .map_err(anyhow::Error::msg)?;
    assert!(cache.key("2024").await.is_some());
    assert!(cache.key("2025").await.is_none());
    assert_eq!(endpoint.hits(), 2);
    endpoint.set_body(&TestKey::jwks(&[&old, &new]));
    assert!(cache.key("2025").await.is_some(), "rotated key found");
    assert_eq!(endpoint.hits(), 3);
    // Known kids are served from the cache.
    assert!(cache.key("2024").await.is_some());
    assert_eq!(endpoint.hits(), 3);
    Ok(())
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_one_fetch_per_interval() -> anyhow::Result<()> {
    let key = TestKey::p256("real")?;
    let endpoint = JsonStub::start(&TestKey::jwks(&[&key])).await?;
    let cache = std::sync::Arc::new(
        JwksCache::with_intervals(
            endpoint.url(),
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        )
        .map_err(anyhow::Error::msg)?,
    );
    let lookups: Vec<_> = (0..50)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.key(&format!("made-up-{i}")).await.is_some() })
        })
        .collect();
    for lookup in lookups {
        assert!(!lookup.await?);
    }
    assert!(cache.key("real").await.is_some());
    assert_eq!(endpoint.hits(), 1, "fetches: {}", endpoint.hits());
    Ok(())
}

#[tokio::test]
async fn min_interval_lets_a_later_refetch_through() -> anyhow::Result<()> {
    let old = TestKey::p256("a")?;
    let new = TestKey::p256("b")?;
    let endpoint = JsonStub::start(&TestKey::jwks(&[&old])).await?;
    let interval = Duration::from_millis(300);
    let cache = JwksCache::with_intervals(endpoint.url(), interval, Duration::from_secs(3600))
        .map_err(anyhow::Error::msg)?;
    let started = tokio::time::Instant::now();
    assert!(cache.key("a").await.is_some());
    endpoint.set_body(&TestKey::jwks(&[&old, &new]));
    // Poll with a deadline: within the interval the new kid stays unknown, after
    // it one more fetch finds it.
    let deadline = started + Duration::from_secs(5);
    let found_at = loop {
        if cache.key("b").await.is_some() {
            break tokio::time::Instant::now();
        }
        assert!(tokio::time::Instant::now() < deadline, "never refetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(found_at.duration_since(started) >= interval);
    assert_eq!(endpoint.hits(), 2);
    Ok(())
}

#[tokio::test]
async fn stale_keys_are_kept_when_the_endpoint_goes_away() -> anyhow::Result<()> {
    let key = TestKey::rsa("k")?;
    let endpoint = JsonStub::start(&TestKey::jwks(&[&key])).await?;
    // TTL zero: every lookup wants a fresh set.
    let cache = JwksCache::with_intervals(endpoint.url(), Duration::ZERO, Duration::ZERO)
        .map_err(anyhow::Error::msg)?;
    assert!(cache.key("k").await.is_some());
    drop(endpoint);
    assert!(cache.key("k").await.is_some(), "stale key served");
    assert_eq!(cache.fetches(), 2);
    Ok(())
}

#[tokio::test]
async fn oversized_key_sets_are_refused_and_key_count_is_bounded() -> anyhow::Result<()> {
    let key = TestKey::p256("k")?;
    let mut many: Vec<Value> = (0..200)
        .map(|i| {
            let mut jwk = key.jwk.clone();
            jwk["kid"] = json!(format!("k{i}"));
            jwk
        })
        .collect();
    many.push(key.jwk.clone());
    let endpoint = JsonStub::start(&json!({ "keys": many })).await?;
    let cache = JwksCache::new(endpoint.url()).map_err(anyhow::Error::msg)?;
    assert!(cache.key("k0").await.is_some());
    assert!(
        cache.key("k199").await.is_none(),
        "keys past the bound are dropped"
    );
    let huge = JsonStub::start(&json!({ "keys": [], "pad": "x".repeat(2 * 1024 * 1024) })).await?;
    let cache = JwksCache::new(huge.url()).map_err(anyhow::Error::msg)?;
    assert!(cache.key("k").await.is_none());
    Ok(())
}

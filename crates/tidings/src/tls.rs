//! TLS for the HTTP listeners, with rustls and its ring provider (no OpenSSL).
//!
//! [`server_config`] turns Centrifugo's TLS object ([`TlsConfig`]) into a rustls
//! server configuration for [`crate::server::Endpoint::with_tls`]. Each PEM field may
//! hold the PEM text, the PEM text in base64, or a file path, tried in that order, as
//! Centrifugo does; reading that value is [`crate::config::pem`]'s part, parsing it
//! into certificates and keys is this module's. It depends on the configuration only.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

pub use rustls;

use crate::config::pem::{pem_bytes, PemReadError};
use crate::config::TlsConfig;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM field is neither PEM text, base64 PEM, nor a readable file.
    #[error(transparent)]
    Read(#[from] PemReadError),
    /// The PEM data holds no usable item of the expected kind.
    #[error("{field}: {what}")]
    Pem { field: &'static str, what: String },
    /// rustls refused the certificate, the key, or the pair.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA list could not be turned into a verifier.
    #[error("client_ca_pem: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

/// The ALPN protocol Tidings serves: HTTP/1.1 only, which WebSocket upgrades need.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Builds the rustls server configuration for `tls`.
///
/// # Errors
/// [`TlsError`] when a PEM field cannot be read or parsed, the key does not match the
/// certificate, or the client CA list is unusable.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates("cert_pem", &tls.cert_pem)?;
    let key_pem = pem_bytes("key_pem", &tls.key_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        field: "key_pem",
        what: format!("no private key found ({e})"),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if tls.client_ca_pem.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates("client_ca_pem", &tls.client_ca_pem)? {
            roots.add(cert)?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The private key in a PEM field (PKCS#8, PKCS#1 or SEC1).
#[cfg_attr(not(feature = "nats"), allow(dead_code))] // only the NATS engine's client TLS
pub(crate) fn private_key(
    field: &'static str,
    value: &str,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = pem_bytes(field, value)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        field,
        what: format!("no private key found ({e})"),
    })
}

/// Every certificate in a PEM field; at least one.
pub(crate) fn certificates(
    field: &'static str,
    value: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = pem_bytes(field, value)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            field,
            what: format!("bad certificate PEM ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            field,
            what: "no certificate found".into(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_certificate_is_a_typed_error() {
        let tls = TlsConfig {
            enabled: true,
            cert_pem: "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n".into(),
            client_ca_pem: String::new(),
        };
        assert!(server_config(&tls).is_err());
    }
}

//! PEM values in the configuration (`http_server.tls`, `engine.redis.tls`,
//! `engine.nats.tls`). Each field holds the PEM text itself, the PEM text in base64,
//! or the path of a PEM file, tried in that order, as Centrifugo does. Turning the
//! value into bytes is loading data, so it lives here: validation checks that a file
//! is readable, and [`crate::tls`] and the engines parse what it returns.

use std::path::Path;

use base64::Engine as _;

/// A PEM field that is neither PEM text, base64 PEM, nor a readable file.
#[derive(Debug, thiserror::Error)]
#[error("{field}: cannot read PEM file {path}: {source}")]
pub struct PemReadError {
    /// The configuration key, for the message.
    pub field: &'static str,
    /// The value, taken as a path since it is no PEM text.
    pub path: String,
    pub source: std::io::Error,
}

/// The PEM bytes a field stands for: the text itself, base64 of it, or a file.
///
/// # Errors
/// [`PemReadError`] when the value is taken as a path and the file cannot be read.
pub fn pem_bytes(field: &'static str, value: &str) -> Result<Vec<u8>, PemReadError> {
    const MARKER: &str = "-----BEGIN";
    if value.contains(MARKER) {
        return Ok(value.as_bytes().to_vec());
    }
    let compact: String = value.split_whitespace().collect();
    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&compact) {
        if decoded
            .windows(MARKER.len())
            .any(|w| w == MARKER.as_bytes())
        {
            return Ok(decoded);
        }
    }
    std::fs::read(Path::new(value)).map_err(|source| PemReadError {
        field,
        path: value.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_field_takes_text_base64_or_path() {
        let text = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_bytes("cert_pem", text).unwrap(), text.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(text);
        assert_eq!(pem_bytes("cert_pem", &b64).unwrap(), text.as_bytes());
        let path = std::env::temp_dir().join(format!("tidings-pem-{}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        assert_eq!(
            pem_bytes("cert_pem", path.to_str().unwrap()).unwrap(),
            text.as_bytes()
        );
        std::fs::remove_file(&path).ok();
        let err = pem_bytes("key_pem", "/nonexistent/key.pem").unwrap_err();
        assert!(err.to_string().contains("key_pem"), "{err}");
    }
}

//! Keys from a JSON Web Key Set endpoint, cached by `kid`.
//!
//! The endpoint is the configured URL and nothing else: a token's `jku`, `x5u` or
//! embedded `jwk` is never looked at, redirects are not followed, and the response
//! is bounded in size and in the number of keys kept. A token names the key it was
//! signed with by `kid`; an unknown `kid` triggers a refetch, at most once per
//! [`JwksCache::min_refresh_interval`], so a flood of made-up `kid`s costs the
//! endpoint one request per interval. Keys are refreshed after [`KEYS_TTL`] even when
//! known, and kept (stale) when a refresh fails, so an endpoint outage does not lock
//! everyone out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;
use tokio::time::Instant;

/// How long fetched keys are used before the endpoint is asked again (Centrifugo
/// caches for an hour too).
pub const KEYS_TTL: Duration = Duration::from_secs(3600);
/// Least time between two fetches, whatever asks for them.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Keys kept from one response; the rest are ignored.
pub const MAX_KEYS: usize = 64;
/// Largest response body read, in bytes.
pub const MAX_BODY: usize = 1024 * 1024;
/// Time allowed for one request, connect to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests per fetch (the first and one retry).
pub const FETCH_ATTEMPTS: usize = 2;

/// One usable key and the algorithms it verifies.
pub struct JwkKey {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

/// The cache. See the module docs.
pub struct JwksCache {
    url: reqwest::Url,
    http: reqwest::Client,
    min_refresh_interval: Duration,
    ttl: Duration,
    /// A plain mutex: held for map reads and swaps only, never across an await.
    state: Mutex<State>,
    /// Serialises fetches, so concurrent misses wait for one request instead of each
    /// sending their own. Async, because it is held across the request.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, Arc<JwkKey>>,
    /// When the keys above were fetched.
    fetched_at: Option<Instant>,
    /// When a fetch was last started, successful or not.
    attempted_at: Option<Instant>,
    /// Successful and failed fetches, for tests and logs.
    fetches: u64,
}

impl JwksCache {
    /// A cache for `url` with the default intervals.
    ///
    /// # Errors
    /// A message when `url` is not an absolute http(s) URL, is a template
    /// (`{{...}}`: dynamic endpoints are not supported), or no HTTP client can be
    /// built.
    pub fn new(url: &str) -> Result<Self, String> {
        Self::with_intervals(url, MIN_REFRESH_INTERVAL, KEYS_TTL)
    }

    /// A cache with chosen intervals (tests use short ones).
    ///
    /// # Errors
    /// As [`JwksCache::new`].
    pub fn with_intervals(
        url: &str,
        min_refresh_interval: Duration,
        ttl: Duration,
    ) -> Result<Self, String> {
        if url.contains("{{") {
            return Err(
                "templated (dynamic) JWKS endpoints are not supported: the URL would come from unverified claims"
                    .into(),
            );
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("the URL must be http:// or https://".into());
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Self {
            url: parsed,
            http,
            min_refresh_interval,
            ttl,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The configured endpoint.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// How many fetches were started so far.
    pub fn fetches(&self) -> u64 {
        self.state.lock().fetches
    }

    /// The least time between two fetches.
    pub fn min_refresh_interval(&self) -> Duration {
        self.min_refresh_interval
    }

    /// The key with this `kid`, fetching the set when the kid is unknown or the keys
    /// are older than the TTL (rate-limited; see the module docs).
    pub async fn key(&self, kid: &str) -> Option<Arc<JwkKey>> {
        if let Some(key) = self.cached(kid, false) {
            return Some(key);
        }
        let _one_fetch = self.fetching.lock().await;
        // Whoever held the lock before may have fetched what we need.
        if let Some(key) = self.cached(kid, false) {
            return Some(key);
        }
        let may_fetch = {
            let mut state = self.state.lock();
            let now = Instant::now();
            let allowed = state
                .attempted_at
                .is_none_or(|at| now.duration_since(at) >= self.min_refresh_interval);
            if allowed {
                state.attempted_at = Some(now);
                state.fetches += 1;
            }
            allowed
        };
        if may_fetch {
            match self.fetch().await {
                Ok(keys) => {
                    tracing::debug!(url = %self.url, keys = keys.len(), "JWKS fetched");
                    let mut state = self.state.lock();
                    state.keys = keys;
                    state.fetched_at = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the keys fetched before");
                }
            }
        }
        self.cached(kid, true)
    }

    /// A cached key; stale ones only when `stale_ok`.
    fn cached(&self, kid: &str, stale_ok: bool) -> Option<Arc<JwkKey>> {
        let state = self.state.lock();
        let fresh = state.fetched_at.is_some_and(|at| at.elapsed() < self.ttl);
        if !fresh && !stale_ok {
            return None;
        }
        state.keys.get(kid).cloned()
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<JwkKey>>, String> {
        let mut last_error = String::new();
        for _ in 0..FETCH_ATTEMPTS {
            match self.fetch_once().await {
                Ok(keys) => return Ok(keys),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    async fn fetch_once(&self) -> Result<HashMap<String, Arc<JwkKey>>, String> {
        let mut response = self
            .http
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP status {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(format!("response larger than {MAX_BODY} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("response larger than {MAX_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse_set(&body)
    }
}

/// Parses a key set, keeping the usable signature keys that have a `kid`. Keys of
/// other types, curves or uses are skipped one by one rather than failing the set.
///
/// # Errors
/// A message when the body is not a JSON object with a `keys` array.
pub fn parse_set(body: &[u8]) -> Result<HashMap<String, Arc<JwkKey>>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
    let mut keys = HashMap::new();
    for value in set.keys {
        if keys.len() >= MAX_KEYS {
            tracing::warn!("JWKS has more than {MAX_KEYS} keys; the rest are ignored");
            break;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else {
            continue;
        };
        if let Some(key) = usable(&jwk) {
            keys.insert(kid, Arc::new(key));
        }
    }
    Ok(keys)
}

/// The key and its algorithms, or `None` for a key Tidings will not use: symmetric
/// (`oct`) keys, encryption keys, other curves, or an `alg` outside the key's family.
fn usable(jwk: &Jwk) -> Option<JwkKey> {
    use Algorithm::*;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![EdDSA],
            _ => return None,
        },
        AlgorithmParameters::OctetKey(_) => return None,
    };
    // `alg` is optional in a JWK; when present it narrows the family to one.
    let algorithms = match jwk.common.key_algorithm {
        None => family,
        Some(declared) => {
            let alg = match declared {
                KeyAlgorithm::RS256 => RS256,
                KeyAlgorithm::RS384 => RS384,
                KeyAlgorithm::RS512 => RS512,
                KeyAlgorithm::ES256 => ES256,
                KeyAlgorithm::ES384 => ES384,
                KeyAlgorithm::EdDSA => EdDSA,
                _ => return None,
            };
            if !family.contains(&alg) {
                return None;
            }
            vec![alg]
        }
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(JwkKey { key, algorithms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unusable_keys_are_skipped_not_fatal() {
        let body = json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p256", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "p256-as-es384", "crv": "P-256", "alg": "ES384",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "enc", "crv": "P-256", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "weird", "kid": "w"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]});
        let keys = parse_set(body.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, vec!["ed", "p256"]);
        assert_eq!(keys["p256"].algorithms, vec![Algorithm::ES256]);
        assert_eq!(keys["ed"].algorithms, vec![Algorithm::EdDSA]);
        assert!(parse_set(b"[]").is_err());
    }

    #[test]
    fn templates_and_other_schemes_are_refused() {
        assert!(JwksCache::new("https://idp/{{realm}}/certs").is_err());
        assert!(JwksCache::new("file:///etc/keys.json").is_err());
        assert!(JwksCache::new("not a url").is_err());
        assert!(JwksCache::new("https://idp.example.com/certs").is_ok());
    }
}

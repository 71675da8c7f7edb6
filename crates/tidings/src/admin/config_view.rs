//! The configuration in effect, as the admin UI shows it: every key, with the
//! secrets masked.
//!
//! A value is masked by the name of its key, wherever the key sits (so a secret
//! inside a namespace, a proxy or a webhook is caught too): API keys, token
//! secrets, passwords, private TLS keys, and the values of static proxy headers
//! (which often carry an `Authorization`). Addresses with a password inside
//! (`redis://user:pass@host`, `nats://user:pass@host`) keep everything but the
//! password.

use serde_json::Value;

use crate::Config;

/// What a masked value is replaced with.
pub const MASK: &str = "••••••";

/// Key names whose non-empty string values are secret.
const SECRET_KEYS: [&str; 6] = [
    "key",
    "secret",
    "password",
    "hmac_secret_key",
    "key_pem",
    "api_key",
];

/// Keys whose every value (an object's values) is secret.
const SECRET_MAPS: [&str; 1] = ["static_headers"];

/// The configuration as JSON, secrets masked.
pub fn masked(config: &Config) -> Value {
    let mut value = serde_json::to_value(config).unwrap_or(Value::Null);
    mask(&mut value, None);
    value
}

fn mask(value: &mut Value, key: Option<&str>) {
    match value {
        Value::Object(map) => {
            let all = key.is_some_and(|k| SECRET_MAPS.contains(&k));
            for (name, child) in map.iter_mut() {
                if all {
                    hide(child);
                } else {
                    mask(child, Some(name));
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                mask(item, key);
            }
        }
        Value::String(text) => {
            if key.is_some_and(|k| SECRET_KEYS.contains(&k)) {
                hide(value);
            } else if text.contains('@') {
                // One URL, or several comma-separated (a NATS cluster).
                let shown: Vec<String> = text
                    .split(',')
                    .map(|part| without_password(part).unwrap_or_else(|| part.to_owned()))
                    .collect();
                *text = shown.join(",");
            }
        }
        _ => {}
    }
}

/// Replaces a non-empty value with [`MASK`]; an empty one stays empty, so the UI
/// still shows that nothing is set.
fn hide(value: &mut Value) {
    let empty = match value {
        Value::String(s) => s.is_empty(),
        Value::Null => true,
        _ => false,
    };
    if !empty {
        *value = Value::String(MASK.into());
    }
}

/// `scheme://user:password@host…` with the password masked, or `None` when the
/// text is no such URL.
fn without_password(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let (userinfo, host) = authority.rsplit_once('@')?;
    let user = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:{MASK}"),
        // A lone token before `@` (`redis://token@host`) is a password too.
        None => MASK.to_string(),
    };
    Some(format!(
        "{scheme}://{user}@{host}{}",
        &rest[authority_end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_the_rest_is_kept() {
        let mut cfg = Config::default();
        cfg.http_api.key = "k3y-of-the-api".into();
        cfg.client.token.hmac_secret_key = "h0ac-secret".into();
        cfg.admin.password = "pa55word".into();
        cfg.admin.secret = "adm1n-s3cret".into();
        cfg.engine.redis.password = "redis-pw".into();
        cfg.engine.redis.address = vec!["redis://user:hunter2@10.0.0.1:6379/0".into()];
        cfg.engine.nats.url = "nats://tok@127.0.0.1:4222,nats://a:b2b2@127.0.0.2:4222".into();
        cfg.http_server.port = 8123;
        let shown = masked(&cfg).to_string();
        for secret in [
            "k3y-of-the-api",
            "h0ac-secret",
            "pa55word",
            "adm1n-s3cret",
            "redis-pw",
            "hunter2",
            "tok@",
            "b2b2",
        ] {
            assert!(!shown.contains(secret), "{secret} is shown: {shown}");
        }
        assert!(shown.contains("redis://user:••••••@10.0.0.1:6379/0"));
        assert!(shown.contains("8123"));
        let value = masked(&cfg);
        assert_eq!(value["admin"]["password"], MASK);
        // Unset secrets stay visibly unset.
        assert_eq!(value["client"]["subscription_token"]["hmac_secret_key"], "");
    }
}

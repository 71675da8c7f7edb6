//! The key tree of the serialised configuration, walked two ways: `TIDINGS_*`
//! environment overrides (one variable per key path), and the keys a file holds that
//! the configuration does not know (reported, not refused).

use std::collections::BTreeMap;

use super::{Config, ConfigError, Namespace};

/// Prefix of environment overrides: `TIDINGS_HTTP_API_KEY` sets `http_api.key`.
pub const ENV_PREFIX: &str = "TIDINGS_";

/// Turns `TIDINGS_*` variables into a nested map of overrides.
///
/// figment's own `Env` provider splits names at every `_`, which cannot tell
/// `http_api.key` from `http.api.key`. Instead we list every key path the config has
/// (from the serialised base), derive each one's variable name, and look those up.
/// Values are typed after the base value: booleans, numbers, strings; arrays take a
/// JSON array or space-separated words; objects and arrays of objects take JSON.
pub(super) fn env_overrides(
    base: &Config,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<serde_json::Value, ConfigError> {
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, v)| k.starts_with(ENV_PREFIX) && !v.is_empty())
        .collect();
    let mut out = serde_json::Map::new();
    if vars.is_empty() {
        return Ok(serde_json::Value::Object(out));
    }
    let tree = serde_json::to_value(base).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let mut leaves = Vec::new();
    collect_leaves(&tree, &mut Vec::new(), &mut leaves);
    for (path, default) in leaves {
        let name = format!("{ENV_PREFIX}{}", path.join("_").to_ascii_uppercase());
        let Some(raw) = vars.get(&name) else { continue };
        let value = typed_env_value(&name, raw, default)?;
        insert_path(&mut out, &path, value);
    }
    Ok(serde_json::Value::Object(out))
}

/// Lists the keys of `loaded` that `known` lacks. Namespaces are checked against the
/// channel options.
pub(super) fn unknown_keys(
    loaded: &serde_json::Value,
    known: &serde_json::Value,
    prefix: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (loaded, known) {
        (Value::Object(l), Value::Object(k)) => {
            for (key, value) in l {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match k.get(key) {
                    Some(known_value) => unknown_keys(value, known_value, &path, out),
                    None => out.push(path),
                }
            }
        }
        (Value::Array(l), Value::Array(k)) => {
            // Arrays of objects (namespaces): every item is checked against the first
            // known item, or against a namespace template when the list is empty.
            let template = k
                .first()
                .cloned()
                .unwrap_or_else(|| serde_json::to_value(Namespace::default()).unwrap_or_default());
            if template.is_object() {
                for (i, item) in l.iter().enumerate() {
                    unknown_keys(item, &template, &format!("{prefix}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn collect_leaves<'a>(
    value: &'a serde_json::Value,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, &'a serde_json::Value)>,
) {
    match value {
        serde_json::Value::Object(map) if !path.is_empty() || !map.is_empty() => {
            for (k, v) in map {
                path.push(k.clone());
                // The namespace options are an object whose keys are config keys too,
                // but the namespace list itself is set as one JSON value.
                if v.is_object() {
                    out.push((path.clone(), v));
                }
                collect_leaves(v, path, out);
                path.pop();
            }
        }
        serde_json::Value::Object(_) => {}
        _ => out.push((path.clone(), value)),
    }
}

fn typed_env_value(
    name: &str,
    raw: &str,
    default: &serde_json::Value,
) -> Result<serde_json::Value, ConfigError> {
    use serde_json::Value;
    let bad = |what: &str| ConfigError::Parse(format!("{name}={raw:?}: expected {what}"));
    Ok(match default {
        Value::Bool(_) => match raw.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" | "yes" | "on" => Value::Bool(true),
            "0" | "f" | "false" | "no" | "off" => Value::Bool(false),
            _ => return Err(bad("a boolean")),
        },
        Value::Number(_) => Value::Number(raw.trim().parse().map_err(|_| bad("a number"))?),
        Value::String(_) => Value::String(raw.to_string()),
        Value::Array(_) if raw.trim_start().starts_with('[') => {
            serde_json::from_str(raw).map_err(|_| bad("a JSON array"))?
        }
        Value::Array(_) => Value::Array(
            raw.split_whitespace()
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        Value::Object(_) | Value::Null => {
            serde_json::from_str(raw).map_err(|_| bad("a JSON value"))?
        }
    })
}

fn insert_path(
    root: &mut serde_json::Map<String, serde_json::Value>,
    path: &[String],
    value: serde_json::Value,
) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = root;
    for key in parents {
        let entry = node
            .entry(key.clone())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if !entry.is_object() {
            *entry = serde_json::Value::Object(Default::default());
        }
        let serde_json::Value::Object(map) = entry else {
            return;
        };
        node = map;
    }
    node.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{tests::env, Config};

    #[test]
    fn env_overrides_keys_with_underscores() {
        let cfg = Config::load(
            None,
            env(&[
                ("TIDINGS_HTTP_API_KEY", "k1"),
                ("TIDINGS_CLIENT_QUEUE_MAX_SIZE", "65536"),
                ("TIDINGS_CLIENT_PING_INTERVAL", "2s"),
                ("TIDINGS_CLIENT_PONG_TIMEOUT", "1s"),
                (
                    "TIDINGS_CLIENT_ALLOWED_ORIGINS",
                    "https://a.test https://b.test",
                ),
                ("TIDINGS_CHANNEL_WITHOUT_NAMESPACE_PRESENCE", "false"),
                ("OTHER_VAR", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.http_api.key, "k1");
        assert_eq!(cfg.client.queue_max_size, 65536);
        assert_eq!(cfg.client.ping_interval, Duration::from_secs(2));
        assert_eq!(cfg.client.allowed_origins.len(), 2);
        assert!(!cfg.channel.without_namespace.presence);
    }

    #[test]
    fn bad_env_value_is_a_clear_error() {
        let err = Config::load(None, env(&[("TIDINGS_CLIENT_INSECURE", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("TIDINGS_CLIENT_INSECURE"), "{err}");
    }

    #[test]
    fn limits_load_from_the_environment() {
        let cfg = Config::load(
            None,
            env(&[
                ("TIDINGS_CLIENT_USER_CONNECTION_LIMIT", "2"),
                ("TIDINGS_CLIENT_CONNECTION_LIMIT", "1000"),
                ("TIDINGS_CLIENT_CONNECTION_RATE_LIMIT", "50"),
                ("TIDINGS_CLIENT_COMMAND_RATE_LIMIT_BURST", "20"),
                ("TIDINGS_CLIENT_COMMAND_RATE_LIMIT_DISCONNECT_AFTER", "0"),
                ("TIDINGS_HTTP_API_MAX_REQUEST_BODY_SIZE", "4096"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.client.user_connection_limit, 2);
        assert_eq!(cfg.client.connection_limit, 1000);
        assert_eq!(cfg.client.connection_rate_limit, 50);
        assert_eq!(cfg.client.command_rate_limit.burst, 20);
        assert_eq!(cfg.client.command_rate_limit.rate, 100);
        assert_eq!(cfg.client.command_rate_limit.disconnect_after, 0);
        assert_eq!(cfg.http_api.max_request_body_size, 4096);
    }
}

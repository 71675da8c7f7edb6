//! docs/configuration.md against the configuration types: every key its tables
//! document must exist, and every key the types have must be documented, so the
//! two cannot drift apart again (issue 20 found four keys out of step).
//!
//! The keys of the types are the leaves of `Config::default()` serialised to JSON;
//! an empty list or map (`client.allowed_origins`, `socketio.namespaces`) is a
//! leaf of its own. A documented row may name an object (`http_server.tls`): its
//! fields are then documented when the row's text names each of them.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{ChannelOptions, Config};

const DOC: &str = include_str!("../../../../docs/configuration.md");

/// One row of a key table: the keys in its first cell, and the whole row.
struct Row {
    keys: Vec<String>,
    text: String,
}

/// The key tables of the "Keys" section, by the `###` heading they sit under.
fn key_tables() -> Vec<(String, Row)> {
    let start = DOC.find("\n## Keys").expect("a Keys section");
    let end = DOC[start + 1..]
        .find("\n## ")
        .map_or(DOC.len(), |at| start + 1 + at);
    let mut heading = String::new();
    let mut rows = Vec::new();
    for line in DOC[start..end].lines() {
        if let Some(title) = line.strip_prefix("### ") {
            heading = title.trim().to_owned();
            continue;
        }
        let Some(first) = line.strip_prefix('|').and_then(|l| l.split('|').next()) else {
            continue;
        };
        let keys: Vec<String> = first
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        if !keys.is_empty() {
            let text = line.to_owned();
            rows.push((heading.clone(), Row { keys, text }));
        }
    }
    rows
}

/// Every path of `value` that is not a non-empty object, with its value.
fn leaves<'a>(value: &'a Value, path: &mut Vec<String>, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                path.push(key.clone());
                leaves(child, path, out);
                path.pop();
            }
        }
        _ => out.push((path.join("."), value)),
    }
}

fn lookup<'a>(tree: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(tree, |node, part| node.get(part))
}

/// Whether the row's text names `field` in backticks, as object rows list
/// their fields (`enabled`, `cert_pem`, …).
fn names_field(row: &Row, field: &str) -> bool {
    row.text.contains(&format!("`{field}`"))
}

#[test]
fn documented_keys_and_config_keys_match() {
    let tree = serde_json::to_value(Config::default()).expect("the config serialises");
    let options = serde_json::to_value(ChannelOptions::default()).expect("options serialise");
    let rows = key_tables();
    let (option_rows, key_rows): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .partition(|(heading, _)| heading == "Channel options");
    let documented_options: BTreeSet<&str> = option_rows
        .iter()
        .flat_map(|(_, row)| row.keys.iter().map(String::as_str))
        .collect();

    // Documented → exists. A trailing `.*` row stands for a group described in
    // words (`client.subscription_token.*`); its object must exist.
    let mut problems = Vec::new();
    for (_, row) in &key_rows {
        for key in &row.keys {
            let key = key.strip_suffix(".*").unwrap_or(key);
            if lookup(&tree, key).is_none() {
                problems.push(format!("documented but not in Config: {key}"));
            }
        }
    }
    for option in &documented_options {
        if options.get(option).is_none() {
            problems.push(format!(
                "documented channel option not in ChannelOptions: {option}"
            ));
        }
    }

    // Exists → documented.
    let documented: BTreeSet<&str> = key_rows
        .iter()
        .flat_map(|(_, row)| row.keys.iter().map(String::as_str))
        .collect();
    let object_rows: Vec<&Row> = key_rows
        .iter()
        .map(|(_, row)| row)
        .filter(|row| {
            row.keys
                .iter()
                .any(|k| lookup(&tree, k).is_some_and(Value::is_object))
        })
        .collect();
    let mut all = Vec::new();
    leaves(&tree, &mut Vec::new(), &mut all);
    for (key, _) in &all {
        if documented.contains(key.as_str()) {
            continue;
        }
        // The channel options of names without a namespace: the options table.
        if let Some(option) = key.strip_prefix("channel.without_namespace.") {
            if !documented_options.contains(option) {
                problems.push(format!("channel option not documented: {option}"));
            }
            continue;
        }
        // Allowed without a row of its own: `client.subscription_token` takes the
        // keys of `client.token` (its row says so, as `client.subscription_token.*`).
        if let Some(field) = key.strip_prefix("client.subscription_token.") {
            if documented.contains("client.subscription_token.*")
                && documented.contains(format!("client.token.{field}").as_str())
            {
                continue;
            }
        }
        // A field of an object documented as a whole, whose row names it.
        let (parent, field) = key.rsplit_once('.').unwrap_or(("", key));
        let covered = object_rows
            .iter()
            .any(|row| row.keys.iter().any(|k| k == parent) && names_field(row, field));
        if !covered {
            problems.push(format!("in Config but not documented: {key}"));
        }
    }
    // Namespace entries take `name` and the channel options (the namespaces row
    // says so); the default has no entry to walk, so the options table stands in.
    let namespaces = key_rows
        .iter()
        .find(|(_, row)| row.keys.iter().any(|k| k == "channel.namespaces"))
        .map(|(_, row)| row);
    if !namespaces.is_some_and(|row| names_field(row, "name")) {
        problems.push("the channel.namespaces row does not document `name`".into());
    }
    for option in options.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !documented_options.contains(option.as_str()) {
            problems.push(format!("channel option not documented: {option}"));
        }
    }
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "docs/configuration.md and the config types disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_check_sees_a_missing_key() {
    // The parser must find the tables at all, or the test above would pass on
    // nothing: a few keys from different sections.
    let rows = key_tables();
    let keys: BTreeSet<&str> = rows
        .iter()
        .flat_map(|(_, row)| row.keys.iter().map(String::as_str))
        .collect();
    for key in [
        "http_server.header_read_timeout",
        "http_server.body_read_timeout",
        "client.connection_limit",
        "http_api.max_request_body_size",
        "engine.nats.url",
        "socketio.max_payload",
        "presence",
    ] {
        assert!(keys.contains(key), "{key} not found in the key tables");
    }
    assert!(rows.len() > 100, "only {} rows found", rows.len());
}

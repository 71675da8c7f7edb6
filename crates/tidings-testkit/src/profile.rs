//! Config documents (Centrifugo v6 key names) that tests start from and then
//! narrow down.
//!
//! A config file means "exactly what the file says", so these spell out every
//! permission the development profile grants when there is no file.

use serde_json::{json, Value};

/// Channel options equal to the development profile's: presence, join/leave,
/// a 100-publication history with forced recovery, and subscribe, publish,
/// presence and history open to everyone.
pub fn open_channel_options() -> Value {
    json!({
        "presence": true,
        "join_leave": true,
        "force_push_join_leave": true,
        "history_size": 100,
        "history_ttl": "300s",
        "force_recovery": true,
        "allow_subscribe_for_client": true,
        "allow_subscribe_for_anonymous": true,
        "allow_publish_for_client": true,
        "allow_publish_for_anonymous": true,
        "allow_presence_for_subscriber": true,
        "allow_presence_for_anonymous": true,
        "allow_history_for_subscriber": true,
        "allow_history_for_anonymous": true
    })
}

/// A whole config equal to the development profile, with a known API key and
/// HMAC secret. Tests add namespaces or switch options off from here.
pub fn open_config(api_key: &str, hmac_secret: &str) -> Value {
    json!({
        "client": {
            "token": { "hmac_secret_key": hmac_secret },
            "allow_anonymous_connect_without_token": true,
            "allowed_origins": ["*"]
        },
        "http_api": { "key": api_key },
        "channel": {
            "without_namespace": open_channel_options(),
            "namespaces": []
        }
    })
}

/// A namespace entry: `name` plus the given options.
pub fn namespace(name: &str, options: Value) -> Value {
    let mut entry = options;
    if let Some(map) = entry.as_object_mut() {
        map.insert("name".to_owned(), json!(name));
    }
    entry
}

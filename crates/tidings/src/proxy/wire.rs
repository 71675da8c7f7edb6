//! The JSON bodies of HTTP proxy requests and answers, field for field as
//! Centrifugo v6 sends and reads them (its `proxyproto` schema in JSON). Only the
//! JSON fields are used: the `b64*` fields carry binary payloads, which the JSON
//! protocol cannot deliver.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tidings_protocol::RawJson;

fn no_text(s: &&str) -> bool {
    s.is_empty()
}

fn no_items(s: &&[String]) -> bool {
    s.is_empty()
}

/// The fields every request starts with.
#[derive(Debug, Serialize)]
pub struct Base<'a> {
    pub client: &'a str,
    pub transport: &'a str,
    pub protocol: &'static str,
    pub encoding: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ConnectRequest<'a> {
    #[serde(flatten)]
    pub base: Base<'a>,
    #[serde(skip_serializing_if = "no_text")]
    pub name: &'a str,
    #[serde(skip_serializing_if = "no_text")]
    pub version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawJson>,
    #[serde(skip_serializing_if = "no_items")]
    pub channels: &'a [String],
}

/// A request naming the connection's user, with its meta when configured.
#[derive(Debug, Serialize)]
pub struct UserRequest<'a> {
    #[serde(flatten)]
    pub base: Base<'a>,
    pub user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawJson>,
}

/// Every answer: a result, or an error for the client, or a disconnect.
#[derive(Debug, Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
pub struct Response<T> {
    #[serde(default)]
    pub result: Option<T>,
    #[serde(default)]
    pub error: Option<ErrorObject>,
    #[serde(default)]
    pub disconnect: Option<DisconnectObject>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorObject {
    pub code: u32,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub temporary: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DisconnectObject {
    pub code: u32,
    #[serde(default)]
    pub reason: String,
}

/// `{"value": bool}`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct BoolValue {
    pub value: bool,
}

/// Namespace options a backend switches for one subscription.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Override {
    pub presence: Option<BoolValue>,
    pub join_leave: Option<BoolValue>,
    pub force_push_join_leave: Option<BoolValue>,
    pub force_positioning: Option<BoolValue>,
    pub force_recovery: Option<BoolValue>,
}

/// What the connect proxy answers: who the user is and what they get.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConnectResult {
    pub user: String,
    /// Unix seconds; 0 = never expires.
    pub expire_at: i64,
    pub info: Option<RawJson>,
    pub data: Option<RawJson>,
    pub channels: Vec<String>,
    pub subs: HashMap<String, SubscribeOptions>,
    pub meta: Option<RawJson>,
}

/// A server-side subscription in a connect result.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeOptions {
    pub info: Option<RawJson>,
    pub data: Option<RawJson>,
    #[serde(rename = "override")]
    pub overrides: Option<Override>,
}

/// What the refresh and sub_refresh proxies answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RefreshResult {
    pub expired: bool,
    pub expire_at: i64,
    pub info: Option<RawJson>,
    pub meta: Option<RawJson>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeResult {
    pub info: Option<RawJson>,
    pub data: Option<RawJson>,
    #[serde(rename = "override")]
    pub overrides: Option<Override>,
    pub expire_at: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PublishResult {
    /// Published instead of the client's data.
    pub data: Option<RawJson>,
    pub skip_history: bool,
    pub tags: Option<BTreeMap<String, String>>,
    pub idempotency_key: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RpcResult {
    pub data: Option<RawJson>,
}

//! The server HTTP API, compatible with Centrifugo's: `POST /api/<method>` with a
//! JSON body, answered with `{"result": …}` or `{"error": {"code", "message"}}`.
//!
//! Errors of the operation travel in the body with HTTP 200, as Centrifugo does;
//! with the header `X-Centrifugo-Error-Mode: transport` they map to HTTP statuses
//! instead. Authentication failures are HTTP 401, unparsable bodies 400 and unknown
//! methods 404, each with a plain-text message.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tidings_protocol::codes;
use tidings_protocol::{Disconnect, RawJson, StreamPosition};

use crate::broker::HistoryFilter;
use crate::connection::{ServerRefresh, ServerSubscribe};
use crate::node::{Node, NodeError, PublishRequest};

/// Why an API request was refused before any method ran.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No key, or the wrong one.
    #[error("unauthorized: send the key in X-API-Key or Authorization: apikey <key>")]
    Unauthorized,
    /// `http_api.key` is not set and `http_api.insecure` is off.
    #[error("the server API is disabled: set http_api.key (or http_api.insecure for development)")]
    NoKeyConfigured,
    /// The path names no API method.
    #[error("unknown API method {0:?}")]
    UnknownMethod(String),
    /// The body is not the JSON the method takes.
    #[error("bad request: {0}")]
    BadBody(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::Unauthorized | ApiError::NoKeyConfigured => StatusCode::UNAUTHORIZED,
            ApiError::UnknownMethod(_) => StatusCode::NOT_FOUND,
            ApiError::BadBody(_) => StatusCode::BAD_REQUEST,
        };
        (status, self.to_string()).into_response()
    }
}

fn authorize(node: &Node, headers: &HeaderMap, query: Option<&str>) -> Result<(), ApiError> {
    let cfg = &node.config().http_api;
    if cfg.insecure {
        return Ok(());
    }
    if cfg.key.is_empty() {
        return Err(ApiError::NoKeyConfigured);
    }
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
            let (scheme, key) = auth.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("apikey")
                .then(|| key.trim().to_owned())
        })
        .or_else(|| {
            // `?api_key=KEY`, for tools that cannot set headers.
            let params: std::collections::HashMap<String, String> =
                serde_urlencoded::from_str(query?).ok()?;
            params.get("api_key").cloned()
        })
        .ok_or(ApiError::Unauthorized)?;
    if bool::from(given.as_bytes().ct_eq(cfg.key.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// `POST {handler_prefix}/{method}`.
///
/// The key is checked before the body is read, so a client without it never gets
/// a server to wait for its body. The body is then read within the route's size
/// limit (413 past it, from axum) and `http_server.body_read_timeout`.
pub async fn handler(
    State(node): State<Node>,
    Path(method): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    authorize(&node, request.headers(), request.uri().query())?;
    let transport_errors = request
        .headers()
        .get("x-centrifugo-error-mode")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("transport"));
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    if method == "batch" {
        // Parsed straight from the bytes: a batch of publishes is the fast path,
        // and building a `Value` tree of every command costs more than the rest.
        node.metrics().api_command(&method);
        let started = std::time::Instant::now();
        let answer = batch(&node, &body).await;
        node.metrics().api_duration(&method, started.elapsed());
        return Ok(axum::Json(answer?).into_response());
    }
    // Parsed once into a `Value` to check it (nesting depth, numbers in range), but
    // handed on as text: a publication's `data` goes out byte for byte (a `Value`
    // would reorder its keys).
    let params: Box<RawValue> = if body.iter().all(u8::is_ascii_whitespace) {
        RawValue::from_string("{}".into()).map_err(|e| ApiError::BadBody(e.to_string()))?
    } else {
        let checked: Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::BadBody(e.to_string()))?;
        if !checked.is_object() {
            return Err(ApiError::BadBody("the body must be a JSON object".into()));
        }
        serde_json::from_slice(&body).map_err(|e| ApiError::BadBody(e.to_string()))?
    };
    let params = Params::Text(params);
    if !crate::metrics::API_METHODS.contains(&method.as_str()) {
        return Err(ApiError::UnknownMethod(method));
    }
    node.metrics().api_command(&method);
    let started = std::time::Instant::now();
    let outcome = if node.config().opentelemetry.traces_api() {
        // A span for OpenTelemetry (the `tidings::otel` target; see
        // config/opentelemetry.rs): named after the method, failed on any error.
        let span = tracing::info_span!(
            target: "tidings::otel",
            "api",
            otel.name = format!("api.{method}").as_str(),
            otel.kind = "server",
            api.method = method.as_str(),
            otel.status_code = tracing::field::Empty,
            error.code = tracing::field::Empty,
        );
        let outcome =
            tracing::Instrument::instrument(call(&node, &method, params), span.clone()).await;
        match &outcome {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                span.record("otel.status_code", "ERROR");
                span.record("error.code", e.code);
            }
            Err(_) => {
                span.record("otel.status_code", "ERROR");
            }
        }
        outcome
    } else {
        call(&node, &method, params).await
    };
    node.metrics().api_duration(&method, started.elapsed());
    let outcome = outcome?;
    Ok(match outcome {
        Ok(result) => axum::Json(json!({ "result": result })).into_response(),
        Err(err) => {
            let status = if transport_errors {
                http_status(err.code)
            } else {
                StatusCode::OK
            };
            if transport_errors {
                // In transport mode the body is the bare error object.
                (status, axum::Json(json!(err))).into_response()
            } else {
                (status, axum::Json(json!({ "error": err }))).into_response()
            }
        }
    })
}

/// Runs one API method for another caller of the node (the admin UI), which has
/// done its own authentication: the answer is the body `/api/<method>` would
/// send, `{"result": …}` or `{"error": …}`. `batch` is not offered here. Counted
/// and timed in the API metrics like a request to `/api/<method>`.
///
/// # Errors
/// [`ApiError::UnknownMethod`] and [`ApiError::BadBody`], as the API answers them.
pub async fn execute(node: &Node, method: &str, params: Value) -> Result<Value, ApiError> {
    if !params.is_object() {
        return Err(ApiError::BadBody("params must be a JSON object".into()));
    }
    if method == "batch" || !crate::metrics::API_METHODS.contains(&method) {
        return Err(ApiError::UnknownMethod(method.to_owned()));
    }
    node.metrics().api_command(method);
    let started = std::time::Instant::now();
    let outcome = call(node, method, Params::Value(params)).await;
    node.metrics().api_duration(method, started.elapsed());
    Ok(match outcome? {
        Ok(result) => json!({ "result": result }),
        Err(error) => json!({ "error": error }),
    })
}

fn http_status(code: u32) -> StatusCode {
    match code {
        102 | 104 => StatusCode::NOT_FOUND,
        107 | 108 => StatusCode::BAD_REQUEST,
        112 => StatusCode::RANGE_NOT_SATISFIABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

type Outcome = Result<Value, tidings_protocol::Error>;

/// A method's parameters: the request's text, or a value a caller built.
enum Params {
    Text(Box<RawValue>),
    Value(Value),
}

fn parse<T: for<'de> Deserialize<'de>>(params: Params) -> Result<T, ApiError> {
    match params {
        Params::Text(raw) => serde_json::from_str(raw.get()),
        Params::Value(value) => serde_json::from_value(value),
    }
    .map_err(|e| ApiError::BadBody(e.to_string()))
}

fn node_err(e: NodeError) -> tidings_protocol::Error {
    if let NodeError::Backend(msg) = &e {
        tracing::error!(error = %msg, "server API backend failure");
    }
    e.to_protocol()
}

fn bad_request(message: &str) -> tidings_protocol::Error {
    tidings_protocol::Error {
        code: codes::ERROR_BAD_REQUEST.code,
        message: message.to_string(),
        temporary: false,
    }
}

#[derive(Deserialize)]
struct PublishParams {
    #[serde(default)]
    channel: String,
    data: Option<RawJson>,
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    delta: bool,
}

#[derive(Deserialize)]
struct BroadcastParams {
    #[serde(default)]
    channels: Vec<String>,
    data: Option<RawJson>,
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    delta: bool,
}

#[derive(Deserialize)]
struct SubscribeParams {
    #[serde(default)]
    user: String,
    #[serde(default)]
    channel: String,
    info: Option<RawJson>,
    data: Option<RawJson>,
    #[serde(default)]
    client: Option<String>,
}

#[derive(Deserialize)]
struct UnsubscribeParams {
    #[serde(default)]
    user: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    client: Option<String>,
}

#[derive(Deserialize)]
struct DisconnectObject {
    code: u32,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct DisconnectParams {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    whitelist: Vec<String>,
    #[serde(default)]
    disconnect: Option<DisconnectObject>,
}

#[derive(Deserialize)]
struct RefreshParams {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    expired: bool,
    #[serde(default)]
    expire_at: i64,
    #[serde(default)]
    info: Option<RawJson>,
}

#[derive(Deserialize)]
struct ChannelParams {
    #[serde(default)]
    channel: String,
}

#[derive(Deserialize)]
struct HistoryParams {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    limit: i64,
    #[serde(default)]
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
struct ChannelsParams {
    #[serde(default)]
    pattern: Option<String>,
}

/// The payload of a publish or broadcast: `data` (JSON), or `b64data` (any bytes,
/// base64). Bytes reach Protobuf subscribers as they are; a JSON subscriber can
/// only be sent bytes that are JSON, and is disconnected with 3506 otherwise, as
/// in Centrifugo.
fn payload(data: Option<RawJson>, b64: Option<String>) -> Result<RawJson, tidings_protocol::Error> {
    use base64::Engine as _;
    match (data, b64) {
        (Some(d), _) => Ok(d),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map(RawJson::from_bytes)
            .map_err(|_| bad_request("b64data must be standard base64")),
        (None, None) => Err(bad_request("data is required")),
    }
}

/// A publication as the API answers it: `data` when the payload is JSON, else the
/// bytes in `b64data`, as `publish` takes them (a JSON answer cannot hold bytes a
/// Protobuf client or `b64data` published; `json!` would panic on them).
fn publication_json(p: &tidings_protocol::Publication) -> Value {
    use base64::Engine as _;
    if let Ok(v) = serde_json::to_value(p) {
        return v;
    }
    let bytes = p.data.as_ref().map(|d| d.as_bytes().clone());
    let without_data = tidings_protocol::Publication {
        data: None,
        ..p.clone()
    };
    let mut v = serde_json::to_value(without_data).unwrap_or_else(|_| json!({}));
    if let (Some(bytes), Some(map)) = (bytes, v.as_object_mut()) {
        map.insert(
            "b64data".to_owned(),
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into(),
        );
    }
    v
}

async fn publish_one(node: &Node, req: PublishRequest) -> Outcome {
    if req.channel.is_empty() {
        return Err(bad_request("channel is required"));
    }
    let pos = node.publish(req).await.map_err(node_err)?;
    Ok(position_result(&pos))
}

/// The result of a publish: `{"offset", "epoch"}`, each left out when empty.
fn position_result(pos: &StreamPosition) -> Value {
    let mut result = serde_json::Map::new();
    if pos.offset > 0 {
        result.insert("offset".into(), json!(pos.offset));
    }
    if !pos.epoch.is_empty() {
        result.insert("epoch".into(), json!(pos.epoch));
    }
    Value::Object(result)
}

/// The publish request of `publish` parameters (JSON text), or the error reply.
fn publish_request(params: &str) -> Result<PublishRequest, tidings_protocol::Error> {
    let p: PublishParams = serde_json::from_str(params)
        .map_err(|e| bad_request(&ApiError::BadBody(e.to_string()).to_string()))?;
    let data = payload(p.data, p.b64data)?;
    if p.channel.is_empty() {
        return Err(bad_request("channel is required"));
    }
    Ok(PublishRequest {
        skip_history: p.skip_history,
        tags: p.tags,
        idempotency_key: p.idempotency_key,
        delta: p.delta,
        ..PublishRequest::new(p.channel, data)
    })
}

/// Runs one API method. The outer `Result` is a malformed body; the inner one the
/// method's own result or protocol error.
async fn call(node: &Node, method: &str, params: Params) -> Result<Outcome, ApiError> {
    Ok(match method {
        "publish" => {
            let p: PublishParams = parse(params)?;
            match payload(p.data, p.b64data) {
                Ok(data) => {
                    let req = PublishRequest {
                        skip_history: p.skip_history,
                        tags: p.tags,
                        idempotency_key: p.idempotency_key,
                        delta: p.delta,
                        ..PublishRequest::new(p.channel, data)
                    };
                    publish_one(node, req).await
                }
                Err(e) => Err(e),
            }
        }
        "broadcast" => {
            let p: BroadcastParams = parse(params)?;
            if p.channels.is_empty() {
                return Ok(Err(bad_request("channels are required")));
            }
            let data = match payload(p.data, p.b64data) {
                Ok(d) => d,
                Err(e) => return Ok(Err(e)),
            };
            let mut responses = Vec::with_capacity(p.channels.len());
            for channel in p.channels {
                let req = PublishRequest {
                    skip_history: p.skip_history,
                    tags: p.tags.clone(),
                    idempotency_key: p.idempotency_key.clone(),
                    delta: p.delta,
                    ..PublishRequest::new(channel, data.clone())
                };
                let r = publish_one(node, req).await;
                responses.push(match r {
                    Ok(result) => json!({ "result": result }),
                    Err(error) => json!({ "error": error }),
                });
            }
            Ok(json!({ "responses": responses }))
        }
        "subscribe" => {
            let p: SubscribeParams = parse(params)?;
            if p.channel.is_empty() {
                return Ok(Err(bad_request("channel is required")));
            }
            node.subscribe(
                &p.user,
                ServerSubscribe {
                    channel: p.channel,
                    info: p.info,
                    data: p.data,
                },
                p.client.as_deref(),
            )
            .await
            .map(|()| json!({}))
            .map_err(node_err)
        }
        "unsubscribe" => {
            let p: UnsubscribeParams = parse(params)?;
            if p.channel.is_empty() {
                return Ok(Err(bad_request("channel is required")));
            }
            node.unsubscribe(&p.user, &p.channel, p.client.as_deref())
                .await
                .map(|()| json!({}))
                .map_err(node_err)
        }
        "disconnect" => {
            let p: DisconnectParams = parse(params)?;
            let d = match p.disconnect {
                Some(o) => Disconnect::new(o.code, o.reason),
                None => Disconnect::force_no_reconnect(),
            };
            node.disconnect(&p.user, p.client.as_deref(), &p.whitelist, d)
                .await
                .map(|()| json!({}))
                .map_err(node_err)
        }
        "refresh" => {
            let p: RefreshParams = parse(params)?;
            if p.user.is_empty() {
                return Ok(Err(bad_request("user is required")));
            }
            let refresh = ServerRefresh {
                expired: p.expired,
                expire_at: p.expire_at,
                info: p.info,
            };
            node.refresh(&p.user, p.client.as_deref(), p.session.as_deref(), refresh)
                .await
                .map(|()| json!({}))
                .map_err(node_err)
        }
        "presence" => {
            let p: ChannelParams = parse(params)?;
            node.presence(&p.channel)
                .await
                .map(|presence| json!({ "presence": presence }))
                .map_err(node_err)
        }
        "presence_stats" => {
            let p: ChannelParams = parse(params)?;
            node.presence_stats(&p.channel)
                .await
                .map(|s| json!({ "num_clients": s.num_clients, "num_users": s.num_users }))
                .map_err(node_err)
        }
        "history" => {
            let p: HistoryParams = parse(params)?;
            let limit = if p.limit < 0 {
                None
            } else {
                Some(p.limit as usize)
            };
            node.history(
                &p.channel,
                HistoryFilter {
                    since: p.since,
                    limit,
                    reverse: p.reverse,
                },
            )
            .await
            .map(|page| {
                let publications: Vec<Value> =
                    page.publications.iter().map(publication_json).collect();
                json!({
                    "publications": publications,
                    "offset": page.position.offset,
                    "epoch": page.position.epoch,
                })
            })
            .map_err(node_err)
        }
        "history_remove" => {
            let p: ChannelParams = parse(params)?;
            node.remove_history(&p.channel)
                .await
                .map(|()| json!({}))
                .map_err(node_err)
        }
        "channels" => {
            let p: ChannelsParams = parse(params)?;
            let channels: HashMap<String, Value> = node
                .channels(p.pattern.as_deref())
                .await
                .into_iter()
                .map(|(name, n)| (name, json!({ "num_clients": n })))
                .collect();
            Ok(json!({ "channels": channels }))
        }
        "info" => Ok(json!({ "nodes": node.nodes() })),
        "user_status" => {
            let p: UserStatusParams = parse(params)?;
            node.user_status(&p.users)
                .await
                .map(|statuses| json!({ "statuses": statuses }))
                .map_err(node_err)
        }
        other => return Err(ApiError::UnknownMethod(other.to_string())),
    })
}

/// `user_status` (a Tidings method): the online status of these users.
#[derive(Deserialize)]
struct UserStatusParams {
    users: Vec<String>,
}

#[derive(Deserialize)]
struct BatchParams {
    /// Each command: one method name and its parameters, left unparsed until the
    /// method is known.
    #[serde(default)]
    commands: Vec<HashMap<String, Box<RawValue>>>,
    /// Run the commands concurrently, in no particular order (Centrifugo's flag).
    #[serde(default)]
    parallel: bool,
}

/// Most commands one batch may carry.
pub const BATCH_MAX_COMMANDS: usize = 1000;

/// One command of a batch, checked and ready to run.
enum Prepared {
    /// Answered already (a malformed command).
    Reply(Value),
    /// A publish: runs together with the publishes next to it.
    Publish(PublishRequest),
    /// Any other method, with its parameters.
    Call(String, Value),
}

fn prepare(node: &Node, command: HashMap<String, Box<RawValue>>) -> Prepared {
    // Each command is an object with exactly one method key, as in Centrifugo.
    if command.len() != 1 {
        return Prepared::Reply(
            json!({ "error": bad_request("a command has exactly one method") }),
        );
    }
    let Some((method, params)) = command.into_iter().next() else {
        return Prepared::Reply(
            json!({ "error": bad_request("a command has exactly one method") }),
        );
    };
    if !params.get().trim_start().starts_with('{') {
        return Prepared::Reply(
            json!({ "error": bad_request("parameters must be a JSON object") }),
        );
    }
    if method == "batch" || !crate::metrics::API_METHODS.contains(&method.as_str()) {
        return Prepared::Reply(
            json!({ "error": tidings_protocol::Error::from(codes::ERROR_METHOD_NOT_FOUND) }),
        );
    }
    node.metrics().api_command(&method);
    if method == "publish" {
        return match publish_request(params.get()) {
            Ok(req) => Prepared::Publish(req),
            Err(error) => Prepared::Reply(json!({ "error": error })),
        };
    }
    match serde_json::from_str(params.get()) {
        Ok(params) => Prepared::Call(method, params),
        Err(e) => Prepared::Reply(json!({ "error": bad_request(&e.to_string()) })),
    }
}

async fn run_call(node: &Node, method: &str, params: Value) -> Value {
    match call(node, method, Params::Value(params)).await {
        Ok(Ok(result)) => json!({ method: result }),
        Ok(Err(error)) => json!({ "error": error }),
        Err(e) => json!({ "error": bad_request(&e.to_string()) }),
    }
}

fn publish_reply(r: Result<StreamPosition, NodeError>) -> Value {
    match r {
        Ok(pos) => json!({ "publish": position_result(&pos) }),
        Err(e) => json!({ "error": node_err(e) }),
    }
}

/// `batch`: the replies come in the order of the commands.
///
/// - Without `parallel`, the commands take effect in the order given. Publishes
///   next to each other go to the broker together, in order, in one call (with
///   Redis: one pipeline and one round trip, not one per publish); any other
///   command runs after the ones before it have finished.
/// - With `parallel`, every command starts at once; the publishes still go to the
///   broker in one call, but nothing is promised about the order in which the
///   commands take effect.
async fn batch(node: &Node, body: &[u8]) -> Result<Value, ApiError> {
    let p: BatchParams = if body.iter().all(u8::is_ascii_whitespace) {
        BatchParams {
            commands: Vec::new(),
            parallel: false,
        }
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::BadBody(e.to_string()))?
    };
    if p.commands.len() > BATCH_MAX_COMMANDS {
        return Err(ApiError::BadBody(format!(
            "a batch carries at most {BATCH_MAX_COMMANDS} commands"
        )));
    }
    let prepared: Vec<Prepared> = p.commands.into_iter().map(|c| prepare(node, c)).collect();
    let mut replies: Vec<Option<Value>> = Vec::with_capacity(prepared.len());
    if p.parallel {
        let mut publishes = Vec::new();
        let mut publish_slots = Vec::new();
        let mut calls = Vec::new();
        for (i, c) in prepared.into_iter().enumerate() {
            match c {
                Prepared::Reply(v) => replies.push(Some(v)),
                Prepared::Publish(req) => {
                    replies.push(None);
                    publish_slots.push(i);
                    publishes.push(req);
                }
                Prepared::Call(method, params) => {
                    replies.push(None);
                    calls.push(async move { (i, run_call(node, &method, params).await) });
                }
            }
        }
        let published = async {
            if publishes.is_empty() {
                Vec::new()
            } else {
                node.publish_many(publishes, false).await
            }
        };
        let (published, called) = tokio::join!(published, futures_util::future::join_all(calls));
        for (i, r) in publish_slots.into_iter().zip(published) {
            replies[i] = Some(publish_reply(r));
        }
        for (i, v) in called {
            replies[i] = Some(v);
        }
    } else {
        let mut run: Vec<PublishRequest> = Vec::new();
        for c in prepared {
            match c {
                Prepared::Publish(req) => {
                    run.push(req);
                    replies.push(None);
                    continue;
                }
                Prepared::Reply(v) => {
                    flush_publishes(node, &mut run, &mut replies).await;
                    replies.push(Some(v));
                }
                Prepared::Call(method, params) => {
                    flush_publishes(node, &mut run, &mut replies).await;
                    replies.push(Some(run_call(node, &method, params).await));
                }
            }
        }
        flush_publishes(node, &mut run, &mut replies).await;
    }
    let replies: Vec<Value> = replies
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| json!({ "error": node_err(NodeError::Backend("no reply".into())) }))
        })
        .collect();
    Ok(json!({ "replies": replies }))
}

/// Publishes the run of publishes at the end of `replies` (the slots still
/// `None`), in order, and fills their slots.
async fn flush_publishes(
    node: &Node,
    run: &mut Vec<PublishRequest>,
    replies: &mut [Option<Value>],
) {
    if run.is_empty() {
        return;
    }
    let n = run.len();
    let results = node.publish_many(std::mem::take(run), true).await;
    let first = replies.len() - n;
    for (slot, r) in replies[first..].iter_mut().zip(results) {
        *slot = Some(publish_reply(r));
    }
}

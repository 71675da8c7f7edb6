//! Backend proxies against a real backend: a small axum app started by the test on
//! a free loopback port, speaking Centrifugo's proxy bodies. Connect by cookie,
//! refresh, subscribe allowed and refused, publications rewritten, RPC, the
//! server API `refresh`, personal channels; then broken and hostile backends
//! (slow, 500, invalid JSON, a huge answer, no answer at all), each with its
//! documented client outcome while a control client carries on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tidings_testkit::client::Outcome;
use tidings_testkit::profile::{namespace, open_channel_options, open_config};
use tidings_testkit::{hs256_token, TidingsServer, WsClient};

const API_KEY: &str = "proxy-test-key";
const SECRET: &str = "proxy-test-secret-long-enough-for-hs256";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the backend saw: the path, the Cookie header and the body.
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

fn record(seen: &Seen, path: &str, headers: &HeaderMap, body: &Value) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    // The Cookie, or for requests without one the Authorization header.
    let cookie = match header("cookie") {
        c if c.is_empty() => header("authorization"),
        c => c,
    };
    // A std mutex: nothing awaits while it is held.
    seen.lock()
        .unwrap()
        .push((path.to_string(), cookie, body.clone()));
}

async fn connect(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    record(&seen, "connect", &headers, &body);
    let cookie = headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Json(if cookie.contains("session=alice") {
        json!({"result": {"user": "alice", "info": {"name": "Alice"}, "data": {"hello": "alice"},
                          "meta": {"plan": "gold"}}})
    } else if cookie.contains("session=bob") {
        // Expires soon: the refresh proxy must extend it.
        json!({"result": {"user": "bob", "expire_at": now() + 2}})
    } else if cookie.contains("session=carol") {
        json!({"result": {"user": "carol", "expire_at": now() + 2}})
    } else {
        json!({"disconnect": {"code": 4501, "reason": "unauthorized"}})
    })
}

async fn refresh(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    record(&seen, "refresh", &headers, &body);
    Json(if body["user"] == "bob" {
        json!({"result": {"expire_at": now() + 600}})
    } else {
        json!({"result": {"expired": true}})
    })
}

async fn subscribe(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    record(&seen, "subscribe", &headers, &body);
    Json(if body["channel"] == "chat:secret" {
        json!({"error": {"code": 403, "message": "permission denied"}})
    } else {
        json!({"result": {"info": {"role": "member"}, "data": {"welcome": body["channel"]}}})
    })
}

async fn publish(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    record(&seen, "publish", &headers, &body);
    let text = body["data"]["text"].as_str().unwrap_or("").to_uppercase();
    if text == "SPAM" {
        return Json(json!({"error": {"code": 1000, "message": "no spam"}}));
    }
    Json(json!({"result": {"data": {"text": text, "by": body["user"]}}}))
}

async fn rpc(State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    record(&seen, "rpc", &headers, &body);
    if body["method"] == "sum" {
        let sum = body["data"]["a"].as_i64().unwrap_or(0) + body["data"]["b"].as_i64().unwrap_or(0);
        return Json(json!({"result": {"data": {"sum": sum}}}));
    }
    Json(json!({"error": {"code": 404, "message": "no such method"}}))
}

async fn slow() -> Json<Value> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    Json(json!({"result": {}}))
}

async fn e500() -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
}

async fn e403() -> Response {
    (StatusCode::FORBIDDEN, "no").into_response()
}

async fn bad_json() -> Response {
    (StatusCode::OK, "this is not json {").into_response()
}

/// An answer far over `max_response_size`, streamed without end in sight.
async fn huge() -> Response {
    let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
    let stream =
        futures_util::stream::iter((0..512).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    Body::from_stream(stream).into_response()
}

/// Never answers.
async fn hang() -> Response {
    std::future::pending::<()>().await;
    StatusCode::OK.into_response()
}

struct Backend {
    url: String,
    seen: Seen,
    _task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start() -> anyhow::Result<Backend> {
        let seen: Seen = Arc::default();
        let app = Router::new()
            .route("/connect", post(connect))
            .route("/refresh", post(refresh))
            .route("/subscribe", post(subscribe))
            .route("/publish", post(publish))
            .route("/rpc", post(rpc))
            .route("/slow", post(slow))
            .route("/e500", post(e500))
            .route("/e403", post(e403))
            .route("/badjson", post(bad_json))
            .route("/huge", post(huge))
            .route("/hang", post(hang))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Backend {
            url,
            seen,
            _task: task,
        })
    }

    fn seen(&self, path: &str) -> Vec<(String, Value)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, ..)| p == path)
            .map(|(_, c, b)| (c.clone(), b.clone()))
            .collect()
    }
}

fn proxy(endpoint: String) -> Value {
    json!({ "endpoint": endpoint, "timeout": "2s", "http_headers": ["Cookie"] })
}

fn proxied_config(backend: &Backend) -> Value {
    let b = &backend.url;
    let mut config = open_config(API_KEY, SECRET);
    config["client"]["proxy"] = json!({
        "connect": { "enabled": true, "endpoint": format!("{b}/connect"), "http_headers": ["Cookie"] },
        "refresh": { "enabled": true, "endpoint": format!("{b}/refresh") },
    });
    let mut subscribe = proxy(format!("{b}/subscribe"));
    subscribe["include_connection_meta"] = json!(true);
    subscribe["emulated_headers"] = json!(["Authorization"]);
    config["channel"]["proxy"] = json!({
        "subscribe": subscribe,
        "publish": proxy(format!("{b}/publish")),
    });
    let mut chat = json!({ "presence": true, "history_size": 10, "history_ttl": "60s",
                           "subscribe_proxy_enabled": true, "publish_proxy_enabled": true });
    chat["allow_history_for_subscriber"] = json!(true);
    let mut hostile = Vec::new();
    let mut proxies = Vec::new();
    for name in ["slow", "e500", "e403", "badjson", "huge", "hang"] {
        let mut p = json!({ "name": name, "endpoint": format!("{b}/{name}"), "timeout": "500ms",
                            "max_response_size": 65536, "max_concurrent_requests": 2 });
        if name == "e403" {
            p["http"] = json!({ "status_to_code_transforms": [
                { "status_code": 403, "to_error": { "code": 403, "message": "forbidden", "temporary": false } }
            ]});
        }
        proxies.push(p);
        hostile.push(namespace(
            name,
            json!({ "subscribe_proxy_enabled": true, "subscribe_proxy_name": name }),
        ));
    }
    let mut namespaces = vec![
        namespace("chat", chat),
        namespace("plain", open_channel_options()),
    ];
    namespaces.extend(hostile);
    config["channel"]["namespaces"] = json!(namespaces);
    config["proxies"] = json!(proxies);
    config["rpc"] = json!({
        "proxy": proxy(format!("{b}/rpc")),
        "without_namespace": { "proxy_enabled": true },
        "namespaces": [ { "name": "off", "proxy_enabled": false } ],
    });
    config
}

async fn open_with_cookie(server: &TidingsServer, cookie: &str) -> anyhow::Result<WsClient> {
    WsClient::open_with_headers(&server.ws_url(), &[("Cookie", cookie)]).await
}

#[tokio::test]
async fn connect_proxy_authenticates_by_cookie_and_refuses_without_one() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let server = TidingsServer::builder()
        .config_json(proxied_config(&backend))
        .start()
        .await?;
    let mut alice = open_with_cookie(&server, "session=alice; theme=dark").await?;
    let result = alice
        .connect(json!({ "data": { "device": "test" }, "name": "rust-test", "version": "1.0" }))
        .await?;
    assert_eq!(result["data"], json!({ "hello": "alice" }), "{result}");
    let seen = backend.seen("connect");
    let (cookie, body) = seen.last().expect("the backend saw the connect");
    assert_eq!(cookie, "session=alice; theme=dark");
    assert_eq!(body["transport"], "websocket", "{body}");
    assert_eq!(body["protocol"], "json");
    assert_eq!(body["encoding"], "json");
    assert_eq!(body["name"], "rust-test");
    assert_eq!(body["version"], "1.0");
    assert_eq!(body["data"], json!({ "device": "test" }));
    assert_eq!(body["client"], result["client"]);

    // No cookie: the backend's disconnect closes the connection with its code.
    let mut stranger = server.client().await?;
    match stranger.call_or_close(json!({ "connect": {} })).await? {
        Outcome::Closed(code, reason) => {
            assert_eq!((code, reason.as_str()), (4501, "unauthorized"));
        }
        Outcome::Reply(r) => anyhow::bail!("expected a close, got {r}"),
    }

    // A token still connects on its own, without the backend.
    let before = backend.seen("connect").len();
    let token = hs256_token(SECRET, "dave", None)?;
    server.connected_client_with_token(&token).await?;
    assert_eq!(backend.seen("connect").len(), before);
    Ok(())
}

#[tokio::test]
async fn subscribe_publish_and_rpc_go_through_the_backend() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let server = TidingsServer::builder()
        .config_json(proxied_config(&backend))
        .start()
        .await?;
    let mut alice = open_with_cookie(&server, "session=alice").await?;
    alice.connect(json!({})).await?;

    let sub = alice
        .subscribe_with(json!({ "channel": "chat:lobby", "data": { "want": "in" } }))
        .await?;
    assert_eq!(sub["data"], json!({ "welcome": "chat:lobby" }), "{sub}");
    let (cookie, body) = backend.seen("subscribe").pop().expect("subscribe seen");
    assert_eq!(cookie, "session=alice");
    assert_eq!(body["user"], "alice");
    // include_connection_meta: the meta the connect proxy attached.
    assert_eq!(body["meta"], json!({ "plan": "gold" }), "{body}");
    assert_eq!(body["channel"], "chat:lobby");
    assert_eq!(body["data"], json!({ "want": "in" }));

    let refused = alice
        .call_error(json!({ "subscribe": { "channel": "chat:secret" } }))
        .await?;
    assert_eq!(refused["code"], 403, "{refused}");

    // The publication arrives as the backend rewrote it, with the info it set.
    alice
        .publish("chat:lobby", json!({ "text": "hello" }))
        .await?;
    let publication = alice.next_pub("chat:lobby").await?;
    assert_eq!(
        publication["data"],
        json!({ "text": "HELLO", "by": "alice" }),
        "{publication}"
    );
    assert_eq!(
        publication["info"]["chan_info"],
        json!({ "role": "member" })
    );
    assert_eq!(publication["info"]["conn_info"], json!({ "name": "Alice" }));
    let spam = alice
        .call_error(json!({ "publish": { "channel": "chat:lobby", "data": { "text": "spam" } } }))
        .await?;
    assert_eq!(spam["code"], 1000, "{spam}");

    // A token client's emulated header (centrifuge-js `headers`) reaches the
    // proxies that list it in emulated_headers.
    let token = hs256_token(SECRET, "frank", None)?;
    let mut frank = server.client().await?;
    frank
        .connect(json!({ "token": token, "headers": { "Authorization": "Bearer frank-secret" } }))
        .await?;
    frank.subscribe("chat:frank").await?;
    let (auth, body) = backend.seen("subscribe").pop().expect("subscribe seen");
    assert_eq!(auth, "Bearer frank-secret");
    assert_eq!(body["user"], "frank");
    assert!(body.get("meta").is_none(), "{body}");

    let answer = alice
        .call_result(json!({ "rpc": { "method": "sum", "data": { "a": 2, "b": 3 } } }))
        .await?;
    assert_eq!(answer["data"], json!({ "sum": 5 }), "{answer}");
    let rpc_seen = backend.seen("rpc");
    assert_eq!(rpc_seen[0].1["user"], "alice");
    assert_eq!(rpc_seen[0].1["method"], "sum");
    let unknown = alice
        .call_error(json!({ "rpc": { "method": "nope", "data": {} } }))
        .await?;
    assert_eq!(unknown["code"], 404, "{unknown}");
    let off = alice
        .call_error(json!({ "rpc": { "method": "off:x", "data": {} } }))
        .await?;
    assert_eq!(off["code"], 108, "{off}");
    let missing = alice
        .call_error(json!({ "rpc": { "method": "ghost:x", "data": {} } }))
        .await?;
    assert_eq!(missing["code"], 104, "{missing}");
    Ok(())
}

#[tokio::test]
async fn refresh_proxy_extends_or_ends_a_session() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let server = TidingsServer::builder()
        .config_json(proxied_config(&backend))
        .start()
        .await?;
    let mut bob = open_with_cookie(&server, "session=bob").await?;
    let result = bob.connect(json!({})).await?;
    // The server refreshes: the client is not asked to.
    assert!(result.get("expires").is_none(), "{result}");
    let mut carol = open_with_cookie(&server, "session=carol").await?;
    carol.connect(json!({})).await?;
    bob.subscribe("plain:x").await?;

    // Carol's backend says expired: 3005 after her two seconds.
    carol.set_wait(Duration::from_secs(10));
    match carol
        .call_or_close(json!({ "subscribe": { "channel": "plain:never-answered" } }))
        .await?
    {
        Outcome::Closed(3005, _) => {}
        Outcome::Reply(_) => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some((code, _)) = carol.close_status() {
                    assert_eq!(code, 3005);
                    break;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "carol was not expired"
                );
                let _ = carol.next_push().await;
            }
        }
        Outcome::Closed(code, reason) => anyhow::bail!("carol closed with {code} {reason}"),
    }
    // Bob was extended: still served well after his first expiry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !backend
        .seen("refresh")
        .iter()
        .any(|(_, b)| b["user"] == "bob")
    {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no refresh for bob");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    bob.subscribe("plain:after").await?;
    let (_, body) = backend
        .seen("refresh")
        .into_iter()
        .find(|(_, b)| b["user"] == "bob")
        .expect("refresh seen");
    assert_eq!(body["transport"], "websocket");
    assert!(body["client"].is_string());
    Ok(())
}

#[tokio::test]
async fn hostile_backends_get_their_documented_outcome_and_spare_others() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let server = TidingsServer::builder()
        .config_json(proxied_config(&backend))
        .start()
        .await?;
    let token = hs256_token(SECRET, "control", None)?;
    let mut control = server.connected_client_with_token(&token).await?;
    control.subscribe("plain:control").await?;

    let mut victims = Vec::new();
    for (name, code) in [
        ("slow", 100),
        ("e500", 100),
        ("e403", 403),
        ("badjson", 100),
        ("huge", 100),
        ("hang", 100),
    ] {
        let mut client = server.connected_client_with_token(&token).await?;
        // The subscribe is sent now and answered within the proxy timeout.
        let id = client.next_id();
        client
            .send(&json!({ "id": id, "subscribe": { "channel": format!("{name}:room") } }))
            .await?;
        victims.push((name, code, id, client));
    }
    // Meanwhile the control client publishes and receives as usual.
    for i in 0..5 {
        control.publish("plain:control", json!({ "n": i })).await?;
        let p = control.next_pub("plain:control").await?;
        assert_eq!(p["data"]["n"], i);
    }
    for (name, code, id, mut client) in victims {
        let reply = client.wait_reply(id).await?;
        assert_eq!(reply["error"]["code"], code, "{name}: {reply}");
        if code == 100 {
            assert_eq!(reply["error"]["temporary"], true, "{name}: {reply}");
        }
        // The connection survives a failed proxy call.
        client.subscribe("plain:still-here").await?;
    }
    // More callers than `max_concurrent_requests` at a backend that never
    // answers: each still gets its answer, none waits past its timeout for long.
    let mut waiting = Vec::new();
    for _ in 0..6 {
        let mut client = server.connected_client_with_token(&token).await?;
        let id = client.next_id();
        client
            .send(&json!({ "id": id, "subscribe": { "channel": "hang:queue" } }))
            .await?;
        waiting.push((id, client));
    }
    for (id, mut client) in waiting {
        let reply = client.wait_reply(id).await?;
        assert_eq!(reply["error"]["code"], 100, "{reply}");
    }
    control
        .publish("plain:control", json!({ "n": "last" }))
        .await?;
    assert_eq!(
        control.next_pub("plain:control").await?["data"]["n"],
        "last"
    );
    // Every failed call is counted; the e403 transform counts as a failure too.
    let (_, metrics) = server.http_get("/metrics").await?;
    let failed = metrics
        .lines()
        .find(|l| {
            l.starts_with("tidings_proxy_calls_total")
                && l.contains(r#"event="subscribe""#)
                && l.contains(r#"outcome="failed""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(failed, Some(12.0), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn server_api_refresh_extends_and_ends_connections() -> anyhow::Result<()> {
    let mut config = open_config(API_KEY, SECRET);
    config["client"]["expired_close_delay"] = json!("1s");
    let server = TidingsServer::builder().config_json(config).start().await?;
    let token = hs256_token(SECRET, "erin", Some(now() + 3))?;
    let mut erin = server.connected_client_with_token(&token).await?;
    erin.subscribe("x").await?;
    server
        .api_ok(
            "refresh",
            json!({ "user": "erin", "expire_at": now() + 600, "info": { "v": 2 } }),
        )
        .await?;
    let push = loop {
        let push = erin.next_push().await?;
        if push.get("refresh").is_some() {
            break push;
        }
    };
    assert_eq!(push["refresh"]["expires"], true, "{push}");
    assert!(push["refresh"]["ttl"].as_u64().unwrap_or(0) > 500, "{push}");
    // Past the token's own expiry and grace the connection still works.
    tokio::time::sleep(Duration::from_secs(5)).await;
    erin.subscribe("y").await?;
    server
        .api_ok("refresh", json!({ "user": "erin", "expired": true }))
        .await?;
    erin.set_wait(Duration::from_secs(5));
    match erin.call_or_close(json!({ "ping": {} })).await? {
        Outcome::Closed(code, _) => assert_eq!(code, 3005),
        Outcome::Reply(_) => {
            let _ = erin.next_push().await;
            assert_eq!(erin.close_status().map(|c| c.0), Some(3005));
        }
    }
    let (status, body) = server.api("refresh", json!({})).await?;
    assert_eq!(status, 200);
    assert_eq!(body["error"]["code"], 107, "{body}");
    Ok(())
}

#[tokio::test]
async fn users_get_their_personal_channel_and_one_connection() -> anyhow::Result<()> {
    let mut config = open_config(API_KEY, SECRET);
    config["channel"]["namespaces"] = json!([namespace("personal", json!({ "presence": true }))]);
    config["client"]["subscribe_to_user_personal_channel"] = json!({
        "enabled": true, "personal_channel_namespace": "personal", "single_connection": true
    });
    let server = TidingsServer::builder().config_json(config).start().await?;
    let token = hs256_token(SECRET, "42", None)?;
    let mut first = server.client().await?;
    let result = first.connect(json!({ "token": token })).await?;
    assert!(result["subs"].get("personal:#42").is_some(), "{result}");
    server
        .publish("personal:#42", json!({ "note": "for you" }))
        .await?;
    let p = first.next_pub("personal:#42").await?;
    assert_eq!(p["data"]["note"], "for you");

    // A second connection of the same user replaces the first (3504).
    let mut second = server.client().await?;
    second.connect(json!({ "token": token })).await?;
    first.set_wait(Duration::from_secs(5));
    let closed = loop {
        if let Some(c) = first.close_status() {
            break c;
        }
        if first.next_push().await.is_err() && first.close_status().is_none() {
            anyhow::bail!("the first connection was not closed");
        }
    };
    assert_eq!(closed.0, 3504, "{closed:?}");
    // Anonymous users get no personal channel.
    let mut anon = server.client().await?;
    let result = anon.connect(json!({})).await?;
    assert!(
        result
            .get("subs")
            .is_none_or(|s| s.as_object().is_none_or(|m| m.is_empty())),
        "{result}"
    );
    Ok(())
}

/// The first line of a streaming response that holds `needle`, within 5 s.
async fn first_line_with(resp: reqwest::Response, needle: &str) -> anyhow::Result<String> {
    line_within(resp, needle, Duration::from_secs(5)).await
}

/// The first line of a streaming response that holds `needle`, within `wait`.
async fn line_within(
    resp: reqwest::Response,
    needle: &str,
    wait: Duration,
) -> anyhow::Result<String> {
    let mut resp = resp;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_string());
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .map_err(|_| anyhow::anyhow!("no {needle:?} line in {text:?}"))??
            .ok_or_else(|| anyhow::anyhow!("stream ended: {text:?}"))?;
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn every_transport_takes_the_cookie_to_the_connect_proxy() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let mut config = proxied_config(&backend);
    for transport in [
        "sse",
        "http_stream",
        "uni_sse",
        "uni_http_stream",
        "long_poll",
    ] {
        config[transport] = json!({ "enabled": true });
    }
    let server = TidingsServer::builder().config_json(config).start().await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let base = server.http_url();
    let cookie = "session=alice";
    let connect = r#"{"id":1,"connect":{}}"#;

    // Bidirectional emulation: the connect reply comes first on the stream.
    let sse = http
        .get(format!("{base}/connection/sse"))
        .query(&[("cf_connect", connect)])
        .header("Cookie", cookie)
        .send()
        .await?;
    let line = first_line_with(sse, "\"connect\"").await?;
    assert!(line.contains(r#""data":{"hello":"alice"}"#), "{line}");
    let stream = http
        .post(format!("{base}/connection/http_stream"))
        .header("Cookie", cookie)
        .body(connect)
        .send()
        .await?;
    let line = first_line_with(stream, "\"connect\"").await?;
    assert!(line.contains(r#""hello":"alice""#), "{line}");
    let poll = http
        .post(format!("{base}/connection/long_poll"))
        .header("Cookie", cookie)
        .body(connect)
        .send()
        .await?;
    assert_eq!(poll.status(), 200);
    // Unidirectional: the connect push, and the backend's channels decide.
    let uni = http
        .post(format!("{base}/connection/uni_http_stream"))
        .header("Cookie", cookie)
        .body(r#"{"subs":{"plain:wanted":{}}}"#)
        .send()
        .await?;
    let line = first_line_with(uni, "\"connect\"").await?;
    assert!(line.contains(r#""hello":"alice""#), "{line}");
    let uni_sse = http
        .get(format!("{base}/connection/uni_sse"))
        .header("Cookie", cookie)
        .send()
        .await?;
    first_line_with(uni_sse, "\"connect\"").await?;
    // Without the cookie a unidirectional client gets the backend's disconnect.
    let refused = http
        .post(format!("{base}/connection/uni_http_stream"))
        .body("{}")
        .send()
        .await?;
    let line = first_line_with(refused, "\"disconnect\"").await?;
    assert!(line.contains("4501"), "{line}");
    // The refresh proxy serves unidirectional clients too: carol's backend lets her
    // session expire after two seconds (3005), with no client refresh involved.
    let carol = http
        .post(format!("{base}/connection/uni_http_stream"))
        .header("Cookie", "session=carol")
        .body("{}")
        .send()
        .await?;
    let line = line_within(carol, "\"disconnect\"", Duration::from_secs(10)).await?;
    assert!(line.contains("3005"), "{line}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let wanted = [
        "sse",
        "http_stream",
        "long_poll",
        "uni_http_stream",
        "uni_sse",
    ];
    loop {
        let seen = backend.seen("connect");
        let with_cookie: Vec<&str> = seen
            .iter()
            .filter(|(c, _)| c == cookie)
            .filter_map(|(_, b)| b["transport"].as_str())
            .collect();
        if wanted.iter().all(|t| with_cookie.contains(t)) {
            let uni = seen
                .iter()
                .find(|(_, b)| b["transport"] == "uni_http_stream" && !b["channels"].is_null())
                .map(|(_, b)| b.clone());
            assert_eq!(
                uni.map(|b| b["channels"].clone()),
                Some(json!(["plain:wanted"]))
            );
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "transports seen with the cookie: {with_cookie:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

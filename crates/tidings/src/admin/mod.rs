//! The admin web UI and its endpoints (`admin.*`, Centrifugo v6's keys), served
//! under `admin.handler_prefix` (`P` below) beside the server API: on the
//! internal listener when there is one.
//!
//! - `GET P/` the page, `P/admin.css` and `P/admin.js` its files, embedded in the
//!   binary, with the security headers of [`crate::web::page`].
//! - `GET P/admin/init`: `{"insecure", "authenticated"}`, what the page needs to
//!   know before it shows the login form.
//! - `POST P/admin/auth` with `{"password"}`: `{"token"}`, a session token
//!   ([`token`]), or 401.
//! - `POST P/admin/api` with `{"method", "params"}`: one server API method, answered
//!   as `/api/<method>` answers it ([`crate::api::execute`]).
//! - `GET P/admin/config`: the configuration in effect, secrets masked
//!   ([`config_view`]).
//! - `GET P/admin/tail?channel=…`: a live tail of a channel ([`tail`]).
//!
//! Every endpoint but the page's files and `init` takes the token in
//! `Authorization: token <token>` (or `Bearer`), unless `admin.insecure` is on. A
//! header, not a cookie: a browser sends no header of its own accord to another
//! site, and a script of another site cannot add one without a CORS preflight,
//! which these endpoints never allow. On top of that, a request whose `Origin`
//! (or `Sec-Fetch-Site`) says it comes from another site is refused with 403,
//! and `POST` bodies must be `application/json`, which a plain HTML form cannot
//! send.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::node::Node;
use crate::web::{asset, page};

pub mod config_view;
pub mod tail;
pub mod token;

const ADMIN_PAGE: &str = include_str!("../../../../web/admin/index.html");
const ADMIN_CSS: &str = include_str!("../../../../web/admin/admin.css");
const ADMIN_JS: &str = include_str!("../../../../web/admin/admin.js");

/// Largest login body: a password, with room to spare.
const LOGIN_BODY_LIMIT: usize = 4096;

/// Failed logins one address may make per [`FAILURE_WINDOW`]; past them its
/// logins get 429 without being checked.
pub const MAX_FAILED_LOGINS: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses the failure count remembers; when full it starts over, which only
/// ever lets an attacker guess more slowly than this bound would, never faster
/// than [`MAX_FAILED_LOGINS`] per window per address it has.
const FAILURE_TABLE: usize = 4096;

/// Why an admin request was refused. Each maps to one status with its message.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No token, or one that does not verify; a wrong password.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A request from another site.
    #[error("cross-origin request refused")]
    CrossOrigin,
    /// A body that is not JSON of the right shape, an unknown method, a bad
    /// channel: the message says which.
    #[error("{0}")]
    BadRequest(String),
    /// A `POST` body that is not `application/json`.
    #[error("the body must be application/json")]
    NotJson,
    /// Too many failed logins from one address.
    #[error("too many failed logins: try again in a minute")]
    Throttled,
    /// A bounded resource is in use (live tails).
    #[error("{0}")]
    Busy(&'static str),
    /// Something failed on the server; logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AdminError::CrossOrigin => StatusCode::FORBIDDEN,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AdminError::Throttled => StatusCode::TOO_MANY_REQUESTS,
            AdminError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Internal(cause) => {
                tracing::error!(error = %cause, "admin request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (
            status,
            [(header::CACHE_CONTROL, "no-store")],
            self.to_string(),
        )
            .into_response()
    }
}

/// The admin routes, or `None` when `admin.enabled` is off.
pub fn router(node: &Node) -> Option<Router<Node>> {
    let cfg = &node.config().admin;
    if !cfg.enabled {
        return None;
    }
    if cfg.insecure {
        tracing::warn!(
            "admin.insecure is on: the admin UI and its endpoints need no login; keep them behind a firewall"
        );
    }
    let p = cfg.prefix();
    const JS: &str = "text/javascript; charset=utf-8";
    let mut app = Router::new()
        .route(&format!("{p}/"), get(|| async { page(ADMIN_PAGE) }))
        .route(
            &format!("{p}/admin.css"),
            get(|| async { asset("text/css; charset=utf-8", ADMIN_CSS) }),
        )
        .route(
            &format!("{p}/admin.js"),
            get(|| async { asset(JS, ADMIN_JS) }),
        )
        .route(&format!("{p}/admin/init"), get(init))
        .route(
            &format!("{p}/admin/auth"),
            post(login).layer(DefaultBodyLimit::max(LOGIN_BODY_LIMIT)),
        )
        .route(
            &format!("{p}/admin/api"),
            post(api).layer(DefaultBodyLimit::max(
                node.config().http_api.max_request_body_size,
            )),
        )
        .route(&format!("{p}/admin/config"), get(config))
        .route(&format!("{p}/admin/tail"), get(tail_handler));
    if !p.is_empty() {
        let slash = format!("{p}/");
        app = app.route(p, get(move || async move { Redirect::permanent(&slash) }));
    }
    Some(app)
}

/// Refuses a request that says it comes from another site: an `Origin` whose
/// host and port are not the request's `Host`, or `Sec-Fetch-Site: cross-site`.
/// A request with neither (curl, a script on the server) passes.
fn same_origin(headers: &HeaderMap) -> Result<(), AdminError> {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"))
    {
        return Err(AdminError::CrossOrigin);
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().map_err(|_| AdminError::CrossOrigin)?;
    let authority = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .ok_or(AdminError::CrossOrigin)?;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or(AdminError::CrossOrigin)?;
    if authority.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(AdminError::CrossOrigin)
    }
}

/// Whether the request carries a valid session token (always, when insecure).
fn authenticated(node: &Node, headers: &HeaderMap) -> Result<(), AdminError> {
    let cfg = &node.config().admin;
    if cfg.insecure {
        return Ok(());
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| {
            scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer")
        })
        .map(|(_, token)| token.trim())
        .ok_or(AdminError::Unauthorized(
            "log in first: send the session token in Authorization: token <token>",
        ))?;
    token::verify(&cfg.secret, given).map_err(|e| match e {
        token::TokenError::Expired => {
            AdminError::Unauthorized("the session has expired: log in again")
        }
        token::TokenError::Invalid(_) => AdminError::Unauthorized("invalid admin token"),
    })
}

/// A `POST` body must say it is JSON.
fn json_body(headers: &HeaderMap) -> Result<(), AdminError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(AdminError::NotJson)
    }
}

fn no_store(value: Value) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(value)).into_response()
}

async fn init(State(node): State<Node>, headers: HeaderMap) -> Result<Response, AdminError> {
    same_origin(&headers)?;
    let insecure = node.config().admin.insecure;
    let authenticated = authenticated(&node, &headers).is_ok();
    Ok(no_store(json!({
        "insecure": insecure,
        "authenticated": authenticated,
        "node": node.info().name,
    })))
}

#[derive(Deserialize)]
struct Login {
    password: String,
}

/// Failed logins by address: when the current window began, and how many.
#[derive(Default)]
struct LoginFailures(parking_lot::Mutex<HashMap<IpAddr, (Instant, u32)>>);

impl LoginFailures {
    /// Whether `ip` may try a password now.
    fn allowed(&self, ip: IpAddr, now: Instant) -> bool {
        // A plain mutex: a lookup, never held across an await.
        let map = self.0.lock();
        match map.get(&ip) {
            Some((since, count)) => {
                now.duration_since(*since) >= FAILURE_WINDOW || *count < MAX_FAILED_LOGINS
            }
            None => true,
        }
    }

    fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.0.lock();
        if map.len() >= FAILURE_TABLE && !map.contains_key(&ip) {
            map.retain(|_, (since, _)| now.duration_since(*since) < FAILURE_WINDOW);
            if map.len() >= FAILURE_TABLE {
                map.clear();
            }
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

async fn login(State(node): State<Node>, request: Request) -> Result<Response, AdminError> {
    // The server puts the peer's address in every request; a router mounted
    // elsewhere may not, and then every caller shares one failure count.
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip());
    let headers = request.headers().clone();
    same_origin(&headers)?;
    json_body(&headers)?;
    let cfg = &node.config().admin;
    if cfg.insecure {
        return Err(AdminError::BadRequest(
            "admin.insecure is on: there is nothing to log in to".into(),
        ));
    }
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let login: Login = serde_json::from_slice(&body)
        .map_err(|e| AdminError::BadRequest(format!("expected {{\"password\": \"…\"}}: {e}")))?;
    let ip = peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let failures = node.front_door_state::<LoginFailures>();
    let now = Instant::now();
    if !failures.allowed(ip, now) {
        return Err(AdminError::Throttled);
    }
    let right = !cfg.password.is_empty() && same_password(&login.password, &cfg.password);
    if !right {
        failures.failed(ip, now);
        tracing::warn!(%ip, "admin login with a wrong password");
        return Err(AdminError::Unauthorized("wrong password"));
    }
    let token = token::sign(&cfg.secret, crate::auth::unix_now(), token::SESSION_TTL)
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    Ok(no_store(json!({
        "token": token,
        "expires_in": token::SESSION_TTL.as_secs(),
    })))
}

/// Compares two passwords in constant time, their lengths included: the
/// SHA-256 digests are compared, which always have the same length, so the time
/// taken says nothing of how long the password is or how much of a guess matched.
fn same_password(given: &str, expected: &str) -> bool {
    use ring::digest::{digest, SHA256};
    let given = digest(&SHA256, given.as_bytes());
    let expected = digest(&SHA256, expected.as_bytes());
    bool::from(given.as_ref().ct_eq(expected.as_ref()))
}

#[derive(Deserialize)]
struct ApiCall {
    method: String,
    #[serde(default = "empty_object")]
    params: Value,
}

fn empty_object() -> Value {
    json!({})
}

async fn api(
    State(node): State<Node>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    same_origin(&headers)?;
    authenticated(&node, &headers)?;
    json_body(&headers)?;
    let call: ApiCall = serde_json::from_slice(&body)
        .map_err(|e| AdminError::BadRequest(format!("expected {{\"method\", \"params\"}}: {e}")))?;
    match crate::api::execute(&node, &call.method, call.params).await {
        Ok(answer) => Ok(no_store(answer)),
        Err(crate::api::ApiError::UnknownMethod(m)) => {
            Err(AdminError::BadRequest(format!("unknown API method {m:?}")))
        }
        Err(e) => Err(AdminError::BadRequest(e.to_string())),
    }
}

async fn config(State(node): State<Node>, headers: HeaderMap) -> Result<Response, AdminError> {
    same_origin(&headers)?;
    authenticated(&node, &headers)?;
    Ok(no_store(config_view::masked(node.config())))
}

#[derive(Deserialize)]
struct TailQuery {
    #[serde(default)]
    channel: String,
}

/// Longest channel name a tail takes; the node's own checks come after.
const MAX_CHANNEL_LEN: usize = 1024;

async fn tail_handler(
    State(node): State<Node>,
    headers: HeaderMap,
    query: Result<Query<TailQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AdminError> {
    same_origin(&headers)?;
    authenticated(&node, &headers)?;
    let Query(query) = query.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    if query.channel.is_empty() || query.channel.len() > MAX_CHANNEL_LEN {
        return Err(AdminError::BadRequest(format!(
            "channel is required, at most {MAX_CHANNEL_LEN} bytes"
        )));
    }
    tail::open(&node, &query.channel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_admin_page_has_no_inline_script_or_style() {
        assert_eq!(crate::web::inline_code(ADMIN_PAGE), None);
    }

    #[test]
    fn cross_site_requests_are_refused() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:9000")])).is_ok());
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9000"),
            ("origin", "http://127.0.0.1:9000")
        ]))
        .is_ok());
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9000"),
            ("origin", "http://evil.example")
        ]))
        .is_err());
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9000"),
            ("origin", "http://127.0.0.1:9001")
        ]))
        .is_err());
        assert!(same_origin(&headers(&[("host", "127.0.0.1:9000"), ("origin", "null")])).is_err());
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9000"),
            ("sec-fetch-site", "cross-site")
        ]))
        .is_err());
    }

    #[test]
    fn passwords_compare_whole() {
        assert!(same_password("correct horse", "correct horse"));
        assert!(!same_password("correct hors", "correct horse"));
        assert!(!same_password("correct horsE", "correct horse"));
        assert!(!same_password("", "correct horse"));
    }

    #[test]
    fn an_address_is_throttled_after_its_failed_logins() {
        let failures = LoginFailures::default();
        let ip = IpAddr::from([10, 0, 0, 1]);
        let now = Instant::now();
        for _ in 0..MAX_FAILED_LOGINS {
            assert!(failures.allowed(ip, now));
            failures.failed(ip, now);
        }
        assert!(!failures.allowed(ip, now));
        assert!(failures.allowed(IpAddr::from([10, 0, 0, 2]), now));
        assert!(failures.allowed(ip, now + FAILURE_WINDOW));
    }
}

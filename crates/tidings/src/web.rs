//! How the browser pages Tidings serves go out (the demo chat of the binary, the
//! admin UI): the security headers of every HTML page, and the headers of their
//! scripts and stylesheets.
//!
//! The Content-Security-Policy allows only this origin's scripts, styles and
//! connections, so a page keeps no inline script or style: they are files of
//! their own. Pages also forbid framing, MIME sniffing and the referrer.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

/// What a page may load and where it may connect.
///
/// - Scripts and styles come from this origin only: no inline code, no `eval`.
/// - `connect-src 'self'` covers WebSocket (`ws:`/`wss:`) and HTTP to this host
///   and port: CSP Level 3 matches `'self'` against the page's own host for the
///   WebSocket schemes too, which every transport of the demo needs.
/// - `img-src data:` is for the empty favicon (`<link rel="icon" href="data:,">`),
///   which keeps browsers from asking for `/favicon.ico`.
/// - `frame-ancestors 'none'` with `X-Frame-Options: DENY` (for browsers that
///   predate it): no other site may frame the page.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The headers every HTML page carries.
const PAGE_HEADERS: [(HeaderName, &str); 4] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
];

/// An HTML page with the security headers.
pub fn page(html: &'static str) -> Response {
    let mut response = asset("text/html; charset=utf-8", html);
    let headers = response.headers_mut();
    for (name, value) in PAGE_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A script or stylesheet of a page: its type, not to be sniffed, revalidated on
/// every load so a new binary's files are picked up.
pub fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Whether an HTML page needs inline code, which [`CONTENT_SECURITY_POLICY`]
/// forbids: a `<style>` element, a `style=` attribute, a `<script>` without
/// `src`, or an event handler attribute such as `onclick=`. The text of what was
/// found, for a test's message.
pub fn inline_code(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    if lower.contains("<style") {
        return Some("an inline <style>".into());
    }
    if lower.contains(" style=") {
        return Some("a style attribute".into());
    }
    for tag in lower.match_indices("<script").map(|(at, _)| &lower[at..]) {
        let open = &tag[..tag.find('>').unwrap_or(tag.len())];
        if !open.contains(" src=") {
            return Some(format!("an inline script: {open}"));
        }
    }
    let handler = lower.split(" on").skip(1).find(|rest| {
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    });
    handler.map(|rest| format!("an event handler: on{}", &rest[..rest.len().min(20)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_carry_the_security_headers() {
        let response = page("<!doctype html>");
        let headers = response.headers();
        assert_eq!(
            headers[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
    }

    #[test]
    fn inline_code_is_found() {
        assert!(inline_code(r#"<script src="/a.js"></script><p class="x">"#).is_none());
        assert!(inline_code("<script>alert(1)</script>").is_some());
        assert!(inline_code(r#"<p style="color:red">"#).is_some());
        assert!(inline_code(r#"<button onclick="x()">"#).is_some());
        assert!(inline_code("<style>p{}</style>").is_some());
    }
}

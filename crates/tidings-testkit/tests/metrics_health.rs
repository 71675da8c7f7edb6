//! `/health`, `/metrics` and the demo page at `/`.

use std::time::Duration;

use serde_json::{json, Value};
use tidings_testkit::metrics::sample;
use tidings_testkit::TidingsServer;

/// Polls `/metrics` until `check` accepts it, with a deadline.
async fn metrics_until(
    server: &TidingsServer,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, text) = server.http_get("/metrics").await?;
        assert_eq!(status, 200);
        if check(&text) {
            return Ok(text);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("metrics never showed {what}:\n{text}");
        }
        tokio::task::yield_now().await;
    }
}

fn at_least(text: &str, name: &str, labels: &[(&str, &str)], min: f64) -> bool {
    sample(text, name, labels).is_some_and(|v| v >= min)
}

#[tokio::test]
async fn health_returns_200_with_empty_object() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let (status, body) = server.http_get("/health").await?;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body)?, json!({}));
    Ok(())
}

#[tokio::test]
async fn metrics_report_connections_subscriptions_and_channels() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut a = server.connected_client().await?;
    let mut b = server.connected_client().await?;
    a.subscribe("one").await?;
    b.subscribe("one").await?;
    b.subscribe("two").await?;
    let text = metrics_until(&server, "2 connections, 3 subscriptions, 2 channels", |t| {
        sample(t, "tidings_connections", &[]) == Some(2.0)
            && sample(t, "tidings_subscriptions", &[]) == Some(3.0)
            && sample(t, "tidings_channels", &[]) == Some(2.0)
    })
    .await?;
    assert!(text.contains("# TYPE tidings_connections gauge"), "{text}");

    b.close().await?;
    metrics_until(&server, "the closed connection gone", |t| {
        sample(t, "tidings_connections", &[]) == Some(1.0)
            && sample(t, "tidings_subscriptions", &[]) == Some(1.0)
            && sample(t, "tidings_channels", &[]) == Some(1.0)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn metrics_count_messages_commands_and_disconnects() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    client.subscribe("counted").await?;
    client.publish("counted", json!(1)).await?;
    client.next_pub("counted").await?;
    let mut bad = server.connected_client().await?;
    let (code, _) = bad.send_raw_expect_close("{oops").await?;
    assert_eq!(code, 3501);

    metrics_until(&server, "commands, messages and a 3501 disconnect", |t| {
        at_least(t, "tidings_commands_total", &[("method", "connect")], 2.0)
            && at_least(t, "tidings_commands_total", &[("method", "subscribe")], 1.0)
            && at_least(t, "tidings_commands_total", &[("method", "publish")], 1.0)
            && at_least(t, "tidings_messages_received_total", &[], 3.0)
            && at_least(t, "tidings_messages_sent_total", &[], 1.0)
            && at_least(t, "tidings_disconnects_total", &[("code", "3501")], 1.0)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn metrics_count_api_commands_by_method() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    server.publish("x", json!(1)).await?;
    server.publish("x", json!(2)).await?;
    server.api_ok("info", json!({})).await?;
    metrics_until(&server, "api commands", |t| {
        at_least(
            t,
            "tidings_api_commands_total",
            &[("method", "publish")],
            2.0,
        ) && at_least(t, "tidings_api_commands_total", &[("method", "info")], 1.0)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn root_serves_the_demo_chat_page() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let (status, body) = server.http_get("/").await?;
    assert_eq!(status, 200);
    let lower = body.to_lowercase();
    assert!(
        lower.contains("<html"),
        "not an HTML page: {}",
        &body[..body.len().min(200)]
    );
    assert!(
        body.contains(r#"<script type="module" src="/demo.js">"#)
            && body.contains(r#"href="/demo.css""#),
        "the page does not load its script and styles"
    );
    let (status, script) = server.http_get("/demo.js").await?;
    assert_eq!(status, 200);
    assert!(
        script.contains("connection/websocket"),
        "the page does not connect anywhere"
    );
    assert!(
        script.contains("from '/tidings-core.js'"),
        "the page does not load its client module"
    );
    let (status, styles) = server.http_get("/demo.css").await?;
    assert_eq!(status, 200);
    assert!(styles.contains(":root"), "not the stylesheet");
    // The client module it imports: centrifuge-js and the @tidings/react core, bundled.
    let (status, module) = server.http_get("/tidings-core.js").await?;
    assert_eq!(status, 200);
    assert!(
        module.contains("export{") && module.contains("/connection/long_poll"),
        "not the bundled client module: {}",
        &module[..module.len().min(200)]
    );
    Ok(())
}

#[tokio::test]
async fn the_demo_page_carries_security_headers() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let page = tidings_testkit::raw_http::request(server.addr(), "GET", "/", &[], "").await?;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    let csp = page
        .header("content-security-policy")
        .expect("no Content-Security-Policy");
    let directive = |name: &str| {
        csp.split(';')
            .map(str::trim)
            .find(|d| d.split_whitespace().next() == Some(name))
            .map(str::to_owned)
    };
    assert_eq!(
        directive("default-src").as_deref(),
        Some("default-src 'none'")
    );
    assert_eq!(
        directive("script-src").as_deref(),
        Some("script-src 'self'")
    );
    assert_eq!(directive("style-src").as_deref(), Some("style-src 'self'"));
    assert_eq!(
        directive("connect-src").as_deref(),
        Some("connect-src 'self'")
    );
    assert_eq!(
        directive("frame-ancestors").as_deref(),
        Some("frame-ancestors 'none'")
    );
    assert!(!csp.contains("unsafe-"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    // The page's own files are not sniffed into another type either.
    for (path, kind) in [
        ("/demo.js", "text/javascript"),
        ("/demo.css", "text/css"),
        ("/tidings-core.js", "text/javascript"),
    ] {
        let asset = tidings_testkit::raw_http::request(server.addr(), "GET", path, &[], "").await?;
        assert_eq!(asset.status, 200, "{path}");
        assert!(
            asset
                .header("content-type")
                .is_some_and(|t| t.starts_with(kind)),
            "{path}: {:?}",
            asset.header("content-type")
        );
        assert_eq!(
            asset.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn development_profile_prints_a_working_api_key() -> anyhow::Result<()> {
    // Started without TIDINGS_HTTP_API_KEY: the testkit read the printed key.
    let server = TidingsServer::start().await?;
    let key = server.api_key().unwrap_or_default().to_owned();
    assert!(!key.is_empty());
    assert!(
        server
            .logs()
            .iter()
            .any(|l| l.trim() == format!("server API key: {key}")),
        "key line missing"
    );
    let (status, _) = server.api_raw("info", "{}", &[("X-API-Key", &key)]).await?;
    assert_eq!(status, 200);
    Ok(())
}

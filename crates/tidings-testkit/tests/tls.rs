//! `http_server.tls`: https:// and wss:// with a self-signed certificate made by
//! the test, and mutual TLS with `client_ca_pem`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{json, Value};
use tidings_testkit::TidingsServer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);
const API_KEY: &str = "tls-test-key";

/// A self-signed server certificate for localhost and 127.0.0.1.
struct ServerCert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn server_cert() -> anyhow::Result<ServerCert> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    Ok(ServerCert {
        cert_pem: made.cert.pem(),
        key_pem: made.key_pair.serialize_pem(),
        der: made.cert.der().clone(),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client that trusts `ca` only, optionally presenting a client certificate.
fn connector(
    ca: &CertificateDer<'static>,
    client_cert: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client_cert {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn tls_connect(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = timeout(WAIT, TcpStream::connect(addr))
        .await
        .context("TCP connect timed out")??;
    let name = ServerName::try_from("localhost")?;
    Ok(timeout(WAIT, connector.connect(name, tcp))
        .await
        .context("TLS handshake timed out")??)
}

/// POSTs `body` to `path` over HTTPS and returns the status and the body.
async fn https_post(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut stream = tls_connect(connector, addr).await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // The server closes after the response (`Connection: close`); a missing
    // close_notify after a complete response is not this test's concern.
    let _ = timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .context("HTTPS response timed out")?;
    let text = String::from_utf8(response)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no complete response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, body.to_owned()))
}

/// Reads text frames until one holds a line that `want` accepts.
async fn next_line_where<S>(ws: &mut S, want: impl Fn(&Value) -> bool) -> anyhow::Result<Value>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("timed out waiting for a frame")?
            .context("socket ended")??;
        if let Message::Text(text) = frame {
            for line in text.lines() {
                let value: Value = serde_json::from_str(line)?;
                if want(&value) {
                    return Ok(value);
                }
            }
        }
    }
}

fn tls_config(cert: &ServerCert, extra: Value) -> Value {
    let mut tls = json!({
        "enabled": true,
        "cert_pem": cert.cert_pem,
        "key_pem": cert.key_pem,
    });
    if let (Some(tls), Value::Object(extra)) = (tls.as_object_mut(), extra) {
        tls.extend(extra);
    }
    json!({
        "http_server": { "tls": tls },
        "http_api": { "key": API_KEY },
        "client": { "allow_anonymous_connect_without_token": true },
        "channel": { "without_namespace": { "allow_subscribe_for_client": true, "allow_subscribe_for_anonymous": true } },
    })
}

#[tokio::test]
async fn wss_client_receives_what_is_published_over_https() -> anyhow::Result<()> {
    let cert = server_cert()?;
    let server = TidingsServer::builder()
        .config_json(tls_config(&cert, json!({})))
        .start()
        .await?;
    assert!(server.is_tls(), "the server should announce https://");
    let connector = connector(&cert.der, None)?;

    let stream = tls_connect(&connector, server.addr()).await?;
    let url = format!(
        "wss://localhost:{}/connection/websocket",
        server.addr().port()
    );
    let (mut ws, response) = timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .context("WebSocket handshake timed out")??;
    assert_eq!(response.status().as_u16(), 101);
    ws.send(Message::text(
        json!({"id": 1, "connect": {}}).to_string()
            + "\n"
            + &json!({"id": 2, "subscribe": {"channel": "news"}}).to_string(),
    ))
    .await?;
    let subscribed = next_line_where(&mut ws, |v| v["id"] == 2).await?;
    assert!(subscribed.get("error").is_none(), "{subscribed}");

    let (status, body) = https_post(
        &connector,
        server.addr(),
        "/api/publish",
        &json!({"channel": "news", "data": {"text": "over TLS"}}).to_string(),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let publication = next_line_where(&mut ws, |v| v["push"]["pub"].is_object()).await?;
    assert_eq!(publication["push"]["channel"], "news");
    assert_eq!(publication["push"]["pub"]["data"]["text"], "over TLS");
    Ok(())
}

#[tokio::test]
async fn tls_listener_refuses_plain_http_and_untrusted_clients_fail() -> anyhow::Result<()> {
    let cert = server_cert()?;
    let server = TidingsServer::builder()
        .config_json(tls_config(&cert, json!({})))
        .start()
        .await?;
    // Plain HTTP gets no HTTP answer from a TLS listener.
    let mut tcp = TcpStream::connect(server.addr()).await?;
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let _ = timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .context("plain request was neither answered nor closed")?;
    assert!(!buf.starts_with(b"HTTP/"), "plain HTTP was answered");
    // A client that trusts another certificate refuses this one.
    let other = server_cert()?;
    let untrusting = connector(&other.der, None)?;
    assert!(tls_connect(&untrusting, server.addr()).await.is_err());
    Ok(())
}

#[tokio::test]
async fn client_ca_pem_requires_a_client_certificate() -> anyhow::Result<()> {
    let cert = server_cert()?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let client_key = rcgen::KeyPair::generate()?;
    let mut client_params = rcgen::CertificateParams::new(vec!["backend".to_string()])?;
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &ca, &ca_key)?;

    let server = TidingsServer::builder()
        .config_json(tls_config(&cert, json!({ "client_ca_pem": ca.pem() })))
        .start()
        .await?;
    let body = json!({"channel": "x", "data": {}}).to_string();

    let anonymous = connector(&cert.der, None)?;
    // Refused during or right after the handshake: no HTTP answer at all.
    if let Ok((status, _)) = https_post(&anonymous, server.addr(), "/api/publish", &body).await {
        bail!("a client without a certificate got HTTP {status}");
    }

    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(client_key.serialize_der()));
    let with_cert = connector(&cert.der, Some((client_cert.der().clone(), key)))?;
    let (status, reply) = https_post(&with_cert, server.addr(), "/api/publish", &body).await?;
    assert_eq!(status, 200, "{reply}");
    Ok(())
}

#[tokio::test]
async fn connection_that_never_completes_the_handshake_is_closed() -> anyhow::Result<()> {
    let cert = server_cert()?;
    let mut config = tls_config(&cert, json!({}));
    config["http_server"]["header_read_timeout"] = json!("1s");
    let server = TidingsServer::builder().config_json(config).start().await?;
    let mut silent = TcpStream::connect(server.addr()).await?;
    let mut buf = Vec::new();
    let closed = timeout(WAIT, silent.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "still open after {WAIT:?}");
    assert!(buf.is_empty());
    // The listener still serves a real client afterwards.
    let connector = connector(&cert.der, None)?;
    let (status, _) = https_post(&connector, server.addr(), "/api/info", "{}").await?;
    assert_eq!(status, 200);
    Ok(())
}

/// GETs `path` in plain HTTP and returns the status, or `None` when no HTTP answer
/// came back.
async fn plain_get_status(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<Option<u16>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    let _ = timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .context("plain request was neither answered nor closed")?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok()))
}

#[tokio::test]
async fn internal_port_follows_tls_unless_tls_external() -> anyhow::Result<()> {
    let cert = server_cert()?;
    let connector = connector(&cert.der, None)?;

    let mut config = tls_config(&cert, json!({}));
    config["http_server"]["internal_port"] = json!("0");
    let server = TidingsServer::builder()
        .config_json(config.clone())
        .start()
        .await?;
    let internal = server.internal_addr().context("no internal listener")?;
    let (status, body) = https_post(&connector, internal, "/api/info", "{}").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(plain_get_status(internal, "/health").await?, None);
    drop(server);

    config["http_server"]["tls_external"] = json!(true);
    let server = TidingsServer::builder().config_json(config).start().await?;
    let internal = server.internal_addr().context("no internal listener")?;
    assert!(server.is_tls(), "the public listener keeps TLS");
    assert_eq!(plain_get_status(internal, "/health").await?, Some(200));
    let (status, _) = https_post(&connector, server.addr(), "/api/info", "{}").await?;
    assert_eq!(status, 404, "the API is not on the public listener");
    Ok(())
}

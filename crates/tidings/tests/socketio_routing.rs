//! Polling without sticky sessions: two nodes in one process, each on its own
//! listener, with a poll forwarder between them standing in for the cluster's
//! node-to-node request/reply. A client that opened its session on node B sends and
//! polls through node A, and gets exactly what it would get from B.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tidings::socketio::{self, transport::node_tag, ForwardedPoll, PollForwarder};
use tidings::{Config, Node};

async fn serve(node: &Node) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = tidings::server::router(node);
    let task_node = node.clone();
    tokio::spawn(async move {
        let _ = tidings::server::run(listener, task_node, app, std::future::pending()).await;
    });
    Ok(format!("http://{addr}/socket.io/?EIO=4&transport=polling"))
}

/// A forwarder that reaches `peer` directly when the tag is the peer's.
fn forwarder_to(peer: &Node) -> PollForwarder {
    let peer = peer.clone();
    Arc::new(move |tag: String, request: ForwardedPoll| {
        let peer = peer.clone();
        Box::pin(async move {
            if tag != node_tag(&peer) {
                return None;
            }
            Some(socketio::serve_forwarded(&peer, request).await)
        })
    })
}

#[tokio::test]
async fn a_session_opened_on_one_node_is_served_through_the_other() -> anyhow::Result<()> {
    let mut config = Config::development();
    config.socketio.ping_interval = Duration::from_secs(30);
    let a = Node::new(config.clone());
    let b = Node::new(config);
    socketio::registry(&a).set_forwarder(forwarder_to(&b));
    socketio::registry(&b).set_forwarder(forwarder_to(&a));
    let url_a = serve(&a).await?;
    let url_b = serve(&b).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    let open = http.get(&url_b).send().await?.text().await?;
    let open: serde_json::Value = serde_json::from_str(open.strip_prefix('0').context("open")?)?;
    let sid = open["sid"].as_str().context("sid")?.to_string();
    assert!(sid.starts_with(&node_tag(&b)), "the sid names node B");
    let on_a = format!("{url_a}&sid={sid}");
    let on_b = format!("{url_b}&sid={sid}");

    // CONNECT through A, its reply polled through A.
    let posted = http.post(&on_a).body("40").send().await?;
    assert_eq!(posted.status().as_u16(), 200);
    assert_eq!(posted.text().await?, "ok");
    let connect = http.get(&on_a).send().await?.text().await?;
    assert!(connect.starts_with("40{\"sid\":"), "{connect}");

    // Join through B, publish on B's side, poll through A.
    http.post(&on_b)
        .body(r#"421["tidings:join",{"room":"routed"}]"#)
        .send()
        .await?;
    assert_eq!(
        http.get(&on_a).send().await?.text().await?,
        r#"431[{"ok":true,"room":"routed"}]"#
    );
    b.publish(tidings::PublishRequest::new(
        "routed",
        tidings::protocol::RawJson::from_value(&serde_json::json!({"hop": 1})),
    ))
    .await?;
    assert_eq!(
        http.get(&on_a).send().await?.text().await?,
        r#"42["message",{"hop":1}]"#
    );
    assert!(socketio::registry(&a).is_empty(), "node A holds no session");
    assert_eq!(socketio::registry(&b).len(), 1);

    // A sid with B's tag that B does not know: B's own answer comes back.
    let unknown = format!("{url_a}&sid={}nosuchsession", node_tag(&b));
    let res = http.get(&unknown).send().await?;
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(
        res.text().await?,
        r#"{"code":1,"message":"Session ID unknown"}"#
    );

    // A bad packet through A closes the session on B.
    let res = http.post(&on_a).body("abc").send().await?;
    assert_eq!(res.status().as_u16(), 400);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !socketio::registry(&b).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session outlived a bad packet"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

//! The real binary on the NATS engine (`engine.type = "nats"` against a private
//! `nats-server -js`): two nodes share publications, history, recovery and
//! presence, and a backend publishes straight to NATS.

use std::time::Duration;

use serde_json::{json, Value};
use tidings_testkit::profile::open_config;
use tidings_testkit::{NatsServer, TidingsServer};
use tokio::time::Instant;

const API_KEY: &str = "nats-engine-key";
const SECRET: &str = "nats-engine-secret";
const WAIT: Duration = Duration::from_secs(15);

async fn node(nats: &NatsServer) -> anyhow::Result<TidingsServer> {
    let mut config = open_config(API_KEY, SECRET);
    config["engine"] = json!({
        "type": "nats",
        "nats": { "url": nats.url(), "presence_ttl": "2s" }
    });
    TidingsServer::builder().config_json(config).start().await
}

/// Publishes through the API until the node's engine is connected.
async fn publish_when_ready(
    node: &TidingsServer,
    channel: &str,
    data: Value,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        match node.publish(channel, data.clone()).await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn two_nodes_share_publications_history_recovery_and_presence() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let a = node(&nats).await?;
    let b = node(&nats).await?;
    publish_when_ready(&a, "warmup", json!(0)).await?;
    publish_when_ready(&b, "warmup", json!(0)).await?;

    let mut alice = a.connected_client().await?;
    let sub = alice.subscribe("news").await?;
    let epoch = sub["epoch"].as_str().unwrap_or_default().to_string();
    assert!(!epoch.is_empty(), "{sub}");
    assert_eq!(sub["offset"].as_u64().unwrap_or(0), 0, "{sub}");

    // Published through B, delivered on A, with the epoch A announced.
    let first = b.publish("news", json!({"n": 1})).await?;
    assert_eq!(first["offset"], 1, "{first}");
    assert_eq!(first["epoch"], epoch.as_str());
    let got = alice.next_pub("news").await?;
    assert_eq!(
        (got["data"]["n"].as_u64(), got["offset"].as_u64()),
        (Some(1), Some(1))
    );

    // A client on B publishes; A's client gets it.
    let mut bob = b.connected_client().await?;
    bob.publish("news", json!({"n": 2})).await?;
    let got = alice.next_pub("news").await?;
    assert_eq!(
        (got["data"]["n"].as_u64(), got["offset"].as_u64()),
        (Some(2), Some(2))
    );

    // History read on either node.
    let history = b
        .api_ok("history", json!({"channel": "news", "limit": 10}))
        .await?;
    let offsets: Vec<u64> = history["publications"]
        .as_array()
        .map(|l| l.iter().filter_map(|p| p["offset"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(offsets, vec![1, 2], "{history}");

    // Presence on B lists A's client.
    let alice_id = alice.client_id().unwrap_or_default().to_string();
    let presence = b.api_ok("presence", json!({"channel": "news"})).await?;
    assert!(presence["presence"].get(&alice_id).is_some(), "{presence}");

    // Alice leaves; two more are published through A; she comes back on B and
    // recovers exactly what she missed.
    alice.close().await?;
    a.publish("news", json!({"n": 3})).await?;
    a.publish("news", json!({"n": 4})).await?;
    let mut again = b.connected_client().await?;
    let recovered = again
        .subscribe_with(json!({"channel": "news", "recover": true, "offset": 2, "epoch": epoch}))
        .await?;
    assert_eq!(recovered["recovered"], true, "{recovered}");
    let offsets: Vec<u64> = recovered["publications"]
        .as_array()
        .map(|l| l.iter().filter_map(|p| p["offset"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(offsets, vec![3, 4], "{recovered}");

    // Her entry leaves presence (removed on unsubscribe, or expired by TTL).
    let deadline = Instant::now() + WAIT;
    loop {
        let presence = a.api_ok("presence", json!({"channel": "news"})).await?;
        if presence["presence"].get(&alice_id).is_none() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "alice stayed in presence: {presence}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A backend publishes straight to NATS and gets the position back.
    let backend = async_nats::connect(nats.url()).await?;
    let reply = backend
        .request(
            "tidings.publish",
            json!({"channel": "news", "data": {"n": 5}})
                .to_string()
                .into(),
        )
        .await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(reply["result"]["offset"], 5, "{reply}");
    assert_eq!(reply["result"]["epoch"], epoch.as_str(), "{reply}");
    let got = again.next_pub("news").await?;
    assert_eq!(
        (got["data"]["n"].as_u64(), got["offset"].as_u64()),
        (Some(5), Some(5))
    );
    // Channel rules apply to it as to the API: a bad channel name is refused.
    let refused = backend
        .request(
            "tidings.publish",
            json!({"channel": "nope:x", "data": 1}).to_string().into(),
        )
        .await?;
    let refused: Value = serde_json::from_slice(&refused.payload)?;
    assert!(refused["error"]["code"].is_number(), "{refused}");
    Ok(())
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> anyhow::Result<Pki> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let server_key = rcgen::KeyPair::generate()?;
    let mut server_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?;
    server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server = server_params.signed_by(&server_key, &ca, &ca_key)?;
    let client_key = rcgen::KeyPair::generate()?;
    let mut client_params = rcgen::CertificateParams::new(vec!["tidings".to_string()])?;
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &ca, &ca_key)?;
    Ok(Pki {
        ca: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    })
}

#[tokio::test]
async fn the_engine_talks_to_nats_over_mutual_tls() -> anyhow::Result<()> {
    let pki = pki()?;
    let dir = std::env::temp_dir().join(format!("tidings-nats-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let write = |name: &str, text: &str| -> anyhow::Result<String> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path.to_string_lossy().into_owned())
    };
    let (cert, key, ca) = (
        write("server.pem", &pki.server_cert)?,
        write("server.key", &pki.server_key)?,
        write("ca.pem", &pki.ca)?,
    );
    let port = tidings_testkit::brokers::free_port()?;
    let nats_bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or("nats-server");
    let store = dir.join("js");
    let mut child = tokio::process::Command::new(nats_bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&store)
        .args([
            "--tlsverify",
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
            "--tlscacert",
            &ca,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "nats-server with TLS did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // PEM given inline (CA) and as files (client certificate), both forms work.
    let mut config = open_config(API_KEY, SECRET);
    config["engine"] = json!({
        "type": "nats",
        "nats": {
            "url": format!("tls://127.0.0.1:{port}"),
            "tls": {
                "enabled": true,
                "server_ca_pem": pki.ca,
                "cert_pem": write("client.pem", &pki.client_cert)?,
                "key_pem": write("client.key", &pki.client_key)?,
            }
        }
    });
    let node = TidingsServer::builder().config_json(config).start().await?;
    let first = publish_when_ready(&node, "secure", json!({"n": 1})).await?;
    assert_eq!(first["offset"], 1, "{first}");
    let history = node
        .api_ok("history", json!({"channel": "secure", "limit": 10}))
        .await?;
    assert_eq!(history["publications"][0]["data"]["n"], 1, "{history}");

    // Without a client certificate the server refuses the node: publishes fail.
    let mut config = open_config(API_KEY, SECRET);
    config["engine"] = json!({
        "type": "nats",
        "nats": {
            "url": format!("tls://127.0.0.1:{port}"),
            "tls": { "enabled": true, "server_ca_pem": pki.ca }
        }
    });
    let refused = TidingsServer::builder().config_json(config).start().await?;
    let (status, body) = refused
        .api("publish", json!({"channel": "secure", "data": 2}))
        .await?;
    assert!(
        status != 200 || body.get("error").is_some(),
        "a node without a client certificate published: {status} {body}"
    );
    child.start_kill().ok();
    child.wait().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A subscribe whose presence entry cannot be written fails with an internal
/// error (as in Centrifugo) instead of succeeding without the client in presence.
/// The presence bucket is made here, full and refusing new messages.
#[tokio::test]
async fn a_subscribe_whose_presence_cannot_be_written_fails() -> anyhow::Result<()> {
    use async_nats::jetstream::stream;
    let nats = NatsServer::start().await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    js.create_stream(stream::Config {
        name: "KV_tidings_presence".into(),
        subjects: vec!["$KV.tidings_presence.>".into()],
        max_messages_per_subject: 1,
        max_bytes: 1,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::Memory,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    })
    .await?;
    let node = node(&nats).await?;
    publish_when_ready(&node, "warm", json!({})).await?;
    let mut client = node.connected_client().await?;
    let code = client
        .error_code(json!({"subscribe": {"channel": "room"}}))
        .await?;
    assert_eq!(code, 100);
    // Not half subscribed: the node does not count the subscription.
    let info = node.api_ok("info", json!({})).await?;
    let node_info = &info["nodes"][0];
    assert_eq!(node_info["num_subs"], json!(0), "{info}");
    assert_eq!(node_info["num_channels"], json!(0), "{info}");
    Ok(())
}

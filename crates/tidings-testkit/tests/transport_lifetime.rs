//! How long emulated and long-poll sessions live: a client that vanishes is
//! cleaned up (presence removed, leave sent), abandoned polls never pile up,
//! one poll at a time per session, and unknown sessions are 404.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tidings_testkit::raw_http::{self, RawResponse};
use tidings_testkit::{ProtoClient, TidingsServer, Transport};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Waits for the `kind` push of `client_id` in `channel`, passing over
/// presence pushes of other clients.
async fn presence_push_of(
    client: &mut ProtoClient,
    kind: &str,
    channel: &str,
    client_id: &str,
) -> anyhow::Result<Value> {
    loop {
        let push = client.next_push_of(kind, channel).await?;
        if push[kind]["info"]["client"] == json!(client_id) {
            return Ok(push);
        }
    }
}

/// Client ids in the server API's presence of `channel`.
async fn present(server: &TidingsServer, channel: &str) -> anyhow::Result<HashSet<String>> {
    let result = server
        .api_ok("presence", json!({ "channel": channel }))
        .await?;
    Ok(result["presence"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default())
}

/// Polls `check` until it returns true or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + limit;
    let mut interval = tokio::time::interval(Duration::from_millis(50));
    loop {
        interval.tick().await;
        if check().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what}: still not true after {limit:?}");
        }
    }
}

// ---- a long-poll client that stops polling ---------------------------------

const SESSION_TIMEOUT: Duration = Duration::from_secs(1);

#[tokio::test]
async fn long_poll_session_without_polls_is_closed_after_the_session_timeout() -> anyhow::Result<()>
{
    let server = TidingsServer::builder()
        .env("TIDINGS_LONG_POLL_HOLD", "500ms")
        // Long enough that a session is not closed between two of its polls when
        // the machine is loaded (a probe then got the session's close, 3000).
        .env("TIDINGS_LONG_POLL_SESSION_TIMEOUT", "3s")
        .start()
        .await?;
    // The watcher polls all along (holds of 500 ms), so it outlives the
    // session timeout many times over.
    let mut watcher = server.connect_over(Transport::LongPoll).await?;
    watcher.subscribe("lobby").await?;
    let watcher_id = watcher.client_id().unwrap_or_default().to_owned();
    let mut ghost = server.connect_over(Transport::LongPoll).await?;
    ghost.subscribe("lobby").await?;
    let ghost_id = ghost.client_id().unwrap_or_default().to_owned();
    presence_push_of(&mut watcher, "join", "lobby", &ghost_id).await?;
    assert_eq!(
        present(&server, "lobby").await?,
        HashSet::from([watcher_id.clone(), ghost_id.clone()])
    );

    let vanished = Instant::now();
    ghost.vanish();
    watcher.set_wait(Duration::from_secs(5));
    let leave = presence_push_of(&mut watcher, "leave", "lobby", &ghost_id).await?;
    let after = vanished.elapsed();
    assert!(
        after >= SESSION_TIMEOUT - Duration::from_millis(50),
        "the session was closed {after:?} after its last poll, before the timeout: {leave}"
    );
    assert_eq!(
        present(&server, "lobby").await?,
        HashSet::from([watcher_id])
    );

    // The watcher is still connected and served.
    server.publish("lobby", json!("still here")).await?;
    assert_eq!(
        watcher.next_pub("lobby").await?["data"],
        json!("still here")
    );
    Ok(())
}

// ---- a streaming client that goes away -------------------------------------

async fn stream_client_that_drops_leaves_at_once(transport: Transport) -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut watcher = server.connect_over(Transport::WebSocket).await?;
    watcher.subscribe("lobby").await?;
    let watcher_id = watcher.client_id().unwrap_or_default().to_owned();
    let mut dropper = server.connect_over(transport).await?;
    dropper.subscribe("lobby").await?;
    let dropper_id = dropper.client_id().unwrap_or_default().to_owned();
    presence_push_of(&mut watcher, "join", "lobby", &dropper_id).await?;
    assert_eq!(server.connections_gauge().await?, 2.0);

    dropper.vanish();
    watcher.set_wait(Duration::from_secs(3));
    presence_push_of(&mut watcher, "leave", "lobby", &dropper_id).await?;
    assert_eq!(
        present(&server, "lobby").await?,
        HashSet::from([watcher_id])
    );
    eventually(Duration::from_secs(3), "one connection left", || async {
        Ok(server.connections_gauge().await? == 1.0)
    })
    .await
}

#[tokio::test]
async fn sse_client_that_drops_its_stream_leaves_at_once() -> anyhow::Result<()> {
    stream_client_that_drops_leaves_at_once(Transport::Sse).await
}

#[tokio::test]
async fn http_stream_client_that_drops_its_stream_leaves_at_once() -> anyhow::Result<()> {
    stream_client_that_drops_leaves_at_once(Transport::HttpStream).await
}

// ---- raw long-poll requests ------------------------------------------------

/// Opens a long-poll session and returns its id.
async fn open_session(addr: SocketAddr) -> anyhow::Result<String> {
    let response = raw_http::request(
        addr,
        "POST",
        "/connection/long_poll",
        &[("Content-Type", "application/json")],
        r#"{"id":1,"connect":{}}"#,
    )
    .await?;
    if response.status != 200 {
        bail!("open -> {}: {}", response.status, response.body);
    }
    let answer: Value = serde_json::from_str(&response.body)?;
    answer["session"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no session in {answer}"))
}

fn poll_path(session: &str, cursor: u64) -> String {
    format!("/connection/long_poll?session={session}&cursor={cursor}")
}

async fn poll(addr: SocketAddr, session: &str, cursor: u64) -> anyhow::Result<RawResponse> {
    raw_http::request(addr, "GET", &poll_path(session, cursor), &[], "").await
}

/// Sends frame `data` for `session` through `/emulation`.
async fn emulate(addr: SocketAddr, session: &str, data: &str) -> anyhow::Result<RawResponse> {
    let body = json!({ "session": session, "data": data }).to_string();
    raw_http::request(
        addr,
        "POST",
        "/emulation",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await
}

/// The messages of a 200 poll response.
fn messages(response: &RawResponse) -> anyhow::Result<(u64, Vec<Value>)> {
    if response.status != 200 {
        bail!("poll -> {}: {}", response.status, response.body);
    }
    let body: Value = serde_json::from_str(&response.body)?;
    let cursor = body["cursor"].as_u64().context("no cursor")?;
    Ok((
        cursor,
        body["messages"].as_array().cloned().unwrap_or_default(),
    ))
}

// ---- abandoned polls -------------------------------------------------------

const SESSIONS: usize = 100;
const ABANDONED_PER_SESSION: usize = 100;

/// How long a probe poll may be held before the client gives up on it too.
const PROBE_LIMIT: Duration = Duration::from_millis(100);

/// One session's share of the abandoned polls. Each poll is written in full
/// and a probe poll follows it: a 409 shows the first is held by the server,
/// which is when it is dropped unread. When the probe got there first, it is
/// the one held, and it is abandoned after [`PROBE_LIMIT`]. Either way one
/// held poll per round is abandoned. Then the session must take a poll.
async fn abandon_polls(addr: SocketAddr, http: reqwest::Client) -> anyhow::Result<()> {
    let session = open_session(addr).await?;
    // Collect the connect reply, so that polls with cursor 1 hold.
    let (cursor, _) = messages(&poll(addr, &session, 0).await?)?;
    anyhow::ensure!(cursor == 1, "cursor {cursor} after the connect reply");
    let probe_url = format!("http://{addr}{}", poll_path(&session, 1));
    for _ in 0..ABANDONED_PER_SESSION {
        let first = raw_http::start_request(addr, "GET", &poll_path(&session, 1), &[], "").await?;
        // When the probe does not answer within the limit, it is the one
        // held, and the timeout drops (abandons) it.
        if let Ok(probe) = tokio::time::timeout(PROBE_LIMIT, http.get(&probe_url).send()).await {
            let probe = probe?;
            let status = probe.status().as_u16();
            anyhow::ensure!(status == 409, "probe -> {status}: {}", probe.text().await?);
        }
        drop(first);
    }
    // No abandoned poll is still counted as in progress: with a reply
    // waiting, the next poll answers at once (409 only until the server has
    // seen the last abandon).
    let sent = emulate(
        addr,
        &session,
        r#"{"id":2,"presence_stats":{"channel":"x"}}"#,
    )
    .await?;
    anyhow::ensure!(
        sent.status == 204,
        "emulation -> {}: {}",
        sent.status,
        sent.body
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = poll(addr, &session, 1).await?;
        match response.status {
            200 => {
                let (_, replies) = messages(&response)?;
                anyhow::ensure!(
                    replies.iter().any(|r| r["id"] == json!(2)),
                    "the poll did not carry the reply: {}",
                    response.body
                );
                return Ok(());
            }
            409 if Instant::now() < deadline => {}
            status => bail!("poll after abandoned polls -> {status}: {}", response.body),
        }
    }
}

/// 10,000 polls that were held by the server when their client gave up on
/// them leave no poll in progress and no session behind: every session can
/// be polled again at once, and once nobody polls, the session count returns
/// to its baseline.
#[tokio::test]
async fn ten_thousand_abandoned_polls_leave_no_session_behind() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_LONG_POLL_HOLD", "500ms")
        // Long enough that a session is not closed between two of its polls when
        // the machine is loaded (a probe then got the session's close, 3000).
        .env("TIDINGS_LONG_POLL_SESSION_TIMEOUT", "3s")
        .start()
        .await?;
    let addr = server.addr();
    let baseline = server.connections_gauge().await?;
    let started = Instant::now();

    let mut tasks = JoinSet::new();
    for _ in 0..SESSIONS {
        tasks.spawn(abandon_polls(addr, reqwest::Client::new()));
    }
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(40), tasks.join_next())
        .await
        .context("abandoning polls took too long")?
    {
        joined??;
    }
    let abandoned_in = started.elapsed();
    let total = SESSIONS * ABANDONED_PER_SESSION;
    let live = server.connections_gauge().await?;
    assert!(
        live <= baseline + SESSIONS as f64,
        "{live} connections for {SESSIONS} sessions"
    );

    // Nobody polls any more: every session times out.
    eventually(
        Duration::from_secs(15),
        "sessions back to the baseline",
        || async { Ok(server.connections_gauge().await? == baseline) },
    )
    .await?;
    let info = server.api_ok("info", json!({})).await?;
    let clients: u64 = info["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["num_clients"].as_u64())
        .sum();
    assert_eq!(clients as f64, baseline, "{info}");
    eprintln!(
        "{total} abandoned polls took {abandoned_in:?}; back to the baseline at {:?}",
        started.elapsed()
    );
    Ok(())
}

// ---- one poll at a time ----------------------------------------------------

/// Long enough that, even on a loaded machine, the held poll is still waiting when
/// the publication arrives: a poll whose hold ran out answers an empty list, which
/// the checks below refuse.
const HOLD: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_second_concurrent_poll_gets_409_and_the_first_still_returns_its_messages(
) -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_LONG_POLL_HOLD", "10s")
        .env("TIDINGS_LONG_POLL_SESSION_TIMEOUT", "30s")
        // The checks below need a poll that holds until the publication: a server
        // ping (every 25 s by default) is a message too and ends a held poll early.
        // On a loaded machine this test can run past 25 s (it did once in CI), so
        // pings are moved out of its way.
        .env("TIDINGS_CLIENT_PING_INTERVAL", "300s")
        .start()
        .await?;
    let addr = server.addr();
    let session = open_session(addr).await?;
    let (mut cursor, _) = messages(&poll(addr, &session, 0).await?)?;
    let subscribe = emulate(addr, &session, r#"{"id":2,"subscribe":{"channel":"c"}}"#).await?;
    assert_eq!(subscribe.status, 204, "{}", subscribe.body);
    // Collect the subscribe reply and the session's own join, so that the
    // next poll has nothing waiting and holds.
    let (mut replied, mut joined) = (false, false);
    while !(replied && joined) {
        let (next, received) = messages(&poll(addr, &session, cursor).await?)?;
        cursor = next;
        for message in received {
            replied |= message["id"] == json!(2);
            joined |= message.pointer("/push/join").is_some();
        }
    }

    let deadline = Instant::now() + HOLD * 3;
    let first = loop {
        // The first poll is completely written before the second starts.
        let first =
            raw_http::start_request(addr, "GET", &poll_path(&session, cursor), &[], "").await?;
        // Give the server time to take the first before the second arrives: when
        // the second gets there first instead (a loaded machine), this round
        // costs a whole hold, and only a few fit before the deadline.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second =
            raw_http::start_request(addr, "GET", &poll_path(&session, cursor), &[], "").await?;
        let second = raw_http::read_response(second, HOLD * 2).await?;
        if second.status == 409 {
            assert!(!second.body.is_empty(), "a 409 says why");
            break first;
        }
        // The second reached the server first and held; the first was refused.
        let refused = raw_http::read_response(first, HOLD * 2).await?;
        assert_eq!(refused.status, 409, "{}", refused.body);
        assert!(Instant::now() < deadline, "never saw two polls overlap");
    };

    server.publish("c", json!({ "n": 1 })).await?;
    let response = raw_http::read_response(first, HOLD * 2).await?;
    let body: Value = serde_json::from_str(&response.body)?;
    assert_eq!(response.status, 200, "{body}");
    assert_eq!(body["first"], json!(cursor + 1), "{body}");
    assert_eq!(body["cursor"], json!(cursor + 1), "{body}");
    let push = &body["messages"][0]["push"];
    assert_eq!(push["channel"], json!("c"), "{body}");
    assert_eq!(push["pub"]["data"], json!({ "n": 1 }), "{body}");
    assert_eq!(push["pub"]["offset"], json!(1), "{body}");
    Ok(())
}

// ---- the close survives a lost response ------------------------------------

/// A poll response can be lost (the connection drops, the client times out).
/// Messages survive that through the cursor; the `close` must too: a poll
/// retried after losing the response that carried it still learns the code,
/// instead of a 404 that would leave the client guessing (and reconnecting
/// after a disconnect that said not to).
#[tokio::test]
async fn a_poll_retried_after_a_lost_response_still_gets_the_close() -> anyhow::Result<()> {
    const LP_SECRET: &str = "lifetime-secret";
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY", LP_SECRET)
        .env("TIDINGS_LONG_POLL_HOLD", "5s")
        .env("TIDINGS_LONG_POLL_SESSION_TIMEOUT", "10s")
        .start()
        .await?;
    let addr = server.addr();
    let token = tidings_testkit::hs256_token(LP_SECRET, "dana", None)?;
    let connect = json!({ "id": 1, "connect": { "token": token } }).to_string();
    let opened = raw_http::request(
        addr,
        "POST",
        "/connection/long_poll",
        &[("Content-Type", "application/json")],
        &connect,
    )
    .await?;
    assert_eq!(opened.status, 200, "{}", opened.body);
    let session = serde_json::from_str::<Value>(&opened.body)?["session"]
        .as_str()
        .context("no session")?
        .to_owned();
    let (cursor, replies) = messages(&poll(addr, &session, 0).await?)?;
    assert!(replies[0]["connect"].is_object(), "{replies:?}");

    let lost = raw_http::start_request(addr, "GET", &poll_path(&session, cursor), &[], "").await?;
    server
        .api_ok(
            "disconnect",
            json!({ "user": "dana", "disconnect": { "code": 4501, "reason": "banned" } }),
        )
        .await?;
    // The server answers with the close; suppose this answer never reached
    // the client (a proxy dropped it, the client timed out just before).
    let lost = raw_http::read_response(lost, Duration::from_secs(5)).await?;
    let lost: Value = serde_json::from_str(&lost.body)?;
    assert_eq!(lost["close"]["code"], json!(4501), "{lost}");

    let retried = poll(addr, &session, cursor).await?;
    assert_eq!(
        retried.status, 200,
        "a retried poll after the lost answer {lost} got {}: {}",
        retried.status, retried.body
    );
    let body: Value = serde_json::from_str(&retried.body)?;
    assert_eq!(body["close"]["code"], json!(4501), "{body}");
    assert_eq!(body["close"]["reason"], json!("banned"), "{body}");
    Ok(())
}

// ---- unknown sessions ------------------------------------------------------

#[tokio::test]
async fn unknown_session_gets_404_on_poll_emulation_and_delete() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let addr = server.addr();
    let polled = poll(addr, "no-such-session", 0).await?;
    assert_eq!(polled.status, 404, "{}", polled.body);
    let emulated = emulate(
        addr,
        "no-such-session",
        r#"{"id":1,"presence":{"channel":"x"}}"#,
    )
    .await?;
    assert_eq!(emulated.status, 404, "{}", emulated.body);
    let deleted = raw_http::request(
        addr,
        "DELETE",
        "/connection/long_poll?session=no-such-session",
        &[],
        "",
    )
    .await?;
    assert_eq!(deleted.status, 404, "{}", deleted.body);

    // A session that existed is unknown once it was ended and collected.
    let session = open_session(addr).await?;
    let ended = raw_http::request(
        addr,
        "DELETE",
        &format!("/connection/long_poll?session={session}"),
        &[],
        "",
    )
    .await?;
    assert_eq!(ended.status, 204, "{}", ended.body);
    // Its last messages and then its close stay collectable; then it goes.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut cursor = 0;
    let mut closed = false;
    loop {
        let response = poll(addr, &session, cursor).await?;
        if response.status == 404 {
            break;
        }
        let body: Value = serde_json::from_str(&response.body)
            .with_context(|| format!("{}: {}", response.status, response.body))?;
        closed |= body["close"]["code"] == json!(3000);
        cursor = body["cursor"].as_u64().unwrap_or(cursor);
        assert!(
            Instant::now() < deadline,
            "the ended session is never forgotten"
        );
    }
    assert!(
        closed,
        "the session was forgotten before its close was collected"
    );
    let late = emulate(addr, &session, r#"{"id":9,"presence":{"channel":"x"}}"#).await?;
    assert_eq!(late.status, 404, "{}", late.body);
    Ok(())
}

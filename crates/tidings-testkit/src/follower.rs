//! A subscriber that behaves like an SDK on a flaky cluster and keeps score.
//!
//! [`Follower`] follows one channel whose publications carry a sequence number
//! (`{"seq": N}`). It does what centrifuge-js does: on an unsubscribe push 2500 it
//! resubscribes with recovery; when its connection dies it reconnects (to
//! whichever node the test names) and recovers. Everything it gets is checked as
//! it arrives: offsets must follow each other within an epoch, nothing may arrive
//! twice, and every sequence number it never got must fall where the server said
//! `recovered: false`.

use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::proto_client::ProtoClient;
use crate::transport::Transport;

/// One channel, followed across reconnects and resubscribes.
pub struct Follower {
    channel: String,
    client: Option<ProtoClient>,
    /// The stream position of the last publication received (or of the last
    /// subscribe reply).
    epoch: String,
    offset: u64,
    /// Sequence numbers received, in order.
    pub seqs: Vec<u64>,
    /// `seqs.len()` at each `recovered: false`: a gap may lie between
    /// `seqs[i - 1]` and `seqs[i]`.
    pub reported_at: Vec<usize>,
    /// Broken promises: duplicates, offsets that skip within an epoch.
    pub errors: Vec<String>,
    /// Resubscribes after 2500, and reconnects.
    pub resubscribes: usize,
    pub reconnects: usize,
    /// Subscribes answered `recovered: true`.
    pub recovered: usize,
}

impl Follower {
    /// Connects over WebSocket to `base_url` and subscribes to `channel`.
    ///
    /// # Errors
    ///
    /// Fails when the connection or the subscribe fails.
    pub async fn start(base_url: &str, channel: &str) -> anyhow::Result<Self> {
        let mut f = Self {
            channel: channel.to_owned(),
            client: None,
            epoch: String::new(),
            offset: 0,
            seqs: Vec::new(),
            reported_at: Vec::new(),
            errors: Vec::new(),
            resubscribes: 0,
            reconnects: 0,
            recovered: 0,
        };
        f.connect(base_url).await?;
        Ok(f)
    }

    /// The position the follower would recover from.
    pub fn position(&self) -> (u64, &str) {
        (self.offset, &self.epoch)
    }

    /// Whether the connection is alive.
    pub fn is_connected(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_gone())
    }

    /// Drops the connection without a goodbye, as a crashed client would.
    pub fn vanish(&mut self) {
        if let Some(c) = self.client.take() {
            c.vanish();
        }
    }

    /// Opens a new connection to `base_url` and subscribes, recovering from the
    /// last position when there is one.
    ///
    /// # Errors
    ///
    /// Fails when the connection or the subscribe fails.
    pub async fn connect(&mut self, base_url: &str) -> anyhow::Result<()> {
        self.vanish();
        let mut client = ProtoClient::connect(base_url, Transport::WebSocket, json!({}))
            .await
            .with_context(|| format!("connecting to {base_url}"))?;
        let result = client.subscribe_with(self.subscribe_request()).await?;
        if !self.epoch.is_empty() {
            self.reconnects += 1;
        }
        self.client = Some(client);
        self.take_subscribe(&result)
    }

    fn subscribe_request(&self) -> Value {
        let mut req = json!({ "channel": self.channel, "recoverable": true });
        if !self.epoch.is_empty() {
            req["recover"] = json!(true);
            req["offset"] = json!(self.offset);
            req["epoch"] = json!(self.epoch);
        }
        req
    }

    /// Files a subscribe result: its publications, or the gap it reports.
    fn take_subscribe(&mut self, result: &Value) -> anyhow::Result<()> {
        let recovering = !self.epoch.is_empty();
        let recovered = result["recovered"].as_bool().unwrap_or(false);
        if recovering && !recovered {
            self.reported_at.push(self.seqs.len());
        }
        if recovering && recovered {
            self.recovered += 1;
            for publication in result["publications"].as_array().into_iter().flatten() {
                self.take_pub(publication);
            }
        }
        let epoch = result["epoch"].as_str().unwrap_or("").to_owned();
        let offset = result["offset"].as_u64().unwrap_or(0);
        if epoch.is_empty() {
            bail!("the subscribe result has no epoch: {result}");
        }
        if recovered && (epoch != self.epoch || offset != self.offset) {
            self.errors.push(format!(
                "recovered to {}:{} but the reply says {epoch}:{offset}",
                self.epoch, self.offset
            ));
        }
        self.epoch = epoch;
        self.offset = offset;
        Ok(())
    }

    fn take_pub(&mut self, publication: &Value) {
        let offset = publication["offset"].as_u64().unwrap_or(0);
        let seq = publication["data"]["seq"].as_u64().unwrap_or(0);
        if offset <= self.offset {
            self.errors.push(format!(
                "duplicate: offset {offset} (seq {seq}) after {}",
                self.offset
            ));
            return;
        }
        if offset != self.offset + 1 {
            self.errors.push(format!(
                "silent gap: offset {offset} (seq {seq}) after {}",
                self.offset
            ));
        }
        self.offset = offset;
        self.seqs.push(seq);
    }

    /// Reads for up to `limit`, resubscribing on 2500. Returns `false` when the
    /// connection died (call [`Follower::connect`] then).
    ///
    /// # Errors
    ///
    /// Fails when a resubscribe is refused.
    pub async fn pump(&mut self, limit: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + limit;
        loop {
            let Some(client) = self.client.as_mut() else {
                return Ok(false);
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(true);
            }
            client.set_wait(left.min(Duration::from_millis(250)));
            let push = match client.next_push().await {
                Ok(push) => push,
                Err(_) if client.is_gone() => {
                    self.vanish();
                    return Ok(false);
                }
                Err(_) => continue,
            };
            if push["channel"].as_str() != Some(self.channel.as_str()) {
                continue;
            }
            if let Some(publication) = push.get("pub") {
                self.take_pub(publication);
            } else if let Some(unsub) = push.get("unsubscribe") {
                let code = unsub["code"].as_u64().unwrap_or(0);
                if code < 2500 {
                    bail!("unsubscribed for good: {unsub}");
                }
                self.resubscribes += 1;
                let req = self.subscribe_request();
                let Some(client) = self.client.as_mut() else {
                    return Ok(false);
                };
                client.set_wait(Duration::from_secs(10));
                let result = match client.subscribe_with(req).await {
                    Ok(r) => r,
                    Err(_) => {
                        // Refused for now (the broker is down) or cut: an SDK
                        // tries again later; here, over a new connection.
                        self.vanish();
                        return Ok(false);
                    }
                };
                self.take_subscribe(&result)?;
            }
        }
    }

    /// Reads until the follower has sequence number `seq` (or a later one).
    ///
    /// # Errors
    ///
    /// Fails when it does not arrive within `limit` or the connection dies.
    pub async fn wait_for_seq(&mut self, seq: u64, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.seqs.last().copied().unwrap_or(0) < seq {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "seq {seq} did not arrive within {limit:?}; last {:?} at {}:{}, {} resubscribes, \
                     {} gap reports, errors {:?}",
                    self.seqs.last(),
                    self.epoch,
                    self.offset,
                    self.resubscribes,
                    self.reported_at.len(),
                    self.errors
                );
            }
            if !self.pump(left.min(Duration::from_millis(200))).await? {
                bail!("the connection died while waiting for seq {seq}");
            }
        }
        Ok(())
    }

    /// Checks the score against the sequence numbers that were published
    /// (`published`, ascending) and those whose publish outcome is unknown
    /// (`uncertain`): nothing twice, nothing out of order, and every published
    /// number either received or inside a reported gap. The follower must have
    /// subscribed before the first of them was published.
    pub fn verdict(&self, published: &[u64], uncertain: &[u64]) -> Result<(), String> {
        let mut problems = self.errors.clone();
        for pair in self.seqs.windows(2) {
            if pair[1] <= pair[0] {
                problems.push(format!("seq {} after {}", pair[1], pair[0]));
            }
        }
        let received: std::collections::HashSet<u64> = self.seqs.iter().copied().collect();
        for seq in &received {
            if !published.contains(seq) && !uncertain.contains(seq) {
                problems.push(format!("seq {seq} was never published"));
            }
        }
        for &seq in published {
            if received.contains(&seq) {
                continue;
            }
            // Where would it have been? Between seqs[i-1] and seqs[i].
            let i = self.seqs.partition_point(|&s| s < seq);
            let reported = self.reported_at.contains(&i);
            if !reported {
                problems.push(format!(
                    "seq {seq} missing without a recovered:false report"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            problems.truncate(20);
            let shown: Vec<u64> = self.seqs.iter().take(60).copied().collect();
            Err(format!(
                "{}; received {shown:?}, reports at {:?}",
                problems.join("; "),
                self.reported_at
            ))
        }
    }
}

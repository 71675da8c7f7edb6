//! Batch publishing on Redis: a batch becomes one pipeline per shard on the
//! shared connections (one round trip each, the shards in parallel), with one
//! script call per run of publications to the same channel.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use redis::{RedisError, Value};
use tidings_protocol::StreamPosition;

use super::broker::{parse_position, RedisBroker};
use super::ENGINE;
use crate::broker::{BatchPublish, BrokerError, EngineError, PublishOptions, IDEMPOTENCY_WINDOW};
use crate::engine::epoch::new_epoch;

impl RedisBroker {
    /// The EVALSHA of `PUBLISH_LUA` for one publication (see `publish_script`).
    fn single_cmd(
        &self,
        channel: &str,
        json: &[u8],
        opts: &PublishOptions,
        server: &str,
    ) -> redis::Cmd {
        let keys = &self.inner.keys;
        let idem_key = opts.idempotency_key.as_deref().unwrap_or("");
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.inner.publish_script.get_hash())
            .arg(3)
            .arg(keys.stream(channel))
            .arg(keys.meta(channel))
            .arg(keys.idempotency(channel, idem_key))
            .arg(keys.client_channel(channel))
            .arg(json)
            .arg(opts.history_size)
            .arg(opts.history_ttl.as_millis().max(1) as u64)
            .arg(self.inner.meta_ttl.of(channel).as_secs())
            .arg(new_epoch())
            .arg(if opts.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(IDEMPOTENCY_WINDOW.as_secs())
            .arg(server);
        cmd
    }

    /// Publishes a batch as one pipeline per shard (see [`Self::publish_on_shard`]).
    /// A channel lives on one shard, so each channel's publications keep their
    /// order; publications to channels of different shards are not ordered
    /// against each other.
    pub(super) async fn publish_many(
        &self,
        items: Vec<BatchPublish>,
    ) -> Vec<Result<StreamPosition, BrokerError>> {
        let cluster = self.inner.conns.first().cluster().is_some();
        if self.inner.shards.len() == 1 && !cluster {
            return self.publish_on_shard(0, items).await;
        }
        // One pipeline per shard; on a Redis Cluster one per channel (a pipeline
        // goes to one slot).
        let n = items.len();
        let mut groups: HashMap<(usize, String), (Vec<usize>, Vec<BatchPublish>)> = HashMap::new();
        for (i, item) in items.into_iter().enumerate() {
            let shard = self.inner.shard_of(&item.channel);
            let group = if cluster {
                item.channel.clone()
            } else {
                String::new()
            };
            let (at, batch) = groups.entry((shard, group)).or_default();
            at.push(i);
            batch.push(item);
        }
        let runs = groups
            .into_iter()
            .map(|((shard, _), (at, batch))| async move {
                (at, self.publish_on_shard(shard, batch).await)
            });
        let mut results: Vec<Option<Result<StreamPosition, BrokerError>>> =
            (0..n).map(|_| None).collect();
        for (at, shard_results) in futures_util::future::join_all(runs).await {
            for (i, r) in at.into_iter().zip(shard_results) {
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(EngineError::failed(ENGINE, "publish", "no reply").into()))
            })
            .collect()
    }

    /// Publishes the publications of one shard as one pipeline on its shared
    /// connection, so they cost one round trip. Runs of publications to the same channel with
    /// the same history settings (and no idempotency key) become one call of
    /// `PUBLISH_MANY_LUA` each, at most [`BATCH_RUN_MAX`] long; the others one
    /// call of `PUBLISH_LUA` or one PUBLISH each. Redis runs a pipeline in order,
    /// so the publications take effect in the order given.
    async fn publish_on_shard(
        &self,
        shard: usize,
        mut items: Vec<BatchPublish>,
    ) -> Vec<Result<StreamPosition, BrokerError>> {
        let n = items.len();
        let mut results: Vec<Option<Result<StreamPosition, BrokerError>>> =
            (0..n).map(|_| None).collect();
        let mut encoded: Vec<Option<Vec<u8>>> = Vec::with_capacity(n);
        for (i, item) in items.iter_mut().enumerate() {
            item.publication.offset = 0;
            match crate::broker::encode_publication(&item.publication) {
                Ok(json) => encoded.push(Some(json)),
                Err(e) => {
                    encoded.push(None);
                    results[i] = Some(Err(EngineError::failed(ENGINE, "publish", e).into()));
                }
            }
        }
        if encoded.iter().any(Option::is_some) {
            let scripts = [
                (&self.inner.publish_script, self.inner.publish_text.as_str()),
                (
                    &self.inner.publish_many_script,
                    self.inner.publish_many_text.as_str(),
                ),
            ];
            let loaded_on = &self.inner.shards[shard].scripts_loaded_on;
            let (items, encoded) = (&items, &encoded);
            let replies = self
                .inner
                .conns
                .get(shard)
                .call_on("publish", |link, mut c| async move {
                    let generation = link.generation;
                    // Built here: the scripts take the run id of the server the
                    // pipeline goes to.
                    let (pipe, steps) = self.plan(items, encoded, &link.server);
                    let pipe = &pipe;
                    if steps.is_empty() {
                        return Ok((steps, Vec::new()));
                    }
                    // On a connection where the scripts were not loaded yet, load
                    // them at the head of the same pipeline: an EVALSHA that failed
                    // with NOSCRIPT while the commands after it succeeded would
                    // have to be sent again, after them, out of order.
                    let load = loaded_on.load(Ordering::Relaxed) != generation;
                    let mut replies: Vec<redis::RedisResult<Value>> = if load {
                        let mut loading = redis::pipe();
                        loading.ignore_errors();
                        for (_, text) in scripts {
                            loading.cmd("SCRIPT").arg("LOAD").arg(text);
                        }
                        for cmd in pipe.cmd_iter() {
                            loading.add_command(cmd.clone());
                        }
                        let mut all: Vec<redis::RedisResult<Value>> =
                            loading.query_async(&mut c).await?;
                        let rest = all.split_off(scripts.len().min(all.len()));
                        if let Some(Err(e)) = all.into_iter().find(Result::is_err) {
                            return Err(e);
                        }
                        loaded_on.store(generation, Ordering::Relaxed);
                        rest
                    } else {
                        pipe.query_async(&mut c).await?
                    };
                    // Redis lost the scripts since (SCRIPT FLUSH): load them and
                    // send the commands that failed again. Only this batch can
                    // then be applied out of order.
                    let missing: Vec<usize> = replies
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.as_ref().is_err_and(is_noscript))
                        .map(|(k, _)| k)
                        .collect();
                    if !missing.is_empty() {
                        for (script, _) in scripts {
                            script.load_async(&mut c).await?;
                        }
                        loaded_on.store(generation, Ordering::Relaxed);
                        let mut again = redis::pipe();
                        again.ignore_errors();
                        let cmds: Vec<&redis::Cmd> = pipe.cmd_iter().collect();
                        for &k in &missing {
                            again.add_command(cmds[k].clone());
                        }
                        let retried: Vec<redis::RedisResult<Value>> =
                            again.query_async(&mut c).await?;
                        for (k, r) in missing.into_iter().zip(retried) {
                            replies[k] = r;
                        }
                    }
                    Ok((steps, replies))
                })
                .await;
            match replies {
                Ok((steps, replies)) if replies.len() == steps.len() => {
                    for ((first, count, kind), reply) in steps.into_iter().zip(replies) {
                        let positions = read_step(kind, count, reply);
                        for (k, r) in positions.into_iter().enumerate() {
                            results[first + k] = Some(r);
                        }
                    }
                }
                Ok((steps, replies)) => {
                    let why = format!("{} replies to a pipeline of {}", replies.len(), steps.len());
                    fill_errors(&mut results, &EngineError::failed(ENGINE, "publish", why));
                }
                Err(e) => fill_errors(&mut results, &e),
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(EngineError::failed(ENGINE, "publish", "no reply").into()))
            })
            .collect()
    }

    /// The pipeline of one shard's publications and what each of its commands
    /// answers for: its first item, how many items, and how to read its reply.
    /// `server` is the run id the scripts get (see `conn::Link`).
    fn plan(
        &self,
        items: &[BatchPublish],
        encoded: &[Option<Vec<u8>>],
        server: &str,
    ) -> (redis::Pipeline, Vec<(usize, usize, StepKind)>) {
        let n = items.len();
        let keys = &self.inner.keys;
        let mut steps: Vec<(usize, usize, StepKind)> = Vec::new();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut i = 0;
        while i < n {
            let Some(json) = &encoded[i] else {
                i += 1;
                continue;
            };
            let item = &items[i];
            let opts = &item.opts;
            if opts.history_size == 0 && opts.idempotency_key.is_none() {
                let mut payload = Vec::with_capacity(json.len() + 4);
                payload.extend_from_slice(b"P0::");
                payload.extend_from_slice(json);
                pipe.cmd(self.inner.keys.publish_command())
                    .arg(keys.client_channel(&item.channel))
                    .arg(payload);
                steps.push((i, 1, StepKind::Plain));
                i += 1;
                continue;
            }
            // The run of publications that can share one script call.
            let groupable = |j: usize| {
                let other = &items[j];
                encoded[j].is_some()
                    && other.channel == item.channel
                    && other.opts.idempotency_key.is_none()
                    && other.opts.history_size == opts.history_size
                    && other.opts.history_ttl == opts.history_ttl
            };
            let mut end = i + 1;
            if opts.idempotency_key.is_none() {
                while end < n && end - i < BATCH_RUN_MAX && groupable(end) {
                    end += 1;
                }
            }
            if end - i == 1 {
                pipe.add_command(self.single_cmd(&item.channel, json, opts, server));
                steps.push((i, 1, StepKind::Script));
            } else {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(self.inner.publish_many_script.get_hash())
                    .arg(2)
                    .arg(keys.stream(&item.channel))
                    .arg(keys.meta(&item.channel))
                    .arg(keys.client_channel(&item.channel))
                    .arg(opts.history_size)
                    .arg(opts.history_ttl.as_millis().max(1) as u64)
                    .arg(self.inner.meta_ttl.of(&item.channel).as_secs())
                    .arg(new_epoch())
                    .arg(server);
                for json in encoded[i..end].iter().flatten() {
                    cmd.arg(json.as_slice());
                }
                pipe.add_command(cmd);
                steps.push((i, end - i, StepKind::Script));
            }
            i = end;
        }
        (pipe, steps)
    }
}

/// Most publications one call of `PUBLISH_MANY_LUA` carries, so one script never
/// holds Redis for long (a few µs per publication).
const BATCH_RUN_MAX: usize = 128;

/// What a command of a batch pipeline answers.
#[derive(Clone, Copy)]
enum StepKind {
    /// PUBLISH without history: the number of receivers.
    Plain,
    /// A publish script: "offset:epoch" of its first publication.
    Script,
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// The positions of the `count` publications one pipeline command published.
fn read_step(
    kind: StepKind,
    count: usize,
    reply: redis::RedisResult<Value>,
) -> Vec<Result<StreamPosition, BrokerError>> {
    let first = match (kind, reply) {
        (_, Err(e)) => Err(EngineError::failed(ENGINE, "publish", e).into()),
        (StepKind::Plain, Ok(_)) => Ok(StreamPosition::default()),
        (StepKind::Script, Ok(v)) => redis::from_redis_value::<String>(v)
            .map_err(|e| EngineError::failed(ENGINE, "publish", e).into())
            .and_then(|s| parse_position(&s)),
    };
    match first {
        Ok(pos) => (0..count as u64)
            .map(|k| {
                Ok(if pos.offset == 0 {
                    pos.clone()
                } else {
                    StreamPosition {
                        offset: pos.offset + k,
                        epoch: pos.epoch.clone(),
                    }
                })
            })
            .collect(),
        Err(e) => (0..count).map(|_| Err(e.clone())).collect(),
    }
}

/// Fails every publication without a result yet.
fn fill_errors(results: &mut [Option<Result<StreamPosition, BrokerError>>], e: &EngineError) {
    for r in results.iter_mut().filter(|r| r.is_none()) {
        *r = Some(Err(e.clone().into()));
    }
}

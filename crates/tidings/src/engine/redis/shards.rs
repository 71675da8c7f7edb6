//! Several Redis shards: each address of `engine.redis.address` (or each entry
//! of `sentinel_address` or `cluster_address`) is a separate Redis, and every channel lives on exactly one of them, chosen from the
//! channel's name by a consistent hash, so every node picks the same shard for a
//! channel with no coordination. The first shard also carries what belongs to no
//! channel: control messages, occupancy, the direct-publish stream.

use std::sync::Arc;
use std::time::Duration;

use super::cluster::ClusterTarget;
use super::conn::{RedisConn, Target};
use super::sentinel::SentinelTarget;
use crate::config::RedisEngineConfig;

/// The command connections of the shards, in the order of the addresses.
#[derive(Clone)]
pub(crate) struct Shards {
    conns: Vec<Arc<RedisConn>>,
}

impl Shards {
    /// One command connection per configured shard, each call bounded by
    /// `response_timeout`.
    ///
    /// # Errors
    /// A message when an address or the TLS settings cannot be used.
    pub(crate) fn connect(
        cfg: &RedisEngineConfig,
        response_timeout: Duration,
    ) -> Result<Self, String> {
        let conns = if !cfg.cluster_address.is_empty() {
            cfg.cluster_address
                .iter()
                .map(|seeds| {
                    let target = Target::Cluster(ClusterTarget::new(cfg, seeds)?);
                    Ok(Arc::new(RedisConn::with_target(
                        cfg,
                        target,
                        response_timeout,
                    )))
                })
                .collect::<Result<Vec<_>, String>>()?
        } else if cfg.sentinel_address.is_empty() {
            cfg.address
                .iter()
                .map(|address| RedisConn::new(cfg, address, response_timeout).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            cfg.sentinel_address
                .iter()
                .map(|sentinels| {
                    let target = Target::Sentinel(SentinelTarget::new(cfg, sentinels)?);
                    Ok(Arc::new(RedisConn::with_target(
                        cfg,
                        target,
                        response_timeout,
                    )))
                })
                .collect::<Result<Vec<_>, String>>()?
        };
        if conns.is_empty() {
            return Err("engine.redis.address is empty".into());
        }
        Ok(Self { conns })
    }

    /// How many shards.
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// The shard of `channel`: its index in the addresses.
    pub(crate) fn index_of(&self, channel: &str) -> usize {
        shard_index(channel, self.conns.len())
    }

    /// The connection of shard `i`.
    pub(crate) fn get(&self, i: usize) -> &Arc<RedisConn> {
        &self.conns[i]
    }

    /// The connection of the shard that keeps `channel`.
    pub(crate) fn of(&self, channel: &str) -> &Arc<RedisConn> {
        self.get(self.index_of(channel))
    }

    /// The shard of what belongs to no channel (control messages, occupancy,
    /// direct publish): the first address.
    pub(crate) fn first(&self) -> &Arc<RedisConn> {
        &self.conns[0]
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<RedisConn>> {
        self.conns.iter()
    }
}

/// The shard (in `0..shards`) of `channel`: Lamping and Veach's jump consistent
/// hash of the channel's 64-bit FNV-1a hash, the choice Centrifugo makes, so a
/// channel lands on the same address under both. Adding a shard at the end moves
/// only about 1/n of the channels.
pub(crate) fn shard_index(channel: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut key = fnv1a64(channel.as_bytes());
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < shards as i64 {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    bucket as usize
}

/// 64-bit FNV-1a.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_takes_everything() {
        assert_eq!(shard_index("anything", 1), 0);
        assert_eq!(shard_index("", 0), 0);
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn channels_spread_over_the_shards_and_few_move_when_one_is_added() {
        let channels: Vec<String> = (0..10_000).map(|i| format!("chat:{i}")).collect();
        let mut counts = [0usize; 4];
        for ch in &channels {
            counts[shard_index(ch, 4)] += 1;
        }
        for c in counts {
            assert!((2_000..3_000).contains(&c), "uneven spread {counts:?}");
        }
        // Going from 4 to 5 shards moves about a fifth, each to the new shard.
        let moved: Vec<&String> = channels
            .iter()
            .filter(|ch| shard_index(ch, 4) != shard_index(ch, 5))
            .collect();
        assert!(
            (1_500..2_500).contains(&moved.len()),
            "{} moved",
            moved.len()
        );
        assert!(moved.iter().all(|ch| shard_index(ch, 5) == 4));
    }
}

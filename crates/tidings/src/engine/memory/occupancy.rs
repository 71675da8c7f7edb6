//! Occupancy kept in this process. One node sees every change itself, so entries
//! need no expiry and nothing is ever reaped.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::occupancy::{Change, OccupancyError, OccupancyTracker};

/// Holders per key.
#[derive(Default)]
pub struct MemoryOccupancy {
    // A plain mutex: each call is one short map update, nothing awaits inside.
    holders: Mutex<HashMap<String, HashSet<String>>>,
}

impl MemoryOccupancy {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl OccupancyTracker for MemoryOccupancy {
    async fn enter(&self, key: &str, node: &str) -> Result<Change, OccupancyError> {
        let mut all = self.holders.lock();
        let holders = all.entry(key.to_owned()).or_default();
        let first = holders.is_empty();
        holders.insert(node.to_owned());
        Ok(Change {
            expired: false,
            edge: first,
        })
    }

    async fn leave(&self, key: &str, node: &str) -> Result<Change, OccupancyError> {
        let mut all = self.holders.lock();
        let Some(holders) = all.get_mut(key) else {
            return Ok(Change::default());
        };
        let removed = holders.remove(node);
        let last = removed && holders.is_empty();
        if holders.is_empty() {
            all.remove(key);
        }
        Ok(Change {
            expired: false,
            edge: last,
        })
    }

    async fn reap(&self, _limit: usize) -> Result<Vec<String>, OccupancyError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_enter_and_the_last_leave_are_the_edges() {
        let o = MemoryOccupancy::new();
        assert!(o.enter("k", "a").await.unwrap().edge);
        assert!(!o.enter("k", "b").await.unwrap().edge);
        assert!(!o.enter("k", "a").await.unwrap().edge, "a refresh");
        assert!(!o.leave("k", "a").await.unwrap().edge);
        assert!(!o.leave("k", "a").await.unwrap().edge, "a repeated leave");
        assert!(o.leave("k", "b").await.unwrap().edge);
        assert!(o.enter("k", "b").await.unwrap().edge);
    }
}

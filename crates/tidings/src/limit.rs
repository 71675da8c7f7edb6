//! Limits that keep one client, or a crowd of them, from taking a node down: how many
//! connections it holds, how fast new ones may arrive, and how fast each connection
//! may send commands.
//!
//! Every check is a counter or a token bucket: no allocation, no await.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::Instant;

/// A token bucket. Each event takes a token; tokens come back at `rate` per second,
/// up to `burst`. It starts full, so a newcomer may burst at once.
///
/// It reads tokio's clock, so tests with paused time control it.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens earned per second.
    rate: f64,
    /// Most tokens the bucket holds.
    burst: f64,
    /// Tokens available at `last`. Fractional, so slow rates earn smoothly.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens that refills at `rate` per second.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Adds what was earned since the last update.
    pub fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Whether the bucket is full (as of the last update).
    pub fn is_full(&self) -> bool {
        self.tokens >= self.burst
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a new client connection was refused. The transports answer both with
/// HTTP 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// The node already holds `client.connection_limit` connections.
    #[error("connection limit reached")]
    ConnectionLimit,
    /// New connections arrive faster than `client.connection_rate_limit`.
    #[error("connection rate limit reached")]
    RateLimit,
}

/// The command budget of one connection (`client.command_rate_limit`), for every
/// front door: each command (Centrifugo) or CONNECT and event packet (Socket.IO)
/// takes a token. A client over budget is refused; one that keeps pushing past
/// `disconnect_after` refusals is closed, and one that slows down until the bucket
/// refills is forgiven.
pub struct CommandBudget {
    bucket: TokenBucket,
    /// Commands refused since the bucket was last full.
    refused: u32,
    /// `refused` at which the connection is closed (3013); 0 never closes.
    disconnect_after: u32,
}

/// What the budget says about one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Allowed,
    /// Refuse it (error 111) and go on.
    Refused,
    /// Too many refusals: close the connection with 3013.
    Exhausted,
}

impl CommandBudget {
    /// The budget `client.command_rate_limit` sets, or `None` when it is off.
    pub fn from_config(
        limit: &crate::config::CommandRateLimitConfig,
        now: Instant,
    ) -> Option<Self> {
        limit.enabled.then(|| Self {
            bucket: TokenBucket::new(limit.rate, limit.burst, now),
            refused: 0,
            disconnect_after: limit.disconnect_after,
        })
    }

    /// Takes a token for one command.
    pub fn check(&mut self, now: Instant) -> Budget {
        self.bucket.refill(now);
        if self.bucket.is_full() {
            self.refused = 0;
        }
        if self.bucket.try_take(now) {
            return Budget::Allowed;
        }
        self.refused = self.refused.saturating_add(1);
        if self.disconnect_after > 0 && self.refused >= self.disconnect_after {
            Budget::Exhausted
        } else {
            Budget::Refused
        }
    }
}

/// Counts the client connections of a node and admits new ones while it is under
/// `client.connection_limit` and `client.connection_rate_limit`.
pub struct ConnectionGate {
    /// Most connections at once; 0 means no limit.
    limit: usize,
    /// Connections admitted and not yet ended. Shared with every permit, which
    /// gives its slot back when dropped.
    open: Arc<AtomicUsize>,
    /// New connections per second. A plain mutex: a few arithmetic operations,
    /// never held across an await.
    rate: Option<Mutex<TokenBucket>>,
}

impl ConnectionGate {
    /// A gate for at most `limit` connections (0: any number) and `rate` new ones
    /// per second, in bursts of as many (0: any rate).
    pub fn new(limit: usize, rate: u32) -> Self {
        Self {
            limit,
            open: Arc::new(AtomicUsize::new(0)),
            rate: (rate > 0).then(|| Mutex::new(TokenBucket::new(rate, rate, Instant::now()))),
        }
    }

    /// Admits one connection; it counts until the permit is dropped.
    ///
    /// # Errors
    /// [`AdmitError`] when the rate or the connection limit is reached. The count is
    /// raised with a compare-and-swap, so simultaneous admissions never take it
    /// past the limit.
    pub fn try_admit(&self) -> Result<ConnectionPermit, AdmitError> {
        if let Some(rate) = &self.rate {
            if !rate.lock().try_take(Instant::now()) {
                return Err(AdmitError::RateLimit);
            }
        }
        self.take_slot()
    }

    /// Takes a slot for a request whose body is still arriving, until the permit is
    /// dropped. Such a request opens no connection, so the rate limit does not
    /// apply; but it holds a socket and its buffers while it waits, so it counts
    /// against the limit like a connection does.
    ///
    /// # Errors
    /// [`AdmitError::ConnectionLimit`] when every slot is taken.
    pub fn try_hold(&self) -> Result<ConnectionPermit, AdmitError> {
        self.take_slot()
    }

    fn take_slot(&self) -> Result<ConnectionPermit, AdmitError> {
        let limit = self.limit;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .map_err(|_| AdmitError::ConnectionLimit)?;
        Ok(ConnectionPermit {
            open: self.open.clone(),
        })
    }

    /// Connections admitted and not yet ended.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// One admitted connection. The task that serves the connection holds it, and
/// dropping it (when the session ends, or when an upgrade never completes) frees
/// the slot.
#[must_use = "the connection counts only while its permit is held"]
pub struct ConnectionPermit {
    open: Arc<AtomicUsize>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(2, 3, t0);
        assert!(bucket.is_full());
        for _ in 0..3 {
            assert!(bucket.try_take(t0));
        }
        assert!(!bucket.try_take(t0));
        // Half a second earns one token at 2 per second.
        assert!(bucket.try_take(t0 + Duration::from_millis(500)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(500)));
        // A long pause fills the bucket, but never beyond the burst.
        bucket.refill(t0 + Duration::from_secs(60));
        assert!(bucket.is_full());
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.try_take(later)).count(), 3);
    }

    #[test]
    fn gate_counts_permits_and_frees_them_on_drop() {
        let gate = ConnectionGate::new(2, 0);
        let a = gate.try_admit().unwrap();
        let _b = gate.try_admit().unwrap();
        assert_eq!(gate.try_admit().err(), Some(AdmitError::ConnectionLimit));
        assert_eq!(gate.open(), 2);
        drop(a);
        assert_eq!(gate.open(), 1);
        assert!(gate.try_admit().is_ok());
    }

    #[test]
    fn simultaneous_admissions_never_pass_the_limit() {
        const LIMIT: usize = 8;
        let gate = Arc::new(ConnectionGate::new(LIMIT, 0));
        let admitted: Vec<Vec<ConnectionPermit>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    let gate = gate.clone();
                    scope.spawn(move || {
                        (0..100)
                            .filter_map(|_| gate.try_admit().ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(admitted.iter().map(Vec::len).sum::<usize>(), LIMIT);
        assert_eq!(gate.open(), LIMIT);
        drop(admitted);
        assert_eq!(gate.open(), 0);
    }

    #[test]
    fn held_bodies_share_the_limit_but_not_the_rate() {
        let gate = ConnectionGate::new(2, 1);
        let connection = gate.try_admit().unwrap();
        // The one token of the rate is spent; a waiting body needs none.
        assert_eq!(gate.try_admit().err(), Some(AdmitError::RateLimit));
        let body = gate.try_hold().unwrap();
        assert_eq!(gate.try_hold().err(), Some(AdmitError::ConnectionLimit));
        drop(body);
        assert!(gate.try_hold().is_ok());
        drop(connection);
    }

    // Paused time: the clock only moves when the test moves it.
    #[tokio::test(start_paused = true)]
    async fn rate_limit_refuses_past_the_burst_until_tokens_return() {
        let gate = ConnectionGate::new(0, 3);
        let permits: Vec<_> = (0..3).map(|_| gate.try_admit().unwrap()).collect();
        assert_eq!(gate.try_admit().err(), Some(AdmitError::RateLimit));
        // The rate limits arrivals, not open connections.
        drop(permits);
        assert_eq!(gate.try_admit().err(), Some(AdmitError::RateLimit));
        tokio::time::advance(Duration::from_millis(340)).await;
        assert!(gate.try_admit().is_ok());
        assert_eq!(gate.try_admit().err(), Some(AdmitError::RateLimit));
    }
}

//! Stream epochs: the random name a channel's stream gets when it is created.
//!
//! A client keeps the epoch with its offset; a stream that is lost and made again
//! gets a new one, so a position from before is recognised as not recoverable. The
//! memory broker makes one per stream, the Redis scripts keep the one offered when
//! a channel has none, and the NATS broker names the stream's subject with it.

use rand::Rng as _;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// A fresh random epoch: 8 ASCII letters and digits (safe in a Redis value, a
/// NATS subject token and a KV value).
pub(crate) fn new_epoch() -> String {
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Whether `s` could be an epoch: 1 to 64 ASCII letters and digits. Wider than what
/// [`new_epoch`] makes, so a longer epoch made by an older or newer node is still
/// read; the NATS broker checks an epoch read back from KV with it before the
/// epoch goes into a subject.
#[cfg(any(feature = "nats", test))]
pub(crate) fn is_epoch(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_epochs_are_epochs_and_differ() {
        let a = new_epoch();
        assert_eq!(a.len(), 8);
        assert!(is_epoch(&a), "{a:?}");
        assert_ne!(a, new_epoch());
        for bad in ["", "a.b", "a b", "é", &"x".repeat(65)] {
            assert!(!is_epoch(bad), "{bad:?}");
        }
    }
}

//! permessage-deflate (RFC 7692): the offer a client makes, the answer, and the
//! compression of messages both ways.
//!
//! Tidings always answers with `server_no_context_takeover` and
//! `client_no_context_takeover`: every message is compressed on its own, in both
//! directions. That costs some ratio on small messages, and buys two things:
//!
//! - **A publication is compressed once, not once per subscriber.** A message's
//!   compressed form does not depend on what the connection sent before, so the
//!   deflate output of one outbox item (the hub encodes a publication once and hands
//!   every subscriber the same bytes) is kept in a small shared cache ([`segment`])
//!   and reused by every connection with the same window size and level.
//! - **No compression state per connection.** Inflating and deflating use one
//!   zlib stream per worker thread, reset per message; an idle connection with
//!   compression costs a few bytes more than one without.
//!
//! A batch of items (several replies and pushes written at once) becomes one
//! message whose compressed payload is the items' compressed segments one after
//! the other. Each segment ends with a sync flush (an empty stored block), so it
//! ends on a byte boundary and the next can start right after it; items are
//! separated by a stored block holding the separator byte.

use std::cell::RefCell;
use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use parking_lot::Mutex;

/// The four bytes a sync flush ends with, which RFC 7692 has the sender drop from
/// the end of every message and the receiver add back.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What the server uses when a client's offer is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateSettings {
    /// zlib level 0–9 (`-1` for zlib's default, 6). Centrifugo's default is 1.
    pub level: i32,
    /// Messages smaller than this many bytes are sent uncompressed.
    pub min_size: usize,
}

/// What one connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The largest LZ77 window the client allows the server to use (9–15).
    pub server_window_bits: u8,
    /// Whether the client asked for a window size (then it is echoed back).
    window_requested: bool,
    pub level: i32,
    pub min_size: usize,
}

impl Negotiated {
    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub fn response_header(&self) -> String {
        let mut out = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if self.window_requested {
            out.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_window_bits
            ));
        }
        out
    }
}

/// Picks the first permessage-deflate offer in the client's
/// `Sec-WebSocket-Extensions` values that Tidings can accept. An offer is declined
/// (and the next one tried) when it has an unknown or repeated parameter, a bad
/// value, or asks for a server window below 512 bytes (`server_max_window_bits=8`,
/// which zlib cannot produce for raw deflate).
pub fn negotiate<'a>(
    offers: impl Iterator<Item = &'a str>,
    settings: &DeflateSettings,
) -> Option<Negotiated> {
    for header in offers {
        for offer in header.split(',') {
            if let Some(n) = accept_offer(offer, settings) {
                return Some(n);
            }
        }
    }
    None
}

fn accept_offer(offer: &str, settings: &DeflateSettings) -> Option<Negotiated> {
    let mut params = offer.split(';').map(str::trim);
    if !params.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = [false; 4];
    let mut window: Option<u8> = None;
    for param in params {
        if param.is_empty() {
            continue;
        }
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                let bits: u8 = value?.parse().ok()?;
                if !(9..=15).contains(&bits) {
                    return None;
                }
                window = Some(bits);
                2
            }
            "client_max_window_bits" => {
                // The client's own window; Tidings inflates with the largest one
                // whatever it is, so only the value's validity matters.
                if let Some(v) = value {
                    let bits: u8 = v.parse().ok()?;
                    if !(8..=15).contains(&bits) {
                        return None;
                    }
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    Some(Negotiated {
        server_window_bits: window.unwrap_or(15),
        window_requested: window.is_some(),
        level: settings.level,
        min_size: settings.min_size,
    })
}

/// Why an incoming compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the limit (close 1009).
    TooLarge,
    /// It is not a deflate stream, or refers to data before its start (close 1007).
    Invalid,
}

thread_local! {
    /// One raw inflate stream per worker thread with the largest window, reset per
    /// message (every client is asked for `client_no_context_takeover`).
    static INFLATE: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Inflates one message's payload, refusing to produce more than `limit` bytes.
pub fn inflate(payload: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    INFLATE.with(|cell| {
        let mut d = cell.borrow_mut();
        d.reset(false);
        let mut out: Vec<u8> = Vec::with_capacity((payload.len() * 2).clamp(64, limit + 1));
        for chunk in [payload, &SYNC_TAIL[..]] {
            let mut data = chunk;
            loop {
                if out.len() > limit {
                    return Err(InflateError::TooLarge);
                }
                if out.capacity() - out.len() < 256 {
                    // Grow by doubling, never past one byte over the limit (so
                    // that crossing it shows).
                    let room = (limit + 1).saturating_sub(out.len());
                    out.reserve(out.capacity().max(4096).min(room).max(1));
                }
                let (before_in, before_out) = (d.total_in(), out.len());
                let status = d
                    .decompress_vec(data, &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Invalid)?;
                let used = (d.total_in() - before_in) as usize;
                data = &data[used..];
                if out.len() > limit {
                    return Err(InflateError::TooLarge);
                }
                if matches!(status, Status::StreamEnd) {
                    // A final block ends the stream; the sync tail after it is
                    // the one RFC 7692 has the receiver append.
                    return Ok(out);
                }
                let spare = out.len() < out.capacity();
                if data.is_empty() && spare {
                    break;
                }
                if used == 0 && out.len() == before_out && spare {
                    // No progress with room to spare: not a deflate stream.
                    return Err(InflateError::Invalid);
                }
            }
        }
        Ok(out)
    })
}

thread_local! {
    /// Deflate streams per (level, window bits), one per worker thread, reset per
    /// message. Few combinations exist in practice (one level per server, window
    /// 15 unless a client asks for less).
    static DEFLATE: RefCell<Vec<((i32, u8), Compress)>> = const { RefCell::new(Vec::new()) };
}

/// Compresses `input` on its own into a segment ending with a sync flush.
fn compress_segment(input: &[u8], level: i32, window_bits: u8) -> Bytes {
    DEFLATE.with(|cell| {
        let mut streams = cell.borrow_mut();
        let key = (level, window_bits);
        let at = match streams.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let level = if level < 0 {
                    Compression::default()
                } else {
                    Compression::new(level.clamp(0, 9) as u32)
                };
                streams.push((
                    key,
                    Compress::new_with_window_bits(level, false, window_bits),
                ));
                streams.len() - 1
            }
        };
        let c = &mut streams[at].1;
        c.reset();
        let mut out: Vec<u8> = Vec::with_capacity(input.len() / 2 + 64);
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before = c.total_in();
            // Compressing into a Vec with room cannot fail for a valid stream.
            if c.compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            consumed += (c.total_in() - before) as usize;
            // The flush is complete once the stream stopped with output room left.
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
        }
        Bytes::from(out)
    })
}

/// Shared compressed segments by outbox item, so that a publication delivered to
/// many connections is compressed once per window size and level. The key is the
/// item's address and length: the entry keeps the item alive, so the address
/// cannot be reused by other bytes while the entry exists, and `Bytes` never
/// change. Two generations of at most [`CACHE_ENTRIES`] entries and
/// [`CACHE_BYTES`] bytes each bound the memory: when the young one is full it
/// becomes the old one and the old one is dropped.
struct SegmentCache {
    young: HashMap<Key, (Bytes, Bytes)>,
    young_bytes: usize,
    old: HashMap<Key, (Bytes, Bytes)>,
}

type Key = (usize, usize, i32, u8);

const CACHE_ENTRIES: usize = 256;
const CACHE_BYTES: usize = 8 << 20;

static CACHE: Mutex<Option<SegmentCache>> = Mutex::new(None);

/// Counts of segment compressions and cache hits, for the metrics and the bench.
pub static COMPRESSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static SHARED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The compressed segment of one item, from the shared cache when another
/// connection with the same settings already compressed it.
pub fn segment(item: &Bytes, n: &Negotiated) -> Bytes {
    use std::sync::atomic::Ordering::Relaxed;
    let key: Key = (
        item.as_ptr() as usize,
        item.len(),
        n.level,
        n.server_window_bits,
    );
    {
        let mut guard = CACHE.lock();
        if let Some(cache) = guard.as_mut() {
            if let Some((_, seg)) = cache.young.get(&key) {
                SHARED.fetch_add(1, Relaxed);
                return seg.clone();
            }
            if let Some(entry) = cache.old.remove(&key) {
                let seg = entry.1.clone();
                cache.young_bytes += entry.0.len() + entry.1.len();
                cache.young.insert(key, entry);
                SHARED.fetch_add(1, Relaxed);
                return seg;
            }
        }
    }
    // Compressed outside the lock: two connections may both miss and compress the
    // same item, which costs time but never a wrong result.
    let seg = compress_segment(item, n.level, n.server_window_bits);
    COMPRESSED.fetch_add(1, Relaxed);
    let mut guard = CACHE.lock();
    let cache = guard.get_or_insert_with(|| SegmentCache {
        young: HashMap::with_capacity(CACHE_ENTRIES),
        young_bytes: 0,
        old: HashMap::new(),
    });
    let size = item.len() + seg.len();
    if size > CACHE_BYTES {
        // Too large to keep: compressed for this connection only.
        return seg;
    }
    if cache.young.len() >= CACHE_ENTRIES || cache.young_bytes + size > CACHE_BYTES {
        cache.old = std::mem::replace(&mut cache.young, HashMap::with_capacity(CACHE_ENTRIES));
        cache.young_bytes = 0;
    }
    cache.young_bytes += size;
    cache.young.insert(key, (item.clone(), seg.clone()));
    seg
}

/// One compressed message made of items joined by a separator: the items'
/// shared segments with a stored block for each separator, minus the final sync
/// tail. Its length is known before it is written, so a frame header can go first
/// and the payload is copied once, straight into the frame.
pub struct Compressed {
    segments: Vec<Bytes>,
    separator: Option<u8>,
}

/// A stored block of one byte: header bits 000 padded to a byte, LEN = 1,
/// NLEN = !1, then the byte.
const STORED_BYTE_HEAD: [u8; 5] = [0x00, 0x01, 0x00, 0xfe, 0xff];

impl Compressed {
    pub fn new(items: &[Bytes], separator: Option<u8>, n: &Negotiated) -> Self {
        Self {
            segments: items.iter().map(|item| segment(item, n)).collect(),
            separator,
        }
    }

    fn separators(&self) -> usize {
        self.separator
            .map_or(0, |_| self.segments.len().saturating_sub(1))
    }

    /// The payload's length.
    pub fn len(&self) -> usize {
        let all: usize = self.segments.iter().map(Bytes::len).sum::<usize>()
            + self.separators() * (STORED_BYTE_HEAD.len() + 1);
        // Every segment ends with a sync flush, whose tail the last one drops.
        all.saturating_sub(SYNC_TAIL.len())
    }

    /// Whether there is no payload at all (no items).
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Appends the payload to `out`.
    pub fn write_into(&self, out: &mut BytesMut) {
        let end = out.len() + self.len();
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                if let Some(sep) = self.separator {
                    out.extend_from_slice(&STORED_BYTE_HEAD);
                    out.extend_from_slice(&[sep]);
                }
            }
            out.extend_from_slice(seg);
        }
        out.truncate(end);
    }
}

/// [`Compressed`] written to a buffer of its own (for tests, which compress as a
/// peer would).
#[cfg(test)]
pub fn compress_joined(items: &[Bytes], separator: Option<u8>, n: &Negotiated) -> BytesMut {
    let c = Compressed::new(items, separator, n);
    let mut out = BytesMut::with_capacity(c.len());
    c.write_into(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DeflateSettings {
        DeflateSettings {
            level: 1,
            min_size: 0,
        }
    }

    #[test]
    fn offers_are_accepted_or_declined_by_their_parameters() {
        let s = settings();
        let n = negotiate(
            ["permessage-deflate; client_max_window_bits"].into_iter(),
            &s,
        )
        .expect("accepted");
        assert_eq!(n.server_window_bits, 15);
        assert_eq!(
            n.response_header(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let n = negotiate(
            ["permessage-deflate; server_max_window_bits=9"].into_iter(),
            &s,
        )
        .expect("accepted");
        assert_eq!(n.server_window_bits, 9);
        assert!(n.response_header().ends_with("; server_max_window_bits=9"));
        for declined in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; mystery",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(negotiate([declined].into_iter(), &s), None, "{declined}");
        }
        // The first acceptable offer of a list wins.
        let n = negotiate(
            ["permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=10"]
                .into_iter(),
            &s,
        )
        .expect("second offer");
        assert_eq!(n.server_window_bits, 10);
    }

    fn negotiated(bits: u8) -> Negotiated {
        Negotiated {
            server_window_bits: bits,
            window_requested: bits != 15,
            level: 1,
            min_size: 0,
        }
    }

    #[test]
    fn joined_segments_inflate_to_the_joined_items() {
        let items = vec![
            Bytes::from_static(b"{\"push\":{\"channel\":\"a\",\"pub\":{\"data\":{\"n\":1}}}}"),
            Bytes::from(vec![b'x'; 5000]),
            Bytes::from_static(b"{}"),
        ];
        for bits in [9, 12, 15] {
            let n = negotiated(bits);
            let msg = compress_joined(&items, Some(b'\n'), &n);
            let back = inflate(&msg, 1 << 20).expect("inflates");
            let mut want = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    want.push(b'\n');
                }
                want.extend_from_slice(item);
            }
            assert_eq!(back, want, "window bits {bits}");
            let plain = compress_joined(&items, None, &n);
            assert_eq!(inflate(&plain, 1 << 20).expect("inflates"), items.concat());
        }
    }

    #[test]
    fn a_shared_item_is_compressed_once() {
        let item = Bytes::from(vec![b'y'; 3000]);
        let n = negotiated(15);
        let first = segment(&item, &n);
        let again = segment(&item.clone(), &n);
        assert_eq!(
            first.as_ptr(),
            again.as_ptr(),
            "the second connection reuses it"
        );
        // Same content at another address is another entry, compressed alike.
        let copy = Bytes::from(item.to_vec());
        assert_eq!(segment(&copy, &n), first);
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let bomb = Bytes::from(vec![0u8; 1 << 20]);
        let n = negotiated(15);
        let msg = compress_joined(&[bomb], None, &n);
        assert!(
            msg.len() < 16 * 1024,
            "1 MiB of zeros compresses to {} bytes",
            msg.len()
        );
        assert_eq!(inflate(&msg, 64 * 1024), Err(InflateError::TooLarge));
        assert_eq!(inflate(&msg, 1 << 20).map(|v| v.len()), Ok(1 << 20));
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff], 1024),
            Err(InflateError::Invalid)
        );
        assert_eq!(inflate(&[], 1024), Ok(Vec::new()));
    }
}

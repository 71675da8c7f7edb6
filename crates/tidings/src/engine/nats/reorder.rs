//! [`Reorder`]: puts one channel's stream publications back in offset order.

use std::time::Duration;

use tidings_protocol::Publication;

/// How far ahead of the last offset handed on a publication may be and still be
/// held for the ones before it; also the most publications held per channel.
const REORDER_WINDOW: u64 = 64;

/// How long held publications wait for the missing ones (counted from the first
/// one held, and again after each one that arrives and lets some go).
const REORDER_WAIT: Duration = Duration::from_millis(100);

/// Puts one channel's stream publications back in offset order.
///
/// nats-server stores publications in sequence order but republishes a stored
/// message after letting go of the stream, so publishes arriving on two
/// connections at once can reach the nodes swapped (25, 27, 26). Handed on as they
/// come, 27 would look like a gap to the node (its subscribers recover) and 26 a
/// duplicate. So a publication up to [`REORDER_WINDOW`] ahead of the last one
/// handed on is held, for at most [`REORDER_WAIT`], until the missing ones arrive;
/// then all go out in order. When the wait runs out, or a publication comes from
/// further ahead, everything held goes out as it is and the node's gap handling
/// takes over (a true loss still leads to recovery, [`REORDER_WAIT`] later). A
/// publication in order, with nothing held, goes straight through.
///
/// Hand-written: it is a few lines over a `BTreeMap`, and no crate does this for
/// one subscription's messages.
#[derive(Default)]
pub(super) struct Reorder {
    /// Epoch and offset of the last publication handed on.
    last: Option<(String, u64)>,
    /// Publications ahead of `last` (same epoch) waiting for the ones before them.
    held: std::collections::BTreeMap<u64, Publication>,
    /// When the held publications go out anyway; `None` when nothing is held.
    pub(super) until: Option<tokio::time::Instant>,
}

impl Reorder {
    /// Takes one stream publication and hands on (through `emit`) what is now in
    /// order.
    pub(super) fn accept(
        &mut self,
        publication: Publication,
        epoch: &str,
        emit: &mut impl FnMut(&Publication, &str),
    ) {
        let offset = publication.offset;
        let last = match &self.last {
            Some((e, last)) if e == epoch => *last,
            // The first publication, or a new epoch: nothing to wait for. What was
            // held (old epoch) goes out first; the node sorts it out.
            _ => {
                self.flush(emit);
                emit(&publication, epoch);
                self.last = Some((epoch.to_string(), offset));
                return;
            }
        };
        if offset == last + 1 {
            emit(&publication, epoch);
            self.set_last(offset);
            if !self.held.is_empty() {
                self.release_ready(emit);
            }
        } else if offset <= last {
            // Already handed on (or given up on): the node drops it as a duplicate.
            emit(&publication, epoch);
        } else if offset - last <= REORDER_WINDOW {
            self.held.entry(offset).or_insert(publication);
            self.until
                .get_or_insert_with(|| tokio::time::Instant::now() + REORDER_WAIT);
        } else {
            self.held.insert(offset, publication);
            self.flush(emit);
        }
    }

    fn set_last(&mut self, offset: u64) {
        if let Some((_, last)) = &mut self.last {
            *last = offset;
        }
    }

    /// Hands on the held publications that follow `last` without a hole.
    fn release_ready(&mut self, emit: &mut impl FnMut(&Publication, &str)) {
        let Some((epoch, mut last)) = self.last.clone() else {
            return;
        };
        let mut moved = false;
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != last + 1 {
                break;
            }
            last += 1;
            emit(&entry.remove(), &epoch);
            moved = true;
        }
        self.set_last(last);
        self.until = if self.held.is_empty() {
            None
        } else if moved {
            Some(tokio::time::Instant::now() + REORDER_WAIT)
        } else {
            self.until
        };
    }

    /// The wait is over: hands on everything held, in offset order, holes and all.
    pub(super) fn flush(&mut self, emit: &mut impl FnMut(&Publication, &str)) {
        self.until = None;
        let Some((epoch, _)) = self.last.clone() else {
            self.held.clear();
            return;
        };
        for (offset, publication) in std::mem::take(&mut self.held) {
            emit(&publication, &epoch);
            self.set_last(offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64) -> Publication {
        Publication {
            offset,
            ..Default::default()
        }
    }

    /// Feeds `(offset, epoch)` in order; returns what went out, with the epochs.
    fn feed(order: &mut Reorder, input: &[(u64, &str)]) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for (offset, epoch) in input {
            order.accept(at(*offset), epoch, &mut |p, e| {
                out.push((p.offset, e.to_string()))
            });
        }
        out
    }

    fn offsets_of(out: &[(u64, String)]) -> Vec<u64> {
        out.iter().map(|(o, _)| *o).collect()
    }

    #[test]
    fn reorder_passes_in_order_publications_straight_through() {
        let mut order = Reorder::default();
        let out = feed(&mut order, &[(7, "e"), (8, "e"), (9, "e")]);
        assert_eq!(offsets_of(&out), vec![7, 8, 9]);
        assert!(order.held.is_empty() && order.until.is_none());
    }

    #[test]
    fn reorder_holds_an_early_publication_until_the_missing_one_comes() {
        let mut order = Reorder::default();
        assert_eq!(
            offsets_of(&feed(&mut order, &[(25, "e"), (27, "e")])),
            vec![25]
        );
        assert!(order.until.is_some());
        let out = feed(&mut order, &[(26, "e")]);
        assert_eq!(offsets_of(&out), vec![26, 27]);
        assert!(order.held.is_empty() && order.until.is_none());
        // Several out of place at once.
        let out = feed(&mut order, &[(30, "e"), (29, "e"), (31, "e"), (28, "e")]);
        assert_eq!(offsets_of(&out), vec![28, 29, 30, 31]);
        assert!(order.until.is_none());
    }

    #[test]
    fn reorder_gives_up_on_a_true_gap_and_lets_the_node_see_it() {
        let mut order = Reorder::default();
        feed(&mut order, &[(1, "e"), (3, "e"), (4, "e")]);
        // The wait ran out: what was held goes out, hole and all.
        let mut out = Vec::new();
        order.flush(&mut |p, _| out.push(p.offset));
        assert_eq!(out, vec![3, 4]);
        assert!(order.until.is_none());
        // The missing one, late, goes on as it is (the node drops it).
        assert_eq!(
            offsets_of(&feed(&mut order, &[(2, "e"), (5, "e")])),
            vec![2, 5]
        );
    }

    #[test]
    fn reorder_does_not_wait_for_what_is_too_far_behind() {
        let mut order = Reorder::default();
        feed(&mut order, &[(1, "e"), (3, "e")]);
        let far = 2 + REORDER_WINDOW;
        let out = feed(&mut order, &[(far, "e")]);
        assert_eq!(offsets_of(&out), vec![3, far]);
        assert!(order.held.is_empty() && order.until.is_none());
        // Held publications never outnumber the window.
        let mut order = Reorder::default();
        feed(&mut order, &[(1, "e")]);
        let input: Vec<(u64, &str)> = (3..3 + 2 * REORDER_WINDOW).map(|o| (o, "e")).collect();
        feed(&mut order, &input);
        assert!(order.held.len() as u64 <= REORDER_WINDOW);
    }

    #[test]
    fn reorder_starts_over_in_a_new_epoch() {
        let mut order = Reorder::default();
        feed(&mut order, &[(5, "old"), (7, "old")]);
        let out = feed(&mut order, &[(1, "new"), (2, "new")]);
        assert_eq!(
            out,
            vec![
                (7, "old".to_string()),
                (1, "new".to_string()),
                (2, "new".to_string())
            ]
        );
        assert!(order.held.is_empty() && order.until.is_none());
    }
}

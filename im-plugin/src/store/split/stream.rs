//! Reading a user's stream from the log, with its holes: a seq allocated but not (yet) written.
//!
//! A hole that can never be filled (seen for `gap_settle`, or, with a log only this process
//! writes, with no write of the user in flight here) is written to the log as a `gap` event
//! before it is returned as one: from then on the seq is taken for good, so a counter rebuilt
//! from the log continues above it and a device that skipped it never misses a message put there
//! later. A younger hole ends the page early.

use std::time::Instant;

use super::Shared;
use crate::store::{gap_event, StoreResult, StreamPage};

/// Holes remembered at most; past it the oldest observations are forgotten (and start over).
const MAX_HOLES: usize = 100_000;

impl Shared {
    pub(super) async fn read_stream(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<StreamPage> {
        let last = self.counter(user).await?;
        let mut page = self.read_page(user, after_seq, limit, last).await?;
        if !page.dead.is_empty() {
            let gaps = page
                .dead
                .iter()
                .map(|seq| (user.to_string(), *seq))
                .collect();
            let deadline = Instant::now() + self.opts.write_deadline;
            if self.log.log_gaps(gaps, deadline).await.is_err() {
                // Not written: stop before the first of them, as for a young hole.
                let first = page.dead[0];
                page.page.events.retain(|e| e.seq < first);
                page.page.has_more = true;
                return Ok(page.page);
            }
            // Read again: a write may have landed at one of them just before its gap.
            page = self.read_page(user, after_seq, limit, last).await?;
            let first_dead = page.dead.first().copied();
            if let Some(first) = first_dead {
                page.page.events.retain(|e| e.seq < first);
                page.page.has_more = true;
            }
        }
        Ok(page.page)
    }

    /// One pass over the log: the page, and the dead holes it reports as gaps.
    async fn read_page(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
        last: u64,
    ) -> StoreResult<Page> {
        if after_seq >= last || limit == 0 {
            return Ok(Page {
                page: StreamPage {
                    events: Vec::new(),
                    has_more: after_seq < last,
                },
                dead: Vec::new(),
            });
        }
        // With a log only this process writes, a hole is dead at once unless this node has a write
        // for the user in flight: taken after reading the counter (every seq up to it was
        // allocated before) and before reading the log (a write that ends in between is read).
        let quiet = self.log.single_writer() && !self.writing.lock().contains_key(user);
        let logged = self.log.read_events(user, after_seq, limit).await?;
        let mut page = Page::default();
        let mut expected = after_seq + 1;
        // Walks seqs from after_seq + 1: a logged event is taken, a missing seq becomes a gap once
        // dead, and the page ends at the first hole that is not.
        let mut logged = logged.into_iter().peekable();
        while expected <= last && page.page.events.len() < limit {
            match logged.peek() {
                Some(e) if e.seq == expected => {
                    page.page.events.extend(logged.next());
                }
                Some(e) if e.seq < expected => {
                    logged.next(); // a log answering out of order; skip
                    continue;
                }
                _ if quiet || self.settled(user, expected) => {
                    page.page.events.push(gap_event(expected));
                    page.dead.push(expected);
                }
                _ => return Ok(page), // a hole still in flight: sync again later
            }
            expected += 1;
        }
        page.page.has_more = expected <= last;
        Ok(page)
    }

    /// Whether the missing `seq` of `user` can no longer be written; records the first sighting.
    fn settled(&self, user: &str, seq: u64) -> bool {
        let now = Instant::now();
        let mut holes = self.holes.lock();
        if holes.len() >= MAX_HOLES {
            let horizon = self.opts.gap_settle * 4;
            holes.retain(|_, seen| now.duration_since(*seen) < horizon);
            if holes.len() >= MAX_HOLES {
                holes.clear();
            }
        }
        let seen = *holes.entry((user.to_string(), seq)).or_insert(now);
        now.duration_since(seen) >= self.opts.gap_settle
    }
}

#[derive(Default)]
struct Page {
    page: StreamPage,
    /// Seqs in `page` that are gaps not yet in the log.
    dead: Vec<u64>,
}

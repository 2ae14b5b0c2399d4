//! The ScyllaDB message log: a [`MessageLog`] shared by every broker node of a scale-out cluster.
//!
//! This file owns the log's CQL schema (keyspace, tables, keys, value encodings), its prepared
//! statements and the writer task that applies writes in call order. It must not allocate seqs
//! (the index does, [`MessageLog`] writes where it is told), know about MQTT or the unread index,
//! or interpret a hole: [`MessageLog::read_events`] returns what is there and nothing else.
//!
//! Layout (keyspace from [`ScyllaLogConfig::keyspace`], created at start-up if missing, as are the
//! tables). `bucket` is `seq >> 12` (4096 seqs per events partition); `day` is `(msg_id >> 22) /
//! 86_400_000`, the msgid's day counted from the msgid epoch 2024-01-01 UTC (`crate::msgid`);
//! `(a, b)` is the unordered pair of users, smaller first. Bytes are per message, per replica,
//! before compaction, for user ids of ~10 bytes, a 36-byte clientMsgId and content of `c` bytes:
//! - `events ((owner, bucket), seq) -> event blob`: each user's stream, the protobuf [`Event`] with its
//!   seq filled in. Bounded partitions: at most 4096 events each (~0.6 MB of typical messages,
//!   256 MB if all carried 64 KiB). Two rows per message (one for a note to self), ~140 + c each.
//!   Written only by LWTs: claims (`IF NOT EXISTS`), undos and amends (`IF event = <old>`).
//! - `event_buckets ((owner), bucket DESC)`: the buckets a user has written. `max_seq` starts at the
//!   newest and `read_events` skips to the next one, however many there are. Rewritten with every
//!   event (~45 bytes, two per message), one live row per 4096 seqs after compaction.
//! - `history ((a, b, day), msg_id DESC) -> message blob`: one row per message (~140 + c), the
//!   protobuf `Message` with an empty `conversation`, filled in as the reader sees it on the way
//!   out (`u:<peer>`), so both users read the same row. Written plainly by the message's batch;
//!   an amend rewrites the row with an LWT (`IF message = <as checked>`, see `amends.rs` for
//!   why mixing the two on this cell is safe).
//! - `history_days ((a, b), day DESC)`: the days a pair talked (~45 bytes per message, one live
//!   row per pair and day). History pages backwards through these, so it never walks empty days
//!   and stops at the pair's first day.
//! - `dedup ((sender, client_msg_id)) -> msg_id, seq, conversation, ts, deadline_ms`: the
//!   original [`SentRecord`] plus the wall-clock deadline of the attempt that wrote it (~120
//!   bytes, plus about as much of Paxos state), written `USING TTL dedup_ttl_secs` (default
//!   24 h). Expiry is native, so [`MessageLog::purge_dedup`] does nothing and returns 0.
//! - `cursors ((owner), device) -> seq`: device cursors (not written per message).
//! - `max_msg_id ((slot)) -> msg_id`: one row per msgid node id (`(msg_id >> 12) & 1023`), ~25
//!   bytes per message. Written `USING TIMESTAMP` = the msgid's own time in microseconds (plus
//!   the in-millisecond counter, capped at 999), so the highest msgid wins whatever order the
//!   writes arrive in; ties within one millisecond go to the larger value (ScyllaDB compares live
//!   cells of equal timestamp by value: `docs/dev/timestamp-conflict-resolution.md`). No LWT
//!   on the hot path, no cluster-wide hot row; `max_msg_id` reads at most 1024 rows at start-up.
//! - `read_pointers ((owner), conversation) -> msg_id`: the highest msgid a logged receipt of the
//!   owner covers (~60 bytes per conversation read; written per `read`, not per message).
//! - `meta ((name)) -> n`: `schema_version`, so an old binary refuses a newer layout.
//!
//! Groups (`groups.rs`, `group_reads.rs`; `g` = group id of ~10 bytes, a group of `m` members).
//! A group's log is the stream of owner `#g:<g>` in `events`/`event_buckets` (no user id holds
//! `#`), so it is bucketed, claimed seq by seq, read and resumed (`max_seq`) exactly like a
//! user's stream, with no table of its own; a small group message is that row plus one
//! `events` row per member copy (~140 + c each), a large group's that row plus one per mention.
//! - `history ((#g:<g>, '#', day), msg_id DESC)` and `history_days`: the group's messages, as
//!   for a pair (~140 + c and ~45 bytes per message). A member's own view of a small group's
//!   history is this after their join.
//! - `groups ((grp)) -> meta`: the JSON [`GroupMeta`] (name, owner, large, created, disbanded,
//!   member count, and the msgid and group seq of the latest change, which the membership
//!   fence reads). One row per group (~150 bytes), rewritten with every change.
//! - `group_members ((grp), member_id) -> member`: JSON role and join position (~90 bytes per
//!   member). Partition bounded by the group's size: 100,000 members (~9 MB) at most.
//! - `user_groups ((member_id), grp) -> large`: a user's groups (~30 bytes per membership);
//!   grows with the groups the user is in. Both member tables change only with changes, two
//!   rows per member added or removed.
//! - `group_msgs ((grp, bucket), seq) -> msg_id`: the messages among the group's entries
//!   (~40 bytes per message), counted for a large group's unread; at most 4096 per partition.
//! - `group_heads ((grp)) -> last_msg_seq, updated_at`: written `USING TIMESTAMP` = the group
//!   seq, so the latest message wins in any arrival order (~40 bytes per message, one live row).
//! - `group_reads ((owner), grp) -> seq, msg_id`: a large group member's read position, raised
//!   with LWTs (`IF seq < ?`; ~50 bytes, written per read and per own large-group message).
//! - `mentions ((owner), conversation, msg_id)`: unread mentions (~50 bytes per mention),
//!   removed by a range delete up to what the owner read; grows with unread mentions only.
//! - `group_dedup ((owner, client_msg_id)) -> msg_id, seq, group_seq, conversation, ts,
//!   deadline_ms`: like `dedup` (same TTL and LWTs), for group messages (owner = sender) and
//!   deduped `groupCreate`s (owner = `#create:<creator>`) (~130 bytes per message).
//!
//! Extras (`extras.rs`): `blocks ((blocker), blocked) -> ts` (~40 bytes per block),
//! `hidden_presence ((owner))` (~20 bytes per user hiding presence) and `last_seen ((owner)) ->
//! ts` (~30 bytes per user, rewritten when their last device goes offline); nothing per message.
//!
//! Amends (`amends.rs`): recall and edit rewrite the message in place in every stream holding
//! it and in its history row, so no read path reads anything more. What finds the copies:
//! - `message_copies ((a, b, day), msg_id) -> copies`: the copy map of each message, keyed as
//!   its history row (a group's under (`#g:<g>`, `#`)): every stream holding a copy and the
//!   copy's seq (the group's log first, members who later leave included), ~14 bytes per copy
//!   (`keys.rs`). Written in the message's logged batch: ~80 bytes per one-to-one message, ~7 KB
//!   for a 500-member small group's (whose 501 `events` rows are ~70 KB + 501c), ~60 + 14 per
//!   mention for a large group's. Considered and not taken: an index row (owner, msgid) -> seq
//!   per copy (501 rows and batch statements per 500-member message, for the same lookup), and
//!   an overlay of amends read on every path that returns messages (a read more per page of
//!   `sync`, history and conversations, to serve something rare). A message logged before this
//!   table existed has no map and cannot be amended (the amend fails and says so).
//! - An amend costs two point reads (history row and map; `plan_amend` reads only these), one
//!   read per holder, one LWT per holder to claim its event and one to rewrite its copy, one LWT
//!   on the history row (the commit), and for a recalled group message one batch deleting its
//!   mentions and its `group_msgs` row. Order, crashes and races: `amends.rs`.
//!
//! Durable total: ~640 bytes + 3c per message per replica (one-to-one); the logged batch also
//! passes through the batchlog of two other nodes (written, then deleted).
//!
//! Writes. [`MessageLog::log_message`] runs: (a) a conditional `INSERT INTO dedup ... IF NOT
//! EXISTS` (LWT, LOCAL_SERIAL); (b) if applied, the bucket rows, then each event row claimed with
//! `INSERT ... IF NOT EXISTS` (a seq that holds an event already is a conflict: the claims made
//! are turned into gaps and the dedup record released, see `seqs.rs`), then one LOGGED batch
//! with the history rows and the max msg_id: ScyllaDB cannot make a batch over several
//! partitions conditional, hence the steps. The logged batch lands whole or not at all
//! (eventually: the batchlog replays it if the coordinator dies). (c) If the dedup record exists,
//! it is a resend: the original's sender event is read at its recorded seq. There: the resend
//! is a [`SendOutcome::Duplicate`]. Absent (or a gap): the original failed or is in flight; while
//! it could still land (before its deadline plus [`ScyllaLogConfig::takeover_grace_ms`]) the call
//! fails and the client retries later; after that, the resend takes the record over (`UPDATE ...
//! IF msg_id = <original>`, so of two racing resends one wins) and writes fresh. Every call that
//! does not write the message fresh writes `gap` events at the seqs it was given, so they never
//! stay holes. An attempt that claimed the record but sent no batch (its deadline passed first)
//! deletes the record again (`DELETE ... IF msg_id = <its own>`, best effort), so its resend is
//! accepted at once instead of after the grace.
//!
//! Call order. The call enqueues a job on a bounded queue ([`ScyllaLogConfig::queue_capacity`]; a
//! full queue fails the call at once). One writer task starts jobs strictly in queue order, up to
//! [`ScyllaLogConfig::max_in_flight`] at a time, and never starts a job while an earlier one
//! touching one of its users (sender, recipient, event owners) runs: jobs that could observe each
//! other apply in call order, disjoint ones overlap. The head of the queue waits for its users,
//! so one busy user delays the jobs queued behind it. A message costs three LWTs (dedup, two
//! stream rows) plus two batches, one after another: an estimated ~8-15 ms within a datacenter
//! (not measured here), ~100 messages/s per sending user, and up to `max_in_flight` times that
//! per node while the users differ.
//!
//! Deadlines. A job whose deadline has passed when it starts, or before any of its requests, fails
//! and writes nothing more; each request's client-side timeout is the time left (at most
//! [`ScyllaLogConfig::request_timeout_ms`]). Residual risk: a request the driver gave up on may
//! still be applied by its coordinator, up to ScyllaDB's write timeout later, or, for a logged
//! batch whose coordinator died, whenever the batchlog replays it. A late write within the grace
//! is harmless: a resend waits for it and then finds it. Stream rows are only ever written by
//! LWTs, so no late write replaces an event: a late claim finds its seq taken (by a gap, or by
//! another message) and does nothing. A late history batch (a batchlog replayed after a long
//! outage) can add a history row for a message whose stream rows were undone.
//!
//! Consistency. LOCAL_QUORUM for reads and writes: with RF 3, a read overlaps every acknowledged
//! write in the local datacenter (the resend check, `sync` after `sent` and `max_seq` after a
//! restart rely on that), survives one replica down, and never waits for another datacenter.
//! LWTs use LOCAL_SERIAL: dedup and cursors are linearizable within a datacenter only, so a resend
//! that reaches another datacenter before replication may be stored twice.

//!
//! Files: `schema.rs` (tables, schema version, prepared statements), `writes.rs` (the write
//! path of `log_message`, and the request helpers: selects, LWTs, batches), `seqs.rs`
//! (conditional stream rows, gaps, read pointers), `groups.rs` (group writes: entries, read
//! positions), `group_reads.rs` (the group reads), `extras.rs` (blocks and presence
//! settings), `amends.rs` (recall and edit: the requests), `amend_rules.rs` (their checks
//! and rewrites, no request), `keys.rs` (key and value encodings), `config.rs` (the settings
//! and their checks), `writer.rs` (the writer task and its queue), `tests.rs` and
//! `tests/amend_tests.rs`; this file the reads and the [`MessageLog`] methods.

mod amend_rules;
mod amends;
mod config;
mod extras;
mod group_reads;
mod groups;
mod keys;
mod schema;
mod seqs;
mod writer;
mod writes;

use config::validate;
pub use config::ScyllaLogConfig;
use keys::*;
use writer::{flatten, run_writer, Job};
use writes::{Lwt, WriteBatch};

use schema::create_schema;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::{FutureExt as _, TryStreamExt as _};
use mqim_schemas::v1::{self, event, Event};
use prost::Message as _;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency, Statement};
use scylla::value::{CqlValue, Row};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::groups::{GroupAppend, GroupOutcome, GroupReadOutcome};
use super::log::{GroupLog, GroupSeqs, LogError, LogResult, MessageLog, MessageSeqs, ReceiptWrite};
use super::{
    receipt_event, Appended, HistoryPage, NewMessage, SendOutcome, SentRecord, StoreError,
    StoreResult,
};
use crate::conversation::Conversation;
use crate::msgid::EPOCH_MS;

/// Bump when a table, key or value encoding changes (version 2 added the group, extras and
/// `message_copies` tables; `schema.rs` upgrades a version-1 keyspace).
const SCHEMA_VERSION: i64 = 2;
/// `events` partitions hold `1 << EVENT_BUCKET_BITS` seqs.
const EVENT_BUCKET_BITS: u32 = 12;
/// A msgid is `ms << 22 | node << 12 | counter` (`crate::msgid`).
const MSGID_MS_SHIFT: u32 = 22;
const MSGID_NODE_SHIFT: u32 = 12;
const MSGID_NODE_MASK: u64 = 0x3ff;
const MSGID_COUNTER_MASK: u64 = 0xfff;
const DAY_MS: u64 = 86_400_000;
/// Bucket rows fetched per step while walking `event_buckets` or `history_days`.
const BUCKET_CHUNK: i32 = 32;
/// Conditional-write rounds `advance_cursor` tries before giving up under contention.
const CURSOR_ROUNDS: usize = 8;
/// Schema changes wait for schema agreement; give them longer than a data request.
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

/// The ScyllaDB [`MessageLog`]. Dropping it closes the write queue; the writer task finishes the
/// jobs already queued, then stops.
pub struct ScyllaLog {
    inner: Arc<Inner>,
    queue: mpsc::Sender<Job>,
}

/// What the readers and the writer's jobs share.
struct Inner {
    session: Session,
    stmts: Statements,
    /// Only the tests read it, to drop their keyspace.
    #[cfg_attr(not(test), allow(dead_code))]
    keyspace: String,
    dedup_ttl: i32,
    request_timeout: Duration,
    takeover_grace_ms: i64,
}

impl ScyllaLog {
    /// Connects, creates the keyspace and tables if missing, checks the schema version, prepares
    /// the statements and starts the writer task.
    pub async fn connect(cfg: &ScyllaLogConfig) -> StoreResult<ScyllaLog> {
        validate(cfg)?;
        let request_timeout = Duration::from_millis(cfg.request_timeout_ms.max(1));
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(request_timeout))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&cfg.nodes)
            .default_execution_profile_handle(profile.into_handle());
        if let Some(user) = &cfg.username {
            builder = builder.user(user, cfg.password.clone().unwrap_or_default());
        }
        let session = builder.build().await.map_err(|e| {
            StoreError::new(format!("connecting to ScyllaDB at {:?}: {e}", cfg.nodes))
        })?;
        create_schema(&session, cfg).await?;
        let stmts = Statements::prepare(&session, &cfg.keyspace).await?;
        let inner = Arc::new(Inner {
            session,
            stmts,
            keyspace: cfg.keyspace.clone(),
            dedup_ttl: i32::try_from(cfg.dedup_ttl_secs)
                .map_err(|_| StoreError::new("dedup_ttl_secs must be below 2^31"))?,
            request_timeout,
            takeover_grace_ms: i64::try_from(cfg.takeover_grace_ms).unwrap_or(i64::MAX),
        });
        let (queue, jobs) = mpsc::channel(cfg.queue_capacity.max(1));
        tokio::spawn(run_writer(inner.clone(), jobs, cfg.max_in_flight.max(1)));
        Ok(ScyllaLog { inner, queue })
    }
}

#[async_trait]
impl MessageLog for ScyllaLog {
    fn log_message(
        &self,
        msg: NewMessage,
        seqs: MessageSeqs,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<SendOutcome>> {
        let users = vec![msg.from.clone(), msg.to.clone()];
        flatten(self.enqueue(users, move |inner| {
            async move { Ok(inner.log_message(msg, seqs, deadline).await) }.boxed()
        }))
    }

    fn log_gaps(
        &self,
        gaps: Vec<(String, u64)>,
        deadline: Instant,
    ) -> BoxFuture<'static, StoreResult<()>> {
        let users = gaps.iter().map(|(owner, _)| owner.clone()).collect();
        self.enqueue(users, move |inner| {
            async move { inner.write_gaps(&gaps, deadline).await }.boxed()
        })
    }

    fn log_receipts(
        &self,
        receipt: ReceiptWrite,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<bool>> {
        let users = vec![receipt.user.clone(), receipt.peer.clone()];
        flatten(self.enqueue(users, move |inner| {
            async move { Ok(inner.log_receipts(&receipt, deadline).await) }.boxed()
        }))
    }

    async fn read_pointer(&self, user: &str, conversation: &str) -> StoreResult<u64> {
        self.inner.read_pointer(user, conversation).await
    }

    async fn read_events(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        let mut out = Vec::new();
        // No seq above i64::MAX can be stored.
        let Ok(after) = i64::try_from(after_seq) else {
            return Ok(out);
        };
        let s = &self.inner.stmts;
        let mut from_bucket = event_bucket(after_seq + 1);
        'buckets: while out.len() < limit {
            let rows = self
                .inner
                .select::<(i64,)>(
                    &s.event_buckets_from,
                    (user, from_bucket, BUCKET_CHUNK),
                    || format!("listing {user}'s event buckets"),
                )
                .await?;
            let Some(&(last,)) = rows.last() else {
                break;
            };
            for (bucket,) in rows {
                let want = cql_limit(limit - out.len());
                let events = self
                    .inner
                    .select::<(i64, Vec<u8>)>(&s.events_after, (user, bucket, after, want), || {
                        format!("reading {user}'s events after seq {after_seq}")
                    })
                    .await?;
                for (seq, blob) in events {
                    out.push(decode_event(user, seq, &blob)?);
                }
                if out.len() >= limit {
                    break 'buckets;
                }
            }
            from_bucket = last.saturating_add(1);
        }
        Ok(out)
    }

    async fn max_seq(&self, user: &str) -> StoreResult<u64> {
        let s = &self.inner.stmts;
        let mut at_most = i64::MAX;
        loop {
            let buckets = self
                .inner
                .select::<(i64,)>(&s.event_buckets_down, (user, at_most, BUCKET_CHUNK), || {
                    format!("listing {user}'s event buckets")
                })
                .await?;
            let Some(&(lowest,)) = buckets.last() else {
                return Ok(0);
            };
            for (bucket,) in buckets {
                let last = self
                    .inner
                    .select::<(i64,)>(&s.last_seq, (user, bucket), || {
                        format!("reading {user}'s last seq")
                    })
                    .await?;
                // A bucket row can become visible a moment before its batch's event row.
                if let Some(&(seq,)) = last.first() {
                    return from_i64(seq, "stored seq");
                }
            }
            match lowest.checked_sub(1) {
                Some(below) if below >= 0 => at_most = below,
                _ => return Ok(0),
            }
        }
    }

    async fn max_msg_id(&self) -> StoreResult<u64> {
        let what = "reading the highest msg_id";
        let mut rows = self
            .inner
            .session
            .execute_iter(self.inner.stmts.max_msg_ids.clone(), ())
            .await
            .map_err(failed(what))?
            .rows_stream::<(Option<i64>,)>()
            .map_err(failed(what))?;
        let mut max = 0;
        while let Some((msg_id,)) = rows.try_next().await.map_err(failed(what))? {
            if let Some(msg_id) = msg_id {
                max = max.max(from_i64(msg_id, "stored msg_id")?);
            }
        }
        Ok(max)
    }

    async fn history(
        &self,
        user: &str,
        conversation: &str,
        before_msg_id: Option<u64>,
        limit: usize,
    ) -> StoreResult<HistoryPage> {
        let mut page = HistoryPage::default();
        if let Some(Conversation::Group(group)) = Conversation::parse(conversation) {
            return self
                .inner
                .member_group_history(user, &group, before_msg_id, limit)
                .await;
        }
        let Some(peer) = Conversation::peer(conversation) else {
            return Ok(page);
        };
        // Newest allowed msg_id, inclusive.
        let upper = match before_msg_id {
            Some(0) => return Ok(page),
            Some(before) => (before - 1).min(i64::MAX as u64),
            None => i64::MAX as u64,
        };
        let upper_i = upper as i64;
        let (a, b) = pair(user, peer);
        let s = &self.inner.stmts;
        // One more than asked, to know whether older messages exist.
        let wanted = limit.saturating_add(1);
        let mut messages = Vec::new();
        let mut day_at_most = history_day(upper);
        'days: loop {
            let days = self
                .inner
                .select::<(i32,)>(
                    &s.history_days_down,
                    (a, b, day_at_most, BUCKET_CHUNK),
                    || format!("listing the history days of {user} and {peer}"),
                )
                .await?;
            let Some(&(lowest,)) = days.last() else {
                break;
            };
            for (day,) in days {
                let want = cql_limit(wanted - messages.len());
                let rows = self
                    .inner
                    .select::<(i64, Vec<u8>)>(&s.history_page, (a, b, day, upper_i, want), || {
                        format!("reading the history of {user} and {peer}")
                    })
                    .await?;
                for (msg_id, blob) in rows {
                    let mut m = v1::Message::decode(blob.as_slice()).map_err(|e| {
                        StoreError::new(format!(
                            "decoding history message {msg_id} of {user} and {peer}: {e}"
                        ))
                    })?;
                    m.conversation = Conversation::with_user(peer);
                    messages.push(m);
                }
                if messages.len() >= wanted {
                    break 'days;
                }
            }
            match lowest.checked_sub(1) {
                Some(below) if below >= 0 => day_at_most = below,
                _ => break,
            }
        }
        page.has_more = messages.len() > limit;
        messages.truncate(limit);
        page.messages = messages;
        Ok(page)
    }

    async fn advance_cursor(&self, user: &str, device: &str, seq: u64) -> StoreResult<u64> {
        let target = to_i64(seq, "cursor seq")?;
        let s = &self.inner.stmts;
        let what = || format!("moving the cursor of {user}/{device} to {seq}");
        for _ in 0..CURSOR_ROUNDS {
            // Conditional, so two devices' acks racing cannot move the cursor backwards.
            let raised = self
                .inner
                .lwt(&s.raise_cursor, (target, user, device, target), what)
                .await?;
            if raised.applied {
                return Ok(seq);
            }
            let current = match raised.opt_i64("seq")? {
                Some(current) => current,
                None => {
                    let created = self
                        .inner
                        .lwt(&s.create_cursor, (user, device, target), what)
                        .await?;
                    if created.applied {
                        return Ok(seq);
                    }
                    match created.opt_i64("seq")? {
                        Some(current) => current,
                        None => continue,
                    }
                }
            };
            if current >= target {
                return from_i64(current, "stored cursor");
            }
            // Moved between our two steps, still below `seq`: try again.
        }
        Err(StoreError::new(format!(
            "the cursor of {user}/{device} kept changing under {CURSOR_ROUNDS} conditional writes"
        )))
    }

    /// Dedup records expire natively (`USING TTL`): nothing to remove here.
    async fn purge_dedup(&self, _before_ts_ms: i64) -> StoreResult<usize> {
        Ok(0)
    }

    fn groups(&self) -> Option<&dyn GroupLog> {
        Some(self)
    }

    fn amends(&self) -> Option<&dyn crate::store::extras::AmendLog> {
        Some(self)
    }
}

/// The prepared statements, all at LOCAL_QUORUM (LWTs: LOCAL_SERIAL).
struct Statements {
    claim_event: PreparedStatement,
    replace_event: PreparedStatement,
    read_pointer: PreparedStatement,
    create_read_pointer: PreparedStatement,
    raise_read_pointer: PreparedStatement,
    insert_event_bucket: PreparedStatement,
    event_buckets_from: PreparedStatement,
    event_buckets_down: PreparedStatement,
    events_after: PreparedStatement,
    event_at: PreparedStatement,
    last_seq: PreparedStatement,
    insert_history: PreparedStatement,
    insert_history_day: PreparedStatement,
    history_days_down: PreparedStatement,
    history_page: PreparedStatement,
    claim_dedup: PreparedStatement,
    take_over_dedup: PreparedStatement,
    release_dedup: PreparedStatement,
    raise_max_msg_id: PreparedStatement,
    max_msg_ids: PreparedStatement,
    raise_cursor: PreparedStatement,
    create_cursor: PreparedStatement,
    groups: schema::GroupStatements,
    extras: extras::ExtrasStatements,
    amends: amends::AmendStatements,
}

fn failed<E: fmt::Display>(what: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::new(format!("{what}: {e}"))
}

/// A log on a fresh keyspace (`mqim_test_<random>`, RF 1) of the ScyllaDB at `SCYLLA_URI`
/// (`host:port`), or `None` when the variable is unset or empty. Drop the keyspace with
/// [`ScyllaLog::drop_test_keyspace`] at the end.
#[cfg(test)]
pub(crate) async fn connect_for_tests() -> Option<ScyllaLog> {
    connect_for_tests_with(|_| {}).await
}

#[cfg(test)]
async fn connect_for_tests_with(tune: impl FnOnce(&mut ScyllaLogConfig)) -> Option<ScyllaLog> {
    let uri = std::env::var("SCYLLA_URI").ok().filter(|u| !u.is_empty())?;
    let mut cfg = ScyllaLogConfig {
        nodes: vec![uri],
        keyspace: format!("mqim_test_{:016x}", rand::random::<u64>()),
        replication: "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}".into(),
        ..ScyllaLogConfig::default()
    };
    tune(&mut cfg);
    match ScyllaLog::connect(&cfg).await {
        Ok(log) => Some(log),
        Err(e) => panic!("SCYLLA_URI is set but the log could not start: {e}"),
    }
}

#[cfg(test)]
impl ScyllaLog {
    /// Drops the test keyspace this log was made on.
    pub(crate) async fn drop_test_keyspace(&self) {
        self.inner.drop_keyspace().await;
    }
}

#[cfg(test)]
mod tests;

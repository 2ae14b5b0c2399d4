//! Recall and edit in the ScyllaDB log ([`AmendLog`]): the requests that check an amend and
//! rewrite every copy of a message at the seqs the index allocated (the checks and rewrites
//! themselves, which make no request, are in `amend_rules.rs`). The table (`message_copies`)
//! and its costs are in the module comment of `mod.rs` ("Amends"); the semantics are the
//! embedded log's (`lsm/extras.rs`), which these files mirror.
//!
//! Finding the copies. `events` is keyed by (owner, seq) and `history` by conversation and day:
//! nothing maps (owner, msgid) to the seq of the owner's copy. So every message writes its copy
//! map (each stream holding a copy, and the copy's seq: the sender's and recipient's, or the
//! group's log and every member or mention copy) in `message_copies`, in the logged batch that
//! holds its history row, under the same key. An amend reads the history row (the message as
//! stored, which the checks use) and the copy map: two point reads. Members who left a small
//! group since keep their entry in the map, so no record of departures is needed; a stream the
//! map names is a holder when it still holds the message at that seq (an attempt whose claims
//! were undone left gaps there). Who holds a copy: `amend.home` (NotFound if the map does not
//! name it), the streams of `amend.others` the map names, and for a group message every other
//! stream the map names (mention copies, members who left), in map order, seeing the
//! conversation as the home does. No read path changes: copies, the group's log entry and
//! the history row are rewritten in place, so `read_events`, history, a conversation's last
//! message and a large group's last message read the amended message as they read any other.
//!
//! Writing ([`Inner::log_amend`], one writer job touching every stream given a seq). After the
//! checks and a read of each copy: (1) gaps at the given seqs of streams found to hold no copy;
//! (2) the amend's events claimed at the given seqs, the home's alone first (`claim_many`: a
//! taken seq is [`LogError::Conflict`] and the claims are undone); (3) each copy rewritten with
//! an LWT, `UPDATE events SET event = <amended> IF event = <as read>` (stream rows stay written
//! by LWTs only, so a late claim still finds its seq taken and a late write never replaces an
//! event; a copy another amend changed meanwhile is amended again from what the LWT returns,
//! and a recalled copy is never edited); (4) the commit: the history row rewritten with
//! `UPDATE history SET message = <amended> IF message = <as checked>`; (5) for a recalled group
//! message, the mentions it made and its `group_msgs` row (a large group's unread counts) are
//! deleted in one logged batch. An attempt that does not commit (a failure, or another node's
//! amend committed first) sets the copies it rewrote to what history holds now (`IF event =
//! <its rewrite>`; not back to what they were, which could undo a copy the winner found
//! amended and left) and turns its claims into gaps, best effort; a lost commit then answers
//! what the message is now (gaps at every given seq) or, when this amend still applies to it,
//! fails so the caller retries.
//!
//! The history cell is written plainly by the message's batch and conditionally by amends. Safe
//! because an amend's condition reads the cell, so the plain write is visible to it, and the
//! LWT's write timestamp is its Paxos ballot's, taken from its coordinator's clock at the amend:
//! a late duplicate of the plain write (a batchlog replay, a coordinator finishing a write the
//! driver gave up on) keeps its earlier timestamp and loses to the amend. Only clocks of two
//! coordinators further apart than the message's age could reorder them.
//!
//! A crash between steps leaves, after (2): events saying the message was amended in the
//! holders' streams while copies and history are not (a client applies the event; history still
//! shows the original until a retry); during (3): some copies amended; after (4): mentions or a
//! large group's unread count still counting a recalled message. A retry of the amend before
//! the commit redoes every step (the copies already amended are rewritten to the same content)
//! and the holders get a second event; after it the retry is answered `Unchanged`. If the
//! commit's own LWT fails without an answer, a LOCAL_SERIAL read of the row (which finishes a
//! pending Paxos round) says whether it landed, so the call answers `Done` or undoes.

use futures::stream::{self, StreamExt as _};
use mqim_schemas::v1::Message;

use super::amend_rules::{amend_event, holders, refusal, scope, settled_copy, Holder};
use super::*;
use crate::store::extras::{Amend, AmendKind, AmendLog, AmendOutcome, AmendPlan};
use crate::store::groups::log_owner;

/// Copies read or rewritten at once.
const COPY_CONCURRENCY: usize = 32;
/// Conditional rounds a copy is tried before the amend gives up under contention.
const REWRITE_ROUNDS: usize = 8;

/// The prepared statements of recall and edit.
pub(super) struct AmendStatements {
    /// Written with every message, in its logged batch (`writes.rs`, `groups.rs`).
    pub(super) insert_copies: PreparedStatement,
    select_copies: PreparedStatement,
    history_at: PreparedStatement,
    /// `history_at` at LOCAL_SERIAL: finishes a pending conditional write before reading.
    history_at_serial: PreparedStatement,
    amend_history: PreparedStatement,
    delete_mention: PreparedStatement,
    delete_group_msg: PreparedStatement,
}

impl AmendStatements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> StoreResult<AmendStatements> {
        let p = |cql: String| schema::prepare(session, cql);
        let history_at = format!(
            "SELECT message FROM {ks}.history WHERE user_a = ? AND user_b = ? AND day = ? \
             AND msg_id = ?"
        );
        let mut history_at_serial = p(history_at.clone()).await?;
        history_at_serial.set_consistency(Consistency::LocalSerial);
        Ok(AmendStatements {
            insert_copies: p(format!(
                "INSERT INTO {ks}.message_copies (user_a, user_b, day, msg_id, copies) \
                 VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            select_copies: p(format!(
                "SELECT copies FROM {ks}.message_copies WHERE user_a = ? AND user_b = ? \
                 AND day = ? AND msg_id = ?"
            ))
            .await?,
            history_at: p(history_at).await?,
            history_at_serial,
            amend_history: p(format!(
                "UPDATE {ks}.history SET message = ? WHERE user_a = ? AND user_b = ? AND day = ? \
                 AND msg_id = ? IF message = ?"
            ))
            .await?,
            delete_mention: p(format!(
                "DELETE FROM {ks}.mentions WHERE owner = ? AND conversation = ? AND msg_id = ?"
            ))
            .await?,
            delete_group_msg: p(format!(
                "DELETE FROM {ks}.group_msgs WHERE grp = ? AND bucket = ? AND seq = ?"
            ))
            .await?,
        })
    }
}

/// The message as its history row holds it, and its copy map.
struct Stored {
    /// (user_a, user_b, day, msg_id) of the history row and the copy map.
    key: (String, String, i32, i64),
    /// The history row's message, as stored (the commit's condition).
    blob: Vec<u8>,
    message: Message,
    copies: Vec<(String, u64)>,
}

/// A holder whose copy was read: the copy as stored, and its group seq.
struct Found {
    holder: Holder,
    blob: Vec<u8>,
    group_seq: u64,
}

/// A copy this attempt rewrote (or may have: its LWT failed without an answer).
struct Rewrite {
    owner: String,
    seq: u64,
    after: Vec<u8>,
}

/// The owners a job of `seqs` touches, for the writer's ordering.
fn job_users(seqs: &[(String, u64)]) -> Vec<String> {
    seqs.iter().map(|(owner, _)| owner.clone()).collect()
}

impl Inner {
    /// The history row and copy map of `a`'s message; `None` without a history row.
    async fn stored(&self, a: &Amend) -> StoreResult<Option<Stored>> {
        let (x, y) = scope(&a.home)?;
        let day = history_day(a.msg_id);
        let id = to_i64(a.msg_id, "msg_id")?;
        let s = &self.stmts.amends;
        let what = || format!("reading message {id} of {x} and {y}");
        let (history, copies) = futures::future::try_join(
            self.select::<(Vec<u8>,)>(&s.history_at, (&x, &y, day, id), what),
            self.select::<(Vec<u8>,)>(&s.select_copies, (&x, &y, day, id), what),
        )
        .await?;
        let Some((blob,)) = history.into_iter().next() else {
            return Ok(None);
        };
        let message = Message::decode(blob.as_slice())
            .map_err(|e| StoreError::new(format!("decoding history message {id} of {x}: {e}")))?;
        let Some((copies,)) = copies.into_iter().next() else {
            return Err(StoreError::new(format!(
                "message {id} of {x} and {y} has no copy map (logged by an older build): it \
                 cannot be recalled or edited"
            )));
        };
        Ok(Some(Stored {
            key: (x, y, day, id),
            blob,
            message,
            copies: decode_copies(&copies)?,
        }))
    }

    /// See [`AmendLog::plan_amend`]: reads only the history row and the copy map.
    pub(super) async fn plan_amend(&self, a: &Amend) -> StoreResult<AmendPlan> {
        let Some(stored) = self.stored(a).await? else {
            return Ok(AmendPlan::Answer(AmendOutcome::NotFound));
        };
        let Some(holders) = holders(a, &stored.copies) else {
            return Ok(AmendPlan::Answer(AmendOutcome::NotFound));
        };
        if let Some(answer) = refusal(a, &stored.message) {
            return Ok(AmendPlan::Answer(answer));
        }
        Ok(AmendPlan::Write(
            holders.into_iter().map(|h| h.owner).collect(),
        ))
    }

    /// The copies of `holders` that are there: the message at the seq the map names (an
    /// attempt whose claims were undone left a gap instead).
    async fn read_copies(&self, msg_id: u64, holders: Vec<Holder>) -> StoreResult<Vec<Found>> {
        let reads = holders.into_iter().map(|holder| async move {
            let seq = to_i64(holder.copy_seq, "copy seq")?;
            let owner = holder.owner.clone();
            let rows = self
                .select::<(Vec<u8>,)>(
                    &self.stmts.event_at,
                    (&owner, event_bucket(holder.copy_seq), seq),
                    || format!("reading {owner}'s copy of message {msg_id} at seq {seq}"),
                )
                .await?;
            let Some((blob,)) = rows.into_iter().next() else {
                return Ok(None);
            };
            let event = decode_event(&owner, seq, &blob)?;
            Ok(match event.body {
                Some(event::Body::Message(m)) if m.msg_id == msg_id => Some(Found {
                    holder,
                    blob,
                    group_seq: event.group_seq,
                }),
                _ => None,
            })
        });
        // `buffered` keeps the holders' order: the home stays first.
        let found: Vec<StoreResult<Option<Found>>> = stream::iter(reads)
            .buffered(COPY_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::with_capacity(found.len());
        for f in found {
            out.extend(f?);
        }
        Ok(out)
    }

    /// See [`AmendLog::log_amend`] and the module comment ("Writing").
    pub(super) async fn log_amend(
        &self,
        a: &Amend,
        given: &[(String, u64)],
        deadline: Instant,
    ) -> LogResult<AmendOutcome> {
        for (_, seq) in given {
            to_i64(*seq, "amend seq")?;
        }
        let checked = match self.stored(a).await? {
            None => Err(AmendOutcome::NotFound),
            Some(stored) => match (holders(a, &stored.copies), refusal(a, &stored.message)) {
                (None, _) => Err(AmendOutcome::NotFound),
                (_, Some(answer)) => Err(answer),
                (Some(holders), None) => Ok((stored, holders)),
            },
        };
        let (stored, holders) = match checked {
            Ok(checked) => checked,
            Err(answer) => {
                self.write_gaps(given, deadline).await?;
                return Ok(answer);
            }
        };
        let found = self.read_copies(a.msg_id, holders).await?;
        if found.first().map(|f| &f.holder.owner) != Some(&a.home.owner) {
            self.write_gaps(given, deadline).await?;
            return Ok(AmendOutcome::NotFound);
        }
        let mut seqs = Vec::with_capacity(found.len());
        for f in &found {
            let seq = given.iter().find(|(o, _)| *o == f.holder.owner);
            seqs.push(seq.map(|(_, s)| *s).ok_or_else(|| {
                StoreError(format!(
                    "the index allocated no seq in {}'s stream, which holds message {}",
                    f.holder.owner, a.msg_id
                ))
            })?);
        }
        let unused: Vec<(String, u64)> = given
            .iter()
            .filter(|(o, _)| !found.iter().any(|f| f.holder.owner == *o))
            .cloned()
            .collect();
        self.write_gaps(&unused, deadline).await?;

        // The home's seq is the group seq of every event of a group message.
        let home_seq = seqs[0];
        let events: Vec<(String, Event)> = found
            .iter()
            .zip(&seqs)
            .map(|(f, seq)| {
                let group_seq = match a.group_log {
                    true => home_seq,
                    false => f.group_seq,
                };
                let ev = amend_event(a, &f.holder.conversation, *seq, group_seq);
                (f.holder.owner.clone(), ev)
            })
            .collect();
        let claims: Vec<(&str, &Event)> = events.iter().map(|(o, e)| (o.as_str(), e)).collect();
        self.claim_many(&claims, deadline).await?;

        let (rewrites, rewritten) = self.rewrite_copies(a, &found, deadline).await;
        let committed = match rewritten {
            Ok(()) => self.commit_history(a, &stored, deadline).await,
            Err(e) => Err(e),
        };
        match committed {
            Ok(None) => {}
            Ok(Some(now)) => {
                self.settle_copies(&rewrites, Some(&now)).await;
                self.undo_claims(&claims).await;
                return match refusal(a, &now) {
                    Some(answer) => Ok(answer),
                    None => Err(StoreError::new(format!(
                        "message {} was amended elsewhere at the same time; try again",
                        a.msg_id
                    ))
                    .into()),
                };
            }
            Err(e) => {
                let now = self.history_now(&stored).await;
                self.settle_copies(&rewrites, now.as_ref()).await;
                self.undo_claims(&claims).await;
                return Err(e.into());
            }
        }
        if a.kind == AmendKind::Recall {
            // Derived rows: the amend stands without them (see the module comment).
            if let Err(e) = self.recall_rows(a, &stored.message, &found).await {
                tracing::warn!("{e}");
            }
        }
        Ok(AmendOutcome::Done(events))
    }

    /// Rewrites every copy; the rewrites made (or maybe made), and the first failure.
    async fn rewrite_copies(
        &self,
        a: &Amend,
        found: &[Found],
        deadline: Instant,
    ) -> (Vec<Rewrite>, StoreResult<()>) {
        // Made first, so the stream holds futures rather than a closure over borrowed copies.
        let rewrites: Vec<_> = found
            .iter()
            .map(|f| self.rewrite_copy(a, f, deadline))
            .collect();
        let results: Vec<(Option<Rewrite>, StoreResult<()>)> = stream::iter(rewrites)
            .buffer_unordered(COPY_CONCURRENCY)
            .collect()
            .await;
        let mut rewrites = Vec::with_capacity(results.len());
        let mut first_error = Ok(());
        for (rewrite, result) in results {
            rewrites.extend(rewrite);
            if let (Err(e), true) = (result, first_error.is_ok()) {
                first_error = Err(e);
            }
        }
        (rewrites, first_error)
    }

    /// Rewrites one copy from what it holds, with an LWT on exactly that; a copy changed by
    /// another amend meanwhile is amended from what the LWT answers. The rewrite that applied
    /// (or whose LWT failed without an answer), if any.
    async fn rewrite_copy(
        &self,
        a: &Amend,
        f: &Found,
        deadline: Instant,
    ) -> (Option<Rewrite>, StoreResult<()>) {
        let owner = &f.holder.owner;
        let seq = f.holder.copy_seq;
        let what = || {
            format!(
                "amending {owner}'s copy of message {} at seq {seq}",
                a.msg_id
            )
        };
        let Ok(at) = to_i64(seq, "copy seq") else {
            return (None, Err(StoreError::new(what())));
        };
        let mut current = f.blob.clone();
        for _ in 0..REWRITE_ROUNDS {
            let mut event = match decode_event(owner, at, &current) {
                Ok(event) => event,
                Err(e) => return (None, Err(e)),
            };
            let Some(event::Body::Message(m)) = event.body.as_mut() else {
                // Undone into a gap meanwhile: no copy is left to amend.
                return (None, Ok(()));
            };
            if m.msg_id != a.msg_id || !a.apply_to(m) {
                return (None, Ok(()));
            }
            let next = event.encode_to_vec();
            if next == current {
                return (None, Ok(()));
            }
            let timeout = match self.time_left(deadline, &what) {
                Ok(timeout) => timeout,
                Err(e) => return (None, Err(e)),
            };
            let values = (&next, owner, event_bucket(seq), at, &current);
            let rewrite = |after: Vec<u8>| Rewrite {
                owner: owner.clone(),
                seq,
                after,
            };
            let answer = self
                .lwt_with_timeout(&self.stmts.replace_event, values, timeout, what)
                .await;
            match answer {
                Ok(done) if done.applied => return (Some(rewrite(next)), Ok(())),
                Ok(done) => match done.columns_blob("event") {
                    Some(now) => current = now,
                    None => return (None, Err(StoreError::new(format!("{}: gone", what())))),
                },
                Err(e) => return (Some(rewrite(next)), Err(e)),
            }
        }
        let e = format!("{}: it kept changing under {REWRITE_ROUNDS} rounds", what());
        (None, Err(StoreError::new(e)))
    }

    /// Best effort, after an attempt that did not commit: the copies it rewrote (where they
    /// still hold its rewrite) are set to what history holds now, `now`. Not back to what they
    /// were: another amend that committed may have left such a copy to this attempt, having
    /// found it amended already. `None` (history unknown): they stay as they are, amended
    /// ahead of history until a retry commits. A failure leaves the copy so too.
    async fn settle_copies(&self, rewrites: &[Rewrite], now: Option<&Message>) {
        let Some(now) = now else {
            if !rewrites.is_empty() {
                tracing::warn!(
                    "{} copies stay amended: history could not be read after a failed amend",
                    rewrites.len()
                );
            }
            return;
        };
        let settles: Vec<_> = rewrites
            .iter()
            .map(|r| async move {
                let Ok(at) = to_i64(r.seq, "copy seq") else {
                    return;
                };
                let what = || format!("settling {}'s copy at seq {}", r.owner, r.seq);
                let settled = match settled_copy(&r.owner, at, &r.after, now) {
                    Ok(settled) if settled == r.after => return,
                    Ok(settled) => settled,
                    Err(e) => return tracing::warn!("{}: {e}", what()),
                };
                let values = (&settled, &r.owner, event_bucket(r.seq), at, &r.after);
                let result = self.lwt(&self.stmts.replace_event, values, what).await;
                if let Err(e) = result {
                    tracing::warn!("{e}");
                }
            })
            .collect();
        stream::iter(settles)
            .buffer_unordered(COPY_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
    }

    /// The history row's message now, read at LOCAL_SERIAL (which finishes a pending
    /// conditional write first); `None` if it cannot be read.
    async fn history_now(&self, stored: &Stored) -> Option<Message> {
        let (x, y, day, id) = &stored.key;
        let read = self
            .select::<(Vec<u8>,)>(
                &self.stmts.amends.history_at_serial,
                (x, y, *day, *id),
                || format!("reading message {id} of {x} and {y}"),
            )
            .await;
        match read.map(|rows| rows.into_iter().next()) {
            Ok(Some((blob,))) => Message::decode(blob.as_slice()).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    /// The commit: the history row amended if it still holds what the checks read. `Ok(None)`
    /// if it landed, `Ok(Some(message))` with what it holds if another amend got there first.
    async fn commit_history(
        &self,
        a: &Amend,
        stored: &Stored,
        deadline: Instant,
    ) -> StoreResult<Option<Message>> {
        let (x, y, day, id) = &stored.key;
        let mut amended = stored.message.clone();
        a.apply_to(&mut amended);
        let next = amended.encode_to_vec();
        let what = || format!("amending message {id} in the history of {x} and {y}");
        let timeout = self.time_left(deadline, &what)?;
        let s = &self.stmts.amends;
        let values = (&next, x, y, *day, *id, &stored.blob);
        let answer = self
            .lwt_with_timeout(&s.amend_history, values, timeout, what)
            .await;
        let now = match answer {
            Ok(done) if done.applied => return Ok(None),
            Ok(done) => done.columns_blob("message"),
            Err(e) => {
                // No answer: a serial read finishes the round if it is pending, then says.
                let rows = self
                    .select::<(Vec<u8>,)>(&s.history_at_serial, (x, y, *day, *id), what)
                    .await
                    .map_err(|read| StoreError::new(format!("{e}; then {read}")))?;
                match rows.into_iter().next() {
                    Some((blob,)) if blob == next => return Ok(None),
                    Some((blob,)) if blob == stored.blob => return Err(e),
                    other => other.map(|(blob,)| blob),
                }
            }
        };
        let now = now.ok_or_else(|| StoreError::new(format!("{}: the row is gone", what())))?;
        Message::decode(now.as_slice())
            .map(Some)
            .map_err(|e| StoreError::new(format!("{}: decoding it: {e}", what())))
    }

    /// After a recall of a group message: its mentions and its `group_msgs` row (which a large
    /// group's unread count counts) deleted. Not bound by the deadline: the recall stands.
    async fn recall_rows(&self, a: &Amend, original: &Message, found: &[Found]) -> StoreResult<()> {
        let Some(Conversation::Group(grp)) = Conversation::parse(&a.home.conversation) else {
            return Ok(());
        };
        let s = &self.stmts.amends;
        let id = to_i64(a.msg_id, "msg_id")?;
        let mut batch = WriteBatch::new();
        let log = log_owner(&grp);
        for f in found.iter().filter(|f| f.holder.owner != log) {
            if original.mention_all || original.mentions.contains(&f.holder.owner) {
                batch.push(
                    &s.delete_mention,
                    (f.holder.owner.clone(), f.holder.conversation.clone(), id),
                );
            }
        }
        if original.group_seq > 0 {
            let seq = to_i64(original.group_seq, "group seq")?;
            batch.push(
                &s.delete_group_msg,
                (grp.clone(), event_bucket(original.group_seq), seq),
            );
        }
        if batch.values.is_empty() {
            return Ok(());
        }
        let what = || format!("removing the mentions and count of recalled message {id}");
        batch.run(&self.session, self.request_timeout, what).await
    }
}

#[async_trait]
impl AmendLog for ScyllaLog {
    async fn plan_amend(&self, amend: &Amend) -> StoreResult<AmendPlan> {
        self.inner.plan_amend(amend).await
    }

    fn log_amend(
        &self,
        amend: Amend,
        seqs: Vec<(String, u64)>,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<AmendOutcome>> {
        flatten(self.enqueue(job_users(&seqs), move |inner| {
            async move { Ok(inner.log_amend(&amend, &seqs, deadline).await) }.boxed()
        }))
    }
}

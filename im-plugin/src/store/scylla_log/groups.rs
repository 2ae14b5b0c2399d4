//! The ScyllaDB log's group writes: [`GroupLog::log_group`] (one entry of a group's log, its
//! copies, and the rows it changes) and [`GroupLog::log_group_read`] (a large group member's
//! read position). The reads are in `group_reads.rs`; the tables in the module comment of
//! `mod.rs` ("Groups").
//!
//! A group entry is written in the steps of a one-to-one message (see "Writes" in `mod.rs`):
//! (a) its dedup record, if it has one ([`GroupAppend::dedup_key`]: a message's (sender,
//! clientMsgId), a `groupCreate`'s (`#create:<creator>`, clientMsgId)), claimed in `group_dedup`
//! with `INSERT ... IF NOT EXISTS`; a resend is answered with the original once it is found at
//! its group seq, waits while the original may still land, and takes a dead original's record
//! over after [`super::ScyllaLogConfig::takeover_grace_ms`]; (b) the bucket rows, then the entry
//! claimed at its seq of the group's log (`events`, owner `#g:<id>`), then every copy claimed at
//! its seq (conditional inserts, up to [`CLAIM_CONCURRENCY`] at once: a taken seq is a conflict,
//! and the claims made turn into gaps); (c) one LOGGED batch with everything else the entry
//! changes: history row, copy map, message row and head, mentions, the group's meta, member rows and the
//! members' lists of groups, max msgid. A large group's sender's read position is raised after
//! the batch (an LWT, which a batch over several partitions cannot hold).
//!
//! Every call that does not write the entry fresh writes `gap` events at the seqs it was given.
//!
//! Cost per entry: one dedup LWT (messages and deduped creations), one LWT per stream row (the
//! group's log plus one per copy: 501 for a message to a 500-member small group, run 32 at a
//! time), two batches; the copy map adds ~14 bytes per copy to the batch (~7 KB for 500
//! members). A change's batch holds two rows per member it adds or removes (at most
//! 500 per request: ~100 KB, under ScyllaDB's default 1 MB batch limit; a creation with 500
//! members is the largest).

use std::time::Instant;

use futures::stream::{self, StreamExt as _};
use mqim_schemas::v1::{event, Event};
use prost::Message as _;

use super::*;
use crate::store::groups::{
    log_owner, DedupKey, GroupAppend, GroupAppended, GroupEntry, GroupMeta, GroupOutcome,
    GroupReadOutcome, Member,
};
use crate::store::log::GroupSeqs;

/// Copy rows claimed at once.
const CLAIM_CONCURRENCY: usize = 32;
/// The second half of a group's history key: `history` rows of group `g` are under
/// (`#g:<g>`, `#`), which no pair of user ids can be (no user id holds `#`).
pub(super) const GROUP_HISTORY_PEER: &str = "#";

/// The JSON of a stored meta or member row (the encoding the embedded log uses too).
pub(super) fn to_json<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(StoreError::new)
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(v: &str, what: &str) -> StoreResult<T> {
    serde_json::from_str(v).map_err(|e| StoreError(format!("corrupt {what}: {e}")))
}

/// Who a group job touches, for the writer's ordering: the group's log, every copy's owner, and
/// the sender (whose read position a large group message moves).
pub(super) fn group_job_users(entry: &GroupAppend) -> Vec<String> {
    let mut users = vec![log_owner(&entry.group)];
    users.extend(entry.copies.iter().map(|c| c.owner.clone()));
    if let GroupEntry::Message(m) = &entry.entry {
        users.push(m.from.clone());
    }
    users
}

impl Inner {
    /// See the module comment.
    pub(super) async fn log_group(
        &self,
        entry: GroupAppend,
        seqs: GroupSeqs,
        deadline: Instant,
    ) -> LogResult<GroupOutcome> {
        if seqs.copies.len() != entry.copies.len() {
            return Err(StoreError::new("a group write names a seq per copy").into());
        }
        to_i64(seqs.group_seq, "group seq")?;
        for seq in &seqs.copies {
            to_i64(*seq, "copy seq")?;
        }
        let owner = log_owner(&entry.group);
        let sent = SentRecord {
            msg_id: entry.msg_id,
            seq: entry
                .dedup_key()
                .and_then(|d| {
                    entry
                        .copies
                        .iter()
                        .zip(&seqs.copies)
                        .find(|(c, _)| c.owner == d.actor)
                        .map(|(_, s)| *s)
                })
                .unwrap_or(0),
            conversation: Conversation::Group(entry.group.clone()).to_string(),
            ts: entry.ts,
            group_seq: seqs.group_seq,
        };
        let Some(key) = entry.dedup_key() else {
            return self.write_group_fresh(&entry, &seqs, sent, deadline).await;
        };
        let claimed = self.claim_group_dedup(&key, &sent, deadline).await?;
        if claimed.applied {
            return self
                .write_group_fresh_or_release(&entry, &key, &seqs, sent, deadline)
                .await;
        }
        let outcome = match self
            .group_resend(&entry, &key, &sent, &claimed, deadline)
            .await
        {
            Ok(None) => {
                return self
                    .write_group_fresh_or_release(&entry, &key, &seqs, sent, deadline)
                    .await
            }
            Ok(Some(original)) => Ok(GroupOutcome::Duplicate(original)),
            Err(e) => Err(e.into()),
        };
        // Not written fresh: the seqs given for this call must not stay holes.
        let mut gaps = vec![(owner, seqs.group_seq)];
        gaps.extend(
            entry
                .copies
                .iter()
                .zip(&seqs.copies)
                .map(|(c, s)| (c.owner.clone(), *s)),
        );
        self.write_gaps(&gaps, deadline).await?;
        outcome
    }

    async fn claim_group_dedup(
        &self,
        key: &DedupKey,
        sent: &SentRecord,
        deadline: Instant,
    ) -> StoreResult<Lwt> {
        let what = || {
            format!(
                "recording the dedup entry of ({}, {})",
                key.owner, key.client_msg_id
            )
        };
        let timeout = self.time_left(deadline, &what)?;
        self.lwt_with_timeout(
            &self.stmts.groups.claim_dedup,
            (
                &key.owner,
                &key.client_msg_id,
                to_i64(sent.msg_id, "msg_id")?,
                to_i64(sent.seq, "sender seq")?,
                to_i64(sent.group_seq, "group seq")?,
                &sent.conversation,
                sent.ts,
                wall_ms_at(deadline),
                self.dedup_ttl,
            ),
            timeout,
            what,
        )
        .await
    }

    /// A resend: `Some(original)` if the original is at its group seq, `None` if this attempt
    /// took the dedup record over and must write fresh, an error if the original may still land.
    async fn group_resend(
        &self,
        entry: &GroupAppend,
        key: &DedupKey,
        sent: &SentRecord,
        claimed: &Lwt,
        deadline: Instant,
    ) -> StoreResult<Option<SentRecord>> {
        let mut original = claimed.sent_record()?;
        original.group_seq = from_i64(claimed.i64("group_seq")?, "recorded group seq")?;
        if self.group_original_landed(entry, key, &original).await? {
            return Ok(Some(original));
        }
        let may_land_until = claimed
            .i64("deadline_ms")?
            .saturating_add(self.takeover_grace_ms);
        if crate::now_ms() < may_land_until {
            return Err(StoreError::new(format!(
                "({}, {}) was sent before and that write may still land; retry later",
                key.owner, key.client_msg_id
            )));
        }
        let what = || {
            format!(
                "taking over the dedup entry of ({}, {})",
                key.owner, key.client_msg_id
            )
        };
        let timeout = self.time_left(deadline, &what)?;
        let taken = self
            .lwt_with_timeout(
                &self.stmts.groups.take_over_dedup,
                (
                    self.dedup_ttl,
                    to_i64(sent.msg_id, "msg_id")?,
                    to_i64(sent.seq, "sender seq")?,
                    to_i64(sent.group_seq, "group seq")?,
                    &sent.conversation,
                    sent.ts,
                    wall_ms_at(deadline),
                    &key.owner,
                    &key.client_msg_id,
                    to_i64(original.msg_id, "recorded msg_id")?,
                ),
                timeout,
                what,
            )
            .await?;
        if taken.applied {
            return Ok(None);
        }
        Err(StoreError::new(format!(
            "another resend of ({}, {}) took over its dedup entry; retry later",
            key.owner, key.client_msg_id
        )))
    }

    /// Whether the entry recorded in `original` is at its group seq in its group's log: the
    /// message with its msgid, or (a creation) the `created` change with its clientMsgId. The
    /// group is the record's (a retried creation plans a new group id).
    async fn group_original_landed(
        &self,
        entry: &GroupAppend,
        key: &DedupKey,
        original: &SentRecord,
    ) -> StoreResult<bool> {
        let owner = match Conversation::parse(&original.conversation) {
            Some(Conversation::Group(group)) => log_owner(&group),
            _ => log_owner(&entry.group),
        };
        let seq = to_i64(original.group_seq, "recorded group seq")?;
        let rows = self
            .select::<(Vec<u8>,)>(
                &self.stmts.event_at,
                (&owner, event_bucket(original.group_seq), seq),
                || format!("reading {owner}'s event at seq {seq}"),
            )
            .await?;
        let Some((blob,)) = rows.first() else {
            return Ok(false);
        };
        Ok(match decode_event(&owner, seq, blob)?.body {
            Some(event::Body::Message(m)) => m.msg_id == original.msg_id,
            Some(event::Body::Group(c)) => {
                c.change == "created" && c.client_msg_id == key.client_msg_id
            }
            _ => false,
        })
    }

    /// Writes fresh; if nothing was written (a conflict, the deadline), releases the dedup
    /// record this attempt holds, so a resend need not wait out the takeover grace.
    async fn write_group_fresh_or_release(
        &self,
        entry: &GroupAppend,
        key: &DedupKey,
        seqs: &GroupSeqs,
        sent: SentRecord,
        deadline: Instant,
    ) -> LogResult<GroupOutcome> {
        let written = self.write_group_fresh(entry, seqs, sent, deadline).await;
        if written.is_err() {
            let released = self
                .lwt(
                    &self.stmts.groups.release_dedup,
                    (
                        &key.owner,
                        &key.client_msg_id,
                        to_i64(entry.msg_id, "msg_id")?,
                    ),
                    || {
                        format!(
                            "releasing the dedup entry of ({}, {})",
                            key.owner, key.client_msg_id
                        )
                    },
                )
                .await;
            if let Err(e) = released {
                tracing::warn!("{e}");
            }
        }
        written
    }

    /// Steps (b) and (c) of the module comment.
    async fn write_group_fresh(
        &self,
        entry: &GroupAppend,
        seqs: &GroupSeqs,
        sent: SentRecord,
        deadline: Instant,
    ) -> LogResult<GroupOutcome> {
        let owner = log_owner(&entry.group);
        let log_event = entry.event(seqs.group_seq, seqs.group_seq);
        let copies: Vec<(String, Event)> = entry
            .copies
            .iter()
            .zip(&seqs.copies)
            .map(|(c, seq)| {
                let event = Event {
                    seq: *seq,
                    ..log_event.clone()
                };
                (c.owner.clone(), event)
            })
            .collect();
        // Read before anything is written: a role change keeps the member's join position.
        let batch = self.group_batch(entry, seqs, &log_event).await?;
        let mut claims: Vec<(&str, &Event)> = vec![(owner.as_str(), &log_event)];
        claims.extend(copies.iter().map(|(o, e)| (o.as_str(), e)));
        self.claim_many(&claims, deadline).await?;
        let what = || format!("writing group entry {} of {}", entry.msg_id, entry.group);
        let sent_batch = match self.time_left(deadline, &what) {
            Ok(timeout) => batch.run(&self.session, timeout, what).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent_batch {
            self.undo_claims(&claims).await;
            return Err(e.into());
        }
        if let (GroupEntry::Message(m), true) = (&entry.entry, entry.large) {
            // Your own message is never unread: sending moves your read position to it.
            let raised = self
                .raise_group_read(
                    &m.from,
                    &entry.group,
                    seqs.group_seq,
                    entry.msg_id,
                    deadline,
                )
                .await;
            if let Err(e) = raised {
                tracing::warn!("{e}");
            }
        }
        Ok(GroupOutcome::Fresh(GroupAppended {
            sent,
            log_event,
            copies,
        }))
    }

    /// The logged batch of a fresh entry: every row it changes except the stream rows.
    async fn group_batch(
        &self,
        entry: &GroupAppend,
        seqs: &GroupSeqs,
        log_event: &Event,
    ) -> StoreResult<WriteBatch> {
        let g = &self.stmts.groups;
        let grp = entry.group.clone();
        let conversation = Conversation::Group(grp.clone()).to_string();
        let msg_id = to_i64(entry.msg_id, "msg_id")?;
        let group_seq = to_i64(seqs.group_seq, "group seq")?;
        let mut batch = WriteBatch::new();
        if let Some(event::Body::Message(m)) = &log_event.body {
            let day = history_day(entry.msg_id);
            let owner = log_owner(&grp);
            batch.push(
                &self.stmts.insert_history,
                (
                    owner.clone(),
                    GROUP_HISTORY_PEER.to_string(),
                    day,
                    msg_id,
                    m.encode_to_vec(),
                ),
            );
            batch.push(
                &self.stmts.insert_history_day,
                (owner.clone(), GROUP_HISTORY_PEER.to_string(), day),
            );
            // Where each copy is, the group's log first, for a recall or an edit
            // (`amends.rs`): members who leave later keep theirs.
            let copies = std::iter::once((owner.as_str(), seqs.group_seq)).chain(
                entry
                    .copies
                    .iter()
                    .zip(&seqs.copies)
                    .map(|(c, seq)| (c.owner.as_str(), *seq)),
            );
            batch.push(
                &self.stmts.amends.insert_copies,
                (
                    owner.clone(),
                    GROUP_HISTORY_PEER.to_string(),
                    day,
                    msg_id,
                    encode_copies(copies),
                ),
            );
            batch.push(
                &g.insert_group_msg,
                (grp.clone(), event_bucket(seqs.group_seq), group_seq, msg_id),
            );
            // The highest group seq wins whatever order the batches land in.
            batch.push(&g.raise_head, (group_seq, group_seq, entry.ts, grp.clone()));
            for c in entry.copies.iter().filter(|c| c.mention) {
                batch.push(
                    &g.insert_mention,
                    (c.owner.clone(), conversation.clone(), msg_id),
                );
            }
        }
        // Every entry's msgid, changes' too: a restarted node's msgids continue above it.
        batch.push(
            &self.stmts.raise_max_msg_id,
            (
                max_msg_id_timestamp(entry.msg_id),
                msg_id,
                msg_id_slot(entry.msg_id),
            ),
        );
        if let Some(w) = &entry.membership {
            let meta = GroupMeta {
                version_seq: seqs.group_seq,
                ..w.meta.clone()
            };
            batch.push(&g.insert_meta, (grp.clone(), to_json(&meta)?));
            for u in &w.upserts {
                let kept = match u.joins {
                    true => None,
                    false => self.member(&grp, &u.user).await?,
                };
                let member = match kept {
                    Some(m) => Member { role: u.role, ..m },
                    None => Member {
                        role: u.role,
                        joined_at: entry.ts,
                        joined_seq: seqs.group_seq,
                        joined_msg_id: entry.msg_id,
                    },
                };
                batch.push(
                    &g.upsert_member,
                    (grp.clone(), u.user.clone(), to_json(&member)?),
                );
                batch.push(
                    &g.upsert_user_group,
                    (u.user.clone(), grp.clone(), entry.large),
                );
            }
            for user in &w.removals {
                batch.push(&g.delete_member, (grp.clone(), user.clone()));
                batch.push(&g.delete_user_group, (user.clone(), grp.clone()));
            }
        }
        Ok(batch)
    }

    /// Claims every event row (the first, the group's log, alone; then the copies, several at
    /// once); on a taken seq, undoes the claims made and reports the conflict.
    pub(super) async fn claim_many(
        &self,
        events: &[(&str, &Event)],
        deadline: Instant,
    ) -> LogResult<()> {
        let Some((first, rest)) = events.split_first() else {
            return Ok(());
        };
        self.write_buckets(events.iter().map(|(o, e)| (*o, e.seq)), deadline)
            .await?;
        if !self.claim_event(first.0, first.1, deadline).await? {
            return Err(LogError::Conflict {
                user: first.0.to_string(),
                seq: first.1.seq,
            });
        }
        // Owned, so the stream's futures name no borrowed element (and stay `Send`).
        let owned: Vec<(usize, String, Event)> = rest
            .iter()
            .enumerate()
            .map(|(i, (o, e))| (i, o.to_string(), (*e).clone()))
            .collect();
        let claims: Vec<_> = owned
            .into_iter()
            .map(|(i, owner, event)| async move {
                (i, self.claim_event(&owner, &event, deadline).await)
            })
            .collect();
        let results: Vec<(usize, StoreResult<bool>)> = stream::iter(claims)
            .buffer_unordered(CLAIM_CONCURRENCY)
            .collect()
            .await;
        let mut claimed = vec![*first];
        let mut refused: Option<LogError> = None;
        for (i, result) in results {
            match result {
                Ok(true) => claimed.push(rest[i]),
                Ok(false) => {
                    refused.get_or_insert(LogError::Conflict {
                        user: rest[i].0.to_string(),
                        seq: rest[i].1.seq,
                    });
                }
                Err(e) => {
                    // Unknown whether it applied: a row that holds this event is undone too.
                    claimed.push(rest[i]);
                    if !matches!(refused, Some(LogError::Conflict { .. })) {
                        refused = Some(LogError::Unavailable(e));
                    }
                }
            }
        }
        match refused {
            None => Ok(()),
            Some(e) => {
                self.undo_claims(&claimed).await;
                Err(e)
            }
        }
    }

    /// The stored row of member `user` of `grp`, if any.
    pub(super) async fn member(&self, grp: &str, user: &str) -> StoreResult<Option<Member>> {
        let rows = self
            .select::<(String,)>(&self.stmts.groups.select_member, (grp, user), || {
                format!("reading member {user} of group {grp}")
            })
            .await?;
        rows.first()
            .map(|(json,)| from_json(json, "group member"))
            .transpose()
    }

    /// Raises `user`'s read position in `grp` to the message at `group_seq`; `false` if it is
    /// already there or past it.
    pub(super) async fn raise_group_read(
        &self,
        user: &str,
        grp: &str,
        group_seq: u64,
        msg_id: u64,
        deadline: Instant,
    ) -> StoreResult<bool> {
        let g = &self.stmts.groups;
        let (seq, id) = (to_i64(group_seq, "group seq")?, to_i64(msg_id, "msg_id")?);
        let what = || format!("moving {user}'s read position in group {grp}");
        let timeout = self.time_left(deadline, &what)?;
        let created = self
            .lwt_with_timeout(&g.create_read, (user, grp, seq, id), timeout, what)
            .await?;
        if created.applied {
            return Ok(true);
        }
        let timeout = self.time_left(deadline, &what)?;
        let raised = self
            .lwt_with_timeout(&g.raise_read, (seq, id, user, grp, seq), timeout, what)
            .await?;
        Ok(raised.applied)
    }

    /// Removes `user`'s mentions in `conversation` up to `up_to` (a range delete: a newer
    /// mention, with a larger msgid, stays).
    pub(super) async fn clear_mentions(
        &self,
        user: &str,
        conversation: &str,
        up_to: u64,
        deadline: Instant,
    ) -> StoreResult<()> {
        let what = || format!("clearing {user}'s mentions in {conversation}");
        let timeout = self.time_left(deadline, &what)?;
        let mut stmt = self.stmts.groups.clear_mentions.clone();
        stmt.set_request_timeout(Some(timeout));
        let up_to = i64::try_from(up_to).unwrap_or(i64::MAX);
        self.session
            .execute_unpaged(&stmt, (user, conversation, up_to))
            .await
            .map_err(|e| StoreError::new(format!("{}: {e}", what())))?;
        Ok(())
    }

    /// See [`GroupLog::log_group_read`]: the message `up_to` (or the newest before it) is found
    /// in the group's history; if it is past the reader's position, the receipt is claimed,
    /// then the position raised (if another attempt raised it first, the receipt becomes a
    /// gap), then the mentions it covers cleared.
    pub(super) async fn log_group_read(
        &self,
        user: &str,
        grp: &str,
        up_to: u64,
        own_seq: u64,
        deadline: Instant,
    ) -> LogResult<GroupReadOutcome> {
        let conversation = Conversation::Group(grp.to_string()).to_string();
        let (current, _) = self.group_read(user, grp).await?;
        let found = self.group_message_at_or_before(grp, up_to).await?;
        let gap = || vec![(user.to_string(), own_seq)];
        let Some((seq, msg_id)) = found.filter(|(seq, _)| *seq > current) else {
            self.write_gaps(&gap(), deadline).await?;
            return Ok(GroupReadOutcome {
                unread: self.unread_after(grp, current).await?,
                own_receipt: None,
            });
        };
        let receipt = receipt_event(own_seq, conversation.clone(), user, msg_id);
        let claims = [(user, &receipt)];
        self.claim_many(&claims, deadline).await?;
        let raised = match self
            .raise_group_read(user, grp, seq, msg_id, deadline)
            .await
        {
            Ok(raised) => raised,
            Err(e) => {
                self.undo_claims(&claims).await;
                return Err(e.into());
            }
        };
        if !raised {
            self.undo_claims(&claims).await;
        }
        self.clear_mentions(user, &conversation, up_to, deadline)
            .await?;
        let (at, _) = self.group_read(user, grp).await?;
        Ok(GroupReadOutcome {
            unread: self.unread_after(grp, at.max(seq)).await?,
            own_receipt: raised.then_some(receipt),
        })
    }
}

//! The embedded store's conversation extras: recall and edit (the message rewritten in place in
//! every stream holding it, an event at the next seq of each, unread rows of a recalled message
//! removed, all in one batch), and the `extras` keyspace of blocks and presence settings (also
//! what the split store keeps in its log when the log is this store).
//!
//! Keyspace `extras` (see `mod.rs` for `lp`):
//! - `b ++ lp(blocker) ++ blocked` -> `ts_be`: a block, and when it was made.
//! - `h ++ user` -> empty: the user hides their presence.
//! - `s ++ user` -> `ts_be`: when the user's last device went offline (read one user at a
//!   time, never loaded whole).
//!
//! In log mode (under a Redis index) an amend is planned by a read ([`AmendLog::plan_amend`])
//! and written at the seqs the index allocated ([`Pending::log_amend`]).
//!
//! An amend runs alone in its commit (see [`writer_loop`]): it reads committed event and index
//! rows, which the batch overlay does not cover. As everywhere in this store, everything that
//! can fail happens before the first write.

use std::collections::BTreeSet;

use mqim_schemas::v1::{event, Edited, Recalled};

use super::*;
use crate::store::extras::{
    Amend, AmendKind, AmendLog, AmendOutcome, AmendPlan, AmendTarget, ExtrasLog, ExtrasState,
    ExtrasStore,
};
use crate::store::gap_event;
use crate::store::log::LogResult;

const BLOCK: u8 = b'b';
const HIDDEN: u8 = b'h';
const LAST_SEEN: u8 = b's';

fn last_seen_key(user: &str) -> Vec<u8> {
    let mut key = vec![LAST_SEEN];
    key.extend_from_slice(user.as_bytes());
    key
}

fn block_key(blocker: &str, blocked: &str) -> Vec<u8> {
    let mut key = vec![BLOCK];
    push_lp(&mut key, blocker.as_bytes());
    key.extend_from_slice(blocked.as_bytes());
    key
}

fn hidden_key(user: &str) -> Vec<u8> {
    let mut key = vec![HIDDEN];
    key.extend_from_slice(user.as_bytes());
    key
}

/// One stream's copy of the message, found and amended, not yet written.
struct Found {
    owner: String,
    conversation: String,
    /// The rewritten copy.
    row: (Vec<u8>, Slice),
    group_seq: u64,
    /// The copy's unread row, if it was unread: (row key, count key, count before).
    unread: Option<(Vec<u8>, Vec<u8>, u64)>,
    /// The owner's mention marker points at this message.
    mention: Option<Vec<u8>>,
}

impl Pending<'_> {
    /// The copy of message `msg_id` in `t`'s stream, with its seq, if the stream holds one.
    fn find_copy(&self, t: &AmendTarget, msg_id: u64) -> StoreResult<Option<(u64, Event)>> {
        let mut index = checked_key(user_conv_key(&t.owner, &t.conversation))?;
        index.extend_from_slice(&msg_id.to_be_bytes());
        let Some(seq) = self.ks.conv_index.get(&index).map_err(StoreError::new)? else {
            return Ok(None);
        };
        let seq = decode_u64(&seq, "history seq")?;
        let bytes = self
            .ks
            .events
            .get(event_key(&t.owner, seq))
            .map_err(StoreError::new)?
            .ok_or_else(|| StoreError::new("history index points at a missing event"))?;
        Ok(Some((
            seq,
            Event::decode(&*bytes).map_err(StoreError::new)?,
        )))
    }

    /// The checks of an amend, and the copies it rewrites (home first); `Err` with the answer
    /// when nothing is to be written. Reads only.
    fn check_amend(&self, a: &Amend) -> StoreResult<Result<Vec<Found>, AmendOutcome>> {
        let Some((_, home)) = self.find_copy(&a.home, a.msg_id)? else {
            return Ok(Err(AmendOutcome::NotFound));
        };
        let Some(event::Body::Message(original)) = home.body else {
            return Err(StoreError::new(
                "a history row points at an event that is not a message",
            ));
        };
        if original.recalled {
            return Ok(Err(match a.kind {
                AmendKind::Recall => AmendOutcome::Unchanged {
                    edited_at: original.edited_at,
                },
                AmendKind::Edit { .. } => AmendOutcome::Recalled,
            }));
        }
        let privileged = a.privileged && a.kind == AmendKind::Recall;
        if !privileged {
            if original.from != a.by {
                return Ok(Err(AmendOutcome::NotYours));
            }
            if original.ts < a.not_before_ms {
                return Ok(Err(AmendOutcome::TooOld));
            }
        }
        if let AmendKind::Edit { text, body } = &a.kind {
            if original.text == *text && original.body == *body {
                return Ok(Err(AmendOutcome::Unchanged {
                    edited_at: original.edited_at,
                }));
            }
        }

        // Streams the caller cannot name: a large group's message has copies where it
        // mentions someone, and members who left since may hold a copy of a small group's.
        let mut more: Vec<AmendTarget> = Vec::new();
        if a.group_log {
            let group = a.home.owner.strip_prefix("#g:").unwrap_or_default();
            let left = super::groups::left_after(self.ks, group, a.msg_id)?;
            for user in original.mentions.iter().chain(&left) {
                let named = a.others.iter().chain(&more).any(|t| t.owner == *user);
                if !named {
                    more.push(AmendTarget {
                        owner: user.clone(),
                        conversation: a.home.conversation.clone(),
                    });
                }
            }
        }
        let mut found = Vec::with_capacity(1 + a.others.len() + more.len());
        for t in std::iter::once(&a.home).chain(&a.others).chain(&more) {
            let Some((seq, mut copy)) = self.find_copy(t, a.msg_id)? else {
                continue;
            };
            let Some(event::Body::Message(m)) = copy.body.as_mut() else {
                return Err(StoreError::new(
                    "a history row points at an event that is not a message",
                ));
            };
            // Not recalled: checked on the home copy, and every copy is the same message.
            a.apply_to(m);
            let row = event_row(&t.owner, &copy)?;
            let count_key = checked_key(user_conv_key(&t.owner, &t.conversation))?;
            let mut unread_key = count_key.clone();
            unread_key.extend_from_slice(&seq.to_be_bytes());
            let unread = match a.kind == AmendKind::Recall
                && self
                    .ks
                    .unread
                    .get(&unread_key)
                    .map_err(StoreError::new)?
                    .is_some()
            {
                true => {
                    let count = self.get_u64(Table::UnreadCount, &count_key, "unread count")?;
                    Some((unread_key, count_key.clone(), count))
                }
                false => None,
            };
            let mention = match self.get(Table::Mentions, &count_key)? {
                Some(v)
                    if a.kind == AmendKind::Recall && decode_u64(&v, "mention")? == a.msg_id =>
                {
                    Some(count_key)
                }
                _ => None,
            };
            found.push(Found {
                owner: t.owner.clone(),
                conversation: t.conversation.clone(),
                row,
                group_seq: copy.group_seq,
                unread,
                mention,
            });
        }
        Ok(Ok(found))
    }

    /// An amend of the embedded store: each event at its stream's next seq.
    pub(super) fn amend(&mut self, a: &Amend) -> StoreResult<AmendOutcome> {
        let found = match self.check_amend(a)? {
            Ok(found) => found,
            Err(answer) => return Ok(answer),
        };
        let log_seq = match a.group_log {
            true => self.next_seq(&a.home.owner)?,
            false => 0,
        };
        let mut seqs = Vec::with_capacity(found.len());
        for (i, f) in found.iter().enumerate() {
            seqs.push(match (i, a.group_log) {
                (0, true) => log_seq,
                _ => self.next_seq(&f.owner)?,
            });
        }
        self.write_amend(a, found, &seqs)
    }

    /// The streams of `a` that hold the message, or the answer if nothing is to be written.
    pub(super) fn plan_amend(&self, a: &Amend) -> StoreResult<AmendPlan> {
        Ok(match self.check_amend(a)? {
            Ok(found) => AmendPlan::Write(found.into_iter().map(|f| f.owner).collect()),
            Err(answer) => AmendPlan::Answer(answer),
        })
    }

    /// Log mode: an amend at the seqs the index allocated (one per stream the plan named); gaps
    /// there if the answer changed since the plan.
    pub(super) fn log_amend(&mut self, a: &Amend, given: &[(String, u64)]) -> StoreResult<Output> {
        if let Some(conflict) = self.first_taken(given.iter().map(|(o, s)| (o.as_str(), *s)))? {
            return Ok(conflict);
        }
        let gaps = |given: &[(String, u64)], except: &[Found]| -> Vec<(String, Event)> {
            given
                .iter()
                .filter(|(o, _)| !except.iter().any(|f| f.owner == *o))
                .map(|(o, s)| (o.clone(), gap_event(*s)))
                .collect()
        };
        let found = match self.check_amend(a)? {
            Ok(found) => found,
            Err(answer) => {
                self.write_free(&gaps(given, &[]))?;
                return Ok(Output::Amended(Box::new(answer)));
            }
        };
        let mut seqs = Vec::with_capacity(found.len());
        for f in &found {
            let seq = given.iter().find(|(o, _)| *o == f.owner).map(|(_, s)| *s);
            seqs.push(seq.ok_or_else(|| {
                StoreError(format!(
                    "the index allocated no seq in {}'s stream, which holds the message",
                    f.owner
                ))
            })?);
        }
        let unused = gaps(given, &found);
        let outcome = self.write_amend(a, found, &seqs)?;
        self.write_free(&unused)?;
        Ok(Output::Amended(Box::new(outcome)))
    }

    /// Writes the rewritten copies and an event at `seqs[i]` of each `found[i]`'s stream.
    fn write_amend(
        &mut self,
        a: &Amend,
        found: Vec<Found>,
        seqs: &[u64],
    ) -> StoreResult<AmendOutcome> {
        // A group message's ordinal, so a large group's unread counts leave it out.
        let recalled_ordinal = match (a.group_log, &a.kind) {
            (true, AmendKind::Recall) => {
                let group = a.home.owner.strip_prefix("#g:").unwrap_or_default();
                let key = checked_key(pair_key(group, &a.msg_id.to_be_bytes()))?;
                match self.ks.group_ordinal.get(&key).map_err(StoreError::new)? {
                    Some(v) => Some(checked_key(pair_key(
                        group,
                        &decode_u64(&v, "group ordinal")?.to_be_bytes(),
                    ))?),
                    None => None,
                }
            }
            _ => None,
        };
        let group_seq = |f: &Found| match a.group_log {
            true => seqs.first().copied().unwrap_or_default(),
            false => f.group_seq,
        };
        let mut appended = Vec::with_capacity(found.len());
        for (f, seq) in found.iter().zip(seqs) {
            let body = match &a.kind {
                AmendKind::Recall => event::Body::Recalled(Recalled {
                    conversation: f.conversation.clone(),
                    msg_id: a.msg_id,
                    by: a.by.clone(),
                }),
                AmendKind::Edit { text, body } => event::Body::Edited(Edited {
                    conversation: f.conversation.clone(),
                    msg_id: a.msg_id,
                    text: text.clone(),
                    body: body.clone(),
                    edited_at: a.ts,
                }),
            };
            let ev = Event {
                seq: *seq,
                body: Some(body),
                group_seq: group_seq(f),
            };
            let row = event_row(&f.owner, &ev)?;
            appended.push((f.owner.clone(), ev, row));
        }

        // Writes: nothing below can fail but the last-seq lookups, which read rows the checks
        // above read already.
        if let Some(key) = recalled_ordinal {
            self.batch.insert(&self.ks.group_recalled, key, Vec::new());
        }
        for f in found {
            self.batch.insert(&self.ks.events, f.row.0, f.row.1);
            if let Some((row, count_key, count)) = f.unread {
                // A recalled message is never unread.
                self.batch.remove(&self.ks.unread, row);
                match count.saturating_sub(1) {
                    0 => self.remove(Table::UnreadCount, count_key),
                    left => self.put(Table::UnreadCount, count_key, u64_value(left)),
                }
            }
            if let Some(key) = f.mention {
                self.remove(Table::Mentions, key);
            }
        }
        let mut events = Vec::with_capacity(appended.len());
        for (owner, ev, row) in appended {
            self.put_event(&owner, row, ev.seq)?;
            events.push((owner, ev));
        }
        Ok(AmendOutcome::Done(events))
    }

    pub(super) fn set_block(&mut self, blocker: &str, blocked: &str, on: bool, ts: i64) {
        let key = block_key(blocker, blocked);
        match on {
            true => self
                .batch
                .insert(&self.ks.extras, key, ts.to_be_bytes().to_vec()),
            false => self.batch.remove(&self.ks.extras, key),
        }
    }

    pub(super) fn set_last_seen(&mut self, user: &str, ts: i64) {
        self.batch.insert(
            &self.ks.extras,
            last_seen_key(user),
            ts.to_be_bytes().to_vec(),
        );
    }

    pub(super) fn set_visible(&mut self, user: &str, visible: bool) {
        let key = hidden_key(user);
        match visible {
            true => self.batch.remove(&self.ks.extras, key),
            false => self.batch.insert(&self.ks.extras, key, Vec::new()),
        }
    }
}

/// Checks the parts of an extras key before it is queued (the writer's batch cannot fail later).
fn checked_extras_key(parts: &[&str]) -> StoreResult<()> {
    checked_key(parts.iter().flat_map(|p| p.bytes()).chain([0; 5]).collect()).map(|_| ())
}

impl LsmStore {
    async fn submit_extras(&self, op: Op) -> StoreResult<()> {
        match self.submit(op).await? {
            Output::Done => Ok(()),
            _ => Err(unexpected_output()),
        }
    }
}

#[async_trait]
impl ExtrasLog for LsmStore {
    async fn set_block(&self, blocker: &str, blocked: &str, on: bool) -> StoreResult<()> {
        checked_extras_key(&[blocker, blocked])?;
        self.submit_extras(Op::Block {
            blocker: blocker.to_string(),
            blocked: blocked.to_string(),
            on,
            ts: crate::now_ms(),
        })
        .await
    }

    async fn set_presence_visible(&self, user: &str, visible: bool) -> StoreResult<()> {
        checked_extras_key(&[user])?;
        self.submit_extras(Op::PresenceVisible {
            user: user.to_string(),
            visible,
        })
        .await
    }

    async fn set_last_seen(&self, user: &str, ts: i64) -> StoreResult<()> {
        checked_extras_key(&[user])?;
        self.submit_extras(Op::LastSeen {
            user: user.to_string(),
            ts,
        })
        .await
    }

    async fn last_seen(&self, user: &str) -> StoreResult<i64> {
        let key = last_seen_key(user);
        self.read(
            move |ks| match ks.extras.get(&key).map_err(StoreError::new)? {
                Some(v) => Ok(i64::from_be_bytes(
                    <[u8; 8]>::try_from(&*v).map_err(|_| StoreError::new("corrupt last seen"))?,
                )),
                None => Ok(0),
            },
        )
        .await
    }

    async fn load_extras(&self) -> StoreResult<ExtrasState> {
        self.read(|ks| {
            let corrupt = || StoreError::new("corrupt extras key");
            let mut state = ExtrasState::default();
            for entry in ks.extras.iter() {
                let key = entry.key().map_err(StoreError::new)?;
                match key.split_first() {
                    Some((&BLOCK, rest)) => {
                        let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
                        let len = u32::from_be_bytes(*len) as usize;
                        let (blocker, blocked) =
                            (rest.get(..len).ok_or_else(corrupt)?, &rest[len..]);
                        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| corrupt());
                        state
                            .blocks
                            .entry(text(blocker)?)
                            .or_default()
                            .insert(text(blocked)?);
                    }
                    Some((&HIDDEN, user)) => {
                        state
                            .hidden
                            .insert(String::from_utf8(user.to_vec()).map_err(|_| corrupt())?);
                    }
                    Some((&LAST_SEEN, _)) => {}
                    _ => return Err(corrupt()),
                }
            }
            Ok(state)
        })
        .await
    }

    async fn user_extras(&self, user: &str) -> StoreResult<(BTreeSet<String>, bool)> {
        let (prefix, hidden) = (block_key(user, ""), hidden_key(user));
        self.read(move |ks| {
            let mut blocks = BTreeSet::new();
            for entry in ks.extras.prefix(&prefix) {
                let key = entry.key().map_err(StoreError::new)?;
                let blocked = String::from_utf8(key[prefix.len()..].to_vec())
                    .map_err(|_| StoreError::new("corrupt extras key"))?;
                blocks.insert(blocked);
            }
            let hidden = ks.extras.get(&hidden).map_err(StoreError::new)?.is_some();
            Ok((blocks, hidden))
        })
        .await
    }
}

#[async_trait]
impl AmendLog for LsmStore {
    async fn plan_amend(&self, amend: &Amend) -> StoreResult<AmendPlan> {
        let amend = amend.clone();
        self.read(move |ks| Pending::new(ks).plan_amend(&amend))
            .await
    }

    fn log_amend(
        &self,
        amend: Amend,
        seqs: Vec<(String, u64)>,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<AmendOutcome>> {
        let op = Op::LogAmend {
            amend: Box::new(amend),
            seqs,
            deadline,
        };
        self.submit_log(op, |o| match o {
            Output::Amended(outcome) => Some(*outcome),
            _ => None,
        })
    }
}

impl ExtrasStore for LsmStore {
    fn has_amend(&self) -> bool {
        true
    }

    fn amend(&self, amend: Amend) -> BoxFuture<'static, StoreResult<AmendOutcome>> {
        // Enqueued now, in call order, like appends.
        let answer = self.enqueue(Op::Amend(Box::new(amend)));
        Box::pin(async move {
            match answer?.await.map_err(|_| writer_gone())?? {
                Output::Amended(outcome) => Ok(*outcome),
                _ => Err(unexpected_output()),
            }
        })
    }

    fn extras_log(&self) -> Option<&dyn ExtrasLog> {
        Some(self)
    }
}

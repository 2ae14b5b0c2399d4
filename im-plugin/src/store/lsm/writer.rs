//! The writer thread and group commit: whatever queued up while the previous commit was in
//! flight is folded into one fjall write batch, with an overlay so each request sees the ones
//! before it, and committed with one journal sync before anyone is answered.

use super::*;

/// The writer thread: one commit, hence one journal sync, per batch of whatever queued up while
/// the previous commit was in flight.
pub(super) fn writer_loop(ks: &Keyspaces, mut rx: mpsc::Receiver<Job>, stats: &Counters) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    let mut segment = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A purge or a read scans committed rows, which the batch overlay does not cover: it
        // runs in a commit of its own, after what was queued before it and before what was
        // queued after.
        for job in jobs.drain(..) {
            if matches!(
                job.op,
                Op::Purge { .. }
                    | Op::Read { .. }
                    | Op::GroupRead { .. }
                    | Op::LogGroupRead { .. }
                    | Op::Amend(_)
                    | Op::LogAmend { .. }
            ) {
                commit_segment(ks, &mut segment, stats);
                segment.push(job);
                commit_segment(ks, &mut segment, stats);
            } else {
                segment.push(job);
            }
        }
        commit_segment(ks, &mut segment, stats);
    }
}

/// Applies `segment`'s jobs to one write batch in order, commits it durably, then answers them.
///
/// A request that fails before writing anything (a read error, an oversized key) is answered
/// with its error and leaves no trace in the batch; the others go on. A failed commit fails every
/// request of the batch, and none of its writes are visible.
pub(super) fn commit_segment(ks: &Keyspaces, segment: &mut Vec<Job>, stats: &Counters) {
    if segment.is_empty() {
        return;
    }
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .requests
        .fetch_add(segment.len() as u64, Ordering::Relaxed);
    let mut pending = Pending::new(ks);
    let outputs: Vec<StoreResult<Output>> =
        segment.iter().map(|job| pending.apply(&job.op)).collect();
    let started = Instant::now();
    let committed = pending.commit();
    stats
        .commit_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    for (job, output) in segment.drain(..).zip(outputs) {
        let answer = match &committed {
            Ok(()) => output,
            Err(e) => Err(StoreError(e.0.clone())),
        };
        // The caller may have gone away (cancelled); its write still stands.
        let _ = job.reply.send(answer);
    }
}

impl<'a> Pending<'a> {
    pub(super) fn new(ks: &'a Keyspaces) -> Self {
        Pending {
            ks,
            batch: ks.db.batch().durability(Some(ks.persist)),
            overlay: HashMap::new(),
        }
    }

    pub(super) fn commit(self) -> StoreResult<()> {
        // An empty batch commits nothing and syncs nothing: its answers only read durable data.
        self.batch.commit().map_err(StoreError::new)
    }

    pub(super) fn keyspace(&self, table: Table) -> &'a Keyspace {
        let ks: &'a Keyspaces = self.ks;
        match table {
            Table::Events => &ks.events,
            Table::ReadUpto => &ks.read_upto,
            Table::LastSeq => &ks.last_seq,
            Table::Dedup => &ks.dedup,
            Table::Cursors => &ks.cursors,
            Table::Meta => &ks.meta,
            Table::UnreadCount => &ks.unread_count,
            Table::Recent => &ks.recent,
            Table::GroupMembers => &ks.group_members,
            Table::GroupHead => &ks.group_head,
            Table::GroupRead => &ks.group_read,
            Table::Mentions => &ks.mentions,
        }
    }

    /// The value as of this batch's writes so far.
    pub(super) fn get(&self, table: Table, key: &[u8]) -> StoreResult<Option<Slice>> {
        if let Some(value) = self.overlay.get(&(table, key.to_vec())) {
            return Ok(value.clone());
        }
        self.keyspace(table).get(key).map_err(StoreError::new)
    }

    pub(super) fn get_u64(&self, table: Table, key: &[u8], what: &str) -> StoreResult<u64> {
        match self.get(table, key)? {
            Some(value) => decode_u64(&value, what),
            None => Ok(0),
        }
    }

    pub(super) fn put(&mut self, table: Table, key: Vec<u8>, value: Slice) {
        self.batch
            .insert(self.keyspace(table), key.clone(), value.clone());
        self.overlay.insert((table, key), Some(value));
    }

    pub(super) fn remove(&mut self, table: Table, key: Vec<u8>) {
        self.batch.remove(self.keyspace(table), key.clone());
        self.overlay.insert((table, key), None);
    }

    pub(super) fn apply(&mut self, op: &Op) -> StoreResult<Output> {
        match op {
            Op::Append(msg) => self.append(msg).map(|o| Output::Sent(Box::new(o))),
            Op::Cursor { user, device, seq } => {
                self.advance_cursor(user, device, *seq).map(Output::Cursor)
            }
            Op::Purge {
                before_ts_ms,
                limit,
            } => self.purge(*before_ts_ms, *limit).map(Output::Purged),
            Op::Read {
                user,
                conversation,
                up_to,
            } => self
                .mark_read(user, conversation, *up_to)
                .map(|o| Output::Read(Box::new(o))),
            Op::LogMessage {
                msg,
                seqs,
                deadline,
            } => {
                check_deadline(*deadline)?;
                self.log_message(msg, *seqs)
            }
            Op::LogGaps { gaps, deadline } => {
                check_deadline(*deadline)?;
                self.log_gaps(gaps)
            }
            Op::LogReceipts { receipt, deadline } => {
                check_deadline(*deadline)?;
                self.log_receipts(receipt)
            }
            Op::Group(entry) => self.append_group(entry, None),
            Op::GroupRead { user, group, up_to } => self.mark_group_read(user, group, *up_to, None),
            Op::LogGroup {
                entry,
                seqs,
                deadline,
            } => {
                check_deadline(*deadline)?;
                self.append_group(entry, Some(seqs))
            }
            Op::LogGroupRead {
                user,
                group,
                up_to,
                own_seq,
                deadline,
            } => {
                check_deadline(*deadline)?;
                self.mark_group_read(user, group, *up_to, Some(*own_seq))
            }
            Op::Amend(a) => self.amend(a).map(|o| Output::Amended(Box::new(o))),
            Op::LogAmend {
                amend,
                seqs,
                deadline,
            } => {
                check_deadline(*deadline)?;
                self.log_amend(amend, seqs)
            }
            Op::Block {
                blocker,
                blocked,
                on,
                ts,
            } => {
                self.set_block(blocker, blocked, *on, *ts);
                Ok(Output::Done)
            }
            Op::PresenceVisible { user, visible } => {
                self.set_visible(user, *visible);
                Ok(Output::Done)
            }
            Op::LastSeen { user, ts } => {
                self.set_last_seen(user, *ts);
                Ok(Output::Done)
            }
        }
    }
}

/// Refuses a log write whose deadline has passed: the index may already treat its seqs as holes.
/// Checked as the batch is built; the commit that follows takes milliseconds, far inside the
/// margin the split store keeps between the deadline and calling a hole a gap.
pub(super) fn check_deadline(deadline: Instant) -> StoreResult<()> {
    if Instant::now() >= deadline {
        return Err(StoreError::new(
            "the log write's deadline passed before it could be written",
        ));
    }
    Ok(())
}

/// The reply channel was dropped: the writer died mid-batch. Whether that batch committed is
/// unknown, which is exactly the case clients resolve by resending the same clientMsgId.
pub(super) fn writer_gone() -> StoreError {
    StoreError::new("the store writer stopped before answering")
}

pub(super) fn unexpected_output() -> StoreError {
    StoreError::new("the store writer answered a different request kind")
}

//! The ScyllaDB log's write path: `log_message` (dedup record, conditional stream rows, the
//! logged history batch; see "Writes" in `mod.rs`), resends and take-overs, and the request
//! helpers every path uses (selects, LWTs with deadlines, batches).

use super::*;

impl Inner {
    /// See the module comment ("Writes").
    pub(super) async fn log_message(
        &self,
        msg: NewMessage,
        seqs: MessageSeqs,
        deadline: Instant,
    ) -> LogResult<SendOutcome> {
        let to_self = msg.from == msg.to;
        if to_self == seqs.recipient.is_some() {
            return Err(StoreError::new(format!(
                "message {} from {} to {}: a recipient seq is needed exactly when the recipient \
                 is someone else",
                msg.msg_id, msg.from, msg.to
            ))
            .into());
        }
        let msg_id = to_i64(msg.msg_id, "msg_id")?;
        let sender_seq = to_i64(seqs.sender, "sender seq")?;
        if let Some(seq) = seqs.recipient {
            to_i64(seq, "recipient seq")?;
        }
        let sent = SentRecord {
            group_seq: 0,
            msg_id: msg.msg_id,
            seq: seqs.sender,
            conversation: Conversation::with_user(&msg.to),
            ts: msg.ts,
        };
        let deadline_ms = wall_ms_at(deadline);
        let what = || {
            format!(
                "recording the dedup entry of ({}, {})",
                msg.from, msg.client_msg_id
            )
        };
        let timeout = self.time_left(deadline, &what)?;
        let claimed = self
            .lwt_with_timeout(
                &self.stmts.claim_dedup,
                (
                    &msg.from,
                    &msg.client_msg_id,
                    msg_id,
                    sender_seq,
                    &sent.conversation,
                    msg.ts,
                    deadline_ms,
                    self.dedup_ttl,
                ),
                timeout,
                what,
            )
            .await?;
        if claimed.applied {
            return self.write_fresh(&msg, seqs, sent, deadline).await;
        }

        let outcome = match self.resend(&msg, &sent, &claimed, deadline).await {
            Ok(None) => return self.write_fresh(&msg, seqs, sent, deadline).await,
            Ok(Some(original)) => Ok(SendOutcome::Duplicate(original)),
            Err(e) => Err(e.into()),
        };
        // Not written fresh: the seqs given for this call must not stay holes.
        let mut gaps = vec![(msg.from.clone(), seqs.sender)];
        if let Some(seq) = seqs.recipient {
            gaps.push((msg.to.clone(), seq));
        }
        self.write_gaps(&gaps, deadline).await?;
        outcome
    }

    /// Step (c), a resend: `Some(original)` if the original landed, `None` if this attempt took
    /// the dedup entry over and must write fresh, an error if the original may still land.
    pub(super) async fn resend(
        &self,
        msg: &NewMessage,
        sent: &SentRecord,
        claimed: &Lwt,
        deadline: Instant,
    ) -> StoreResult<Option<SentRecord>> {
        let original = claimed.sent_record()?;
        if self.original_landed(&msg.from, &original).await? {
            return Ok(Some(original));
        }
        let may_land_until = claimed
            .i64("deadline_ms")?
            .saturating_add(self.takeover_grace_ms);
        if crate::now_ms() < may_land_until {
            return Err(StoreError::new(format!(
                "({}, {}) was sent before and that write may still land; retry later",
                msg.from, msg.client_msg_id
            )));
        }
        if self.take_over(msg, sent, &original, deadline).await? {
            return Ok(None);
        }
        Err(StoreError::new(format!(
            "another resend of ({}, {}) took over its dedup entry; retry later",
            msg.from, msg.client_msg_id
        )))
    }

    /// Whether the message recorded in `original` is at its seq in the sender's stream.
    pub(super) async fn original_landed(
        &self,
        sender: &str,
        original: &SentRecord,
    ) -> StoreResult<bool> {
        let seq = to_i64(original.seq, "recorded seq")?;
        let rows = self
            .select::<(Vec<u8>,)>(
                &self.stmts.event_at,
                (sender, event_bucket(original.seq), seq),
                || format!("reading {sender}'s event at seq {seq}"),
            )
            .await?;
        let Some((blob,)) = rows.first() else {
            return Ok(false);
        };
        match decode_event(sender, seq, blob)?.body {
            Some(event::Body::Message(m)) if m.msg_id == original.msg_id => Ok(true),
            Some(event::Body::Gap(_)) | None => Ok(false),
            _ => Err(StoreError::new(format!(
                "the dedup entry of message {} points at another event ({sender}, seq {seq})",
                original.msg_id
            ))),
        }
    }

    /// Replaces a dead original's dedup record with this attempt's, unless someone else did.
    pub(super) async fn take_over(
        &self,
        msg: &NewMessage,
        sent: &SentRecord,
        original: &SentRecord,
        deadline: Instant,
    ) -> StoreResult<bool> {
        let what = || {
            format!(
                "taking over the dedup entry of ({}, {})",
                msg.from, msg.client_msg_id
            )
        };
        let timeout = self.time_left(deadline, &what)?;
        let result = self
            .lwt_with_timeout(
                &self.stmts.take_over_dedup,
                (
                    self.dedup_ttl,
                    to_i64(sent.msg_id, "msg_id")?,
                    to_i64(sent.seq, "sender seq")?,
                    &sent.conversation,
                    sent.ts,
                    wall_ms_at(deadline),
                    &msg.from,
                    &msg.client_msg_id,
                    to_i64(original.msg_id, "recorded msg_id")?,
                ),
                timeout,
                what,
            )
            .await?;
        Ok(result.applied)
    }

    /// Step (b): the bucket rows, then each event claimed at its seq (a conditional insert: a
    /// seq that holds an event already is a conflict, and the claims made are undone), then the
    /// history row and the max msg_id in one logged batch. If this attempt writes no message (the
    /// deadline passed first, a conflict), the dedup entry it holds is released, so a resend need
    /// not wait out the takeover grace.
    pub(super) async fn write_fresh(
        &self,
        msg: &NewMessage,
        seqs: MessageSeqs,
        sent: SentRecord,
        deadline: Instant,
    ) -> LogResult<SendOutcome> {
        let written = self.write_fresh_steps(msg, seqs, sent, deadline).await;
        if let Err(LogError::Conflict { .. }) | Err(LogError::Unavailable(_)) = &written {
            self.release_dedup(msg).await;
        }
        written
    }

    pub(super) async fn write_fresh_steps(
        &self,
        msg: &NewMessage,
        seqs: MessageSeqs,
        sent: SentRecord,
        deadline: Instant,
    ) -> LogResult<SendOutcome> {
        let what = || {
            format!(
                "writing message {} from {} to {}",
                msg.msg_id, msg.from, msg.to
            )
        };
        let sender_event = msg.event(seqs.sender, sent.conversation.clone());
        let recipient_event = seqs
            .recipient
            .map(|seq| msg.event(seq, Conversation::with_user(&msg.from)));
        let mut copies = vec![(msg.from.as_str(), &sender_event)];
        if let Some(event) = &recipient_event {
            copies.push((msg.to.as_str(), event));
        }
        self.claim_events(&copies, deadline).await?;
        let batch = self.fresh_batch(msg, seqs);
        let sent_batch = match (batch, self.time_left(deadline, &what)) {
            (Ok(batch), Ok(timeout)) => batch.run(&self.session, timeout, what).await,
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if let Err(e) = sent_batch {
            self.undo_claims(&copies).await;
            return Err(e.into());
        }
        Ok(SendOutcome::Fresh(Appended {
            sent,
            sender_event,
            recipient_event,
        }))
    }

    /// The logged batch of a fresh message's history row, copy map and max msg_id.
    pub(super) fn fresh_batch(
        &self,
        msg: &NewMessage,
        seqs: MessageSeqs,
    ) -> StoreResult<WriteBatch> {
        let mut batch = WriteBatch::new();
        let msg_id = to_i64(msg.msg_id, "msg_id")?;
        let (a, b) = pair(&msg.from, &msg.to);
        let day = history_day(msg.msg_id);
        // The conversation depends on who reads it: `history` fills it in.
        let stored = msg.to_message(String::new());
        batch.push(
            &self.stmts.insert_history,
            (
                a.to_owned(),
                b.to_owned(),
                day,
                msg_id,
                stored.encode_to_vec(),
            ),
        );
        batch.push(
            &self.stmts.insert_history_day,
            (a.to_owned(), b.to_owned(), day),
        );
        // Where each copy is, for a recall or an edit (`amends.rs`).
        let mut copies = vec![(msg.from.as_str(), seqs.sender)];
        if let Some(seq) = seqs.recipient {
            copies.push((msg.to.as_str(), seq));
        }
        batch.push(
            &self.stmts.amends.insert_copies,
            (
                a.to_owned(),
                b.to_owned(),
                day,
                msg_id,
                encode_copies(copies),
            ),
        );
        batch.push(
            &self.stmts.raise_max_msg_id,
            (
                max_msg_id_timestamp(msg.msg_id),
                msg_id,
                msg_id_slot(msg.msg_id),
            ),
        );
        Ok(batch)
    }

    /// Best effort: removes the dedup entry of `msg` if it still names `msg`'s msgid. Only for an
    /// attempt that sent nothing after claiming it; a failure just leaves the resend to wait out
    /// the takeover grace.
    pub(super) async fn release_dedup(&self, msg: &NewMessage) {
        let Ok(msg_id) = to_i64(msg.msg_id, "msg_id") else {
            return;
        };
        let released = self
            .lwt(
                &self.stmts.release_dedup,
                (&msg.from, &msg.client_msg_id, msg_id),
                || {
                    format!(
                        "releasing the dedup entry of ({}, {})",
                        msg.from, msg.client_msg_id
                    )
                },
            )
            .await;
        if let Err(e) = released {
            tracing::warn!("{e}");
        }
    }

    /// The time left before `deadline`, capped by the request timeout; an error once it passed.
    pub(super) fn time_left(
        &self,
        deadline: Instant,
        what: &impl Fn() -> String,
    ) -> StoreResult<Duration> {
        let now = Instant::now();
        if now >= deadline {
            return Err(StoreError::new(format!(
                "{}: the deadline passed before this step; nothing more is written",
                what()
            )));
        }
        Ok((deadline - now).min(self.request_timeout))
    }

    /// Runs a prepared read (bounded by a `LIMIT`) and collects its rows.
    pub(super) async fn select<R>(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
        what: impl Fn() -> String,
    ) -> StoreResult<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let fail = |e: &dyn fmt::Display| StoreError::new(format!("{}: {e}", what()));
        let result = self
            .session
            .execute_unpaged(stmt, values)
            .await
            .map_err(|e| fail(&e))?;
        let rows = result.into_rows_result().map_err(|e| fail(&e))?;
        let typed = rows.rows::<R>().map_err(|e| fail(&e))?;
        typed.map(|r| r.map_err(|e| fail(&e))).collect()
    }

    /// Runs a conditional statement with the request timeout.
    pub(super) async fn lwt(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
        what: impl Fn() -> String,
    ) -> StoreResult<Lwt> {
        self.lwt_with_timeout(stmt, values, self.request_timeout, what)
            .await
    }

    pub(super) async fn lwt_with_timeout(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
        timeout: Duration,
        what: impl Fn() -> String,
    ) -> StoreResult<Lwt> {
        let mut stmt = stmt.clone();
        stmt.set_request_timeout(Some(timeout));
        let result = self
            .session
            .execute_unpaged(&stmt, values)
            .await
            .map_err(|e| StoreError::new(format!("{}: {e}", what())))?;
        Lwt::parse(result).map_err(|e| StoreError::new(format!("{}: {}", what(), e.0)))
    }

    #[cfg(test)]
    pub(super) async fn drop_keyspace(&self) {
        let cql = format!("DROP KEYSPACE IF EXISTS {}", self.keyspace);
        if let Err(e) = schema::ddl(&self.session, &cql).await {
            eprintln!("{e}");
        }
    }
}

/// A logged batch under construction: its statements and their values, in step.
pub(super) struct WriteBatch {
    pub(super) batch: Batch,
    pub(super) values: Vec<Box<dyn SerializeRow + Send + Sync>>,
}

impl WriteBatch {
    pub(super) fn new() -> Self {
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_consistency(Consistency::LocalQuorum);
        WriteBatch {
            batch,
            values: Vec::new(),
        }
    }

    pub(super) fn push(
        &mut self,
        stmt: &PreparedStatement,
        values: impl SerializeRow + Send + Sync + 'static,
    ) {
        self.batch.append_statement(stmt.clone());
        self.values.push(Box::new(values));
    }

    /// The bucket row of an event at `seq` of `owner` (the event row itself is claimed with a
    /// conditional insert, see `seqs.rs`).
    pub(super) fn bucket(&mut self, stmts: &Statements, owner: &str, seq: u64) -> StoreResult<()> {
        if seq == 0 {
            return Err(StoreError::new(format!("an event of {owner} has seq 0")));
        }
        self.push(
            &stmts.insert_event_bucket,
            (owner.to_owned(), event_bucket(seq)),
        );
        Ok(())
    }

    pub(super) async fn run(
        mut self,
        session: &Session,
        timeout: Duration,
        what: impl Fn() -> String,
    ) -> StoreResult<()> {
        self.batch.set_request_timeout(Some(timeout));
        session
            .batch(&self.batch, self.values)
            .await
            .map_err(|e| StoreError::new(format!("{}: {e}", what())))?;
        Ok(())
    }
}

/// The answer of a conditional statement: whether it applied, and the row's columns as they
/// were (ScyllaDB returns them whether or not it applied; Cassandra only when it did not).
pub(super) struct Lwt {
    pub(super) applied: bool,
    pub(super) columns: HashMap<String, CqlValue>,
}

impl Lwt {
    pub(super) fn parse(result: QueryResult) -> StoreResult<Lwt> {
        let rows = result.into_rows_result().map_err(StoreError::new)?;
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|spec| spec.name().to_owned())
            .collect();
        let row = rows
            .maybe_first_row::<Row>()
            .map_err(StoreError::new)?
            .ok_or_else(|| StoreError::new("the conditional write returned no row"))?;
        let mut applied = None;
        let mut columns = HashMap::new();
        for (name, value) in names.into_iter().zip(row.columns) {
            if name == "[applied]" {
                applied = value.and_then(|v| v.as_boolean());
            } else if let Some(value) = value {
                columns.insert(name, value);
            }
        }
        let applied = applied
            .ok_or_else(|| StoreError::new("the conditional write returned no [applied]"))?;
        Ok(Lwt { applied, columns })
    }

    /// A blob column of the row as it was, if the answer carries it.
    pub(super) fn columns_blob(&self, name: &str) -> Option<Vec<u8>> {
        match self.columns.get(name) {
            Some(CqlValue::Blob(b)) => Some(b.clone()),
            _ => None,
        }
    }

    pub(super) fn opt_i64(&self, name: &str) -> StoreResult<Option<i64>> {
        match self.columns.get(name) {
            None => Ok(None),
            Some(value) => value.as_bigint().map(Some).ok_or_else(|| {
                StoreError::new(format!("column {name} is not a bigint: {value:?}"))
            }),
        }
    }

    pub(super) fn i64(&self, name: &str) -> StoreResult<i64> {
        self.opt_i64(name)?
            .ok_or_else(|| StoreError::new(format!("the existing dedup entry has no {name}")))
    }

    /// The [`SentRecord`] of an existing dedup entry.
    pub(super) fn sent_record(&self) -> StoreResult<SentRecord> {
        let conversation = match self.columns.get("conversation") {
            Some(CqlValue::Text(c)) => c.clone(),
            other => {
                return Err(StoreError::new(format!(
                    "the existing dedup entry has no conversation: {other:?}"
                )))
            }
        };
        Ok(SentRecord {
            group_seq: 0,
            msg_id: from_i64(self.i64("msg_id")?, "recorded msg_id")?,
            seq: from_i64(self.i64("seq")?, "recorded seq")?,
            conversation,
            ts: self.i64("ts")?,
        })
    }
}

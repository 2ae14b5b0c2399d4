//! How the ScyllaDB log keeps a seq from being written twice, and the read pointers.
//!
//! Every event row is written with a conditional insert (`INSERT ... IF NOT EXISTS`, LWT at
//! LOCAL_SERIAL): of two writers handed the same seq (a Redis that lost its counters, two nodes
//! sharing one by mistake), one wins and the other gets [`LogError::Conflict`]. A write of several
//! rows claims them one by one and, if a later one is taken, turns the rows it already claimed
//! into `gap` events (`UPDATE ... IF event = <its own>`), so nothing half-written stays visible
//! as a message. Bucket rows are written before the claims: a bucket without its event is
//! harmless, an event without its bucket would be invisible.
//!
//! Why conditional inserts rather than a fencing epoch per user: an epoch only fences if every
//! write checks it, and ScyllaDB checks a condition only in an LWT on the row's own partition; so
//! an epoch costs the same LWT per stream row plus an epoch read and an epoch bump per rebuild.
//! Cost: one Paxos round (about 4 round trips between replicas) per stream row, two per 1:1
//! message, on top of the dedup LWT. Not measured here (no ScyllaDB on this machine); what each
//! LWT costs a cluster is in ScyllaDB's LWT documentation.
//!
//! Residual risk: a node that dies between claiming the sender's row and the recipient's leaves
//! the sender's copy without the recipient's; a resend then finds the original "landed" (its
//! sender event is there) and answers it as a duplicate.
//!
//! `read_pointers ((owner), conversation) -> msg_id`: the highest msgid a logged receipt of the
//! owner covers, raised with `IF msg_id < ?`, so of two attempts of one read only one keeps its
//! receipts.

use std::time::Instant;

use mqim_schemas::v1::Event;
use prost::Message as _;

use super::{event_bucket, to_i64, Inner, WriteBatch};
use crate::conversation::Conversation;
use crate::store::log::{LogError, LogResult, ReceiptWrite};
use crate::store::{gap_event, receipt_event, StoreResult};

impl Inner {
    /// Writes the bucket rows of `events`, then claims each event row; on a taken seq, undoes
    /// the claims made and reports the conflict.
    pub(super) async fn claim_events(
        &self,
        events: &[(&str, &Event)],
        deadline: Instant,
    ) -> LogResult<()> {
        self.write_buckets(events.iter().map(|(o, e)| (*o, e.seq)), deadline)
            .await?;
        for (i, (owner, event)) in events.iter().enumerate() {
            if !self.claim_event(owner, event, deadline).await? {
                let claimed: Vec<(&str, &Event)> = events[..i].to_vec();
                self.undo_claims(&claimed).await;
                return Err(LogError::Conflict {
                    user: owner.to_string(),
                    seq: event.seq,
                });
            }
        }
        Ok(())
    }

    /// Claims `event`'s row; `false` if its seq holds another event.
    pub(super) async fn claim_event(
        &self,
        owner: &str,
        event: &Event,
        deadline: Instant,
    ) -> StoreResult<bool> {
        let seq = to_i64(event.seq, "event seq")?;
        let what = || format!("writing {owner}'s event at seq {seq}");
        let timeout = self.time_left(deadline, &what)?;
        let blob = event.encode_to_vec();
        let claimed = self
            .lwt_with_timeout(
                &self.stmts.claim_event,
                (owner, event_bucket(event.seq), seq, &blob),
                timeout,
                what,
            )
            .await?;
        // Not applied, but the row holds exactly this event: a retry of our own claim.
        Ok(claimed.applied || claimed.columns_blob("event").as_deref() == Some(blob.as_slice()))
    }

    /// Best effort: turns rows this attempt claimed into gaps (only where they still hold what it
    /// wrote). A failure leaves a message nobody was told about in those streams.
    pub(super) async fn undo_claims(&self, claimed: &[(&str, &Event)]) {
        for (owner, event) in claimed {
            let Ok(seq) = to_i64(event.seq, "event seq") else {
                continue;
            };
            let gap = gap_event(event.seq).encode_to_vec();
            let undone = self
                .lwt(
                    &self.stmts.replace_event,
                    (
                        gap,
                        *owner,
                        event_bucket(event.seq),
                        seq,
                        event.encode_to_vec(),
                    ),
                    || format!("undoing {owner}'s event at seq {seq}"),
                )
                .await;
            if let Err(e) = undone {
                tracing::warn!("{e}");
            }
        }
    }

    pub(super) async fn write_buckets(
        &self,
        rows: impl Iterator<Item = (&str, u64)>,
        deadline: Instant,
    ) -> StoreResult<()> {
        let mut batch = WriteBatch::new();
        let mut n = 0;
        for (owner, seq) in rows {
            batch.bucket(&self.stmts, owner, seq)?;
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        let what = || format!("writing {n} bucket row(s)");
        let timeout = self.time_left(deadline, &what)?;
        batch.run(&self.session, timeout, what).await
    }

    /// A gap at each (owner, seq) that holds nothing; the others stay as they are.
    pub(super) async fn write_gaps(
        &self,
        gaps: &[(String, u64)],
        deadline: Instant,
    ) -> StoreResult<()> {
        let events: Vec<(String, Event)> = gaps
            .iter()
            .map(|(owner, seq)| (owner.clone(), gap_event(*seq)))
            .collect();
        self.write_buckets(events.iter().map(|(o, e)| (o.as_str(), e.seq)), deadline)
            .await?;
        for (owner, event) in &events {
            self.claim_event(owner, event, deadline).await?;
        }
        Ok(())
    }

    /// See [`crate::store::log::MessageLog::log_receipts`]: the receipts are claimed first, then
    /// the pointer is raised; if another attempt raised it first, the receipts become gaps.
    pub(super) async fn log_receipts(
        &self,
        r: &ReceiptWrite,
        deadline: Instant,
    ) -> LogResult<bool> {
        let gaps = || vec![(r.user.clone(), r.own_seq), (r.peer.clone(), r.peer_seq)];
        if self.read_pointer(&r.user, &r.conversation).await? >= r.up_to {
            self.write_gaps(&gaps(), deadline).await?;
            return Ok(false);
        }
        let own = receipt_event(r.own_seq, r.conversation.clone(), &r.user, r.up_to);
        let theirs = receipt_event(r.peer_seq, r.peer_conversation(), &r.user, r.up_to);
        let copies = [(r.user.as_str(), &own), (r.peer.as_str(), &theirs)];
        self.claim_events(&copies, deadline).await?;
        match self.raise_read_pointer(r, deadline).await {
            Ok(true) => {
                if let Some(Conversation::Group(_)) = Conversation::parse(&r.conversation) {
                    // A read in a group clears the reader's mentions it covers (best effort:
                    // the receipts stand; a mention left is cleared by the next read).
                    let cleared = self
                        .clear_mentions(&r.user, &r.conversation, r.up_to, deadline)
                        .await;
                    if let Err(e) = cleared {
                        tracing::warn!("{e}");
                    }
                }
                Ok(true)
            }
            Ok(false) => {
                self.undo_claims(&copies).await;
                Ok(false)
            }
            Err(e) => {
                self.undo_claims(&copies).await;
                Err(e.into())
            }
        }
    }

    /// Raises the pointer to `r.up_to`; `false` if it is already there.
    async fn raise_read_pointer(&self, r: &ReceiptWrite, deadline: Instant) -> StoreResult<bool> {
        let up_to = to_i64(r.up_to, "msg_id")?;
        let what = || format!("raising {}'s read pointer of {}", r.user, r.conversation);
        let timeout = self.time_left(deadline, &what)?;
        let created = self
            .lwt_with_timeout(
                &self.stmts.create_read_pointer,
                (&r.user, &r.conversation, up_to),
                timeout,
                what,
            )
            .await?;
        if created.applied {
            return Ok(true);
        }
        let timeout = self.time_left(deadline, &what)?;
        let raised = self
            .lwt_with_timeout(
                &self.stmts.raise_read_pointer,
                (up_to, &r.user, &r.conversation, up_to),
                timeout,
                what,
            )
            .await?;
        Ok(raised.applied)
    }

    pub(super) async fn read_pointer(&self, user: &str, conversation: &str) -> StoreResult<u64> {
        let rows = self
            .select::<(i64,)>(&self.stmts.read_pointer, (user, conversation), || {
                format!("reading {user}'s read pointer of {conversation}")
            })
            .await?;
        Ok(rows
            .first()
            .map_or(0, |(n,)| u64::try_from(*n).unwrap_or(0)))
    }
}

//! The suite's own test. Proves that the suite can fail: each case must reject a store with a matching defect.
//! The defects are injected by a wrapper around a real (embedded) store.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::*;
use crate::store::lsm::LsmStore;
use crate::store::{StoreResult, StreamPage};

#[test]
fn for_each_case_names_every_case_in_order() {
    macro_rules! names {
        ($($case:ident),*) => {
            vec![$(stringify!($case)),*]
        };
    }
    let listed: Vec<&str> = for_each_case!(names);
    let all: Vec<&str> = cases()
        .into_iter()
        .map(|(n, _)| n)
        .chain(inbox_cases().into_iter().map(|(n, _)| n))
        .chain(group_cases().into_iter().map(|(n, _)| n))
        .collect();
    assert_eq!(listed, all);
    let listed: Vec<&str> = for_each_amend_case!(names);
    let all: Vec<&str> = amend_cases().into_iter().map(|(n, _)| n).collect();
    assert_eq!(listed, all);
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    NoRecipientCopy,
    SenderSeesOwnName,
    NoDedup,
    DedupAcrossSenders,
    LoseEvery(u64),
    HasMoreWhenFull,
    AfterSeqInclusive,
    SelfSendTwice,
    ApplyInPollOrder,
    CursorUnclamped,
    MaxIsLatest,
    PurgeEverything,
    PurgeNothing,
    TruncateMsgId,
    LoseEmptyBody,
}

struct Faulty {
    inner: Arc<LsmStore>,
    fault: Fault,
    appends: AtomicU64,
    latest_msg_id: AtomicU64,
    seen: Arc<Mutex<HashMap<String, SentRecord>>>,
}

#[async_trait]
impl MessageStore for Faulty {
    fn append_message(&self, mut msg: NewMessage) -> BoxFuture<'static, StoreResult<SendOutcome>> {
        let n = self.appends.fetch_add(1, Ordering::SeqCst) + 1;
        self.latest_msg_id.store(msg.msg_id, Ordering::SeqCst);
        let mut first = None;
        match self.fault {
            Fault::NoRecipientCopy => msg.to = msg.from.clone(),
            Fault::NoDedup => msg.client_msg_id = format!("{}#{n}", msg.client_msg_id),
            Fault::DedupAcrossSenders => {
                if let Some(sent) = self.seen.lock().get(&msg.client_msg_id).cloned() {
                    return futures::future::ready(Ok(SendOutcome::Duplicate(sent))).boxed();
                }
            }
            Fault::LoseEvery(k) if n.is_multiple_of(k) => {
                let event = make_event(0, &msg);
                let appended = Appended {
                    sent: SentRecord {
                        group_seq: 0,
                        msg_id: msg.msg_id,
                        seq: 0,
                        conversation: format!("u:{}", msg.to),
                        ts: msg.ts,
                    },
                    sender_event: event.clone(),
                    recipient_event: Some(event),
                };
                return futures::future::ready(Ok(SendOutcome::Fresh(appended))).boxed();
            }
            Fault::SelfSendTwice if msg.to == msg.from => {
                let mut copy = msg.clone();
                copy.client_msg_id.push_str("#copy");
                first = Some(self.inner.append_message(copy));
            }
            Fault::ApplyInPollOrder => {
                let inner = self.inner.clone();
                return async move { inner.append_message(msg).await }.boxed();
            }
            _ => {}
        }
        let cmid = msg.client_msg_id.clone();
        let seen = self.seen.clone();
        let pending = self.inner.append_message(msg);
        async move {
            if let Some(first) = first {
                first.await?;
            }
            let outcome = pending.await?;
            if let SendOutcome::Fresh(a) = &outcome {
                seen.lock().insert(cmid, a.sent.clone());
            }
            Ok(outcome)
        }
        .boxed()
    }

    async fn read_stream(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<StreamPage> {
        let after = match self.fault {
            Fault::AfterSeqInclusive => after_seq.saturating_sub(1),
            _ => after_seq,
        };
        let mut page = self.inner.read_stream(user, after, limit).await?;
        if let Fault::HasMoreWhenFull = self.fault {
            page.has_more = page.events.len() == limit;
        }
        for event in &mut page.events {
            if let Some(event::Body::Message(m)) = &mut event.body {
                match self.fault {
                    Fault::SenderSeesOwnName => m.conversation = format!("u:{}", m.from),
                    Fault::TruncateMsgId => m.msg_id &= 0xffff_ffff,
                    Fault::LoseEmptyBody if m.body.as_ref().is_some_and(|b| b.is_empty()) => {
                        m.body = None
                    }
                    _ => {}
                }
            }
        }
        Ok(page)
    }

    async fn last_seq(&self, user: &str) -> StoreResult<u64> {
        self.inner.last_seq(user).await
    }

    async fn advance_cursor(&self, user: &str, device: &str, seq: u64) -> StoreResult<u64> {
        let cursor = self.inner.advance_cursor(user, device, seq).await?;
        Ok(match self.fault {
            Fault::CursorUnclamped => seq,
            _ => cursor,
        })
    }

    async fn max_msg_id(&self) -> StoreResult<u64> {
        match self.fault {
            Fault::MaxIsLatest => Ok(self.latest_msg_id.load(Ordering::SeqCst)),
            _ => self.inner.max_msg_id().await,
        }
    }

    async fn purge_dedup(&self, before_ts_ms: i64) -> StoreResult<usize> {
        match self.fault {
            Fault::PurgeEverything => self.inner.purge_dedup(i64::MAX).await,
            Fault::PurgeNothing => Ok(0),
            _ => self.inner.purge_dedup(before_ts_ms).await,
        }
    }
}

fn make_event(seq: u64, msg: &NewMessage) -> Event {
    Event {
        seq,
        body: Some(event::Body::Message(v1::Message {
            msg_id: msg.msg_id,
            conversation: format!("u:{}", msg.to),
            from: msg.from.clone(),
            ts: msg.ts,
            client_msg_id: msg.client_msg_id.clone(),
            text: msg.text.clone(),
            body: msg.body.clone(),
            r#type: msg.kind.clone(),
            ..v1::Message::default()
        })),
        group_seq: 0,
    }
}

/// Whether `case` passes against a fresh store with `fault`.
async fn passes(case_name: &str, fault: Fault) -> bool {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let inner = Arc::new(LsmStore::open(dir.path()).expect("open store"));
    let store: Arc<dyn MessageStore> = Arc::new(Faulty {
        inner,
        fault,
        appends: AtomicU64::new(0),
        latest_msg_id: AtomicU64::new(0),
        seen: Arc::new(Mutex::new(HashMap::new())),
    });
    let (_, case) = cases()
        .into_iter()
        .find(|(name, _)| *name == case_name)
        .unwrap_or_else(|| panic!("no case {case_name}"));
    AssertUnwindSafe(case(store)).catch_unwind().await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_catches_its_defect() {
    // The wrapper itself must be transparent, or the failures below would prove nothing.
    for (name, _) in cases() {
        assert!(
            passes(name, Fault::None).await,
            "{name} fails without a fault"
        );
    }
    let expectations = [
        (
            "seqs_start_at_one_and_are_contiguous",
            Fault::NoRecipientCopy,
        ),
        (
            "seqs_start_at_one_and_are_contiguous",
            Fault::SenderSeesOwnName,
        ),
        (
            "resend_returns_original_and_appends_nothing",
            Fault::NoDedup,
        ),
        (
            "resend_returns_original_and_appends_nothing",
            Fault::DedupAcrossSenders,
        ),
        ("concurrent_sends_are_contiguous", Fault::LoseEvery(37)),
        ("concurrent_resends_store_once", Fault::NoDedup),
        ("appends_apply_in_call_order", Fault::ApplyInPollOrder),
        ("read_stream_paging", Fault::HasMoreWhenFull),
        ("read_stream_paging", Fault::AfterSeqInclusive),
        ("send_to_self_appends_one_event", Fault::SelfSendTwice),
        (
            "advance_cursor_forward_only_and_clamped",
            Fault::CursorUnclamped,
        ),
        ("max_msg_id_is_highest_stored", Fault::MaxIsLatest),
        ("purge_dedup_removes_only_older", Fault::PurgeEverything),
        ("purge_dedup_removes_only_older", Fault::PurgeNothing),
        ("content_round_trips", Fault::TruncateMsgId),
        ("content_round_trips", Fault::LoseEmptyBody),
    ];
    for (name, fault) in expectations {
        assert!(
            !passes(name, fault).await,
            "{name} accepts a store with {fault:?}"
        );
    }
    let covered: BTreeSet<&str> = expectations.iter().map(|(name, _)| *name).collect();
    for (name, _) in cases() {
        assert!(
            covered.contains(name),
            "no defect proves that {name} can fail"
        );
    }
}

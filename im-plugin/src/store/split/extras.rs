//! The split store's conversation extras: blocks, presence settings and last-seen times are kept
//! in the message log (the embedded log of `redis+embedded`, which is the same fjall store and
//! keyspace as the embedded shape's; ScyllaDB's extras tables on `redis+scylla`); recall and
//! edit go through the pipeline (`amend.rs`) when the log can write them.
//!
//! It must not reach into the pipeline: nothing here allocates seqs or touches the Redis index.

use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;

use super::SplitStore;
use crate::store::extras::{Amend, AmendOutcome, ExtrasLog, ExtrasStore};
use crate::store::StoreResult;

/// Where this split store keeps blocks and settings, once [`SplitStore::set_extras_log`] named
/// it (the store's opener does, for either log).
#[derive(Default)]
pub(super) struct ExtrasSlot(OnceLock<Arc<dyn ExtrasLog>>);

impl SplitStore {
    /// Keeps blocks and presence settings in `log` (the same store as this one's message log).
    /// Only the first call counts.
    pub fn set_extras_log(&self, log: Arc<dyn ExtrasLog>) {
        let _ = self.extras.0.set(log);
    }
}

impl ExtrasStore for SplitStore {
    fn has_amend(&self) -> bool {
        self.can_amend()
    }

    fn amend(&self, amend: Amend) -> BoxFuture<'static, StoreResult<AmendOutcome>> {
        self.enqueue_amend(amend)
    }

    fn extras_log(&self) -> Option<&dyn ExtrasLog> {
        self.extras.0.get().map(|l| l.as_ref())
    }
}

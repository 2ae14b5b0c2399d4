//! A group as an operator sees it: settings, log head and every member with role and join
//! position, read from the store (the truth, disbanded groups included), not from the
//! registry's view of the writes enqueued so far.

use crate::error::ImError;
use crate::store::groups::{log_owner, GroupRecord};
use crate::ImPlugin;

/// A group with all its members, and the seq of its latest log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminGroup {
    pub id: String,
    pub record: GroupRecord,
    /// The group seq of its latest entry (message or change).
    pub last_group_seq: u64,
}

impl ImPlugin {
    /// The group `id` (the digits of `g:<id>`): INVALID_ARGUMENT for a malformed id,
    /// FAILED_PRECONDITION on a store shape without groups, NOT_FOUND if it never existed.
    pub async fn admin_group(&self, id: &str) -> Result<AdminGroup, ImError> {
        if !crate::ops::valid_group_id(id) {
            return Err(ImError::invalid(format!(
                "{id:?} is not a group id (the digits of `g:<id>`)"
            )));
        }
        self.groups.check_enabled()?;
        let record =
            self.store.load_group(id).await?.ok_or_else(|| {
                ImError::new(mqim_schemas::v1::ErrorCode::NotFound, "no such group")
            })?;
        let last_group_seq = self.store.last_seq(&log_owner(id)).await?;
        Ok(AdminGroup {
            id: id.to_string(),
            record,
            last_group_seq,
        })
    }
}

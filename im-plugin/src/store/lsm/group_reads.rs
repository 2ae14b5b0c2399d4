//! The embedded store's [`GroupStore`]: entry points of the group writes (queued for the writer
//! thread, in call order with every other write) and the group reads (committed data, on a
//! blocking thread).

use super::groups::{decode_head, decode_read, from_json};
use super::reads::read_history;
use super::*;
use crate::store::groups::{log_owner, GroupRecord, GroupStore, LargeGroupView, Member};

#[async_trait]
impl GroupStore for LsmStore {
    fn has_groups(&self) -> bool {
        true
    }

    fn append_group(&self, entry: GroupAppend) -> BoxFuture<'static, StoreResult<GroupOutcome>> {
        let answer = self.enqueue(Op::Group(entry));
        Box::pin(async move {
            match answer?.await.map_err(|_| writer_gone())?? {
                Output::Group(outcome) => Ok(*outcome),
                Output::Conflict { user, seq } => Err(StoreError(format!(
                    "seq {seq} of {user} is already written (the embedded store allocates its own)"
                ))),
                _ => Err(unexpected_output()),
            }
        })
    }

    async fn group_ids(&self) -> StoreResult<Vec<String>> {
        self.read(|ks| {
            let mut ids = Vec::new();
            for entry in ks.group_meta.iter() {
                let key = entry.key().map_err(StoreError::new)?;
                let id =
                    std::str::from_utf8(&key).map_err(|_| StoreError::new("corrupt group id"))?;
                ids.push(id.to_string());
            }
            Ok(ids)
        })
        .await
    }

    async fn load_group(&self, group: &str) -> StoreResult<Option<GroupRecord>> {
        let group = group.to_owned();
        self.read(move |ks| {
            let Some(meta) = ks
                .group_meta
                .get(group.as_bytes())
                .map_err(StoreError::new)?
            else {
                return Ok(None);
            };
            let meta = from_json(&meta, "group meta")?;
            let prefix = pair_key(&group, &[]);
            let mut members = std::collections::BTreeMap::new();
            for entry in ks.group_members.prefix(&prefix) {
                let (k, v) = entry.into_inner().map_err(StoreError::new)?;
                let user = std::str::from_utf8(&k[prefix.len()..])
                    .map_err(|_| StoreError::new("corrupt group member key"))?;
                members.insert(user.to_string(), from_json::<Member>(&v, "group member")?);
            }
            Ok(Some(GroupRecord { meta, members }))
        })
        .await
    }

    async fn user_groups(&self, user: &str) -> StoreResult<Vec<(String, bool)>> {
        let user = user.to_owned();
        self.read(move |ks| {
            let prefix = pair_key(&user, &[]);
            let mut groups = Vec::new();
            for entry in ks.user_groups.prefix(&prefix) {
                let (k, v) = entry.into_inner().map_err(StoreError::new)?;
                let group = std::str::from_utf8(&k[prefix.len()..])
                    .map_err(|_| StoreError::new("corrupt user group key"))?;
                groups.push((group.to_string(), v.first() == Some(&1)));
            }
            Ok(groups)
        })
        .await
    }

    async fn large_group_view(&self, user: &str, group: &str) -> StoreResult<LargeGroupView> {
        let (user, group) = (user.to_owned(), group.to_owned());
        self.read(move |ks| {
            let conversation = Conversation::Group(group.clone()).to_string();
            let key = user_conv_key(&user, &conversation);
            let head = match ks
                .group_head
                .get(group.as_bytes())
                .map_err(StoreError::new)?
            {
                Some(v) => decode_head(&v)?,
                None => groups::Head::default(),
            };
            let read = match ks.group_read.get(&key).map_err(StoreError::new)? {
                Some(v) => decode_read(&v)?.0,
                None => 0,
            };
            let owner = log_owner(&group);
            let last_group_seq = match ks.last_seq.get(owner.as_bytes()).map_err(StoreError::new)? {
                Some(v) => decode_u64(&v, "last seq")?,
                None => 0,
            };
            let last = match head.last_msg_seq {
                0 => None,
                seq => match ks
                    .events
                    .get(event_key(&owner, seq))
                    .map_err(StoreError::new)?
                {
                    Some(bytes) => Some(decode_message(&bytes)?),
                    None => None,
                },
            };
            Ok(LargeGroupView {
                last_group_seq,
                unread: groups::large_unread(ks, &group, &head, read)?,
                mentioned: ks.mentions.get(&key).map_err(StoreError::new)?.is_some(),
                last,
                updated_at: head.updated_at,
            })
        })
        .await
    }

    fn mark_group_read(
        &self,
        user: &str,
        group: &str,
        up_to: u64,
    ) -> BoxFuture<'static, StoreResult<GroupReadOutcome>> {
        let answer = self.enqueue(Op::GroupRead {
            user: user.to_string(),
            group: group.to_string(),
            up_to,
        });
        Box::pin(async move {
            match answer?.await.map_err(|_| writer_gone())?? {
                Output::GroupRead(outcome) => Ok(*outcome),
                _ => Err(unexpected_output()),
            }
        })
    }

    async fn group_log(
        &self,
        group: &str,
        after_group_seq: u64,
        limit: usize,
    ) -> StoreResult<StreamPage> {
        self.read_stream(&log_owner(group), after_group_seq, limit)
            .await
    }

    async fn group_history(
        &self,
        group: &str,
        before: Option<u64>,
        since: u64,
        limit: usize,
    ) -> StoreResult<HistoryPage> {
        let group = group.to_owned();
        self.read(move |ks| {
            let conversation = Conversation::Group(group.clone()).to_string();
            read_history(ks, &log_owner(&group), &conversation, before, since, limit)
        })
        .await
    }
}

//! The ScyllaDB log's group reads: the read half of [`GroupStore`] (the split store writes
//! through [`GroupLog`]) and the reads [`GroupLog`] adds. The tables are in the module comment
//! of `mod.rs` ("Groups"); the writes in `groups.rs`.
//!
//! A large group's unread count is the number of its messages after the member's read
//! position, counted in `group_msgs` (one `COUNT(*)` per partition of 4096 group seqs, at most
//! [`UNREAD_BUCKETS`] partitions: a member that far behind is shown at least that many).
//! Small groups' history (the member's own view) is the group's history after the member
//! joined: every message of a small group has a copy for every member.

use futures::TryStreamExt as _;
use mqim_schemas::v1::Message;

use super::groups::{from_json, GROUP_HISTORY_PEER};
use super::schema::GroupStatements;
use super::*;
use crate::store::groups::{log_owner, GroupMeta, GroupRecord, GroupStore, LargeGroupView, Member};
use crate::store::log::GroupLog;
use crate::store::StreamPage;

/// Partitions of `group_msgs` counted at most for one unread count.
const UNREAD_BUCKETS: i64 = 16;
/// How far (ms) below a member's join msgid their history is looked for (clock skew between
/// nodes).
const JOIN_SKEW_MS: u64 = 10_000;

impl Inner {
    /// `user`'s read position in `grp`: (group seq, msgid) of the message it is at.
    pub(super) async fn group_read(&self, user: &str, grp: &str) -> StoreResult<(u64, u64)> {
        let rows = self
            .select::<(i64, i64)>(&self.stmts.groups.select_read, (user, grp), || {
                format!("reading {user}'s read position in group {grp}")
            })
            .await?;
        match rows.first() {
            Some(&(seq, msg_id)) => Ok((
                from_i64(seq, "read position")?,
                from_i64(msg_id, "read position")?,
            )),
            None => Ok((0, 0)),
        }
    }

    /// The group's newest message at or below msgid `up_to`: (group seq, msgid).
    pub(super) async fn group_message_at_or_before(
        &self,
        grp: &str,
        up_to: u64,
    ) -> StoreResult<Option<(u64, u64)>> {
        let page = self
            .history_rows(&log_owner(grp), GROUP_HISTORY_PEER, up_to, 0, 1)
            .await?;
        Ok(page.messages.first().map(|m| (m.group_seq, m.msg_id)))
    }

    /// (last message's group seq, its time) of `grp`; zeros without messages.
    async fn group_head(&self, grp: &str) -> StoreResult<(u64, i64)> {
        let rows = self
            .select::<(Option<i64>, Option<i64>)>(&self.stmts.groups.select_head, (grp,), || {
                format!("reading the head of group {grp}")
            })
            .await?;
        match rows.first() {
            Some(&(Some(seq), updated)) => {
                Ok((from_i64(seq, "last message seq")?, updated.unwrap_or(0)))
            }
            _ => Ok((0, 0)),
        }
    }

    /// Messages of `grp` after group seq `after` (see the module comment for the cap).
    pub(super) async fn unread_after(&self, grp: &str, after: u64) -> StoreResult<u64> {
        let (last, _) = self.group_head(grp).await?;
        if last <= after {
            return Ok(0);
        }
        let after_i = to_i64(after, "read position")?;
        let (from, to) = (event_bucket(after + 1), event_bucket(last));
        let mut n = 0u64;
        for bucket in from..=to.min(from.saturating_add(UNREAD_BUCKETS - 1)) {
            let rows = self
                .select::<(i64,)>(
                    &self.stmts.groups.count_group_msgs_after,
                    (grp, bucket, after_i),
                    || format!("counting the messages of group {grp}"),
                )
                .await?;
            n += rows
                .first()
                .map_or(0, |(c,)| u64::try_from(*c).unwrap_or(0));
        }
        Ok(n)
    }

    /// Messages under the history key (`a`, `b`) with `since` < msgid <= `upper`, newest first,
    /// at most `limit`; `has_more` if older ones (above `since`) exist. Each keeps the
    /// conversation it was stored with.
    pub(super) async fn history_rows(
        &self,
        a: &str,
        b: &str,
        upper: u64,
        since: u64,
        limit: usize,
    ) -> StoreResult<HistoryPage> {
        let mut page = HistoryPage::default();
        let upper = upper.min(i64::MAX as u64);
        if upper <= since {
            return Ok(page);
        }
        let s = &self.stmts;
        let wanted = limit.saturating_add(1);
        let mut messages = Vec::new();
        let mut day_at_most = history_day(upper);
        let lowest_day = history_day(since);
        'days: loop {
            let days = self
                .select::<(i32,)>(
                    &s.history_days_down,
                    (a, b, day_at_most, BUCKET_CHUNK),
                    || format!("listing the history days of {a}"),
                )
                .await?;
            let Some(&(lowest,)) = days.last() else {
                break;
            };
            for (day,) in days {
                if day < lowest_day {
                    break 'days;
                }
                let want = cql_limit(wanted - messages.len());
                let rows = self
                    .select::<(i64, Vec<u8>)>(
                        &s.history_page,
                        (a, b, day, upper as i64, want),
                        || format!("reading the history of {a}"),
                    )
                    .await?;
                for (msg_id, blob) in rows {
                    if from_i64(msg_id, "history msg_id")? <= since {
                        break 'days;
                    }
                    let m = Message::decode(blob.as_slice()).map_err(|e| {
                        StoreError::new(format!("decoding history message {msg_id} of {a}: {e}"))
                    })?;
                    messages.push(m);
                    if messages.len() >= wanted {
                        break 'days;
                    }
                }
            }
            match lowest.checked_sub(1) {
                Some(below) if below >= lowest_day => day_at_most = below,
                _ => break,
            }
        }
        page.has_more = messages.len() > limit;
        messages.truncate(limit);
        page.messages = messages;
        Ok(page)
    }

    /// A member's history of a small group (see the module comment): nothing for a
    /// non-member.
    pub(super) async fn member_group_history(
        &self,
        user: &str,
        grp: &str,
        before_msg_id: Option<u64>,
        limit: usize,
    ) -> StoreResult<HistoryPage> {
        let Some(member) = self.member(grp, user).await? else {
            return Ok(HistoryPage::default());
        };
        let upper = match before_msg_id {
            Some(0) => return Ok(HistoryPage::default()),
            Some(before) => before - 1,
            None => u64::MAX,
        };
        // Msgids of different nodes are ordered only as far as their clocks agree: look a
        // little below the join's msgid, and keep what comes after the join in the group's log.
        let since = member
            .joined_msg_id
            .saturating_sub(JOIN_SKEW_MS << MSGID_MS_SHIFT);
        let mut page = self
            .history_rows(&log_owner(grp), GROUP_HISTORY_PEER, upper, since, limit)
            .await?;
        let before = page.messages.len();
        page.messages.retain(|m| m.group_seq > member.joined_seq);
        if page.messages.len() < before {
            page.has_more = false; // what was left out is older than the join, and so is the rest
        }
        Ok(page)
    }

    pub(super) async fn group_meta(&self, grp: &str) -> StoreResult<Option<GroupMeta>> {
        let rows = self
            .select::<(String,)>(&self.stmts.groups.select_meta, (grp,), || {
                format!("reading the meta of group {grp}")
            })
            .await?;
        rows.first()
            .map(|(json,)| from_json(json, "group meta"))
            .transpose()
    }

    /// Every row of a paged select of two columns.
    async fn paged<A, B>(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
        what: &'static str,
    ) -> StoreResult<Vec<(A, B)>>
    where
        (A, B): for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let mut rows = self
            .session
            .execute_iter(stmt.clone(), values)
            .await
            .map_err(failed(what))?
            .rows_stream::<(A, B)>()
            .map_err(failed(what))?;
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(failed(what))? {
            out.push(row);
        }
        Ok(out)
    }
}

#[async_trait]
impl GroupStore for ScyllaLog {
    fn has_groups(&self) -> bool {
        true
    }

    /// A paged scan of `groups` (token order, the driver's page size): one row per group ever
    /// created, read once at start by every node, so start-up costs O(groups) reads.
    async fn group_ids(&self) -> StoreResult<Vec<String>> {
        let what = "listing the groups";
        let stmt: &GroupStatements = &self.inner.stmts.groups;
        let mut rows = self
            .inner
            .session
            .execute_iter(stmt.all_groups.clone(), ())
            .await
            .map_err(failed(what))?
            .rows_stream::<(String,)>()
            .map_err(failed(what))?;
        let mut ids = Vec::new();
        while let Some((id,)) = rows.try_next().await.map_err(failed(what))? {
            ids.push(id);
        }
        Ok(ids)
    }

    async fn load_group(&self, group: &str) -> StoreResult<Option<GroupRecord>> {
        let Some(meta) = self.inner.group_meta(group).await? else {
            return Ok(None);
        };
        let rows: Vec<(String, String)> = self
            .inner
            .paged(
                &self.inner.stmts.groups.select_members,
                (group,),
                "reading the members of a group",
            )
            .await?;
        let mut members = std::collections::BTreeMap::new();
        for (user, json) in rows {
            members.insert(user, from_json::<Member>(&json, "group member")?);
        }
        Ok(Some(GroupRecord { meta, members }))
    }

    async fn user_groups(&self, user: &str) -> StoreResult<Vec<(String, bool)>> {
        let rows: Vec<(String, Option<bool>)> = self
            .inner
            .paged(
                &self.inner.stmts.groups.select_user_groups,
                (user,),
                "reading a user's groups",
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(g, large)| (g, large.unwrap_or(false)))
            .collect())
    }

    async fn large_group_view(&self, user: &str, group: &str) -> StoreResult<LargeGroupView> {
        let owner = log_owner(group);
        let conversation = Conversation::Group(group.to_string()).to_string();
        let (last_msg_seq, updated_at) = self.inner.group_head(group).await?;
        let (position, _) = self.inner.group_read(user, group).await?;
        let last = match last_msg_seq {
            0 => None,
            seq => {
                let at = to_i64(seq, "last message seq")?;
                let rows = self
                    .inner
                    .select::<(Vec<u8>,)>(
                        &self.inner.stmts.event_at,
                        (&owner, event_bucket(seq), at),
                        || format!("reading {owner}'s event at seq {seq}"),
                    )
                    .await?;
                match rows.first() {
                    Some((blob,)) => match decode_event(&owner, at, blob)?.body {
                        Some(event::Body::Message(m)) => Some(m),
                        _ => None,
                    },
                    None => None,
                }
            }
        };
        Ok(LargeGroupView {
            last_group_seq: MessageLog::max_seq(self, &owner).await?,
            unread: self.inner.unread_after(group, position).await?,
            mentioned: self.mentioned(user, &conversation).await?,
            last,
            updated_at,
        })
    }

    async fn group_log(
        &self,
        group: &str,
        after_group_seq: u64,
        limit: usize,
    ) -> StoreResult<StreamPage> {
        let mut events = self
            .read_events(&log_owner(group), after_group_seq, limit.saturating_add(1))
            .await?;
        let has_more = events.len() > limit;
        events.truncate(limit);
        Ok(StreamPage { events, has_more })
    }

    async fn group_history(
        &self,
        group: &str,
        before: Option<u64>,
        since: u64,
        limit: usize,
    ) -> StoreResult<HistoryPage> {
        let upper = match before {
            Some(0) => return Ok(HistoryPage::default()),
            Some(before) => before - 1,
            None => u64::MAX,
        };
        self.inner
            .history_rows(&log_owner(group), GROUP_HISTORY_PEER, upper, since, limit)
            .await
    }
}

#[async_trait]
impl GroupLog for ScyllaLog {
    fn log_group(
        &self,
        entry: GroupAppend,
        seqs: GroupSeqs,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<GroupOutcome>> {
        let users = super::groups::group_job_users(&entry);
        flatten(self.enqueue(users, move |inner| {
            async move { Ok(inner.log_group(entry, seqs, deadline).await) }.boxed()
        }))
    }

    fn log_group_read(
        &self,
        user: &str,
        group: &str,
        up_to: u64,
        own_seq: u64,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<GroupReadOutcome>> {
        let (user, group) = (user.to_string(), group.to_string());
        // Not the group's log: reads of many members must not queue behind each other (the
        // position is raised with an LWT, so racing reads are safe).
        let users = vec![user.clone()];
        flatten(self.enqueue(users, move |inner| {
            async move {
                Ok(inner
                    .log_group_read(&user, &group, up_to, own_seq, deadline)
                    .await)
            }
            .boxed()
        }))
    }

    async fn mentioned(&self, user: &str, conversation: &str) -> StoreResult<bool> {
        let rows = self
            .inner
            .select::<(i64,)>(
                &self.inner.stmts.groups.any_mention,
                (user, conversation),
                || format!("reading {user}'s mentions in {conversation}"),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn read_position(&self, user: &str, group: &str) -> StoreResult<(u64, u64)> {
        let (seq, msg_id) = self.inner.group_read(user, group).await?;
        Ok((msg_id, self.inner.unread_after(group, seq).await?))
    }

    async fn is_large(&self, group: &str) -> StoreResult<Option<bool>> {
        Ok(self.inner.group_meta(group).await?.map(|m| m.large))
    }

    async fn group_meta(&self, group: &str) -> StoreResult<Option<GroupMeta>> {
        self.inner.group_meta(group).await
    }
}

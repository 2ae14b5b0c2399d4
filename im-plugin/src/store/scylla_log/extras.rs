//! Blocks, presence settings and last-seen times in the ScyllaDB log ([`ExtrasLog`]), so that
//! `redis+scylla` keeps them as durably as messages (tables `blocks`, `hidden_presence` and
//! `last_seen`, see the module comment of `mod.rs`).
//!
//! Plain writes at LOCAL_QUORUM, not through the writer queue: they touch no stream, and each
//! is a whole-row set or delete, so of two racing toggles of one block the later write wins
//! (ScyllaDB's last-write-wins by timestamp), which is what the user did last. Every node loads
//! them all at start ([`ExtrasLog::load_extras`]: two paged scans), and one user's again when
//! another node says they changed ([`ExtrasLog::user_extras`]: two single-partition reads).

use std::collections::BTreeSet;

use futures::TryStreamExt as _;

use super::*;
use crate::store::extras::{ExtrasLog, ExtrasState};

/// The prepared statements of the extras tables.
pub(super) struct ExtrasStatements {
    insert_block: PreparedStatement,
    delete_block: PreparedStatement,
    all_blocks: PreparedStatement,
    user_blocks: PreparedStatement,
    insert_hidden: PreparedStatement,
    delete_hidden: PreparedStatement,
    all_hidden: PreparedStatement,
    user_hidden: PreparedStatement,
    insert_last_seen: PreparedStatement,
    last_seen: PreparedStatement,
}

impl ExtrasStatements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> StoreResult<ExtrasStatements> {
        let p = |cql: String| schema::prepare(session, cql);
        Ok(ExtrasStatements {
            insert_block: p(format!(
                "INSERT INTO {ks}.blocks (blocker, blocked, ts) VALUES (?, ?, ?)"
            ))
            .await?,
            delete_block: p(format!(
                "DELETE FROM {ks}.blocks WHERE blocker = ? AND blocked = ?"
            ))
            .await?,
            all_blocks: p(format!("SELECT blocker, blocked FROM {ks}.blocks")).await?,
            user_blocks: p(format!("SELECT blocked FROM {ks}.blocks WHERE blocker = ?")).await?,
            insert_hidden: p(format!(
                "INSERT INTO {ks}.hidden_presence (owner) VALUES (?)"
            ))
            .await?,
            delete_hidden: p(format!("DELETE FROM {ks}.hidden_presence WHERE owner = ?")).await?,
            all_hidden: p(format!("SELECT owner FROM {ks}.hidden_presence")).await?,
            user_hidden: p(format!(
                "SELECT owner FROM {ks}.hidden_presence WHERE owner = ?"
            ))
            .await?,
            insert_last_seen: p(format!(
                "INSERT INTO {ks}.last_seen (owner, ts) VALUES (?, ?)"
            ))
            .await?,
            last_seen: p(format!("SELECT ts FROM {ks}.last_seen WHERE owner = ?")).await?,
        })
    }
}

impl Inner {
    async fn execute(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
        what: impl Fn() -> String,
    ) -> StoreResult<()> {
        self.session
            .execute_unpaged(stmt, values)
            .await
            .map_err(|e| StoreError::new(format!("{}: {e}", what())))?;
        Ok(())
    }
}

#[async_trait]
impl ExtrasLog for ScyllaLog {
    async fn set_block(&self, blocker: &str, blocked: &str, on: bool) -> StoreResult<()> {
        let s = &self.inner.stmts.extras;
        let what = || format!("recording that {blocker} blocks {blocked} ({on})");
        match on {
            true => {
                self.inner
                    .execute(&s.insert_block, (blocker, blocked, crate::now_ms()), what)
                    .await
            }
            false => {
                self.inner
                    .execute(&s.delete_block, (blocker, blocked), what)
                    .await
            }
        }
    }

    async fn set_presence_visible(&self, user: &str, visible: bool) -> StoreResult<()> {
        let s = &self.inner.stmts.extras;
        let what = || format!("recording {user}'s presence setting");
        match visible {
            true => self.inner.execute(&s.delete_hidden, (user,), what).await,
            false => self.inner.execute(&s.insert_hidden, (user,), what).await,
        }
    }

    async fn set_last_seen(&self, user: &str, ts: i64) -> StoreResult<()> {
        let s = &self.inner.stmts.extras;
        let what = || format!("recording when {user} was last seen");
        self.inner
            .execute(&s.insert_last_seen, (user, ts), what)
            .await
    }

    async fn last_seen(&self, user: &str) -> StoreResult<i64> {
        let s = &self.inner.stmts.extras;
        let what = "reading when a user was last seen";
        let rows = self
            .inner
            .session
            .execute_unpaged(&s.last_seen, (user,))
            .await
            .map_err(failed(what))?
            .into_rows_result()
            .map_err(failed(what))?;
        let row = rows.maybe_first_row::<(i64,)>().map_err(failed(what))?;
        Ok(row.map_or(0, |(ts,)| ts))
    }

    async fn load_extras(&self) -> StoreResult<ExtrasState> {
        let s = &self.inner.stmts.extras;
        let session = &self.inner.session;
        let mut state = ExtrasState::default();
        let what = "loading the blocks";
        let mut blocks = session
            .execute_iter(s.all_blocks.clone(), ())
            .await
            .map_err(failed(what))?
            .rows_stream::<(String, String)>()
            .map_err(failed(what))?;
        while let Some((blocker, blocked)) = blocks.try_next().await.map_err(failed(what))? {
            state.blocks.entry(blocker).or_default().insert(blocked);
        }
        let what = "loading the presence settings";
        let mut hidden = session
            .execute_iter(s.all_hidden.clone(), ())
            .await
            .map_err(failed(what))?
            .rows_stream::<(String,)>()
            .map_err(failed(what))?;
        while let Some((user,)) = hidden.try_next().await.map_err(failed(what))? {
            state.hidden.insert(user);
        }
        Ok(state)
    }

    async fn user_extras(&self, user: &str) -> StoreResult<(BTreeSet<String>, bool)> {
        let s = &self.inner.stmts.extras;
        let session = &self.inner.session;
        let what = "reading a user's blocks";
        let mut rows = session
            .execute_iter(s.user_blocks.clone(), (user,))
            .await
            .map_err(failed(what))?
            .rows_stream::<(String,)>()
            .map_err(failed(what))?;
        let mut blocks = BTreeSet::new();
        while let Some((blocked,)) = rows.try_next().await.map_err(failed(what))? {
            blocks.insert(blocked);
        }
        let what = "reading a user's presence setting";
        let hidden = session
            .execute_unpaged(&s.user_hidden, (user,))
            .await
            .map_err(failed(what))?
            .into_rows_result()
            .map_err(failed(what))?
            .maybe_first_row::<(String,)>()
            .map_err(failed(what))?
            .is_some();
        Ok((blocks, hidden))
    }
}

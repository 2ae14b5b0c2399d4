//! The log's CQL: the keyspace and tables it creates at start-up, the schema version check,
//! and the prepared statements (those of the group tables in [`GroupStatements`]).

use super::*;

impl Statements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> StoreResult<Statements> {
        let p = |cql: String| prepare(session, cql);
        Ok(Statements {
            claim_event: p(format!(
                "INSERT INTO {ks}.events (owner, bucket, seq, event) VALUES (?, ?, ?, ?) \
                 IF NOT EXISTS"
            ))
            .await?,
            replace_event: p(format!(
                "UPDATE {ks}.events SET event = ? WHERE owner = ? AND bucket = ? AND seq = ? \
                 IF event = ?"
            ))
            .await?,
            read_pointer: p(format!(
                "SELECT msg_id FROM {ks}.read_pointers WHERE owner = ? AND conversation = ?"
            ))
            .await?,
            create_read_pointer: p(format!(
                "INSERT INTO {ks}.read_pointers (owner, conversation, msg_id) VALUES (?, ?, ?) \
                 IF NOT EXISTS"
            ))
            .await?,
            raise_read_pointer: p(format!(
                "UPDATE {ks}.read_pointers SET msg_id = ? WHERE owner = ? AND conversation = ? \
                 IF msg_id < ?"
            ))
            .await?,
            insert_event_bucket: p(format!(
                "INSERT INTO {ks}.event_buckets (owner, bucket) VALUES (?, ?)"
            ))
            .await?,
            event_buckets_from: p(format!(
                "SELECT bucket FROM {ks}.event_buckets WHERE owner = ? AND bucket >= ? \
                 ORDER BY bucket ASC LIMIT ?"
            ))
            .await?,
            event_buckets_down: p(format!(
                "SELECT bucket FROM {ks}.event_buckets WHERE owner = ? AND bucket <= ? \
                 ORDER BY bucket DESC LIMIT ?"
            ))
            .await?,
            events_after: p(format!(
                "SELECT seq, event FROM {ks}.events WHERE owner = ? AND bucket = ? AND seq > ? \
                 ORDER BY seq ASC LIMIT ?"
            ))
            .await?,
            event_at: p(format!(
                "SELECT event FROM {ks}.events WHERE owner = ? AND bucket = ? AND seq = ?"
            ))
            .await?,
            last_seq: p(format!(
                "SELECT seq FROM {ks}.events WHERE owner = ? AND bucket = ? \
                 ORDER BY seq DESC LIMIT 1"
            ))
            .await?,
            insert_history: p(format!(
                "INSERT INTO {ks}.history (user_a, user_b, day, msg_id, message) \
                 VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_history_day: p(format!(
                "INSERT INTO {ks}.history_days (user_a, user_b, day) VALUES (?, ?, ?)"
            ))
            .await?,
            history_days_down: p(format!(
                "SELECT day FROM {ks}.history_days WHERE user_a = ? AND user_b = ? AND day <= ? \
                 ORDER BY day DESC LIMIT ?"
            ))
            .await?,
            history_page: p(format!(
                "SELECT msg_id, message FROM {ks}.history WHERE user_a = ? AND user_b = ? \
                 AND day = ? AND msg_id <= ? ORDER BY msg_id DESC LIMIT ?"
            ))
            .await?,
            claim_dedup: p(format!(
                "INSERT INTO {ks}.dedup (sender, client_msg_id, msg_id, seq, conversation, ts, \
                 deadline_ms) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?"
            ))
            .await?,
            take_over_dedup: p(format!(
                "UPDATE {ks}.dedup USING TTL ? SET msg_id = ?, seq = ?, conversation = ?, \
                 ts = ?, deadline_ms = ? WHERE sender = ? AND client_msg_id = ? IF msg_id = ?"
            ))
            .await?,
            release_dedup: p(format!(
                "DELETE FROM {ks}.dedup WHERE sender = ? AND client_msg_id = ? IF msg_id = ?"
            ))
            .await?,
            raise_max_msg_id: p(format!(
                "UPDATE {ks}.max_msg_id USING TIMESTAMP ? SET msg_id = ? WHERE slot = ?"
            ))
            .await?,
            max_msg_ids: p(format!("SELECT msg_id FROM {ks}.max_msg_id")).await?,
            raise_cursor: p(format!(
                "UPDATE {ks}.cursors SET seq = ? WHERE owner = ? AND device = ? IF seq < ?"
            ))
            .await?,
            create_cursor: p(format!(
                "INSERT INTO {ks}.cursors (owner, device, seq) VALUES (?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            groups: GroupStatements::prepare(session, ks).await?,
            extras: super::extras::ExtrasStatements::prepare(session, ks).await?,
            amends: super::amends::AmendStatements::prepare(session, ks).await?,
        })
    }
}

pub(super) async fn prepare(session: &Session, cql: String) -> StoreResult<PreparedStatement> {
    let mut stmt = session
        .prepare(cql.as_str())
        .await
        .map_err(|e| StoreError::new(format!("preparing `{cql}`: {e}")))?;
    stmt.set_consistency(Consistency::LocalQuorum);
    stmt.set_serial_consistency(Some(SerialConsistency::LocalSerial));
    Ok(stmt)
}

/// Creates the keyspace and tables if missing and checks (or records) the schema version.
pub(super) async fn create_schema(session: &Session, cfg: &ScyllaLogConfig) -> StoreResult<()> {
    let ks = &cfg.keyspace;
    let tablets = if cfg.disable_tablets {
        " AND tablets = {'enabled': false}"
    } else {
        ""
    };
    ddl(
        session,
        &format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}{tablets}",
            cfg.replication
        ),
    )
    .await?;
    let tables = [
        "events (owner text, bucket bigint, seq bigint, event blob, \
         PRIMARY KEY ((owner, bucket), seq)) WITH CLUSTERING ORDER BY (seq ASC)",
        "event_buckets (owner text, bucket bigint, PRIMARY KEY (owner, bucket)) \
         WITH CLUSTERING ORDER BY (bucket DESC)",
        "history (user_a text, user_b text, day int, msg_id bigint, message blob, \
         PRIMARY KEY ((user_a, user_b, day), msg_id)) WITH CLUSTERING ORDER BY (msg_id DESC)",
        "history_days (user_a text, user_b text, day int, PRIMARY KEY ((user_a, user_b), day)) \
         WITH CLUSTERING ORDER BY (day DESC)",
        "dedup (sender text, client_msg_id text, msg_id bigint, seq bigint, conversation text, \
         ts bigint, deadline_ms bigint, PRIMARY KEY ((sender, client_msg_id)))",
        "cursors (owner text, device text, seq bigint, PRIMARY KEY (owner, device))",
        "read_pointers (owner text, conversation text, msg_id bigint, \
         PRIMARY KEY (owner, conversation))",
        "max_msg_id (slot int PRIMARY KEY, msg_id bigint)",
        "meta (name text PRIMARY KEY, n bigint)",
        // Version 2: groups (`groups.rs`) and extras (`extras.rs`).
        "groups (grp text PRIMARY KEY, meta text)",
        "group_members (grp text, member_id text, member text, PRIMARY KEY (grp, member_id))",
        "user_groups (member_id text, grp text, large boolean, PRIMARY KEY (member_id, grp))",
        "group_msgs (grp text, bucket bigint, seq bigint, msg_id bigint, \
         PRIMARY KEY ((grp, bucket), seq)) WITH CLUSTERING ORDER BY (seq ASC)",
        "group_heads (grp text PRIMARY KEY, last_msg_seq bigint, updated_at bigint)",
        "group_reads (owner text, grp text, seq bigint, msg_id bigint, PRIMARY KEY (owner, grp))",
        "mentions (owner text, conversation text, msg_id bigint, \
         PRIMARY KEY (owner, conversation, msg_id))",
        "group_dedup (owner text, client_msg_id text, msg_id bigint, seq bigint, \
         group_seq bigint, conversation text, ts bigint, deadline_ms bigint, \
         PRIMARY KEY ((owner, client_msg_id)))",
        "blocks (blocker text, blocked text, ts bigint, PRIMARY KEY (blocker, blocked))",
        "hidden_presence (owner text PRIMARY KEY)",
        "last_seen (owner text PRIMARY KEY, ts bigint)",
        // Also version 2 (not deployed before it was added): recall and edit (`amends.rs`).
        "message_copies (user_a text, user_b text, day int, msg_id bigint, copies blob, \
         PRIMARY KEY ((user_a, user_b, day), msg_id))",
    ];
    for table in tables {
        ddl(session, &format!("CREATE TABLE IF NOT EXISTS {ks}.{table}")).await?;
    }
    let mut version = Statement::new(format!(
        "INSERT INTO {ks}.meta (name, n) VALUES ('schema_version', {SCHEMA_VERSION}) IF NOT EXISTS"
    ));
    version.set_consistency(Consistency::LocalQuorum);
    version.set_serial_consistency(Some(SerialConsistency::LocalSerial));
    let what = "recording the schema version";
    let result = session
        .query_unpaged(version, ())
        .await
        .map_err(|e| StoreError::new(format!("{what}: {e}")))?;
    let recorded = Lwt::parse(result).map_err(|e| StoreError::new(format!("{what}: {}", e.0)))?;
    if !recorded.applied {
        let found = recorded.i64("n")?;
        if found == 1 {
            // Version 2 only added tables, created above: record the upgrade, after which
            // a version-1 binary refuses the keyspace.
            return upgrade_from_1(session, ks).await;
        }
        if found != SCHEMA_VERSION {
            return Err(StoreError::new(format!(
                "keyspace {ks} has schema version {found}, this build reads version \
                 {SCHEMA_VERSION}"
            )));
        }
    }
    Ok(())
}

/// Moves the recorded version from 1 to [`SCHEMA_VERSION`] (a conditional write: of several
/// nodes upgrading at once one applies it, the others find it done).
async fn upgrade_from_1(session: &Session, ks: &str) -> StoreResult<()> {
    let mut upgrade = Statement::new(format!(
        "UPDATE {ks}.meta SET n = {SCHEMA_VERSION} WHERE name = 'schema_version' IF n = 1"
    ));
    upgrade.set_consistency(Consistency::LocalQuorum);
    upgrade.set_serial_consistency(Some(SerialConsistency::LocalSerial));
    let what = "upgrading the schema version";
    let result = session
        .query_unpaged(upgrade, ())
        .await
        .map_err(|e| StoreError::new(format!("{what}: {e}")))?;
    let done = Lwt::parse(result).map_err(|e| StoreError::new(format!("{what}: {}", e.0)))?;
    let now = match done.applied {
        true => SCHEMA_VERSION,
        false => done.i64("n")?,
    };
    if now != SCHEMA_VERSION {
        return Err(StoreError::new(format!(
            "keyspace {ks} moved to schema version {now} while this node upgraded it to \
             {SCHEMA_VERSION}"
        )));
    }
    tracing::info!(
        keyspace = ks,
        "upgraded the ScyllaDB log's schema from version 1"
    );
    Ok(())
}

pub(super) async fn ddl(session: &Session, cql: &str) -> StoreResult<()> {
    let mut stmt = Statement::new(cql);
    stmt.set_request_timeout(Some(DDL_TIMEOUT));
    session
        .query_unpaged(stmt, ())
        .await
        .map_err(|e| StoreError::new(format!("`{cql}`: {e}")))?;
    Ok(())
}

/// The prepared statements of the group tables.
pub(super) struct GroupStatements {
    pub(super) insert_meta: PreparedStatement,
    pub(super) select_meta: PreparedStatement,
    pub(super) all_groups: PreparedStatement,
    pub(super) upsert_member: PreparedStatement,
    pub(super) delete_member: PreparedStatement,
    pub(super) select_member: PreparedStatement,
    pub(super) select_members: PreparedStatement,
    pub(super) upsert_user_group: PreparedStatement,
    pub(super) delete_user_group: PreparedStatement,
    pub(super) select_user_groups: PreparedStatement,
    pub(super) insert_group_msg: PreparedStatement,
    pub(super) count_group_msgs_after: PreparedStatement,
    pub(super) raise_head: PreparedStatement,
    pub(super) select_head: PreparedStatement,
    pub(super) select_read: PreparedStatement,
    pub(super) create_read: PreparedStatement,
    pub(super) raise_read: PreparedStatement,
    pub(super) insert_mention: PreparedStatement,
    pub(super) clear_mentions: PreparedStatement,
    pub(super) any_mention: PreparedStatement,
    pub(super) claim_dedup: PreparedStatement,
    pub(super) take_over_dedup: PreparedStatement,
    pub(super) release_dedup: PreparedStatement,
}

impl GroupStatements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> StoreResult<GroupStatements> {
        let p = |cql: String| prepare(session, cql);
        Ok(GroupStatements {
            insert_meta: p(format!("INSERT INTO {ks}.groups (grp, meta) VALUES (?, ?)")).await?,
            select_meta: p(format!("SELECT meta FROM {ks}.groups WHERE grp = ?")).await?,
            all_groups: p(format!("SELECT grp FROM {ks}.groups")).await?,
            upsert_member: p(format!(
                "INSERT INTO {ks}.group_members (grp, member_id, member) VALUES (?, ?, ?)"
            ))
            .await?,
            delete_member: p(format!(
                "DELETE FROM {ks}.group_members WHERE grp = ? AND member_id = ?"
            ))
            .await?,
            select_member: p(format!(
                "SELECT member FROM {ks}.group_members WHERE grp = ? AND member_id = ?"
            ))
            .await?,
            select_members: p(format!(
                "SELECT member_id, member FROM {ks}.group_members WHERE grp = ?"
            ))
            .await?,
            upsert_user_group: p(format!(
                "INSERT INTO {ks}.user_groups (member_id, grp, large) VALUES (?, ?, ?)"
            ))
            .await?,
            delete_user_group: p(format!(
                "DELETE FROM {ks}.user_groups WHERE member_id = ? AND grp = ?"
            ))
            .await?,
            select_user_groups: p(format!(
                "SELECT grp, large FROM {ks}.user_groups WHERE member_id = ?"
            ))
            .await?,
            insert_group_msg: p(format!(
                "INSERT INTO {ks}.group_msgs (grp, bucket, seq, msg_id) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            count_group_msgs_after: p(format!(
                "SELECT COUNT(*) FROM {ks}.group_msgs WHERE grp = ? AND bucket = ? AND seq > ?"
            ))
            .await?,
            raise_head: p(format!(
                "UPDATE {ks}.group_heads USING TIMESTAMP ? SET last_msg_seq = ?, updated_at = ? \
                 WHERE grp = ?"
            ))
            .await?,
            select_head: p(format!(
                "SELECT last_msg_seq, updated_at FROM {ks}.group_heads WHERE grp = ?"
            ))
            .await?,
            select_read: p(format!(
                "SELECT seq, msg_id FROM {ks}.group_reads WHERE owner = ? AND grp = ?"
            ))
            .await?,
            create_read: p(format!(
                "INSERT INTO {ks}.group_reads (owner, grp, seq, msg_id) VALUES (?, ?, ?, ?) \
                 IF NOT EXISTS"
            ))
            .await?,
            raise_read: p(format!(
                "UPDATE {ks}.group_reads SET seq = ?, msg_id = ? WHERE owner = ? AND grp = ? \
                 IF seq < ?"
            ))
            .await?,
            insert_mention: p(format!(
                "INSERT INTO {ks}.mentions (owner, conversation, msg_id) VALUES (?, ?, ?)"
            ))
            .await?,
            clear_mentions: p(format!(
                "DELETE FROM {ks}.mentions WHERE owner = ? AND conversation = ? AND msg_id <= ?"
            ))
            .await?,
            any_mention: p(format!(
                "SELECT msg_id FROM {ks}.mentions WHERE owner = ? AND conversation = ? LIMIT 1"
            ))
            .await?,
            claim_dedup: p(format!(
                "INSERT INTO {ks}.group_dedup (owner, client_msg_id, msg_id, seq, group_seq, \
                 conversation, ts, deadline_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS \
                 USING TTL ?"
            ))
            .await?,
            take_over_dedup: p(format!(
                "UPDATE {ks}.group_dedup USING TTL ? SET msg_id = ?, seq = ?, group_seq = ?, \
                 conversation = ?, ts = ?, deadline_ms = ? WHERE owner = ? AND client_msg_id = ? \
                 IF msg_id = ?"
            ))
            .await?,
            release_dedup: p(format!(
                "DELETE FROM {ks}.group_dedup WHERE owner = ? AND client_msg_id = ? IF msg_id = ?"
            ))
            .await?,
        })
    }
}

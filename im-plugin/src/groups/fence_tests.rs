//! Two nodes' IM layers over one shared log (`crate::testing::nodes`): the membership fence
//! seen from the requests. Node A removes a member; node B, whose registry still lists them, takes a send to the group:
//! the store refuses B's first plan, B reloads the group and plans again, and the send is
//! answered `sent` with no copy for the removed member.

use std::sync::Arc;

use bytes::Bytes;
use mqim_schemas::v1::{event, reply, GroupCreateRequest, GroupRemoveRequest, SendRequest};
use tempfile::TempDir;

use crate::presence::DeviceLink;
use crate::store::lsm::LsmStore;
use crate::testing::nodes::node;
use crate::testing::RedisServer;
use crate::ImPlugin;

struct Link(&'static str);

impl DeviceLink for Link {
    fn conn_id(&self) -> u64 {
        7
    }
    fn user(&self) -> &str {
        self.0
    }
    fn device(&self) -> &str {
        "phone"
    }
    fn is_subscribed(&self, _topic: &str) -> bool {
        false
    }
    fn deliver(&self, _topic: &str, _payload: Bytes) -> bool {
        false
    }
}

fn link(user: &'static str) -> Arc<dyn DeviceLink> {
    Arc::new(Link(user))
}

/// olga creates a group with pia and rex on `node`; its conversation id.
async fn olga_creates(node: &Arc<ImPlugin>, name: &str, large: bool) -> String {
    let created = crate::ops::group_admin::create(
        node,
        &link("olga"),
        GroupCreateRequest {
            name: name.into(),
            members: vec!["pia".into(), "rex".into()],
            large,
            ..GroupCreateRequest::default()
        },
    )
    .await
    .expect("create");
    let Some(reply::Result::GroupCreate(created)) = Some(created) else {
        panic!("not a create reply");
    };
    created.group.expect("the group").id
}

/// olga removes rex from `group` on `node`.
async fn olga_removes_rex(node: &Arc<ImPlugin>, group: &str) {
    crate::ops::group_admin::remove(
        node,
        &link("olga"),
        GroupRemoveRequest {
            group: group.to_string(),
            members: vec!["rex".into()],
        },
    )
    .await
    .expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_through_a_node_that_missed_a_removal_reaches_only_the_members_left() {
    let redis = RedisServer::start();
    let dir = TempDir::new().expect("temp dir");
    let log = Arc::new(LsmStore::open(&dir.path().join("log")).expect("log"));
    let a = node(1, &redis, &log, &dir).await;
    let group = olga_creates(&a, "team", false).await;
    // Node B starts now: its registry lists rex.
    let b = node(2, &redis, &log, &dir).await;
    assert!(b
        .groups
        .get(group.trim_start_matches("g:"))
        .unwrap()
        .members
        .contains_key("rex"));

    olga_removes_rex(&a, &group).await;

    let sent = crate::ops::send::start(
        &b,
        &link("pia"),
        SendRequest {
            to: group.clone(),
            client_msg_id: "after-removal".into(),
            text: Some("rex must not read this".into()),
            ..SendRequest::default()
        },
    )
    .await;
    assert!(
        matches!(sent, Ok(reply::Result::Sent(_))),
        "B's send after reloading the group: {sent:?}"
    );
    let stream = |user: &'static str| {
        let store = a.store().clone();
        async move {
            store
                .read_stream(user, 0, 100)
                .await
                .expect("read")
                .events
                .into_iter()
                .filter(|e| matches!(e.body, Some(event::Body::Message(_))))
                .count()
        }
    };
    assert_eq!(
        stream("rex").await,
        0,
        "rex got a message sent after his removal"
    );
    assert_eq!(stream("olga").await, 1);
    assert!(
        !b.groups
            .get(group.trim_start_matches("g:"))
            .unwrap()
            .members
            .contains_key("rex"),
        "B's registry was reloaded"
    );
}

async fn send(plugin: &Arc<ImPlugin>, from: &'static str, group: &str, cmid: &str) -> bool {
    let sent = crate::ops::send::start(
        plugin,
        &link(from),
        SendRequest {
            to: group.to_string(),
            client_msg_id: cmid.into(),
            text: Some(cmid.into()),
            ..SendRequest::default()
        },
    )
    .await;
    matches!(sent, Ok(reply::Result::Sent(_)))
}

/// A node that does not know a group yet (created on another node after it started), or does
/// not know a member yet (added there), looks at the store before refusing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_learns_of_groups_and_members_made_on_another_node() {
    let redis = RedisServer::start();
    let dir = TempDir::new().expect("temp dir");
    let log = Arc::new(LsmStore::open(&dir.path().join("log")).expect("log"));
    let a = node(1, &redis, &log, &dir).await;
    let b = node(2, &redis, &log, &dir).await;
    let created = crate::ops::group_admin::create(
        &a,
        &link("olga"),
        GroupCreateRequest {
            name: "team".into(),
            members: vec!["pia".into()],
            ..GroupCreateRequest::default()
        },
    )
    .await
    .expect("create");
    let Some(reply::Result::GroupCreate(created)) = Some(created) else {
        panic!("not a create reply");
    };
    let group = created.group.expect("the group").id;
    assert!(send(&b, "pia", &group, "p1").await, "a group created on A");
    crate::ops::group_admin::add(
        &a,
        &link("olga"),
        mqim_schemas::v1::GroupAddRequest {
            group: group.clone(),
            members: vec!["zed".into()],
        },
    )
    .await
    .expect("add");
    assert!(send(&b, "zed", &group, "z1").await, "a member added on A");
    assert!(
        !send(&b, "mallory", &group, "m1").await,
        "a non-member is still refused"
    );
}

/// A member removed on node A reads nothing more of a large group through node B, whose copy
/// of the group still lists them: B looks at the stored version before answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_cannot_read_a_large_group_through_a_stale_node() {
    let redis = RedisServer::start();
    let dir = TempDir::new().expect("temp dir");
    let log = Arc::new(LsmStore::open(&dir.path().join("log")).expect("log"));
    let a = node(1, &redis, &log, &dir).await;
    let group = olga_creates(&a, "town", true).await;
    let b = node(2, &redis, &log, &dir).await;
    olga_removes_rex(&a, &group).await;
    assert!(send(&a, "olga", &group, "secret").await);
    let sync = crate::ops::group_query::group_sync(
        &b,
        &link("rex"),
        mqim_schemas::v1::GroupSyncRequest {
            group: group.clone(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        matches!(&sync, Err(e) if e.code == mqim_schemas::v1::ErrorCode::PermissionDenied),
        "rex read the group's log through B: {sync:?}"
    );
    let history = crate::ops::history::start(
        &b,
        &link("rex"),
        mqim_schemas::v1::HistoryRequest {
            conversation: group.clone(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        history.is_err(),
        "rex read the history through B: {history:?}"
    );
}

/// The ops planned from the members (`read`, `typing`, `recall`) check this node's copy of the
/// group against the store's first: rex, removed on A, gets PERMISSION_DENIED for each through
/// B, whose copy still lists him, and nothing of his is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_cannot_read_type_or_recall_through_a_stale_node() {
    use mqim_schemas::v1::{ErrorCode, ReadRequest, RecallRequest, TypingRequest};
    let redis = RedisServer::start();
    let dir = TempDir::new().expect("temp dir");
    let log = Arc::new(LsmStore::open(&dir.path().join("log")).expect("log"));
    let a = node(1, &redis, &log, &dir).await;
    let group = olga_creates(&a, "club", false).await;
    let sent = crate::ops::send::start(
        &a,
        &link("rex"),
        SendRequest {
            to: group.clone(),
            client_msg_id: "r-1".into(),
            text: Some("hello".into()),
            ..SendRequest::default()
        },
    )
    .await;
    let Ok(reply::Result::Sent(sent)) = sent else {
        panic!("rex's send: {sent:?}");
    };
    let b = node(2, &redis, &log, &dir).await;
    olga_removes_rex(&a, &group).await;
    let rex_before = b.store.last_seq("rex").await.expect("rex's stream");

    let denied = |what: &str, r: Result<reply::Result, crate::error::ImError>| {
        assert!(
            matches!(&r, Err(e) if e.code == ErrorCode::PermissionDenied),
            "rex's {what} through B: {r:?}"
        );
    };
    let typing = TypingRequest {
        conversation: group.clone(),
        state: "start".into(),
    };
    denied(
        "typing",
        crate::ops::typing::start(&b, &link("rex"), typing).await,
    );
    let read = ReadRequest {
        conversation: group.clone(),
        msg_id: sent.msg_id,
    };
    denied(
        "read",
        crate::ops::read::start(&b, &link("rex"), read).await,
    );
    let recall = RecallRequest {
        conversation: group.clone(),
        msg_id: sent.msg_id,
    };
    denied(
        "recall",
        crate::ops::recall::start(&b, &link("rex"), recall).await,
    );
    assert_eq!(
        b.store.last_seq("rex").await.expect("rex's stream"),
        rex_before,
        "nothing was written for rex"
    );
}

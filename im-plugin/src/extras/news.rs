//! What other nodes sharing the store announce ([`NodeNews`]), applied to this node's view: a
//! watched user's presence is looked at again (every watched user's when a node left without a
//! word), a user's blocks and setting are read from the store again, and after news may have
//! been missed everything is; a typing event goes to the recipients connected here.
//!
//! And the other way: this node announces its own changes of blocks and settings
//! ([`announce_extras`]); its presence changes are announced by the store as it records them.
//!
//! A node that runs alone (the embedded store, `redis+embedded`) gets no news and sends none.

use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use crate::store::NodeNews;
use crate::ImPlugin;

/// Follows the store's news for as long as the plugin lives.
pub(crate) fn follow(plugin: &Arc<ImPlugin>) {
    let Some(news) = plugin.store.node_news() else {
        return;
    };
    tokio::spawn(apply(Arc::downgrade(plugin), news));
}

async fn apply(plugin: Weak<ImPlugin>, mut news: mpsc::Receiver<NodeNews>) {
    while let Some(item) = news.recv().await {
        let Some(plugin) = plugin.upgrade() else {
            return;
        };
        match item {
            NodeNews::Presence(user) => plugin.extras.watch.changed(&plugin, &user),
            NodeNews::Extras(user) => plugin.extras.reload_user(&plugin.store, &user).await,
            NodeNews::Typing {
                from,
                conversation,
                start,
            } => {
                crate::ops::typing::deliver_from_another_node(&plugin, &from, &conversation, start)
            }
            NodeNews::NodeLeft => plugin.extras.watch.resync(&plugin),
            NodeNews::Resync => {
                plugin.extras.reload_all(&plugin.store).await;
                plugin.extras.watch.resync(&plugin);
            }
        }
    }
}

/// `user`'s blocks or presence setting changed here, durably: the other nodes read them again.
pub(crate) fn announce_extras(plugin: &ImPlugin, user: &str) {
    plugin.store.announce(NodeNews::Extras(user.to_string()));
}

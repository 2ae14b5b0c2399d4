//! SUBSCRIBE and UNSUBSCRIBE: validation, the claimed tree (exact topics the extension grants)
//! or the ACL and the router, then the SUBACK, then the retained messages the new
//! subscriptions get. Each subscription is active in the router before its SUBACK is written.

use rumqttc::mqttbytes::{has_wildcards, valid_filter};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{Conn, State};
use crate::codec::{Outgoing, QoS, SubCode, SubOptions};
use crate::router::{split_share, Outbound, MAX_LEVELS};
use crate::session::Delivery;

/// A filter touches the claimed tree if its first level names it. Filters starting with a
/// wildcard are general: the router never carries claimed traffic, so they cannot read it.
fn is_claimed_filter(filter: &str, prefix: &str) -> bool {
    let root = prefix.trim_end_matches('/');
    filter.split('/').next() == Some(root)
}

/// A well-formed filter (MQTT 4.7), shared (`$share/<group>/<filter>`) or not, of at most
/// [`MAX_LEVELS`] levels: counted without splitting the whole string.
fn well_formed(filter: &str) -> bool {
    if filter.bytes().filter(|b| *b == b'/').count() >= MAX_LEVELS + 2 {
        return false;
    }
    let (group, inner) = split_share(filter);
    if filter.starts_with("$share/") && group.is_none() {
        return false;
    }
    if let Some(g) = group {
        if g.is_empty() || g.contains(['+', '#']) {
            return false;
        }
    }
    !inner.is_empty() && valid_filter(inner) && inner.split('/').nth(MAX_LEVELS).is_none()
}

impl<R, W> Conn<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    pub(super) async fn on_subscribe(
        &mut self,
        st: &mut State,
        pkid: u16,
        filters: Vec<(String, SubOptions)>,
        id: Option<usize>,
    ) {
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for (filter, opts) in filters {
            codes.push(
                self.subscribe_one_collect(st, &filter, opts, id, &mut retained)
                    .await,
            );
        }
        let _ = self
            .version
            .write(Outgoing::SubAck { pkid, codes }, &mut self.wbuf);
        // After the SUBACK (the outbox is drained after this packet is handled).
        for out in retained {
            st.session.push(Delivery::General(out));
        }
    }

    /// Subscribes one filter (also used to restore a resumed session's claimed topics).
    pub(super) async fn subscribe_one(
        &mut self,
        st: &mut State,
        filter: &str,
        opts: SubOptions,
        id: Option<usize>,
    ) -> SubCode {
        let mut retained = Vec::new();
        let code = self
            .subscribe_one_collect(st, filter, opts, id, &mut retained)
            .await;
        for out in retained {
            st.session.push(Delivery::General(out));
        }
        code
    }

    async fn subscribe_one_collect(
        &mut self,
        st: &mut State,
        filter: &str,
        opts: SubOptions,
        id: Option<usize>,
        retained: &mut Vec<Box<Outbound>>,
    ) -> SubCode {
        let shared = self.shared.clone();
        if !well_formed(filter) {
            return SubCode::InvalidFilter;
        }
        let (_, inner) = split_share(filter);
        if is_claimed_filter(inner, shared.ext.claimed_prefix()) {
            // Claimed topics are granted exactly, never by wildcard or shared group, at most
            // at QoS 1.
            let granted = opts.qos.min(QoS::AtLeastOnce);
            if filter != inner
                || has_wildcards(filter)
                || st.session.user().is_none()
                || !shared.ext.authorize_subscribe(&st.session, filter)
            {
                debug!(conn = st.session.conn_id, %filter, "subscription denied");
                return SubCode::NotAuthorized;
            }
            st.session.add_claimed(filter.to_string(), granted);
            shared.ext.on_subscribed(&st.session, filter);
            return SubCode::Granted(granted);
        }
        if !shared.acl.can_subscribe(&st.session.principal, filter) {
            debug!(conn = st.session.conn_id, %filter, "subscription denied by ACL");
            return SubCode::NotAuthorized;
        }
        let rs = match &st.general {
            Some(rs) => rs.clone(),
            None => {
                let rs = shared.router.session(&st.session);
                rs.set_expiry(st.expiry);
                st.general = Some(rs.clone());
                rs
            }
        };
        match shared.router.subscribe(&rs, filter, opts, id) {
            Some(out) => {
                retained.extend(out);
                SubCode::Granted(opts.qos)
            }
            None => {
                debug!(conn = st.session.conn_id, "subscription limit reached");
                SubCode::QuotaExceeded
            }
        }
    }

    /// Removes one subscription; true if it existed.
    pub(super) fn unsubscribe_one(&mut self, st: &mut State, filter: &str) -> bool {
        if st.session.remove_claimed(filter) {
            return true;
        }
        match &st.general {
            Some(rs) => self.shared.router.unsubscribe(rs, filter),
            None => false,
        }
    }
}

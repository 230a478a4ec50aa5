//! The subscriptions of this node: for each (tenant, schema, table), the joined channels that
//! want its changes, with their bindings, claims and outbox (PROTOCOL.md 6.1, 6.3).
//!
//! Separate from the hub's rooms because each delivery is personal: it carries the ids of the
//! channel's own bindings that matched, passes the channel's own filters, and is checked against
//! the channel's own claims. The dispatcher reads a table's subscriber list as one immutable
//! snapshot (`Arc<[..]>`, replaced on every subscribe and unsubscribe), so matching a change never
//! holds a lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use super::binding::EventFilter;
use super::filter::CompiledFilter;
use crate::hub::{ChannelSlot, Outbox};
use crate::phoenix::Vsn;
use crate::types::{ConnId, TenantId};

/// A table by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TableName {
    /// Schema.
    pub schema: Arc<str>,
    /// Table.
    pub table: Arc<str>,
}

/// The role and claims a subscriber's changes are checked with; the JSON text is the RLS
/// grouping key, so equal claims share one check.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct SubscriberAuth {
    /// `claims.role`.
    pub role: String,
    /// The claims as JSON text.
    pub claims: String,
}

/// One binding of a channel, as it applies to one table.
#[derive(Clone, Debug)]
pub(crate) struct TableBinding {
    /// The id sent in the join reply (PROTOCOL.md 3.2).
    pub id: u64,
    /// `event`.
    pub event: EventFilter,
    /// `filter`, compiled against the table.
    pub filter: Option<CompiledFilter>,
}

/// Which columns a subscriber receives: those its role may `SELECT`, narrowed by `select` to
/// the selected and key columns. Shared between subscribers with the same view, so a change is
/// encoded once per distinct view.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct ColumnView {
    /// Column names withheld, sorted.
    pub hidden: Vec<String>,
    /// `select` plus the key columns, sorted; `None` for every visible column.
    pub only: Option<Vec<String>>,
}

impl ColumnView {
    /// Returns true when the view shows `column`.
    pub(crate) fn shows(&self, column: &str) -> bool {
        self.hidden
            .binary_search_by(|h| h.as_str().cmp(column))
            .is_err()
            && self
                .only
                .as_ref()
                .is_none_or(|only| only.binary_search_by(|o| o.as_str().cmp(column)).is_ok())
    }
}

/// A channel and where its deliveries go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ChannelKey {
    /// The connection.
    pub conn: ConnId,
    /// The channel within it.
    pub slot: ChannelSlot,
}

/// One channel's interest in one table.
#[derive(Debug)]
pub(crate) struct Subscription {
    /// Which channel.
    pub channel: ChannelKey,
    /// Its connection's queue.
    pub outbox: Outbox,
    /// Its wire format.
    pub vsn: Vsn,
    /// Its full topic (`realtime:<sub_topic>`).
    pub topic: Arc<str>,
    /// Its join_ref, for the channel's `system` notices.
    pub join_ref: Option<Arc<str>>,
    /// Its bindings that cover this table.
    pub bindings: Vec<TableBinding>,
    /// Role and claims; replaced on token refresh.
    pub auth: RwLock<Arc<SubscriberAuth>>,
    /// What the subscriber may see of a row.
    pub view: Arc<ColumnView>,
    /// Whether the channel got `Subscribed to PostgreSQL` (shared by its tables).
    pub notified: Arc<std::sync::atomic::AtomicBool>,
}

impl Subscription {
    /// The current role and claims.
    pub(crate) fn auth(&self) -> Arc<SubscriberAuth> {
        self.auth.read().expect("auth lock").clone()
    }
}

/// What the dispatcher needs to know of a table beyond the stream's own description of it,
/// read from the catalog when a channel subscribes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableMeta {
    /// The table's OID.
    pub oid: u32,
    /// `relrowsecurity`: changes are checked as each subscriber.
    pub rls_enabled: bool,
    /// Primary key columns, in key order (empty: the table has none).
    pub primary_key: Vec<String>,
}

/// A table's subscriptions at one moment.
#[derive(Debug)]
pub(crate) struct TableSubs {
    /// The table as last read from the catalog.
    pub meta: Arc<TableMeta>,
    /// Every subscribed channel.
    pub subs: Vec<Arc<Subscription>>,
}

type Snapshot = Arc<TableSubs>;

#[derive(Default, Debug)]
struct TenantTables {
    tables: HashMap<TableName, Snapshot>,
}

/// Every subscription of this node, by tenant and table.
#[derive(Default, Debug)]
pub(crate) struct Registry {
    tenants: RwLock<HashMap<TenantId, TenantTables>>,
    /// Serializes writers, so snapshots are replaced in order.
    write: Mutex<()>,
}

impl Registry {
    /// Creates an empty registry.
    pub(crate) fn new() -> Registry {
        Registry::default()
    }

    /// Adds the subscriptions of one channel (one per table) of `tenant`; each table's
    /// metadata replaces what was known.
    pub(crate) fn insert(
        &self,
        tenant: &TenantId,
        subs: Vec<(TableName, Arc<TableMeta>, Arc<Subscription>)>,
    ) {
        let _w = self.write.lock().expect("registry write lock");
        let mut tenants = self.tenants.write().expect("registry lock");
        let entry = tenants.entry(tenant.clone()).or_default();
        for (table, meta, sub) in subs {
            let mut next: Vec<Arc<Subscription>> = entry
                .tables
                .get(&table)
                .map(|s| s.subs.clone())
                .unwrap_or_default();
            next.push(sub);
            entry
                .tables
                .insert(table, Arc::new(TableSubs { meta, subs: next }));
        }
    }

    /// Removes every subscription of `channel` of `tenant`; returns true when the tenant has no
    /// subscriptions left.
    pub(crate) fn remove(&self, tenant: &TenantId, channel: &ChannelKey) -> bool {
        let _w = self.write.lock().expect("registry write lock");
        let mut tenants = self.tenants.write().expect("registry lock");
        let Some(entry) = tenants.get_mut(tenant) else {
            return true;
        };
        entry.tables.retain(|_, snapshot| {
            if snapshot.subs.iter().any(|s| &s.channel == channel) {
                let subs: Vec<Arc<Subscription>> = snapshot
                    .subs
                    .iter()
                    .filter(|s| &s.channel != channel)
                    .cloned()
                    .collect();
                *snapshot = Arc::new(TableSubs {
                    meta: snapshot.meta.clone(),
                    subs,
                });
            }
            !snapshot.subs.is_empty()
        });
        let empty = entry.tables.is_empty();
        if empty {
            tenants.remove(tenant);
        }
        empty
    }

    /// Replaces the role and claims of `channel` (a token refresh).
    pub(crate) fn refresh_auth(
        &self,
        tenant: &TenantId,
        channel: &ChannelKey,
        auth: Arc<SubscriberAuth>,
    ) {
        let tenants = self.tenants.read().expect("registry lock");
        let Some(entry) = tenants.get(tenant) else {
            return;
        };
        for snapshot in entry.tables.values() {
            for sub in snapshot.subs.iter().filter(|s| &s.channel == channel) {
                *sub.auth.write().expect("auth lock") = auth.clone();
            }
        }
    }

    /// The subscriptions to `table` of `tenant`, as one snapshot.
    pub(crate) fn subscribers(&self, tenant: &TenantId, table: &TableName) -> Option<Snapshot> {
        let tenants = self.tenants.read().expect("registry lock");
        tenants.get(tenant)?.tables.get(table).cloned()
    }

    /// Every subscription of `tenant`, once per channel (for a `system` notice to all).
    pub(crate) fn channels(&self, tenant: &TenantId) -> Vec<Arc<Subscription>> {
        let tenants = self.tenants.read().expect("registry lock");
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        if let Some(entry) = tenants.get(tenant) {
            for sub in entry.tables.values().flat_map(|s| s.subs.iter()) {
                if seen.insert(sub.channel.clone()) {
                    out.push(sub.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::outbox;

    fn sub(conn: u64, slot: ChannelSlot, ob: &Outbox) -> Arc<Subscription> {
        Arc::new(Subscription {
            channel: ChannelKey {
                conn: ConnId(conn),
                slot,
            },
            outbox: ob.clone(),
            vsn: Vsn::V2,
            topic: "realtime:room".into(),
            join_ref: None,
            bindings: vec![TableBinding {
                id: 7,
                event: EventFilter::All,
                filter: None,
            }],
            auth: RwLock::new(Arc::new(SubscriberAuth {
                role: "anon".into(),
                claims: "{}".into(),
            })),
            view: Arc::new(ColumnView {
                hidden: vec![],
                only: None,
            }),
            notified: Arc::default(),
        })
    }

    fn meta() -> Arc<TableMeta> {
        Arc::new(TableMeta {
            oid: 1,
            rls_enabled: false,
            primary_key: vec!["id".into()],
        })
    }

    fn table(name: &str) -> TableName {
        TableName {
            schema: "public".into(),
            table: name.into(),
        }
    }

    #[test]
    fn channels_come_and_go_by_table() {
        let (ob, _rx, _) = outbox(8);
        let reg = Registry::new();
        let tenant = TenantId::from("t1");
        reg.insert(
            &tenant,
            vec![
                (table("a"), meta(), sub(1, 1, &ob)),
                (table("b"), meta(), sub(1, 1, &ob)),
            ],
        );
        reg.insert(&tenant, vec![(table("a"), meta(), sub(2, 1, &ob))]);
        assert_eq!(reg.subscribers(&tenant, &table("a")).unwrap().subs.len(), 2);
        let before = reg.subscribers(&tenant, &table("a")).unwrap();
        assert_eq!(reg.channels(&tenant).len(), 2);
        let key = ChannelKey {
            conn: ConnId(1),
            slot: 1,
        };
        assert!(!reg.remove(&tenant, &key));
        // A snapshot taken earlier is unchanged; a new one has the rest.
        assert_eq!(before.subs.len(), 2);
        assert_eq!(reg.subscribers(&tenant, &table("a")).unwrap().subs.len(), 1);
        assert!(reg.subscribers(&tenant, &table("b")).is_none());
        assert!(reg.remove(
            &tenant,
            &ChannelKey {
                conn: ConnId(2),
                slot: 1
            }
        ));
        assert!(reg.channels(&tenant).is_empty());
    }

    #[test]
    fn views_hide_unreadable_columns_and_keep_selected_ones() {
        let view = ColumnView {
            hidden: vec!["secret".into()],
            only: Some(vec!["body".into(), "id".into()]),
        };
        assert!(view.shows("id") && view.shows("body"));
        assert!(!view.shows("secret") && !view.shows("other"));
        let all = ColumnView {
            hidden: vec!["secret".into()],
            only: None,
        };
        assert!(all.shows("other") && !all.shows("secret"));
    }
}

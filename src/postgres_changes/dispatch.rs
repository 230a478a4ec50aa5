//! From decoded changes to per-channel deliveries (PROTOCOL.md 6.2-6.5), in three steps so the
//! only wait (the RLS check) happens between two pure ones:
//!
//! 1. [`plan`]: for each change of the batch, in commit order, the channels whose bindings
//!    accept its action and whose filters pass (a DELETE is matched against its old row), and,
//!    for tables with row-level security, the keys each distinct (role, claims) set must be
//!    checked for;
//! 2. the caller runs [`Plan::checks`] through [`rls::visible_rows`](super::rls::visible_rows),
//!    one statement per table per batch;
//! 3. [`Plan::deliver`]: renders each change once per distinct column view and queues one frame
//!    per channel, with that channel's matching ids, in commit order.
//!
//! A channel whose RLS check failed gets an error-only payload for that change (401 when its
//! role may not read the table); every other channel is unaffected.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::binding::EventFilter;
use super::filter::ColumnValue;
use super::payload::{self, ChangeData, ChangeKind, OutColumn};
use super::pgoutput::{self, Message, OldKind, Relation, TupleValue};
use super::registry::{ColumnView, Registry, SubscriberAuth, Subscription, TableName, TableSubs};
use super::rls::{RlsCheck, Visibility};
use super::values;
use crate::hub::{FanoutKind, Outbound};
use crate::types::TenantId;

/// The error of a change on a table without a primary key (PROTOCOL.md 6.3).
pub(crate) const ERROR_NO_PRIMARY_KEY: &str = "Error 400: Bad Request, no primary key";
/// The error of a change the subscriber's role may not read.
pub(crate) const ERROR_UNAUTHORIZED: &str = "Error 401: Unauthorized";
/// The error of a change whose RLS check failed for another reason.
pub(crate) const ERROR_RLS_FAILED: &str = "Error 500: Unable to check row level security";

/// One row change of a committed transaction: the raw pgoutput message (I, U or D) and the
/// table as the stream described it when the change was read.
#[derive(Clone, Debug)]
pub(crate) struct PendingChange {
    /// The table.
    pub relation: Arc<Relation>,
    /// The pgoutput message.
    pub raw: Bytes,
    /// The transaction's commit time, formatted (PROTOCOL.md 6.4).
    pub commit_timestamp: Arc<str>,
}

struct Decoded<'a> {
    kind: ChangeKind,
    new: Option<Vec<TupleValue<'a>>>,
    old: Option<(OldKind, Vec<TupleValue<'a>>)>,
}

fn decode(change: &PendingChange) -> Option<Decoded<'_>> {
    match pgoutput::decode(&change.raw).ok()? {
        Message::Insert(m) => Some(Decoded {
            kind: ChangeKind::Insert,
            new: Some(m.new.iter().collect()),
            old: None,
        }),
        Message::Update(m) => Some(Decoded {
            kind: ChangeKind::Update,
            new: Some(m.new.iter().collect()),
            old: m.old.map(|(kind, t)| (kind, t.iter().collect())),
        }),
        Message::Delete(m) => Some(Decoded {
            kind: ChangeKind::Delete,
            new: None,
            old: Some((m.old_kind, m.old.iter().collect())),
        }),
        _ => None,
    }
}

fn text<'a>(value: &TupleValue<'a>) -> Option<ColumnValue<'a>> {
    match value {
        TupleValue::Null => Some(ColumnValue::Null),
        TupleValue::Text(bytes) => std::str::from_utf8(bytes).ok().map(ColumnValue::Text),
        TupleValue::UnchangedToast | TupleValue::Binary(_) => None,
    }
}

impl Decoded<'_> {
    /// The value of column `i` in the new image (an unchanged TOAST value is taken from a full
    /// old image when there is one).
    fn new_value(&self, i: usize) -> Option<&TupleValue<'_>> {
        let value = self.new.as_ref()?.get(i)?;
        if matches!(value, TupleValue::UnchangedToast) {
            return match &self.old {
                Some((OldKind::Full, old)) => old.get(i),
                _ => None,
            };
        }
        Some(value)
    }

    /// The value of column `i` in the old image; with only the key sent, other columns are
    /// absent.
    fn old_value(&self, relation: &Relation, i: usize) -> Option<&TupleValue<'_>> {
        let (kind, old) = self.old.as_ref()?;
        if *kind == OldKind::Key && !relation.columns.get(i)?.key {
            return None;
        }
        old.get(i)
            .filter(|v| !matches!(v, TupleValue::UnchangedToast))
    }

    /// The row filters are matched against: the new row, or the old one for a DELETE.
    fn filter_value(&self, relation: &Relation, i: usize) -> Option<ColumnValue<'_>> {
        match self.kind {
            ChangeKind::Delete => self.old_value(relation, i).and_then(text),
            _ => self.new_value(i).and_then(text),
        }
    }

    fn action(&self) -> EventFilter {
        match self.kind {
            ChangeKind::Insert => EventFilter::Insert,
            ChangeKind::Update => EventFilter::Update,
            ChangeKind::Delete => EventFilter::Delete,
        }
    }
}

/// What became of one (change, channel) pair after the RLS step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Deliver,
    Hidden,
    Unauthorized,
    CheckFailed,
}

struct Candidate {
    change: usize,
    /// Index of the subscription in the change's table snapshot (`Plan::tables`).
    sub: usize,
    /// The matching binding ids: `Plan::ids[ids.0..ids.1]`.
    ids: (usize, usize),
    /// Index into `Plan::checks` and the group within it, when the change needs an RLS check.
    check: Option<(usize, usize)>,
    verdict: Verdict,
}

/// The RLS checks of one table for one batch: one entry per distinct (role, claims) set, with
/// the changes (indices into the batch) it must be checked for.
#[derive(Debug)]
pub(crate) struct TableChecks {
    /// The table's OID.
    pub oid: u32,
    /// Its primary key columns.
    pub key_columns: Vec<String>,
    /// The sets and the changes each must be checked for, in batch order.
    pub groups: Vec<(Arc<SubscriberAuth>, Vec<usize>)>,
}

/// One table's checks in the form [`rls::visible_rows`](super::rls::visible_rows) takes: each
/// set with its keys (shared by sets that probe the same changes, as every set
/// does when nothing filters).
#[derive(Debug)]
pub(crate) struct RlsRequest {
    /// The table's OID.
    pub oid: u32,
    /// Its primary key columns.
    pub key_columns: Vec<String>,
    /// Each set and its keys, flattened (see [`RlsCheck::keys`]).
    pub sets: Vec<(Arc<SubscriberAuth>, Arc<Vec<String>>)>,
}

impl RlsRequest {
    /// The checks, borrowing this request.
    pub(crate) fn as_checks(&self) -> Vec<RlsCheck<'_>> {
        self.sets
            .iter()
            .map(|(auth, keys)| RlsCheck {
                role: &auth.role,
                claims: &auth.claims,
                keys,
            })
            .collect()
    }
}

/// What one batch does, once its RLS checks are answered.
pub(crate) struct Plan<'a> {
    changes: &'a [PendingChange],
    decoded: Vec<Option<Decoded<'a>>>,
    tables: Vec<Option<Arc<TableSubs>>>,
    candidates: Vec<Candidate>,
    /// The RLS checks to run, one entry per table.
    pub checks: Vec<TableChecks>,
    /// The primary key of each change that needs a check (text form, key order).
    keys: Vec<Option<Vec<String>>>,
    /// Binding ids of every candidate, back to back.
    ids: Vec<u64>,
}

/// Counts of one delivered batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Delivered {
    /// Frames queued.
    pub frames: usize,
    /// Frames a full or closed connection queue refused (the connection is closed as slow).
    pub refused: usize,
    /// (change, channel) pairs the RLS check hid.
    pub hidden: usize,
}

fn key_values(
    relation: &Relation,
    decoded: &Decoded<'_>,
    primary_key: &[String],
) -> Option<Vec<String>> {
    primary_key
        .iter()
        .map(|name| {
            let i = relation.columns.iter().position(|c| &c.name == name)?;
            match decoded.new_value(i).and_then(text)? {
                ColumnValue::Text(t) => Some(t.to_string()),
                ColumnValue::Null => None,
            }
        })
        .collect()
}

/// Step 1: matches every change of `changes` against the subscriptions of `tenant`.
pub(crate) fn plan<'a>(
    tenant: &TenantId,
    registry: &Registry,
    changes: &'a [PendingChange],
) -> Plan<'a> {
    let mut snapshots: HashMap<(&str, &str), Option<Arc<TableSubs>>> = HashMap::new();
    let mut plan = Plan {
        changes,
        decoded: Vec::with_capacity(changes.len()),
        tables: Vec::with_capacity(changes.len()),
        candidates: Vec::new(),
        checks: Vec::new(),
        keys: Vec::with_capacity(changes.len()),
        ids: Vec::new(),
    };
    // (table oid, the subscription's claims) -> (index in checks, group index): by pointer
    // first (one lookup per candidate), merged by value when a pointer is first seen.
    let mut by_pointer: HashMap<(u32, *const Subscription), (usize, usize)> = HashMap::new();
    let mut groups: HashMap<(u32, Arc<SubscriberAuth>), (usize, usize)> = HashMap::new();
    let mut table_checks: HashMap<u32, usize> = HashMap::new();
    for (index, change) in changes.iter().enumerate() {
        let relation = &change.relation;
        let subs = snapshots
            .entry((relation.schema.as_str(), relation.name.as_str()))
            .or_insert_with(|| {
                registry.subscribers(
                    tenant,
                    &TableName {
                        schema: relation.schema.as_str().into(),
                        table: relation.name.as_str().into(),
                    },
                )
            })
            .clone();
        let decoded = subs.as_ref().and_then(|_| decode(change));
        let mut key_of_change = None;
        if let (Some(subs), Some(row)) = (&subs, &decoded) {
            let action = row.action();
            let lookup = |name: &str| {
                let i = relation.columns.iter().position(|c| c.name == name)?;
                row.filter_value(relation, i)
            };
            let needs_check = subs.meta.rls_enabled
                && row.kind != ChangeKind::Delete
                && !subs.meta.primary_key.is_empty();
            let key = if needs_check {
                key_values(relation, row, &subs.meta.primary_key)
            } else {
                None
            };
            for (sub_index, sub) in subs.subs.iter().enumerate() {
                let start = plan.ids.len();
                plan.ids.extend(
                    sub.bindings
                        .iter()
                        .filter(|b| b.event.accepts(action))
                        .filter(|b| b.filter.as_ref().is_none_or(|f| f.matches(lookup)))
                        .map(|b| b.id),
                );
                if plan.ids.len() == start {
                    continue;
                }
                let mut candidate = Candidate {
                    change: index,
                    sub: sub_index,
                    ids: (start, plan.ids.len()),
                    check: None,
                    verdict: Verdict::Deliver,
                };
                if needs_check {
                    match &key {
                        None => candidate.verdict = Verdict::Hidden,
                        Some(_) => {
                            let pointer = (subs.meta.oid, Arc::as_ptr(sub));
                            let slot = *by_pointer.entry(pointer).or_insert_with(|| {
                                let auth = sub.auth();
                                *groups
                                    .entry((subs.meta.oid, auth.clone()))
                                    .or_insert_with(|| {
                                        let t = *table_checks.entry(subs.meta.oid).or_insert_with(
                                            || {
                                                plan.checks.push(TableChecks {
                                                    oid: subs.meta.oid,
                                                    key_columns: subs.meta.primary_key.clone(),
                                                    groups: Vec::new(),
                                                });
                                                plan.checks.len() - 1
                                            },
                                        );
                                        plan.checks[t].groups.push((auth, Vec::new()));
                                        (t, plan.checks[t].groups.len() - 1)
                                    })
                            });
                            let changes = &mut plan.checks[slot.0].groups[slot.1].1;
                            if changes.last() != Some(&index) {
                                changes.push(index);
                            }
                            candidate.check = Some(slot);
                        }
                    }
                }
                plan.candidates.push(candidate);
            }
            key_of_change = key;
        }
        plan.decoded.push(decoded);
        plan.tables.push(subs);
        plan.keys.push(key_of_change);
    }
    plan
}

/// A change's values rendered as JSON text once, shared by every view of it.
struct Rendered {
    buf: String,
    new: Vec<Option<Range<usize>>>,
    old: Vec<Option<Range<usize>>>,
}

fn render_value(
    buf: &mut String,
    ty: values::PgType,
    value: Option<&TupleValue<'_>>,
) -> Option<Range<usize>> {
    let start = buf.len();
    match value? {
        TupleValue::Null => buf.push_str("null"),
        TupleValue::Text(bytes) => {
            if values::write_json(buf, ty, bytes).is_err() {
                // Not the shape the type promised: send the text as a string.
                values::write_string(buf, &String::from_utf8_lossy(bytes));
            }
        }
        TupleValue::UnchangedToast | TupleValue::Binary(_) => return None,
    }
    Some(start..buf.len())
}

fn render(relation: &Relation, row: &Decoded<'_>) -> Rendered {
    let mut out = Rendered {
        buf: String::with_capacity(256),
        new: Vec::with_capacity(relation.columns.len()),
        old: Vec::with_capacity(relation.columns.len()),
    };
    for (i, column) in relation.columns.iter().enumerate() {
        let new = if row.kind == ChangeKind::Delete {
            None
        } else {
            render_value(&mut out.buf, column.json, row.new_value(i))
        };
        let old_value = row.old_value(relation, i).or_else(|| {
            // Without an old image, an UPDATE's old record is its key (as the original's).
            (row.kind == ChangeKind::Update && row.old.is_none() && column.key)
                .then(|| row.new_value(i))
                .flatten()
        });
        let old = if row.kind == ChangeKind::Insert {
            None
        } else {
            render_value(&mut out.buf, column.json, old_value)
        };
        out.new.push(new);
        out.old.push(old);
    }
    out
}

impl Plan<'_> {
    /// The checks of [`Plan::checks`] with each set's keys as JSON, in the same order.
    pub(crate) fn rls_requests(&self) -> Vec<RlsRequest> {
        self.checks
            .iter()
            .map(|table| {
                let mut memo: HashMap<&[usize], Arc<Vec<String>>> = HashMap::new();
                let sets = table
                    .groups
                    .iter()
                    .map(|(auth, changes)| {
                        let keys = memo
                            .entry(changes.as_slice())
                            .or_insert_with(|| {
                                Arc::new(
                                    changes
                                        .iter()
                                        .filter_map(|&c| self.keys[c].as_ref())
                                        .flatten()
                                        .cloned()
                                        .collect(),
                                )
                            })
                            .clone();
                        (auth.clone(), keys)
                    })
                    .collect();
                RlsRequest {
                    oid: table.oid,
                    key_columns: table.key_columns.clone(),
                    sets,
                }
            })
            .collect()
    }

    /// Step 3: applies the answers of [`Plan::checks`] (`answers[i]` for `checks[i]`, one
    /// [`Visibility`] per group; `None` when that table's check failed as a whole) and queues
    /// every delivery. `max_record_bytes` is the tenant's record size limit.
    pub(crate) fn deliver(
        mut self,
        answers: &[Option<Vec<Visibility>>],
        max_record_bytes: usize,
    ) -> Delivered {
        for candidate in &mut self.candidates {
            let Some((t, g)) = candidate.check else {
                continue;
            };
            candidate.verdict = match answers
                .get(t)
                .and_then(|a| a.as_ref())
                .and_then(|a| a.get(g))
            {
                None => Verdict::CheckFailed,
                Some(Visibility::Failed { sqlstate, .. }) if sqlstate == "42501" => {
                    Verdict::Unauthorized
                }
                Some(Visibility::Failed { .. }) => Verdict::CheckFailed,
                Some(visibility) => match &self.keys[candidate.change] {
                    Some(key) if visibility.sees(key) => Verdict::Deliver,
                    _ => Verdict::Hidden,
                },
            };
        }
        let mut stats = Delivered::default();
        let mut current: Option<(usize, Rendered)> = None;
        let mut encoded: Vec<(*const ColumnView, Arc<str>)> = Vec::new();
        for candidate in &self.candidates {
            let change = &self.changes[candidate.change];
            let relation = &change.relation;
            let Some(row) = &self.decoded[candidate.change] else {
                continue;
            };
            let meta = &self.tables[candidate.change]
                .as_ref()
                .expect("table of a candidate")
                .meta;
            if current.as_ref().is_none_or(|(i, _)| *i != candidate.change) {
                current = Some((candidate.change, render(relation, row)));
                encoded.clear();
            }
            let (_, rendered) = current.as_ref().expect("rendered change");
            let sub = &self.tables[candidate.change]
                .as_ref()
                .expect("table of a candidate")
                .subs[candidate.sub];
            let view = &sub.view;
            let key_hidden = meta.primary_key.iter().any(|k| !view.shows(k));
            let error = match candidate.verdict {
                Verdict::Hidden => {
                    stats.hidden += 1;
                    continue;
                }
                Verdict::Unauthorized => Some(ERROR_UNAUTHORIZED),
                Verdict::CheckFailed => Some(ERROR_RLS_FAILED),
                Verdict::Deliver
                    if row.kind != ChangeKind::Delete && meta.primary_key.is_empty() =>
                {
                    Some(ERROR_NO_PRIMARY_KEY)
                }
                Verdict::Deliver if key_hidden => Some(ERROR_UNAUTHORIZED),
                Verdict::Deliver => None,
            };
            let data: Arc<str> = match error {
                Some(error) => {
                    payload::error_data(&relation.schema, &relation.name, row.kind, &[error]).into()
                }
                None => {
                    let ptr = Arc::as_ptr(view);
                    if let Some((_, data)) = encoded.iter().find(|(p, _)| *p == ptr) {
                        data.clone()
                    } else {
                        let only_key = meta.rls_enabled && row.kind == ChangeKind::Delete;
                        let columns: Vec<OutColumn<'_>> = relation
                            .columns
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| view.shows(&c.name))
                            .map(|(i, c)| OutColumn {
                                name: &c.name,
                                type_name: &c.type_name,
                                new: rendered.new[i].clone().map(|r| &rendered.buf[r]),
                                old: if only_key && !meta.primary_key.contains(&c.name) {
                                    None
                                } else {
                                    rendered.old[i].clone().map(|r| &rendered.buf[r])
                                },
                            })
                            .collect();
                        let data: Arc<str> = ChangeData {
                            schema: &relation.schema,
                            table: &relation.name,
                            commit_timestamp: &change.commit_timestamp,
                            kind: row.kind,
                            columns: &columns,
                            errors: &[],
                        }
                        .encode(max_record_bytes)
                        .into();
                        encoded.push((ptr, data.clone()));
                        data
                    }
                }
            };
            let ids = &self.ids[candidate.ids.0..candidate.ids.1];
            let frame = payload::change_frame(sub.vsn, &sub.topic, ids, &data);
            if sub.outbox.push(Outbound::Fanout {
                slot: sub.channel.slot,
                kind: FanoutKind::PostgresChanges,
                frame,
            }) {
                stats.frames += 1;
            } else {
                stats.refused += 1;
            }
        }
        stats
    }
}

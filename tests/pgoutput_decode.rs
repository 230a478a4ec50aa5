//! The pgoutput decoder and the value conversion against a real PostgreSQL 15: rows of many
//! types are written to a publication, the slot's raw protocol-1 messages are read with
//! `pg_logical_slot_get_binary_changes`, decoded, and every column's JSON is compared with what
//! Postgres's own `to_jsonb` gives for the same row image (PROTOCOL.md 6.4).
//!
//! Values are compared as parsed JSON. Scalars other than `json`/`jsonb` are also compared as
//! exact text, which is what proves that `numeric` keeps its trailing zeros and that floats are
//! expanded as `to_jsonb` expands them. `json`, `jsonb` and arrays differ from `to_jsonb`'s text
//! only in whitespace (and, for `json`, in key order and duplicate keys, which `to_jsonb`
//! normalises).

mod common;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio_postgres::Client;

use realtime::postgres_changes::pgoutput::{
    Begin, Message, OldKind, Relation, RelationCache, ReplicaIdentity, Tuple, TupleValue, decode,
};
use realtime::postgres_changes::values::{
    CatalogType, JsonKind, PgType, format_commit_timestamp, write_json,
};

/// What `to_jsonb(t)` gives for one row: column name → the column's jsonb text.
type Snapshot = HashMap<String, String>;

/// One change the stream must carry, in commit order.
#[derive(Debug)]
enum Expected {
    Insert {
        table: u32,
        new: Snapshot,
    },
    Update {
        table: u32,
        old: Option<(OldKind, Snapshot)>,
        new: Snapshot,
        /// Columns the new image must send as unchanged TOAST.
        unchanged: Vec<&'static str>,
    },
    Delete {
        table: u32,
        old: (OldKind, Snapshot),
    },
    Truncate {
        tables: Vec<u32>,
        options: u8,
    },
    Message {
        transactional: bool,
        prefix: &'static str,
        content: Vec<u8>,
    },
}

const SCHEMA: &str = r#"
create type mood as enum ('happy', 'sad', 'it''s "complicated"');
create domain posint as int4 check (value > 0);
create domain short_text as text;
create table kitchen (
    id int8 primary key,
    c_int2 int2, c_int4 int4, c_int8 int8, c_oid oid,
    c_float4 float4, c_float8 float8, c_numeric numeric, c_numeric_scaled numeric(10, 3),
    c_bool bool, c_json json, c_jsonb jsonb,
    c_text text, c_varchar varchar(20), c_char char(5), c_name name,
    c_timestamp timestamp, c_timestamptz timestamptz, c_date date, c_time time, c_timetz timetz,
    c_interval interval, c_uuid uuid, c_bytea bytea, c_inet inet, c_money money, c_point point,
    c_int4range int4range, c_mood mood, c_posint posint, c_short short_text,
    a_int4 int4[], a_text text[], a_bool bool[], a_float8 float8[], a_numeric numeric[],
    a_jsonb jsonb[], a_json json[], a_timestamptz timestamptz[], a_timestamp timestamp[],
    a_date date[], a_uuid uuid[], a_bytea bytea[], a_box box[], a_mood mood[], a_posint posint[],
    a_int2d int4[][], a_bounds int4[], a_int3d int4[],
    c_int2vector int2vector, c_oidvector oidvector
);
create table kitchen_full (like kitchen including all);
alter table kitchen_full replica identity full;
create table toasty (id int primary key, big text, n int);
alter table toasty alter column big set storage external;
create table toasty_full (id int primary key, big text, n int);
alter table toasty_full alter column big set storage external;
alter table toasty_full replica identity full;
create schema "Odd ""Schema""";
create table "Odd ""Schema"""."we.ird Tab""le" ("Köl umn" text primary key, "select" int, "ü ""q""" text[]);
"#;

/// Every column set, with awkward but ordinary values.
const ROW_TYPICAL: &str = r#"(1,
    -32768, 2147483647, -9223372036854775808, 4294967295,
    1.5e-10, 1e30, 1.50, 2.5,
    true, '{"b": 1, "a": [1, 2.50, "x\"y"], "a": null}', '{"b": {"c": [1, 2]}, "a": "é\u0001"}',
    E'quote " backslash \\ newline \n tab \t ctrl \x01 é 😀', 'short', 'ab', 'a_name',
    '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.5+00', '2024-02-29', '23:59:59.999999', '10:00:00+05:30',
    '1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00ff10', '192.168.0.1/24', 12.34, '(1.5,2)',
    '[1,10)', 'it''s "complicated"', 5, 'dom text',
    '{1,NULL,3}', E'{"a b",NULL,"NULL","","x\\"y","a\\\\b",plain,"c,d","{e}",é}', '{t,f}',
    '{1.5e-10,NaN,-Infinity,1e300}', '{1.50,NaN,-0.001}',
    array['{"a": [1, "x\"y"]}'::jsonb, 'null', '"s"'], array['{"k" : 1, "k": 2}'::json],
    array['2024-01-02 03:04:05+00'::timestamptz, 'infinity', '1938-06-01 12:00:00+00', '0044-03-15 10:00:00+00 BC'], '{"2024-01-02 03:04:05",infinity}',
    '{2024-01-01,infinity}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', array['\x0102'::bytea, '\x'],
    array['(1,1),(0,0)'::box, '(2,2),(1,1)'], '{happy,"it''s \"complicated\""}', '{1,2}',
    '{{1,2},{3,NULL}}', '[0:2]={1,2,3}', '{{{1},{2}},{{3},{4}}}',
    '1 2 3', '1 2')"#;

/// Special values: infinities, NaN, BC, local mean time offsets, empty arrays.
const ROW_EDGES: &str = r#"(2,
    0, -1, 9223372036854775807, 0,
    'NaN', '-0', 'Infinity', 'NaN',
    false, '"just a string"', 'null',
    '', '', '', '',
    '0044-03-15 10:00:00 BC', '1850-01-01 00:00:00+00', '0044-03-15 BC', '24:00:00', '00:00:00-03:30',
    '-1 days +02:00', '00000000-0000-0000-0000-000000000000', '\x', '::1', -1, '(0,0)',
    'empty', 'happy', 1, '',
    '{}', '{}', '{NULL}', '{Infinity,-0,1.25e-7}', '{-Infinity}',
    '{}', array['[]'::json], array['-infinity'::timestamptz, '1850-01-01 00:00:00+00'],
    array['0044-03-15 10:00:00 BC'::timestamp], '{0044-03-15 BC}', '{}', '{NULL}',
    '{}', '{}', '{}', '{{1},{2}}', '[-2:-1]={7,8}', '{}',
    '', '')"#;

/// The table with a quote, a dot and spaces in its names.
const ODD_TABLE: &str = r#""Odd ""Schema"""."we.ird Tab""le""#;

async fn snapshot(client: &Client, table: &str, condition: &str) -> Snapshot {
    let rows = client
        .query(
            &format!(
                "select e.key, e.value::text from {table} t, jsonb_each(to_jsonb(t)) e where {condition}"
            ),
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty(), "no row in {table} where {condition}");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

async fn table_oid(client: &Client, table: &str) -> u32 {
    client
        .query_one(
            &format!("select '{}'::regclass::oid", table.replace('\'', "''")),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Runs one statement in its own transaction.
async fn run(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Writes the changes and returns what the stream must say about them.
async fn write_changes(client: &Client) -> (Vec<Expected>, u32) {
    let kitchen = table_oid(client, "kitchen").await;
    let kitchen_full = table_oid(client, "kitchen_full").await;
    let toasty = table_oid(client, "toasty").await;
    let toasty_full = table_oid(client, "toasty_full").await;
    let odd_name = ODD_TABLE;
    let odd = table_oid(client, odd_name).await;
    let mut expected = Vec::new();

    for (table, oid) in [("kitchen", kitchen), ("kitchen_full", kitchen_full)] {
        for (id, row) in [(1, ROW_TYPICAL), (2, ROW_EDGES), (3, "(3)")] {
            run(client, &format!("insert into {table} values {row}")).await;
            let new = snapshot(client, table, &format!("id = {id}")).await;
            expected.push(Expected::Insert { table: oid, new });
        }
    }

    // Default identity: no old image unless the key changes, then the key only.
    run(client, "update kitchen set c_text = 'changed' where id = 1").await;
    let new = snapshot(client, "kitchen", "id = 1").await;
    expected.push(Expected::Update {
        table: kitchen,
        old: None,
        new,
        unchanged: vec![],
    });
    let old = snapshot(client, "kitchen", "id = 3").await;
    run(client, "update kitchen set id = 10 where id = 3").await;
    let new = snapshot(client, "kitchen", "id = 10").await;
    expected.push(Expected::Update {
        table: kitchen,
        old: Some((OldKind::Key, old)),
        new,
        unchanged: vec![],
    });
    let old = snapshot(client, "kitchen", "id = 2").await;
    run(client, "delete from kitchen where id = 2").await;
    expected.push(Expected::Delete {
        table: kitchen,
        old: (OldKind::Key, old),
    });

    // Full identity: the whole old row.
    let old = snapshot(client, "kitchen_full", "id = 1").await;
    run(client, "update kitchen_full set c_int4 = 7 where id = 1").await;
    let new = snapshot(client, "kitchen_full", "id = 1").await;
    expected.push(Expected::Update {
        table: kitchen_full,
        old: Some((OldKind::Full, old)),
        new,
        unchanged: vec![],
    });
    let old = snapshot(client, "kitchen_full", "id = 2").await;
    run(client, "delete from kitchen_full where id = 2").await;
    expected.push(Expected::Delete {
        table: kitchen_full,
        old: (OldKind::Full, old),
    });

    // A big out-of-line value left alone by an update is not sent again ('u'); with FULL
    // identity the old image still carries it.
    let big = "select string_agg(md5(i::text), '') from generate_series(1, 4000) i";
    for (table, oid, full) in [
        ("toasty", toasty, false),
        ("toasty_full", toasty_full, true),
    ] {
        run(
            client,
            &format!("insert into {table} values (1, ({big}), 1)"),
        )
        .await;
        let new = snapshot(client, table, "id = 1").await;
        expected.push(Expected::Insert { table: oid, new });
        let old = snapshot(client, table, "id = 1").await;
        run(client, &format!("update {table} set n = 2 where id = 1")).await;
        let new = snapshot(client, table, "id = 1").await;
        expected.push(Expected::Update {
            table: oid,
            old: full.then_some((OldKind::Full, old)),
            new,
            unchanged: vec!["big"],
        });
    }

    run(
        client,
        &format!(r#"insert into {odd_name} values ('ké y', 1, '{{"a\"b",NULL}}')"#),
    )
    .await;
    let condition = r#""Köl umn" = 'ké y'"#;
    let new = snapshot(client, odd_name, condition).await;
    expected.push(Expected::Insert { table: odd, new });
    run(client, &format!(r#"update {odd_name} set "select" = 2"#)).await;
    let new = snapshot(client, odd_name, condition).await;
    expected.push(Expected::Update {
        table: odd,
        old: None,
        new,
        unchanged: vec![],
    });

    // One explicit transaction with a row and a transactional message; its xid is checked.
    client.batch_execute("begin").await.unwrap();
    run(client, "insert into kitchen (id) values (100)").await;
    let txid: i64 = client
        .query_one("select txid_current()", &[])
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "select pg_logical_emit_message(true, 'prefix', 'content')",
            &[],
        )
        .await
        .unwrap();
    client.batch_execute("commit").await.unwrap();
    let new = snapshot(client, "kitchen", "id = 100").await;
    expected.push(Expected::Insert {
        table: kitchen,
        new,
    });
    expected.push(Expected::Message {
        transactional: true,
        prefix: "prefix",
        content: b"content".to_vec(),
    });

    client
        .execute(
            "select pg_logical_emit_message(false, 'nt', '\\x00ff'::bytea)",
            &[],
        )
        .await
        .unwrap();
    expected.push(Expected::Message {
        transactional: false,
        prefix: "nt",
        content: vec![0, 0xff],
    });

    run(client, "truncate toasty restart identity").await;
    expected.push(Expected::Truncate {
        tables: vec![toasty],
        options: 2,
    });
    (expected, u32::try_from(txid & 0xffff_ffff).unwrap())
}

/// The kinds whose JSON text must equal `to_jsonb`'s text exactly.
fn exact_text(ty: PgType) -> bool {
    matches!(ty, PgType::Scalar(kind) if kind != JsonKind::Json)
}

/// Checks one row image against `to_jsonb` of the same row. With `key_only`, columns outside
/// the key must be null and only the key columns are compared.
fn check_tuple(
    rel: &Relation,
    tuple: &Tuple<'_>,
    expected: &Snapshot,
    key_only: bool,
    unchanged: &[&str],
    skip: &[&str],
) -> usize {
    assert_eq!(tuple.len(), rel.columns.len(), "{}", rel.name);
    let mut compared = 0;
    for (column, value) in rel.columns.iter().zip(tuple.iter()) {
        if skip.contains(&column.name.as_str()) {
            continue;
        }
        let context = format!("{}.{} ({})", rel.name, column.name, column.type_name);
        let want_text = expected
            .get(&column.name)
            .unwrap_or_else(|| panic!("{context}: not in to_jsonb"));
        let want: Value = serde_json::from_str(want_text).unwrap();
        match value {
            TupleValue::Null if key_only && !column.key => continue,
            TupleValue::Null => assert_eq!(want, Value::Null, "{context}"),
            TupleValue::UnchangedToast => {
                assert!(
                    unchanged.contains(&column.name.as_str()),
                    "{context}: unchanged toast"
                );
                continue;
            }
            TupleValue::Text(text) => {
                assert!(
                    !key_only || column.key,
                    "{context}: a key image holds only key columns"
                );
                let mut got = String::new();
                write_json(&mut got, column.json, text).unwrap_or_else(|e| {
                    panic!("{context}: {e} for {:?}", String::from_utf8_lossy(text))
                });
                let parsed: Value = serde_json::from_str(&got)
                    .unwrap_or_else(|e| panic!("{context}: {got} is not JSON: {e}"));
                assert_eq!(parsed, want, "{context}: ours {got}, to_jsonb {want_text}");
                if exact_text(column.json) {
                    assert_eq!(&got, want_text, "{context}");
                }
            }
            TupleValue::Binary(_) => panic!("{context}: binary value without the binary option"),
        }
        compared += 1;
    }
    assert!(
        unchanged
            .iter()
            .all(|u| rel.columns.iter().any(|c| c.name == *u)),
        "unchanged columns exist"
    );
    compared
}

/// Teaches the cache what the catalog says about a user type: its name, the base of a domain,
/// the element of an array (what the replication layer can do when a Type message arrives).
async fn learn_from_catalog(client: &Client, cache: &mut RelationCache, oid: u32) {
    let row = client
        .query_one(
            "select n.nspname::text, t.typname::text, t.typbasetype,
                    case when t.typcategory = 'A' then t.typelem else 0::oid end
             from pg_type t join pg_namespace n on n.oid = t.typnamespace where t.oid = $1",
            &[&oid],
        )
        .await
        .unwrap();
    let (namespace, name): (String, String) = (row.get(0), row.get(1));
    let catalog = CatalogType {
        namespace: &namespace,
        name: &name,
        base: row.get(2),
        elem: row.get(3),
    };
    cache.learn_type(oid, catalog);
}

/// What a cache fed only with pgoutput messages says about the domain columns: the base type's
/// name (pgoutput names a domain by its base) and conversion, and strings for an array of a
/// domain, whose element type only the catalog knows.
fn check_without_catalog(rel: &Relation, tuple: &Tuple<'_>) {
    for (column, value) in rel.columns.iter().zip(tuple.iter()) {
        let expected_name = match column.name.as_str() {
            "c_posint" => "int4",
            "c_short" => "text",
            "a_posint" => "_posint",
            _ => continue,
        };
        assert_eq!(column.type_name, expected_name, "{}", column.name);
        if let (TupleValue::Text(text), "a_posint") = (value, column.name.as_str()) {
            let mut got = String::new();
            write_json(&mut got, column.json, text).unwrap();
            let elements: Vec<Value> = serde_json::from_str(&got).unwrap();
            assert!(elements.iter().all(Value::is_string), "{got}");
        }
    }
}

/// Checks a freshly described relation against the catalog: column names, `typname`s and the
/// key flags (FULL identity flags every column).
async fn check_relation(client: &Client, rel: &Relation) {
    let rows = client
        .query(
            "select a.attname::text, t.typname::text, coalesce(i.indisprimary, false)
             from pg_attribute a join pg_type t on t.oid = a.atttypid
             left join pg_index i on i.indrelid = a.attrelid and i.indisprimary and a.attnum = any(i.indkey)
             where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped order by a.attnum",
            &[&rel.oid],
        )
        .await
        .unwrap();
    let catalog: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let full = rel.replica_identity == ReplicaIdentity::Full;
    let ours: Vec<(String, String, bool)> = rel
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.type_name.clone(), c.key))
        .collect();
    let want: Vec<(String, String, bool)> = catalog
        .into_iter()
        .map(|(name, ty, pk)| (name, ty, pk || full))
        .collect();
    assert_eq!(ours, want, "{}", rel.name);
}

#[tokio::test]
async fn pgoutput_changes_decode_to_what_to_jsonb_gives() {
    let db = common::fresh_database().await;
    let client = common::connect(&db).await;
    // The decoding session's TimeZone shapes timestamptz text; the snapshots use the same
    // session. Amsterdam has whole-hour offsets today (`+01`, which to_jsonb writes `+01:00`),
    // `+00:20` in 1938 and a local mean time of `+00:19:32` in 1850.
    client
        .batch_execute("set timezone = 'Europe/Amsterdam'")
        .await
        .unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    let publication = format!("pub_{db}");
    let slot = format!("slot_{db}");
    run(
        &client,
        &format!("create publication {publication} for all tables"),
    )
    .await;
    client
        .execute(
            "select pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();

    let started = SystemTime::now();
    let (expected, explicit_xid) = write_changes(&client).await;
    let finished = SystemTime::now();

    let rows = client
        .query(
            "select data from pg_logical_slot_get_binary_changes($1, NULL, NULL,
               'proto_version', '1', 'publication_names', $2, 'messages', 'true')",
            &[&slot, &publication],
        )
        .await
        .unwrap();
    let data: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
    let messages: Vec<Message<'_>> = data
        .iter()
        .map(|d| decode(d).unwrap_or_else(|e| panic!("{e}: {d:?}")))
        .collect();

    let mut cache = RelationCache::new();
    // Fed with the messages only: what the decoder knows without asking the catalog.
    let mut plain = RelationCache::new();
    let mut expected = expected.into_iter();
    let mut open: Option<Begin> = None;
    let mut xids = Vec::new();
    let mut relations_seen = Vec::new();
    let mut types_seen = Vec::new();
    let mut columns_compared = 0;
    let unix_micros = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64;
    let postgres_epoch = 946_684_800_000_000i64;

    for message in &messages {
        plain.apply(message);
        match message {
            Message::Begin(begin) => {
                assert!(open.is_none(), "begin inside a transaction");
                let at = begin.commit_time + postgres_epoch;
                assert!(
                    at >= unix_micros(started) - 1_000_000
                        && at <= unix_micros(finished) + 1_000_000,
                    "commit time {} outside the test's run",
                    format_commit_timestamp(begin.commit_time)
                );
                let formatted = format_commit_timestamp(begin.commit_time);
                assert_eq!(formatted.len(), 24, "{formatted}");
                assert!(formatted.ends_with('Z') && formatted.as_bytes()[10] == b'T');
                xids.push(begin.xid);
                open = Some(*begin);
            }
            Message::Commit(commit) => {
                let begin = open.take().expect("commit without begin");
                assert_eq!(commit.commit_lsn, begin.final_lsn);
                assert_eq!(commit.commit_time, begin.commit_time);
                assert!(commit.end_lsn > commit.commit_lsn);
            }
            Message::Origin(_) => panic!("no origin was set"),
            Message::Type(ty) => {
                cache.apply(message);
                learn_from_catalog(&client, &mut cache, ty.oid).await;
                types_seen.push((ty.namespace.to_owned(), ty.name.to_owned()));
            }
            Message::Relation(rel) => {
                let cached = cache.insert_relation(rel).clone();
                check_relation(&client, &cached).await;
                relations_seen.push(rel.oid);
                if rel.name == "we.ird Tab\"le" {
                    assert_eq!(rel.namespace, "Odd \"Schema\"");
                    let names: Vec<&str> = rel.columns.iter().map(|c| c.name).collect();
                    assert_eq!(names, ["Köl umn", "select", "ü \"q\""]);
                }
            }
            Message::Insert(insert) => {
                assert!(open.is_some(), "row change outside a transaction");
                let Some(Expected::Insert { table, new }) = expected.next() else {
                    panic!("unexpected insert into {}", insert.relation);
                };
                assert_eq!(insert.relation, table);
                let rel = cache.get(table).expect("relation described first");
                columns_compared += check_tuple(rel, &insert.new, &new, false, &[], &[]);
                // Without catalog lookups, only an array of a domain converts differently.
                let plain_rel = plain.get(table).unwrap();
                check_tuple(plain_rel, &insert.new, &new, false, &[], &["a_posint"]);
                check_without_catalog(plain_rel, &insert.new);
            }
            Message::Update(update) => {
                let Some(Expected::Update {
                    table,
                    old,
                    new,
                    unchanged,
                }) = expected.next()
                else {
                    panic!("unexpected update of {}", update.relation);
                };
                assert_eq!(update.relation, table);
                let rel = cache.get(table).unwrap();
                match (update.old, old) {
                    (None, None) => {}
                    (Some((kind, tuple)), Some((want_kind, snapshot))) => {
                        assert_eq!(kind, want_kind);
                        columns_compared +=
                            check_tuple(rel, &tuple, &snapshot, kind == OldKind::Key, &[], &[]);
                    }
                    (got, want) => panic!("old image {got:?}, expected {want:?}"),
                }
                columns_compared += check_tuple(rel, &update.new, &new, false, &unchanged, &[]);
                if !unchanged.is_empty() {
                    let toast = rel.columns.iter().position(|c| c.name == "big").unwrap();
                    assert_eq!(
                        update.new.iter().nth(toast),
                        Some(TupleValue::UnchangedToast)
                    );
                    if let Some((_, old)) = update.old {
                        assert!(
                            matches!(old.iter().nth(toast), Some(TupleValue::Text(t)) if t.len() == 128_000)
                        );
                    }
                }
            }
            Message::Delete(delete) => {
                let Some(Expected::Delete {
                    table,
                    old: (kind, snapshot),
                }) = expected.next()
                else {
                    panic!("unexpected delete from {}", delete.relation);
                };
                assert_eq!(delete.relation, table);
                assert_eq!(delete.old_kind, kind);
                let rel = cache.get(table).unwrap();
                columns_compared +=
                    check_tuple(rel, &delete.old, &snapshot, kind == OldKind::Key, &[], &[]);
            }
            Message::Truncate(truncate) => {
                let Some(Expected::Truncate { tables, options }) = expected.next() else {
                    panic!("unexpected truncate");
                };
                assert_eq!(truncate.relations().collect::<Vec<_>>(), tables);
                assert_eq!(truncate.options, options);
                assert!(truncate.restart_identity() && !truncate.cascade());
            }
            Message::Logical(logical) => {
                let Some(Expected::Message {
                    transactional,
                    prefix,
                    content,
                }) = expected.next()
                else {
                    panic!("unexpected message {logical:?}");
                };
                assert_eq!(logical.transactional, transactional);
                assert_eq!(
                    open.is_some(),
                    transactional,
                    "transactional messages sit inside"
                );
                assert_eq!(logical.prefix, prefix);
                assert_eq!(logical.content, content.as_slice());
                assert!(logical.lsn.0 > 0);
            }
        }
    }
    assert!(open.is_none(), "the last transaction committed");
    let rest: Vec<_> = expected.collect();
    assert!(rest.is_empty(), "changes missing from the stream: {rest:?}");
    assert!(xids.contains(&explicit_xid), "{explicit_xid} in {xids:?}");
    let tables = [
        "kitchen",
        "kitchen_full",
        "toasty",
        "toasty_full",
        ODD_TABLE,
    ];
    for table in tables {
        let oid = table_oid(&client, table).await;
        assert!(relations_seen.contains(&oid), "{table} described");
    }
    assert_eq!(cache.len(), tables.len());
    // pgoutput names a domain by its base type (namespace empty for pg_catalog).
    for (namespace, name) in [
        ("public", "mood"),
        ("", "int4"),
        ("", "text"),
        ("public", "_mood"),
        ("public", "_posint"),
    ] {
        assert!(
            types_seen.contains(&(namespace.to_owned(), name.to_owned())),
            "Type message {namespace}.{name} in {types_seen:?}"
        );
    }
    assert!(
        columns_compared > 300,
        "{columns_compared} columns compared"
    );

    client
        .execute("select pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
}

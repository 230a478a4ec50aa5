//! The tenant `realtime` objects users' SQL relies on (PROTOCOL.md 9.1, 9.4, 11.2), against real
//! Postgres: `realtime.messages` partitioned by UTC day with partitions made at migration,
//! `realtime.topic()`, `realtime.send` / `send_binary` (id injection, `private` default true,
//! errors as warnings, today's partition made on demand), `realtime.broadcast_changes` from a
//! trigger, and migrations that are idempotent and leave a pre-existing schema alone.

mod common;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use realtime::db::{OUR_FUNCTION, TENANT_MIGRATIONS, run_tenant_migrations};
use realtime::types::TenantId;

/// A migrated fresh database and its name.
async fn migrated() -> (tokio_postgres::Client, String) {
    let dbname = common::fresh_database().await;
    let mut client = common::connect(&dbname).await;
    run_tenant_migrations(&mut client, &TenantId::from("schema"))
        .await
        .expect("migrations");
    (client, dbname)
}

/// A connection whose notices (warnings) are collected.
async fn connect_with_notices(
    dbname: &str,
) -> (tokio_postgres::Client, mpsc::UnboundedReceiver<String>) {
    let (client, mut connection) =
        tokio_postgres::connect(&common::pg().conn_string(dbname), tokio_postgres::NoTls)
            .await
            .expect("connect");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notice(notice) = message {
                let _ = tx.send(format!("{}: {}", notice.severity(), notice.message()));
            }
        }
    });
    (client, rx)
}

async fn today(client: &tokio_postgres::Client) -> chrono::NaiveDate {
    client
        .query_one("SELECT (now() AT TIME ZONE 'utc')::date", &[])
        .await
        .unwrap()
        .get(0)
}

fn partition_name(day: chrono::NaiveDate) -> String {
    format!("messages_{}", day.format("%Y_%m_%d"))
}

async fn partitions(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'realtime.messages'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The rows of `realtime.messages`, oldest first, as JSON with the partition each is in.
async fn messages(client: &tokio_postgres::Client) -> Vec<Value> {
    client
        .query(
            "SELECT json_build_object('partition', tableoid::regclass::text, 'id', id,
                    'topic', topic, 'extension', extension, 'event', event, 'private', private,
                    'payload', payload, 'binary_payload', encode(binary_payload, 'hex'))
               FROM realtime.messages ORDER BY inserted_at, id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, Value>(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_functions_and_partitions_exist_after_migration() {
    let (client, _) = migrated().await;
    for signature in [
        "realtime.topic()",
        "realtime.send(jsonb, text, text, boolean)",
        "realtime.send_binary(bytea, text, text, boolean)",
        "realtime.broadcast_changes(text, text, text, text, text, record, record, text)",
    ] {
        let row = client
            .query_one(
                "SELECT to_regprocedure($1) IS NOT NULL,
                        obj_description(to_regprocedure($1), 'pg_proc')",
                &[&signature],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "{signature} exists");
        assert_eq!(
            row.get::<_, Option<String>>(1).as_deref(),
            Some(OUR_FUNCTION)
        );
    }
    let today = today(&client).await;
    let expected: Vec<String> = (-1..=3)
        .map(|d| partition_name(today + chrono::Duration::days(d)))
        .collect();
    assert_eq!(partitions(&client).await, expected);
    let row = client
        .query_one(
            "SELECT c.relrowsecurity, p.partstrat::text,
                    (SELECT column_default FROM information_schema.columns
                      WHERE table_schema = 'realtime' AND table_name = 'messages'
                        AND column_name = 'private')
               FROM pg_class c JOIN pg_partitioned_table p ON p.partrelid = c.oid
              WHERE c.oid = 'realtime.messages'::regclass",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "RLS enabled");
    assert_eq!(row.get::<_, String>(1), "r", "range partitioned");
    assert_eq!(
        row.get::<_, String>(2),
        "false",
        "the column default of 11.2"
    );

    // realtime.topic(): the setting, '' and unset read as null.
    let topic: Option<String> = client
        .query_one("SELECT realtime.topic()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(topic, None);
    let topic: Option<String> = client
        .query_one(
            "SELECT realtime.topic() FROM (SELECT set_config('realtime.topic', 'room1', false)) s",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(topic.as_deref(), Some("room1"));
    client
        .batch_execute("SELECT set_config('realtime.topic', '', false)")
        .await
        .unwrap();
    let topic: Option<String> = client
        .query_one("SELECT realtime.topic()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(topic, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_inserts_into_todays_partition_with_the_id_in_the_payload() {
    let (client, _) = migrated().await;
    let part = format!("realtime.{}", partition_name(today(&client).await));
    client
        .batch_execute(
            r#"SELECT realtime.send('{"t":"hi"}', 'note', 'room1', false);
               SELECT realtime.send('{"t":"private by default"}', 'note', 'room2');
               SELECT realtime.send('{"id":"mine","t":"own id"}', 'note', 'room3', true);
               SELECT realtime.send('[1,2]', 'list', 'room4', false);
               SELECT realtime.send_binary('\x010203'::bytea, 'bin', 'room5');"#,
        )
        .await
        .unwrap();
    let rows = messages(&client).await;
    assert_eq!(rows.len(), 5, "{rows:#?}");
    for row in &rows {
        assert_eq!(row["partition"], part.as_str(), "{row}");
        assert_eq!(row["extension"], "broadcast");
    }
    let by_topic = |t: &str| rows.iter().find(|r| r["topic"] == t).unwrap().clone();
    let r1 = by_topic("room1");
    assert_eq!(r1["event"], "note");
    assert_eq!(r1["private"], false);
    assert_eq!(r1["payload"], json!({"t": "hi", "id": r1["id"]}));
    assert_eq!(
        by_topic("room2")["private"],
        true,
        "private defaults to true"
    );
    let r3 = by_topic("room3");
    assert_eq!(
        r3["payload"],
        json!({"id": "mine", "t": "own id"}),
        "own id kept"
    );
    assert_ne!(r3["id"], "mine");
    assert_eq!(
        by_topic("room4")["payload"],
        json!([1, 2]),
        "no id in a non-object"
    );
    let r5 = by_topic("room5");
    assert_eq!(r5["binary_payload"], "010203");
    assert_eq!(r5["payload"], Value::Null);
    assert_eq!(r5["private"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_turns_errors_into_warnings_and_makes_a_missing_partition() {
    let (admin, dbname) = migrated().await;
    let today = today(&admin).await;
    admin
        .batch_execute(&format!("DROP TABLE realtime.{}", partition_name(today)))
        .await
        .unwrap();
    let (client, mut notices) = connect_with_notices(&dbname).await;
    client
        .batch_execute(r#"SELECT realtime.send('{"n":1}', 'e', 'room', false)"#)
        .await
        .unwrap();
    assert!(
        partitions(&admin).await.contains(&partition_name(today)),
        "today's partition made on demand"
    );
    assert_eq!(messages(&admin).await.len(), 1);

    // A failing insert (no topic) is a warning; the caller's transaction goes on and commits.
    client
        .batch_execute(
            r#"BEGIN;
               SELECT realtime.send('{"n":2}', 'e', NULL, false);
               SELECT realtime.send_binary('\x00'::bytea, 'e', NULL);
               CREATE TABLE public.after_send (a int);
               COMMIT;"#,
        )
        .await
        .unwrap();
    let mut warnings = Vec::new();
    while warnings.len() < 2 {
        let notice = tokio::time::timeout(std::time::Duration::from_secs(5), notices.recv())
            .await
            .expect("warnings arrive")
            .expect("notice stream");
        warnings.push(notice);
    }
    for warning in &warnings {
        assert!(
            warning.starts_with("WARNING: WarnSendingBroadcastMessage: ")
                && warning.contains("topic"),
            "{warning}"
        );
    }
    assert_eq!(messages(&admin).await.len(), 1, "nothing inserted");
    admin
        .query_one("SELECT to_regclass('public.after_send')::text", &[])
        .await
        .unwrap()
        .get::<_, Option<String>>(0)
        .expect("the caller's transaction committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_changes_from_a_trigger_inserts_the_documented_payload() {
    let (client, _) = migrated().await;
    client
        .batch_execute(
            r#"CREATE TABLE public.todos (id int PRIMARY KEY, title text);
               CREATE FUNCTION public.todos_broadcast() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                 PERFORM realtime.broadcast_changes('todos:' || coalesce(NEW.id, OLD.id)::text,
                   TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD);
                 RETURN NULL;
               END $$;
               CREATE TRIGGER todos_broadcast AFTER INSERT OR UPDATE OR DELETE ON public.todos
                 FOR EACH ROW EXECUTE FUNCTION public.todos_broadcast();
               INSERT INTO public.todos VALUES (1, 'x');
               UPDATE public.todos SET title = 'y' WHERE id = 1;
               DELETE FROM public.todos WHERE id = 1;"#,
        )
        .await
        .unwrap();
    let rows = messages(&client).await;
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let find = |op: &str| rows.iter().find(|r| r["event"] == op).unwrap().clone();
    let insert = find("INSERT");
    assert_eq!(insert["topic"], "todos:1");
    assert_eq!(insert["private"], true, "broadcast_changes sends privately");
    assert_eq!(
        insert["payload"],
        json!({"old_record": null, "record": {"id": 1, "title": "x"}, "operation": "INSERT",
               "table": "todos", "schema": "public", "id": insert["id"]})
    );
    let update = find("UPDATE");
    assert_eq!(
        update["payload"],
        json!({"old_record": {"id": 1, "title": "x"}, "record": {"id": 1, "title": "y"},
               "operation": "UPDATE", "table": "todos", "schema": "public", "id": update["id"]})
    );
    let delete = find("DELETE");
    assert_eq!(
        delete["payload"]["old_record"],
        json!({"id": 1, "title": "y"})
    );
    assert_eq!(delete["payload"]["record"], Value::Null);

    // Statement-level use and unknown operations raise.
    let err = client
        .batch_execute(
            "SELECT realtime.broadcast_changes('t', 'e', 'INSERT', 'todos', 'public', NULL, NULL, 'STATEMENT')",
        )
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("row-level"), "{err:?}");
    let err = client
        .batch_execute(
            "SELECT realtime.broadcast_changes('t', 'e', 'MERGE', 'todos', 'public', NULL, NULL)",
        )
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("unknown operation"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_twice_change_nothing() {
    let (mut client, _) = migrated().await;
    let before = partitions(&client).await;
    client
        .batch_execute(r#"SELECT realtime.send('{"a":1}', 'e', 'room')"#)
        .await
        .unwrap();
    assert_eq!(
        run_tenant_migrations(&mut client, &TenantId::from("schema"))
            .await
            .unwrap(),
        Vec::<i64>::new()
    );
    assert_eq!(partitions(&client).await, before);
    assert_eq!(messages(&client).await.len(), 1, "rows kept");
    // Our own functions may be redefined by a later version: the marker lets them.
    let redefined: bool = client
        .query_one(
            "SELECT realtime.rs_define_function('realtime.topic()', $$
               create or replace function realtime.topic() returns text language sql stable
               as 'select ''redefined''::text' $$)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(redefined);
}

/// A `realtime` schema as the Supabase image or the original leaves it: its own
/// `realtime.messages` (other defaults, no constraint of ours), one partition, and its own
/// `send`.
const SUPABASE_LIKE: &str = r#"
CREATE SCHEMA realtime;
CREATE TABLE realtime.schema_migrations (version bigint PRIMARY KEY, inserted_at timestamp(0));
INSERT INTO realtime.schema_migrations VALUES (20240919163303, now());
CREATE TABLE realtime.messages (
    topic text NOT NULL,
    extension text NOT NULL,
    payload jsonb,
    event text,
    private boolean DEFAULT false,
    updated_at timestamp without time zone NOT NULL DEFAULT now(),
    inserted_at timestamp without time zone NOT NULL DEFAULT now(),
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    binary_payload bytea,
    CONSTRAINT their_pkey PRIMARY KEY (id, inserted_at)
) PARTITION BY RANGE (inserted_at);
CREATE FUNCTION realtime.send(payload jsonb, event text, topic text, private boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  -- theirs
  INSERT INTO realtime.messages (payload, event, topic, private, extension)
  VALUES (payload, 'theirs', topic, private, 'broadcast');
END $$;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_existing_schema_is_completed_not_rewritten() {
    let dbname = common::fresh_database().await;
    let mut client = common::connect(&dbname).await;
    client.batch_execute(SUPABASE_LIKE).await.unwrap();
    let today = today(&client).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE realtime.{} PARTITION OF realtime.messages FOR VALUES FROM ('{}') TO ('{}')",
            partition_name(today),
            today,
            today + chrono::Duration::days(1)
        ))
        .await
        .unwrap();
    let all: Vec<i64> = TENANT_MIGRATIONS.iter().map(|m| m.version).collect();
    for round in 0..2 {
        let applied = run_tenant_migrations(&mut client, &TenantId::from("supa"))
            .await
            .unwrap();
        assert_eq!(applied, if round == 0 { all.clone() } else { vec![] });
    }
    // Their table: untouched (no RLS switched on, no constraint or column added).
    let row = client
        .query_one(
            "SELECT c.relrowsecurity,
                    (SELECT array_agg(conname::text ORDER BY conname) FROM pg_constraint
                      WHERE conrelid = c.oid),
                    (SELECT count(*) FROM information_schema.columns
                      WHERE table_schema = 'realtime' AND table_name = 'messages')
               FROM pg_class c WHERE c.oid = 'realtime.messages'::regclass",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, Vec<String>>(1), vec!["their_pkey".to_string()]);
    assert_eq!(row.get::<_, i64>(2), 9);
    // Their partition kept; the missing days added beside it.
    let expected: Vec<String> = (-1..=3)
        .map(|d| partition_name(today + chrono::Duration::days(d)))
        .collect();
    assert_eq!(partitions(&client).await, expected);
    // Their send kept (and used); the missing functions are ours.
    let send_source: String = client
        .query_one(
            "SELECT prosrc FROM pg_proc WHERE oid = 'realtime.send(jsonb,text,text,boolean)'::regprocedure",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(send_source.contains("-- theirs"), "{send_source}");
    client
        .batch_execute(r#"SELECT realtime.send('{"x":1}', 'mine', 'room')"#)
        .await
        .unwrap();
    let rows = messages(&client).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["event"], "theirs");
    let ours: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'realtime'
                AND p.proname IN ('topic', 'send_binary', 'broadcast_changes')
                AND obj_description(p.oid, 'pg_proc') = $1",
            &[&OUR_FUNCTION],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ours, 3);
    let schema_migrations: i64 = client
        .query_one("SELECT count(*) FROM realtime.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(schema_migrations, 1, "Supabase's bookkeeping untouched");
}

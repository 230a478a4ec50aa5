//! The two statements of Broadcast from the database on a tenant connection: ensuring the
//! messages publication, and the replay query (PROTOCOL.md 4.6, 9.2).

use bytes::Bytes;

use super::DbBroadcastError;
use super::row::{DbMessage, id_metadata};
use crate::db::TenantClient;
use crate::phoenix::{PayloadEncoding, UserBroadcast};

/// The publication the messages stream reads: exactly `realtime.messages`.
pub const PUBLICATION: &str = "supabase_realtime_messages_publication";

/// Makes `supabase_realtime_messages_publication` publish exactly `realtime.messages` (inserts
/// included), recreating it otherwise. One statement, under a transaction-level advisory lock,
/// so two nodes that race (during an ownership move) do not trip over each other.
const ENSURE_PUBLICATION: &str = r#"
DO $rs$
DECLARE
    pub_oid oid;
    ok boolean := false;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('supabase_realtime_messages_publication'));
    IF to_regclass('realtime.messages') IS NULL THEN
        RAISE EXCEPTION 'realtime.messages does not exist';
    END IF;
    SELECT oid INTO pub_oid FROM pg_catalog.pg_publication
     WHERE pubname = 'supabase_realtime_messages_publication';
    IF pub_oid IS NOT NULL THEN
        SELECT NOT p.puballtables AND p.pubinsert
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_namespace n
                                WHERE n.pnpubid = p.oid)
               AND (SELECT array_agg(r.prrelid) FROM pg_catalog.pg_publication_rel r
                     WHERE r.prpubid = p.oid) = ARRAY['realtime.messages'::regclass::oid]
          INTO ok
          FROM pg_catalog.pg_publication p WHERE p.oid = pub_oid;
        IF ok THEN
            RETURN;
        END IF;
        DROP PUBLICATION supabase_realtime_messages_publication;
    END IF;
    CREATE PUBLICATION supabase_realtime_messages_publication FOR TABLE realtime.messages;
END
$rs$"#;

/// The replay selection: the topic's private broadcasts since `$2` (unix ms) and before a
/// minute from now, newest first, at most `$3`; `inserted_at` is UTC without a time zone.
const REPLAY: &str = "SELECT id::text, event, payload::text, binary_payload \
     FROM realtime.messages \
     WHERE topic = $1 AND private IS TRUE AND extension = 'broadcast' \
       AND inserted_at >= (to_timestamp($2::int8 / 1000.0) AT TIME ZONE 'UTC') \
       AND inserted_at < timezone('UTC', now()) + interval '1 minute' \
     ORDER BY inserted_at DESC \
     LIMIT $3";

fn db_error(e: &tokio_postgres::Error) -> DbBroadcastError {
    let message = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    DbBroadcastError::Query(message)
}

/// Ensures the messages publication (see [`ENSURE_PUBLICATION`]).
///
/// # Errors
/// [`DbBroadcastError::Query`] when the statement fails (no `realtime.messages`, no right to
/// create publications).
pub async fn ensure_publication(client: &TenantClient) -> Result<(), DbBroadcastError> {
    client
        .batch_execute(ENSURE_PUBLICATION)
        .await
        .map_err(|e| db_error(&e))
}

/// The rows a join replays, oldest first, each with `{"replayed":true,"id":...}` metadata.
///
/// # Errors
/// [`DbBroadcastError::Query`] when the query fails.
pub async fn replay(
    client: &TenantClient,
    topic: &str,
    since_ms: i64,
    limit: u32,
) -> Result<Vec<DbMessage>, DbBroadcastError> {
    let rows = client
        .query(REPLAY, &[&topic, &since_ms, &i64::from(limit)])
        .await
        .map_err(|e| db_error(&e))?;
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows.iter().rev() {
        let id: String = row.try_get(0).map_err(|e| db_error(&e))?;
        let event: Option<String> = row.try_get(1).map_err(|e| db_error(&e))?;
        let payload: Option<String> = row.try_get(2).map_err(|e| db_error(&e))?;
        let binary: Option<Vec<u8>> = row.try_get(3).map_err(|e| db_error(&e))?;
        let (encoding, payload) = match (payload, binary) {
            (Some(json), _) => (PayloadEncoding::Json, Bytes::from(json)),
            (None, Some(bytes)) => (PayloadEncoding::Binary, Bytes::from(bytes)),
            // Nothing to send.
            (None, None) => continue,
        };
        messages.push(DbMessage {
            topic: topic.to_string(),
            private: true,
            broadcast: UserBroadcast {
                event: event.unwrap_or_default(),
                encoding,
                payload,
                metadata: Some(id_metadata(&id, true)),
            },
            id,
        });
    }
    Ok(messages)
}

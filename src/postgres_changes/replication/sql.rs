//! The stream's SQL side (tokio-postgres): the publication check and the slot's life
//! (inspect, create, drop, WAL retained). Slot commands run as single statements, never inside
//! a transaction that wrote (Postgres refuses to create a slot there).

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config};

use super::tls::RequireTls;
use super::{APPLICATION_NAME, Lsn, ReplicationError, ReplicationTarget, SlotName};
use crate::tasks::Owner;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What `pg_replication_slots` says about a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SlotState {
    /// Someone streams from it, and the walsender's pid.
    pub(super) active_pid: Option<i32>,
    /// The position Postgres has accepted as processed.
    pub(super) confirmed_flush: Lsn,
    /// WAL held back for the slot (`pg_current_wal_lsn() - restart_lsn`); `None` when the slot
    /// was invalidated.
    pub(super) retained_bytes: Option<u64>,
}

/// Opens a SQL connection to the tenant database; its connection task runs under `owner`.
pub(super) async fn connect(
    target: &ReplicationTarget,
    owner: &Owner,
) -> Result<Client, ReplicationError> {
    let mut config = Config::new();
    config
        .host(&target.host)
        .port(target.port)
        .user(&target.user)
        .password(target.password.expose())
        .dbname(&target.dbname)
        .application_name(APPLICATION_NAME)
        .connect_timeout(CONNECT_TIMEOUT);
    let connect_error = |e: tokio_postgres::Error| ReplicationError::Connect {
        message: e.to_string(),
    };
    if target.tls {
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
        let tls = RequireTls::new().map_err(|e| ReplicationError::Connect {
            message: format!("TLS setup: {e}"),
        })?;
        let (client, connection) = config.connect(tls).await.map_err(connect_error)?;
        owner.spawn("replication sql connection", async move {
            let _ = connection.await;
        });
        Ok(client)
    } else {
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(connect_error)?;
        owner.spawn("replication sql connection", async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

fn sql_error(e: &tokio_postgres::Error) -> ReplicationError {
    if e.is_closed() {
        return ReplicationError::Connect {
            message: e.to_string(),
        };
    }
    let message = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    ReplicationError::Sql { message }
}

/// Fails with [`ReplicationError::PublicationNotFound`] unless the publication exists.
pub(super) async fn check_publication(
    client: &Client,
    publication: &str,
) -> Result<(), ReplicationError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&publication],
        )
        .await
        .map_err(|e| sql_error(&e))?;
    if row.get::<_, bool>(0) {
        Ok(())
    } else {
        Err(ReplicationError::PublicationNotFound {
            publication: publication.to_string(),
        })
    }
}

/// Reads the slot's state; `None` when it does not exist. A slot of that name that this
/// stream cannot use (physical, another plugin, another database) is an error.
pub(super) async fn slot_state(
    client: &Client,
    slot: &SlotName,
) -> Result<Option<SlotState>, ReplicationError> {
    let row = client
        .query_opt(
            "SELECT slot_type::text, coalesce(plugin::text, ''), \
                    coalesce(database = current_database(), false), temporary, active_pid, \
                    coalesce(confirmed_flush_lsn::text, '0/0'), \
                    CASE WHEN restart_lsn IS NULL OR wal_status = 'lost' THEN NULL \
                         ELSE greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8 \
                    END \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot.as_str()],
        )
        .await
        .map_err(|e| sql_error(&e))?;
    let Some(row) = row else { return Ok(None) };
    let unusable = |problem: String| ReplicationError::SlotUnusable {
        slot: slot.to_string(),
        problem,
    };
    let (kind, plugin, same_db): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
    let temporary: bool = row.get(3);
    let active_pid: Option<i32> = row.get(4);
    if kind != "logical" {
        return Err(unusable(format!("it is a {kind} slot")));
    }
    if !same_db {
        return Err(unusable("it belongs to another database".into()));
    }
    if temporary {
        // A temporary slot is always in use by the session that made it.
        return Err(ReplicationError::SlotBeingUsed {
            slot: slot.to_string(),
            pid: active_pid,
        });
    }
    if plugin != "pgoutput" {
        return Err(unusable(format!(
            "it uses the `{plugin}` plugin, not pgoutput"
        )));
    }
    let confirmed: String = row.get(5);
    let confirmed_flush = Lsn::parse(&confirmed).map_err(|e| ReplicationError::Sql {
        message: e.to_string(),
    })?;
    let retained: Option<i64> = row.get(6);
    Ok(Some(SlotState {
        active_pid,
        confirmed_flush,
        retained_bytes: retained.map(|b| u64::try_from(b).unwrap_or(0)),
    }))
}

/// Creates the permanent pgoutput slot. Returns false when it already existed (another stream
/// created it first).
pub(super) async fn create_slot(
    client: &Client,
    slot: &SlotName,
) -> Result<bool, ReplicationError> {
    match client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot.as_str()],
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(false),
        Err(e) => Err(sql_error(&e)),
    }
}

/// Drops the slot unless someone streams from it. Returns false when it did not exist.
pub(super) async fn drop_slot(client: &Client, slot: &SlotName) -> Result<bool, ReplicationError> {
    match client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot.as_str()])
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => Ok(false),
        Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
            Err(ReplicationError::SlotBeingUsed {
                slot: slot.to_string(),
                pid: None,
            })
        }
        Err(e) => Err(sql_error(&e)),
    }
}

/// Waits up to `timeout` for the slot's walsender to let go of it (it ends a moment after
/// its client closed the connection).
pub(super) async fn wait_inactive(
    client: &Client,
    slot: &SlotName,
    timeout: Duration,
) -> Result<(), ReplicationError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let active = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot.as_str()],
            )
            .await
            .map_err(|e| sql_error(&e))?
            .is_some_and(|row| row.get::<_, bool>(0));
        if !active || tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Moves a released slot's confirmed position to `lsn` (used when the final status update of a
/// closing stream could not be sent).
pub(super) async fn advance_slot(
    client: &Client,
    slot: &SlotName,
    lsn: Lsn,
) -> Result<(), ReplicationError> {
    client
        .execute(
            "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&slot.as_str(), &lsn.to_string()],
        )
        .await
        .map(|_| ())
        .map_err(|e| sql_error(&e))
}

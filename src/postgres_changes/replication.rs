//! The logical replication stream of one tenant database, and the manager that starts and stops
//! those streams as subscribers come and go (docs/ARCHITECTURE.md, "Replication stream").
//!
//! * [`SlotName`]: the tenant's `slot_name` setting plus `_<SLOT_NAME_SUFFIX>` (PROTOCOL.md 6.6),
//!   validated the way Postgres validates slot names. Unlike the original's temporary wal2json
//!   slot, this is a **permanent pgoutput** slot.
//! * [`TenantStream`]: an owned task that prepares the slot over a plain SQL connection, streams
//!   pgoutput with `pgwire-replication`, hands every transaction's raw messages downstream in
//!   order ([`StreamEvent`]) through a bounded channel (a slow consumer makes the stream wait,
//!   nothing is dropped), reports only positions the consumer confirmed
//!   ([`StreamHandle::confirm`]), reconnects with backoff, and bounds the WAL its slot holds
//!   back (over the bound: the slot is recreated and [`StreamEvent::Lost`] says so).
//! * [`StreamManager`]: one stream per tenant this node owns ([`StreamOwnership`]), started by
//!   the first subscriber, stopped `idle_timeout` after the last, its slot retained for
//!   `slot_retain` and then dropped.
//!
//! **Replays.** A stream resumes from the last position Postgres accepted, so after a reconnect
//! (or a node restart) the transactions that were handed downstream but not yet confirmed are
//! sent again, and a transaction cut short by a disconnect (a `Begin` with no `Commit` before
//! [`StreamEvent::Disconnected`]) is sent again whole. The consumer must discard an unfinished
//! transaction at `Disconnected` and may skip commits whose `end_lsn` is at or below the last
//! position it confirmed.

mod manager;
mod slot;
mod sql;
mod stream;
mod tls;

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::config::Secret;
use crate::error::{ErrorCode, OperationalError};

pub use manager::{Ensured, LocalOwnership, StreamManager, StreamOwnership};
pub use pgwire_replication::Lsn;
pub use slot::SlotName;
pub use stream::{ReplicationStats, StreamHandle, StreamStatus, TenantStream};

/// The `application_name` of the stream's connections (SQL and replication).
pub const APPLICATION_NAME: &str = "realtime_replication";

/// Where a tenant's changes come from: the database, the slot and the publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationTarget {
    /// Database host name or address.
    pub host: String,
    /// Database port.
    pub port: u16,
    /// A role with the `REPLICATION` attribute (or a superuser).
    pub user: String,
    /// The role's password.
    pub password: Secret,
    /// The tenant's database.
    pub dbname: String,
    /// Require TLS on both connections (encrypted, the certificate is not verified: libpq's
    /// `sslmode=require`).
    pub tls: bool,
    /// The permanent pgoutput slot.
    pub slot: SlotName,
    /// The publication whose tables are streamed (`supabase_realtime` by default).
    pub publication: String,
    /// A temporary slot, created on the replication session itself (`CREATE_REPLICATION_SLOT
    /// ... TEMPORARY`) and gone when the session ends: no retained WAL, no resumption. A slot
    /// of that name that exists already is another node's (`SlotBeingUsed`, retried). Used by
    /// Broadcast from the database; Postgres Changes uses a permanent slot (`false`).
    pub temporary_slot: bool,
}

/// What a stream hands its consumer, in WAL order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// Streaming (re)started at `start_lsn`; transactions committed after it follow.
    Connected {
        /// The position the stream resumed from.
        start_lsn: Lsn,
    },
    /// A transaction starts.
    Begin {
        /// The position of its commit record.
        final_lsn: Lsn,
        /// Its transaction id.
        xid: u32,
        /// When it committed.
        commit_ts: DateTime<Utc>,
    },
    /// One raw pgoutput message of the current transaction (Relation, Insert, Update, Delete,
    /// Truncate, Type, Origin), for the `pgoutput` decoder.
    Data {
        /// Where the message starts in the WAL.
        lsn: Lsn,
        /// The message, tag byte first.
        bytes: Bytes,
    },
    /// A logical decoding message (`pg_logical_emit_message`), already parsed by the stream
    /// client; transactional ones come inside their transaction.
    Message {
        /// Emitted inside a transaction.
        transactional: bool,
        /// Its position.
        lsn: Lsn,
        /// Its prefix.
        prefix: String,
        /// Its content.
        content: Bytes,
    },
    /// The current transaction committed. Confirm `end_lsn` once it is handed on.
    Commit {
        /// The position of the commit record.
        lsn: Lsn,
        /// The position just after it: the one to confirm.
        end_lsn: Lsn,
        /// When it committed.
        commit_ts: DateTime<Utc>,
    },
    /// Changes were lost (the slot was recreated); every subscriber should be told.
    Lost {
        /// Why.
        reason: LossReason,
    },
    /// The stream broke and reconnects; an unfinished transaction must be discarded.
    Disconnected {
        /// What broke it.
        error: ReplicationError,
    },
}

/// Why a stream lost changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// The slot held back more WAL than `REPLICATION_MAX_LAG_BYTES`; it was dropped and
    /// recreated at the current position.
    LagExceeded {
        /// WAL the slot held back.
        retained_bytes: u64,
        /// The bound.
        max_bytes: u64,
    },
    /// Postgres invalidated the slot (`wal_status = 'lost'`, e.g. `max_slot_wal_keep_size`).
    SlotInvalidated,
    /// The slot disappeared while the stream was using it (dropped by someone else).
    SlotDropped,
    /// The node that owns the tenant's stream reported a loss (its text).
    AtOwner(String),
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossReason::LagExceeded {
                retained_bytes,
                max_bytes,
            } => write!(
                f,
                "the replication slot held back {retained_bytes} bytes of WAL (limit {max_bytes}) and was recreated"
            ),
            LossReason::SlotInvalidated => f.write_str("the replication slot was invalidated"),
            LossReason::SlotDropped => f.write_str("the replication slot was dropped"),
            LossReason::AtOwner(reason) => f.write_str(reason),
        }
    }
}

/// An error of a replication stream or of the manager. Cloneable: streams report it in their
/// status and in [`StreamEvent::Disconnected`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    /// The slot name is not one Postgres accepts.
    #[error("invalid replication slot name `{name}`: {problem}")]
    InvalidSlotName {
        /// The name.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The database could not be reached or refused the login.
    #[error("cannot connect to the tenant database: {message}")]
    Connect {
        /// The driver's message.
        message: String,
    },
    /// The publication does not exist in the tenant database.
    #[error("publication `{publication}` does not exist")]
    PublicationNotFound {
        /// Its name.
        publication: String,
    },
    /// Another connection streams from the slot.
    #[error("replication slot `{slot}` is in use by another connection{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    SlotBeingUsed {
        /// The slot.
        slot: String,
        /// The walsender's pid, when known.
        pid: Option<i32>,
    },
    /// A slot of that name exists but is not ours to use (another database, another plugin,
    /// a physical slot).
    #[error("replication slot `{slot}` exists but cannot be used: {problem}")]
    SlotUnusable {
        /// The slot.
        slot: String,
        /// Why.
        problem: String,
    },
    /// A catalog query or slot command failed.
    #[error("replication slot query failed: {message}")]
    Sql {
        /// The driver's message.
        message: String,
    },
    /// The replication connection failed or ended.
    #[error("replication stream failed: {message}")]
    Stream {
        /// The client's message.
        message: String,
    },
    /// This node does not own the tenant (another node streams it).
    #[error("tenant `{tenant}` is not owned by this node")]
    NotOwner {
        /// The tenant's external id.
        tenant: String,
    },
}

impl OperationalError for ReplicationError {
    fn code(&self) -> ErrorCode {
        match self {
            ReplicationError::InvalidSlotName { .. } => ErrorCode::InvalidConfiguration,
            ReplicationError::Connect { .. } => ErrorCode::UnableToConnectToTenantDatabase,
            ReplicationError::SlotBeingUsed { .. } => ErrorCode::ReplicationSlotBeingUsed,
            ReplicationError::PublicationNotFound { .. }
            | ReplicationError::SlotUnusable { .. }
            | ReplicationError::Sql { .. }
            | ReplicationError::Stream { .. }
            | ReplicationError::NotOwner { .. } => ErrorCode::ReplicationError,
        }
    }

    fn client_message(&self) -> String {
        match self {
            ReplicationError::PublicationNotFound { publication } => {
                format!("publication `{publication}` does not exist")
            }
            ReplicationError::Connect { .. } => {
                "Realtime was unable to connect to the project database".into()
            }
            _ => "Realtime was unable to stream changes from the project database".into(),
        }
    }
}

/// Converts a Postgres timestamp (microseconds since 2000-01-01 UTC) to UTC time.
fn pg_time(micros: i64) -> DateTime<Utc> {
    const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
    DateTime::from_timestamp_micros(micros.saturating_add(PG_EPOCH_UNIX_MICROS))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Exponential reconnect delays with jitter, between `min` and `max`.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The delay before the next attempt: `min · 2^n` capped at `max`, then a random point in
    /// its upper half (so streams that failed together do not retry together).
    fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let jitter = rand::random_range(0..=half.as_micros().min(u128::from(u64::MAX)) as u64);
        (half + Duration::from_micros(jitter)).max(self.min)
    }

    /// The number of attempts that failed in a row.
    fn attempts(&self) -> u32 {
        self.attempt
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_within_its_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        let mut b = Backoff::new(min, max);
        let delays: Vec<_> = (0..12).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d >= min && *d <= max), "{delays:?}");
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays[5] >= Duration::from_millis(1600), "{delays:?}");
        assert!(delays[11] >= Duration::from_secs(5), "{delays:?}");
        assert_eq!(b.attempts(), 12);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn postgres_timestamps_count_from_2000() {
        assert_eq!(pg_time(0).to_rfc3339(), "2000-01-01T00:00:00+00:00");
        assert_eq!(
            pg_time(1_500_000).to_rfc3339(),
            "2000-01-01T00:00:01.500+00:00"
        );
    }

    #[test]
    fn errors_carry_operational_codes() {
        let used = ReplicationError::SlotBeingUsed {
            slot: "s".into(),
            pid: Some(7),
        };
        assert_eq!(used.code(), ErrorCode::ReplicationSlotBeingUsed);
        assert_eq!(
            used.to_string(),
            "replication slot `s` is in use by another connection (pid 7)"
        );
        let missing = ReplicationError::PublicationNotFound {
            publication: "supabase_realtime".into(),
        };
        assert_eq!(missing.code(), ErrorCode::ReplicationError);
        assert!(missing.client_message().contains("supabase_realtime"));
        let down = ReplicationError::Connect {
            message: "refused".into(),
        };
        assert_eq!(down.code(), ErrorCode::UnableToConnectToTenantDatabase);
        assert!(!down.client_message().contains("refused"));
    }
}

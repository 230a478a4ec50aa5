//! One tenant's maintenance (PROTOCOL.md 9.4): make the day partitions of `realtime.messages`
//! from yesterday to three days ahead, and drop the day partitions dated before the retention
//! cutoff (the UTC date 72 hours ago).
//!
//! Only tables that are declarative partitions of `realtime.messages`, in schema `realtime`, not
//! its default partition, and named exactly `messages_YYYY_MM_DD` for a real date are ever
//! dropped; the check is repeated inside each drop's transaction. The clock is the tenant
//! database's (the same clock `rs_ensure_messages_partitions` checks its range against). Every
//! statement runs with `statement_timeout` set to the time left of the tenant's budget, and
//! `lock_timeout` at most [`LOCK_TIMEOUT`]: dropping a partition locks `realtime.messages`
//! exclusively, and a drop waiting behind a long reader would hold up every insert behind it.

use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveDateTime};

use super::JanitorError;

/// How long the janitor keeps messages: a day partition is dropped once its date is before the
/// date this long ago.
pub const RETENTION: Duration = Duration::from_secs(72 * 3600);

/// The longest a janitor statement waits for a lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// Makes the partitions of yesterday .. today+3 (the function migration 4 defines; it does
/// nothing when `realtime.messages` is not range-partitioned).
const ENSURE: &str = "SELECT realtime.rs_ensure_messages_partitions(today - 1, today + 3)
  FROM (SELECT (pg_catalog.now() AT TIME ZONE 'utc')::date AS today) AS t";

/// The names of the candidate partitions: non-default partitions of `realtime.messages` in
/// schema `realtime`.
const CANDIDATES: &str = "SELECT c.relname::text
  FROM pg_catalog.pg_inherits i
  JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE i.inhparent = pg_catalog.to_regclass('realtime.messages')
   AND n.nspname = 'realtime'
   AND c.relispartition
   AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
 ORDER BY 1";

/// Whether `realtime.<$1>` is still a non-default partition of `realtime.messages`.
const STILL_A_PARTITION: &str = "SELECT EXISTS (
  SELECT 1 FROM pg_catalog.pg_inherits i
    JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE i.inhparent = pg_catalog.to_regclass('realtime.messages')
     AND n.nspname = 'realtime' AND c.relname = $1
     AND c.relispartition
     AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT')";

/// What one tenant's maintenance did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Partitions made.
    pub created: u32,
    /// Partitions dropped, by name (`messages_YYYY_MM_DD`).
    pub dropped: Vec<String>,
}

/// The day of a partition named `messages_YYYY_MM_DD` (zero-padded, a real date), else `None`.
pub fn partition_day(name: &str) -> Option<NaiveDate> {
    let date = name.strip_prefix("messages_")?;
    let bytes = date.as_bytes();
    let shaped = bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'_',
            _ => b.is_ascii_digit(),
        });
    if !shaped {
        return None;
    }
    NaiveDate::parse_from_str(date, "%Y_%m_%d").ok()
}

/// The first day kept at `now` (UTC): the date [`RETENTION`] ago.
pub fn retention_cutoff(now: NaiveDateTime) -> NaiveDate {
    let retention = chrono::Duration::from_std(RETENTION).unwrap_or(chrono::Duration::days(3));
    (now - retention).date()
}

/// The partitions among `names` to drop at `now`: day partitions dated before the cutoff.
pub fn expired(names: &[String], now: NaiveDateTime) -> Vec<&str> {
    let cutoff = retention_cutoff(now);
    names
        .iter()
        .filter(|name| partition_day(name).is_some_and(|day| day < cutoff))
        .map(String::as_str)
        .collect()
}

/// Runs one tenant's maintenance on `client` before `deadline`.
///
/// # Errors
/// [`JanitorError::Query`] naming the failing step (a drop that failed leaves the earlier ones
/// done); a spent budget shows as a cancelled statement.
pub async fn maintain(
    client: &mut tokio_postgres::Client,
    deadline: Instant,
) -> Result<Cleaned, JanitorError> {
    let step = |step: &'static str| move |source| JanitorError::Query { step, source };
    let mut cleaned = Cleaned::default();

    let tx = client.transaction().await.map_err(step("create"))?;
    bound(&tx, deadline).await.map_err(step("create"))?;
    let made: i32 = tx
        .query_one(ENSURE, &[])
        .await
        .map_err(step("create"))?
        .get(0);
    tx.commit().await.map_err(step("create"))?;
    cleaned.created = u32::try_from(made).unwrap_or(0);

    let tx = client.transaction().await.map_err(step("list"))?;
    bound(&tx, deadline).await.map_err(step("list"))?;
    let now: NaiveDateTime = tx
        .query_one("SELECT pg_catalog.now() AT TIME ZONE 'utc'", &[])
        .await
        .map_err(step("list"))?
        .get(0);
    let names: Vec<String> = tx
        .query(CANDIDATES, &[])
        .await
        .map_err(step("list"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    tx.commit().await.map_err(step("list"))?;

    for name in expired(&names, now) {
        let tx = client.transaction().await.map_err(step("drop"))?;
        bound(&tx, deadline).await.map_err(step("drop"))?;
        let still: bool = tx
            .query_one(STILL_A_PARTITION, &[&name])
            .await
            .map_err(step("drop"))?
            .get(0);
        if still {
            // The name is `messages_` and digits and underscores (partition_day): quoting is
            // belt and braces.
            tx.batch_execute(&format!("DROP TABLE IF EXISTS realtime.\"{name}\""))
                .await
                .map_err(step("drop"))?;
        }
        tx.commit().await.map_err(step("drop"))?;
        if still {
            cleaned.dropped.push(name.to_string());
        }
    }
    Ok(cleaned)
}

/// Bounds the statements of `tx` by the time left before `deadline`.
async fn bound(
    tx: &tokio_postgres::Transaction<'_>,
    deadline: Instant,
) -> Result<(), tokio_postgres::Error> {
    // At least 1 ms: 0 would turn the timeouts off. A spent budget ends at the next statement;
    // the caller's own timeout ends the run anyway.
    let left = deadline
        .saturating_duration_since(Instant::now())
        .as_millis()
        .max(1);
    let lock = left.min(LOCK_TIMEOUT.as_millis());
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = '{left}ms'; SET LOCAL lock_timeout = '{lock}ms'"
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn only_exact_day_names_are_partitions() {
        assert_eq!(
            partition_day("messages_2026_12_02"),
            Some(day("2026-12-02"))
        );
        assert_eq!(
            partition_day("messages_2024_02_29"),
            Some(day("2024-02-29"))
        );
        for name in [
            "messages",
            "messages_",
            "messages_2026_1_02",
            "messages_2026_12_2",
            "messages_2026-12-02",
            "messages_2026_12_02_old",
            "messages_2026_12_02 ",
            "messages_2023_02_29",
            "messages_2026_13_01",
            "messages_+026_12_02",
            "messages_default",
            "Messages_2026_12_02",
            "x_messages_2026_12_02",
            "messages_２026_12_02",
        ] {
            assert_eq!(partition_day(name), None, "{name}");
        }
    }

    #[test]
    fn the_cutoff_is_the_date_72_hours_ago() {
        assert_eq!(
            retention_cutoff(at("2026-12-02 15:00:00")),
            day("2026-11-29")
        );
        assert_eq!(
            retention_cutoff(at("2026-12-02 00:00:00")),
            day("2026-11-29")
        );
        assert_eq!(
            retention_cutoff(at("2026-12-01 23:59:59")),
            day("2026-11-28")
        );
        assert_eq!(
            retention_cutoff(at("2024-03-01 10:00:00")),
            day("2024-02-27")
        );
    }

    #[test]
    fn partitions_before_the_cutoff_expire() {
        let names: Vec<String> = [
            "messages_2026_11_01",
            "messages_2026_11_28",
            "messages_2026_11_29",
            "messages_2026_12_02",
            "messages_2026_12_05",
            "messages_1999_01_01_archive",
            "messages_old",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            expired(&names, at("2026-12-02 15:00:00")),
            vec!["messages_2026_11_01", "messages_2026_11_28"]
        );
        assert!(expired(&names, at("2026-11-01 12:00:00")).is_empty());
    }
}

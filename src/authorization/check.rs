//! The SQL of Realtime Authorization (PROTOCOL.md 8): a batch of checks, each its own
//! transaction, pipelined on one tenant connection (every request is sent before the first
//! answer is read, so a batch costs one round trip however many checks it holds).
//!
//! One check, in order:
//!
//! 1. `begin`;
//! 2. (read) as the connection's own privileged role, one probe row per extension to read-check,
//!    with ids made here ([`PROBE_ROWS`]);
//! 3. the subject's context, transaction-local ([`SET_CONTEXT`]): `role`, `realtime.topic`,
//!    `request.jwt.claims`, `request.jwt.claim.sub`, `request.jwt.claim.role`,
//!    `request.headers`;
//! 4. (read) which probe rows the subject may see ([`VISIBLE_ROWS`]): a visible row is read
//!    permission for its extension;
//! 5. (write) one row inserted as the subject ([`WRITE_ROW`]): success is write permission,
//!    SQLSTATE 42501 (an RLS `WITH CHECK` failure) is a refusal;
//! 6. `rollback`: nothing of a check stays in the database.
//!
//! The ids are bound, so no step depends on an earlier answer. Each request carries its own
//! sync, so a failed statement fails its own check only: the statements after it in the same
//! transaction fail with 25P02 and the `rollback` ends it. Nothing of the user's input is
//! concatenated into SQL.

use tokio_postgres::error::SqlState;

use super::{Extension, Subject};

/// Probe rows inserted as the connection's role: `$1` ids, `$2` the topic, `$3` extensions.
pub(super) const PROBE_ROWS: &str = "insert into realtime.messages (id, topic, extension, private) \
     select p.id, $2::text, p.extension, true \
     from unnest($1::uuid[], $3::text[]) as p(id, extension)";

/// The subject's context: `$1` role, `$2` topic, `$3` claims JSON, `$4` sub, `$5` headers JSON.
pub(super) const SET_CONTEXT: &str = "select pg_catalog.set_config('role', $1, true), \
     pg_catalog.set_config('realtime.topic', $2, true), \
     pg_catalog.set_config('request.jwt.claims', $3, true), \
     pg_catalog.set_config('request.jwt.claim.sub', $4, true), \
     pg_catalog.set_config('request.jwt.claim.role', $1, true), \
     pg_catalog.set_config('request.headers', $5, true)";

/// The probe rows the subject can see: `$1` ids; one `extension` per visible row.
pub(super) const VISIBLE_ROWS: &str =
    "select extension from realtime.messages where id = any($1::uuid[])";

/// One row written as the subject: `$1` id, `$2` topic, `$3` extension.
pub(super) const WRITE_ROW: &str = "insert into realtime.messages (id, topic, extension, private) \
     values ($1, $2, $3, true)";

/// What one check asks.
#[derive(Clone, Debug)]
pub struct CheckRequest {
    /// Who asks, about which topic.
    pub subject: Subject,
    /// Extensions whose read permission to probe (none, one or both).
    pub read: Vec<Extension>,
    /// The extension whose write permission to probe, if any.
    pub write: Option<Extension>,
}

/// What one check found: `None` for what it did not ask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckOutcome {
    /// Broadcast read, when asked.
    pub broadcast_read: Option<bool>,
    /// Presence read, when asked.
    pub presence_read: Option<bool>,
    /// The write permission asked for, when asked.
    pub write: Option<bool>,
}

/// Why one check has no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckFailure {
    /// No partition of `realtime.messages` takes a row for now.
    MissingPartition,
    /// A statement ran into `statement_timeout`.
    Timeout(String),
    /// The subject's statements failed: a role that does not exist, a policy that raises. The
    /// check counts as refused.
    Policy {
        /// SQLSTATE.
        sqlstate: String,
        /// The Postgres message.
        message: String,
    },
    /// The server's own statements failed (the table missing, the connection lost).
    Query(String),
}

fn sqlstate(err: &tokio_postgres::Error) -> String {
    err.code()
        .map_or_else(|| "XX000".to_string(), |c| c.code().to_string())
}

fn message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map_or_else(|| err.to_string(), |e| e.message().to_string())
}

/// Sorts the failure of a statement the server runs as itself.
pub(super) fn own_failure(err: &tokio_postgres::Error) -> CheckFailure {
    match err.code() {
        Some(code) if *code == SqlState::CHECK_VIOLATION => CheckFailure::MissingPartition,
        Some(code) if *code == SqlState::QUERY_CANCELED => CheckFailure::Timeout(message(err)),
        _ => CheckFailure::Query(message(err)),
    }
}

/// Sorts the failure of a statement run as the subject.
fn subject_failure(err: &tokio_postgres::Error) -> CheckFailure {
    match err.code() {
        Some(code) if *code == SqlState::QUERY_CANCELED => CheckFailure::Timeout(message(err)),
        // The role went away with the connection, or the like: not the subject's doing.
        None => CheckFailure::Query(message(err)),
        Some(_) => CheckFailure::Policy {
            sqlstate: sqlstate(err),
            message: message(err),
        },
    }
}

/// The prepared statements of the checks on one connection.
struct Statements {
    probe_rows: tokio_postgres::Statement,
    set_context: tokio_postgres::Statement,
    visible_rows: tokio_postgres::Statement,
    write_row: tokio_postgres::Statement,
}

async fn statements(
    client: &deadpool_postgres::Object,
) -> Result<Statements, tokio_postgres::Error> {
    let (probe_rows, set_context, visible_rows, write_row) = futures::try_join!(
        client.prepare_cached(PROBE_ROWS),
        client.prepare_cached(SET_CONTEXT),
        client.prepare_cached(VISIBLE_ROWS),
        client.prepare_cached(WRITE_ROW),
    )?;
    Ok(Statements {
        probe_rows,
        set_context,
        visible_rows,
        write_row,
    })
}

type Answer = Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>;
type Step<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send + 'a>>;

/// The bound values of one check.
struct Bound<'a> {
    request: &'a CheckRequest,
    probe_ids: Vec<uuid::Uuid>,
    probe_extensions: Vec<&'static str>,
    write_id: uuid::Uuid,
    write_extension: &'static str,
}

/// Runs `requests` on `client`, one transaction each, all pipelined; one answer per request, in
/// order.
///
/// # Errors
/// The connection's failure to prepare the statements (nothing was checked).
pub(super) async fn run_batch(
    client: &deadpool_postgres::Object,
    requests: &[&CheckRequest],
) -> Result<Vec<Result<CheckOutcome, CheckFailure>>, tokio_postgres::Error> {
    let st = statements(client).await?;
    let bound: Vec<Bound<'_>> = requests
        .iter()
        .map(|request| Bound {
            request,
            probe_ids: request.read.iter().map(|_| uuid::Uuid::new_v4()).collect(),
            probe_extensions: request.read.iter().map(|e| e.as_str()).collect(),
            write_id: uuid::Uuid::new_v4(),
            write_extension: request.write.map_or("broadcast", Extension::as_str),
        })
        .collect();
    // Requests go out in this order: each future sends its request when first polled, and
    // `join_all` polls them in order.
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(bound.len() * 6);
    for b in &bound {
        let s = &b.request.subject;
        steps.push(Box::pin(async {
            client.batch_execute("begin").await.map(|()| Vec::new())
        }));
        if !b.probe_ids.is_empty() {
            let st = &st;
            steps.push(Box::pin(async move {
                client
                    .query(
                        &st.probe_rows,
                        &[&b.probe_ids, &s.topic, &b.probe_extensions],
                    )
                    .await
            }));
        }
        let st = &st;
        steps.push(Box::pin(async move {
            client
                .query(
                    &st.set_context,
                    &[&s.role, &s.topic, &s.claims, &s.sub, &s.headers],
                )
                .await
        }));
        let both = !b.probe_ids.is_empty() && b.request.write.is_some();
        if both {
            // A failed read (a policy that raises) must not take the write check with it.
            steps.push(Box::pin(async {
                client
                    .batch_execute("savepoint read")
                    .await
                    .map(|()| Vec::new())
            }));
        }
        if !b.probe_ids.is_empty() {
            steps.push(Box::pin(async move {
                client.query(&st.visible_rows, &[&b.probe_ids]).await
            }));
        }
        if both {
            steps.push(Box::pin(async {
                client
                    .batch_execute("rollback to savepoint read")
                    .await
                    .map(|()| Vec::new())
            }));
        }
        if b.request.write.is_some() {
            steps.push(Box::pin(async move {
                client
                    .query(&st.write_row, &[&b.write_id, &s.topic, &b.write_extension])
                    .await
            }));
        }
        steps.push(Box::pin(async {
            client.batch_execute("rollback").await.map(|()| Vec::new())
        }));
    }
    let mut answers = futures::future::join_all(steps).await.into_iter();
    let mut out = Vec::with_capacity(bound.len());
    for b in &bound {
        let mut next = || answers.next().expect("one answer per step");
        let begin = next();
        let probe = (!b.probe_ids.is_empty()).then(&mut next);
        let context = next();
        let both = !b.probe_ids.is_empty() && b.request.write.is_some();
        let savepoint = both.then(&mut next);
        let visible = (!b.probe_ids.is_empty()).then(&mut next);
        let back = both.then(&mut next);
        let write = b.request.write.is_some().then(&mut next);
        let rollback = next();
        // A savepoint fails on its own only when the connection does; after an earlier
        // failure (25P02) that earlier failure decides.
        let savepoints = [savepoint, back]
            .into_iter()
            .flatten()
            .find_map(|answer| match answer {
                Err(e) if e.code() != Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => {
                    Some(own_failure(&e))
                }
                _ => None,
            });
        out.push(match savepoints {
            Some(failure) if begin.is_ok() => Err(failure),
            _ => outcome(b, begin, probe, context, visible, write, rollback),
        });
    }
    Ok(out)
}

/// Reads one check's answers; the first failure decides (what follows it failed with 25P02).
fn outcome(
    b: &Bound<'_>,
    begin: Answer,
    probe: Option<Answer>,
    context: Answer,
    visible: Option<Answer>,
    write: Option<Answer>,
    rollback: Answer,
) -> Result<CheckOutcome, CheckFailure> {
    begin.map_err(|e| own_failure(&e))?;
    if let Some(probe) = probe {
        probe.map_err(|e| own_failure(&e))?;
    }
    context.map_err(|e| subject_failure(&e))?;
    let mut result = CheckOutcome::default();
    if let Some(visible) = visible {
        let rows = match visible {
            Ok(rows) => rows,
            // The role may not read the table at all: no read permission.
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Vec::new(),
            Err(e) => return Err(subject_failure(&e)),
        };
        let seen: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        for (i, extension) in b.request.read.iter().enumerate() {
            let allowed = seen.iter().any(|s| s == b.probe_extensions[i]);
            match extension {
                Extension::Broadcast => result.broadcast_read = Some(allowed),
                Extension::Presence => result.presence_read = Some(allowed),
            }
        }
    }
    if let Some(write) = write {
        result.write = Some(match write {
            Ok(_) => true,
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => false,
            // No partition for now: the same for the subject as for the server.
            Err(e) if e.code() == Some(&SqlState::CHECK_VIOLATION) => {
                return Err(CheckFailure::MissingPartition);
            }
            Err(e) => return Err(subject_failure(&e)),
        });
    }
    rollback.map_err(|e| own_failure(&e))?;
    Ok(result)
}

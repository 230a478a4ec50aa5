//! Row-level security for Postgres Changes (PROTOCOL.md 6.3): which changed rows each
//! subscriber may see, checked as that subscriber's role and JWT claims, in batches.
//!
//! One call of [`visible_rows`] checks a whole batch of changes of one table for every distinct
//! (role, claims) set: one transaction, pipelined on one connection (no round trip per set),
//! holding for each set two prepared statements: [`SET_CLAIMS`] (the role and claims,
//! transaction-local, PostgREST style, so `auth.uid()` and `auth.jwt()` work) and the table's
//! probe (`realtime.rs_probe_sql`: which of the batch's primary keys the policies let through).
//! Prepared once per connection, the probe is planned once and executed per set. A set whose
//! statements fail (a role that does not exist, a policy that raises) gets an error of its own;
//! the sets after it in the aborted transaction are checked again in a new one. Nothing of the
//! user's input is concatenated into SQL: identifiers are quoted by `format('%I')` in the tenant
//! function that writes the probe, and values are bound.
//!
//! The check sees the table as it is when the batch is checked, not as it was at commit (as in
//! the original). DELETEs are not checked (the row is gone).

use std::collections::HashSet;

use crate::error::{ErrorCode, OperationalError};

/// One (role, claims) set and the primary keys it asks about.
#[derive(Debug)]
pub(crate) struct RlsCheck<'a> {
    /// The subscriber's role (`claims.role`).
    pub role: &'a str,
    /// The subscriber's claims as JSON text.
    pub claims: &'a str,
    /// Primary keys to probe, flattened: `key_columns.len()` text values per key, in key
    /// order (Postgres text form).
    pub keys: &'a [String],
}

/// The answer for one [`RlsCheck`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Visibility {
    /// These keys (text form, `key_columns` order) are visible.
    Visible(HashSet<Vec<String>>),
    /// The check failed for this set only (its subscribers get an error).
    Failed {
        /// The SQLSTATE (`42501`: the role may not read the table).
        sqlstate: String,
        /// The Postgres message.
        message: String,
    },
}

impl Visibility {
    /// Returns true when `key` is visible.
    pub(crate) fn sees(&self, key: &Vec<String>) -> bool {
        match self {
            Visibility::Visible(keys) => keys.contains(key),
            Visibility::Failed { .. } => false,
        }
    }
}

/// Errors of a whole batch check (every set failed together).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RlsError {
    /// The statement failed (connection lost, the function missing, a bad table).
    #[error("row-level security check failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// Every set of a round failed as part of an aborted transaction (not expected).
    #[error("row-level security check made no progress")]
    Stalled,
}

impl OperationalError for RlsError {
    fn code(&self) -> ErrorCode {
        ErrorCode::RlsPolicyError
    }

    fn client_message(&self) -> String {
        "Unable to check row level security for this change".to_string()
    }
}

/// Sets the role and claims of one check, transaction-locally: `$1` role, `$2` claims JSON,
/// `$3` the `sub` claim (or empty).
pub(crate) const SET_CLAIMS: &str = "select pg_catalog.set_config('role', $1, true), \
     pg_catalog.set_config('request.jwt.claims', $2, true), \
     pg_catalog.set_config('request.jwt.claim.sub', $3, true), \
     pg_catalog.set_config('request.jwt.claim.role', $1, true)";

/// SQLSTATE of a statement sent after an earlier one of the same transaction failed.
const IN_FAILED_TRANSACTION: &str = "25P02";

/// Returns the text of `relation`'s probe (to prepare): `$1` the keys flattened into one
/// `text[]` (see [`RlsCheck::keys`]); one `text[]` row per visible key.
pub(crate) async fn probe_sql(
    client: &tokio_postgres::Client,
    relation: u32,
    key_columns: &[String],
) -> Result<String, RlsError> {
    let row = client
        .query_one(
            "select realtime.rs_probe_sql($1::oid::regclass, $2)",
            &[&relation, &key_columns],
        )
        .await?;
    Ok(row.get(0))
}

/// The two prepared statements of a check on one connection.
#[derive(Debug)]
pub(crate) struct Statements {
    /// [`SET_CLAIMS`].
    pub set_claims: tokio_postgres::Statement,
    /// The table's probe ([`probe_sql`]).
    pub probe: tokio_postgres::Statement,
}

type Step<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>>
            + Send
            + 'a,
    >,
>;

fn sqlstate(err: &tokio_postgres::Error) -> String {
    err.code()
        .map_or_else(|| "XX000".to_string(), |c| c.code().to_string())
}

fn message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map_or_else(|| err.to_string(), |e| e.message().to_string())
}

/// Checks, for each set of `checks`, which of its keys it can see through the probe of
/// `statements`. The answer has one entry per check, in order.
///
/// # Errors
/// [`RlsError`] when the connection fails (every set is then unanswered).
pub(crate) async fn visible_rows(
    client: &tokio_postgres::Client,
    statements: &Statements,
    checks: &[RlsCheck<'_>],
) -> Result<Vec<Visibility>, RlsError> {
    let mut out: Vec<Option<Visibility>> = checks.iter().map(|_| None).collect();
    let subs: Vec<String> = checks
        .iter()
        .map(|c| {
            serde_json::from_str::<serde_json::Value>(c.claims)
                .ok()
                .and_then(|v| v.get("sub").and_then(|s| s.as_str()).map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    let mut pending: Vec<usize> = (0..checks.len()).collect();
    while !pending.is_empty() {
        // One pipeline: BEGIN, (claims, probe) per pending set, ROLLBACK; requests go out in
        // this order because each future sends its request when first polled, in order.
        let mut steps: Vec<Step<'_>> = Vec::with_capacity(pending.len() * 2 + 2);
        steps.push(Box::pin(async {
            client.batch_execute("begin").await.map(|()| Vec::new())
        }));
        for &i in &pending {
            let (role, claims) = (checks[i].role, checks[i].claims);
            let (sub, keys) = (subs[i].as_str(), checks[i].keys);
            let set_claims = &statements.set_claims;
            let probe = &statements.probe;
            steps.push(Box::pin(async move {
                client.query(set_claims, &[&role, &claims, &sub]).await
            }));
            steps.push(Box::pin(async move { client.query(probe, &[&keys]).await }));
        }
        steps.push(Box::pin(async {
            client.batch_execute("rollback").await.map(|()| Vec::new())
        }));
        let mut results = futures::future::join_all(steps).await.into_iter();
        results.next().expect("begin result")?;
        let mut retry = Vec::new();
        for &i in &pending {
            let set = results.next().expect("claims result");
            let probe = results.next().expect("probe result");
            let failure = match (&set, &probe) {
                (Err(e), _) | (Ok(_), Err(e)) => Some(e),
                _ => None,
            };
            match failure {
                Some(e) if sqlstate(e) == IN_FAILED_TRANSACTION => retry.push(i),
                Some(e) => {
                    out[i] = Some(Visibility::Failed {
                        sqlstate: sqlstate(e),
                        message: message(e),
                    });
                }
                None => {
                    let visible = probe
                        .expect("probe ok")
                        .iter()
                        .map(|row| {
                            row.get::<_, Vec<Option<String>>>(0)
                                .into_iter()
                                .map(Option::unwrap_or_default)
                                .collect()
                        })
                        .collect();
                    out[i] = Some(Visibility::Visible(visible));
                }
            }
        }
        let ended = results.next().expect("rollback result");
        if let Err(e) = ended
            && retry.is_empty()
        {
            return Err(RlsError::Query(e));
        }
        // Each round answers at least the set that failed first, so this ends.
        if retry.len() == pending.len() {
            return Err(RlsError::Stalled);
        }
        pending = retry;
    }
    Ok(out
        .into_iter()
        .map(|v| v.expect("every set answered"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn database() -> tokio_postgres::Client {
        let db = testkit::fresh_database().await;
        let client = testkit::connect(&db).await;
        // Roles are cluster-wide and other tests create them too.
        for role in ["authenticated", "anon"] {
            let sql = format!(
                "do $$ begin create role {role} nologin; \
                 exception when duplicate_object or unique_violation then null; end $$"
            );
            client.batch_execute(&sql).await.expect("role");
        }
        client
            .batch_execute("create schema realtime; create schema auth;")
            .await
            .expect("schemas");
        client
    }

    async fn setup() -> tokio_postgres::Client {
        let mut client = database().await;
        client
            .batch_execute(
                r#"
                create or replace function auth.uid() returns uuid language sql stable as
                  $f$ select (nullif(current_setting('request.jwt.claims', true), '')::jsonb->>'sub')::uuid $f$;
                create table public."Odd ""Notes""" (
                  "Owner Id" uuid not null, "n°" int not null, body text,
                  primary key ("Owner Id", "n°"));
                alter table public."Odd ""Notes""" enable row level security;
                create policy own on public."Odd ""Notes""" for select to authenticated
                  using ("Owner Id" = auth.uid());
                grant usage on schema public, auth to authenticated, anon;
                grant select on public."Odd ""Notes""" to authenticated;
                grant execute on function auth.uid() to authenticated, anon;
                insert into public."Odd ""Notes""" values
                  ('00000000-0000-0000-0000-00000000000a', 1, 'a1'),
                  ('00000000-0000-0000-0000-00000000000a', 2, 'a2'),
                  ('00000000-0000-0000-0000-00000000000b', 1, 'b1');
                create table public.boom (id int primary key);
                alter table public.boom enable row level security;
                create function public.explode() returns bool language plpgsql as
                  $f$ begin raise exception 'policy exploded'; end $f$;
                create policy p on public.boom for select to authenticated
                  using (current_setting('request.jwt.claims', true)::jsonb->>'sub' <> 'bad'
                         or public.explode());
                grant select on public.boom to authenticated;
                insert into public.boom values (1), (2);
                "#,
            )
            .await
            .expect("schema");
        crate::db::run_tenant_migrations(&mut client, &crate::types::TenantId::from("t"))
            .await
            .expect("tenant migrations");
        client
    }

    async fn oid(client: &tokio_postgres::Client, name: &str) -> u32 {
        client
            .query_one("select $1::text::regclass::oid", &[&name])
            .await
            .expect("oid")
            .get(0)
    }

    async fn statements(client: &tokio_postgres::Client, rel: u32, keys: &[&str]) -> Statements {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_string()).collect();
        let sql = probe_sql(client, rel, &keys).await.expect("probe text");
        Statements {
            set_claims: client.prepare(SET_CLAIMS).await.expect("prepare claims"),
            probe: client.prepare(&sql).await.expect("prepare probe"),
        }
    }

    fn flat(keys: &[&[&str]]) -> Vec<String> {
        keys.iter()
            .flat_map(|k| k.iter().map(|v| (*v).to_string()))
            .collect()
    }

    fn key(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|p| (*p).to_string()).collect()
    }

    const A: &str = "00000000-0000-0000-0000-00000000000a";
    const B: &str = "00000000-0000-0000-0000-00000000000b";

    #[tokio::test]
    async fn each_claims_set_sees_only_what_its_policies_allow() {
        let client = setup().await;
        let rel = oid(&client, r#"public."Odd ""Notes""""#).await;
        let claims_a = format!(r#"{{"sub":"{A}","role":"authenticated"}}"#);
        let claims_b = format!(r#"{{"sub":"{B}","role":"authenticated"}}"#);
        let all = flat(&[&[A, "1"], &[A, "2"], &[B, "1"], &[B, "9"]]);
        let checks = [
            RlsCheck {
                role: "authenticated",
                claims: &claims_a,
                keys: &all,
            },
            RlsCheck {
                role: "authenticated",
                claims: &claims_b,
                keys: &all,
            },
            // anon has no SELECT grant at all: an error for this set only.
            RlsCheck {
                role: "anon",
                claims: r#"{"role":"anon"}"#,
                keys: &all,
            },
            RlsCheck {
                role: "no_such_role",
                claims: r#"{"role":"no_such_role"}"#,
                keys: &all,
            },
        ];
        let st = statements(&client, rel, &["Owner Id", "n°"]).await;
        let out = visible_rows(&client, &st, &checks)
            .await
            .expect("batch answers");
        assert_eq!(out.len(), 4);
        assert!(out[0].sees(&key(&[A, "1"])) && out[0].sees(&key(&[A, "2"])));
        assert!(!out[0].sees(&key(&[B, "1"])));
        assert!(
            out[1].sees(&key(&[B, "1"]))
                && !out[1].sees(&key(&[A, "1"]))
                && !out[1].sees(&key(&[B, "9"]))
        );
        assert!(matches!(&out[2], Visibility::Failed { sqlstate, message }
                if sqlstate == "42501" && message.contains("permission denied")));
        assert!(
            matches!(&out[3], Visibility::Failed { message, .. } if message.contains("no_such_role"))
        );
        // The session is back to its own role afterwards.
        let user: String = client
            .query_one("select current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(user, "postgres");
    }

    #[tokio::test]
    async fn a_policy_that_raises_fails_only_its_own_set() {
        let client = setup().await;
        let rel = oid(&client, "public.boom").await;
        let checks = [
            RlsCheck {
                role: "authenticated",
                claims: r#"{"sub":"bad","role":"authenticated"}"#,
                keys: &flat(&[&["1"]]),
            },
            RlsCheck {
                role: "authenticated",
                claims: r#"{"sub":"good","role":"authenticated"}"#,
                keys: &flat(&[&["1"], &["2"], &["3"]]),
            },
            RlsCheck {
                role: "authenticated",
                claims: r#"{"sub":"bad","role":"authenticated"}"#,
                keys: &flat(&[&["2"]]),
            },
            RlsCheck {
                role: "authenticated",
                claims: r#"{"sub":"also good","role":"authenticated"}"#,
                keys: &flat(&[&["2"]]),
            },
        ];
        let st = statements(&client, rel, &["id"]).await;
        let out = visible_rows(&client, &st, &checks).await.unwrap();
        assert!(
            matches!(&out[0], Visibility::Failed { message, .. } if message.contains("policy exploded"))
        );
        assert!(
            out[1].sees(&key(&["1"])) && out[1].sees(&key(&["2"])) && !out[1].sees(&key(&["3"]))
        );
        // Sets after a failure in the same transaction are checked again, not failed.
        assert!(matches!(&out[2], Visibility::Failed { .. }));
        assert!(out[3].sees(&key(&["2"])));
    }

    #[tokio::test]
    async fn hostile_values_are_data_not_sql() {
        let client = setup().await;
        let rel = oid(&client, "public.boom").await;
        let checks = [RlsCheck {
            role: "authenticated",
            claims: r#"{"sub":"x'); drop table public.boom; --","role":"authenticated"}"#,
            keys: &flat(&[&["1); drop table public.boom; --"], &["2"]]),
        }];
        let st = statements(&client, rel, &["id"]).await;
        let out = visible_rows(&client, &st, &checks).await.unwrap();
        // The bad key fails the cast: the whole set reports it, nothing runs.
        assert!(
            matches!(&out[0], Visibility::Failed { message, .. } if message.contains("invalid input syntax"))
        );
        let still_there: i64 = client
            .query_one("select count(*) from public.boom", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(still_there, 2);
        let bad_column = probe_sql(&client, rel, &["id\"; drop".to_string()]).await;
        assert!(bad_column.is_err());
    }
}

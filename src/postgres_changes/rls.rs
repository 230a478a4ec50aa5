//! Row-level security for Postgres Changes (PROTOCOL.md 6.3): which changed rows each
//! subscriber may see, checked as that subscriber's role and JWT claims, in batches.
//!
//! One call of [`visible_rows`] checks a whole batch of changes of one table for every distinct
//! (role, claims) set at once: a single statement, `realtime.rs_visible_rows`, which for each
//! set switches to the role and claims (transaction-local, PostgREST style, so `auth.uid()` and
//! `auth.jwt()` work), selects the batch's primary keys through the table's policies, and reports
//! the keys it could see. A set whose check fails (a role that does not exist, a policy that
//! raises) gets an error of its own; every other set is still answered. Nothing of the user's
//! input is concatenated into SQL: the table is a `regclass` parameter, key columns are quoted by
//! `format('%I')` inside the function and values are cast from a `jsonb` parameter.
//!
//! The check sees the table as it is when the batch is checked, not as it was at commit (as in
//! the original). DELETEs are not checked (the row is gone).

use std::collections::HashSet;

use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::error::{ErrorCode, OperationalError};

/// One (role, claims) set and the primary keys it asks about.
#[derive(Debug, Serialize)]
pub(crate) struct RlsCheck<'a> {
    /// The subscriber's role (`claims.role`).
    pub role: &'a str,
    /// The subscriber's claims as JSON text.
    pub claims: &'a str,
    /// Primary keys to probe, each in `key_columns` order, in Postgres text form.
    pub keys: Vec<Vec<&'a str>>,
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
    pub(crate) fn sees(&self, key: &[&str]) -> bool {
        match self {
            Visibility::Visible(keys) => keys
                .iter()
                .any(|k| k.len() == key.len() && k.iter().zip(key).all(|(a, b)| a == b)),
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
}

impl OperationalError for RlsError {
    fn code(&self) -> ErrorCode {
        ErrorCode::RlsPolicyError
    }

    fn client_message(&self) -> String {
        "Unable to check row level security for this change".to_string()
    }
}

/// Checks, for each set of `checks`, which of its keys of table `relation` (an oid) it can see.
/// The answer has one entry per check, in order.
pub(crate) async fn visible_rows<C: GenericClient>(
    client: &C,
    relation: u32,
    key_columns: &[&str],
    checks: &[RlsCheck<'_>],
) -> Result<Vec<Visibility>, RlsError> {
    let mut out: Vec<Visibility> = checks
        .iter()
        .map(|_| Visibility::Visible(HashSet::new()))
        .collect();
    if checks.is_empty() {
        return Ok(out);
    }
    let payload = serde_json::to_value(checks).expect("checks serialize");
    let columns: Vec<String> = key_columns.iter().map(|c| (*c).to_string()).collect();
    let rows = client
        .query(
            "select check_index, key_values, error \
             from realtime.rs_visible_rows($1::oid::regclass, $2, $3)",
            &[&relation, &columns, &tokio_postgres::types::Json(&payload)],
        )
        .await?;
    for row in rows {
        let index: i32 = row.get(0);
        let Some(slot) = usize::try_from(index).ok().and_then(|i| out.get_mut(i)) else {
            continue;
        };
        if let Some(error) = row.get::<_, Option<String>>(2) {
            let (sqlstate, message) = error.split_once(' ').unwrap_or(("XX000", &error));
            *slot = Visibility::Failed {
                sqlstate: sqlstate.to_string(),
                message: message.to_string(),
            };
        } else if let (Visibility::Visible(keys), Some(values)) =
            (&mut *slot, row.get::<_, Option<Vec<Option<String>>>>(1))
        {
            keys.insert(values.into_iter().map(Option::unwrap_or_default).collect());
        }
    }
    Ok(out)
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

    const A: &str = "00000000-0000-0000-0000-00000000000a";
    const B: &str = "00000000-0000-0000-0000-00000000000b";

    #[tokio::test]
    async fn each_claims_set_sees_only_what_its_policies_allow() {
        let client = setup().await;
        let rel = oid(&client, r#"public."Odd ""Notes""""#).await;
        let claims_a = format!(r#"{{"sub":"{A}","role":"authenticated"}}"#);
        let claims_b = format!(r#"{{"sub":"{B}","role":"authenticated"}}"#);
        let all = vec![vec![A, "1"], vec![A, "2"], vec![B, "1"], vec![B, "9"]];
        let checks = [
            RlsCheck {
                role: "authenticated",
                claims: &claims_a,
                keys: all.clone(),
            },
            RlsCheck {
                role: "authenticated",
                claims: &claims_b,
                keys: all.clone(),
            },
            // anon has no SELECT grant at all: an error for this set only.
            RlsCheck {
                role: "anon",
                claims: r#"{"role":"anon"}"#,
                keys: all.clone(),
            },
            RlsCheck {
                role: "no_such_role",
                claims: r#"{"role":"no_such_role"}"#,
                keys: all,
            },
        ];
        let out = visible_rows(&client, rel, &["Owner Id", "n°"], &checks)
            .await
            .expect("batch answers");
        assert_eq!(out.len(), 4);
        assert!(out[0].sees(&[A, "1"]) && out[0].sees(&[A, "2"]));
        assert!(!out[0].sees(&[B, "1"]));
        assert!(out[1].sees(&[B, "1"]) && !out[1].sees(&[A, "1"]) && !out[1].sees(&[B, "9"]));
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
                keys: vec![vec!["1"]],
            },
            RlsCheck {
                role: "authenticated",
                claims: r#"{"sub":"good","role":"authenticated"}"#,
                keys: vec![vec!["1"], vec!["2"], vec!["3"]],
            },
        ];
        let out = visible_rows(&client, rel, &["id"], &checks).await.unwrap();
        assert!(
            matches!(&out[0], Visibility::Failed { message, .. } if message.contains("policy exploded"))
        );
        assert!(out[1].sees(&["1"]) && out[1].sees(&["2"]) && !out[1].sees(&["3"]));
    }

    #[tokio::test]
    async fn hostile_values_are_data_not_sql() {
        let client = setup().await;
        let rel = oid(&client, "public.boom").await;
        let checks = [RlsCheck {
            role: "authenticated",
            claims: r#"{"sub":"x'); drop table public.boom; --","role":"authenticated"}"#,
            keys: vec![vec!["1); drop table public.boom; --"], vec!["2"]],
        }];
        let out = visible_rows(&client, rel, &["id"], &checks).await.unwrap();
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
        let bad_column = visible_rows(&client, rel, &["id\"; drop"], &checks).await;
        assert!(bad_column.is_err());
    }
}

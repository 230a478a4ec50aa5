//! Catalog queries on a tenant database: what the change stream and the subscriptions need to
//! know about publications, tables, columns and roles.
//!
//! Each function is one statement. Names are bound as text parameters and compared with the
//! catalog's names exactly (no identifier parsing, no case folding); identifiers are never put
//! into SQL text, so quotes, spaces, upper case and any Unicode are just data.
//!
//! Columns are the ones a logical replication stream carries: user columns (`attnum > 0`) that
//! are neither dropped nor generated, in `attnum` order.

use tokio_postgres::GenericClient;
use tokio_postgres::types::Oid;

use super::PgError;

/// The tables of a publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicationTables {
    /// Whether a publication of that name exists at all.
    pub exists: bool,
    /// Its tables (`pg_publication_tables`), by schema then name.
    pub tables: Vec<PublishedTable>,
}

/// One table of a publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedTable {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// The table's oid (`pg_class.oid`), as relation messages of the stream carry it.
    pub oid: Oid,
}

/// `pg_class.relreplident`: what an UPDATE or DELETE carries of the old row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key columns.
    Default,
    /// `f`: every column.
    Full,
    /// `n`: nothing.
    Nothing,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    fn from_code(code: &str) -> Option<ReplicaIdentity> {
        match code {
            "d" => Some(ReplicaIdentity::Default),
            "f" => Some(ReplicaIdentity::Full),
            "n" => Some(ReplicaIdentity::Nothing),
            "i" => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }
}

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnInfo {
    /// `attnum` (1-based, with gaps where columns were dropped).
    pub attnum: i16,
    /// Column name.
    pub name: String,
    /// `pg_type.typname` (`int4`, `text`, `_int4` for an int4 array, ...): the `type` of a
    /// payload's `columns` entry (PROTOCOL.md 6.4).
    pub type_name: String,
    /// The type's oid.
    pub type_oid: Oid,
    /// Part of the primary key.
    pub is_pkey: bool,
}

/// What the stream needs to know about one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableInfo {
    /// `pg_class.oid`.
    pub oid: Oid,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Columns in `attnum` order (not dropped, not generated).
    pub columns: Vec<ColumnInfo>,
    /// Replica identity.
    pub replica_identity: ReplicaIdentity,
    /// Row-level security enabled (`relrowsecurity`).
    pub rls_enabled: bool,
}

/// A table named by schema and name, or by oid.
#[derive(Clone, Copy, Debug)]
pub enum TableRef<'a> {
    /// Exact schema and table names (not identifiers: no quoting, no case folding).
    Name {
        /// Schema name.
        schema: &'a str,
        /// Table name.
        table: &'a str,
    },
    /// `pg_class.oid`.
    Oid(Oid),
}

/// Returns the tables of publication `publication` and whether it exists.
///
/// # Errors
/// The statement's error.
pub async fn publication_tables<C: GenericClient + Sync>(
    client: &C,
    publication: &str,
) -> Result<PublicationTables, PgError> {
    let rows = client
        .query(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
                    t.schemaname, t.tablename, t.oid
             FROM (SELECT 1) AS one
             LEFT JOIN LATERAL (
                 SELECT pt.schemaname::text AS schemaname, pt.tablename::text AS tablename,
                        c.oid AS oid
                 FROM pg_publication_tables pt
                 JOIN pg_namespace n ON n.nspname = pt.schemaname
                 JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
                 WHERE pt.pubname = $1
             ) AS t ON true
             ORDER BY t.schemaname, t.tablename",
            &[&publication],
        )
        .await?;
    let exists = rows.first().is_some_and(|row| row.get::<_, bool>(0));
    let tables = rows
        .iter()
        .filter_map(|row| {
            Some(PublishedTable {
                schema: row.get::<_, Option<String>>(1)?,
                table: row.get::<_, Option<String>>(2)?,
                oid: row.get::<_, Option<Oid>>(3)?,
            })
        })
        .collect();
    Ok(PublicationTables { exists, tables })
}

/// Returns a table's columns, replica identity and RLS flag; `None` when there is no such
/// ordinary or partitioned table.
///
/// # Errors
/// The statement's error.
pub async fn table_info<C: GenericClient + Sync>(
    client: &C,
    table: TableRef<'_>,
) -> Result<Option<TableInfo>, PgError> {
    let (oid, schema, name) = match table {
        TableRef::Oid(oid) => (Some(oid), None, None),
        TableRef::Name { schema, table } => (None, Some(schema), Some(table)),
    };
    let row = client
        .query_opt(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text,
                    c.relrowsecurity,
                    coalesce(cols.attnums, '{}'), coalesce(cols.names, '{}'),
                    coalesce(cols.type_names, '{}'), coalesce(cols.type_oids, '{}'),
                    coalesce(cols.pkeys, '{}')
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN LATERAL (
                 SELECT array_agg(a.attnum ORDER BY a.attnum) AS attnums,
                        array_agg(a.attname::text ORDER BY a.attnum) AS names,
                        array_agg(t.typname::text ORDER BY a.attnum) AS type_names,
                        array_agg(a.atttypid ORDER BY a.attnum) AS type_oids,
                        array_agg(EXISTS (
                            SELECT 1 FROM pg_index i
                            WHERE i.indrelid = c.oid AND i.indisprimary
                              AND a.attnum = ANY (i.indkey)
                        ) ORDER BY a.attnum) AS pkeys
                 FROM pg_attribute a
                 JOIN pg_type t ON t.oid = a.atttypid
                 WHERE a.attrelid = c.oid AND a.attnum > 0
                   AND NOT a.attisdropped AND a.attgenerated = ''
             ) AS cols ON true
             WHERE c.relkind IN ('r', 'p')
               AND CASE WHEN $1::oid IS NOT NULL THEN c.oid = $1::oid
                        ELSE n.nspname = $2::text AND c.relname = $3::text END",
            &[&oid, &schema, &name],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let attnums: Vec<i16> = row.get(5);
    let names: Vec<String> = row.get(6);
    let type_names: Vec<String> = row.get(7);
    let type_oids: Vec<Oid> = row.get(8);
    let pkeys: Vec<bool> = row.get(9);
    let columns = attnums
        .into_iter()
        .zip(names)
        .zip(type_names)
        .zip(type_oids)
        .zip(pkeys)
        .map(
            |((((attnum, name), type_name), type_oid), is_pkey)| ColumnInfo {
                attnum,
                name,
                type_name,
                type_oid,
                is_pkey,
            },
        )
        .collect();
    let identity: String = row.get(3);
    Ok(Some(TableInfo {
        oid: row.get(0),
        schema: row.get(1),
        name: row.get(2),
        columns,
        // Postgres knows no other codes; `Default` is its own default.
        replica_identity: ReplicaIdentity::from_code(&identity).unwrap_or(ReplicaIdentity::Default),
        rls_enabled: row.get(4),
    }))
}

/// Returns whether a role of exactly this name exists.
///
/// # Errors
/// The statement's error.
pub async fn role_exists<C: GenericClient + Sync>(client: &C, role: &str) -> Result<bool, PgError> {
    // quote_ident makes to_regrole read the name as it is (no case folding, any characters).
    let row = client
        .query_one(
            "SELECT to_regrole(quote_ident($1::text)) IS NOT NULL",
            &[&role],
        )
        .await?;
    Ok(row.get(0))
}

/// Returns the columns of table `table` (not dropped, not generated, in `attnum` order) that
/// role `role` may `SELECT` (`has_column_privilege`: a table-level grant covers every column,
/// a column-level grant only its columns). Empty when the role or the table does not exist.
///
/// # Errors
/// The statement's error.
pub async fn selectable_columns<C: GenericClient + Sync>(
    client: &C,
    role: &str,
    table: Oid,
) -> Result<Vec<String>, PgError> {
    let rows = client
        .query(
            "SELECT a.attname::text
             FROM pg_attribute a
             CROSS JOIN (SELECT to_regrole(quote_ident($1::text)) AS role) AS r
             WHERE a.attrelid = $2::oid AND a.attnum > 0
               AND NOT a.attisdropped AND a.attgenerated = ''
               AND r.role IS NOT NULL
               AND has_column_privilege(r.role, a.attrelid, a.attnum, 'SELECT')
             ORDER BY a.attnum",
            &[&role, &table],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

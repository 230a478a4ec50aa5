//! pgoutput logical replication messages, protocol version 1, plus the logical decoding
//! message the `messages` option adds: [`decode`] reads one message (the payload of one
//! XLogData, or one `data` row of `pg_logical_slot_get_binary_changes`) without copying it,
//! and [`RelationCache`] keeps the relation and type descriptions later rows refer to.
//!
//! Pure and synchronous. Every read is bounds-checked: arbitrary bytes give a [`DecodeError`]
//! with the offset where reading stopped, never a panic. A message must be read to its last
//! byte; trailing bytes are an error (they would mean another protocol version). Only
//! Relation messages allocate (their column list); tuple values are slices of the buffer.
//!
//! Layout (all integers big-endian; strings NUL-terminated; `Lsn` an Int64; timestamps Int64
//! microseconds since 2000-01-01 00:00 UTC):
//!
//! | Tag | Message | Body |
//! |---|---|---|
//! | `B` | Begin | final LSN, commit timestamp, xid (Int32) |
//! | `C` | Commit | flags (Int8), commit LSN, end LSN, commit timestamp |
//! | `O` | Origin | commit LSN on the origin, name |
//! | `R` | Relation | oid, namespace (empty for `pg_catalog`), name, replica identity (Int8 `d`/`n`/`f`/`i`), Int16 column count, per column: flags (Int8, 1 = part of the key), name, type oid, typmod (Int32) |
//! | `Y` | Type | oid, namespace, name |
//! | `I` | Insert | relation oid, `N`, tuple |
//! | `U` | Update | relation oid, optional `K` (key) or `O` (old row) and a tuple, `N`, tuple |
//! | `D` | Delete | relation oid, `K` or `O`, tuple |
//! | `T` | Truncate | Int32 relation count, options (Int8: 1 cascade, 2 restart identity), oids |
//! | `M` | Message | flags (Int8, 1 = transactional), LSN, prefix, Int32 length, content |
//!
//! A tuple is an Int16 column count and, per column, `n` (null), `u` (unchanged TOASTed value,
//! not sent), or `t` / `b` followed by an Int32 length and the text (or binary) form.

use std::collections::HashMap;
use std::fmt;

use super::values::{CatalogType, PgType, TypeRegistry};
use crate::error::{ErrorCode, OperationalError};

/// A position in the WAL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    /// Writes the `XXX/XXX` form Postgres uses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// One pgoutput message, borrowing from the buffer it was decoded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// `B`: a transaction starts.
    Begin(Begin),
    /// `C`: the transaction commits.
    Commit(Commit),
    /// `O`: the transaction came from another node (replication origin).
    Origin(Origin<'a>),
    /// `R`: a table's description, sent before its first change in a session and after DDL.
    Relation(RelationMessage<'a>),
    /// `Y`: a user type's name, sent before the Relation that uses it.
    Type(TypeMessage<'a>),
    /// `I`: a row was inserted.
    Insert(Insert<'a>),
    /// `U`: a row was updated.
    Update(Update<'a>),
    /// `D`: a row was deleted.
    Delete(Delete<'a>),
    /// `T`: tables were truncated.
    Truncate(Truncate<'a>),
    /// `M`: a `pg_logical_emit_message` (with the `messages` option).
    Logical(LogicalMessage<'a>),
}

/// `B`: the start of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 00:00 UTC.
    pub commit_time: i64,
    /// Transaction id.
    pub xid: u32,
}

/// `C`: the end of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Unused by protocol version 1 (0).
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The LSN just after the commit record: what to acknowledge once handled.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 00:00 UTC.
    pub commit_time: i64,
}

/// `O`: the replication origin of the transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: &'a str,
}

/// A table's `REPLICA IDENTITY`: which old columns Update and Delete carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: every column.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            _ => return None,
        })
    }
}

/// One column of a Relation message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelationColumn<'a> {
    /// Whether the column is part of the replica identity key (flag 1).
    pub key: bool,
    /// Column name.
    pub name: &'a str,
    /// `pg_type` OID of the column's type.
    pub type_oid: u32,
    /// `atttypmod` (-1 when none).
    pub type_modifier: i32,
}

/// `R`: a table's description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationMessage<'a> {
    /// The table's OID, which changes refer to.
    pub oid: u32,
    /// Schema name; pgoutput sends an empty string for `pg_catalog`.
    pub namespace: &'a str,
    /// Table name.
    pub name: &'a str,
    /// `REPLICA IDENTITY` setting.
    pub replica_identity: ReplicaIdentity,
    /// Columns in table order (dropped and generated columns are not sent).
    pub columns: Vec<RelationColumn<'a>>,
}

/// `Y`: a user type's schema and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeMessage<'a> {
    /// The type's OID.
    pub oid: u32,
    /// Schema name.
    pub namespace: &'a str,
    /// `typname`.
    pub name: &'a str,
}

/// `I`: an inserted row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insert<'a> {
    /// OID of the table (described by an earlier Relation message).
    pub relation: u32,
    /// The new row.
    pub new: Tuple<'a>,
}

/// Which old image an Update or Delete carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OldKind {
    /// `K`: the replica identity key columns (others null).
    Key,
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full,
}

/// `U`: an updated row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Update<'a> {
    /// OID of the table.
    pub relation: u32,
    /// The old image, when the key changed or the identity is FULL.
    pub old: Option<(OldKind, Tuple<'a>)>,
    /// The new row; unchanged TOASTed columns are [`TupleValue::UnchangedToast`].
    pub new: Tuple<'a>,
}

/// `D`: a deleted row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delete<'a> {
    /// OID of the table.
    pub relation: u32,
    /// Which old image `old` is.
    pub old_kind: OldKind,
    /// The old image.
    pub old: Tuple<'a>,
}

/// `T`: truncated tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncate<'a> {
    /// Option bits: 1 `CASCADE`, 2 `RESTART IDENTITY`.
    pub options: u8,
    /// The OIDs, 4 bytes each (length checked).
    oids: &'a [u8],
}

impl<'a> Truncate<'a> {
    /// Whether `CASCADE` was given.
    pub fn cascade(&self) -> bool {
        self.options & 1 != 0
    }

    /// Whether `RESTART IDENTITY` was given.
    pub fn restart_identity(&self) -> bool {
        self.options & 2 != 0
    }

    /// Returns the OIDs of the truncated tables.
    pub fn relations(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.oids
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// `M`: a message from `pg_logical_emit_message`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogicalMessage<'a> {
    /// Whether it was emitted as part of a transaction (flag 1); otherwise it arrives on its
    /// own, outside Begin/Commit.
    pub transactional: bool,
    /// The LSN of the message.
    pub lsn: Lsn,
    /// The prefix given by the emitter.
    pub prefix: &'a str,
    /// The content, as bytes.
    pub content: &'a [u8],
}

/// One column of a tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TupleValue<'a> {
    /// `n`: SQL NULL.
    Null,
    /// `u`: a TOASTed value that the change did not touch, so it is not sent.
    UnchangedToast,
    /// `t`: the value's text output form.
    Text(&'a [u8]),
    /// `b`: the value's binary form (only with the `binary` option).
    Binary(&'a [u8]),
}

/// A row image: its columns, read lazily from the (already validated) bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tuple<'a> {
    columns: u16,
    /// The column entries, validated by [`decode`].
    data: &'a [u8],
}

impl<'a> Tuple<'a> {
    /// Returns the number of columns.
    pub fn len(&self) -> usize {
        usize::from(self.columns)
    }

    /// Whether the tuple has no columns.
    pub fn is_empty(&self) -> bool {
        self.columns == 0
    }

    /// Returns the columns in table order.
    pub fn iter(&self) -> TupleIter<'a> {
        TupleIter {
            left: self.columns,
            reader: Reader::new(self.data),
        }
    }
}

impl fmt::Debug for Tuple<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for Tuple<'a> {
    type Item = TupleValue<'a>;
    type IntoIter = TupleIter<'a>;

    fn into_iter(self) -> TupleIter<'a> {
        self.iter()
    }
}

/// The columns of a [`Tuple`].
#[derive(Clone, Debug)]
pub struct TupleIter<'a> {
    left: u16,
    reader: Reader<'a>,
}

impl<'a> Iterator for TupleIter<'a> {
    type Item = TupleValue<'a>;

    fn next(&mut self) -> Option<TupleValue<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // `decode` validated these bytes; a failure here cannot happen and just ends the
        // iteration.
        self.reader.tuple_value().ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

/// Bytes that are not a pgoutput protocol-1 message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ends before a field of `needed` bytes at `offset`.
    #[error("message truncated: {needed} bytes needed at offset {offset}")]
    Truncated {
        /// Where the field starts.
        offset: usize,
        /// The field's size.
        needed: usize,
    },
    /// The first byte is not a message tag of protocol version 1.
    #[error("unknown message tag {tag:#04x} at offset {offset}")]
    UnknownTag {
        /// Always 0.
        offset: usize,
        /// The byte found.
        tag: u8,
    },
    /// A byte with a fixed set of values (tuple markers, replica identity) has another one.
    #[error("unexpected byte {found:#04x} at offset {offset}, expected {expected}")]
    UnexpectedByte {
        /// Where the byte is.
        offset: usize,
        /// The byte found.
        found: u8,
        /// What was allowed there.
        expected: &'static str,
    },
    /// A string has no terminating NUL.
    #[error("unterminated string at offset {offset}")]
    UnterminatedString {
        /// Where the string starts.
        offset: usize,
    },
    /// A name or prefix is not UTF-8.
    #[error("string at offset {offset} is not utf-8")]
    InvalidUtf8 {
        /// Where the string starts.
        offset: usize,
    },
    /// A length or count is negative.
    #[error("negative length {length} at offset {offset}")]
    NegativeLength {
        /// Where the length is.
        offset: usize,
        /// The value read.
        length: i32,
    },
    /// Bytes are left after the message.
    #[error("{count} trailing bytes at offset {offset}")]
    TrailingBytes {
        /// Where the message ended.
        offset: usize,
        /// How many bytes follow it.
        count: usize,
    },
}

impl DecodeError {
    /// Returns the offset in the message where decoding stopped.
    pub fn offset(&self) -> usize {
        match *self {
            DecodeError::Truncated { offset, .. }
            | DecodeError::UnknownTag { offset, .. }
            | DecodeError::UnexpectedByte { offset, .. }
            | DecodeError::UnterminatedString { offset }
            | DecodeError::InvalidUtf8 { offset }
            | DecodeError::NegativeLength { offset, .. }
            | DecodeError::TrailingBytes { offset, .. } => offset,
        }
    }
}

impl OperationalError for DecodeError {
    fn code(&self) -> ErrorCode {
        ErrorCode::ReplicationError
    }

    fn client_message(&self) -> String {
        "unable to decode a replication message".to_owned()
    }
}

/// A bounds-checked cursor; offsets in errors are relative to the start of `buf`.
#[derive(Clone, Debug)]
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn offset(&self) -> usize {
        self.pos
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(DecodeError::Truncated {
                offset: self.offset(),
                needed: n,
            });
        };
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.array().map(i32::from_be_bytes)
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.array().map(i64::from_be_bytes)
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        self.array().map(u64::from_be_bytes).map(Lsn)
    }

    /// A non-negative Int32 length or count.
    fn length(&mut self) -> Result<usize, DecodeError> {
        let offset = self.offset();
        let length = self.i32()?;
        usize::try_from(length).map_err(|_| DecodeError::NegativeLength { offset, length })
    }

    fn string(&mut self) -> Result<&'a str, DecodeError> {
        let offset = self.offset();
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString { offset });
        };
        let s =
            std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::InvalidUtf8 { offset })?;
        self.pos += nul + 1;
        Ok(s)
    }

    fn tuple_value(&mut self) -> Result<TupleValue<'a>, DecodeError> {
        let offset = self.offset();
        match self.u8()? {
            b'n' => Ok(TupleValue::Null),
            b'u' => Ok(TupleValue::UnchangedToast),
            b't' => {
                let n = self.length()?;
                self.bytes(n).map(TupleValue::Text)
            }
            b'b' => {
                let n = self.length()?;
                self.bytes(n).map(TupleValue::Binary)
            }
            found => Err(DecodeError::UnexpectedByte {
                offset,
                found,
                expected: "a tuple column kind (n, u, t, b)",
            }),
        }
    }

    /// Reads and validates a tuple, returning it as a slice of the buffer.
    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let columns = self.u16()?;
        let start = self.pos;
        for _ in 0..columns {
            self.tuple_value()?;
        }
        Ok(Tuple {
            columns,
            data: &self.buf[start..self.pos],
        })
    }

    /// Reads a one-byte marker that must be one of `allowed`.
    fn marker(&mut self, allowed: &[u8], expected: &'static str) -> Result<u8, DecodeError> {
        let offset = self.offset();
        let found = self.u8()?;
        if allowed.contains(&found) {
            Ok(found)
        } else {
            Err(DecodeError::UnexpectedByte {
                offset,
                found,
                expected,
            })
        }
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                offset: self.offset(),
                count,
            }),
        }
    }
}

fn old_kind(marker: u8) -> OldKind {
    if marker == b'K' {
        OldKind::Key
    } else {
        OldKind::Full
    }
}

/// Decodes one pgoutput message (protocol version 1, and `M` messages).
///
/// # Errors
///
/// [`DecodeError`] for bytes that are not exactly one such message: too short, an unknown
/// tag (including the streaming and two-phase messages of later versions), a bad marker,
/// an unterminated or non-UTF-8 string, a negative length, or bytes left over.
pub fn decode(buf: &[u8]) -> Result<Message<'_>, DecodeError> {
    let mut r = Reader::new(buf);
    let tag = r.u8()?;
    let message = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: r.lsn()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        }),
        b'C' => Message::Commit(Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.i64()?,
        }),
        b'O' => Message::Origin(Origin {
            commit_lsn: r.lsn()?,
            name: r.string()?,
        }),
        b'R' => {
            let oid = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let identity_at = r.offset();
            let identity = r.u8()?;
            let replica_identity =
                ReplicaIdentity::from_byte(identity).ok_or(DecodeError::UnexpectedByte {
                    offset: identity_at,
                    found: identity,
                    expected: "a replica identity (d, n, f, i)",
                })?;
            let count = r.u16()?;
            // Each column takes at least 11 bytes: never reserve more than the buffer holds.
            let mut columns = Vec::with_capacity(usize::from(count).min(buf.len() / 11));
            for _ in 0..count {
                columns.push(RelationColumn {
                    key: r.u8()? & 1 != 0,
                    name: r.string()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(RelationMessage {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type(TypeMessage {
            oid: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        }),
        b'I' => {
            let relation = r.u32()?;
            r.marker(b"N", "N (new tuple)")?;
            Message::Insert(Insert {
                relation,
                new: r.tuple()?,
            })
        }
        b'U' => {
            let relation = r.u32()?;
            let marker = r.marker(b"KON", "K, O or N (tuple kind)")?;
            let old = if marker == b'N' {
                None
            } else {
                let old = r.tuple()?;
                r.marker(b"N", "N (new tuple)")?;
                Some((old_kind(marker), old))
            };
            Message::Update(Update {
                relation,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            let relation = r.u32()?;
            let marker = r.marker(b"KO", "K or O (old tuple kind)")?;
            Message::Delete(Delete {
                relation,
                old_kind: old_kind(marker),
                old: r.tuple()?,
            })
        }
        b'T' => {
            let count_at = r.offset();
            let count = r.length()?;
            let options = r.u8()?;
            let Some(size) = count.checked_mul(4) else {
                return Err(DecodeError::Truncated {
                    offset: count_at,
                    needed: usize::MAX,
                });
            };
            Message::Truncate(Truncate {
                options,
                oids: r.bytes(size)?,
            })
        }
        b'M' => {
            let flags = r.u8()?;
            let lsn = r.lsn()?;
            let prefix = r.string()?;
            let n = r.length()?;
            Message::Logical(LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.bytes(n)?,
            })
        }
        tag => return Err(DecodeError::UnknownTag { offset: 0, tag }),
    };
    r.finish()?;
    Ok(message)
}

fn type_name(types: &TypeRegistry, oid: u32) -> String {
    match types.name(oid) {
        Some(name) => name.to_owned(),
        None => oid.to_string(),
    }
}

/// A table as the latest Relation message described it, with each column's type resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// The table's OID.
    pub oid: u32,
    /// Schema name (`pg_catalog` where pgoutput sent an empty string).
    pub schema: String,
    /// Table name.
    pub name: String,
    /// `REPLICA IDENTITY` setting.
    pub replica_identity: ReplicaIdentity,
    /// Columns in table order, as tuples list them.
    pub columns: Vec<Column>,
}

/// One column of a cached [`Relation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Whether the column is part of the replica identity key.
    pub key: bool,
    /// `pg_type` OID.
    pub type_oid: u32,
    /// `atttypmod`.
    pub type_modifier: i32,
    /// `pg_type.typname` (`int4`, `_text`, a user type's name), as `columns[].type` shows it;
    /// the OID in decimal for a user type no Type message named.
    pub type_name: String,
    /// How the column's text becomes JSON.
    pub json: PgType,
}

/// The relations and types a replication stream has described so far.
///
/// pgoutput describes a table (after the user types its columns use) before the first change
/// to it in a session and again after the table changes; a new description replaces the old
/// one. The cache lives as long as the replication session: a new session describes
/// everything again.
#[derive(Clone, Debug, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Relation>,
    types: TypeRegistry,
}

impl RelationCache {
    /// Returns an empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a Relation or Type message; other messages are ignored.
    pub fn apply(&mut self, message: &Message<'_>) {
        match message {
            Message::Relation(relation) => {
                self.insert_relation(relation);
            }
            Message::Type(ty) => self.record_type(ty),
            _ => {}
        }
    }

    /// Records a Relation message, replacing an earlier description of the same table, and
    /// returns the cached form.
    pub fn insert_relation(&mut self, message: &RelationMessage<'_>) -> &Relation {
        let columns = message
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.to_owned(),
                key: c.key,
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                type_name: type_name(&self.types, c.type_oid),
                json: self.types.resolve(c.type_oid),
            })
            .collect();
        let schema = if message.namespace.is_empty() {
            "pg_catalog"
        } else {
            message.namespace
        };
        let relation = Relation {
            oid: message.oid,
            schema: schema.to_owned(),
            name: message.name.to_owned(),
            replica_identity: message.replica_identity,
            columns,
        };
        match self.relations.entry(message.oid) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                e.insert(relation);
                e.into_mut()
            }
            std::collections::hash_map::Entry::Vacant(e) => e.insert(relation),
        }
    }

    /// Records a Type message.
    pub fn record_type(&mut self, message: &TypeMessage<'_>) {
        self.types
            .record(message.oid, message.namespace, message.name);
    }

    /// Records a user type's catalog row (see [`TypeRegistry::learn`]) and re-resolves the
    /// cached columns of that type.
    pub fn learn_type(&mut self, oid: u32, row: CatalogType<'_>) {
        self.types.learn(oid, row);
        for relation in self.relations.values_mut() {
            for column in &mut relation.columns {
                column.json = self.types.resolve(column.type_oid);
                if column.type_oid == oid {
                    column.type_name = type_name(&self.types, oid);
                }
            }
        }
    }

    /// Returns the latest description of table `oid`.
    pub fn get(&self, oid: u32) -> Option<&Relation> {
        self.relations.get(&oid)
    }

    /// Returns the type names and conversions known so far.
    pub fn types(&self) -> &TypeRegistry {
        &self.types
    }

    /// Returns the number of cached relations.
    pub fn len(&self) -> usize {
        self.relations.len()
    }

    /// Whether no relation was described yet.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::postgres_changes::values::{self, JsonKind};

    /// Builds messages byte by byte, as pgoutput writes them.
    #[derive(Default)]
    struct Enc(Vec<u8>);

    impl Enc {
        fn tag(tag: u8) -> Self {
            Enc(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn str(mut self, s: &str) -> Self {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        /// A tuple; `None` is null, `Some(None)` unchanged TOAST.
        fn tuple(mut self, values: &[Option<Option<&str>>]) -> Self {
            self = self.u16(values.len() as u16);
            for v in values {
                self = match v {
                    None => self.u8(b'n'),
                    Some(None) => self.u8(b'u'),
                    Some(Some(text)) => self.u8(b't').i32(text.len() as i32).raw(text.as_bytes()),
                };
            }
            self
        }
    }

    fn text_values<'a>(tuple: &Tuple<'a>) -> Vec<TupleValue<'a>> {
        tuple.iter().collect()
    }

    fn relation_bytes() -> Vec<u8> {
        Enc::tag(b'R')
            .u32(16_384)
            .str("public")
            .str("todos")
            .u8(b'd')
            .u16(3)
            .u8(1)
            .str("id")
            .u32(20)
            .i32(-1)
            .u8(0)
            .str("title")
            .u32(1043)
            .i32(24)
            .u8(0)
            .str("tags")
            .u32(1009)
            .i32(-1)
            .0
    }

    /// One valid message of every kind.
    fn samples() -> Vec<Vec<u8>> {
        vec![
            Enc::tag(b'B')
                .u64(0x16_B374_D848)
                .u64(762_525_296_789_012)
                .u32(745)
                .0,
            Enc::tag(b'C')
                .u8(0)
                .u64(0x16_B374_D848)
                .u64(0x16_B374_D878)
                .u64(762_525_296_789_012)
                .0,
            Enc::tag(b'O').u64(7).str("node_a").0,
            relation_bytes(),
            Enc::tag(b'Y').u32(16_390).str("public").str("mood").0,
            Enc::tag(b'I')
                .u32(16_384)
                .u8(b'N')
                .tuple(&[Some(Some("1")), None, Some(Some("{a,b}"))])
                .0,
            Enc::tag(b'U')
                .u32(16_384)
                .u8(b'N')
                .tuple(&[Some(Some("1")), Some(None), None])
                .0,
            Enc::tag(b'U')
                .u32(16_384)
                .u8(b'O')
                .tuple(&[Some(Some("1")), Some(Some("old")), None])
                .u8(b'N')
                .tuple(&[Some(Some("1")), Some(Some("new")), None])
                .0,
            Enc::tag(b'D')
                .u32(16_384)
                .u8(b'K')
                .tuple(&[Some(Some("1")), None, None])
                .0,
            Enc::tag(b'T').i32(2).u8(3).u32(16_384).u32(16_390).0,
            Enc::tag(b'M')
                .u8(1)
                .u64(99)
                .str("prefix")
                .i32(7)
                .raw(b"content")
                .0,
        ]
    }

    #[test]
    fn begin_and_commit() {
        let s = samples();
        assert_eq!(
            decode(&s[0]).unwrap(),
            Message::Begin(Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_time: 762_525_296_789_012,
                xid: 745
            })
        );
        assert_eq!(
            decode(&s[1]).unwrap(),
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(0x16_B374_D848),
                end_lsn: Lsn(0x16_B374_D878),
                commit_time: 762_525_296_789_012
            })
        );
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(
            decode(&s[2]).unwrap(),
            Message::Origin(Origin {
                commit_lsn: Lsn(7),
                name: "node_a"
            })
        );
    }

    #[test]
    fn relation_and_type() {
        let bytes = relation_bytes();
        let Message::Relation(rel) = decode(&bytes).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!(rel.oid, 16_384);
        assert_eq!((rel.namespace, rel.name), ("public", "todos"));
        assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
        assert_eq!(
            rel.columns,
            vec![
                RelationColumn {
                    key: true,
                    name: "id",
                    type_oid: 20,
                    type_modifier: -1
                },
                RelationColumn {
                    key: false,
                    name: "title",
                    type_oid: 1043,
                    type_modifier: 24
                },
                RelationColumn {
                    key: false,
                    name: "tags",
                    type_oid: 1009,
                    type_modifier: -1
                },
            ]
        );
        assert_eq!(
            decode(&samples()[4]).unwrap(),
            Message::Type(TypeMessage {
                oid: 16_390,
                namespace: "public",
                name: "mood"
            })
        );
        let mut bad = relation_bytes();
        let at = 1 + 4 + "public\0todos\0".len();
        bad[at] = b'x';
        assert_eq!(
            decode(&bad),
            Err(DecodeError::UnexpectedByte {
                offset: at,
                found: b'x',
                expected: "a replica identity (d, n, f, i)"
            })
        );
    }

    #[test]
    fn row_changes_borrow_their_values() {
        let s = samples();
        let Message::Insert(insert) = decode(&s[5]).unwrap() else {
            panic!("not an insert");
        };
        assert_eq!(insert.relation, 16_384);
        assert_eq!(insert.new.len(), 3);
        assert_eq!(
            text_values(&insert.new),
            vec![
                TupleValue::Text(b"1"),
                TupleValue::Null,
                TupleValue::Text(b"{a,b}")
            ]
        );
        // Zero-copy: the value points into the message.
        let TupleValue::Text(v) = insert.new.iter().nth(2).unwrap() else {
            panic!()
        };
        let range = s[5].as_ptr_range();
        assert!(range.contains(&v.as_ptr()));

        let Message::Update(update) = decode(&s[6]).unwrap() else {
            panic!("not an update");
        };
        assert!(update.old.is_none());
        assert_eq!(
            text_values(&update.new),
            vec![
                TupleValue::Text(b"1"),
                TupleValue::UnchangedToast,
                TupleValue::Null
            ]
        );

        let Message::Update(update) = decode(&s[7]).unwrap() else {
            panic!("not an update");
        };
        let (kind, old) = update.old.unwrap();
        assert_eq!(kind, OldKind::Full);
        assert_eq!(text_values(&old)[1], TupleValue::Text(b"old"));
        assert_eq!(text_values(&update.new)[1], TupleValue::Text(b"new"));

        let Message::Delete(delete) = decode(&s[8]).unwrap() else {
            panic!("not a delete");
        };
        assert_eq!(delete.old_kind, OldKind::Key);
        assert_eq!(
            text_values(&delete.old),
            vec![TupleValue::Text(b"1"), TupleValue::Null, TupleValue::Null]
        );

        let binary = Enc::tag(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b'b')
            .i32(2)
            .raw(&[0, 1])
            .0;
        let Message::Insert(insert) = decode(&binary).unwrap() else {
            panic!()
        };
        assert_eq!(text_values(&insert.new), vec![TupleValue::Binary(&[0, 1])]);
    }

    #[test]
    fn truncate_and_logical_message() {
        let s = samples();
        let Message::Truncate(t) = decode(&s[9]).unwrap() else {
            panic!("not a truncate");
        };
        assert!(t.cascade() && t.restart_identity());
        assert_eq!(t.relations().collect::<Vec<_>>(), vec![16_384, 16_390]);
        assert_eq!(
            decode(&s[10]).unwrap(),
            Message::Logical(LogicalMessage {
                transactional: true,
                lsn: Lsn(99),
                prefix: "prefix",
                content: b"content"
            })
        );
    }

    #[test]
    fn malformed_messages_say_where() {
        assert_eq!(
            decode(&[]),
            Err(DecodeError::Truncated {
                offset: 0,
                needed: 1
            })
        );
        assert_eq!(
            decode(b"S"),
            Err(DecodeError::UnknownTag {
                offset: 0,
                tag: b'S'
            })
        );
        assert_eq!(
            decode(&Enc::tag(b'B').u64(1).0),
            Err(DecodeError::Truncated {
                offset: 9,
                needed: 8
            })
        );
        let mut trailing = samples()[0].clone();
        trailing.push(0);
        assert_eq!(
            decode(&trailing),
            Err(DecodeError::TrailingBytes {
                offset: 21,
                count: 1
            })
        );
        assert_eq!(
            decode(&Enc::tag(b'Y').u32(1).raw(b"public").0),
            Err(DecodeError::UnterminatedString { offset: 5 })
        );
        assert_eq!(
            decode(&Enc::tag(b'Y').u32(1).raw(b"\xff\0").str("x").0),
            Err(DecodeError::InvalidUtf8 { offset: 5 })
        );
        let negative = Enc::tag(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(-1).0;
        assert_eq!(
            decode(&negative),
            Err(DecodeError::NegativeLength {
                offset: 9,
                length: -1
            })
        );
        let huge = Enc::tag(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b't')
            .i32(i32::MAX)
            .0;
        assert_eq!(
            decode(&huge),
            Err(DecodeError::Truncated {
                offset: 13,
                needed: i32::MAX as usize
            })
        );
        let bad_kind = Enc::tag(b'I').u32(1).u8(b'N').u16(1).u8(b'x').0;
        assert!(matches!(
            decode(&bad_kind),
            Err(DecodeError::UnexpectedByte {
                offset: 8,
                found: b'x',
                ..
            })
        ));
        let bad_marker = Enc::tag(b'D').u32(1).u8(b'N').tuple(&[None]).0;
        assert!(matches!(
            decode(&bad_marker),
            Err(DecodeError::UnexpectedByte {
                offset: 5,
                found: b'N',
                ..
            })
        ));
        let many = Enc::tag(b'T').i32(i32::MAX).u8(0).0;
        assert!(matches!(
            decode(&many),
            Err(DecodeError::Truncated { offset: 6, .. })
        ));
        let e = decode(&trailing).unwrap_err();
        assert_eq!(e.offset(), 21);
        assert_eq!(e.code(), ErrorCode::ReplicationError);
        assert_eq!(e.to_string(), "1 trailing bytes at offset 21");
    }

    #[test]
    fn every_strict_prefix_of_a_message_is_an_error() {
        for sample in samples() {
            for cut in 0..sample.len() {
                assert!(decode(&sample[..cut]).is_err(), "{:?} cut at {cut}", sample);
            }
            assert!(decode(&sample).is_ok());
        }
    }

    #[test]
    fn relation_cache_resolves_and_replaces() {
        let mut cache = RelationCache::new();
        assert!(cache.is_empty());
        // A domain over int4, as pgoutput names it: by its base type.
        let type_msg = Enc::tag(b'Y').u32(16_390).str("").str("int4").0;
        cache.apply(&decode(&type_msg).unwrap());
        let rel = Enc::tag(b'R')
            .u32(16_384)
            .str("")
            .str("t")
            .u8(b'f')
            .u16(2)
            .u8(1)
            .str("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .str("n")
            .u32(16_390)
            .i32(-1)
            .0;
        cache.apply(&decode(&rel).unwrap());
        let cached = cache.get(16_384).unwrap();
        assert_eq!(cached.schema, "pg_catalog");
        assert_eq!(cached.replica_identity, ReplicaIdentity::Full);
        assert_eq!(cached.columns[0].type_name, "int4");
        assert_eq!(cached.columns[0].json, PgType::Scalar(JsonKind::Integer));
        assert_eq!(cached.columns[1].type_name, "int4");
        assert_eq!(cached.columns[1].json, PgType::Scalar(JsonKind::Integer));
        let row = CatalogType {
            namespace: "public",
            name: "posint",
            base: 23,
            elem: 0,
        };
        cache.learn_type(16_390, row);
        let learned = &cache.get(16_384).unwrap().columns[1];
        assert_eq!(learned.type_name, "posint");
        assert_eq!(learned.json, PgType::Scalar(JsonKind::Integer));

        let bytes = relation_bytes();
        let Message::Relation(replacement) = decode(&bytes).unwrap() else {
            panic!()
        };
        let replaced = cache.insert_relation(&replacement);
        assert_eq!(replaced.name, "todos");
        assert_eq!(replaced.columns.len(), 3);
        assert_eq!(replaced.columns[2].type_name, "_text");
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.types().name(16_390), Some("posint"));

        let unknown = Enc::tag(b'R')
            .u32(1)
            .str("s")
            .str("u")
            .u8(b'd')
            .u16(1)
            .u8(0)
            .str("c")
            .u32(99_999)
            .i32(-1)
            .0;
        cache.apply(&decode(&unknown).unwrap());
        assert_eq!(cache.get(1).unwrap().columns[0].type_name, "99999");
    }

    /// Prints how many Insert messages of a typical 8-column row are decoded and rendered as a
    /// JSON record per second on one core. A measure, not a check: run it with
    /// `cargo test --release --lib measure_decode_and_render -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measure, not a check"]
    fn measure_decode_and_render() {
        use crate::postgres_changes::values::write_json;

        let columns: [(&str, u32, &str); 8] = [
            ("id", 20, "1234567"),
            ("title", 25, "buy milk and \"eggs\""),
            ("done", 16, "t"),
            ("inserted_at", 1184, "2024-01-02 03:04:05.123456+00"),
            ("meta", 3802, "{\"a\": [1, 2, 3], \"b\": {\"c\": \"d\"}}"),
            ("tags", 1009, "{a,\"b c\",NULL}"),
            ("price", 1700, "12.50"),
            ("ratio", 701, "0.3333333333333333"),
        ];
        let mut relation = Enc::tag(b'R')
            .u32(1)
            .str("public")
            .str("todos")
            .u8(b'd')
            .u16(8);
        for (i, (name, oid, _)) in columns.iter().enumerate() {
            relation = relation.u8(u8::from(i == 0)).str(name).u32(*oid).i32(-1);
        }
        let values: Vec<Option<Option<&str>>> = columns
            .iter()
            .map(|(_, _, text)| Some(Some(*text)))
            .collect();
        let insert = Enc::tag(b'I').u32(1).u8(b'N').tuple(&values).0;
        let mut cache = RelationCache::new();
        cache.apply(&decode(&relation.0).unwrap());

        let n = 200_000;
        let mut out = String::with_capacity(512);
        let mut bytes = 0;
        let started = std::time::Instant::now();
        for _ in 0..n {
            let Ok(Message::Insert(insert)) = decode(std::hint::black_box(&insert)) else {
                panic!("the sample decodes");
            };
            let rel = cache.get(insert.relation).unwrap();
            out.clear();
            out.push('{');
            for (i, (column, value)) in rel.columns.iter().zip(insert.new.iter()).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                values::write_string(&mut out, &column.name);
                out.push(':');
                match value {
                    TupleValue::Text(text) => write_json(&mut out, column.json, text).unwrap(),
                    _ => out.push_str("null"),
                }
            }
            out.push('}');
            bytes += out.len();
        }
        let elapsed = started.elapsed();
        println!(
            "{n} inserts of 8 columns in {elapsed:?}: {:.0} changes/s, {bytes} bytes of JSON",
            f64::from(n) / elapsed.as_secs_f64()
        );
    }

    proptest! {
        /// No byte string makes `decode` panic.
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        /// Nor does a valid tag followed by anything.
        #[test]
        fn decode_never_panics_after_a_valid_tag(
            tag in prop::sample::select(b"BCORYIUDTM".to_vec()),
            bytes in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut buf = vec![tag];
            buf.extend(bytes);
            // Whatever decodes can be walked completely.
            if let Ok(Message::Insert(i)) = decode(&buf) {
                prop_assert_eq!(i.new.iter().count(), i.new.len());
            }
        }

        /// Nor does a valid message with bytes changed, removed or added.
        #[test]
        fn decode_never_panics_on_mutated_messages(
            pick in 0usize..11,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
        ) {
            let mut buf = samples()[pick].clone();
            for (index, byte, op) in edits {
                let i = index.index(buf.len() + 1);
                match op {
                    0 if i < buf.len() => buf[i] = byte,
                    1 if i < buf.len() => { buf.remove(i); }
                    _ => buf.insert(i, byte),
                }
            }
            if let Ok(Message::Insert(Insert { new, .. }) | Message::Delete(Delete { old: new, .. })) = decode(&buf) {
                prop_assert_eq!(new.iter().count(), new.len());
            }
        }
    }
}

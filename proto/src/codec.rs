//! The one binary encoding of every inter-node value: bincode 2 (standard configuration) over
//! serde, with a size limit so that a hostile length prefix cannot make a peer allocate without
//! bound.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest message a peer accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Why bytes from a peer did not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a valid encoding of the expected type (truncated, bad tag, bad UTF-8, over the
    /// size limit, ...).
    #[error("malformed message: {0}")]
    Malformed(#[from] bincode::error::DecodeError),
    /// A valid value followed by bytes that belong to nothing.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// Why a value did not encode (never expected for this crate's types).
#[derive(Debug, thiserror::Error)]
#[error("unencodable message: {0}")]
pub struct EncodeError(#[from] bincode::error::EncodeError);

/// Encodes a value.
///
/// # Errors
/// [`EncodeError`] when serde refuses the value or it exceeds [`MAX_MESSAGE_BYTES`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// Decodes a whole message; bytes left over are an error.
///
/// # Errors
/// [`DecodeError`] for anything that is not exactly one encoded `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, read) = bincode::serde::decode_from_slice::<T, _>(bytes, config())?;
    if read != bytes.len() {
        return Err(DecodeError::Trailing(bytes.len() - read));
    }
    Ok(value)
}

//! Inter-node wire types of realtime: every value that crosses the QUIC bus between nodes.
//!
//! No tokio and no imports from the server crate. Enum variants are only ever appended (bincode
//! encodes the variant index) and every change bumps [`PROTOCOL_VERSION`]; the bus handshake
//! refuses a peer of another version (with a log line), so every node of a cluster runs one
//! protocol version.

pub mod bus;
pub mod codec;
pub mod presence;

pub use codec::{DecodeError, EncodeError, MAX_MESSAGE_BYTES, decode, encode};

/// Version of the inter-node protocol this build speaks (added in 0.1.0). 2: `Request::Metrics`
/// and `Response::Metrics`.
pub const PROTOCOL_VERSION: u16 = 2;

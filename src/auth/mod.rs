//! JWT verification. Owns the `jsonwebtoken` crate; the rest of the node sees claims as JSON.
//!
//! Today: bearer tokens of the management API ([`verify_api_token`]) and the start-up
//! [`self_test`] that proves a crypto backend is compiled in. Client JWTs of tenants come later,
//! in files of their own.

mod api_token;

pub use api_token::{AuthError, Claims, self_test, verify_api_token};

//! Verified client tokens, remembered until they expire.
//!
//! Verifying a JWT (signature, two JSON documents, the claim checks) is the largest single cost
//! of opening a socket, and clients open many sockets with the same token: every tab of an app,
//! every reconnect. A token that verified once under the same tenant keys and the node's
//! `JWT_CLAIM_VALIDATORS` verifies again until its `exp`, so its claims are kept and only `exp` is
//! checked again. Entries are keyed by the whole token text and a fingerprint of the keys, so a
//! rotated secret or JWKS never accepts a token the new keys would refuse. Only successes are
//! kept, at most [`CAPACITY`]; when full, the cache starts over.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::sync::Mutex;

use serde_json::{Map, Value};

use super::client_token::{Claims, TenantKeys, TokenError, verify_client_token};

/// Most tokens kept.
pub const CAPACITY: usize = 8192;

#[derive(PartialEq, Eq, Hash)]
struct Key {
    token: Box<str>,
    keys: u64,
}

/// Feeds what a writer receives into a hasher (to fingerprint a JWKS without a copy).
struct HashWriter<'a, H: Hasher>(&'a mut H);

impl<H: Hasher> Write for HashWriter<'_, H> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn fingerprint(keys: &TenantKeys<'_>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match keys.jwt_secret {
        Some(secret) => {
            1u8.hash(&mut h);
            secret.expose().hash(&mut h);
        }
        None => 0u8.hash(&mut h),
    }
    if let Some(jwks) = keys.jwks {
        // Serializing a Value cannot fail.
        let _ = serde_json::to_writer(HashWriter(&mut h), jwks);
    }
    h.finish()
}

/// Tokens that verified, with their claims.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    entries: Mutex<HashMap<Key, Claims>>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl VerifiedTokens {
    /// Creates an empty cache.
    pub fn new() -> VerifiedTokens {
        VerifiedTokens::default()
    }

    /// [`verify_client_token`], answered from the cache when this token already verified with
    /// these keys (then only its expiry is checked again).
    ///
    /// # Errors
    /// The [`TokenError`] a fresh verification gives.
    pub fn verify(
        &self,
        raw_token: &str,
        keys: TenantKeys<'_>,
        claim_validators: &Map<String, Value>,
        now: i64,
    ) -> Result<Claims, TokenError> {
        let key = Key {
            token: raw_token.into(),
            keys: fingerprint(&keys),
        };
        if let Some(claims) = self.entries.lock().expect("token cache").get(&key) {
            if claims.exp <= now {
                return Err(TokenError::Expired {
                    seconds_ago: now - claims.exp,
                });
            }
            return Ok(claims.clone());
        }
        let claims = verify_client_token(raw_token, keys, claim_validators, now)?;
        let mut entries = self.entries.lock().expect("token cache");
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(key, claims.clone());
        Ok(claims)
    }

    /// Returns the number of tokens kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().expect("token cache").len()
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;
    use crate::config::Secret;

    fn token(secret: &str, claims: Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    #[test]
    fn a_cached_token_still_expires_and_a_rotated_secret_refuses_it() {
        let cache = VerifiedTokens::new();
        let old = Secret::new("old-secret-old-secret-old-secret-!!".to_string());
        let new = Secret::new("new-secret-new-secret-new-secret-!!".to_string());
        fn keys(s: &Secret) -> TenantKeys<'_> {
            TenantKeys {
                jwt_secret: Some(s),
                jwks: None,
            }
        }
        let none = Map::new();
        let t = token(old.expose(), json!({"role": "anon", "exp": 1_000}));
        assert_eq!(
            cache.verify(&t, keys(&old), &none, 900).unwrap().role,
            "anon"
        );
        assert_eq!(cache.len(), 1);
        // From the cache: same claims, expiry checked against the new time.
        assert_eq!(cache.verify(&t, keys(&old), &none, 999).unwrap().exp, 1_000);
        assert_eq!(
            cache.verify(&t, keys(&old), &none, 1_005),
            Err(TokenError::Expired { seconds_ago: 5 })
        );
        // Another key: verified afresh, and refused.
        assert_eq!(
            cache.verify(&t, keys(&new), &none, 900),
            Err(TokenError::Signature)
        );
        // Failures are not kept.
        assert_eq!(cache.len(), 1);
        let jwks_a = json!({"keys": [{"kty": "oct", "k": "YQ"}]});
        let jwks_b = json!({"keys": [{"kty": "oct", "k": "Yg"}]});
        fn with(j: &Value) -> TenantKeys<'_> {
            TenantKeys {
                jwt_secret: None,
                jwks: Some(j),
            }
        }
        assert_ne!(fingerprint(&with(&jwks_a)), fingerprint(&with(&jwks_b)));
        assert_ne!(fingerprint(&keys(&old)), fingerprint(&keys(&new)));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = VerifiedTokens::new();
        let secret = Secret::new("bounded-secret-bounded-secret-12345".to_string());
        let keys = TenantKeys {
            jwt_secret: Some(&secret),
            jwks: None,
        };
        for i in 0..(CAPACITY + 10) {
            let t = token(
                secret.expose(),
                json!({"role": "anon", "exp": 10_000, "n": i}),
            );
            cache.verify(&t, keys, &Map::new(), 1).expect("valid");
        }
        assert!(cache.len() <= CAPACITY);
    }
}

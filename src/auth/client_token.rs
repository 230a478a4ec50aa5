//! Verification of client JWTs (WebSocket connection, channel join, `access_token`, HTTP
//! broadcast) against a tenant's `jwt_secret` / `jwt_jwks` (PROTOCOL.md 1.5).
//!
//! The signing key is chosen from the token header before anything is trusted: HS* with the
//! tenant secret (or a JWKS `oct` key named by `kid`), RS*/PS* with a JWKS `RSA` key, ES* with an
//! `EC` key, EdDSA with an `OKP` key, each only when the header names a `kid` that the tenant's
//! JWKS holds. Any other algorithm, `none` included, gets no signer. The key family always
//! matches the algorithm, so an HS token can never be checked against a public key.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::Secret;
use crate::error::{ErrorCode, OperationalError};

/// The keys a tenant verifies client tokens with.
#[derive(Clone, Copy, Debug, Default)]
pub struct TenantKeys<'a> {
    /// HS* secret (`jwt_secret`, decrypted).
    pub jwt_secret: Option<&'a Secret>,
    /// `jwt_jwks`: `{"keys":[...]}`.
    pub jwks: Option<&'a Value>,
}

/// The verified claims of a client token; `role` and `exp` are always present.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    /// Every claim of the token.
    pub all: Map<String, Value>,
    /// `role` claim (text; a non-string role is kept as its JSON text).
    pub role: String,
    /// `exp` claim, seconds since the epoch (rounded when given as a decimal).
    pub exp: i64,
    /// `sub` claim when it is a string.
    pub sub: Option<String>,
}

/// Why a client token was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// No token at all.
    #[error("API key is missing")]
    Missing,
    /// Not three base64url parts with JSON header and claims objects.
    #[error("The token provided is not a valid JWT")]
    Malformed,
    /// No key for the header's algorithm (and `kid`).
    #[error("{}", signer_message(.kid.as_deref()))]
    Signer {
        /// The `kid` the header named, when the lookup was by kid.
        kid: Option<String>,
    },
    /// The signature does not verify.
    #[error("Failed to validate JWT signature")]
    Signature,
    /// An integer `exp` in the past.
    #[error("Token has expired {seconds_ago} seconds ago")]
    Expired {
        /// `now - exp`, seconds.
        seconds_ago: i64,
    },
    /// A claim failed its check (`JWT_CLAIM_VALIDATORS`, a non-numeric `exp`/`iat`, a decimal
    /// `exp` in the past).
    #[error("Invalid token claim `{claim}`")]
    InvalidClaim {
        /// The claim's name.
        claim: String,
    },
    /// `role` or `exp` absent.
    #[error("Fields `role` and `exp` are required in JWT")]
    MissingClaims,
}

fn signer_message(kid: Option<&str>) -> String {
    match kid {
        Some(kid) => format!(
            "Failed to generate JWT signer for key ID (kid) {}, check your JWT secret or JWKS configuration",
            Value::String(kid.to_string())
        ),
        None => "Failed to generate JWT signer, check your JWT secret or JWKS configuration".into(),
    }
}

impl OperationalError for TokenError {
    fn code(&self) -> ErrorCode {
        match self {
            TokenError::Missing => ErrorCode::MissingAPIKey,
            TokenError::Malformed => ErrorCode::MalformedJWT,
            TokenError::Signer { .. } => ErrorCode::JwtSignerError,
            TokenError::Signature => ErrorCode::JwtSignatureError,
            TokenError::Expired { .. }
            | TokenError::InvalidClaim { .. }
            | TokenError::MissingClaims => ErrorCode::InvalidJWTToken,
        }
    }

    fn client_message(&self) -> String {
        self.to_string()
    }
}

/// The header fields that choose a key, read before verification.
struct Header {
    alg: String,
    kid: Option<String>,
}

fn read_header(token: &str) -> Result<Header, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let json_object = |part: &str| -> Result<Map<String, Value>, TokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
    };
    json_object(claims)?;
    let header = json_object(header)?;
    if header
        .get("typ")
        .is_some_and(|t| t.as_str().is_none_or(|t| !t.eq_ignore_ascii_case("JWT")))
    {
        return Err(TokenError::Signer { kid: None });
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(TokenError::Signer { kid: None })?;
    Ok(Header {
        alg: alg.to_string(),
        kid: header
            .get("kid")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Strips whitespace and percent-decodes a token as the original does (`URI.decode` + `\s`).
fn clean_token(raw: &str) -> Result<String, TokenError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(TokenError::Malformed)?;
                let hex = std::str::from_utf8(hex).map_err(|_| TokenError::Malformed)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| TokenError::Malformed)?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).map_err(|_| TokenError::Malformed)?;
    Ok(text.chars().filter(|c| !c.is_whitespace()).collect())
}

fn jwks_key(jwks: Option<&Value>, kty: &str, kid: &str) -> Option<Jwk> {
    jwks?
        .get("keys")?
        .as_array()?
        .iter()
        .find(|k| {
            k.get("kty").and_then(Value::as_str) == Some(kty)
                && k.get("kid").and_then(Value::as_str) == Some(kid)
        })
        .and_then(|k| serde_json::from_value(k.clone()).ok())
}

fn has_key_list(jwks: Option<&Value>) -> bool {
    jwks.and_then(|j| j.get("keys"))
        .is_some_and(Value::is_array)
}

/// Picks the algorithm and key for a header, or explains why there is none.
fn choose_key(
    header: &Header,
    keys: TenantKeys<'_>,
) -> Result<(Algorithm, DecodingKey), TokenError> {
    let no_signer = || TokenError::Signer { kid: None };
    let by_kid = |kty: &str| -> Result<DecodingKey, TokenError> {
        let kid = header.kid.as_deref().ok_or_else(no_signer)?;
        let jwk = jwks_key(keys.jwks, kty, kid).ok_or_else(|| TokenError::Signer {
            kid: Some(kid.to_string()),
        })?;
        DecodingKey::from_jwk(&jwk).map_err(|_| TokenError::Signer {
            kid: Some(kid.to_string()),
        })
    };
    let asymmetric = header.kid.is_some() && has_key_list(keys.jwks);
    let alg = match header.alg.as_str() {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" if asymmetric => Algorithm::RS256,
        "RS384" if asymmetric => Algorithm::RS384,
        "RS512" if asymmetric => Algorithm::RS512,
        "PS256" if asymmetric => Algorithm::PS256,
        "PS384" if asymmetric => Algorithm::PS384,
        "PS512" if asymmetric => Algorithm::PS512,
        "ES256" if asymmetric => Algorithm::ES256,
        "ES384" if asymmetric => Algorithm::ES384,
        "EdDSA" | "Ed25519" if asymmetric => Algorithm::EdDSA,
        _ => return Err(no_signer()),
    };
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let oct = header
                .kid
                .as_deref()
                .and_then(|kid| jwks_key(keys.jwks, "oct", kid));
            match oct {
                Some(jwk) => DecodingKey::from_jwk(&jwk).map_err(|_| no_signer())?,
                None => DecodingKey::from_secret(
                    keys.jwt_secret.ok_or_else(no_signer)?.expose().as_bytes(),
                ),
            }
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => by_kid("RSA")?,
        Algorithm::ES256 | Algorithm::ES384 => by_kid("EC")?,
        Algorithm::EdDSA => by_kid("OKP")?,
        _ => return Err(no_signer()),
    };
    Ok((alg, key))
}

fn numeric_claim(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Option<(i64, bool)>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some((i, true))),
            (None, Some(f)) if f.is_finite() => Ok(Some((f.round() as i64, false))),
            _ => Err(TokenError::InvalidClaim { claim: name.into() }),
        },
        Some(_) => Err(TokenError::InvalidClaim { claim: name.into() }),
    }
}

/// Verifies a client token: signature with the tenant's keys, `exp`/`iat`, the
/// `JWT_CLAIM_VALIDATORS`, and the presence of `role` and `exp`.
///
/// `now` is the current time in seconds since the epoch.
///
/// # Errors
/// A [`TokenError`] naming the first check that failed, in the original's order.
pub fn verify_client_token(
    raw_token: &str,
    keys: TenantKeys<'_>,
    claim_validators: &Map<String, Value>,
    now: i64,
) -> Result<Claims, TokenError> {
    if raw_token.is_empty() {
        return Err(TokenError::Missing);
    }
    let token = clean_token(raw_token)?;
    let header = read_header(&token)?;
    let (alg, key) = choose_key(&header, keys)?;

    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims = HashSet::new();
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(&token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => TokenError::Signature,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidKeyFormat
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidAlgorithmName => TokenError::Signer { kid: None },
                _ => TokenError::Malformed,
            }
        })?;
    let all = data.claims;

    for (claim, expected) in claim_validators {
        if all.get(claim) != Some(expected) {
            return Err(TokenError::InvalidClaim {
                claim: claim.clone(),
            });
        }
    }
    numeric_claim(&all, "iat")?;
    let exp = numeric_claim(&all, "exp")?;
    if let Some((exp, integer)) = exp
        && exp <= now
    {
        return Err(if integer {
            TokenError::Expired {
                seconds_ago: now - exp,
            }
        } else {
            TokenError::InvalidClaim {
                claim: "exp".into(),
            }
        });
    }
    let (Some((exp, _)), Some(role)) = (exp, all.get("role")) else {
        return Err(TokenError::MissingClaims);
    };
    let role = match role {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let sub = all.get("sub").and_then(Value::as_str).map(str::to_string);
    Ok(Claims {
        all,
        role,
        exp,
        sub,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header as JwtHeader, encode};
    use serde_json::json;

    const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
    const NOW: i64 = 1_800_000_000;

    fn hs(alg: Algorithm, claims: Value, secret: &str) -> String {
        encode(
            &JwtHeader::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn secret_keys(secret: &Secret) -> TenantKeys<'_> {
        TenantKeys {
            jwt_secret: Some(secret),
            jwks: None,
        }
    }

    #[test]
    fn accepts_hs256_384_512_with_role_and_exp() {
        let secret = Secret::new(SECRET);
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let t = hs(
                alg,
                json!({"role":"anon","exp":NOW + 60,"sub":"u1","aud":"authenticated"}),
                SECRET,
            );
            let c = verify_client_token(&t, secret_keys(&secret), &Map::new(), NOW).unwrap();
            assert_eq!(c.role, "anon");
            assert_eq!(c.exp, NOW + 60);
            assert_eq!(c.sub.as_deref(), Some("u1"));
        }
    }

    #[test]
    fn refusals_carry_the_documented_codes_and_texts() {
        let secret = Secret::new(SECRET);
        let keys = secret_keys(&secret);
        let none = Map::new();
        let expired = hs(
            Algorithm::HS256,
            json!({"role":"anon","exp":NOW - 5}),
            SECRET,
        );
        let e = verify_client_token(&expired, keys, &none, NOW).unwrap_err();
        assert_eq!(
            e.client_reason(),
            "InvalidJWTToken: Token has expired 5 seconds ago"
        );
        let bad_sig = hs(
            Algorithm::HS256,
            json!({"role":"anon","exp":NOW + 5}),
            "another-secret-another-secret-another",
        );
        assert_eq!(
            verify_client_token(&bad_sig, keys, &none, NOW)
                .unwrap_err()
                .client_reason(),
            "JwtSignatureError: Failed to validate JWT signature"
        );
        let roleless = hs(Algorithm::HS256, json!({"exp":NOW + 5}), SECRET);
        assert_eq!(
            verify_client_token(&roleless, keys, &none, NOW)
                .unwrap_err()
                .client_reason(),
            "InvalidJWTToken: Fields `role` and `exp` are required in JWT"
        );
        let expless = hs(Algorithm::HS256, json!({"role":"anon"}), SECRET);
        assert_eq!(
            verify_client_token(&expless, keys, &none, NOW).unwrap_err(),
            TokenError::MissingClaims
        );
        for junk in ["abc", "a.b.c", "sb_publishable_xyz", "e30.e30"] {
            assert_eq!(
                verify_client_token(junk, keys, &none, NOW)
                    .unwrap_err()
                    .client_reason(),
                "MalformedJWT: The token provided is not a valid JWT",
                "{junk}"
            );
        }
        assert_eq!(
            verify_client_token("", keys, &none, NOW)
                .unwrap_err()
                .code(),
            ErrorCode::MissingAPIKey
        );
    }

    #[test]
    fn alg_none_and_unknown_algorithms_get_no_signer() {
        let secret = Secret::new(SECRET);
        let claims =
            URL_SAFE_NO_PAD.encode(json!({"role":"service_role","exp":NOW + 60}).to_string());
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let token = format!("{header}.{claims}.");
        let e = verify_client_token(&token, secret_keys(&secret), &Map::new(), NOW).unwrap_err();
        assert_eq!(e, TokenError::Signer { kid: None });
        assert_eq!(
            e.client_reason(),
            "JwtSignerError: Failed to generate JWT signer, check your JWT secret or JWKS configuration"
        );
    }

    /// An RS256 header against a tenant with only an HS secret must not verify with that secret.
    #[test]
    fn algorithm_confusion_is_refused() {
        let secret = Secret::new(SECRET);
        let claims = URL_SAFE_NO_PAD.encode(json!({"role":"anon","exp":NOW + 60}).to_string());
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#);
        let token = format!("{header}.{claims}.c2ln");
        let e = verify_client_token(&token, secret_keys(&secret), &Map::new(), NOW).unwrap_err();
        assert_eq!(e, TokenError::Signer { kid: None });
        let jwks = json!({"keys":[{"kty":"oct","kid":"k1","k":URL_SAFE_NO_PAD.encode(SECRET)}]});
        let keys = TenantKeys {
            jwt_secret: Some(&secret),
            jwks: Some(&jwks),
        };
        let e = verify_client_token(&token, keys, &Map::new(), NOW).unwrap_err();
        assert_eq!(
            e.client_message(),
            "Failed to generate JWT signer for key ID (kid) \"k1\", check your JWT secret or JWKS configuration"
        );
    }

    #[test]
    fn hs_kid_uses_the_jwks_oct_key() {
        let jwks = json!({"keys":[{"kty":"oct","kid":"k1","k":URL_SAFE_NO_PAD.encode("oct-key-material-0123456789abcdef")}]});
        let mut header = JwtHeader::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let token = encode(
            &header,
            &json!({"role":"authenticated","exp":NOW + 60}),
            &EncodingKey::from_secret(b"oct-key-material-0123456789abcdef"),
        )
        .unwrap();
        let keys = TenantKeys {
            jwt_secret: None,
            jwks: Some(&jwks),
        };
        assert_eq!(
            verify_client_token(&token, keys, &Map::new(), NOW)
                .unwrap()
                .role,
            "authenticated"
        );
    }

    #[test]
    fn claim_validators_must_match_exactly() {
        let secret = Secret::new(SECRET);
        let mut validators = Map::new();
        validators.insert("iss".into(), json!("supabase"));
        let good = hs(
            Algorithm::HS256,
            json!({"role":"anon","exp":NOW + 9,"iss":"supabase"}),
            SECRET,
        );
        let bad = hs(
            Algorithm::HS256,
            json!({"role":"anon","exp":NOW + 9,"iss":"other"}),
            SECRET,
        );
        assert!(verify_client_token(&good, secret_keys(&secret), &validators, NOW).is_ok());
        assert_eq!(
            verify_client_token(&bad, secret_keys(&secret), &validators, NOW).unwrap_err(),
            TokenError::InvalidClaim {
                claim: "iss".into()
            }
        );
    }

    #[test]
    fn tokens_are_cleaned_before_verification() {
        let secret = Secret::new(SECRET);
        let t = hs(
            Algorithm::HS256,
            json!({"role":"anon","exp":NOW + 60}),
            SECRET,
        );
        let messy = format!(" {}\n\t{} ", &t[..5], t[5..].replace('.', "%2E"));
        assert!(verify_client_token(&messy, secret_keys(&secret), &Map::new(), NOW).is_ok());
        let broken_escape = format!("{}%zz", t);
        assert_eq!(
            verify_client_token(&broken_escape, secret_keys(&secret), &Map::new(), NOW)
                .unwrap_err(),
            TokenError::Malformed
        );
    }

    #[test]
    fn decimal_exp_is_rounded_and_non_numeric_exp_refused() {
        let secret = Secret::new(SECRET);
        let t = hs(
            Algorithm::HS256,
            json!({"role":"anon","exp":(NOW + 60) as f64 + 0.4}),
            SECRET,
        );
        assert_eq!(
            verify_client_token(&t, secret_keys(&secret), &Map::new(), NOW)
                .unwrap()
                .exp,
            NOW + 60
        );
        let t = hs(
            Algorithm::HS256,
            json!({"role":"anon","exp":"soon"}),
            SECRET,
        );
        assert_eq!(
            verify_client_token(&t, secret_keys(&secret), &Map::new(), NOW).unwrap_err(),
            TokenError::InvalidClaim {
                claim: "exp".into()
            }
        );
    }

    /// Test-only keys generated with openssl for these tests.
    const EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgTcr8kT+QBGwcb074
UCMfnwjeWaBH+32cl7xQRsxbr5qhRANCAARB6wz5KCOhi9WsZe+qutJvZFOaU/jB
MGRnH+OTqnpwVcNHRWSMUVWTmTG8jaWTpt0+6exuOTV+BxJxDAMzTc6C
-----END PRIVATE KEY-----
";
    const ED_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIC0djjDZ9wdNNuQcuVJ4RMbutQ5oDx7Y7nvfbUvB2eB+
-----END PRIVATE KEY-----
";

    fn asymmetric_jwks() -> Value {
        json!({"keys": [
            {"kty": "EC", "kid": "ec1", "crv": "P-256", "alg": "ES256",
             "x": "QesM-SgjoYvVrGXvqrrSb2RTmlP4wTBkZx_jk6p6cFU", "y": "w0dFZIxRVZOZMbyNpZOm3T7p7G45NX4HEnEMAzNNzoI"},
            {"kty": "OKP", "kid": "ed1", "crv": "Ed25519", "x": "N0Y1QkCZr1jKuasmJgU9sKcNdwRCH09yUneYZLdzMzc"}
        ]})
    }

    #[test]
    fn es256_and_eddsa_verify_through_the_jwks_by_kid() {
        let jwks = asymmetric_jwks();
        let keys = TenantKeys {
            jwt_secret: None,
            jwks: Some(&jwks),
        };
        let claims = json!({"role": "authenticated", "exp": NOW + 60});
        let mut header = JwtHeader::new(Algorithm::ES256);
        header.kid = Some("ec1".into());
        let es = encode(
            &header,
            &claims,
            &EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            verify_client_token(&es, keys, &Map::new(), NOW)
                .unwrap()
                .role,
            "authenticated"
        );
        let mut header = JwtHeader::new(Algorithm::EdDSA);
        header.kid = Some("ed1".into());
        let ed = encode(
            &header,
            &claims,
            &EncodingKey::from_ed_pem(ED_PRIVATE_PEM.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            verify_client_token(&ed, keys, &Map::new(), NOW)
                .unwrap()
                .role,
            "authenticated"
        );
        // The EC token under the EdDSA key's kid, or an unknown kid, has no signer.
        let mut header = JwtHeader::new(Algorithm::ES256);
        header.kid = Some("ed1".into());
        let wrong = encode(
            &header,
            &claims,
            &EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            verify_client_token(&wrong, keys, &Map::new(), NOW).unwrap_err(),
            TokenError::Signer {
                kid: Some("ed1".into())
            }
        );
        // Without a kid an ES256 token gets no signer at all.
        let no_kid = encode(
            &JwtHeader::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            verify_client_token(&no_kid, keys, &Map::new(), NOW).unwrap_err(),
            TokenError::Signer { kid: None }
        );
        // A tampered signature is a signature error.
        let mut tampered = es.into_bytes();
        let at = tampered.len() - 10;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            verify_client_token(&tampered, keys, &Map::new(), NOW).unwrap_err(),
            TokenError::Signature
        );
    }
}

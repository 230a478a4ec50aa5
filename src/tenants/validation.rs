//! The rules of a tenant upsert body (PROTOCOL.md 10.2), as pure functions.
//!
//! [`validate_upsert`] merges a request body over the existing record (if any) and either returns
//! the complete record to write, with secrets still in plain text, or every field error found.
//! It never panics on a body of the wrong shape: wrong JSON types are field errors.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::model::{POSTGRES_CDC_RLS, Tenant, TenantLimits};
use crate::config::LimitDefaults;
use crate::types::TenantId;

/// Extension settings stored encrypted.
pub const ENCRYPTED_SETTINGS: [&str; 5] =
    ["db_host", "db_port", "db_name", "db_user", "db_password"];
/// Extension settings a create or replace must carry (non-empty strings).
const REQUIRED_SETTINGS: [&str; 6] = [
    "region",
    "db_host",
    "db_port",
    "db_name",
    "db_user",
    "db_password",
];
/// Extension type accepted as an alias of [`POSTGRES_CDC_RLS`].
const POSTGRES_ALIAS: &str = "postgres";

/// Field errors, keyed by field name (paths like `extensions[0].settings.db_host` for nested ones).
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// A validated tenant record, ready to be encrypted and written.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantWrite {
    /// `external_id`.
    pub external_id: TenantId,
    /// `name`.
    pub name: String,
    /// JWT secret in plain text.
    pub jwt_secret: Option<String>,
    /// JWKS.
    pub jwt_jwks: Option<Value>,
    /// `postgres_cdc_default`.
    pub postgres_cdc_default: String,
    /// Limits, defaults applied.
    pub limits: TenantLimits,
    /// `presence_enabled`.
    pub presence_enabled: bool,
    /// `private_only`.
    pub private_only: bool,
    /// `suspend`.
    pub suspend: bool,
    /// The new set of extensions, or `None` to keep the stored ones.
    pub extensions: Option<Vec<ExtensionWrite>>,
}

/// A validated extension, its DB settings still in plain text.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtensionWrite {
    /// `type`, normalised (`postgres` becomes `postgres_cdc_rls`).
    pub kind: String,
    /// `settings` with defaults merged.
    pub settings: Map<String, Value>,
}

/// Validates an upsert body (`{"tenant": {...}}`) against the existing record.
///
/// `path_id` (PUT/PATCH) wins over `tenant.external_id`. On create, `name` becomes the external
/// id and `extensions` is required; on update, absent fields keep their stored values.
///
/// # Errors
/// Every field error found.
pub fn validate_upsert(
    body: &Value,
    path_id: Option<&str>,
    existing: Option<&Tenant>,
    defaults: &LimitDefaults,
) -> Result<TenantWrite, FieldErrors> {
    let mut errors = FieldErrors::new();
    let Some(params) = body.get("tenant").and_then(Value::as_object) else {
        errors.insert(
            "tenant".into(),
            vec!["is required and must be an object".into()],
        );
        return Err(errors);
    };
    let mut fields = Fields {
        params,
        errors: &mut errors,
    };

    let body_id = fields.string("external_id");
    let external_id = match (path_id, body_id) {
        (Some(id), _) => Some(id.to_string()),
        (None, Some(Some(id))) => Some(id),
        (None, _) => None,
    };
    let external_id = match external_id {
        Some(id) if !id.trim().is_empty() => id,
        _ => {
            fields.error("external_id", "can't be blank");
            String::new()
        }
    };

    let name = match (existing, fields.string("name")) {
        (None, _) => external_id.clone(),
        (Some(_), Some(Some(name))) => name,
        (Some(tenant), _) => tenant.name.clone(),
    };
    let jwt_secret = match fields.string("jwt_secret") {
        Some(value) => value,
        None => existing.and_then(|t| t.jwt_secret.as_ref().map(|s| s.expose().to_string())),
    };
    let jwt_jwks = match params.get("jwt_jwks") {
        None => existing.and_then(|t| t.jwt_jwks.clone()),
        Some(Value::Null) => None,
        Some(Value::Object(jwks)) => Some(Value::Object(jwks.clone())),
        Some(_) => {
            fields.error("jwt_jwks", "must be an object");
            None
        }
    };
    if jwt_secret.as_deref().is_none_or(str::is_empty) && jwt_jwks.is_none() {
        fields.error("jwt_secret", "jwt_secret or jwt_jwks is required");
    }

    let old = existing.map(|t| &t.limits);
    let limits = TenantLimits {
        max_concurrent_users: fields.limit(
            "max_concurrent_users",
            old.map(|l| l.max_concurrent_users),
            defaults.max_concurrent_users,
        ),
        max_events_per_second: fields.limit(
            "max_events_per_second",
            old.map(|l| l.max_events_per_second),
            defaults.max_events_per_second,
        ),
        max_bytes_per_second: fields.limit(
            "max_bytes_per_second",
            old.map(|l| l.max_bytes_per_second),
            defaults.max_bytes_per_second,
        ),
        max_channels_per_client: fields.limit(
            "max_channels_per_client",
            old.map(|l| l.max_channels_per_client),
            defaults.max_channels_per_client,
        ),
        max_joins_per_second: fields.limit(
            "max_joins_per_second",
            old.map(|l| l.max_joins_per_second),
            defaults.max_joins_per_second,
        ),
        max_presence_events_per_second: fields.limit(
            "max_presence_events_per_second",
            old.map(|l| l.max_presence_events_per_second),
            defaults.max_presence_events_per_second,
        ),
        max_payload_size_in_kb: fields.limit(
            "max_payload_size_in_kb",
            old.map(|l| l.max_payload_size_in_kb),
            defaults.max_payload_size_in_kb,
        ),
        max_client_presence_events_per_window: fields.optional_limit(
            "max_client_presence_events_per_window",
            old.and_then(|l| l.max_client_presence_events_per_window),
        ),
        client_presence_window_ms: fields.optional_limit(
            "client_presence_window_ms",
            old.and_then(|l| l.client_presence_window_ms),
        ),
    };
    let presence_enabled = fields.boolean("presence_enabled", existing.map(|t| t.presence_enabled));
    let private_only = fields.boolean("private_only", existing.map(|t| t.private_only));
    let suspend = fields.boolean("suspend", existing.map(|t| t.suspend));
    let postgres_cdc_default = match fields.string("postgres_cdc_default") {
        Some(Some(value)) => value,
        _ => existing.map_or_else(
            || POSTGRES_CDC_RLS.to_string(),
            |t| t.postgres_cdc_default.clone(),
        ),
    };

    let extensions = match params.get("extensions") {
        None if existing.is_none() => {
            fields.error("extensions", "is required when creating a tenant");
            None
        }
        None => None,
        Some(Value::Array(items)) => Some(validate_extensions(items, fields.errors)),
        Some(_) => {
            fields.error("extensions", "must be a list");
            None
        }
    };

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(TenantWrite {
        external_id: TenantId::new(external_id),
        name,
        jwt_secret: jwt_secret.filter(|s| !s.is_empty()),
        jwt_jwks,
        postgres_cdc_default,
        limits,
        presence_enabled,
        private_only,
        suspend,
        extensions,
    })
}

fn validate_extensions(items: &[Value], errors: &mut FieldErrors) -> Vec<ExtensionWrite> {
    let mut out: Vec<ExtensionWrite> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let at = |field: &str| format!("extensions[{index}].{field}");
        let push = |errors: &mut FieldErrors, key: String, message: &str| {
            errors.entry(key).or_default().push(message.to_string());
        };
        let Some(item) = item.as_object() else {
            push(errors, format!("extensions[{index}]"), "must be an object");
            continue;
        };
        let kind = match item.get("type").and_then(Value::as_str) {
            Some(POSTGRES_ALIAS) | Some(POSTGRES_CDC_RLS) => POSTGRES_CDC_RLS.to_string(),
            Some(other) => {
                push(
                    errors,
                    at("type"),
                    &format!("unknown extension type `{other}`"),
                );
                continue;
            }
            None => {
                push(errors, at("type"), "is required and must be a string");
                continue;
            }
        };
        if out.iter().any(|e| e.kind == kind) {
            push(errors, at("type"), "is given more than once");
            continue;
        }
        let Some(given) = item.get("settings").and_then(Value::as_object) else {
            push(errors, at("settings"), "is required and must be an object");
            continue;
        };
        let mut settings = given.clone();
        if let Some(pool) = settings.remove("postgres_changes_pool") {
            settings.entry("subcriber_pool_size").or_insert(pool);
        }
        for key in REQUIRED_SETTINGS {
            match settings.get(key) {
                Some(Value::String(s)) if !s.is_empty() => {}
                None | Some(Value::Null) => {
                    push(errors, at(&format!("settings.{key}")), "can't be blank")
                }
                Some(Value::String(_)) => {
                    push(errors, at(&format!("settings.{key}")), "can't be blank")
                }
                Some(_) => push(errors, at(&format!("settings.{key}")), "must be a string"),
            }
        }
        match settings.get("ssl_enforced") {
            None | Some(Value::Null) => {
                settings.insert("ssl_enforced".into(), Value::Bool(true));
            }
            Some(Value::Bool(_)) => {}
            Some(_) => push(errors, at("settings.ssl_enforced"), "must be a boolean"),
        }
        let defaults: [(&str, Value); 5] = [
            ("publication", "supabase_realtime".into()),
            ("slot_name", "supabase_realtime_replication_slot".into()),
            ("poll_interval_ms", 100.into()),
            ("poll_max_changes", 100.into()),
            ("poll_max_record_bytes", 1_048_576.into()),
        ];
        for (key, default) in defaults {
            match settings.get(key) {
                None | Some(Value::Null) => {
                    settings.insert(key.into(), default);
                }
                Some(value)
                    if value.is_string() == default.is_string()
                        && (value.is_string() || value.as_u64().is_some_and(|n| n > 0)) => {}
                Some(_) => push(
                    errors,
                    at(&format!("settings.{key}")),
                    if default.is_string() {
                        "must be a string"
                    } else {
                        "must be a positive integer"
                    },
                ),
            }
        }
        out.push(ExtensionWrite { kind, settings });
    }
    out
}

/// Reads typed fields of the `tenant` object, collecting errors.
struct Fields<'a> {
    params: &'a Map<String, Value>,
    errors: &'a mut FieldErrors,
}

impl Fields<'_> {
    fn error(&mut self, field: &str, message: &str) {
        self.errors
            .entry(field.to_string())
            .or_default()
            .push(message.to_string());
    }

    /// `None`: absent; `Some(None)`: null (or wrong type, with an error); `Some(Some(s))`: set.
    fn string(&mut self, field: &str) -> Option<Option<String>> {
        match self.params.get(field)? {
            Value::Null => Some(None),
            Value::String(s) => Some(Some(s.clone())),
            _ => {
                self.error(field, "must be a string");
                Some(None)
            }
        }
    }

    fn positive(&mut self, field: &str, value: &Value) -> Option<u32> {
        match value.as_u64() {
            Some(n) if n > 0 && n <= i32::MAX as u64 => Some(n as u32),
            _ => {
                self.error(field, "must be a positive integer");
                None
            }
        }
    }

    fn limit(&mut self, field: &str, old: Option<u32>, default: u32) -> u32 {
        match self.params.get(field) {
            None | Some(Value::Null) => old.unwrap_or(default),
            Some(value) => self.positive(field, value).unwrap_or(default),
        }
    }

    fn optional_limit(&mut self, field: &str, old: Option<u32>) -> Option<u32> {
        match self.params.get(field) {
            None => old,
            Some(Value::Null) => None,
            Some(value) => self.positive(field, value),
        }
    }

    fn boolean(&mut self, field: &str, old: Option<bool>) -> bool {
        match self.params.get(field) {
            None | Some(Value::Null) => old.unwrap_or(false),
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.error(field, "must be a boolean");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn defaults() -> LimitDefaults {
        LimitDefaults::default()
    }

    fn settings() -> Value {
        json!({"region":"us-east-1","db_host":"h","db_port":"5432","db_name":"postgres",
               "db_user":"u","db_password":"p"})
    }

    fn create(body: Value) -> Result<TenantWrite, FieldErrors> {
        validate_upsert(&body, None, None, &defaults())
    }

    #[test]
    fn minimal_create_gets_every_default() {
        let w = create(
            json!({"tenant":{"external_id":"t1","name":"ignored","jwt_secret":"s",
            "extensions":[{"type":"postgres","settings":settings()}]}}),
        )
        .unwrap();
        assert_eq!(w.external_id.as_str(), "t1");
        assert_eq!(w.name, "t1");
        assert_eq!(w.limits.max_concurrent_users, 200);
        assert_eq!(w.limits.max_joins_per_second, 100);
        assert_eq!(w.limits.max_presence_events_per_second, 1000);
        assert_eq!(w.limits.max_payload_size_in_kb, 3000);
        assert_eq!(w.limits.client_presence_window_ms, None);
        assert!(!w.presence_enabled && !w.private_only && !w.suspend);
        let ext = &w.extensions.unwrap()[0];
        assert_eq!(ext.kind, POSTGRES_CDC_RLS);
        assert_eq!(ext.settings["publication"], "supabase_realtime");
        assert_eq!(
            ext.settings["slot_name"],
            "supabase_realtime_replication_slot"
        );
        assert_eq!(ext.settings["poll_interval_ms"], 100);
        assert_eq!(ext.settings["poll_max_changes"], 100);
        assert_eq!(ext.settings["poll_max_record_bytes"], 1_048_576);
        assert_eq!(ext.settings["ssl_enforced"], true);
    }

    #[test]
    fn required_fields_are_reported_together() {
        let errors = create(json!({"tenant":{}})).unwrap_err();
        assert!(errors.contains_key("external_id"));
        assert!(errors.contains_key("jwt_secret"));
        assert!(errors.contains_key("extensions"));
        let errors = create(json!({"nope":1})).unwrap_err();
        assert!(errors.contains_key("tenant"));
        let errors = create(json!([1, 2])).unwrap_err();
        assert!(errors.contains_key("tenant"));
    }

    #[test]
    fn wrong_types_are_field_errors() {
        let errors = create(json!({"tenant":{"external_id":5,"jwt_secret":"s",
            "max_concurrent_users":"many","max_events_per_second":-1,"max_joins_per_second":0,
            "private_only":"yes","jwt_jwks":[1],"extensions":{}}}))
        .unwrap_err();
        for field in [
            "external_id",
            "max_concurrent_users",
            "max_events_per_second",
            "max_joins_per_second",
            "private_only",
            "jwt_jwks",
            "extensions",
        ] {
            assert!(errors.contains_key(field), "{field}: {errors:?}");
        }
    }

    #[test]
    fn extension_rules() {
        let mut bad = settings();
        bad["db_port"] = json!(5432);
        bad.as_object_mut().unwrap().remove("db_password");
        let errors = create(
            json!({"tenant":{"external_id":"t","jwt_secret":"s","extensions":[
            {"type":"postgres_cdc_rls","settings":bad},
            {"type":"mysql","settings":settings()}]}}),
        )
        .unwrap_err();
        assert_eq!(
            errors["extensions[0].settings.db_port"],
            ["must be a string"]
        );
        assert_eq!(
            errors["extensions[0].settings.db_password"],
            ["can't be blank"]
        );
        assert!(errors["extensions[1].type"][0].contains("mysql"));

        let mut renamed = settings();
        renamed["postgres_changes_pool"] = json!(7);
        renamed["ssl_enforced"] = json!(false);
        let w = create(json!({"tenant":{"external_id":"t","jwt_jwks":{"keys":[]},
            "extensions":[{"type":"postgres","settings":renamed}]}}))
        .unwrap();
        let ext = &w.extensions.unwrap()[0];
        assert_eq!(ext.settings["subcriber_pool_size"], 7);
        assert!(!ext.settings.contains_key("postgres_changes_pool"));
        assert_eq!(ext.settings["ssl_enforced"], false);
    }

    #[test]
    fn update_keeps_absent_fields_and_path_id_wins() {
        let existing = Tenant::for_test("t1");
        let w = validate_upsert(
            &json!({"tenant":{"external_id":"other","name":"New","max_events_per_second":7}}),
            Some("t1"),
            Some(&existing),
            &defaults(),
        )
        .unwrap();
        assert_eq!(w.external_id.as_str(), "t1");
        assert_eq!(w.name, "New");
        assert_eq!(w.limits.max_events_per_second, 7);
        assert_eq!(
            w.limits.max_concurrent_users,
            existing.limits.max_concurrent_users
        );
        assert_eq!(w.jwt_secret.as_deref(), Some("test-secret"));
        assert_eq!(w.extensions, None);
    }
}

//! Replication slot names.

use std::fmt;

use super::ReplicationError;

/// Postgres's limit: `NAMEDATALEN - 1`.
const MAX_LEN: usize = 63;

/// A valid replication slot name: 1 to 63 bytes of `a-z`, `0-9` and `_`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SlotName(String);

impl SlotName {
    /// The tenant's slot: its `slot_name` setting, followed by `_<suffix>` when
    /// `SLOT_NAME_SUFFIX` is set (PROTOCOL.md 6.6).
    ///
    /// # Errors
    /// [`ReplicationError::InvalidSlotName`] when the result is not a name Postgres accepts.
    pub fn for_tenant(setting: &str, suffix: Option<&str>) -> Result<SlotName, ReplicationError> {
        match suffix.map(str::trim).filter(|s| !s.is_empty()) {
            Some(suffix) => SlotName::new(format!("{setting}_{suffix}")),
            None => SlotName::new(setting),
        }
    }

    /// Validates a whole slot name.
    ///
    /// # Errors
    /// [`ReplicationError::InvalidSlotName`] when it is empty, longer than 63 bytes, or holds
    /// anything but lower-case letters, digits and underscores.
    pub fn new(name: impl Into<String>) -> Result<SlotName, ReplicationError> {
        let name = name.into();
        let problem = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_LEN {
            Some("it is longer than 63 bytes")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            Some("only lower-case letters, digits and underscores are allowed")
        } else {
            None
        };
        match problem {
            Some(problem) => Err(ReplicationError::InvalidSlotName { name, problem }),
            None => Ok(SlotName(name)),
        }
    }

    /// Returns the name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorCode, OperationalError};

    #[test]
    fn the_suffix_follows_an_underscore() {
        let plain = SlotName::for_tenant("supabase_realtime_replication_slot", None).unwrap();
        assert_eq!(plain.as_str(), "supabase_realtime_replication_slot");
        let blank = SlotName::for_tenant("slot", Some("  ")).unwrap();
        assert_eq!(blank.as_str(), "slot");
        let suffixed = SlotName::for_tenant("supabase_realtime_replication_slot", Some("n1"));
        assert_eq!(
            suffixed.unwrap().to_string(),
            "supabase_realtime_replication_slot_n1"
        );
    }

    #[test]
    fn names_postgres_refuses_are_typed_errors() {
        for (name, problem) in [
            ("", "empty"),
            ("Upper", "lower-case"),
            ("with-dash", "lower-case"),
            ("spa ce", "lower-case"),
            ("é", "lower-case"),
        ] {
            let err = SlotName::new(name).unwrap_err();
            assert!(err.to_string().contains(problem), "{name:?}: {err}");
            assert_eq!(err.code(), ErrorCode::InvalidConfiguration);
        }
        assert!(SlotName::new("a".repeat(63)).is_ok());
        let long = SlotName::for_tenant(&"a".repeat(60), Some("node")).unwrap_err();
        assert!(long.to_string().contains("63 bytes"), "{long}");
        assert!(SlotName::for_tenant("slot", Some("Node-1")).is_err());
    }
}

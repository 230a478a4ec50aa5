//! The variables of one start-up, looked up by name, and the value parsers every config file
//! shares. A parser returns what is wrong with a value; [`Vars`] adds the variable's name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{ConfigError, Secret};

/// The variables, looked up by name.
pub(super) struct Vars(pub(super) HashMap<String, String>);

impl Vars {
    /// Returns whether `var` is set at all (even blank).
    pub(super) fn contains(&self, var: &str) -> bool {
        self.0.contains_key(var)
    }

    /// Returns the trimmed value of `var` when it is set and not blank.
    pub(super) fn non_empty(&self, var: &str) -> Option<String> {
        self.0
            .get(var)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    pub(super) fn text_or(&self, var: &str, default: &str) -> String {
        self.non_empty(var).unwrap_or_else(|| default.to_string())
    }

    pub(super) fn secret_opt(&self, var: &str) -> Option<Secret> {
        // Secrets are not trimmed: whitespace may be part of them.
        self.0
            .get(var)
            .filter(|v| !v.is_empty())
            .map(|v| Secret::new(v.clone()))
    }

    pub(super) fn secret_required(
        &self,
        var: &'static str,
        what: &str,
    ) -> Result<Secret, ConfigError> {
        self.secret_opt(var).ok_or_else(|| ConfigError::Missing {
            var,
            problem: format!("set it to {what}"),
        })
    }

    pub(super) fn list(&self, var: &str) -> Vec<String> {
        self.non_empty(var)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn parse_opt<T>(
        &self,
        var: &'static str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.non_empty(var) {
            None => Ok(None),
            Some(raw) => parse(&raw)
                .map(Some)
                .map_err(|problem| ConfigError::Invalid {
                    var,
                    problem: format!("`{raw}` {problem}"),
                }),
        }
    }

    pub(super) fn parse_or<T>(
        &self,
        var: &'static str,
        default: T,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        Ok(self.parse_opt(var, parse)?.unwrap_or(default))
    }

    /// Like `parse_or`, taking the first of several names that is set (documented name first).
    pub(super) fn parse_aliased_or<T>(
        &self,
        vars: &[&'static str],
        default: T,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        for var in vars {
            if let Some(value) = self.parse_opt(var, parse)? {
                return Ok(value);
            }
        }
        Ok(default)
    }
}

pub(super) fn port_number(raw: &str) -> Result<u16, String> {
    raw.parse::<u16>()
        .map_err(|_| "is not a port number (0-65535)".to_string())
}

pub(super) fn positive_u32(raw: &str) -> Result<u32, String> {
    match raw.parse::<u32>() {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("is not a whole number between 1 and 4294967295".into()),
    }
}

pub(super) fn positive_usize(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("is not a positive whole number".into()),
    }
}

pub(super) fn non_zero(raw: &str) -> Result<NonZeroU32, String> {
    positive_u32(raw).map(|n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

pub(super) fn millis(raw: &str) -> Result<Duration, String> {
    raw.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| "is not a whole number of milliseconds".to_string())
}

pub(super) fn boolean(raw: &str) -> Result<bool, String> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("is not a boolean (true or false)".into()),
    }
}

pub(super) fn ip_address(raw: &str) -> Result<IpAddr, String> {
    IpAddr::from_str(raw).map_err(|_| "is not an IP address".to_string())
}

pub(super) fn json_object(raw: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("is not a JSON object".into()),
        Err(e) => Err(format!("is not valid JSON ({e})")),
    }
}

pub(super) fn external_id(raw: &str) -> Result<String, String> {
    if raw.contains(['.', '/', ' ']) {
        Err("is not a valid tenant id (no dots, slashes or spaces)".into())
    } else {
        Ok(raw.to_string())
    }
}

//! One `config.postgres_changes` entry of a join, read into a [`BindingSpec`] (PROTOCOL.md 6.1),
//! and the test of which published tables it covers.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::filter::{ColumnInfo, Filter, FilterError};
use super::inspect::inspect_json;
use crate::error::{ErrorCode, OperationalError};

/// Which changes a binding wants (`event`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum EventFilter {
    All,
    Insert,
    Update,
    Delete,
}

impl EventFilter {
    /// Reads `event`: `INSERT`, `UPDATE` or `DELETE` in any case; anything else (or nothing)
    /// is every event.
    fn from_json(value: Option<&Value>) -> EventFilter {
        match value {
            Some(Value::String(event)) => match event.to_uppercase().as_str() {
                "INSERT" => EventFilter::Insert,
                "UPDATE" => EventFilter::Update,
                "DELETE" => EventFilter::Delete,
                _ => EventFilter::All,
            },
            _ => EventFilter::All,
        }
    }

    /// Returns the original's `action_filter` text: `*`, `INSERT`, `UPDATE` or `DELETE`.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            EventFilter::All => "*",
            EventFilter::Insert => "INSERT",
            EventFilter::Update => "UPDATE",
            EventFilter::Delete => "DELETE",
        }
    }

    /// Whether a change of kind `action` (`Insert`, `Update` or `Delete`) is wanted.
    pub(crate) fn accepts(self, action: EventFilter) -> bool {
        self == EventFilter::All || self == action
    }
}

/// A schema or table name as requested: `*` or an exact name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Pattern {
    Any,
    Name(String),
}

impl Pattern {
    fn new(text: &str) -> Pattern {
        match text {
            "*" => Pattern::Any,
            name => Pattern::Name(name.to_owned()),
        }
    }

    /// Whether `name` is covered: `*` covers everything, a name only itself (byte for byte;
    /// `_` and `%` are plain characters here, unlike the original's `LIKE`).
    pub(crate) fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Name(own) => own == name,
        }
    }

    /// Returns the name as requested (`*` for any).
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Pattern::Any => "*",
            Pattern::Name(name) => name,
        }
    }
}

/// One Postgres Changes binding as the client asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BindingSpec {
    pub(crate) event: EventFilter,
    pub(crate) schema: Pattern,
    pub(crate) table: Pattern,
    /// `None` without a filter or with a blank one.
    pub(crate) filter: Option<Filter>,
    /// The `select` column names (strings only); `None` for all columns.
    pub(crate) select: Option<Vec<String>>,
}

/// Why an entry was refused; `Display` is the text of the client's `system` error (3.5).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BindingError {
    /// Neither `schema` nor `table` usable; holds the entry as the original prints it (or
    /// `<redacted>` when it carries a token).
    #[error(
        "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: {0}"
    )]
    MissingParams(String),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(
        "Error parsing `select` params: expected a list of column name strings, e.g. select: [\"col1\", \"col2\"]"
    )]
    SelectNotAList,
    #[error(
        "Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name."
    )]
    SelectOnWildcard,
    #[error("invalid column for select {0}")]
    InvalidSelectColumn(String),
}

impl OperationalError for BindingError {
    fn code(&self) -> ErrorCode {
        ErrorCode::UnableToSubscribeToPostgres
    }

    fn client_message(&self) -> String {
        self.to_string()
    }
}

impl BindingSpec {
    /// Reads one entry of `config.postgres_changes` (the JSON object text the client sent).
    pub(crate) fn parse(entry: &RawValue) -> Result<BindingSpec, BindingError> {
        BindingSpec::parse_str(entry.get())
    }

    /// Like [`parse`](Self::parse), from the JSON text.
    pub(crate) fn parse_str(json: &str) -> Result<BindingSpec, BindingError> {
        let params = match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(params)) => params,
            Ok(other) => return Err(BindingError::MissingParams(render(&other))),
            Err(_) => return Err(BindingError::MissingParams(json.to_owned())),
        };
        let event = EventFilter::from_json(params.get("event"));
        let select = match params.get("select") {
            Some(Value::Array(items)) => {
                let names: Vec<String> = items
                    .iter()
                    .filter_map(|item| item.as_str().map(str::to_owned))
                    .collect();
                (!names.is_empty()).then_some(names)
            }
            Some(Value::String(_)) => return Err(BindingError::SelectNotAList),
            _ => None,
        };
        let string = |key: &str| match params.get(key) {
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(()),
            None => Ok(None),
        };
        let (schema, table, filter) = match (string("schema"), string("table"), string("filter")) {
            (Ok(Some(schema)), Ok(Some(table)), Ok(Some(filter))) => {
                (schema, table, Filter::parse(filter)?)
            }
            (Ok(Some(schema)), Ok(Some(table)), Ok(None)) => (schema, table, None),
            (Ok(Some(schema)), Ok(None), Ok(None)) => (schema, "*", None),
            (Ok(None), Ok(Some(table)), Ok(None)) => ("public", table, None),
            _ => return Err(missing_params(&params)),
        };
        let (schema, table) = (Pattern::new(schema), Pattern::new(table));
        if select.is_some() && (schema == Pattern::Any || table == Pattern::Any) {
            return Err(BindingError::SelectOnWildcard);
        }
        Ok(BindingSpec {
            event,
            schema,
            table,
            filter,
            select,
        })
    }

    /// Whether the binding covers the published table `schema.table`.
    pub(crate) fn matches_table(&self, schema: &str, table: &str) -> bool {
        self.schema.matches(schema) && self.table.matches(table)
    }

    /// Checks the `select` columns against a table: each must exist and be readable.
    pub(crate) fn check_select(&self, columns: &[ColumnInfo]) -> Result<(), BindingError> {
        for name in self.select.iter().flatten() {
            if !columns.iter().any(|c| &c.name == name && c.selectable) {
                return Err(BindingError::InvalidSelectColumn(name.clone()));
            }
        }
        Ok(())
    }
}

fn missing_params(params: &Map<String, Value>) -> BindingError {
    if params.contains_key("user_token") || params.contains_key("auth_token") {
        return BindingError::MissingParams("<redacted>".to_owned());
    }
    let mut out = String::new();
    inspect_json(&Value::Object(params.clone()), &mut out);
    BindingError::MissingParams(out)
}

fn render(value: &Value) -> String {
    let mut out = String::new();
    inspect_json(value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres_changes::filter::{Condition, FilterValue, Op};

    fn spec(json: &str) -> BindingSpec {
        BindingSpec::parse_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn error(json: &str) -> String {
        BindingSpec::parse_str(json).expect_err(json).to_string()
    }

    #[test]
    fn event_is_read_in_any_case_and_defaults_to_all() {
        for (event, expected) in [
            (r#""INSERT""#, EventFilter::Insert),
            (r#""update""#, EventFilter::Update),
            (r#""DeLeTe""#, EventFilter::Delete),
            (r#""*""#, EventFilter::All),
            (r#""TRUNCATE""#, EventFilter::All),
            ("5", EventFilter::All),
            ("null", EventFilter::All),
        ] {
            let s = spec(&format!(r#"{{"event":{event},"schema":"public"}}"#));
            assert_eq!(s.event, expected, "{event}");
        }
        assert_eq!(spec(r#"{"schema":"public"}"#).event, EventFilter::All);
        assert_eq!(EventFilter::Update.as_str(), "UPDATE");
        assert!(EventFilter::All.accepts(EventFilter::Delete));
        assert!(EventFilter::Insert.accepts(EventFilter::Insert));
        assert!(!EventFilter::Insert.accepts(EventFilter::Update));
    }

    #[test]
    fn schema_and_table_defaults() {
        let s = spec(r#"{"event":"*","schema":"public","table":"todos"}"#);
        assert_eq!(s.schema, Pattern::Name("public".into()));
        assert_eq!(s.table, Pattern::Name("todos".into()));
        assert_eq!(s.filter, None);
        assert_eq!(s.select, None);

        let only_schema = spec(r#"{"schema":"app"}"#);
        assert_eq!(only_schema.table, Pattern::Any);
        assert_eq!(only_schema.schema.as_str(), "app");

        let only_table = spec(r#"{"table":"todos"}"#);
        assert_eq!(only_table.schema, Pattern::Name("public".into()));

        let everything = spec(r#"{"schema":"*"}"#);
        assert_eq!(
            (everything.schema, everything.table),
            (Pattern::Any, Pattern::Any)
        );
    }

    #[test]
    fn filter_needs_explicit_schema_and_table() {
        let s = spec(r#"{"schema":"public","table":"todos","filter":"id=eq.1"}"#);
        let expected = Condition::new("id", Op::Eq, false, FilterValue::Text("1".into()));
        assert_eq!(
            s.filter.as_ref().map(|f| f.conditions().to_vec()),
            Some(expected.into_iter().collect())
        );
        assert_eq!(
            spec(r#"{"schema":"public","table":"todos","filter":"  "}"#).filter,
            None
        );
        assert_eq!(
            spec(r#"{"schema":"public","table":"todos","filter":""}"#).filter,
            None
        );
        // A filter with only one of them, or a filter that is not a string, is refused.
        assert_eq!(
            error(r#"{"table":"todos","filter":"id=eq.1"}"#),
            "No subscription params provided. Please provide at least a `schema` or `table` \
             to subscribe to: %{\"filter\" => \"id=eq.1\", \"table\" => \"todos\"}"
        );
        assert!(
            error(r#"{"schema":"public","table":"todos","filter":null}"#).ends_with(
                r#"to subscribe to: %{"filter" => nil, "schema" => "public", "table" => "todos"}"#
            )
        );
        assert_eq!(
            error(r#"{"schema":"public","table":"todos","filter":"id=foo.1"}"#),
            r#"Error parsing `filter` params: ["foo", "1"]"#
        );
    }

    #[test]
    fn missing_params_message() {
        assert_eq!(
            error("{}"),
            "No subscription params provided. Please provide at least a `schema` or `table` \
             to subscribe to: %{}"
        );
        assert_eq!(
            error(r#"{"event":"INSERT","schema":5}"#),
            "No subscription params provided. Please provide at least a `schema` or `table` \
             to subscribe to: %{\"event\" => \"INSERT\", \"schema\" => 5}"
        );
        assert!(
            error(r#"{"table":"t","schema":null}"#)
                .ends_with(r#"%{"schema" => nil, "table" => "t"}"#)
        );
        assert!(
            error(r#"{"event":"*","user_token":"secret.jwt"}"#)
                .ends_with("subscribe to: <redacted>")
        );
        assert!(error(r#"{"auth_token":"x","schema":1}"#).ends_with("<redacted>"));
        assert!(error("[1]").ends_with("subscribe to: [1]"));
    }

    #[test]
    fn select_rules() {
        let s = spec(r#"{"schema":"public","table":"todos","select":["id",1,"title",null]}"#);
        assert_eq!(s.select, Some(vec!["id".to_string(), "title".to_string()]));
        assert_eq!(
            spec(r#"{"schema":"public","table":"todos","select":[]}"#).select,
            None
        );
        assert_eq!(
            spec(r#"{"schema":"public","table":"todos","select":[1,2]}"#).select,
            None
        );
        assert_eq!(
            spec(r#"{"schema":"public","table":"todos","select":{"a":1}}"#).select,
            None
        );
        assert_eq!(
            error(r#"{"schema":"public","table":"todos","select":"id"}"#),
            "Error parsing `select` params: expected a list of column name strings, e.g. \
             select: [\"col1\", \"col2\"]"
        );
        // The select check comes first, even before a broken filter or missing params.
        assert_eq!(
            error(r#"{"select":"id"}"#),
            BindingError::SelectNotAList.to_string()
        );
        for wildcard in [
            r#"{"schema":"*","table":"todos","select":["id"]}"#,
            r#"{"schema":"public","select":["id"]}"#,
            r#"{"schema":"public","table":"*","select":["id"]}"#,
        ] {
            assert_eq!(
                error(wildcard),
                "Column selection is not supported for wildcard subscriptions. Provide an \
                 explicit schema and table name."
            );
        }
        // An empty select is no select, so wildcards are fine.
        assert!(BindingSpec::parse_str(r#"{"schema":"*","select":[]}"#).is_ok());
    }

    #[test]
    fn select_columns_are_checked() {
        let columns = [
            ColumnInfo {
                name: "id".into(),
                type_name: "int8".into(),
                selectable: true,
            },
            ColumnInfo {
                name: "secret".into(),
                type_name: "text".into(),
                selectable: false,
            },
        ];
        let ok = spec(r#"{"schema":"public","table":"t","select":["id"]}"#);
        assert_eq!(ok.check_select(&columns), Ok(()));
        let hidden = spec(r#"{"schema":"public","table":"t","select":["id","secret"]}"#);
        assert_eq!(
            hidden.check_select(&columns).unwrap_err().to_string(),
            "invalid column for select secret"
        );
        let missing = spec(r#"{"schema":"public","table":"t","select":["nope"]}"#);
        assert!(missing.check_select(&columns).is_err());
        assert_eq!(spec(r#"{"schema":"public"}"#).check_select(&[]), Ok(()));
    }

    #[test]
    fn table_matching_is_exact_or_wildcard() {
        let s = spec(r#"{"schema":"public","table":"my_table"}"#);
        assert!(s.matches_table("public", "my_table"));
        assert!(
            !s.matches_table("public", "myXtable"),
            "no LIKE wildcard for _"
        );
        assert!(!s.matches_table("public", "My_table"));
        assert!(!s.matches_table("other", "my_table"));
        let percent = spec(r#"{"schema":"public","table":"%"}"#);
        assert!(!percent.matches_table("public", "todos"));
        assert!(percent.matches_table("public", "%"));
        let schema_only = spec(r#"{"schema":"public"}"#);
        assert!(schema_only.matches_table("public", "anything"));
        assert!(!schema_only.matches_table("private", "anything"));
        let any_schema = spec(r#"{"schema":"*","table":"todos"}"#);
        assert!(any_schema.matches_table("tenant_a", "todos"));
        assert!(!any_schema.matches_table("tenant_a", "notes"));
        assert!(spec(r#"{"schema":"*"}"#).matches_table("x", "y"));
    }

    #[test]
    fn errors_carry_the_postgres_changes_code() {
        let e = BindingSpec::parse_str("{}").unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnableToSubscribeToPostgres);
        assert!(
            e.client_reason()
                .starts_with("UnableToSubscribeToPostgres: No subscription")
        );
        let raw = serde_json::value::RawValue::from_string(r#"{"table":"t"}"#.into()).unwrap();
        assert_eq!(BindingSpec::parse(&raw).unwrap().table.as_str(), "t");
    }
}

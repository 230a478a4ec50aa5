use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn parse(text: &str) -> Filter {
    Filter::parse(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .unwrap_or_else(|| panic!("{text}: no filter"))
}

fn parse_error(text: &str) -> String {
    Filter::parse(text).expect_err(text).to_string()
}

fn text(column: &str, op: Op, negate: bool, value: &str) -> Condition {
    Condition::new(column, op, negate, FilterValue::Text(value.into())).unwrap()
}

fn list(column: &str, negate: bool, items: &[Option<&str>]) -> Condition {
    let items = items.iter().map(|i| i.map(str::to_owned)).collect();
    Condition::new(column, Op::In, negate, FilterValue::List(items)).unwrap()
}

/// A table with one column per type, all readable, plus an unreadable `secret`.
fn table() -> Vec<ColumnInfo> {
    let mut columns: Vec<ColumnInfo> = [
        ("i2", "int2"),
        ("i4", "int4"),
        ("i8", "int8"),
        ("oid", "oid"),
        ("f4", "float4"),
        ("f8", "float8"),
        ("num", "numeric"),
        ("b", "bool"),
        ("t", "text"),
        ("vc", "varchar"),
        ("ch", "bpchar"),
        ("nm", "name"),
        ("ci", "citext"),
        ("u", "uuid"),
        ("d", "date"),
        ("ts", "timestamp"),
        ("tz", "timestamptz"),
        ("tm", "time"),
        ("j", "jsonb"),
        ("js", "json"),
        ("status", "mood"),
        ("tags", "_text"),
    ]
    .into_iter()
    .map(|(name, type_name)| ColumnInfo {
        name: name.into(),
        type_name: type_name.into(),
        selectable: true,
    })
    .collect();
    columns.push(ColumnInfo {
        name: "secret".into(),
        type_name: "text".into(),
        selectable: false,
    });
    columns
}

fn compile(filter: &str) -> CompiledFilter {
    parse(filter)
        .compile(&table())
        .unwrap_or_else(|e| panic!("{filter}: {e}"))
}

fn compile_error(filter: &str) -> String {
    parse(filter)
        .compile(&table())
        .expect_err(filter)
        .to_string()
}

/// Evaluates `filter` on a row of `(column, value)`; `None` is SQL NULL.
fn eval(filter: &str, row: &[(&str, Option<&str>)]) -> bool {
    let compiled = compile(filter);
    let by_name = compiled.matches(|name| {
        row.iter().find(|(c, _)| *c == name).map(|(_, v)| match v {
            Some(text) => ColumnValue::Text(text),
            None => ColumnValue::Null,
        })
    });
    // The positional form must agree.
    let columns = table();
    let by_index = compiled.matches_at(|index| {
        row.iter()
            .find(|(c, _)| *c == columns[index].name)
            .map(|(_, v)| v.map_or(ColumnValue::Null, ColumnValue::Text))
    });
    assert_eq!(by_name, by_index, "{filter}");
    by_name
}

/// Evaluates a one-column filter on one value.
fn on(filter: &str, value: Option<&str>) -> bool {
    let column = filter.split('=').next().unwrap_or_default();
    eval(filter, &[(column, value)])
}

// ---- grammar -------------------------------------------------------------------------------

#[test]
fn parses_every_operator_with_and_without_not() {
    for op in Op::ALL {
        let value = if op == Op::In { "(1,2)" } else { "1" };
        let f = parse(&format!("col={op}.{value}"));
        assert_eq!(f.conditions().len(), 1);
        let c = &f.conditions()[0];
        assert_eq!((c.column(), c.op(), c.negate()), ("col", op, false));
        let negated = parse(&format!("col=not.{op}.{value}"));
        assert!(negated.conditions()[0].negate());
        assert_eq!(negated.conditions()[0].op(), op);
    }
    assert_eq!(
        Op::from_name("EQ"),
        None,
        "operator names are case-sensitive"
    );
}

#[test]
fn parses_conjunctions_quotes_and_lists() {
    assert_eq!(
        parse("id=gt.0,id=lt.100").conditions(),
        [
            text("id", Op::Gt, false, "0"),
            text("id", Op::Lt, false, "100")
        ]
    );
    assert_eq!(
        parse(r#"area=eq."Oslo, Norway",n=eq.1"#).conditions(),
        [
            text("area", Op::Eq, false, "Oslo, Norway"),
            text("n", Op::Eq, false, "1")
        ]
    );
    assert_eq!(
        parse(r#"q=eq."say \"hi\" \\ bye""#).conditions(),
        [text("q", Op::Eq, false, r#"say "hi" \ bye"#)]
    );
    assert_eq!(
        parse(r#"q=eq."(unbalanced""#).conditions(),
        [text("q", Op::Eq, false, "(unbalanced")]
    );
    // Not closed at the end: taken literally.
    assert_eq!(
        parse(r#"q=eq."abc"#).conditions(),
        [text("q", Op::Eq, false, "\"abc")]
    );
    assert_eq!(
        parse(r#"q=eq."a"b""#).conditions(),
        [text("q", Op::Eq, false, "\"a\"b\"")]
    );
    // Dots after the operator belong to the value.
    assert_eq!(
        parse("v=eq.1.5.x").conditions(),
        [text("v", Op::Eq, false, "1.5.x")]
    );
    assert_eq!(parse("v=eq.").conditions(), [text("v", Op::Eq, false, "")]);
    assert_eq!(
        parse(r#"s=in.(a, "b,c" , NULL,"NULL",null,\"x, d e )"#).conditions(),
        [list(
            "s",
            false,
            &[
                Some("a"),
                Some("b,c"),
                None,
                Some("NULL"),
                None,
                Some("\"x"),
                Some("d e")
            ]
        )]
    );
    assert_eq!(
        parse(r#"s=in.(")",x),t=eq.1"#).conditions(),
        [
            list("s", false, &[Some(")"), Some("x")]),
            text("t", Op::Eq, false, "1")
        ]
    );
    assert_eq!(parse("s=not.in.()").conditions(), [list("s", true, &[])]);
    assert_eq!(parse("s=in.( )").conditions(), [list("s", false, &[])]);
    // Outer white space of the text and of each condition goes.
    assert_eq!(
        parse("  a=eq.1 ,\tb=is.null  ").conditions(),
        [
            text("a", Op::Eq, false, "1"),
            text("b", Op::Is, false, "null")
        ]
    );
}

#[test]
fn blank_filter_is_no_filter() {
    assert_eq!(Filter::parse(""), Ok(None));
    assert_eq!(Filter::parse(" \t\n"), Ok(None));
    assert_eq!(Filter::from_conditions(Vec::new()), None);
}

#[test]
fn parse_errors_have_the_original_texts() {
    let empty = "Error parsing `filter` params: filter must not contain empty segments \
                 (check for extra commas)";
    for bad in ["a=eq.1,", ",a=eq.1", "a=eq.1,,b=eq.2", "a=eq.1, ,b=eq.2"] {
        assert_eq!(parse_error(bad), empty, "{bad}");
    }
    assert_eq!(
        parse_error("subject=foo.hey"),
        r#"Error parsing `filter` params: ["foo", "hey"]"#
    );
    assert_eq!(
        parse_error("undefined"),
        r#"Error parsing `filter` params: ["undefined"]"#
    );
    assert_eq!(
        parse_error("a=eq"),
        r#"Error parsing `filter` params: ["eq"]"#
    );
    assert_eq!(
        parse_error("a=not.eq"),
        r#"Error parsing `filter` params: ["eq"]"#
    );
    assert_eq!(
        parse_error("a=EQ.1"),
        r#"Error parsing `filter` params: ["EQ", "1"]"#
    );
    assert_eq!(
        parse_error("a=not.not.eq.1"),
        r#"Error parsing `filter` params: ["not", "eq.1"]"#
    );
    // The quote after `=` does not open, so the comma splits.
    assert_eq!(
        parse_error(r#"a="x,y""#),
        r#"Error parsing `filter` params: ["\"x"]"#
    );
    assert_eq!(
        parse_error("id=in.1,2"),
        "Error parsing `filter` params: `in` filter value must be wrapped by parentheses"
    );
    assert_eq!(
        parse_error("id=in.(1,2"),
        "Error parsing `filter` params: `in` filter value must be wrapped by parentheses"
    );
    for malformed in [
        "id=in.(1,,2)",
        "id=in.(1,)",
        "id=in.({1},2)",
        r#"id=in.("a)"#,
    ] {
        assert!(
            parse_error(malformed)
                .starts_with("Error parsing `filter` params: malformed array literal: \"{"),
            "{malformed}"
        );
    }
    assert_eq!(
        parse_error("a=eq.x\0y"),
        "Error parsing `filter` params: filter must not contain NUL bytes"
    );
    assert_eq!(
        parse_error(&format!("a=eq.{}", "x".repeat(MAX_FILTER_BYTES))),
        "Error parsing `filter` params: filter is longer than 16384 bytes"
    );
}

#[test]
fn in_lists_are_bounded() {
    let values = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let hundred = parse(&format!("id=in.({})", values(100)));
    assert!(matches!(&hundred.conditions()[0].value(), FilterValue::List(l) if l.len() == 100));
    assert_eq!(
        parse_error(&format!("id=in.({})", values(101))),
        "Error parsing `filter` params: too many values for `in` filter. Maximum 100"
    );
    // 10,000 values: over the length bound as a filter, and refused at the 101st item by the
    // list reader itself; both quickly.
    let huge = format!("({})", values(10_000));
    let started = Instant::now();
    assert_eq!(
        Filter::parse(&format!("id=in.{huge}")),
        Err(FilterError::TooLong)
    );
    assert_eq!(parse_in_list(&huge), Err(FilterError::TooManyInValues));
    let short = format!("({})", vec!["1"; 10_000].join(","));
    assert_eq!(
        Filter::parse(&format!("id=in.{short}")),
        Err(FilterError::TooLong)
    );
    assert_eq!(parse_in_list(&short), Err(FilterError::TooManyInValues));
    assert!(started.elapsed() < Duration::from_millis(200));
}

#[test]
fn injection_attempts_stay_values() {
    // Quotes, semicolons and comments are plain text; they only ever become comparands.
    let f = parse("title=eq.'; drop table todos; --");
    assert_eq!(
        f.conditions(),
        [text("title", Op::Eq, false, "'; drop table todos; --")]
    );
    assert!(on(
        "t=eq.'; drop table todos; --",
        Some("'; drop table todos; --")
    ));
    assert!(!on("t=eq.'; drop table todos; --", Some("x")));
    assert_eq!(
        compile_error("i4=eq.1; select pg_sleep(10)"),
        "invalid input syntax for type integer: \"1; select pg_sleep(10)\""
    );
    assert_eq!(
        compile_error("i4=eq.1 or 1=1"),
        "invalid input syntax for type integer: \"1 or 1=1\""
    );
    assert_eq!(
        compile_error("i4=eq.1/**/"),
        "invalid input syntax for type integer: \"1/**/\""
    );
    // A column name that tries to break out is just an unknown column.
    assert_eq!(
        compile_error(r#"id"; drop table x; --=eq.1"#),
        r#"invalid column for filter id"; drop table x; --"#
    );
    assert_eq!(
        compile_error("t) or (1=eq.1"),
        "invalid column for filter t) or (1"
    );
    // Unicode in columns and values.
    let columns = [ColumnInfo {
        name: "名前".into(),
        type_name: "text".into(),
        selectable: true,
    }];
    let compiled = parse("名前=eq.café ☕").compile(&columns).unwrap();
    assert!(compiled.matches(|_| Some(ColumnValue::Text("café ☕"))));
    assert!(!compiled.matches(|_| Some(ColumnValue::Text("cafe"))));
    // Right-to-left marks and the like are ordinary characters.
    assert!(on("t=eq.\u{202e}abc", Some("\u{202e}abc")));
}

#[test]
fn display_round_trips() {
    for filter in [
        "id=eq.1",
        "a=not.like.%x%,b=in.(\"1\",NULL),c=is.null",
        r#"q=eq."a,b",r=eq."(x)",s=eq."tab\\""#,
        "e=eq.",
    ] {
        let parsed = parse(filter);
        assert_eq!(parse(&parsed.to_string()), parsed, "{filter} -> {parsed}");
    }
    assert_eq!(
        parse("a=eq.1,b=not.in.(x)").to_string(),
        r#"a=eq.1,b=not.in.("x")"#
    );
}

// ---- compile checks ------------------------------------------------------------------------

#[test]
fn columns_must_exist_and_be_readable() {
    assert_eq!(compile_error("nope=eq.1"), "invalid column for filter nope");
    assert_eq!(
        compile_error("secret=eq.1"),
        "invalid column for filter secret"
    );
    // Column names are taken as written: no trimming inside a condition.
    assert_eq!(compile_error("i4 =eq.1"), "invalid column for filter i4 ");
    assert_eq!(compile_error("=eq.1"), "invalid column for filter ");
    let compiled = compile("i4=eq.1,t=eq.x,i4=lt.5");
    assert_eq!(compiled.columns().collect::<Vec<_>>(), ["i4", "t", "i4"]);
}

#[test]
fn values_must_cast_to_the_column_type() {
    let cases = [
        (
            "i4=eq.abc",
            "invalid input syntax for type integer: \"abc\"",
        ),
        (
            "i2=gt.40000",
            "value \"40000\" is out of range for type smallint",
        ),
        ("i8=lt.1e3", "invalid input syntax for type bigint: \"1e3\""),
        (
            "f8=eq.x",
            "invalid input syntax for type double precision: \"x\"",
        ),
        ("num=eq.1,5", "Error parsing `filter` params: [\"5\"]"),
        (
            "num=eq.1..5",
            "invalid input syntax for type numeric: \"1..5\"",
        ),
        (
            "b=eq.maybe",
            "invalid input syntax for type boolean: \"maybe\"",
        ),
        (
            "u=eq.not-a-uuid",
            "invalid input syntax for type uuid: \"not-a-uuid\"",
        ),
        (
            "d=eq.2024-13-01",
            "date/time field value out of range: \"2024-13-01\"",
        ),
        (
            "d=eq.yesterday",
            "invalid input syntax for type date: \"yesterday\"",
        ),
        (
            "tz=gte.now",
            "invalid input syntax for type timestamp with time zone: \"now\"",
        ),
        (
            "tm=eq.25:00",
            "date/time field value out of range: \"25:00\"",
        ),
        ("j=eq.{bad", "invalid input syntax for type json"),
        (
            "i4=in.(1,x)",
            "invalid input syntax for type integer: \"x\"",
        ),
        (
            "i4=isdistinct.x",
            "invalid input syntax for type integer: \"x\"",
        ),
    ];
    for (filter, message) in cases {
        let error = Filter::parse(filter)
            .and_then(|f| f.map_or(Ok(()), |f| f.compile(&table()).map(|_| ())))
            .expect_err(filter);
        assert_eq!(error.to_string(), message, "{filter}");
    }
}

#[test]
fn operators_must_apply_to_the_type() {
    assert_eq!(
        compile_error("i4=is.true"),
        "is true filter requires a boolean column, got integer"
    );
    assert_eq!(
        compile_error("t=is.unknown"),
        "is unknown filter requires a boolean column, got text"
    );
    assert_eq!(
        compile_error("b=is.TRUE"),
        "invalid value for is filter: must be null, true, false, or unknown"
    );
    assert_eq!(
        compile_error("b=is.maybe"),
        "invalid value for is filter: must be null, true, false, or unknown"
    );
    assert_eq!(
        compile_error("i4=like.1%"),
        "operator like requires a text-compatible column type, got integer"
    );
    assert_eq!(
        compile_error("j=ilike.x"),
        "operator ilike requires a text-compatible column type, got jsonb"
    );
    assert_eq!(
        compile_error("tags=match.x"),
        "operator match requires a text-compatible column type, got text[]"
    );
    assert_eq!(
        compile_error("j=lt.1"),
        "operator lt is not supported on column j of type jsonb"
    );
    assert_eq!(
        compile_error("status=gte.happy"),
        "operator gte is not supported on column status of type mood"
    );
    assert_eq!(
        compile_error(r"t=like.abc\"),
        "LIKE pattern must not end with escape character"
    );
    assert_eq!(
        compile_error("t=match.(abc"),
        "invalid regular expression for match filter: unclosed group"
    );
    assert!(
        compile_error(r"t=imatch.(a)\1")
            .starts_with("invalid regular expression for imatch filter: ")
    );
    assert!(
        compile_error(r"t=match.\w{1000}\w{1000}").contains("pattern too complex"),
        "huge regex refused"
    );
    let many = ["t=match.a"; MAX_REGEX_CONDITIONS + 1].join(",");
    assert_eq!(
        compile_error(&many),
        "too many match/imatch conditions in filter. Maximum 10"
    );
    assert!(
        parse(&["t=match.a"; MAX_REGEX_CONDITIONS].join(","))
            .compile(&table())
            .is_ok()
    );
    // Every one of these is accepted.
    for ok in [
        "i4=is.null",
        "b=not.is.false",
        "vc=like.a%",
        "ch=ilike.a%",
        "nm=match.^a",
        "ci=imatch.a",
        "status=eq.happy",
        "status=in.(happy,sad)",
        r#"tags=eq."{a,b}""#,
        "j=eq.{\"a\":1}",
        "u=lt.a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "t=in.()",
    ] {
        compile(ok);
    }
}

#[test]
fn errors_carry_the_postgres_changes_code() {
    let error = FilterError::EmptySegment;
    assert_eq!(error.code(), ErrorCode::UnableToSubscribeToPostgres);
    assert_eq!(error.client_message(), error.to_string());
}

// ---- evaluation ----------------------------------------------------------------------------

#[test]
fn integers() {
    assert!(on("i4=eq.5", Some("5")));
    assert!(on("i4=eq. +5 ", Some("5")));
    assert!(!on("i4=eq.5", Some("6")));
    assert!(on("i4=neq.5", Some("6")));
    assert!(on("i4=lt.10", Some("9")));
    assert!(!on("i4=lt.10", Some("10")));
    assert!(on("i4=lte.10", Some("10")));
    assert!(on("i4=gt.-3", Some("-2")));
    assert!(on("i4=gte.-3", Some("-3")));
    // As integers, not as text: "9" > "10" byte-wise.
    assert!(on("i8=gt.10", Some("11")));
    assert!(!on("i8=gt.10", Some("9")));
    assert!(on("i8=eq.9223372036854775807", Some("9223372036854775807")));
    assert!(on("i2=in.(1,2,3)", Some("2")));
    assert!(!on("i2=in.(1,2,3)", Some("4")));
    assert!(on("i2=not.in.(1,2,3)", Some("4")));
    assert!(on("oid=eq.-1", Some("4294967295")));
    // A row value that is not of the type never matches.
    assert!(!on("i4=neq.5", Some("five")));
    assert!(!on("i4=not.eq.5", Some("five")));
}

#[test]
fn floats_and_numerics() {
    assert!(on("f8=eq.1.5", Some("1.5")));
    assert!(on("f8=gt.1e2", Some("100.5")));
    assert!(on("f8=eq.NaN", Some("NaN")));
    assert!(on("f8=gt.Infinity", Some("NaN")));
    assert!(on("f8=lt.-1e308", Some("-Infinity")));
    assert!(on("f8=eq.0", Some("-0")));
    // float4 compares at float4 precision.
    assert!(on("f4=eq.0.1", Some("0.1")));
    assert!(!on("f8=eq.0.1", Some("0.1000000001")));
    assert!(on("num=eq.1.10", Some("1.1")));
    assert!(on("num=eq.1e2", Some("100.00")));
    assert!(on(
        "num=gt.0.30000000000000000001",
        Some("0.30000000000000000002")
    ));
    assert!(!on(
        "num=eq.12345678901234567890.1",
        Some("12345678901234567890.2")
    ));
    assert!(on("num=lt.-0.5", Some("-1")));
    assert!(on("num=gt.Infinity", Some("NaN")));
    assert!(on("num=in.(1,2.50)", Some("2.5")));
}

#[test]
fn booleans_and_is() {
    assert!(on("b=eq.true", Some("t")));
    assert!(on("b=eq.yes", Some("t")));
    assert!(!on("b=eq.true", Some("f")));
    assert!(on("b=lt.true", Some("f")));
    assert!(on("b=is.true", Some("t")));
    assert!(!on("b=is.true", Some("f")));
    assert!(!on("b=is.true", None));
    assert!(on("b=not.is.true", Some("f")));
    assert!(on("b=not.is.true", None));
    assert!(on("b=is.false", Some("f")));
    assert!(!on("b=is.false", None));
    assert!(on("b=is.unknown", None));
    assert!(!on("b=is.unknown", Some("t")));
    assert!(on("b=not.is.unknown", Some("f")));
    assert!(on("t=is.null", None));
    assert!(!on("t=is.null", Some("")));
    assert!(on("t=not.is.null", Some("")));
    assert!(!on("t=not.is.null", None));
}

#[test]
fn text_types() {
    assert!(on("t=eq.hello", Some("hello")));
    assert!(!on("t=eq.hello", Some("Hello")));
    assert!(on("t=neq.hello", Some("Hello")));
    // Byte-wise (C collation): upper case sorts before lower case.
    assert!(on("t=lt.a", Some("Z")));
    assert!(on("t=gt.Z", Some("a")));
    assert!(on("t=gt.é", Some("ö")));
    assert!(on("vc=in.(a,\"b,c\")", Some("b,c")));
    assert!(on("vc=eq.\"  padded  \"", Some("  padded  ")));
    // char(n): trailing spaces do not count.
    assert!(on("ch=eq.ab", Some("ab   ")));
    assert!(on("ch=eq.\"ab  \"", Some("ab")));
    assert!(on("ch=like.%b", Some("ab   ")));
    assert!(on("ch=match.b$", Some("ab   ")));
    // The pattern is cast to char(n) too, losing its trailing spaces.
    assert!(on(r#"ch=like."a%  ""#, Some("ab")));
    assert!(on(r#"ch=match." ""#, Some("ab")));
    // name: cut at 63 bytes like Postgres.
    let long = "n".repeat(70);
    assert!(on(&format!("nm=eq.{long}"), Some(&"n".repeat(63))));
    // citext: case-insensitive everywhere.
    assert!(on("ci=eq.HeLLo", Some("hello")));
    assert!(on("ci=eq.ÄBC", Some("äbc")));
    assert!(on("ci=lt.B", Some("a")));
    assert!(on("ci=like.HE%", Some("hello")));
    assert!(on("ci=match.^HE", Some("hello")));
    assert!(on("ci=in.(X,HELLO)", Some("Hello")));
}

#[test]
fn like_and_regex() {
    assert!(on("t=like.%milk%", Some("buy milk")));
    assert!(!on("t=like.%milk%", Some("buy MILK")));
    assert!(on("t=ilike.%milk%", Some("buy MILK")));
    assert!(on("t=like.b_y%", Some("buy milk")));
    assert!(on("t=not.like.%milk%", Some("buy eggs")));
    assert!(on(r"t=like.100\%", Some("100%")));
    assert!(!on(r"t=like.100\%", Some("1000")));
    assert!(on("t=match.^bu+y", Some("buuuy")));
    assert!(on("t=match.milk", Some("buy milk today")));
    assert!(!on("t=match.MILK", Some("buy milk")));
    assert!(on("t=imatch.MILK", Some("buy milk")));
    assert!(on("t=not.match.^x", Some("buy milk")));
    assert!(
        on("t=match.a.b", Some("a\nb")),
        "dot matches a newline, as in Postgres"
    );
    assert!(!on("t=like.%", None));
    assert!(!on("t=not.like.%", None));
    assert!(!on("t=match..*", None));
}

#[test]
fn uuids_dates_and_times() {
    let id = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    assert!(on(&format!("u=eq.{id}"), Some(id)));
    assert!(on(&format!("u=eq.{}", id.to_uppercase()), Some(id)));
    assert!(on("u=eq.{a0eebc999c0b4ef8bb6d6bb9bd380a11}", Some(id)));
    assert!(on(
        &format!("u=lt.{id}"),
        Some("00000000-0000-0000-0000-000000000001")
    ));
    assert!(on("d=eq.2024-01-05", Some("2024-01-05")));
    assert!(on("d=gt.2023-12-31", Some("2024-01-01")));
    assert!(on("d=lt.2024-01-01", Some("0044-03-15 BC")));
    assert!(on("d=gt.2024-01-01", Some("infinity")));
    assert!(on("d=lt.0001-01-01", Some("-infinity")));
    assert!(on("ts=eq.2024-01-31T12:00:00", Some("2024-01-31 12:00:00")));
    assert!(on("ts=gt.2024-01-31", Some("2024-01-31 00:00:00.000001")));
    assert!(on(
        "ts=lt.2024-01-31 12:00:00.5",
        Some("2024-01-31 12:00:00.25")
    ));
    // Instants, whatever the offset they are written with.
    assert!(on(
        "tz=eq.2024-01-31T12:00:00Z",
        Some("2024-01-31 14:00:00+02")
    ));
    assert!(on(
        "tz=eq.2024-01-31 12:00:00+00",
        Some("2024-01-31 06:30:00-05:30")
    ));
    assert!(on(
        "tz=lt.2024-01-31T12:00:00Z",
        Some("2024-01-31 13:00:00+02")
    ));
    assert!(on("tz=gte.2024-01-31", Some("2024-01-31 00:00:00+00")));
    assert!(on("tm=eq.12:30", Some("12:30:00")));
    assert!(on("tm=lt.12:30:00.000001", Some("12:30:00")));
    assert!(on("tm=gt.23:59:59.999999", Some("24:00:00")));
    // A row in another DateStyle does not parse, so it never matches.
    assert!(!on("d=neq.2024-01-05", Some("01/05/2024")));
}

#[test]
fn json_and_other_types() {
    assert!(on(
        r#"j=eq."{\"a\":1,\"b\":[1,2]}""#,
        Some(r#"{"b": [1, 2], "a": 1}"#)
    ));
    assert!(on(r#"j=neq.{"a":1}"#, Some(r#"{"a": 2}"#)));
    assert!(on(r#"js=eq."\"text\"""#, Some(r#""text""#)));
    assert!(on(r#"j=in.(1,"{\"a\":1}")"#, Some(r#"{"a": 1}"#)));
    assert!(on("j=eq.1", Some("1.0")));
    // Enums and arrays: exact text.
    assert!(on("status=eq.happy", Some("happy")));
    assert!(!on("status=eq.Happy", Some("happy")));
    assert!(on("status=in.(sad,happy)", Some("happy")));
    assert!(on(r#"tags=eq."{a,b}""#, Some("{a,b}")));
    assert!(!on(r#"tags=eq."{a, b}""#, Some("{a,b}")));
    assert!(on("status=isdistinct.sad", Some("happy")));
}

#[test]
fn three_valued_logic() {
    // A comparison with NULL is NULL: neither it nor its negation holds.
    for filter in [
        "i4=eq.1",
        "i4=not.eq.1",
        "i4=neq.1",
        "i4=not.neq.1",
        "i4=lt.1",
        "i4=not.gte.1",
        "i4=in.(1,2)",
        "i4=not.in.(1,2)",
    ] {
        assert!(!on(filter, None), "{filter}");
    }
    // `x = any('{1,NULL}')` is true for 1 and NULL otherwise.
    assert!(on("i4=in.(1,NULL)", Some("1")));
    assert!(!on("i4=in.(1,NULL)", Some("2")));
    assert!(!on("i4=not.in.(1,NULL)", Some("2")));
    assert!(!on("i4=not.in.(1,NULL)", Some("1")));
    assert!(!on("i4=in.()", Some("1")));
    // `NULL = any('{}')` is false, so its negation holds.
    assert!(!on("i4=in.()", None));
    assert!(on("i4=not.in.()", None));
    assert!(!on("i4=in.(NULL)", None));
    assert!(!on("i4=not.in.(NULL)", None));
    assert!(on("i4=not.in.()", Some("1")));
    // IS [NOT] DISTINCT FROM is never NULL.
    assert!(on("i4=isdistinct.1", None));
    assert!(on("i4=isdistinct.1", Some("2")));
    assert!(!on("i4=isdistinct.1", Some("1")));
    assert!(on("i4=not.isdistinct.1", Some("1")));
    assert!(!on("i4=not.isdistinct.1", None));
}

#[test]
fn conjunction_and_missing_columns() {
    let row = [("i4", Some("5")), ("t", Some("milk")), ("b", None)];
    assert!(eval("i4=gt.1,t=eq.milk", &row));
    assert!(!eval("i4=gt.1,t=eq.eggs", &row));
    assert!(eval("i4=gt.1,b=is.null", &row));
    assert!(!eval("i4=gt.1,b=eq.true", &row));
    // A filter on a column the row does not have fails the row, even negated or IS NULL.
    assert!(!eval("f8=is.null", &row));
    assert!(!eval("f8=not.eq.1", &row));
    assert!(!eval("i4=gt.1,f8=isdistinct.1", &row));
}

// ---- properties ----------------------------------------------------------------------------

/// A LIKE pattern as a regex: the reference the matcher is checked against.
fn like_reference(pattern: &str, case_insensitive: bool) -> Option<Regex> {
    let mut source = String::from(if case_insensitive { "(?si)^" } else { "(?s)^" });
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => source.push_str(".*"),
            '_' => source.push('.'),
            '\\' => source.push_str(&regex::escape(&chars.next()?.to_string())),
            c => source.push_str(&regex::escape(&c.to_string())),
        }
    }
    source.push('$');
    Regex::new(&source).ok()
}

fn column_name() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,8}"
}

fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ]{0,6}",
        r#"[a-z,()"\\. %_=é☕]{0,8}"#,
        any::<String>().prop_map(|s| s.replace('\0', "")),
    ]
}

fn condition() -> impl Strategy<Value = Condition> {
    let op = proptest::sample::select(Op::ALL.to_vec());
    (
        column_name(),
        op,
        any::<bool>(),
        value_text(),
        proptest::collection::vec(proptest::option::weighted(0.9, value_text()), 0..5),
    )
        .prop_map(|(column, op, negate, text, items)| {
            let value = if op == Op::In {
                FilterValue::List(items)
            } else {
                FilterValue::Text(text)
            };
            Condition::new(column, op, negate, value).expect("value kind follows the operator")
        })
}

/// Filters tried on every column (`C`) by the no-panic property.
const EVERY_TYPE_FILTERS: [&str; 8] = [
    "C=eq.1",
    "C=lt.2024-01-01 00:00:00+00",
    "C=gte.NaN",
    "C=in.(1,t,a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL)",
    "C=like.%a_",
    "C=imatch.^a",
    "C=is.true",
    "C=not.isdistinct.12:00",
];

/// [`EVERY_TYPE_FILTERS`] on every column, where they compile.
static EVERY_TYPE_COMPILED: std::sync::LazyLock<Vec<CompiledFilter>> =
    std::sync::LazyLock::new(|| {
        let columns = table();
        let compiled: Vec<_> = columns
            .iter()
            .flat_map(|column| EVERY_TYPE_FILTERS.map(|filter| filter.replace('C', &column.name)))
            .filter_map(|filter| Filter::parse(&filter).ok().flatten())
            .filter_map(|filter| filter.compile(&columns).ok())
            .collect();
        assert!(
            compiled.len() >= 50,
            "most filters compile: {}",
            compiled.len()
        );
        compiled
    });

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics(text in any::<String>()) {
        let _ = Filter::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_grammar_like_text(text in r#"[a-z=.,()"\\ ]{0,40}"#) {
        if let Ok(Some(filter)) = Filter::parse(&text) {
            let _ = filter.compile(&table());
        }
    }

    #[test]
    fn evaluation_never_panics_on_any_row_text(value in any::<String>()) {
        for compiled in EVERY_TYPE_COMPILED.iter() {
            let _ = compiled.matches(|_| Some(ColumnValue::Text(&value)));
        }
    }

    #[test]
    fn rendered_filters_parse_back(conditions in proptest::collection::vec(condition(), 1..5)) {
        let filter = Filter::from_conditions(conditions).expect("not empty");
        let rendered = filter.to_string();
        prop_assert_eq!(Filter::parse(&rendered), Ok(Some(filter)), "{}", rendered);
    }

    #[test]
    fn like_agrees_with_the_reference(
        pattern in r"[ab%_\\É]{0,8}",
        text in "[abAé]{0,10}",
        case_insensitive in any::<bool>(),
    ) {
        let compiled = LikePattern::compile(&pattern, case_insensitive);
        match like_reference(&pattern, case_insensitive) {
            None => prop_assert!(compiled.is_err()),
            Some(reference) => {
                let compiled = compiled.expect("reference compiled");
                prop_assert_eq!(compiled.matches(&text), reference.is_match(&text), "{} ~ {}", pattern, text);
            }
        }
    }
}

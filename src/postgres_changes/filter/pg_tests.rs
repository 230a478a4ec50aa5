//! Differential test: compiled filters give the answer Postgres's own operators give, on the same
//! values, for every operator and type the filter knows (a throwaway PostgreSQL from `testkit`).

use super::*;

/// Values of one column type: used as filter values and, as Postgres prints them, as row values.
struct Case {
    type_name: &'static str,
    /// The SQL type, with `collate "C"` for text (this server compares byte-wise).
    sql_type: &'static str,
    values: &'static [&'static str],
    likes: &'static [&'static str],
    regexes: &'static [&'static str],
    lists: &'static [&'static str],
}

const TEXTS: &[&str] = &[
    "", "a", "A", "Z", "abc", "ABC", "ab%", "a_c", "é", "ö", "É", "a b", "milk", "a\nb",
];
const LIKES: &[&str] = &[
    "%", "a%", "%b%", "a_c", "A%", r"ab\%", "_", "%é%", "É%", "", "%%c", "a%b%c", "_b_",
];
const REGEXES: &[&str] = &[
    "^a", "b$", "a.c", "[0-9]+", "A", "(ab|cd)", "^$", "a.b", "É",
];

const CASES: &[Case] = &[
    Case {
        type_name: "int2",
        sql_type: "int2",
        values: &["0", "1", "-1", "32767", "-32768", "42", " 7 "],
        likes: &[],
        regexes: &[],
        lists: &["(1,2)", "(1,NULL)", "()", "( 42 , -1 )"],
    },
    Case {
        type_name: "int4",
        sql_type: "int4",
        values: &[
            "0",
            "1",
            "-1",
            "2147483647",
            "-2147483648",
            "+42",
            "10",
            "9",
        ],
        likes: &[],
        regexes: &[],
        lists: &["(1,2)", "(NULL)", "(9,10,NULL)"],
    },
    Case {
        type_name: "int8",
        sql_type: "int8",
        values: &[
            "0",
            "9223372036854775807",
            "-9223372036854775808",
            "10",
            "9",
        ],
        likes: &[],
        regexes: &[],
        lists: &["(10,9)"],
    },
    Case {
        type_name: "oid",
        sql_type: "oid",
        values: &["0", "1", "4294967295", "-1", "7"],
        likes: &[],
        regexes: &[],
        lists: &["(1,-1)"],
    },
    Case {
        type_name: "float4",
        sql_type: "float4",
        values: &[
            "0", "0.1", "1.5", "-0", "NaN", "Infinity", "3.4e38", "1e-30",
        ],
        likes: &[],
        regexes: &[],
        lists: &["(0.1,NaN)"],
    },
    Case {
        type_name: "float8",
        sql_type: "float8",
        values: &[
            "0",
            "-0",
            "0.1",
            "1.5",
            "1e300",
            "-1e-300",
            "NaN",
            "Infinity",
            "-Infinity",
            "0.30000000000000004",
        ],
        likes: &[],
        regexes: &[],
        lists: &["(0,NaN)", "(1.5,NULL)"],
    },
    Case {
        type_name: "numeric",
        sql_type: "numeric",
        values: &[
            "0",
            "-0",
            "1.10",
            "1.1",
            "1e2",
            "100.000",
            "-2.5",
            "0.0000001",
            "12345678901234567890.1",
            "12345678901234567890.2",
            "NaN",
            "Infinity",
            "-Infinity",
            ".5",
            "-1e-3",
        ],
        likes: &[],
        regexes: &[],
        lists: &["(1.1,100)", "(NaN,-0.001)"],
    },
    Case {
        type_name: "bool",
        sql_type: "bool",
        values: &["t", "f", "true", "no", "1", "off", "YES"],
        likes: &[],
        regexes: &[],
        lists: &["(t)", "(f,NULL)"],
    },
    Case {
        type_name: "text",
        sql_type: "text collate \"C\"",
        values: TEXTS,
        likes: LIKES,
        regexes: REGEXES,
        lists: &["(a,A)", r#"("a b",milk)"#, "(NULL,abc)", "()", r#"("",é)"#],
    },
    Case {
        type_name: "varchar",
        sql_type: "varchar collate \"C\"",
        values: TEXTS,
        likes: LIKES,
        regexes: REGEXES,
        lists: &["(a,A)"],
    },
    Case {
        type_name: "bpchar",
        sql_type: "bpchar collate \"C\"",
        values: &["ab", "ab  ", " ab", "a", "b", ""],
        likes: &["%b", "a%", "ab", "_b", "ab%"],
        regexes: &["b$", "^ab$", " "],
        lists: &["(ab,a)", r#"("ab  ")"#],
    },
    Case {
        type_name: "name",
        sql_type: "name",
        values: &[
            "abc",
            "ABC",
            "a",
            "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn",
        ],
        likes: &["a%", "%C"],
        regexes: &["^a"],
        lists: &["(abc,a)"],
    },
    Case {
        type_name: "citext",
        sql_type: "citext",
        values: &["abc", "ABC", "Abd", "é", "É", "a"],
        likes: &["a%", "AB_", "%É"],
        regexes: &["^A", "b"],
        lists: &["(ABC,x)", "(é)"],
    },
    Case {
        type_name: "uuid",
        sql_type: "uuid",
        values: &[
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a12",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
        ],
        likes: &[],
        regexes: &[],
        lists: &["(00000000-0000-0000-0000-000000000000,a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11)"],
    },
    Case {
        type_name: "date",
        sql_type: "date",
        values: &[
            "2024-01-05",
            "2024-01-06",
            "1970-01-01",
            "0044-03-15 BC",
            "infinity",
            "-infinity",
            "2000-02-29",
            "epoch",
            "2024-1-5",
        ],
        likes: &[],
        regexes: &[],
        lists: &["(2024-01-05,infinity)"],
    },
    Case {
        type_name: "timestamp",
        sql_type: "timestamp",
        values: &[
            "2024-01-31 12:00:00",
            "2024-01-31 12:00:00.5",
            "2024-01-31T12:00:00.000001",
            "infinity",
            "-infinity",
            "2000-02-29 23:59:59",
            "2024-01-31",
            "2024-01-30 24:00:00",
            "0044-03-15 12:00:00 BC",
        ],
        likes: &[],
        regexes: &[],
        lists: &["(2024-01-31,infinity)"],
    },
    Case {
        type_name: "timestamptz",
        sql_type: "timestamptz",
        values: &[
            "2024-01-31 12:00:00+00",
            "2024-01-31 17:30:00+05:30",
            "2024-01-31 06:00:00-06",
            "2024-01-31 12:00:00.25Z",
            "2024-01-31 08:30:00-03:30",
            "1900-01-01 00:00:00+00",
            "infinity",
            "2024-07-01T00:00:00.123456+02",
        ],
        likes: &[],
        regexes: &[],
        lists: &["(2024-01-31 12:00:00Z,infinity)"],
    },
    Case {
        type_name: "time",
        sql_type: "time",
        values: &[
            "00:00",
            "12:30",
            "12:30:00.5",
            "24:00:00",
            "23:59:59.999999",
            "12:30:00",
        ],
        likes: &[],
        regexes: &[],
        lists: &["(12:30,00:00:00)"],
    },
    Case {
        type_name: "jsonb",
        sql_type: "jsonb",
        values: &[
            r#"{"a":1,"b":2}"#,
            r#"{"b":2, "a":1}"#,
            "[1,2]",
            "1",
            "1.0",
            r#""x""#,
            "null",
            "{}",
        ],
        likes: &[],
        regexes: &[],
        lists: &[r#"(1,"[1,2]")"#, r#"("{\"a\":1,\"b\":2}",null)"#],
    },
    Case {
        type_name: "mood",
        sql_type: "mood",
        values: &["sad", "ok", "happy"],
        likes: &[],
        regexes: &[],
        lists: &["(sad,happy)", "(NULL,ok)"],
    },
    Case {
        type_name: "_text",
        sql_type: "text[]",
        values: &["{a,b}", "{}", r#"{"a b",c}"#],
        likes: &[],
        regexes: &[],
        lists: &[],
    },
];

/// The SQL of `op` on row `r` and filter `f` (text columns of the query).
fn sql(op: Op, sql_type: &str, keyword: &str) -> String {
    // Ordering in the C collation; case folding (ilike, imatch) in the database's, C.utf8.
    let element = sql_type.split(" collate").next().unwrap_or(sql_type);
    let sql_type = match op {
        Op::Like | Op::Ilike | Op::Match | Op::Imatch => element,
        _ => sql_type,
    };
    let (r, f) = (format!("(b.r::{sql_type})"), format!("(a.f::{sql_type})"));
    match op {
        Op::Eq => format!("{r} = {f}"),
        Op::Neq => format!("{r} <> {f}"),
        Op::Lt => format!("{r} < {f}"),
        Op::Lte => format!("{r} <= {f}"),
        Op::Gt => format!("{r} > {f}"),
        Op::Gte => format!("{r} >= {f}"),
        Op::In => {
            format!("{r} = any(('{{' || substr(a.f, 2, length(a.f) - 2) || '}}')::{element}[])")
        }
        Op::Like => format!("{r} like {f}"),
        Op::Ilike => format!("{r} ilike {f}"),
        Op::Match => format!("{r} ~ {f}"),
        Op::Imatch => format!("{r} ~* {f}"),
        Op::IsDistinct => format!("{r} is distinct from {f}"),
        Op::Is => format!("{r} is {keyword}"),
    }
}

#[tokio::test]
async fn filters_agree_with_postgres() {
    let db = testkit::fresh_database().await;
    let admin = testkit::connect("postgres").await;
    let c_db = format!("{db}_c");
    admin
        .batch_execute(&format!(
            "create database {c_db} template template0 encoding 'UTF8' locale 'C.utf8'"
        ))
        .await
        .expect("create a C.utf8 database");
    let client = testkit::connect(&c_db).await;
    client
        .batch_execute(
            "set datestyle = 'ISO, MDY'; set timezone = 'America/St_Johns';
             create extension citext; create type mood as enum ('sad', 'ok', 'happy');",
        )
        .await
        .expect("session setup");

    let mut mismatches = Vec::new();
    let mut compared = 0;
    for case in CASES {
        let printed: Vec<Option<String>> = client
            .query(
                &format!(
                    "select (x::{})::text from unnest($1::text[]) with ordinality u(x, n) order by n",
                    case.sql_type
                ),
                &[&case.values],
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.type_name))
            .iter()
            .map(|row| row.get(0))
            .chain([None])
            .collect();
        let columns = [ColumnInfo {
            name: "c".into(),
            type_name: case.type_name.into(),
            selectable: true,
        }];
        for op in Op::ALL {
            let filters: &[&str] = match op {
                Op::In => case.lists,
                Op::Like | Op::Ilike => case.likes,
                Op::Match | Op::Imatch => case.regexes,
                Op::Is => &["null", "true", "false", "unknown"],
                _ => case.values,
            };
            for keyword_group in filters.chunks(if op == Op::Is { 1 } else { usize::MAX }) {
                let mut accepted = Vec::new();
                for &filter in keyword_group {
                    let text = format!(
                        "c={op}.{}",
                        if op == Op::In {
                            filter.to_owned()
                        } else {
                            quote(filter)
                        }
                    );
                    let parsed = Filter::parse(&text)
                        .unwrap_or_else(|e| panic!("{text}: {e}"))
                        .unwrap_or_else(|| panic!("{text}: empty"));
                    let negated = Filter::from_conditions(
                        parsed
                            .conditions()
                            .iter()
                            .map(|c| Condition {
                                negate: true,
                                ..c.clone()
                            })
                            .collect(),
                    )
                    .unwrap_or_else(|| panic!("{text}: empty"));
                    match (parsed.compile(&columns), negated.compile(&columns)) {
                        (Ok(plain), Ok(negated)) => accepted.push((filter, plain, negated)),
                        (
                            Err(
                                FilterError::Unsupported { .. }
                                | FilterError::NeedsText { .. }
                                | FilterError::IsNeedsBoolean { .. },
                            ),
                            _,
                        ) => {}
                        (Err(e), _) | (_, Err(e)) => {
                            mismatches.push(format!("{} {text}: refused: {e}", case.type_name));
                        }
                    }
                }
                if accepted.is_empty() {
                    continue;
                }
                let keyword = keyword_group[0].to_uppercase();
                let query = format!(
                    "select a.n, b.n, {} from unnest($1::text[]) with ordinality a(f, n), \
                     unnest($2::text[]) with ordinality b(r, n)",
                    sql(op, case.sql_type, &keyword)
                );
                let filter_texts: Vec<&str> = accepted.iter().map(|(f, _, _)| *f).collect();
                let rows = match client.query(&query, &[&filter_texts, &printed]).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        mismatches.push(format!(
                            "{} {op} {filter_texts:?}: accepted here, postgres says {e}",
                            case.type_name
                        ));
                        continue;
                    }
                };
                for row in rows {
                    let (i, j): (i64, i64) = (row.get(0), row.get(1));
                    let expected: Option<bool> = row.get(2);
                    let (filter, plain, negated) = &accepted[usize::try_from(i - 1).unwrap_or(0)];
                    let value = printed[usize::try_from(j - 1).unwrap_or(0)].as_deref();
                    let column = |_: &str| Some(value.map_or(ColumnValue::Null, ColumnValue::Text));
                    let (ours, ours_negated) = (plain.matches(column), negated.matches(column));
                    compared += 1;
                    if ours != expected.unwrap_or(false)
                        || ours_negated != expected.map(|b| !b).unwrap_or(false)
                    {
                        mismatches.push(format!(
                            "{} {value:?} {op} {filter:?}: postgres {expected:?}, ours {ours} / not {ours_negated}",
                            case.type_name
                        ));
                    }
                }
            }
        }
    }
    eprintln!("compared {compared} cases with postgres");
    assert!(compared > 3000, "compared {compared}");
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Quotes a filter value so that it survives the grammar unchanged.
fn quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

//! `GET /metrics` (PROTOCOL.md 10.3) on the real binary: 403 without a token signed with
//! `METRICS_JWT_SECRET`, 200 with one; the text is valid Prometheus exposition (checked by a
//! strict parser below), and its series move after a join, a broadcast and a rate-limit hit.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use common::ws::{Ws, recv_json, send_json};
use testkit::{API_SECRET, Node, SELF_HOST, api_token, client_token, fresh_database, sign, vars};

const METRICS_SECRET: &str = "metrics-secret-metrics-secret-metrics-secret";

/// One sample: metric name and its labels (sorted) → value.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// Parses the Prometheus text format strictly: every sample belongs to the family of the
/// `# TYPE` line before it (histogram and summary suffixes allowed), every family has one
/// `# HELP` and one `# TYPE`, names and label names are valid, label values are quoted with
/// only `\\`, `\"` and `\n` escapes, values are floats, and no series appears twice.
fn parse_exposition(text: &str) -> Samples {
    fn valid_name(name: &str, colon: bool) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }
    assert!(text.ends_with('\n'), "the text ends with a newline");
    let mut samples = Samples::new();
    let mut helped = HashSet::new();
    let mut typed: HashSet<String> = HashSet::new();
    let mut family: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name, true), "help name: {line}");
            assert!(helped.insert(name.to_string()), "second HELP: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(parts.next().is_none(), "type line: {line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "type: {line}"
            );
            assert!(typed.insert(name.to_string()), "second TYPE: {line}");
            assert!(helped.contains(name), "HELP before TYPE: {line}");
            family = Some((name.to_string(), kind.to_string()));
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line: {line:?}"
        );
        let (name, rest) = match line.find(['{', ' ']) {
            Some(at) => line.split_at(at),
            None => panic!("sample without value: {line}"),
        };
        assert!(valid_name(name, true), "metric name: {line}");
        let (fam, kind) = family.as_ref().expect("sample after a TYPE line");
        let suffixed = ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s) == Some(fam.as_str()));
        assert!(
            name == fam || (kind == "histogram" || kind == "summary") && suffixed,
            "sample {name} outside its family {fam}"
        );
        if kind == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter names end in _total: {name}"
            );
        }
        let mut labels = Vec::new();
        let mut rest = rest;
        if let Some(body) = rest.strip_prefix('{') {
            let bytes = body.as_bytes();
            let mut i = 0;
            loop {
                if bytes.get(i) == Some(&b'}') {
                    rest = &body[i + 1..];
                    break;
                }
                let eq = body[i..].find('=').expect("label =") + i;
                let label = &body[i..eq];
                assert!(valid_name(label, false), "label name {label:?}: {line}");
                assert_eq!(bytes.get(eq + 1), Some(&b'"'), "quoted value: {line}");
                let mut value = String::new();
                let mut j = eq + 2;
                loop {
                    match bytes.get(j).expect("closing quote") {
                        b'\\' => {
                            value.push(match bytes.get(j + 1) {
                                Some(b'\\') => '\\',
                                Some(b'"') => '"',
                                Some(b'n') => '\n',
                                _ => panic!("bad escape: {line}"),
                            });
                            j += 2;
                        }
                        b'"' => break,
                        _ => {
                            let c = body[j..].chars().next().unwrap();
                            value.push(c);
                            j += c.len_utf8();
                        }
                    }
                }
                labels.push((label.to_string(), value));
                i = j + 1;
                match bytes.get(i) {
                    Some(b',') => i += 1,
                    Some(b'}') => {}
                    _ => panic!("after a label value: {line}"),
                }
            }
        }
        let value_text = rest.strip_prefix(' ').expect("space before the value");
        let mut fields = value_text.split(' ');
        let value = fields.next().unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("value {v:?}: {line}")),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().expect("timestamp");
        }
        let mut names: Vec<&str> = labels.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let total = names.len();
        names.dedup();
        assert_eq!(names.len(), total, "duplicate label: {line}");
        labels.sort();
        assert!(
            samples.insert((name.to_string(), labels), value).is_none(),
            "series twice: {line}"
        );
    }
    samples
}

/// The sum of `name`'s samples whose labels include every pair of `with`.
fn value(samples: &Samples, name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|((n, labels), _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| *v)
        .sum()
}

async fn scrape(addr: SocketAddr, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("http://{addr}/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("metrics request")
}

async fn scrape_ok(addr: SocketAddr, token: &str) -> Samples {
    let r = scrape(addr, Some(token)).await;
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse_exposition(&r.text().await.unwrap())
}

async fn connect(addr: SocketAddr) -> Ws {
    testkit::ws::connect_as(addr, SELF_HOST, &client_token(API_SECRET, 3600), "1.0.0").await
}

async fn join(ws: &mut Ws, topic: &str, join_ref: &str) -> Value {
    let config = json!({"broadcast": {"ack": false, "self": false}, "presence": {"key": "", "enabled": false},
                        "postgres_changes": [], "private": false});
    send_json(
        ws,
        json!({"topic": topic, "event": "phx_join", "payload": {"config": config}, "ref": join_ref, "join_ref": join_ref}),
    )
    .await;
    recv_json(ws).await
}

#[tokio::test]
async fn metrics_need_the_token_and_their_series_follow_joins_broadcasts_and_refusals() {
    let db = fresh_database().await;
    let node = Node::start(vars(
        &db,
        &[
            ("SEED_SELF_HOST", "true"),
            ("METRICS_JWT_SECRET", METRICS_SECRET),
            ("CHANNEL_ERROR_BACKOFF_MS", "10"),
            ("REGION", "test-region"),
        ],
    ))
    .await;
    let addr = node.addr();
    let token = sign(&json!({"role": "metrics"}), METRICS_SECRET);

    // Refused: no token, a token signed with another secret, a malformed header.
    assert_eq!(scrape(addr, None).await.status(), 403);
    assert_eq!(scrape(addr, Some(&api_token())).await.status(), 403);
    assert_eq!(scrape(addr, Some("not-a-jwt")).await.status(), 403);
    let before = scrape_ok(addr, &token).await;
    let node_label = [("node", "test-node"), ("region", "test-region")];
    assert_eq!(value(&before, "realtime_connections", &node_label), 0.0);
    assert!(before.contains_key(&(
        "realtime_messages_out_total".into(),
        vec![
            ("kind".into(), "broadcast".into()),
            ("node".into(), "test-node".into()),
            ("region".into(), "test-region".into()),
        ]
    )));

    // Two sockets join one channel; one broadcasts, the other receives.
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    assert_eq!(
        join(&mut a, "realtime:room", "1").await["payload"]["status"],
        "ok"
    );
    assert_eq!(
        join(&mut b, "realtime:room", "1").await["payload"]["status"],
        "ok"
    );
    let payload = json!({"type": "broadcast", "event": "e", "payload": {"n": 1}});
    send_json(
        &mut a,
        json!({"topic": "realtime:room", "event": "broadcast", "payload": payload, "ref": "2", "join_ref": "1"}),
    )
    .await;
    let got = recv_json(&mut b).await;
    assert_eq!(got["event"], "broadcast", "{got}");

    let after = scrape_ok(addr, &token).await;
    let delta =
        |name: &str, with: &[(&str, &str)]| value(&after, name, with) - value(&before, name, with);
    assert_eq!(delta("realtime_channel_joins_total", &[]), 2.0);
    assert_eq!(value(&after, "realtime_connections", &[]), 2.0);
    assert_eq!(value(&after, "realtime_channels", &[]), 2.0);
    assert_eq!(value(&after, "realtime_rooms", &[]), 1.0);
    assert_eq!(
        delta("realtime_messages_in_total", &[("kind", "phx_join")]),
        2.0
    );
    assert_eq!(
        delta("realtime_messages_in_total", &[("kind", "broadcast")]),
        1.0
    );
    assert!(delta("realtime_messages_in_bytes_total", &[("kind", "broadcast")]) > 50.0);
    assert_eq!(
        delta("realtime_messages_out_total", &[("kind", "broadcast")]),
        1.0
    );
    let out_bytes = delta(
        "realtime_messages_out_bytes_total",
        &[("kind", "broadcast")],
    );
    assert!(out_bytes > 50.0, "{out_bytes}");
    let tenant = [("tenant", SELF_HOST)];
    assert_eq!(value(&after, "realtime_tenant_connections", &tenant), 2.0);
    assert_eq!(value(&after, "realtime_tenant_channels", &tenant), 2.0);
    assert_eq!(delta("realtime_tenant_messages_out_total", &tenant), 1.0);
    assert_eq!(
        delta("realtime_tenant_messages_out_bytes_total", &tenant),
        out_bytes
    );
    assert_eq!(
        value(&after, "realtime_bus_peers", &[]),
        0.0,
        "a node of one"
    );

    // A rate-limit hit: one channel per client, and a second join.
    let limited = reqwest::Client::new()
        .post(format!("http://{addr}/api/tenants"))
        .bearer_auth(api_token())
        .json(&json!({"tenant": {"external_id": SELF_HOST, "max_channels_per_client": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 200);
    let refused = join(&mut a, "realtime:second", "3").await;
    assert_eq!(
        refused["payload"]["response"]["reason"], "ChannelRateLimitReached: Too many channels",
        "{refused}"
    );
    let code = [("code", "ChannelRateLimitReached")];
    let limited = scrape_ok(addr, &token).await;
    let moved = |name: &str| value(&limited, name, &code) - value(&after, name, &code);
    assert_eq!(moved("realtime_rate_limit_hits_total"), 1.0);
    assert_eq!(moved("realtime_errors_total"), 1.0);
    assert_eq!(
        value(&limited, "realtime_channel_joins_total", &[]),
        value(&after, "realtime_channel_joins_total", &[])
    );

    // The region route: this node's region lists it, another region lists nobody.
    let region = |r: &'static str| {
        let token = token.clone();
        async move {
            let resp = reqwest::Client::new()
                .get(format!("http://{addr}/metrics/{r}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap()
        }
    };
    let mine = parse_exposition(&region("test-region").await);
    assert_eq!(value(&mine, "realtime_connections", &node_label), 2.0);
    assert_eq!(region("elsewhere").await, "");

    // Closing the sockets takes their connections and channels out again.
    drop((a, b));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = scrape_ok(addr, &token).await;
        if value(&now, "realtime_tenant_connections", &tenant) == 0.0
            && value(&now, "realtime_channels", &[]) == 0.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sockets still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_strict_parser_refuses_broken_text() {
    let ok = "# HELP a_total A\n# TYPE a_total counter\na_total{x=\"q\\\"\"} 1\n";
    assert_eq!(parse_exposition(ok).len(), 1);
    for broken in [
        "# HELP a_total A\n# TYPE a_total counter\na_total 1\na_total 2\n",
        "# HELP a A\n# TYPE a counter\na 1\n",
        "# HELP a A\n# TYPE a gauge\nb 1\n",
        "# HELP a A\n# TYPE a gauge\na{x=q} 1\n",
        "# HELP a A\n# TYPE a gauge\na one\n",
        "# HELP a A\n# TYPE a gauge\n# TYPE a gauge\na 1\n",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_exposition(broken)).is_err(),
            "accepted: {broken:?}"
        );
    }
}

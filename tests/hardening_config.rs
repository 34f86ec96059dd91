//! Configs from careless or hostile hands, through `sluice validate` and `sluice run`: bombs and
//! deep nesting refused with exit code 2, everything `run` would refuse refused by `validate`
//! with its field and line, references resolved (or refused) wherever they are written, no
//! secret in any log at any level, and outbound URLs checked against the special-purpose
//! address registries.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::kafka::Kafka;
use common::{run, write};

const LIMIT: Duration = Duration::from_secs(120);

/// A config with one generate → stdout flow, `flow` (the part under `- name: f`) and `extra`
/// lines appended to the `connections:` section.
fn config(kafka: &str, connections: &str, flow: &str) -> String {
    format!(
        "kafka:\n{kafka}\nconnections:\n  gen: {{type: generate}}\n  out: {{type: stdout}}\n{connections}\nflows:\n  - name: f\n{flow}\n"
    )
}

const PLAIN_KAFKA: &str = "  bootstrap_servers: 127.0.0.1:1";
const PLAIN_FLOW: &str =
    "    source: {connection: gen, object: o, options: {count: 1}}\n    destination: {connection: out, object: x}";

/// Runs `validate` on `text`; returns (exit code, stderr).
fn validate(text: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "c.yaml", text);
    let done = run(&["validate", &cfg], dir.path(), env, LIMIT);
    (done.code(), done.stderr)
}

fn refused(text: &str, line: usize, path: &str, words: &str) {
    let (code, stderr) = validate(text, &[]);
    assert_eq!(code, Some(2), "expected exit 2 for `{path}`:\n{stderr}");
    assert!(
        stderr.contains(&format!("c.yaml:{line}: {path}: ")) && stderr.contains(words),
        "expected `c.yaml:{line}: {path}: …{words}…` in:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn yaml_bombs_and_deep_nesting_are_refused_quickly_with_exit_2() {
    let started = std::time::Instant::now();
    // 2,000 levels of block nesting (one space each), and 10,000 (50 MB of indentation).
    let deep = |levels: usize| -> String { (0..levels).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect() };
    let (code, stderr) = validate(&format!("{}x:\n{}", config(PLAIN_KAFKA, "", PLAIN_FLOW), deep(2_000)), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("nested deeper than 64 levels"), "{stderr}");
    let (code, stderr) = validate(&format!("{}x:\n{}", config(PLAIN_KAFKA, "", PLAIN_FLOW), deep(10_000)), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("larger than 4 MiB"), "{stderr}");
    // Billion laughs: nine levels of aliases, ten each.
    let mut bomb = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..9 {
        bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", ")));
    }
    let (code, stderr) = validate(&bomb, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("aliases are expanded"), "{stderr}");
    // 10,000 terms in one expression.
    let sql = vec!["id"; 10_000].join(" + ");
    let flow = format!("{PLAIN_FLOW}\n    transform: {{sql: \"SELECT {sql} AS x FROM source\"}}");
    let (code, stderr) = validate(&config(PLAIN_KAFKA, "", &flow), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("nests more than 256 deep"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}

#[test]
fn everything_run_would_refuse_validate_refuses_with_field_and_line() {
    // Line numbers: 1 kafka, 2 its first field, …; the flow starts at line 8 (`- name: f`).
    refused(&config("  bootstrap_servers: h:1\n  partitions: 0", "", PLAIN_FLOW), 3, "kafka.partitions", "nonzero");
    refused(&config("  bootstrap_servers: h:1\n  partitions: -3", "", PLAIN_FLOW), 3, "kafka.partitions", "-3");
    refused(
        &config("  bootstrap_servers: h:1\n  replication_factor: 0", "", PLAIN_FLOW),
        3,
        "kafka.replication_factor",
        "nonzero",
    );
    refused(
        &config(PLAIN_KAFKA, "  bus: {type: kafka, options: {sasl.kerberos.kinit.cmd: sh}}", PLAIN_FLOW),
        6,
        "connections.bus.options.sasl.kerberos.kinit.cmd",
        "runs a command",
    );
    let long = "x".repeat(1000);
    let (code, stderr) =
        validate(&config(PLAIN_KAFKA, "", PLAIN_FLOW).replace("name: f", &format!("name: {long}")), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("flows[0].name: a flow name is at most 234 characters"), "{stderr}");
    for (field, yaml, path) in [
        (
            "memory",
            "    transform: {sql: SELECT id FROM source, memory_limit_mb: 0}",
            "flows[0].transform.memory_limit_mb",
        ),
        ("records", "    batch: {max_records: 0}", "flows[0].batch.max_records"),
        ("bytes", "    batch: {max_bytes: 0}", "flows[0].batch.max_bytes"),
        ("attempts", "    retry: {max_attempts: 0}", "flows[0].retry.max_attempts"),
        ("window", "    errors: {max_errors: 3, window_secs: 0}", "flows[0].errors.window_secs"),
        (
            "timeout",
            "    transform: {sql: SELECT id FROM source, batch_timeout_secs: 0}",
            "flows[0].transform.batch_timeout_secs",
        ),
    ] {
        let (code, stderr) = validate(&config(PLAIN_KAFKA, "", &format!("{PLAIN_FLOW}\n{yaml}")), &[]);
        assert_eq!(code, Some(2), "{field}: {stderr}");
        assert!(stderr.contains(&format!("c.yaml:11: {path}: ")) && stderr.contains("nonzero"), "{field}: {stderr}");
    }
    refused(
        &config(PLAIN_KAFKA, "", &format!("{PLAIN_FLOW}\n    retry: {{initial_backoff_ms: 500, max_backoff_ms: 100}}")),
        11,
        "flows[0].retry.max_backoff_ms",
        "shorter than `initial_backoff_ms`",
    );
    // Connector settings that only the connector checks (the sink's own rules).
    refused(
        &config(
            PLAIN_KAFKA,
            "  hook: {type: http, url: \"https://example.com\"}",
            &PLAIN_FLOW.replace(
                "destination: {connection: out, object: x}",
                "destination: {connection: hook, object: /in, options: {max_rows: 0}}",
            ),
        ),
        10,
        "flows[0].destination",
        "`max_rows` and `max_bytes` must be at least 1",
    );
    refused(
        &config(
            PLAIN_KAFKA,
            "  lake: {type: s3, region: r, access_key_id: abcd, secret_access_key: efgh}",
            &PLAIN_FLOW.replace(
                "destination: {connection: out, object: x}",
                "destination: {connection: lake, object: bucket, options: {part_size_bytes: 1024}}",
            ),
        ),
        10,
        "flows[0].destination",
        "at least 5 MiB",
    );
}

#[test]
fn references_resolve_anywhere_and_unknown_ones_are_errors() {
    let flow =
        PLAIN_FLOW.replace("destination: {connection: out, object: x}", "destination: {connection: hook, object: /in}");
    // A reference inside a longer value is interpolated: the URL is checked as resolved.
    let text = config(
        PLAIN_KAFKA,
        "  hook: {type: http, url: \"http://${env:SLUICE_TEST_HOST}/v1\", headers: {Authorization: \"Bearer ${env:SLUICE_TEST_TOKEN}\"}}",
        &flow,
    );
    let (code, stderr) =
        validate(&text, &[("SLUICE_TEST_HOST", "169.254.169.254"), ("SLUICE_TEST_TOKEN", "tok-123456")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("169.254.169.254 is a loopback, private, link-local or otherwise non-public address"),
        "{stderr}"
    );
    let (code, stderr) =
        validate(&text, &[("SLUICE_TEST_HOST", "hooks.example.com"), ("SLUICE_TEST_TOKEN", "tok-123456")]);
    assert_eq!(code, Some(0), "{stderr}");
    // Unknown kinds and unclosed references are errors with their line, never literals.
    let text = config(PLAIN_KAFKA, "  hook: {type: http, url: \"https://${vault:hooks}/v1\"}", &flow);
    refused(&text, 6, "connections.hook.url", "unknown reference `${vault");
    let text = config(PLAIN_KAFKA, "  hook: {type: http, url: \"https://example.com/${env:NOPE\"}", &flow);
    refused(&text, 6, "connections.hook.url", "without a closing");
    let text =
        config(PLAIN_KAFKA, "  hook: {type: http, url: \"https://example.com/${env:SLUICE_SURELY_UNSET}\"}", &flow);
    refused(&text, 6, "connections.hook.url", "environment variable `SLUICE_SURELY_UNSET` is not set");
}

#[test]
fn every_outbound_url_is_checked_when_validated() {
    let to_hook =
        PLAIN_FLOW.replace("destination: {connection: out, object: x}", "destination: {connection: hook, object: /in}");
    for url in [
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:a9fe:a9fe::1]/",
        "http://198.18.0.1/",
        "http://0x7f.1/",
    ] {
        let text = config(PLAIN_KAFKA, &format!("  hook: {{type: http, url: \"{url}\"}}"), &to_hook);
        let (code, stderr) = validate(&text, &[]);
        assert_eq!(code, Some(2), "{url}: {stderr}");
        assert!(stderr.contains("allow_private_addresses"), "{url}: {stderr}");
    }
    // OAuth token endpoints and schema registries go through the same guard.
    let text = config(
        PLAIN_KAFKA,
        "  hook: {type: http, url: \"https://example.com\", auth: {type: oauth2, token_url: \"http://169.254.169.254/token\", client_id: a, client_secret: b}}",
        &to_hook,
    );
    let (code, stderr) = validate(&text, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("169.254.169.254"), "{stderr}");
    let avro_flow = "    source: {connection: bus, object: t, options: {format: avro}, schema: {id: int64}}\n    destination: {connection: out, object: x}";
    let text =
        config(PLAIN_KAFKA, "  bus: {type: kafka, schema_registry: {url: \"http://169.254.169.254:8081\"}}", avro_flow);
    let (code, stderr) = validate(&text, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("schema_registry.url") && stderr.contains("169.254.169.254"), "{stderr}");
}

fn no_secret_reaches_a_log_at_trace_level(kafka: &mut Kafka) {
    // An s3 flow against a local S3-protocol port that refuses connections, at trace level: the
    // AWS SDK logs its credentials' key id at debug; sluice's log writer hides it.
    let dir = tempfile::tempdir().unwrap();
    let dead = common::free_port();
    let text = format!(
        "kafka: {{{kafka}}}\nconnections:\n  gen: {{type: generate}}\n  lake: {{type: s3, endpoint: \"http://127.0.0.1:{dead}\", allow_private_addresses: true, path_style: true, region: us-east-1, access_key_id: \"${{env:KEY_ID}}\", secret_access_key: \"${{env:KEY_SECRET}}\"}}\nflows:\n  - name: leak\n    source: {{connection: gen, object: o, options: {{count: 5}}}}\n    destination: {{connection: lake, object: bucket}}\n    retry: {{max_attempts: 2, max_elapsed_secs: 5, initial_backoff_ms: 100}}\n",
        kafka = kafka.yaml()
    );
    let cfg = write(dir.path(), "c.yaml", &text);
    // In both log formats: JSON lines carry the span fields, and the redactor sees them whole.
    for format in ["text", "json"] {
        let env = [
            ("KEY_ID", "AKIASLUICECANARY0001"),
            ("KEY_SECRET", "sluice-canary-secret-0001"),
            ("SLUICE_LOG", "trace"),
            ("SLUICE_LOG_FORMAT", format),
        ];
        let done = run(&["run", &cfg], dir.path(), &env, LIMIT);
        let all = format!("{}{}", done.stdout, done.stderr);
        assert!(all.len() > 10_000, "trace logging was on: {} bytes", all.len());
        for (_, secret) in &env[..2] {
            assert!(
                !all.contains(secret),
                "a secret reached the {format} output:\n{}",
                &all[all.find(secret).unwrap().saturating_sub(300)..][..600]
            );
        }
        if format == "json" {
            let objects: Vec<serde_json::Value> = done
                .stderr
                .lines()
                .filter(|l| l.starts_with('{'))
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            assert!(objects.len() > 50, "{} JSON lines", objects.len());
            assert!(objects.iter().all(|o| o["level"].is_string() && o["fields"].is_object()));
            let in_batch = |o: &&serde_json::Value| {
                o["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["flow"] == "leak" && s["stage"] == "sink"))
            };
            assert!(objects.iter().any(|o| in_batch(&o)), "a sink batch's lines carry its span fields");
        }
    }
}

crate::on_both_brokers!(no_secret_reaches_a_log_at_trace_level);

#[test]
fn columns_that_cannot_be_read_from_the_source_are_an_error_at_the_flow_not_a_hang() {
    // A postgres source without `schema:` takes the table's columns when the config is checked;
    // with nothing listening, the flow's line says why and what to do.
    let flow = "    source: {connection: pg, object: public.orders, options: {mode: complete}}\n    destination: {connection: out, object: x}";
    let text = config(PLAIN_KAFKA, "  pg: {type: postgres, host: 127.0.0.1, port: 1, database: d, user: u}", flow);
    let started = std::time::Instant::now();
    refused(&text, 9, "flows[0].source.schema", "the columns could not be read from the source");
    assert!(started.elapsed() < Duration::from_secs(60), "a bounded wait");
    // A source that cannot tell is refused when the config loads, as before.
    let flow = "    source: {connection: pg, object: o}\n    destination: {connection: out, object: x}";
    let file = "  pg: {type: file, path: /tmp}";
    refused(&config(PLAIN_KAFKA, file, flow), 9, "flows[0].source.schema", "needs its columns declared");
}

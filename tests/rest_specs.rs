//! Declarative REST connectors: the two specs shipped in `examples/connectors/` run against
//! loopback servers shaped like the APIs they describe, through a real broker. Each becomes a
//! connection type (`type: ticketing`, `type: issues`) that flows read by object name, with the
//! schema from the spec; the oracle checks every record, then a second run reads only what
//! changed.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::apis::{issue, serve_apis, ticket};
use common::kafka::Kafka;
use common::{read_jsonl, run, write};

const LIMIT: Duration = Duration::from_secs(180);

/// The shipped specs, copied beside the test's config as a user would keep them.
fn specs(dir: &std::path::Path) {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.join("connectors")).unwrap();
    for f in ["ticketing.yaml", "issues.yaml"] {
        std::fs::copy(repo.join("examples/connectors").join(f), dir.join("connectors").join(f)).unwrap();
    }
}

fn two_shipped_specs_read_their_apis_whole_then_incrementally(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    specs(dir.path());
    let apis = serve_apis(650, 260);
    let (url, tickets, listing) = (&apis.url, &apis.tickets, &apis.issues);
    let out = dir.path().join("out");
    let (t_flow, i_flow) = (kafka.name("tickets"), kafka.name("issues"));
    let cfg = write(
        dir.path(),
        "apis.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connector_specs: [connectors/ticketing.yaml, connectors/issues.yaml]
connections:
  helpdesk: {{type: ticketing, url: "{url}/api/v2", token: "${{env:ZD_TOKEN}}", allow_private_addresses: true}}
  gh: {{type: issues, url: "{url}", repo: acme/widgets, token: "${{env:GH_TOKEN}}", allow_private_addresses: true}}
  out: {{type: file, path: {out}}}
flows:
  - name: {t_flow}
    source: {{connection: helpdesk, object: tickets}}
    transform: {{sql: "SELECT id, subject FROM source"}}
    retry: {{initial_backoff_ms: 100}}
    destination: {{connection: out, object: tickets.jsonl}}
  - name: {i_flow}
    source: {{connection: gh, object: issues}}
    transform: {{sql: "SELECT id, number, title, updated_at FROM source"}}
    destination: {{connection: out, object: issues.jsonl}}
"#,
            kafka = kafka.yaml(),
            out = out.display(),
        ),
    );
    let env = [("ZD_TOKEN", "zd-token"), ("GH_TOKEN", "gh-token")];

    // The specs' schemas are the flows' columns: `validate` shows them.
    let v = run(&["validate", &cfg], dir.path(), &env, LIMIT);
    assert_eq!(v.code(), Some(0), "{}", v.stderr);
    assert!(v.stdout.contains("updated_at: Utf8") && v.stdout.contains("subject: Utf8"), "{}", v.stdout);
    // `describe` lists a spec's objects (its API's entities) with their columns.
    let d = run(&["describe", &cfg, "helpdesk"], dir.path(), &env, LIMIT);
    assert_eq!(d.code(), Some(0), "{}", d.stderr);
    assert_eq!(d.stdout, "tickets (3 columns)\n  id: int64\n  subject: string\n  updated_at: int64\n");
    let d = run(&["describe", &cfg, "helpdesk", "users"], dir.path(), &env, LIMIT);
    assert!(d.code() == Some(1) && d.stderr.contains("no object `users` (objects: tickets)"), "{}", d.stderr);
    let t = run(&["connections", "test", &cfg, "gh"], dir.path(), &env, LIMIT);
    assert!(t.stdout.contains("ok    gh (issues)"), "{}\n{}", t.stdout, t.stderr);

    let done = run(&["run", &cfg], dir.path(), &env, LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    assert!(!done.stderr.contains("zd-token") && !done.stderr.contains("gh-token"), "{}", done.stderr);
    let ids = |file: &str| -> Vec<i64> {
        let (rows, torn) = read_jsonl(&out.join(file));
        assert_eq!(torn, 0);
        rows.iter().map(|r| r["id"].as_i64().unwrap()).collect()
    };
    let mut got = ids("tickets.jsonl");
    got.sort_unstable();
    assert_eq!(got, (0..650).collect::<Vec<i64>>(), "every ticket once (the 429 on the way retried)");
    let got = ids("issues.jsonl");
    assert_eq!(got.len(), 260, "each issue once");
    assert_eq!(got.iter().copied().collect::<BTreeSet<i64>>(), (1000..1260).collect::<BTreeSet<i64>>());
    assert!(listing.requests.load(Ordering::SeqCst) >= 3, "per_page 100: three pages, linked");

    // New tickets; two issues updated and one added. The next run reads only those.
    tickets.tickets.lock().unwrap().extend((650..670).map(ticket));
    {
        let mut all = listing.issues.lock().unwrap();
        all[3] = issue(3, 500);
        all[40] = issue(40, 501);
        all.push(issue(260, 502));
    }
    let done = run(&["run", &cfg], dir.path(), &env, LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let mut new = ids("tickets.jsonl")[650..].to_vec();
    new.sort_unstable();
    assert_eq!(new, (650..670).collect::<Vec<i64>>());
    // `since` is inclusive (as GitHub's is): the issue at the stored mark is read again, once.
    let again: BTreeSet<i64> = ids("issues.jsonl")[260..].iter().copied().collect();
    assert!(again.is_superset(&BTreeSet::from([1003, 1040, 1260])), "{again:?}");
    assert!(again.len() <= 4, "only the changes, and at most the one issue at the mark again: {again:?}");
}

crate::on_both_brokers!(two_shipped_specs_read_their_apis_whole_then_incrementally);

#[test]
fn a_spec_and_its_connections_are_checked_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    specs(dir.path());
    write(
        dir.path(),
        "connectors/broken.yaml",
        "name: broken\nparameters: {url: {}}\nbase_url: \"{url}/{nope}\"\nobjects: {a: {path: /a}}\n",
    );
    let cfg = write(
        dir.path(),
        "c.yaml",
        "\
kafka: {bootstrap_servers: 127.0.0.1:1}
connector_specs: [connectors/ticketing.yaml, connectors/broken.yaml]
connections:
  helpdesk: {type: ticketing, url: https://x.example, tokn: abc}
  more: {type: ticketing, url: https://x.example}
  out: {type: stdout}
flows:
  - name: a
    source: {connection: out, object: x}
    destination: {connection: out}
",
    );
    let done = run(&["validate", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(2), "{}", done.stderr);
    for want in [
        "broken.yaml:1: `base_url` uses `{nope}`, which is not a parameter",
        "c.yaml:4: connections.helpdesk.tokn: unknown field `tokn`, expected one of `token`, `url`",
        "c.yaml:5: connections.more: ticketing connection `more`: missing parameter `token`",
    ] {
        assert!(done.stderr.contains(want), "no `{want}` in:\n{}", done.stderr);
    }
}

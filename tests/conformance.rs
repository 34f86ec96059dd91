//! Every registered connector passes the conformance checks of `sluice::conformance`: one test
//! walks the registry (sluice's own connectors and the two shipped REST specs) and fails for a
//! connector that has no fixture here, so a new connector cannot skip them. A fixture is the
//! real service the connector talks to — files, loopback HTTP servers, PostgreSQL, an S3
//! server, the broker — with a way to add changes upstream, to take a destination down for a
//! while (a TCP proxy that resets connections) and to read it back.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::apis::{issue, serve_apis, ticket};
use common::http::{Destination as HttpServer, Mode, Options};
use common::kafka::Kafka;
use common::pg::{Cleanup, pg, table};
use common::proxy::Proxy;
use common::s3::{ACCESS, SECRET, start_s3};
use common::{read_jsonl, write};
use serde_json::Value;
use sluice::conformance::{Destination, Fixture, SinkReport, SourceReport, check_sink, check_source};

/// The REST specs shipped in `examples/connectors/`: connectors too.
const SPECS: [&str; 2] = ["ticketing", "issues"];

fn every_registered_connector_passes_the_conformance_checks(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.path().join("connectors")).unwrap();
    for s in SPECS {
        std::fs::copy(
            repo.join(format!("examples/connectors/{s}.yaml")),
            dir.path().join(format!("connectors/{s}.yaml")),
        )
        .unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut names: Vec<&str> = sluice::registry().names();
    names.extend(SPECS);
    let mut checked = Vec::new();
    for name in names {
        let env = Env { dir: dir.path(), kafka, rt: &rt };
        let report = match name {
            "file" => format!("{:?} / {:?}", file_source(&env), file_sink(&env)),
            "generate" => format!("{:?}", generate_source(&env)),
            "http" => format!("{:?} / {:?}", http_source(&env, None), http_sink(&env)),
            "ticketing" | "issues" => format!("{:?}", http_source(&env, Some(name))),
            "kafka" => format!("{:?} / {:?}", kafka_source(&env), kafka_sink(&env)),
            "postgres" => {
                format!("pull {:?} / cdc {:?} / {:?}", postgres_pull(&env), postgres_cdc(&env), postgres_sink(&env))
            }
            "s3" => format!("{:?}", s3_sink(&env)),
            "stdout" => format!("{:?}", stdout_sink(&env)),
            other => panic!("connector `{other}` has no conformance fixture: add one to tests/conformance.rs"),
        };
        eprintln!("{name}: {report}");
        checked.push(name);
    }
    eprintln!("conformance on the {}: {} connectors checked: {checked:?}", kafka.label(), checked.len());
}

on_both_brokers!(every_registered_connector_passes_the_conformance_checks);

/// Where a fixture writes its config, and the broker.
struct Env<'a> {
    dir: &'a Path,
    kafka: &'a Kafka,
    rt: &'a tokio::runtime::Runtime,
}

impl Env<'_> {
    /// A fixture from connections and flows (YAML mappings' insides, indented two spaces).
    fn fixture(&self, name: &str, connections: &str, flows: &str) -> Fixture {
        let text = format!(
            "kafka: {{{}}}\nconnector_specs: [connectors/ticketing.yaml, connectors/issues.yaml]\nconnections:\n{connections}\nflows:\n{flows}\n",
            self.kafka.yaml()
        );
        let path = write(self.dir, &format!("{name}.yaml"), &text);
        Fixture::load(&sluice::registry(), Path::new(&path)).unwrap_or_else(|v| panic!("{name}: {v}\n{text}"))
    }

    fn out(&self) -> PathBuf {
        self.dir.join("out")
    }
}

/// A flow reading `source` into a file, or writing to `destination` from a file.
fn flow(name: &str, source: &str, destination: &str) -> String {
    format!("  - name: {name}\n    source: {source}\n    destination: {destination}\n")
}

/// Runs `f` on a thread of its own: the checks call back from inside their runtime, and the
/// test helpers (`pg`, `read_topic`) start runtimes of their own.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

fn unwrap<T>(what: &str, r: Result<T, sluice::conformance::Violation>) -> T {
    r.unwrap_or_else(|v| panic!("{what}: {v}"))
}

fn file_source(env: &Env<'_>) -> SourceReport {
    let input = env.dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    let file = input.join("people.jsonl");
    let line = |i: i64| format!("{{\"id\":{i},\"name\":\"p{i}\"}}\n");
    let mut text: String = (1..=20).map(line).collect();
    text.push_str("{this is not json\n");
    std::fs::write(&file, text).unwrap();
    let f = env.fixture(
        "file_source",
        &format!("  files: {{type: file, path: {}}}", env.dir.display()),
        &flow(
            "people",
            "{connection: files, object: in/people.jsonl, options: {key: [id]}, schema: {id: int64, name: string}}",
            "{connection: files, object: out/people.jsonl}",
        ),
    );
    let mut more = || {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all((21..=30).map(line).collect::<String>().as_bytes()).unwrap();
    };
    unwrap("file source", env.rt.block_on(check_source(&f, "people", Some(&mut more))))
}

fn generate_source(env: &Env<'_>) -> SourceReport {
    let f = env.fixture(
        "generate",
        &format!("  gen: {{type: generate}}\n  files: {{type: file, path: {}}}", env.out().display()),
        &flow(
            "gen",
            "{connection: gen, object: orders, options: {count: 40, keys: 10, seed: 7}}",
            "{connection: files, object: gen.jsonl}",
        ),
    );
    unwrap("generate source", env.rt.block_on(check_source(&f, "gen", None)))
}

/// The `http` source with a pagination of its own (`spec: None`), or a REST spec's connection.
fn http_source(env: &Env<'_>, spec: Option<&str>) -> SourceReport {
    let apis = serve_apis(230, 70);
    let (url, tickets, listing) = (&apis.url, &apis.tickets, &apis.issues);
    let files = format!("  files: {{type: file, path: {}}}", env.out().display());
    let (connection, source) = match spec {
        None => (
            format!(
                "  api: {{type: http, url: \"{url}/api/v2\", allow_private_addresses: true, auth: {{type: bearer, token: zd-token}}}}"
            ),
            "{connection: api, object: /incremental/tickets/cursor.json, options: {records: /tickets, key: [id], \
             pagination: {type: cursor, param: cursor, cursor_from: /after_cursor, end_from: /end_of_stream}, \
             incremental: {param: start_time, start: \"1700000000\"}}, schema: {id: int64, subject: string, updated_at: int64}}"
                .to_owned(),
        ),
        Some("ticketing") => (
            format!("  api: {{type: ticketing, url: \"{url}/api/v2\", token: zd-token, allow_private_addresses: true}}"),
            "{connection: api, object: tickets}".to_owned(),
        ),
        Some(_) => (
            format!("  api: {{type: issues, url: \"{url}\", repo: acme/widgets, token: gh-token, allow_private_addresses: true}}"),
            "{connection: api, object: issues}".to_owned(),
        ),
    };
    let name = spec.unwrap_or("http");
    let f = env.fixture(
        &format!("{name}_source"),
        &format!("{connection}\n{files}"),
        &flow("api", &source, "{connection: files, object: api.jsonl}"),
    );
    let mut more = || {
        tickets.tickets.lock().unwrap().extend((230..260).map(ticket));
        let mut all = listing.issues.lock().unwrap();
        all.extend((70..90).map(|i| issue(i, i)));
    };
    unwrap(&format!("{name} source"), env.rt.block_on(check_source(&f, "api", Some(&mut more))))
}

fn kafka_source(env: &Env<'_>) -> SourceReport {
    let topic = env.kafka.name("conformance_in");
    let f = env.fixture(
        "kafka_source",
        &format!("  bus: {{type: kafka}}\n  files: {{type: file, path: {}}}", env.out().display()),
        &flow(
            "bus",
            &format!("{{connection: bus, object: {topic}, options: {{format: json}}, schema: {{id: int64}}}}"),
            "{connection: files, object: bus.jsonl}",
        ),
    );
    unwrap("kafka source", env.rt.block_on(check_source(&f, "bus", None)))
}

/// `(id, name)` rows read back.
type Rows = Vec<(i64, String)>;

/// A destination that can be read back and taken down, each step a closure.
struct Dest {
    refused: Option<i64>,
    down: Option<Box<dyn FnMut(bool)>>,
    read: Box<dyn FnMut() -> Option<Rows>>,
}

impl Destination for Dest {
    fn refused_id(&self) -> Option<i64> {
        self.refused
    }

    fn break_down(&mut self) -> bool {
        self.down.as_mut().map(|d| d(true)).is_some()
    }

    fn recover(&mut self) {
        if let Some(d) = self.down.as_mut() {
            d(false);
        }
    }

    fn delivered(&mut self) -> Option<Vec<(i64, String)>> {
        (self.read)()
    }
}

/// `(id, name)` of JSON rows.
fn id_names(rows: impl IntoIterator<Item = Value>) -> Vec<(i64, String)> {
    rows.into_iter().map(|r| (r["id"].as_i64().unwrap(), r["name"].as_str().unwrap_or_default().to_owned())).collect()
}

/// The flow a sink check builds its sink from (its source is never read).
fn sink_flow(destination: &str) -> String {
    flow("sink", "{connection: gen, object: orders, options: {count: 1}}", destination)
}

fn file_sink(env: &Env<'_>) -> SinkReport {
    let f = env.fixture(
        "file_sink",
        &format!("  gen: {{type: generate}}\n  files: {{type: file, path: {}}}", env.out().display()),
        &sink_flow("{connection: files, object: sink.jsonl}"),
    );
    let path = env.out().join("sink.jsonl");
    // A local write has no transient failure a test can cause without mounting file systems;
    // the file sink refuses no row.
    let mut dest = Dest { refused: None, down: None, read: Box::new(move || Some(id_names(read_jsonl(&path).0))) };
    unwrap("file sink", env.rt.block_on(check_sink(&f, "sink", &mut dest)))
}

fn stdout_sink(env: &Env<'_>) -> SinkReport {
    let f = env.fixture(
        "stdout_sink",
        "  gen: {type: generate}\n  screen: {type: stdout}",
        &sink_flow("{connection: screen}"),
    );
    // What reaches the test process's standard output cannot be read back from inside it
    // (tests/cli.rs reads a flow's); nothing is refused and nothing fails transiently.
    let mut dest = Dest { refused: None, down: None, read: Box::new(|| None) };
    unwrap("stdout sink", env.rt.block_on(check_sink(&f, "sink", &mut dest)))
}

fn http_sink(env: &Env<'_>) -> SinkReport {
    let refuse: common::http::RejectRule = |row| (row["id"] == 7).then(|| "id 7 is refused".to_owned());
    let server = Arc::new(HttpServer::start(Options { reject: Some(refuse), ..Options::default() }));
    let f = env.fixture(
        "http_sink",
        &format!(
            "  gen: {{type: generate}}\n  api: {{type: http, url: \"{}\", allow_private_addresses: true}}",
            server.url
        ),
        &sink_flow("{connection: api, object: /rows}"),
    );
    let (a, b) = (server.clone(), server.clone());
    let mut dest = Dest {
        refused: Some(7),
        down: Some(Box::new(move |down| a.set_mode(if down { Mode::Reset } else { Mode::Healthy }))),
        read: Box::new(move || Some(id_names(b.rows()))),
    };
    unwrap("http sink", env.rt.block_on(check_sink(&f, "sink", &mut dest)))
}

fn kafka_sink(env: &Env<'_>) -> SinkReport {
    let topic = env.kafka.name("conformance_out");
    let f = env.fixture(
        "kafka_sink",
        "  gen: {type: generate}\n  bus: {type: kafka}",
        &sink_flow(&format!("{{connection: bus, object: {topic}}}")),
    );
    let addr = env.kafka.addr().to_owned();
    // The producer retries a broker's transient failures itself (within `message.timeout.ms`);
    // broker outages are the fault tests' (tests/faults.rs, tests/cluster_faults.rs).
    let mut dest = Dest {
        refused: None,
        down: None,
        read: Box::new(move || {
            let messages = off_runtime(|| common::read_topic(&addr, &topic));
            Some(id_names(messages.iter().map(|m| serde_json::from_slice(&m.payload).unwrap())))
        }),
    };
    unwrap("kafka sink", env.rt.block_on(check_sink(&f, "sink", &mut dest)))
}

const PG: &str = "type: postgres, host: 127.0.0.1, database: postgres, user: postgres";

fn postgres_pull(env: &Env<'_>) -> SourceReport {
    let t = table("conf_pull");
    let _cleanup = Cleanup { slots: vec![], publications: vec![], tables: vec![t.clone()] };
    pg(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, name text); INSERT INTO {t} SELECT i, 'p' || i FROM generate_series(1, 25) i"
    ));
    let f = env.fixture(
        "postgres_pull",
        &format!("  wh: {{{PG}, port: 5432}}\n  files: {{type: file, path: {}}}", env.out().display()),
        &flow(
            "pull",
            &format!("{{connection: wh, object: public.{t}, options: {{mode: incremental, cursor: id, key: [id], first_execution_from: \"0\"}}, schema: {{id: int64, name: string}}}}"),
            "{connection: files, object: pull.jsonl}",
        ),
    );
    let mut more = || {
        off_runtime(|| pg(&format!("INSERT INTO {t} SELECT i, 'p' || i FROM generate_series(26, 35) i")));
    };
    unwrap("postgres pull source", env.rt.block_on(check_source(&f, "pull", Some(&mut more))))
}

fn postgres_cdc(env: &Env<'_>) -> SourceReport {
    let t = table("conf_cdc");
    let (slot, publication) = (format!("s_{t}"), format!("p_{t}"));
    let _cleanup =
        Cleanup { slots: vec![slot.clone()], publications: vec![publication.clone()], tables: vec![t.clone()] };
    pg(&format!("CREATE TABLE {t} (id bigint PRIMARY KEY, name text)"));
    // The stream, not the snapshot: a snapshot restarted is read again as it is then (the CDC
    // tests check snapshots and their restarts).
    let f = env.fixture(
        "postgres_cdc",
        &format!("  wh: {{{PG}, port: 5432}}\n  files: {{type: file, path: {}}}", env.out().display()),
        &flow(
            "cdc",
            &format!("{{connection: wh, object: public.{t}, options: {{mode: cdc, slot: {slot}, publication: {publication}, snapshot: false}}, schema: {{id: int64, name: string}}}}"),
            "{connection: files, object: cdc.jsonl}",
        ),
    );
    let mut more = || {
        off_runtime(|| {
            for i in 0..6 {
                pg(&format!(
                    "BEGIN; INSERT INTO {t} SELECT g, 'p' || g FROM generate_series({a}, {b}) g; UPDATE {t} SET name = 'changed' WHERE id = {a}; COMMIT",
                    a = i * 5 + 1,
                    b = i * 5 + 5
                ));
            }
            pg(&format!("DELETE FROM {t} WHERE id = 3; DELETE FROM {t} WHERE id = 8"));
        });
    };
    unwrap("postgres cdc source", env.rt.block_on(check_source(&f, "cdc", Some(&mut more))))
}

fn postgres_sink(env: &Env<'_>) -> SinkReport {
    let t = table("conf_sink");
    let _cleanup = Cleanup { slots: vec![], publications: vec![], tables: vec![t.clone()] };
    pg(&format!("CREATE TABLE {t} (id bigint PRIMARY KEY, name text CHECK (name <> 'row-7'))"));
    let proxy = Arc::new(Proxy::start(SocketAddr::from(([127, 0, 0, 1], 5432))));
    let f = env.fixture(
        "postgres_sink",
        &format!("  gen: {{type: generate}}\n  wh: {{{PG}, port: {}}}", proxy.port),
        &sink_flow(&format!("{{connection: wh, object: public.{t}, options: {{mode: upsert, key: [id]}}}}")),
    );
    let p = proxy.clone();
    let mut dest = Dest {
        refused: Some(7),
        down: Some(Box::new(move |down| p.set_down(down))),
        read: Box::new(move || {
            Some(
                off_runtime(|| pg(&format!("SELECT id, name FROM {t}")))
                    .into_iter()
                    .map(|r| (r[0].as_deref().unwrap().parse().unwrap(), r[1].clone().unwrap_or_default()))
                    .collect(),
            )
        }),
    };
    unwrap("postgres sink", env.rt.block_on(check_sink(&f, "sink", &mut dest)))
}

fn s3_sink(env: &Env<'_>) -> SinkReport {
    let s3 = start_s3();
    std::fs::create_dir_all(s3.dir.path().join("conformance")).unwrap();
    let proxy = Arc::new(Proxy::start(SocketAddr::from(([127, 0, 0, 1], s3.port))));
    let f = env.fixture(
        "s3_sink",
        &format!(
            "  gen: {{type: generate}}\n  lake: {{type: s3, endpoint: \"http://127.0.0.1:{}\", allow_private_addresses: true, path_style: true, access_key_id: {ACCESS}, secret_access_key: {SECRET}}}",
            proxy.port
        ),
        &sink_flow("{connection: lake, object: conformance, options: {format: jsonl}}"),
    );
    let p = proxy.clone();
    let bucket = s3.dir.path().join("conformance");
    // An object store refuses no row: a batch is one object.
    let mut dest = Dest {
        refused: None,
        down: Some(Box::new(move |down| p.set_down(down))),
        read: Box::new(move || Some(id_names(objects(&bucket)))),
    };
    unwrap("s3 sink", env.rt.block_on(check_sink(&f, "sink", &mut dest)))
}

/// The JSON lines of every object in the bucket folder `dir` (s3s-fs keeps an object as a file
/// under its bucket's folder, and its own metadata in the root).
fn objects(dir: &Path) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                rows.extend(text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()));
            }
        }
    }
    rows
}

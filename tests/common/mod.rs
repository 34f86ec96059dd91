//! The end-to-end test harness: real processes, real sockets, nothing mocked.
//!
//! - [`Broker`] runs `sluice broker` as a child process on a loopback port, with its log in a
//!   temporary directory, and can SIGKILL and restart it on the same data.
//! - [`Sluice`] runs the `sluice` binary with its output captured to files (pipes could fill up
//!   and stall a long-running child), and can SIGKILL it, SIGTERM it or wait for it — always
//!   within a bound, so a hung child fails the test instead of hanging CI.
//! - [`read_topic`] and [`produce`] talk to the broker with rdkafka, the same client users run.
//! - [`read_jsonl`] reads a file sink's output for an oracle.
//! - [`http::Destination`] is an HTTP destination on loopback that can fail on demand.
//!
//! Every child is killed when its handle drops, including when a test panics.

#![allow(dead_code)]

pub mod apis;
pub mod http;
pub mod kafka;
pub mod oracle;
pub mod pg;
pub mod proxy;
pub mod s3;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tempfile::TempDir;

/// The binary under test, built by cargo for this test run.
pub fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// A loopback port nobody listens on, reserved for this test process until it exits.
///
/// Why not bind port 0 and take what the kernel gives: that port comes from the ephemeral
/// range, and once the test's server stops (a Kafka node killed and restarted, a sluice API
/// restarted on the same address) any outgoing connection on the machine may be handed it as
/// its local port, and the restart fails with "address already in use" (CI at 551eee4: a
/// restarted Kafka controller). So ports come from below the ephemeral range, where the kernel
/// never picks, and each is reserved with a lock file that concurrent test processes (nextest
/// runs each test in its own) respect; the lock goes with the process, even on SIGKILL.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

    let (low, high) = reservable_ports();
    let dir = std::env::temp_dir().join("sluice-test-ports");
    std::fs::create_dir_all(&dir).expect("creating the port reservation directory");
    let span = u32::from(high - low);
    let start = (std::process::id() as u64).wrapping_mul(7919).wrapping_add(now_nanos() as u64 / 1000);
    for step in 0..span {
        let port = low + ((start + u64::from(step)) % u64::from(span)) as u16;
        let Ok(file) = File::options().create(true).truncate(false).write(true).open(dir.join(port.to_string())) else {
            continue;
        };
        if file.try_lock().is_err() {
            continue;
        }
        // Someone outside the test harness (or a child of an earlier run) may listen there.
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
        return port;
    }
    panic!("no free loopback port in {low}..{high} (every one is listening or reserved)");
}

/// The ports `free_port` hands out: below the kernel's ephemeral range.
fn reservable_ports() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|n| n.parse::<u16>().ok()))
        .unwrap_or(32768);
    let high = ephemeral_low.min(32768);
    assert!(high > 12000, "the ephemeral port range starts at {high}: too low to leave test ports below it");
    (10000, high)
}

/// Writes `text` to `dir/name` and returns the path as text (for command lines).
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing test file");
    p.display().to_string()
}

/// Polls `cond` every 100 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `sluice broker` child process with its data in a temporary directory.
pub struct Broker {
    child: Option<Child>,
    /// `127.0.0.1:port`, for `bootstrap.servers`.
    pub addr: String,
    dir: TempDir,
    /// Its data directory: `data` in `dir`, or one the test chose.
    data: PathBuf,
}

impl Broker {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().expect("creating broker directory");
        let data = dir.path().join("data");
        Broker::start_on(dir, data)
    }

    fn start_on(dir: TempDir, data: PathBuf) -> Broker {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut b = Broker { child: None, addr, dir, data };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let log = File::create(self.dir.path().join(format!("broker-{}.log", now_nanos()))).expect("broker log");
        let child = Command::new(sluice_bin())
            .args(["broker", "--data-dir"])
            .arg(&self.data)
            .args(["--listen", &self.addr])
            // The group coordinator's own notes (members expired, generations formed) in its
            // log, for a failing test to show.
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or_else(|_| "warn,sluice=info,tansu_broker=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log"))
            .stderr(log)
            .spawn()
            .expect("spawning sluice broker");
        self.child = Some(child);
        let addr = self.addr.clone();
        assert!(
            wait_until(Duration::from_secs(30), || TcpStream::connect(&addr).is_ok()),
            "sluice broker did not listen on {addr} within 30 s"
        );
    }

    /// SIGKILLs the broker: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last `bytes` of each of the broker's logs (one per start, oldest first), for a
    /// failing test's message.
    #[allow(dead_code)]
    pub fn log_tails(&self, bytes: usize) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("broker-")));
        logs.sort();
        let mut out = String::new();
        for p in logs {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail = &text[text.len().saturating_sub(bytes)..];
            let tail = tail.get(tail.find('\n').map_or(0, |i| i + 1)..).unwrap_or(tail);
            out.push_str(&format!("--- {} (last {} bytes) ---\n{tail}\n", p.display(), bytes));
        }
        out
    }

    /// Starts the broker again on the same port and data.
    pub fn restart(&mut self) {
        self.kill9();
        // The old socket may linger for a moment; the new process binds with SO_REUSEADDR
        // semantics of tokio's listener, so retry briefly if it raced.
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn now_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// What a finished `sluice` process left.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl Finished {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// A running `sluice` process.
pub struct Sluice {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

/// Starts `sluice ARGS…` in `cwd` with extra environment variables.
pub fn spawn(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Sluice {
    let stamp = now_nanos();
    let out = cwd.join(format!(".sluice-test-{stamp}.out"));
    let err = cwd.join(format!(".sluice-test-{stamp}.err"));
    let mut cmd = Command::new(sluice_bin());
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawning sluice");
    Sluice { child: Some(child), out, err }
}

/// Runs `sluice ARGS…` to its end, failing the test if it takes longer than `limit`.
pub fn run(args: &[&str], cwd: &Path, env: &[(&str, &str)], limit: Duration) -> Finished {
    spawn(args, cwd, env).wait(limit)
}

impl Sluice {
    /// The process id.
    pub fn pid(&self) -> Pid {
        // invariant: the child is present until wait or kill take it.
        Pid::from_raw(self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0))
    }

    /// What it printed on stderr so far.
    pub fn stderr_so_far(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for the process to end; SIGKILLs it and fails the test after `limit`.
    pub fn wait(mut self, limit: Duration) -> Finished {
        let mut child = self.child.take().expect("process already waited for");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = child.try_wait().expect("waiting for sluice") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sluice did not finish within {limit:?}\nstderr:\n{}",
                    std::fs::read_to_string(&self.err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = std::fs::read_to_string(&self.out).unwrap_or_default();
        // A run's summary lines carry its throughput; shown with `--no-capture`, they are the
        // per-connector figures of a test run.
        for line in stdout.lines().filter(|l| l.starts_with("flow ") && l.ends_with("records/s)")) {
            eprintln!("RUN {line}");
        }
        Finished { status, stdout, stderr: std::fs::read_to_string(&self.err).unwrap_or_default() }
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill9(mut self) -> Finished {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.wait(Duration::from_secs(10))
    }

    /// Sends SIGTERM and waits up to `limit` for a clean exit.
    pub fn terminate(self, limit: Duration) -> Finished {
        let _ = kill(self.pid(), Signal::SIGTERM);
        self.wait(limit)
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The JSON lines of a file sink's output. A torn last line (a write cut by SIGKILL) is counted
/// in the second value, not parsed.
pub fn read_jsonl(path: &Path) -> (Vec<Value>, usize) {
    let Ok(f) = File::open(path) else { return (Vec::new(), 0) };
    let mut rows = Vec::new();
    let mut torn = 0;
    for line in BufReader::new(f).lines() {
        let Ok(line) = line else {
            torn += 1;
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(v) => rows.push(v),
            Err(_) => torn += 1,
        }
    }
    (rows, torn)
}

/// How many times each value of integer field `field` occurs in `rows`.
pub fn counts_of(rows: &[Value], field: &str) -> HashMap<i64, usize> {
    let mut m = HashMap::new();
    for r in rows {
        let v = r.get(field).and_then(Value::as_i64).unwrap_or_else(|| panic!("row without integer `{field}`: {r}"));
        *m.entry(v).or_insert(0) += 1;
    }
    m
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct Msg {
    /// The key, as text.
    pub key: Option<String>,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// Header name to value, as text.
    pub headers: HashMap<String, String>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// Reads every committed message of `topic` (`read_committed`, as sluice's own consumers) from
/// the beginning up to its current end: each partition's end-of-partition event, since the
/// last offsets of a transactionally written topic are markers no consumer is given.
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<Msg> {
    let limit = Duration::from_secs(20);
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", format!("sluice-test-reader-{}", now_nanos()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .expect("creating test consumer");
    let md = consumer.fetch_metadata(Some(topic), limit).expect("fetching topic metadata");
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            // A partition between leaders (a loaded cluster, a topic just made) answers
            // "not leader" for a moment: ask again for a while.
            let deadline = Instant::now() + limit;
            let (low, high) = loop {
                match consumer.fetch_watermarks(topic, p.id(), limit) {
                    Ok(w) => break w,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("fetching watermarks of {topic}[{}]: {e}; again", p.id());
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("fetching watermarks of {topic}[{}]: {e}", p.id()),
                }
            };
            if high > low {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning).expect("assigning partition");
                ends.insert(p.id(), high);
            }
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&tpl).expect("assigning partitions");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} did not reach its end within 60 s");
        let m = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ends.remove(&p);
                continue;
            }
            Some(m) => m.expect("consuming test topic"),
        };
        let mut headers = HashMap::new();
        if let Some(h) = m.headers() {
            for i in 0..h.count() {
                let hd = h.get(i);
                headers.insert(hd.key.to_owned(), String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned());
            }
        }
        out.push(Msg {
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
            partition: m.partition(),
            offset: m.offset(),
        });
        if ends.get(&m.partition()).is_some_and(|h| m.offset() + 1 >= *h) {
            ends.remove(&m.partition());
        }
    }
    out
}

/// Creates `topic` with `partitions` partitions (if missing) and produces `(key, payload)`
/// messages to it, waiting for every acknowledgement.
pub fn produce(bootstrap: &str, topic: &str, partitions: i32, messages: &[(Option<String>, Vec<u8>)]) {
    produce_replicated(bootstrap, topic, partitions, 1, messages);
}

/// [`produce`] to a topic created with `replication` copies (-1: the cluster's default, and a
/// topic limit of 16 MiB per record, as another client's topic may have). Fails if any message
/// is not acknowledged: a test's input must be whole.
pub fn produce_replicated(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    messages: &[(Option<String>, Vec<u8>)],
) {
    produce_with(bootstrap, topic, partitions, replication, &[], messages);
}

/// Creates `topic` if it is missing: `partitions` partitions of `replication` copies (-1: the
/// cluster's default, with a topic limit of 16 MiB per record).
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32, replication: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let rt = tokio::runtime::Runtime::new().expect("test runtime");
    rt.block_on(async {
        let admin: AdminClient<_> = client(bootstrap).create().expect("creating test admin client");
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        if replication == -1 {
            new = new.set("max.message.bytes", "16777216");
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for r in admin.create_topics([&new], &opts).await.expect("creating test topic") {
            match r {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => panic!("creating test topic {t}: {e}"),
            }
        }
    });
}

/// [`produce_replicated`] by a producer with `settings` on top of the test producer's own
/// (e.g. `compression.type`, `linger.ms`): another client's way of writing a topic.
pub fn produce_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    settings: &[(&str, &str)],
    messages: &[(Option<String>, Vec<u8>)],
) {
    use rdkafka::producer::FutureProducer;
    create_topic(bootstrap, topic, partitions, replication);
    let rt = tokio::runtime::Runtime::new().expect("test runtime");
    rt.block_on(async {
        let mut producer = client(bootstrap);
        producer.set("enable.idempotence", "true").set("acks", "all").set("message.max.bytes", "33554432");
        for (k, v) in settings {
            producer.set(*k, *v);
        }
        let producer: FutureProducer = producer.create().expect("creating test producer");
        send_all(&producer, topic, messages).await;
    });
}

/// Sends `(key, payload)` messages to `topic` (waiting while the producer's queue is full) and
/// waits for every acknowledgement; fails on the first message not acknowledged.
pub async fn send_all(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    messages: &[(Option<String>, Vec<u8>)],
) {
    use rdkafka::producer::FutureRecord;
    let mut pending = Vec::with_capacity(messages.len());
    for (k, p) in messages {
        let mut rec = FutureRecord::<String, Vec<u8>>::to(topic).payload(p);
        if let Some(k) = k {
            rec = rec.key(k);
        }
        loop {
            match producer.send_result(rec) {
                Ok(f) => break pending.push(f),
                Err((_, back)) => {
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    for (i, f) in pending.into_iter().enumerate() {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => panic!("producing test message {i} to {topic}: {e}"),
            Err(_) => panic!("producing test message {i} to {topic}: the producer went away"),
        }
    }
}

/// The Python that `scripts/test` sets up (a venv with pyarrow and prometheus-client), after
/// checking it can import `module`; a test that reads with it fails saying so otherwise.
/// An HTTP request through Python's own client (an independent reader of what sluice serves),
/// with `token` as bearer when given: (status, body). A POST sends an empty body.
pub fn http_request(method: &str, url: &str, token: Option<&str>) -> (u16, String) {
    let script = "import sys, urllib.request, urllib.error\n\
req = urllib.request.Request(sys.argv[2], method=sys.argv[1], data=b'' if sys.argv[1] == 'POST' else None)\n\
if len(sys.argv) > 3: req.add_header('Authorization', 'Bearer ' + sys.argv[3])\n\
try:\n    r = urllib.request.urlopen(req, timeout=60); print(r.status); print(r.read().decode())\n\
except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n";
    let mut args = vec!["-c", script, method, url];
    args.extend(token);
    let out = std::process::Command::new(python_with("json")).args(&args).output().expect("running Python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

pub fn python_with(module: &str) -> String {
    let py = std::env::var("SLUICE_TEST_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/sluice-py/bin/python")
    });
    let ok =
        std::process::Command::new(&py).args(["-c", &format!("import {module}")]).status().is_ok_and(|s| s.success());
    assert!(ok, "this test reads with Python's {module} from {py}; scripts/test installs it (in a venv)");
    py
}

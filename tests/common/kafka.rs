//! Apache Kafka for the tests.
//!
//! - [`Kafka`] is what a broker test runs against, and [`on_both_brokers!`] runs one test body
//!   twice: against an embedded broker of its own (a `sluice broker` child) and against the
//!   three-node Apache Kafka cluster the whole run shares (`SLUICE_TEST_KAFKA`, started by
//!   `scripts/test`). On the shared cluster every test names its topics and flows uniquely
//!   ([`Kafka::name`]), since the cluster outlives the test.
//! - [`KafkaCluster`] is a private three-node cluster (KRaft, each node controller and broker,
//!   replication factor 3, `min.insync.replicas` 2) for the fault tests, which stop, kill, pause
//!   and restart single nodes. Its jars are the ones `scripts/test` downloads
//!   (`SLUICE_TEST_KAFKA_LIBS`).
//!
//! A test that needs Kafka and cannot have it fails and says what is missing; none skips.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tempfile::TempDir;

use super::{Broker, free_port, now_nanos, wait_until};

/// What a broker test runs against.
pub enum Kafka {
    /// An embedded broker (`sluice broker`) of the test's own.
    Embedded(Broker),
    /// The Apache Kafka cluster the run shares.
    Cluster {
        /// Its bootstrap list.
        bootstrap: String,
        /// What makes this test's names unique on it.
        tag: String,
    },
}

/// The shared cluster's bootstrap list, or a failure saying how to get one.
fn shared_cluster() -> String {
    std::env::var("SLUICE_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "this test runs against Apache Kafka: run it through scripts/test, which downloads Kafka and \
             starts a three-node cluster, or set SLUICE_TEST_KAFKA to a running cluster's bootstrap list"
        )
    })
}

impl Kafka {
    /// An embedded broker of the test's own.
    pub fn embedded() -> Kafka {
        Kafka::Embedded(Broker::start())
    }

    /// The shared Apache Kafka cluster.
    pub fn cluster() -> Kafka {
        Kafka::Cluster {
            bootstrap: shared_cluster(),
            tag: format!("{}_{}", std::process::id(), now_nanos() % 1_000_000),
        }
    }

    /// `bootstrap.servers` for it.
    pub fn addr(&self) -> &str {
        match self {
            Kafka::Embedded(b) => &b.addr,
            Kafka::Cluster { bootstrap, .. } => bootstrap,
        }
    }

    /// `base`, made unique on a shared cluster (a topic the test creates itself).
    pub fn name(&self, base: &str) -> String {
        match self {
            Kafka::Embedded(_) => base.to_owned(),
            Kafka::Cluster { tag, .. } => format!("{base}_{tag}"),
        }
    }

    /// The `kafka.namespace` the test's configs set: sluice's default on an embedded broker,
    /// one of the test's own on the shared cluster, so its flows' topics and groups are its own.
    pub fn ns(&self) -> String {
        match self {
            Kafka::Embedded(_) => "sluice".to_owned(),
            Kafka::Cluster { tag, .. } => format!("t{tag}"),
        }
    }

    /// One of sluice's topics in the test's namespace (`exact.changes`, `positions`).
    pub fn topic(&self, rest: &str) -> String {
        format!("{}.{rest}", self.ns())
    }

    /// The inside of a config's `kafka:` mapping for it (`kafka: {{{k}}}`): its bootstrap
    /// list and the test's namespace; for the embedded broker, which cannot commit
    /// transactions, `transactions: false` as its users would write.
    pub fn yaml(&self) -> String {
        match self {
            Kafka::Embedded(_) => {
                format!("bootstrap_servers: \"{}\", namespace: {}, transactions: false", self.addr(), self.ns())
            }
            Kafka::Cluster { .. } => format!("bootstrap_servers: \"{}\", namespace: {}", self.addr(), self.ns()),
        }
    }

    /// Which broker this is, for messages.
    pub fn label(&self) -> &'static str {
        match self {
            Kafka::Embedded(_) => "embedded broker",
            Kafka::Cluster { .. } => "Apache Kafka cluster",
        }
    }

    /// Whether it is the Apache Kafka cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Kafka::Cluster { .. })
    }

    /// The embedded broker, for the tests that kill and restart it.
    pub fn embedded_broker(&mut self) -> Option<&mut Broker> {
        match self {
            Kafka::Embedded(b) => Some(b),
            Kafka::Cluster { .. } => None,
        }
    }

    /// Creates `topic` (with the cluster's replication on the cluster) and produces to it.
    pub fn produce(&self, topic: &str, partitions: i32, messages: &[(Option<String>, Vec<u8>)]) {
        let replication = if self.is_cluster() { -1 } else { 1 };
        super::produce_replicated(self.addr(), topic, partitions, replication, messages);
    }

    /// [`Kafka::produce`] by a producer with `settings` of its own (another client's way of
    /// writing: compression, batching).
    pub fn produce_with(
        &self,
        topic: &str,
        partitions: i32,
        settings: &[(&str, &str)],
        messages: &[(Option<String>, Vec<u8>)],
    ) {
        let replication = if self.is_cluster() { -1 } else { 1 };
        super::produce_with(self.addr(), topic, partitions, replication, settings, messages);
    }

    /// Every message of `topic`, from its start to its current end.
    pub fn read_topic(&self, topic: &str) -> Vec<super::Msg> {
        super::read_topic(self.addr(), topic)
    }
}

/// Runs each named test function (`fn NAME(kafka: &mut Kafka)`) against both brokers: as the
/// tests `NAME::embedded` and `NAME::cluster`.
#[macro_export]
macro_rules! on_both_brokers {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn embedded() {
                    super::$name(&mut $crate::common::kafka::Kafka::embedded())
                }

                #[test]
                fn cluster() {
                    super::$name(&mut $crate::common::kafka::Kafka::cluster())
                }
            }
        )+
    };
}

/// The jars of Apache Kafka, or a failure saying how to get them.
pub fn kafka_libs() -> PathBuf {
    let libs = std::env::var_os("SLUICE_TEST_KAFKA_LIBS").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "this test starts Apache Kafka brokers: run it through scripts/test, which downloads Kafka from Maven \
             Central, or set SLUICE_TEST_KAFKA_LIBS to a directory of its jars"
        )
    });
    assert!(libs.is_dir(), "SLUICE_TEST_KAFKA_LIBS={} is not a directory", libs.display());
    libs
}

/// One node of a [`KafkaCluster`].
struct Node {
    id: u32,
    port: u16,
    props: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A private three-node Apache Kafka cluster; stops when dropped.
pub struct KafkaCluster {
    dir: TempDir,
    libs: PathBuf,
    nodes: Vec<Node>,
    /// Its bootstrap list.
    pub bootstrap: String,
}

impl KafkaCluster {
    /// Formats and starts three nodes on free loopback ports; returns once each accepts
    /// connections and the cluster answers metadata requests.
    pub fn start() -> KafkaCluster {
        let libs = kafka_libs();
        let dir = tempfile::tempdir().expect("creating the cluster's directory");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let voters: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1)).collect();
        let cluster_id = java(&libs).args(["kafka.tools.StorageTool", "random-uuid"]).output().expect("running java");
        let cluster_id =
            String::from_utf8_lossy(&cluster_id.stdout).lines().last().unwrap_or_default().trim().to_owned();
        assert!(!cluster_id.is_empty(), "Kafka's storage tool gave no cluster id (is Java 17+ installed?)");
        let mut nodes = Vec::new();
        for (i, (port, controller)) in ports.iter().enumerate() {
            let id = i as u32 + 1;
            let data = dir.path().join(format!("n{id}"));
            let props = dir.path().join(format!("n{id}.properties"));
            std::fs::write(&props, node_properties(id, *port, *controller, &voters.join(","), &data))
                .expect("node config");
            let format = java(&libs)
                .args(["kafka.tools.StorageTool", "format", "-t", &cluster_id, "-c"])
                .arg(&props)
                .output()
                .expect("formatting a Kafka node");
            assert!(format.status.success(), "formatting node {id}: {}", String::from_utf8_lossy(&format.stderr));
            nodes.push(Node { id, port: *port, props, log: dir.path().join(format!("n{id}.log")), child: None });
        }
        let bootstrap = ports.iter().map(|(p, _)| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut cluster = KafkaCluster { dir, libs, nodes, bootstrap };
        // All three at once: a node opens its listener only once the metadata quorum (two of
        // the three) has formed.
        for id in 1..=3 {
            cluster.spawn(id);
        }
        for id in 1..=3 {
            cluster.wait_listening(id);
        }
        cluster.wait_ready();
        cluster
    }

    fn node(&mut self, id: u32) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    fn spawn(&mut self, id: u32) {
        let libs = self.libs.clone();
        let node = self.node(id);
        let log = File::options().create(true).append(true).open(&node.log).expect("node log");
        let child = java(&libs)
            .args(["-Xms128m", "-Xmx512m", "-XX:+UseSerialGC"])
            .arg("kafka.Kafka")
            .arg(&node.props)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("node log"))
            .stderr(log)
            .spawn()
            .expect("starting a Kafka node");
        node.child = Some(child);
    }

    /// Waits until node `id` accepts connections.
    fn wait_listening(&mut self, id: u32) {
        let port = self.node(id).port;
        assert!(
            wait_until(Duration::from_secs(90), || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "Kafka node {id} did not listen on {port} within 90 s; its log:\n{}",
            std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
        );
    }

    /// Waits until the cluster answers a metadata request with all three brokers.
    pub fn wait_ready(&self) {
        let ok = wait_until(Duration::from_secs(90), || {
            let c: Result<BaseConsumer, _> = ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create();
            c.ok()
                .and_then(|c| c.fetch_metadata(None, Duration::from_secs(5)).ok())
                .is_some_and(|m| m.brokers().len() == 3)
        });
        assert!(ok, "the Kafka cluster at {} did not come up with three brokers within 90 s", self.bootstrap);
    }

    /// Node `id`'s process id, while it runs.
    fn pid(&mut self, id: u32) -> Pid {
        let child = self.node(id).child.as_ref().unwrap_or_else(|| panic!("node {id} is not running"));
        Pid::from_raw(child.id() as i32)
    }

    /// SIGKILLs node `id`.
    pub fn kill9(&mut self, id: u32) {
        if let Some(mut c) = self.node(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops node `id` cleanly (SIGTERM, then waits for it to exit).
    pub fn stop(&mut self, id: u32) {
        if let Some(mut c) = self.node(id).child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while c.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes node `id` (SIGSTOP): it holds its sockets and answers nothing.
    pub fn pause(&mut self, id: u32) {
        let pid = self.pid(id);
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    }

    /// Lets a paused node `id` run again (SIGCONT).
    pub fn resume(&mut self, id: u32) {
        let pid = self.pid(id);
        kill(pid, Signal::SIGCONT).expect("SIGCONT");
    }

    /// Starts node `id` again on its data, after a kill or a stop.
    pub fn restart(&mut self, id: u32) {
        self.kill9(id);
        self.spawn(id);
        self.wait_listening(id);
    }

    /// Starts every stopped node again and waits for the cluster.
    pub fn restart_all(&mut self) {
        let stopped: Vec<u32> = self.nodes.iter().filter(|n| n.child.is_none()).map(|n| n.id).collect();
        for id in &stopped {
            self.spawn(*id);
        }
        self.wait_ready();
    }

    /// The node leading `topic`'s `partition`.
    pub fn leader_of(&self, topic: &str, partition: i32) -> u32 {
        let c: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create().expect("metadata client");
        let md = c.fetch_metadata(Some(topic), Duration::from_secs(20)).expect("topic metadata");
        let leader = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .find(|p| p.id() == partition)
            .map(|p| p.leader())
            .unwrap_or_else(|| panic!("{topic} has no partition {partition}"));
        leader as u32
    }

    /// The active controller: the leader of the metadata quorum, as a running node's
    /// `quorum-state` file says.
    pub fn active_controller(&self) -> u32 {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let file = self.dir.path().join(format!("n{}", n.id)).join("__cluster_metadata-0").join("quorum-state");
            let Ok(text) = std::fs::read_to_string(&file) else { continue };
            let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
            if let Some(id) = state["leaderId"].as_i64().filter(|id| *id > 0) {
                return id as u32;
            }
        }
        panic!("no running node knows the metadata quorum's leader")
    }

    /// Where the cluster keeps its files (node logs are `nN.log` there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of each node's log, for a failing test's message: whether a node
    /// exited, and why, is only written there.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let state = if n.child.is_some() { "started" } else { "stopped" };
            out.push_str(&format!("--- node {} ({state}), last {lines} lines of its log:\n", n.id));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                // A paused node must run again to die of SIGKILL's successor.
                let pid = Pid::from_raw(c.id() as i32);
                let _ = kill(pid, Signal::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// `java -cp LIBS/*`.
fn java(libs: &Path) -> Command {
    let mut c = Command::new("java");
    c.arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn").arg("-cp").arg(format!("{}/*", libs.display()));
    c
}

fn node_properties(id: u32, port: u16, controller: u16, voters: &str, data: &Path) -> String {
    format!(
        "process.roles=broker,controller
node.id={id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=3
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
group.initial.rebalance.delay.ms=0
",
        data = data.display()
    )
}

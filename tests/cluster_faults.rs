//! Faults only a real cluster has, each on a private three-node Apache Kafka cluster (KRaft,
//! replication factor 3, `min.insync.replicas` 2) under a continuous flow: a partition leader
//! SIGKILLed, the active controller killed, a broker frozen past the session timeout, the whole
//! cluster stopped and started again, and two brokers down so that no write can be replicated.
//!
//! Every record is checked by the oracle (nothing lost; duplicates within the in-flight window
//! per fault; per-key order after dedup), and the run's ledger must balance after its SIGTERM.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::kafka::KafkaCluster;
use common::oracle::{IN_FLIGHT_WINDOW, balanced, oracle, status_of};
use common::{Sluice, counts_of, read_jsonl, spawn, wait_until, write};

/// A continuous flow of `count` generated records at `rate` a second into a JSON-lines file.
struct Flow {
    dir: tempfile::TempDir,
    cfg: String,
    file: PathBuf,
    name: String,
    count: u64,
}

impl Flow {
    fn new(cluster: &KafkaCluster, name: &str, count: u64, rate: u64) -> Flow {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write(
            dir.path(),
            "flow.yaml",
            &format!(
                r#"
kafka: {{bootstrap_servers: "{addr}", partitions: 3}}
connections:
  gen: {{type: generate}}
  out: {{type: file, path: {out}}}
flows:
  - name: {name}
    trigger: continuous
    source: {{connection: gen, object: orders, options: {{count: {count}, rate_per_sec: {rate}, keys: 50}}}}
    transform:
      sql: SELECT seq, id, version FROM source
    destination: {{connection: out, object: {name}.jsonl}}
"#,
                addr = cluster.bootstrap,
                out = dir.path().join("out").display(),
            ),
        );
        let file = dir.path().join(format!("out/{name}.jsonl"));
        Flow { dir, cfg, file, name: name.to_owned(), count }
    }

    fn start(&self) -> Sluice {
        spawn(&["run", &self.cfg], self.dir.path(), &[])
    }

    fn delivered(&self) -> usize {
        read_jsonl(&self.file).0.len()
    }

    fn distinct(&self) -> u64 {
        counts_of(&read_jsonl(&self.file).0, "seq").len() as u64
    }

    /// Waits for every record, stops the process with SIGTERM, and checks the records and the
    /// ledger. Returns the duplicates.
    fn finish(&self, cluster: &KafkaCluster, p: Sluice, fault: &str, limit: Duration) -> usize {
        let ok = wait_until(limit, || self.distinct() >= self.count);
        let stderr = p.stderr_so_far();
        let done = p.terminate(Duration::from_secs(60));
        assert!(
            ok,
            "{fault}: not every record arrived ({} of {}); stderr:\n{stderr}\n{}",
            self.distinct(),
            self.count,
            cluster.log_tails(60)
        );
        assert_eq!(done.code(), Some(0), "{fault}: SIGTERM drains and exits 0; stderr:\n{}", done.stderr);
        let v = oracle(&read_jsonl(&self.file).0, self.count);
        assert!(v.duplicates <= IN_FLIGHT_WINDOW, "{fault}: duplicates beyond one in-flight window: {v:?}");
        let status = status_of(&self.cfg, self.dir.path(), &self.name);
        let n = balanced(&status);
        assert_eq!(n[5], 0, "{fault}: nothing in flight after the drain: {status}");
        eprintln!(
            "FAULT cluster {fault}: sent {}, lost 0, duplicated {}, dlq 0, ledger balanced (read {} = delivered {})",
            self.count, v.duplicates, n[0], n[1]
        );
        v.duplicates
    }
}

/// Waits until the flow delivered `n` records.
fn progress(cluster: &KafkaCluster, flow: &Flow, p: &Sluice, n: usize) {
    assert!(
        wait_until(Duration::from_secs(120), || flow.delivered() >= n),
        "no progress to {n} records; stderr:\n{}\n{}",
        p.stderr_so_far(),
        cluster.log_tails(60)
    );
}

#[test]
fn the_changes_topics_partition_leader_killed_under_load_then_restarted() {
    let mut cluster = KafkaCluster::start();
    let flow = Flow::new(&cluster, "leaderkill", 40_000, 4_000);
    let p = flow.start();
    progress(&cluster, &flow, &p, 6_000);
    let leader = cluster.leader_of("sluice.leaderkill.changes", 0);
    cluster.kill9(leader);
    progress(&cluster, &flow, &p, flow.delivered() + 4_000);
    cluster.restart(leader);
    flow.finish(
        &cluster,
        p,
        &format!("leader of changes/0 (node {leader}) SIGKILL then restart"),
        Duration::from_secs(240),
    );
}

#[test]
fn the_active_controller_killed() {
    let mut cluster = KafkaCluster::start();
    let flow = Flow::new(&cluster, "ctrlkill", 40_000, 4_000);
    let p = flow.start();
    progress(&cluster, &flow, &p, 6_000);
    let controller = cluster.active_controller();
    cluster.kill9(controller);
    progress(&cluster, &flow, &p, flow.delivered() + 4_000);
    cluster.restart(controller);
    flow.finish(
        &cluster,
        p,
        &format!("active controller (node {controller}) SIGKILL then restart"),
        Duration::from_secs(240),
    );
}

#[test]
fn a_broker_frozen_past_the_session_timeout_then_thawed() {
    let mut cluster = KafkaCluster::start();
    let flow = Flow::new(&cluster, "frozen", 40_000, 4_000);
    let p = flow.start();
    progress(&cluster, &flow, &p, 6_000);
    // The leader of a changes partition, which is also the group coordinator of some group:
    // frozen for 15 s, past the 10 s session timeout of sluice's consumers.
    let node = cluster.leader_of("sluice.frozen.changes", 0);
    cluster.pause(node);
    std::thread::sleep(Duration::from_secs(15));
    cluster.resume(node);
    flow.finish(&cluster, p, &format!("node {node} SIGSTOP 15 s then SIGCONT"), Duration::from_secs(240));
}

#[test]
fn the_whole_cluster_stopped_and_started_again_under_a_running_flow() {
    let mut cluster = KafkaCluster::start();
    let flow = Flow::new(&cluster, "fullstop", 40_000, 4_000);
    let p = flow.start();
    progress(&cluster, &flow, &p, 6_000);
    for id in 1..=3 {
        cluster.stop(id);
    }
    let stopped = flow.delivered();
    std::thread::sleep(Duration::from_secs(10));
    cluster.restart_all();
    // Three JVMs starting at once on two cores, then every group rejoining: give it longer.
    let restarted = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(300), || flow.delivered() >= stopped + 4_000),
        "no progress after the cluster restart; stderr:\n{}\n{}",
        p.stderr_so_far(),
        cluster.log_tails(60)
    );
    eprintln!("whole cluster: progress again {:.1} s after the restart returned", restarted.elapsed().as_secs_f64());
    flow.finish(&cluster, p, "whole cluster stopped 10 s and started", Duration::from_secs(300));
}

#[test]
fn writes_that_cannot_be_replicated_wait_and_resume_when_a_broker_returns() {
    let mut cluster = KafkaCluster::start();
    let flow = Flow::new(&cluster, "insync", 40_000, 4_000);
    let p = flow.start();
    progress(&cluster, &flow, &p, 6_000);
    // Two of three nodes down: no partition has two in-sync replicas (and the metadata quorum
    // is lost too), so no batch can be acknowledged with acks=all.
    let survivor = cluster.leader_of("sluice.insync.changes", 0);
    let down: Vec<u32> = (1..=3).filter(|id| *id != survivor).collect();
    for id in &down {
        cluster.kill9(*id);
    }
    // The flow says why it is still, and delivers nothing new beyond what was committed: its
    // writer waits for acknowledgements, or — when the claim group's coordinator was on a killed
    // node, so the claim itself lapsed — the claim says it waits for the cluster.
    let said = wait_until(Duration::from_secs(90), || {
        let err = p.stderr_so_far();
        err.contains("has not acknowledged") || err.contains("the source waits for the cluster")
    });
    assert!(said, "the flow did not say it waits for the cluster:\n{}", p.stderr_so_far());
    let before = flow.delivered();
    std::thread::sleep(Duration::from_secs(5));
    let during = flow.delivered();
    let outage = Instant::now();
    cluster.restart(down[0]);
    progress(&cluster, &flow, &p, during + 4_000);
    let resumed = outage.elapsed();
    cluster.restart(down[1]);
    eprintln!(
        "min.insync not met: {} records delivered while two nodes were down (committed before), resumed {:.1} s after one returned",
        during - before,
        resumed.as_secs_f64()
    );
    flow.finish(
        &cluster,
        p,
        "two of three nodes down (min.insync.replicas not met), then back",
        Duration::from_secs(300),
    );
}

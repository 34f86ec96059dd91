//! Several `sluice run` processes sharing one config on Apache Kafka: exactly one of them runs
//! each flow's source (elected through the flow's claim group, fenced by its transactional id),
//! all of them run sink workers. Killed, frozen, added and removed processes and a killed broker
//! lose nothing, and two processes never publish a flow's records at once.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::http::{Destination, Options};
use common::kafka::{Kafka, KafkaCluster};
use common::oracle::{IN_FLIGHT_WINDOW, oracle};
use common::pg::{Cleanup, pg, table};
use common::{Sluice, counts_of, read_jsonl, read_topic, spawn, wait_until, write};
use nix::sys::signal::{Signal, kill};
use serde_json::Value;

/// The processes of the test, by name; `None` once stopped or killed.
struct Processes {
    cfg: String,
    dir: std::path::PathBuf,
    live: BTreeMap<String, Sluice>,
}

impl Processes {
    fn start(&mut self, name: &str) {
        let p = spawn(&["run", &self.cfg], &self.dir, &[]);
        self.live.insert(name.to_owned(), p);
    }

    /// The process that holds `flow`'s claim now, by the last claim event each logged.
    fn owner(&self, flow: &str) -> Option<String> {
        let mut owners = self.live.iter().filter(|(_, p)| {
            let log = p.stderr_so_far();
            let last = log.lines().rev().find(|l| l.contains("source claim") && l.ends_with(&format!("flow={flow}")));
            last.is_some_and(|l| l.contains("source claim held"))
        });
        owners.next().map(|(n, _)| n.clone())
    }

    /// How many times any live process logged that it holds `flow`'s claim.
    fn claims(&self, flow: &str) -> usize {
        let held = format!("this process runs the source flow={flow}");
        self.live.values().map(|p| p.stderr_so_far().lines().filter(|l| l.ends_with(&held)).count()).sum()
    }

    /// Waits for `flow`'s owner; returns it.
    fn wait_owner(&self, flow: &str) -> String {
        let mut owner = None;
        let ok = wait_until(Duration::from_secs(120), || {
            owner = self.owner(flow);
            owner.is_some()
        });
        assert!(ok, "no process holds {flow}'s claim:\n{}", self.logs());
        owner.unwrap()
    }

    fn logs(&self) -> String {
        self.live.iter().map(|(n, p)| format!("--- {n}:\n{}", p.stderr_so_far())).collect()
    }
}

/// Per partition, the writer turns of a flow's change records in offset order: no turn may
/// come back after another one started, in any partition, and every partition must see the
/// turns in one order. Returns the turns seen.
fn one_writer_at_a_time(bootstrap: &str, topic: &str) -> usize {
    let mut per_partition: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for m in read_topic(bootstrap, topic) {
        let env: Value = serde_json::from_slice(&m.payload).unwrap();
        let writer = env["source"]["writer"].as_str().unwrap_or_else(|| panic!("no writer in {env}")).to_owned();
        let turns = per_partition.entry(m.partition).or_default();
        if turns.last() != Some(&writer) {
            turns.push(writer);
        }
    }
    let mut before: BTreeSet<(String, String)> = BTreeSet::new();
    let mut all = BTreeSet::new();
    for (p, turns) in &per_partition {
        let distinct: BTreeSet<&String> = turns.iter().collect();
        assert_eq!(distinct.len(), turns.len(), "{topic}[{p}]: a writer came back after another: {turns:?}");
        for (i, a) in turns.iter().enumerate() {
            all.insert(a.clone());
            for b in &turns[i + 1..] {
                before.insert((a.clone(), b.clone()));
            }
        }
    }
    for (a, b) in &before {
        assert!(!before.contains(&(b.clone(), a.clone())), "{topic}: writers {a} and {b} published at the same time");
    }
    all.len()
}

/// The flow's stored positions, in the order they were committed, as numbers.
fn positions(bootstrap: &str, flow: &str, number: impl Fn(&Value) -> u64) -> Vec<u64> {
    read_topic(bootstrap, "sluice.positions")
        .iter()
        .filter(|m| m.key.as_deref() == Some(flow))
        .map(|m| number(&serde_json::from_slice::<Value>(&m.payload).unwrap()["position"]))
        .collect()
}

fn lsn(v: &Value) -> u64 {
    let text = v["lsn"].as_str().unwrap_or("0/0");
    let (hi, lo) = text.split_once('/').unwrap_or(("0", "0"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[test]
fn three_processes_share_three_flows_through_kills_a_freeze_a_broker_kill_and_a_scale_change() {
    let mut cluster = KafkaCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let (gen_count, file_count, cdc_count) = (60_000u64, 60_000u64, 6_000u64);
    let t = table("scale_cdc");
    let _cleanup = Cleanup { slots: vec![t.clone()], publications: vec![t.clone()], tables: vec![t.clone()] };
    // Keyed by `id` (its primary key): 50 rows, each inserted and then updated over and over,
    // so the oracle's per-key order is the order of each row's changes.
    pg(&format!("CREATE TABLE {t} (id bigint PRIMARY KEY, seq bigint NOT NULL, version bigint NOT NULL)"));
    let lines: String =
        (0..file_count).map(|s| format!("{{\"seq\":{s},\"id\":{},\"version\":{}}}\n", s % 50, s / 50)).collect();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(dir.path().join("in/lines.jsonl"), lines).unwrap();
    let cfg = write(
        dir.path(),
        "scale.yaml",
        &format!(
            r#"
kafka: {{bootstrap_servers: "{addr}", partitions: 3}}
connections:
  gen: {{type: generate}}
  files: {{type: file, path: {root}}}
  wh: {{type: postgres, database: postgres, user: postgres}}
flows:
  - name: gen
    trigger: continuous
    source: {{connection: gen, object: orders, options: {{count: {gen_count}, rate_per_sec: 1000, keys: 50}}}}
    transform: {{sql: "SELECT seq, id, version FROM source"}}
    destination: {{connection: files, object: out/gen.jsonl}}
  - name: lines
    trigger: continuous
    source: {{connection: files, object: in/lines.jsonl, options: {{key: [id]}}, schema: {{seq: int64, id: int64, version: int64}}}}
    batch: {{max_records: 500}}
    destination: {{connection: files, object: out/lines.jsonl}}
  - name: cdc
    trigger: continuous
    source:
      connection: wh
      object: public.{t}
      options: {{mode: cdc, slot: {t}, publication: {t}, heartbeat_secs: 1}}
      schema: {{seq: int64, id: int64, version: int64}}
    transform: {{sql: "SELECT seq, id, version FROM source"}}
    destination: {{connection: files, object: out/cdc.jsonl}}
"#,
            addr = cluster.bootstrap,
            root = dir.path().display(),
        ),
    );
    let out = |f: &str| dir.path().join("out").join(f);
    let distinct = |f: &str| counts_of(&read_jsonl(&out(f)).0, "seq").len() as u64;
    let mut ps = Processes { cfg, dir: dir.path().to_owned(), live: BTreeMap::new() };
    for name in ["a", "b", "c"] {
        ps.start(name);
    }
    // The database changes as the test goes: 6,000 changes over about 30 s, from when the slot
    // exists (each row's changes before would reach the output only as its snapshot).
    let slot_exists = || !pg(&format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = '{t}'")).is_empty();
    assert!(wait_until(Duration::from_secs(120), slot_exists), "the cdc flow made no slot:\n{}", ps.logs());
    // And from when its (empty) snapshot is stored: a snapshot taken later — the claim may move
    // at start-up before the first owner stored one — holds each row's latest version only,
    // and the stream rightly skips the changes it already holds; this test counts every change.
    let snapshot_done = || {
        read_topic(&cluster.bootstrap, "sluice.positions").iter().any(|m| {
            m.key.as_deref() == Some("cdc")
                && serde_json::from_slice::<Value>(&m.payload).unwrap()["position"]["snapshot"] == "done"
        })
    };
    assert!(wait_until(Duration::from_secs(120), snapshot_done), "the cdc flow stored no snapshot:\n{}", ps.logs());
    let writer = {
        let t = t.clone();
        std::thread::spawn(move || {
            for chunk in 0..(cdc_count / 40) {
                let values: Vec<String> =
                    (chunk * 40..chunk * 40 + 40).map(|s| format!("({}, {s}, {})", s % 50, s / 50)).collect();
                pg(&format!(
                    "INSERT INTO {t} VALUES {} ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, version = EXCLUDED.version",
                    values.join(",")
                ));
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let mut report = Vec::new();
    let mut faults = 0usize;
    // A killed process is started again at once, as its supervisor (systemd, Kubernetes) would.
    let kill_owner = |ps: &mut Processes, flow: &str, report: &mut Vec<String>| {
        let owner = ps.wait_owner(flow);
        let victim = ps.live.remove(&owner).unwrap();
        let claims = ps.claims(flow);
        victim.kill9();
        let killed = Instant::now();
        ps.start(&owner);
        let taken = wait_until(Duration::from_secs(120), || ps.claims(flow) > claims);
        assert!(taken, "nobody took {flow} over after {owner} was killed:\n{}", ps.logs());
        report.push(format!(
            "SIGKILL {flow}'s owner {owner} (restarted at once): taken over in {:.1} s",
            killed.elapsed().as_secs_f64()
        ));
        eprintln!("step: {}", report.last().unwrap());
    };
    let progress = |f: &str, n: u64, ps: &Processes| {
        assert!(wait_until(Duration::from_secs(180), || distinct(f) >= n), "{f} stuck below {n}:\n{}", ps.logs());
    };

    progress("gen.jsonl", 5_000, &ps);
    eprintln!("step: 5000 gen records delivered");
    kill_owner(&mut ps, "gen", &mut report);
    faults += 1;
    progress("gen.jsonl", distinct("gen.jsonl") + 3_000, &ps);

    // The gen owner frozen past its session timeout, then thawed: fenced, it must not publish.
    let frozen = ps.wait_owner("gen");
    let claims = ps.claims("gen");
    let pid = ps.live[&frozen].pid();
    kill(pid, Signal::SIGSTOP).unwrap();
    let at = Instant::now();
    let taken = wait_until(Duration::from_secs(120), || ps.claims("gen") > claims);
    let took = at.elapsed();
    std::thread::sleep(Duration::from_secs(15_u64.saturating_sub(took.as_secs())));
    kill(pid, Signal::SIGCONT).unwrap();
    assert!(taken, "nobody took gen over from the frozen {frozen}:\n{}", ps.logs());
    report.push(format!("SIGSTOP gen's owner {frozen} for 15 s: taken over in {:.1} s", took.as_secs_f64()));
    eprintln!("step: {}", report.last().unwrap());
    faults += 1;

    kill_owner(&mut ps, "cdc", &mut report);
    faults += 1;
    ps.start("d");
    report.push("process d added".into());
    eprintln!("step: process d added");
    progress("gen.jsonl", distinct("gen.jsonl") + 3_000, &ps);

    let node = cluster.leader_of("sluice.gen.changes", 0);
    cluster.kill9(node);
    progress("gen.jsonl", distinct("gen.jsonl") + 2_000, &ps);
    cluster.restart(node);
    report.push(format!("broker node {node} (leader of gen.changes/0) SIGKILL, restarted"));
    eprintln!("step: {}", report.last().unwrap());
    faults += 1;

    kill_owner(&mut ps, "gen", &mut report);
    faults += 1;
    // One process leaves cleanly (one that owns no source, if there is one).
    let leaving = ps
        .live
        .keys()
        .find(|n| ["gen", "lines", "cdc"].iter().all(|f| ps.owner(f).as_deref() != Some(n.as_str())))
        .or_else(|| ps.live.keys().next())
        .cloned()
        .unwrap();
    let done = ps.live.remove(&leaving).unwrap().terminate(Duration::from_secs(60));
    assert_eq!(done.code(), Some(0), "{leaving} did not stop cleanly:\n{}", done.stderr);
    report.push(format!("process {leaving} removed (SIGTERM)"));

    writer.join().unwrap();
    for (f, n) in [("gen.jsonl", gen_count), ("lines.jsonl", file_count), ("cdc.jsonl", cdc_count)] {
        let ok = wait_until(Duration::from_secs(240), || distinct(f) >= n);
        assert!(ok, "{f}: {} of {n} arrived:\n{}", distinct(f), ps.logs());
    }
    let names: Vec<String> = ps.live.keys().cloned().collect();
    for n in names {
        let done = ps.live.remove(&n).unwrap().terminate(Duration::from_secs(60));
        assert_eq!(done.code(), Some(0), "{n}:\n{}", done.stderr);
    }

    // Every record, each key in order; duplicates within one in-flight window per fault.
    for (f, n) in [("gen.jsonl", gen_count), ("lines.jsonl", file_count), ("cdc.jsonl", cdc_count)] {
        eprintln!("checking every record of {f}");
        let v = oracle(&read_jsonl(&out(f)).0, n);
        assert!(v.duplicates <= faults * IN_FLIGHT_WINDOW, "{f}: {v:?} after {faults} faults");
        report.push(format!("{f}: sent {n}, lost 0, duplicated {}", v.duplicates));
    }
    // Positions only move forward, whoever stored them.
    let next_seq = |v: &Value| v["next_seq"].as_u64().unwrap_or(0);
    let next_line = |v: &Value| v["next_line"].as_u64().unwrap_or(0);
    for (flow, ps) in [
        ("gen", positions(&cluster.bootstrap, "gen", next_seq)),
        ("lines", positions(&cluster.bootstrap, "lines", next_line)),
        ("cdc", positions(&cluster.bootstrap, "cdc", lsn)),
    ] {
        assert!(ps.windows(2).all(|w| w[1] >= w[0]), "{flow}'s positions went backwards: {ps:?}");
    }
    // One writer at a time, as the change records themselves show.
    for flow in ["gen", "lines", "cdc"] {
        let turns = one_writer_at_a_time(&cluster.bootstrap, &format!("sluice.{flow}.changes"));
        report.push(format!("{flow}: {turns} writer turns, never two at once"));
    }
    eprintln!("SCALE-OUT:\n  {}", report.join("\n  "));
}

#[test]
fn sink_workers_scaled_from_one_to_three_under_load_with_cooperative_rebalancing() {
    let kafka = Kafka::cluster();
    let count = 60_000i64;
    let input = kafka.name("scale-in");
    let msgs: Vec<(Option<String>, Vec<u8>)> = (0..count)
        .map(|seq| {
            let id = seq % 50;
            (
                Some(format!("{{\"id\":{id}}}")),
                format!("{{\"seq\":{seq},\"id\":{id},\"version\":{}}}", seq / 50).into_bytes(),
            )
        })
        .collect();
    kafka.produce(&input, 6, &msgs);
    let dest = Destination::start(Options { delay: Duration::from_millis(40), ..Options::default() });
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "scale.yaml",
        &format!(
            r#"
kafka: {{{kafka}, options: {{partition.assignment.strategy: cooperative-sticky}}}}
connections:
  bus: {{type: kafka}}
  hook: {{type: http, url: "{url}", allow_private_addresses: true}}
flows:
  - name: scaled
    trigger: continuous
    source: {{connection: bus, object: {input}, options: {{format: json}}, schema: {{seq: int64, id: int64, version: int64}}}}
    batch: {{max_records: 500}}
    destination: {{connection: hook, object: /ingest, options: {{max_rows: 100}}}}
"#,
            kafka = kafka.yaml(),
            url = dest.url,
        ),
    );
    let delivered = || counts_of(&dest.rows(), "seq").len() as i64;
    // Samples the delivered count until `until` passes; returns the longest stretch without
    // progress that started after `from`.
    let longest_pause = |from: Instant, until: Instant| {
        let (mut last, mut since, mut longest) = (delivered(), Instant::now(), Duration::ZERO);
        while Instant::now() < until && delivered() < count {
            std::thread::sleep(Duration::from_millis(50));
            let now = delivered();
            if now != last {
                if since >= from {
                    longest = longest.max(since.elapsed());
                }
                (last, since) = (now, Instant::now());
            }
        }
        longest
    };
    let mut procs: HashMap<usize, Sluice> = HashMap::new();
    procs.insert(1, spawn(&["run", &cfg], dir.path(), &[]));
    assert!(wait_until(Duration::from_secs(60), || delivered() > 2_000), "{}", procs[&1].stderr_so_far());
    let mut pauses = Vec::new();
    for n in [2usize, 3] {
        let at = Instant::now();
        procs.insert(n, spawn(&["run", &cfg], dir.path(), &[]));
        pauses.push(longest_pause(at, at + Duration::from_secs(12)));
    }
    let ok = wait_until(Duration::from_secs(240), || delivered() >= count);
    let logs: Vec<String> = procs.values().map(Sluice::stderr_so_far).collect();
    for (_, p) in procs.drain() {
        let done = p.terminate(Duration::from_secs(60));
        assert_eq!(done.code(), Some(0), "{}", done.stderr);
    }
    assert!(ok, "{} of {count} delivered:\n{}", delivered(), logs.join("\n---\n"));
    let v = oracle(&dest.rows(), count as u64);
    assert!(v.duplicates <= 2 * 500, "a cooperative rebalance re-delivers at most a batch per move: {v:?}");
    let shared = logs.iter().filter(|l| l.contains("partitions assigned")).count();
    assert_eq!(shared, 3, "every worker got partitions:\n{}", logs.join("\n---\n"));
    eprintln!(
        "SCALE sinks 1 -> 2 -> 3 (cooperative-sticky): longest pause after adding the 2nd {:.2} s, the 3rd {:.2} s; sent {count}, lost 0, duplicated {}",
        pauses[0].as_secs_f64(),
        pauses[1].as_secs_f64(),
        v.duplicates
    );
}

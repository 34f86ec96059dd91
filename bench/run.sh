#!/usr/bin/env bash
# sluice's benchmark harness: one run, one broker, the same generated data for every runner.
#
#   bench/run.sh [RECORDS]                 (default 1000000; ≈ 200-byte JSON records)
#
# Runners, each measured for wall time, CPU (user+sys of its process) and peak RSS over a
# backlog of RECORDS records:
#   a. raw rdkafka pass-through (bench/src/passthrough.rs): topic -> topic, payload untouched
#   b. sluice: kafka topic -> SQL (WHERE amount > 500, 4 columns, upper(name)) -> kafka topic
#   c. sluice: kafka topic -> s3 (Parquet) on a loopback s3s-fs
#   d. sluice: generate -> kafka topic (source throughput)
#   e. the Python peer: job (b) in Quix Streams (installed from PyPI into a virtualenv under
#      ~/.cache; left out, with a message, when PyPI cannot be reached)
# then each runner's end-to-end latency as a continuous job offered half of its measured rate
# for 20 s: p50/p99 of arrival minus the send time carried in each record (arrival: read back
# from the output topic; for (c), the Parquet object's write time in s3s-fs's directory; for
# (d), the generator's record time, carried by a projection). Each latency run starts its load
# once the runner holds its partitions, and leaves the first second out.
#
# The broker is one Apache Kafka node (KRaft, from Maven Central like the tests' cluster, its log
# on tmpfs when /dev/shm is there: the broker's fsyncs are not what is measured; one node, so
# the two cores are not spent on replication), or an external cluster given by
# SLUICE_BENCH_KAFKA=host:port. A JDK and Maven are installed from Debian's packages if missing
# (scripts/kafka-libs). Then, as a second column, the embedded broker (`sluice broker`, SQLite,
# on disk as users run it): (a) and (b) again, and the quickstart's flow (generate -> SQL ->
# file with `kafka: embedded`) over RECORDS records. (Not `--memory`: tansu 0.6's memory engine
# served ≈ 0.8 % fewer records than it acknowledged at 200,000 records, so counts would not
# balance.)
#
# The peers of bench/peers.sh run on the Kafka broker too: Kafka Connect's file sink (f) against
# sluice kafka -> file (g), and Debezium's PostgreSQL connector against sluice's CDC source, on
# a snapshot (h, i) and on one streamed transaction (j, k) of RECORDS rows, in the machine's
# PostgreSQL (set up by scripts/postgres-up, as for the tests).
#
# Every runner's consumer uses fetch.wait.max.ms = SLUICE_BENCH_FETCH_WAIT_MS (default 10):
# tansu 0.6 answers every fetch only after waiting out (half) its max wait, data or not, so
# librdkafka's default of 500 ms would add 250 ms to every consume hop; a Kafka broker answers
# as soon as data is there, so on one the setting changes nothing but idle polling.
# Results: bench/results/latest.json and latest.md (and printed), with each target of issue 18
# and its ratio. SLUICE_BENCH_JVM_PEERS=0 leaves out (f)-(k), SLUICE_BENCH_EMBEDDED=0 the embedded
# column. Two other modes, below:
# SLUICE_BENCH_BASELINE (this build against another) and SLUICE_BENCH_TELEMETRY (what telemetry costs).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
echo "==> building (release)"
# One invocation for both packages, so features unify and the dependency tree is built once.
cargo build --release --quiet -p sluice-bench -p sluice --bins
R="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d)"
if [ -d /dev/shm ] && [ -w /dev/shm ]; then KAFKA_DIR="$(mktemp -d /dev/shm/sluice-bench.XXXXXX)"; else KAFKA_DIR="$WORK/kafka"; fi
export SLUICE_BENCH_FETCH_WAIT_MS="${SLUICE_BENCH_FETCH_WAIT_MS:-10}"
FW="$SLUICE_BENCH_FETCH_WAIT_MS"
OUT="bench/results"
mkdir -p "$OUT"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -z "${SLUICE_BENCH_KAFKA:-}" ]; then scripts/kafka-cluster stop "$KAFKA_DIR" 2>/dev/null || true; fi
    if [ -n "${RUN:-}" ] && declare -F cdc_cleanup >/dev/null; then cdc_cleanup; fi
    rm -rf "$WORK" "$KAFKA_DIR"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# wait_for FILE TEXT: waits (≤ 60 s) until FILE holds TEXT.
wait_for() { for _ in $(seq 1 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "   (no \"$2\" in $1 after 60 s)"; return 1; }

# The Python peer's virtualenv, kept between runs.
VENV="${SLUICE_BENCH_VENV:-$HOME/.cache/sluice-bench-venv}"
PEER=""
if [ "${SLUICE_BENCH_PEER:-1}" = 1 ]; then
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import quixstreams' 2>/dev/null; then
        PEER=1
    else
        echo "==> installing Quix Streams into $VENV"
        if python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet 'quixstreams==3.28.*'; then PEER=1; else
            echo "   Quix Streams could not be installed; the Python peer (e) is left out of this run"; fi
    fi
fi

if [ -n "${SLUICE_BENCH_KAFKA:-}" ]; then
    BOOT="$SLUICE_BENCH_KAFKA"
else
    KAFKA_LIBS=$(scripts/kafka-libs)
    echo "==> starting one Apache Kafka node"
    BOOT=$(SLUICE_KAFKA_HEAP=1g scripts/kafka-cluster start "$KAFKA_LIBS" "$KAFKA_DIR" 1)
    for p in "$KAFKA_DIR"/n*.pid; do PIDS+=("$(cat "$p")"); done
fi
EMBEDDED="${SLUICE_BENCH_EMBEDDED:-1}"
if [ "$EMBEDDED" = 1 ]; then
    EPORT=$(port)
    "$R/sluice" broker --data-dir "$WORK/embedded" --listen "127.0.0.1:$EPORT" >/dev/null 2>&1 & PIDS+=($!)
    wait_port "$EPORT"
    EBOOT="127.0.0.1:$EPORT"
fi
PEERS="${SLUICE_BENCH_JVM_PEERS:-1}"
if [ "$PEERS" = 1 ]; then scripts/postgres-up; . bench/peers.sh; fi
SPORT=$(port); mkdir -p "$WORK/s3/bench" "$WORK/s3/benchlat"
"${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" --host 127.0.0.1 --port "$SPORT" --access-key bench --secret-key bench-secret "$WORK/s3" >/dev/null 2>&1 & PIDS+=($!)
wait_port "$SPORT"
RUN="run$$"

# measure NAME CMD…: runs CMD, appends "name wall user sys maxrss_kb" to $WORK/measures.
measure() {
    local name=$1; shift
    python3 - "$name" "$WORK/measures" "$@" <<'PY'
import resource, subprocess, sys, time
name, out, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
t = time.time()
p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
wall = time.time() - t
open(f"{out}.{name}.out", "w").write(p.stdout + p.stderr)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
if p.returncode != 0:
    sys.stderr.write(f"{name} failed ({p.returncode}):\n{p.stderr[-2000:]}\n"); sys.exit(1)
open(out, "a").write(f"{name} {wall} {r.ru_utime} {r.ru_stime} {r.ru_maxrss}\n")
PY
}
rate_of() { awk -v n="$N" -v k="$1" '$1==k {printf "%d", n/$2}' "$WORK/measures"; }
# passing COUNT: how many of the first COUNT generated records job (b) keeps (amount > 500).
passing() { python3 -c "import sys; n=int(sys.argv[1]); print(sum(1 for i in range(n) if (i*7919)%1000 > 500))" "$1"; }

SCHEMA='{id: int64, seq: int64, name: string, category: string, amount: int64, note: string, sent_us: int64}'
JOB='SELECT id, upper(name) AS name, category, amount, sent_us FROM source WHERE amount > 500'
# flows RATE_D COUNT_D: the flows file, $WORK/flows.yaml on BOOT (the latency run of (d) needs
# its rate and count); with BOOT and FLOWS set otherwise, the same flows on another broker.
flows() {
cat > "${FLOWS:-$WORK/flows.yaml}" <<YAML
kafka: {bootstrap_servers: "$BOOT", options: {fetch.wait.max.ms: "$FW"}}
connections:
  bus: {type: kafka}
  gen: {type: generate}
  files: {type: file, path: "$WORK/files"}
  wh: {type: postgres, database: postgres, user: postgres}
  lake: {type: s3, endpoint: "http://127.0.0.1:$SPORT", allow_private_addresses: true, path_style: true, access_key_id: bench, secret_access_key: bench-secret}
flows:
  - name: b-$RUN
    source: {connection: bus, object: bench.in.$RUN, options: {format: json}, schema: $SCHEMA}
    transform: {sql: "$JOB"}
    destination: {connection: bus, object: bench.b.$RUN}
  - name: c-$RUN
    source: {connection: bus, object: bench.in.$RUN, options: {format: json}, schema: $SCHEMA}
    destination: {connection: lake, object: bench, options: {format: parquet}}
  - name: d-$RUN
    source: {connection: gen, object: orders, options: {count: $N, keys: 50000}}
    destination: {connection: bus, object: bench.d.$RUN}
  - name: g-$RUN
    source: {connection: bus, object: bench.in.$RUN, options: {format: json}, schema: $SCHEMA}
    transform: {sql: "SELECT id, name, category, amount FROM source"}
    destination: {connection: files, object: g.jsonl}
  - name: latb-$RUN
    trigger: continuous
    source: {connection: bus, object: bench.latb.in.$RUN, options: {format: json}, schema: $SCHEMA}
    transform: {sql: "$JOB"}
    destination: {connection: bus, object: bench.latb.out.$RUN}
  - name: latc-$RUN
    trigger: continuous
    source: {connection: bus, object: bench.latc.in.$RUN, options: {format: json}, schema: $SCHEMA}
    destination: {connection: lake, object: benchlat, options: {format: parquet}}
  - name: latd-$RUN
    trigger: continuous
    source: {connection: gen, object: orders, options: {count: ${2:-1}, rate_per_sec: ${1:-1}, keys: 50000}}
    transform: {sql: "SELECT id, seq, name, category, amount, CAST(_ts AS BIGINT) * 1000 AS sent_us FROM source"}
    destination: {connection: bus, object: bench.latd.out.$RUN}
YAML
}
flows

echo "==> loading $N records into bench.in.$RUN"
"$R/loadgen" "$BOOT" "bench.in.$RUN" "$N"

# pin_measured: on a machine of two or more CPUs, the measured runs (prefixed with "${PIN[@]}")
# get the last CPU to themselves and the broker, the receivers and this script share the others.
# Unpinned on two cores, the broker's work lands on the measured process's core at random.
PIN=()
pin_measured() {
    local cpus; cpus=$(nproc)
    if [ "$cpus" -ge 2 ] && command -v taskset >/dev/null; then
        local others="0-$((cpus - 2))"
        for p in "${PIDS[@]}"; do taskset -a -p -c "$others" "$p" >/dev/null; done
        taskset -p -c "$others" $$ >/dev/null
        PIN=(taskset -c "$((cpus - 1))")
        echo "==> measured runs on CPU $((cpus - 1)), everything else on CPUs $others"
    fi
}

# SLUICE_BENCH_BASELINE=/path/to/an/older/sluice: only job (b), with that build and with this one,
# alternately, SLUICE_BENCH_ROUNDS times each (default 3) over the same backlog, each run under a
# flow name of its own (so it reads the whole topic); prints CPU per record for both builds and
# the change, and writes bench/results/compare.md. The rest of the harness does not run.
if [ -n "${SLUICE_BENCH_BASELINE:-}" ]; then
    ROUNDS="${SLUICE_BENCH_ROUNDS:-3}"
    pin_measured
    for i in $(seq 1 "$ROUNDS"); do
        for build in base this; do
            cat >> "$WORK/flows.yaml" <<YAML
  - name: cmp-$build-$i-$RUN
    source: {connection: bus, object: bench.in.$RUN, options: {format: json}, schema: $SCHEMA}
    transform: {sql: "$JOB"}
    destination: {connection: bus, object: bench.cmp.$build.$i.$RUN}
YAML
        done
    done
    for i in $(seq 1 "$ROUNDS"); do
        echo "==> round $i: job (b) with the baseline, then with this build"
        measure "base" "${PIN[@]}" "$SLUICE_BENCH_BASELINE" run "$WORK/flows.yaml" --flow "cmp-base-$i-$RUN"
        measure "this" "${PIN[@]}" "$R/sluice" run "$WORK/flows.yaml" --flow "cmp-this-$i-$RUN"
    done
    python3 - "$WORK/measures" "$N" "$SLUICE_BENCH_BASELINE" "$OUT/compare.md" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
n, base_bin, out = int(sys.argv[2]), sys.argv[3], sys.argv[4]
cpu = {k: [(float(r[2]) + float(r[3])) * 1e9 / n for r in rows if r[0] == k] for k in ("base", "this")}
wall = {k: [n / float(r[1]) for r in rows if r[0] == k] for k in ("base", "this")}
med = {k: statistics.median(v) for k, v in cpu.items()}
lines = [
    f"Job (b), kafka -> SQL -> kafka, {n} records, {len(cpu['this'])} alternating runs per build.",
    "",
    "| build | CPU ns/record (median) | runs (ns/record) | records/s (median) |",
    "|---|---|---|---|",
]
for k, label in (("base", f"baseline ({base_bin})"), ("this", "this build")):
    runs = ", ".join(f"{v:.0f}" for v in cpu[k])
    lines.append(f"| {label} | {med[k]:.0f} | {runs} | {statistics.median(wall[k]):.0f} |")
lines += ["", f"CPU per record, this build against the baseline: {100 * (med['this'] / med['base'] - 1):+.1f} %"]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
    exit 0
fi
# SLUICE_BENCH_TELEMETRY=1: only job (b), with telemetry off, with the Prometheus export (the
# API on, scraped every second) and with the OTLP export (to tests/otlp/receiver.py, with 1 %
# of records traced), alternately, SLUICE_BENCH_ROUNDS times each (default 3); prints CPU per
# record for each and the change against off, and writes bench/results/telemetry.md.
# Measured runs pinned (pin_measured).
if [ "${SLUICE_BENCH_TELEMETRY:-}" = 1 ]; then
    ROUNDS="${SLUICE_BENCH_ROUNDS:-3}"
    PY="${SLUICE_TEST_PYTHON:-$HOME/.cache/sluice-py/bin/python}"
    "$PY" -c 'import opentelemetry.proto' || { echo "the OTLP receiver needs opentelemetry-proto in $PY (scripts/test installs it)"; exit 1; }
    pin_measured
    "$PY" tests/otlp/receiver.py "$WORK/otlp.jsonl" > "$WORK/otlp.port" & PIDS+=($!)
    for _ in $(seq 1 100); do [ -s "$WORK/otlp.port" ] && break; sleep 0.1; done
    APORT=$(port)
    for i in $(seq 1 "$ROUNDS"); do
        for v in off prom otlp; do
            cat >> "$WORK/flows.yaml" <<YAML
  - name: tel-$v-$i-$RUN
    source: {connection: bus, object: bench.in.$RUN, options: {format: json}, schema: $SCHEMA}
    transform: {sql: "$JOB"}
    destination: {connection: bus, object: bench.tel.$v.$i.$RUN}
YAML
        done
    done
    { cat "$WORK/flows.yaml"; printf 'api: {listen: "127.0.0.1:%s"}\n' "$APORT"; } > "$WORK/flows-prom.yaml"
    { cat "$WORK/flows.yaml"; printf 'telemetry: {otlp_endpoint: "http://127.0.0.1:%s", trace_sample_rate: 0.01, export_interval_secs: 1}\n' "$(cat "$WORK/otlp.port")"; } > "$WORK/flows-otlp.yaml"
    # Scrapes /metrics every second while the Prometheus variant runs, as Prometheus would.
    ( while true; do curl -s -o /dev/null "http://127.0.0.1:$APORT/metrics" || true; sleep 1; done ) & PIDS+=($!)
    for i in $(seq 1 "$ROUNDS"); do
        echo "==> round $i: job (b) with telemetry off, Prometheus, OTLP"
        measure off "${PIN[@]}" "$R/sluice" run "$WORK/flows.yaml" --flow "tel-off-$i-$RUN"
        measure prom "${PIN[@]}" "$R/sluice" run "$WORK/flows-prom.yaml" --flow "tel-prom-$i-$RUN"
        measure otlp "${PIN[@]}" "$R/sluice" run "$WORK/flows-otlp.yaml" --flow "tel-otlp-$i-$RUN"
    done
    python3 - "$WORK/measures" "$N" "$OUT/telemetry.md" "$WORK/otlp.jsonl" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
n, out = int(sys.argv[2]), sys.argv[3]
spans = sum(1 for l in open(sys.argv[4]) if '"signal": "span"' in l)
cpu = {k: [(float(r[2]) + float(r[3])) * 1e9 / n for r in rows if r[0] == k] for k in ("off", "prom", "otlp")}
wall = {k: [n / float(r[1]) for r in rows if r[0] == k] for k in ("off", "prom", "otlp")}
med = {k: statistics.median(v) for k, v in cpu.items()}
lines = [
    f"Job (b), kafka -> SQL -> kafka, {n} records, {len(cpu['off'])} alternating runs per variant.",
    "",
    "| telemetry | CPU ns/record (median) | runs (ns/record) | records/s (median) | CPU vs off |",
    "|---|---|---|---|---|",
]
labels = {"off": "off", "prom": "Prometheus (/metrics scraped each second)", "otlp": "OTLP, 1 % of records traced"}
for k in ("off", "prom", "otlp"):
    runs = ", ".join(f"{v:.0f}" for v in cpu[k])
    lines.append(f"| {labels[k]} | {med[k]:.0f} | {runs} | {statistics.median(wall[k]):.0f} | {100 * (med[k] / med['off'] - 1):+.1f} % |")
lines += ["", f"Spans received by the OTLP receiver: {spans}."]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
    exit 0
fi
echo "==> a. raw rdkafka pass-through";     measure a "$R/passthrough" "$BOOT" "bench.in.$RUN" "bench.a.$RUN" "$N"
echo "==> b. sluice kafka -> SQL -> kafka";  measure b "$R/sluice" run "$WORK/flows.yaml" --flow "b-$RUN"
echo "==> c. sluice kafka -> s3 parquet";    measure c "$R/sluice" run "$WORK/flows.yaml" --flow "c-$RUN"
echo "==> d. sluice generate -> kafka";      measure d "$R/sluice" run "$WORK/flows.yaml" --flow "d-$RUN"
if [ -n "$PEER" ]; then
    echo "==> e. Quix Streams kafka -> filter/project -> kafka"
    measure e "$VENV/bin/python" bench/peer/quix_job.py "$BOOT" "bench.in.$RUN" "bench.e.$RUN" "$(passing "$N")"
fi

# lat NAME RATE INPUT EXPECT READER… -- RUNNER…: runs RUNNER as a continuous job, waits until it
# holds its partitions, starts READER (which counts EXPECT records and prints the latency line),
# then offers RATE records/s for 20 s on INPUT (none when INPUT is "-": the runner makes its own).
lat() {
    local name=$1 rate=$2 input=$3; shift 3
    local reader=() runner=()
    while [ "$1" != "--" ]; do reader+=("$1"); shift; done; shift; runner=("$@")
    echo "==> latency of $name at $rate records/s"
    # The input topic made first: a worker subscribed to a topic that does not exist yet waits
    # for metadata refreshes (about a minute) before it is assigned anything.
    if [ "$input" != - ]; then "$R/loadgen" "$BOOT" "$input" 0 >/dev/null; fi
    "${runner[@]}" >/dev/null 2>"$WORK/lat-$name.log" & local rpid=$!; PIDS+=($rpid)
    wait_for "$WORK/lat-$name.log" "partitions assigned" || true
    "${reader[@]}" > "$WORK/lat-$name.txt" 2>"$WORK/lat-$name.err" & local lpid=$!
    wait_for "$WORK/lat-$name.err" ready || true
    if [ "$input" != - ]; then "$R/loadgen" "$BOOT" "$input" $(( rate * 20 )) "$rate" >/dev/null; fi
    wait "$lpid" || true
    kill -TERM "$rpid" 2>/dev/null || true; wait "$rpid" 2>/dev/null || true
    echo "$name $rate $(cat "$WORK/lat-$name.txt")" >> "$WORK/latency"
}
RA=$(( $(rate_of a) / 2 )); RB=$(( $(rate_of b) / 2 )); RC=$(( $(rate_of c) / 2 )); RD=$(( $(rate_of d) / 2 ))
flows "$RD" $(( RD * 20 ))
lat a "$RA" "bench.lata.in.$RUN" "$R/latency" "$BOOT" "bench.lata.out.$RUN" $(( RA * 20 )) 1000 \
    -- "$R/passthrough" "$BOOT" "bench.lata.in.$RUN" "bench.lata.out.$RUN" $(( RA * 20 ))
lat b "$RB" "bench.latb.in.$RUN" "$R/latency" "$BOOT" "bench.latb.out.$RUN" "$(passing $(( RB * 20 )))" 1000 \
    -- "$R/sluice" run "$WORK/flows.yaml" --flow "latb-$RUN"
lat c "$RC" "bench.latc.in.$RUN" "$R/filelat" "$WORK/s3/benchlat" $(( RC * 20 )) 1000 \
    -- "$R/sluice" run "$WORK/flows.yaml" --flow "latc-$RUN"
lat d "$RD" - "$R/latency" "$BOOT" "bench.latd.out.$RUN" $(( RD * 20 )) 1000 \
    -- "$R/sluice" run "$WORK/flows.yaml" --flow "latd-$RUN"
if [ -n "$PEER" ]; then
    RE=$(( $(rate_of e) / 2 ))
    lat e "$RE" "bench.late.in.$RUN" "$R/latency" "$BOOT" "bench.late.out.$RUN" "$(passing $(( RE * 20 )))" 1000 \
        -- env QUIX_SIGNAL_ASSIGNED=1 "$VENV/bin/python" bench/peer/quix_job.py "$BOOT" "bench.late.in.$RUN" "bench.late.out.$RUN" "$(passing $(( RE * 20 )))"
fi

if [ "$PEERS" = 1 ]; then run_peers; fi

# The embedded column: (a) and (b) on `sluice broker`, then the quickstart's flow (its broker in
# the sluice process, on disk) over N records.
if [ "$EMBEDDED" = 1 ]; then
    BOOT="$EBOOT" FLOWS="$WORK/flows-emb.yaml" flows
    echo "==> embedded broker: loading $N records into bench.in.$RUN"
    "$R/loadgen" "$EBOOT" "bench.in.$RUN" "$N"
    echo "==> a. raw rdkafka pass-through, embedded broker"
    measure a@emb "$R/passthrough" "$EBOOT" "bench.in.$RUN" "bench.a.$RUN" "$N"
    echo "==> b. sluice kafka -> SQL -> kafka, embedded broker"
    measure b@emb "$R/sluice" run "$WORK/flows-emb.yaml" --flow "b-$RUN"
    echo "==> q. the quickstart's flow, generate -> SQL -> file, embedded in the sluice process"
    sed -e "s|data_dir: .sluice/data|data_dir: $WORK/quickstart/data|" -e "s|path: out|path: $WORK/quickstart/out|" \
        -e "s|count: 100000|count: $N|" examples/quickstart.yaml > "$WORK/quickstart.yaml"
    measure q@emb "$R/sluice" run "$WORK/quickstart.yaml"
fi

python3 bench/report.py "$WORK/measures" "$WORK/latency" "$N" "$OUT"

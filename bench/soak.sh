#!/usr/bin/env bash
# The soak run (not CI): job (b) of bench/run.sh (kafka -> SQL -> kafka) and a CDC flow
# (postgres -> its changes topic), each continuous in a sluice process of its own, offered a
# steady load for DURATION seconds on one Apache Kafka node; every 10 s it samples each
# process's RSS and CPU and each flow's p50/p99 end-to-end latency over those 10 s.
#
#   bench/soak.sh [DURATION_S]     (default 3600)
#
# Load: SOAK_RATE_B records/s into job (b)'s topic (default 60000, about half its maximum in
# the last bench/run.sh, 133,111) and SOAK_RATE_CDC rows/s inserted into a table (default 20000, one
# transaction per second: a quarter of the CDC stream's maximum, 77,952, as inserting them takes
# PostgreSQL itself ≈ 0.4 s of each second on two cores). Latency: the record's own
# `sent_us` (the load generator's clock; for CDC, clock_timestamp() in the inserting
# transaction) against its arrival in the output topic (bench/src/latency.rs, windowed).
# At the end: the ledger (every record out: job (b)'s filter keeps a known count; every row in
# the changes topic), and bench/results/soak.csv, soak.png and soak.md, with each series' trend
# over the run (least squares after the first minute) against issue 18's "flat: no growth
# beyond 10 % over the hour".
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-3600}"
RATE_B="${SOAK_RATE_B:-60000}"
RATE_CDC="${SOAK_RATE_CDC:-20000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
echo "==> building (release)"
cargo build --release --quiet -p sluice-bench -p sluice --bins
R="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d)"
# On disk, not tmpfs, and records kept 2 minutes: an hour at these rates is tens of GB.
KAFKA_DIR="$WORK/kafka"
OUT="bench/results"
mkdir -p "$OUT"
RUN="soak$$"
T="soak_$RUN"
PIDS=()
psql_q() { psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -Atqc "$1"; }
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    scripts/kafka-cluster stop "$KAFKA_DIR" 2>/dev/null || true
    psql_q "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$T' AND NOT active" \
        >/dev/null 2>&1 || true
    psql_q "DROP PUBLICATION IF EXISTS $T; DROP TABLE IF EXISTS $T" >/dev/null 2>&1 || true
    rm -rf "$WORK" "$KAFKA_DIR"
}
trap cleanup EXIT

scripts/postgres-up
KAFKA_LIBS=$(scripts/kafka-libs)
echo "==> starting one Apache Kafka node"
BOOT=$(SLUICE_KAFKA_HEAP=1g SLUICE_KAFKA_RETENTION_MS=120000 scripts/kafka-cluster start "$KAFKA_LIBS" "$KAFKA_DIR" 1)
for p in "$KAFKA_DIR"/n*.pid; do PIDS+=("$(cat "$p")"); done
VENV="${SLUICE_BENCH_VENV:-$HOME/.cache/sluice-bench-venv}"
if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; }; then
    echo "==> installing matplotlib into $VENV (for the plot)"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet matplotlib
fi

SCHEMA='{id: int64, seq: int64, name: string, category: string, amount: int64, note: string, sent_us: int64}'
JOB='SELECT id, upper(name) AS name, category, amount, sent_us FROM source WHERE amount > 500'
psql_q "CREATE TABLE $T (id bigint PRIMARY KEY, sent_us bigint, name text, category text, amount bigint, note text)" >/dev/null
cat > "$WORK/flows.yaml" <<YAML
kafka: {bootstrap_servers: "$BOOT", options: {fetch.wait.max.ms: "10"}}
connections:
  bus: {type: kafka}
  wh: {type: postgres, database: postgres, user: postgres}
flows:
  - name: b-$RUN
    trigger: continuous
    source: {connection: bus, object: soak.in.$RUN, options: {format: json}, schema: $SCHEMA}
    transform: {sql: "$JOB"}
    destination: {connection: bus, object: soak.b.$RUN}
  - name: cdc-$RUN
    trigger: continuous
    source: {connection: wh, object: public.$T, options: {mode: cdc, slot: $T, publication: $T}}
    destination: {connection: bus, object: soak.cdc.$RUN}
YAML
TOTAL_B=$((RATE_B * DURATION))
TOTAL_CDC=$((RATE_CDC * DURATION))
KEPT_B=$(python3 -c "import sys; n=int(sys.argv[1]); print(sum(1 for i in range(n) if (i*7919)%1000 > 500))" "$TOTAL_B")

echo "==> starting job (b) and the CDC flow"
"$R/loadgen" "$BOOT" "soak.in.$RUN" 0 > /dev/null   # makes the input topic
"$R/sluice" run "$WORK/flows.yaml" --flow "b-$RUN" > "$WORK/b.log" 2>&1 & PB=$!; PIDS+=("$PB")
"$R/sluice" run "$WORK/flows.yaml" --flow "cdc-$RUN" > "$WORK/cdc.log" 2>&1 & PC=$!; PIDS+=("$PC")
# The CDC flow's changes topic is sluice.cdc-RUN.changes; readers start before the load.
"$R/latency" "$BOOT" "soak.b.$RUN" "$KEPT_B" 0 10 > "$WORK/lat-b.txt" 2>"$WORK/lat-b.err" & PIDS+=($!)
"$R/latency" "$BOOT" "sluice.cdc-$RUN.changes" "$TOTAL_CDC" 0 10 > "$WORK/lat-cdc.txt" 2>"$WORK/lat-cdc.err" & PIDS+=($!)
for _ in $(seq 1 300); do
    [ "$(psql_q "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$T' AND active")" = 1 ] && break
    sleep 0.2
done
sleep 5
echo "==> $DURATION s of load: $RATE_B records/s into job (b), $RATE_CDC rows/s inserted for CDC"
"$R/loadgen" "$BOOT" "soak.in.$RUN" "$TOTAL_B" "$RATE_B" > "$WORK/loadgen.log" 2>&1 & PL=$!; PIDS+=("$PL")
(
    start=$(date +%s)
    for s in $(seq 0 $((DURATION - 1))); do
        psql_q "INSERT INTO $T SELECT i, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 'name-' || i,
                'cat-' || (i % 17), (i::bigint * 7919) % 1000, repeat('n', 120) FROM generate_series($((s * RATE_CDC + 1)), $(((s + 1) * RATE_CDC))) i" >/dev/null
        # One transaction per second, on the clock (a slow insert does not shift the rest).
        now=$(date +%s.%N)
        sleep "$(python3 -c "print(max(0, $start + $s + 1 - $now))")"
    done
) & PW=$!; PIDS+=("$PW")
# Samples every 10 s: time, then per process RSS (MB) and CPU (% of one core over the 10 s).
python3 - "$PB" "$PC" "$DURATION" > "$WORK/samples.txt" <<'PY'
import os, sys, time
pids, duration = sys.argv[1:3], float(sys.argv[3])
tick = os.sysconf("SC_CLK_TCK")
def cpu(p):
    f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
def rss(p):
    for line in open(f"/proc/{p}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
last = [cpu(p) for p in pids]
start = time.time()
while time.time() - start < duration:
    time.sleep(10)
    now = [cpu(p) for p in pids]
    row = [int(time.time())]
    for i, p in enumerate(pids):
        row += [round(rss(p), 1), round(100 * (now[i] - last[i]) / 10, 1)]
    last = now
    print(*row, flush=True)
PY
wait "$PW" "$PL"
echo "==> load done; waiting for every record"
# The ledger from sluice's own run records (`sluice status`: read = delivered + filtered + DLQ +
# dropped + in flight), as the topics keep records only 2 minutes: delivered must reach the
# count expected, within 2 minutes.
delivered() {
    "$R/sluice" status "$WORK/flows.yaml" 2>/dev/null | grep -A1 "^flow $1:" | sed -n 's/.*= delivered \([0-9]*\) .*/\1/p'
}
wait_delivered() {
    for _ in $(seq 1 120); do [ "$(delivered "$1")" = "$2" ] && { echo yes; return; }; sleep 1; done
    echo "no ($(delivered "$1") delivered)"
}
B_OK=$(wait_delivered "b-$RUN" "$KEPT_B")
CDC_OK=$(wait_delivered "cdc-$RUN" "$TOTAL_CDC")
"$R/sluice" status "$WORK/flows.yaml" > "$OUT/soak-ledger.txt" 2>&1 || true
sleep 12
python3 bench/soak_report.py "$WORK" "$OUT" "$DURATION" "$RATE_B" "$RATE_CDC" "$KEPT_B:$B_OK" "$TOTAL_CDC:$CDC_OK" "$VENV/bin/python"

#!/usr/bin/env bash
# sluice's benchmark harness: one run, one broker, the same generated data for every runner.
#
#   bench/run.sh [RECORDS]                 (default 500000; ≈ 200-byte JSON records)
#
# Runners, each measured for wall time, CPU (user+sys of its process) and peak RSS:
#   a. raw rdkafka pass-through (bench/src/passthrough.rs): topic -> topic, payload untouched
#   b. sluice: kafka topic -> SQL (WHERE amount > 500, 4 columns, upper(name)) -> kafka topic
#   c. sluice: kafka topic -> s3 (Parquet) on a loopback s3s-fs
#   d. sluice: generate -> kafka topic (source throughput)
# then the end-to-end latency of (b) as a continuous flow at half of (b)'s measured rate
# (p50/p99 of arrival minus the send time carried in each record).
#
# The broker is `sluice broker` on loopback with its log in a temporary directory, or an external
# cluster given by SLUICE_BENCH_KAFKA=host:port. (Not `--memory`: tansu 0.6's memory engine served
# ≈ 0.8 % fewer records than it acknowledged at 200,000 records, so counts would not balance.) Results: bench/results/latest.json and latest.md (and printed).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-500000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
echo "==> building (release)"
cargo build --release --quiet -p sluice-bench --bins
cargo build --release --quiet --bin sluice
R="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d)"
OUT="bench/results"
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

if [ -n "${SLUICE_BENCH_KAFKA:-}" ]; then
    BOOT="$SLUICE_BENCH_KAFKA"
else
    KPORT=$(port)
    "$R/sluice" broker --data-dir "$WORK/broker" --listen "127.0.0.1:$KPORT" >/dev/null 2>&1 & PIDS+=($!)
    wait_port "$KPORT"
    BOOT="127.0.0.1:$KPORT"
fi
SPORT=$(port); mkdir -p "$WORK/s3/bench"
"${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" --host 127.0.0.1 --port "$SPORT" --access-key bench --secret-key bench-secret "$WORK/s3" >/dev/null 2>&1 & PIDS+=($!)
wait_port "$SPORT"
RUN="run$$"

# measure NAME CMD…: runs CMD, appends "name wall user sys maxrss_kb" to $WORK/measures.
measure() {
    local name=$1; shift
    python3 - "$name" "$WORK/measures" "$@" <<'EOF'
import resource, subprocess, sys, time
name, out, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
t = time.time()
p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
wall = time.time() - t
r = resource.getrusage(resource.RUSAGE_CHILDREN)
if p.returncode != 0:
    sys.stderr.write(f"{name} failed ({p.returncode}):\n{p.stderr[-2000:]}\n"); sys.exit(1)
open(out, "a").write(f"{name} {wall} {r.ru_utime} {r.ru_stime} {r.ru_maxrss}\n")
EOF
}

cat > "$WORK/flows.yaml" <<EOF
kafka: {bootstrap_servers: "$BOOT"}
connections:
  bus: {type: kafka}
  gen: {type: generate}
  lake: {type: s3, endpoint: "http://127.0.0.1:$SPORT", path_style: true, access_key_id: bench, secret_access_key: bench-secret}
flows:
  - name: b-$RUN
    source:
      connection: bus
      object: bench.in.$RUN
      options: {format: json}
      schema: {id: int64, seq: int64, name: string, category: string, amount: int64, note: string, sent_us: int64}
    transform:
      sql: SELECT id, upper(name) AS name, category, amount, sent_us FROM source WHERE amount > 500
    destination: {connection: bus, object: bench.b.$RUN}
  - name: c-$RUN
    source:
      connection: bus
      object: bench.in.$RUN
      options: {format: json}
      schema: {id: int64, seq: int64, name: string, category: string, amount: int64, note: string, sent_us: int64}
    destination: {connection: lake, object: bench, options: {format: parquet}}
  - name: d-$RUN
    source: {connection: gen, object: orders, options: {count: $N, keys: 50000}}
    destination: {connection: bus, object: bench.d.$RUN}
  - name: lat-$RUN
    trigger: continuous
    source: {connection: bus, object: bench.lat.$RUN, options: {format: json}, schema: {id: int64, seq: int64, name: string, category: string, amount: int64, note: string, sent_us: int64}}
    transform:
      sql: SELECT id, upper(name) AS name, category, amount, sent_us FROM source WHERE amount > 500
    destination: {connection: bus, object: bench.latout.$RUN}
EOF

echo "==> loading $N records into bench.in.$RUN"
"$R/loadgen" "$BOOT" "bench.in.$RUN" "$N"
BYTES=$(( N * 200 ))
echo "==> a. raw rdkafka pass-through";     measure a "$R/passthrough" "$BOOT" "bench.in.$RUN" "bench.a.$RUN" "$N"
echo "==> b. sluice kafka -> SQL -> kafka";  measure b "$R/sluice" run "$WORK/flows.yaml" --flow "b-$RUN"
echo "==> c. sluice kafka -> s3 parquet";    measure c "$R/sluice" run "$WORK/flows.yaml" --flow "c-$RUN"
echo "==> d. sluice generate -> kafka";      measure d "$R/sluice" run "$WORK/flows.yaml" --flow "d-$RUN"

# Latency: (b) as a continuous flow, offered half of (b)'s measured rate for ≈ 20 s.
B_RATE=$(awk -v n="$N" '$1=="b" {printf "%d", n/$2}' "$WORK/measures")
RATE=$(( B_RATE / 2 ))
LN=$(( RATE * 20 ))
echo "==> latency at $RATE records/s ($LN records)"
"$R/sluice" run "$WORK/flows.yaml" --flow "lat-$RUN" >/dev/null 2>"$WORK/lat.log" & LAT=$!; PIDS+=($LAT)
sleep 3   # the worker joins its group before the load starts
"$R/latency" "$BOOT" "bench.latout.$RUN" $(( LN * 490 / 1000 )) > "$WORK/latency.txt" & READER=$!
"$R/loadgen" "$BOOT" "bench.lat.$RUN" "$LN" "$RATE" >/dev/null
wait "$READER" || true
kill -TERM "$LAT" 2>/dev/null || true

python3 - "$WORK/measures" "$WORK/latency.txt" "$N" "$RATE" "$OUT" <<'EOF'
import json, sys, re, platform, os, datetime
measures, latfile, n, rate, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
names = {"a": "raw rdkafka pass-through", "b": "sluice kafka -> SQL -> kafka", "c": "sluice kafka -> s3 parquet", "d": "sluice generate -> kafka"}
rows = {}
for line in open(measures):
    k, wall, user, sys_, rss = line.split()
    wall, user, sys_, rss = float(wall), float(user), float(sys_), int(rss)
    rows[k] = {"runner": names[k], "records": n, "wall_s": round(wall, 2), "records_per_s": round(n / wall),
               "mb_per_s": round(n * 200 / wall / 1e6, 1), "cpu_s_per_million": round((user + sys_) / n * 1e6, 2),
               "cpu_us_per_record": round((user + sys_) / n * 1e6, 2), "peak_rss_mb": round(rss / 1024, 1)}
lat = open(latfile).read().strip()
m = re.search(r"(\d+) records, p50 ([\d.]+) ms, p99 ([\d.]+) ms", lat)
latency = {"offered_rate": rate, "records": int(m.group(1)), "p50_ms": float(m.group(2)), "p99_ms": float(m.group(3))} if m else {"raw": lat}
ratio = rows["b"]["records_per_s"] / rows["a"]["records_per_s"] if "a" in rows and "b" in rows else None
cpu_ratio = rows["b"]["cpu_us_per_record"] / rows["a"]["cpu_us_per_record"] if ratio else None
result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "machine": f"{os.cpu_count()} cores, {platform.machine()}",
          "runners": list(rows.values()), "latency_b": latency, "b_over_a_rate": round(ratio, 3) if ratio else None,
          "b_over_a_cpu": round(cpu_ratio, 2) if cpu_ratio else None}
json.dump(result, open(f"{out}/latest.json", "w"), indent=2)
md = ["| runner | wall rec/s | MB/s | CPU s per million | peak RSS MB |", "|---|---|---|---|---|"]
for r in rows.values():
    md.append(f"| {r['runner']} | {r['records_per_s']:,} | {r['mb_per_s']} | {r['cpu_s_per_million']} | {r['peak_rss_mb']} |")
md.append("")
md.append(f"Latency of (b) at {rate:,} records/s offered: " + (f"p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms" if "p50_ms" in latency else lat))
if ratio:
    md.append(f"(b)/(a): wall rate {ratio:.2f}, CPU per record {cpu_ratio:.2f}x")
open(f"{out}/latest.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF

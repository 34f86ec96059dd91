#!/usr/bin/env bash
# End-to-end throughput of each connector on this machine, with a release build:
#
#   bench/connectors.sh [RECORDS]        (default 200000)
#
# Runs, one after the other, on an in-memory `sluice broker`, the machine's PostgreSQL, an s3s-fs
# server and a small Python HTTP server on loopback:
#   generate -> file, generate -> kafka topic, kafka topic -> file, generate -> s3 (Parquet),
#   generate -> postgres (upsert), generate -> http (POST JSON arrays),
#   postgres table -> file (incremental pull), postgres CDC -> file (changes of one bulk insert),
#   http API (paged) -> file.
# Each line printed is the flow's own summary (records read / wall time, process start included),
# or for CDC the time from the insert's commit until the last change is in the file.
# Needs what `scripts/test` installs (PostgreSQL with wal_level=logical, s3s-fs).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-200000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
cargo build --release --quiet --bin sluice
BIN="$CARGO_TARGET_DIR/release/sluice"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

KPORT=$(port); "$BIN" broker --data-dir "$WORK/broker" --listen "127.0.0.1:$KPORT" >/dev/null 2>&1 & PIDS+=($!)
SPORT=$(port); mkdir -p "$WORK/s3/bench-lake"
"${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" --host 127.0.0.1 --port "$SPORT" --access-key bench --secret-key bench-secret "$WORK/s3" >/dev/null 2>&1 & PIDS+=($!)
HPORT=$(port)
cat > "$WORK/bench_http.py" <<'EOF'
import json, sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from urllib.parse import urlparse, parse_qs
N = int(sys.argv[2]); PAGE = 1000
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_GET(self):
        page = int(parse_qs(urlparse(self.path).query).get("page", ["1"])[0])
        lo = (page - 1) * PAGE
        items = [{"id": i, "name": "item %d" % i, "amount": i % 1000} for i in range(lo, min(lo + PAGE, N))]
        body = json.dumps({"items": items}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
python3 "$WORK/bench_http.py" "$HPORT" "$N" & PIDS+=($!)
wait_port "$KPORT"; wait_port "$SPORT"; wait_port "$HPORT"

PG="psql -h 127.0.0.1 -U postgres -d postgres -qAt"
T="bench_$$"
$PG -c "DROP TABLE IF EXISTS ${T}_in, ${T}_out, ${T}_cdc" \
    -c "CREATE TABLE ${T}_in AS SELECT g AS id, 'name ' || g AS name, (g % 1000)::bigint AS amount, now() AS updated_at FROM generate_series(1, $N) g" \
    -c "CREATE TABLE ${T}_cdc (id bigint PRIMARY KEY, name text, amount bigint)"

cat > "$WORK/bench.yaml" <<EOF
kafka: {bootstrap_servers: "127.0.0.1:$KPORT"}
connections:
  gen: {type: generate}
  files: {type: file, path: $WORK/out}
  bus: {type: kafka}
  lake: {type: s3, endpoint: "http://127.0.0.1:$SPORT", allow_private_addresses: true, path_style: true, access_key_id: bench, secret_access_key: bench-secret}
  pg: {type: postgres, database: postgres, user: postgres}
  web: {type: http, url: "http://127.0.0.1:$HPORT", allow_private_addresses: true}
flows:
  - name: gen_file
    source: {connection: gen, object: orders, options: {count: $N, keys: 50000}}
    destination: {connection: files, object: gen.jsonl}
  - name: gen_kafka
    source: {connection: gen, object: orders, options: {count: $N, keys: 50000}}
    destination: {connection: bus, object: bench-orders}
  - name: kafka_file
    source: {connection: bus, object: bench-orders, options: {format: json}, schema: {id: int64, seq: int64, name: string, amount: int64}}
    destination: {connection: files, object: kafka.jsonl}
  - name: gen_s3
    source: {connection: gen, object: orders, options: {count: $N, keys: 50000}}
    destination: {connection: lake, object: bench-lake, options: {format: parquet}}
  - name: gen_pg
    source: {connection: gen, object: orders, options: {count: $N, keys: 50000}}
    transform: {sql: "SELECT id, seq, name, amount, _op FROM source"}
    destination: {connection: pg, object: ${T}_out, options: {mode: upsert, key: [id], create_table: true}}
  - name: gen_http
    source: {connection: gen, object: orders, options: {count: $N, keys: 50000}}
    destination: {connection: web, object: /ingest, options: {max_rows: 1000}}
  - name: pg_pull
    source: {connection: pg, object: ${T}_in, options: {mode: incremental, cursor: id, key: [id]}, schema: {id: int64, name: string, amount: int64}}
    destination: {connection: files, object: pull.jsonl}
  - name: http_pull
    source:
      connection: web
      object: /items
      options: {records: /items, key: [id], pagination: {type: page, param: page, size: 1000}}
      schema: {id: int64, name: string, amount: int64}
    destination: {connection: files, object: http.jsonl}
  - name: pg_cdc
    trigger: continuous
    source: {connection: pg, object: public.${T}_cdc, options: {mode: cdc, slot: ${T}_slot, publication: ${T}_pub}, schema: {id: int64, name: string, amount: int64}}
    destination: {connection: files, object: cdc.jsonl}
EOF

echo "sluice connector throughput: $N records each, release build, $(nproc) cores"
for f in gen_file gen_kafka kafka_file gen_s3 gen_pg gen_http pg_pull http_pull; do
    "$BIN" run "$WORK/bench.yaml" --flow "$f" 2>"$WORK/$f.log" | grep '^flow ' || { echo "$f failed:"; tail -5 "$WORK/$f.log"; }
done

# CDC: start the flow, wait for its slot, insert N rows in one transaction, time their arrival.
"$BIN" run "$WORK/bench.yaml" --flow pg_cdc >/dev/null 2>"$WORK/cdc.log" & CDC=$!; PIDS+=($CDC)
for _ in $(seq 1 100); do [ "$($PG -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '${T}_slot'")" = 1 ] && break; sleep 0.2; done
start=$(date +%s.%N)
$PG -c "INSERT INTO ${T}_cdc SELECT g, 'name ' || g, g % 1000 FROM generate_series(1, $N) g"
committed=$(date +%s.%N)
until [ "$(wc -l < "$WORK/out/cdc.jsonl" 2>/dev/null || echo 0)" -ge "$N" ]; do
    kill -0 "$CDC" 2>/dev/null || { echo "pg_cdc failed:"; tail -5 "$WORK/cdc.log"; break; }
    sleep 0.2
done
done_at=$(date +%s.%N)
python3 -c "print('flow pg_cdc: $N changes of one INSERT in %.2f s after its commit (%.0f records/s)' % ($done_at - $committed, $N / ($done_at - $committed)))"
kill -TERM "$CDC"; wait "$CDC" 2>/dev/null || true
$PG -c "SELECT pg_drop_replication_slot('${T}_slot')" -c "DROP PUBLICATION IF EXISTS ${T}_pub" \
    -c "DROP TABLE IF EXISTS ${T}_in, ${T}_out, ${T}_cdc" >/dev/null

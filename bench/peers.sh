# The JVM peers and the CDC runs of bench/run.sh (sourced by it, after its helpers, with BOOT,
# WORK, R, N, RUN, PIDS and `measure` set):
#   f. Kafka Connect (standalone worker, FileStreamSink, ReplaceField keeping 4 fields):
#      topic -> file, against
#   g. sluice: kafka topic -> SQL (the same 4 fields) -> file;
#   h. Debezium's PostgreSQL connector (pgoutput) in that worker: snapshot of an N-row table
#      into a topic, against
#   i. sluice: postgres CDC, the same snapshot into its changes topic;
#   j. / k. the same two, streaming one N-row INSERT transaction (timed from its commit).
# CDC runs are timed until the N-th record is in the topic (bench/src/topicwait.rs, which reads
# committed records only), with the runner's CPU and peak RSS over that phase (bench/phase.py).
# Both CDC runners publish JSON without schemas, one record per row.

# Fetches the Connect worker and the Debezium connector from Maven Central once
# (~/.cache/sluice-connect/<version>); sets CONNECT_HOME.
connect_peer_libs() {
    local v
    v=$(sed -n 's:.*<connect.version>\(.*\)</connect.version>.*:\1:p' bench/peer/connect/pom.xml)
    CONNECT_HOME="$HOME/.cache/sluice-connect/$v"
    if ! [ -f "$CONNECT_HOME/libs/connect-runtime-$v.jar" ]; then
        echo "==> downloading Kafka Connect $v from Maven Central"
        mvn -q -B -f bench/peer/connect/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="$CONNECT_HOME/libs"
    fi
    if ! ls "$CONNECT_HOME"/plugins/debezium/debezium-connector-postgres-*.jar >/dev/null 2>&1; then
        echo "==> downloading the Debezium PostgreSQL connector from Maven Central"
        # The connector is a plugin (its own class loader), without the Kafka jars the worker has.
        mvn -q -B -f bench/peer/connect/pom.xml -P 'debezium,!worker' dependency:copy-dependencies \
            -DincludeScope=runtime -DexcludeGroupIds=org.apache.kafka -DoutputDirectory="$CONNECT_HOME/plugins/debezium"
    fi
}

# connect_worker NAME CONNECTOR_PROPS [PLUGIN_PATH]: writes $WORK/NAME.sh, which runs (exec: the
# same PID) a standalone worker with one connector, and prints its path. The plugin path only
# where a connector lives there: scanning it costs the worker seconds of its start. JSON without
# schemas for values (both peers' input and output); keys as strings unless the connector says.
# Heap and collector as Kafka's connect-standalone.sh sets them.
connect_worker() {
    local name=$1 props=$2
    cat > "$WORK/$name-worker.properties" <<PROPS
bootstrap.servers=$BOOT
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=false
offset.storage.file.filename=$WORK/$name.offsets
offset.flush.interval.ms=10000
${3:+plugin.path=$3}
listeners=http://127.0.0.1:$(port)
PROPS
    cat > "$WORK/$name.sh" <<SH
exec java -Xms256M -Xmx2G -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \\
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true -Dorg.slf4j.simpleLogger.defaultLogLevel=info \\
    -cp "$CONNECT_HOME/libs/*" org.apache.kafka.connect.cli.ConnectStandalone \\
    "$WORK/$name-worker.properties" "$props"
SH
    echo "$WORK/$name.sh"
}

psql_q() { psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -Atqc "$1"; }

# The rows both CDC runners capture: ≈ 200 bytes each, like the Kafka runners' records.
CDC_COLUMNS="id bigint PRIMARY KEY, seq bigint, name text, category text, amount bigint, note text"
cdc_rows() {  # cdc_rows TABLE COUNT: one INSERT … SELECT, one transaction
    echo "INSERT INTO $1 SELECT i, i, 'customer-' || (i % 50000), 'cat-' || (i % 17), (i::bigint * 7919) % 1000, repeat('n', 120) FROM generate_series(1, $2) AS i"
}
cdc_cleanup() {
    for s in dbz_snap_$RUN sl_snap_$RUN dbz_stream_$RUN sl_stream_$RUN; do
        psql_q "SELECT pg_drop_replication_slot('$s') FROM pg_replication_slots WHERE slot_name = '$s' AND NOT active" >/dev/null 2>&1 || true
    done
    for p in dbz_snap_$RUN sl_snap_$RUN dbz_stream_$RUN sl_stream_$RUN; do psql_q "DROP PUBLICATION IF EXISTS $p" >/dev/null 2>&1 || true; done
    for t in bench_snap_$RUN bench_sdbz_$RUN bench_ssl_$RUN; do psql_q "DROP TABLE IF EXISTS $t" >/dev/null 2>&1 || true; done
}

# debezium_props NAME TABLE SLOT PREFIX: the connector's properties file, printed as its path.
debezium_props() {
    cat > "$WORK/$1.properties" <<PROPS
name=$1
connector.class=io.debezium.connector.postgresql.PostgresConnector
tasks.max=1
plugin.name=pgoutput
database.hostname=127.0.0.1
database.port=5432
database.user=postgres
database.password=
database.dbname=postgres
topic.prefix=$4
table.include.list=public.$2
slot.name=$3
publication.name=$3
publication.autocreate.mode=filtered
snapshot.mode=initial
key.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=false
PROPS
    echo "$WORK/$1.properties"
}

# sluice_cdc_flow NAME TABLE SLOT: a continuous CDC flow (columns from the catalog) to a file.
sluice_cdc_flow() {
    cat >> "$WORK/flows.yaml" <<YAML
  - name: $1
    trigger: continuous
    source: {connection: wh, object: public.$2, options: {mode: cdc, slot: $3, publication: $3}}
    destination: {connection: files, object: $1.jsonl}
YAML
}

run_peers() {
    connect_peer_libs
    # f / g: topic -> file, 4 fields kept.
    cat > "$WORK/file-sink.properties" <<PROPS
name=file-$RUN
connector.class=org.apache.kafka.connect.file.FileStreamSinkConnector
tasks.max=1
topics=bench.in.$RUN
file=$WORK/connect-out.txt
transforms=keep
transforms.keep.type=org.apache.kafka.connect.transforms.ReplaceField\$Value
transforms.keep.include=id,name,category,amount
PROPS
    echo "==> f. Kafka Connect kafka -> file (ReplaceField, 4 fields)"
    python3 bench/phase.py f "$WORK/measures" "$WORK/connect-file.log" --wait-lines "$WORK/connect-out.txt" "$N" \
        -- bash "$(connect_worker file "$WORK/file-sink.properties")"
    echo "==> g. sluice kafka -> file (the same 4 fields)"
    measure g "$R/sluice" run "$WORK/flows.yaml" --flow "g-$RUN"

    cdc_cleanup
    psql_q "CREATE TABLE bench_snap_$RUN ($CDC_COLUMNS); CREATE TABLE bench_sdbz_$RUN ($CDC_COLUMNS);
            CREATE TABLE bench_ssl_$RUN ($CDC_COLUMNS); $(cdc_rows "bench_snap_$RUN" "$N")" >/dev/null
    sluice_cdc_flow "cdcsnap-$RUN" "bench_snap_$RUN" "sl_snap_$RUN"
    sluice_cdc_flow "cdcstream-$RUN" "bench_ssl_$RUN" "sl_stream_$RUN"
    local tw="$R/topicwait $BOOT"
    echo "==> h. Debezium snapshot of $N rows"
    python3 bench/phase.py h "$WORK/measures" "$WORK/dbz-snap.log" --wait "$tw dbzsnap$RUN.public.bench_snap_$RUN $N" \
        -- bash "$(connect_worker dbzsnap "$(debezium_props "dbz-snap-$RUN" "bench_snap_$RUN" "dbz_snap_$RUN" "dbzsnap$RUN")" "$CONNECT_HOME/plugins")"
    echo "==> i. sluice CDC snapshot of $N rows"
    python3 bench/phase.py i "$WORK/measures" "$WORK/sl-snap.log" --wait "$tw sluice.cdcsnap-$RUN.changes $N" \
        -- "$R/sluice" run "$WORK/flows.yaml" --flow "cdcsnap-$RUN"
    echo "==> j. Debezium streaming one $N-row transaction"
    python3 bench/phase.py j "$WORK/measures" "$WORK/dbz-stream.log" --ready-slot "dbz_stream_$RUN" --settle 5 \
        --before "psql -h 127.0.0.1 -U postgres -d postgres -qc \"$(cdc_rows "bench_sdbz_$RUN" "$N")\"" \
        --wait "$tw dbzstream$RUN.public.bench_sdbz_$RUN $N" \
        -- bash "$(connect_worker dbzstream "$(debezium_props "dbz-stream-$RUN" "bench_sdbz_$RUN" "dbz_stream_$RUN" "dbzstream$RUN")" "$CONNECT_HOME/plugins")"
    echo "==> k. sluice CDC streaming one $N-row transaction"
    python3 bench/phase.py k "$WORK/measures" "$WORK/sl-stream.log" --ready-slot "sl_stream_$RUN" --settle 5 \
        --before "psql -h 127.0.0.1 -U postgres -d postgres -qc \"$(cdc_rows "bench_ssl_$RUN" "$N")\"" \
        --wait "$tw sluice.cdcstream-$RUN.changes $N" \
        -- "$R/sluice" run "$WORK/flows.yaml" --flow "cdcstream-$RUN"
    cdc_cleanup
}

#!/usr/bin/env python3
"""Writes bench/run.sh's results: OUT/latest.json and OUT/latest.md (also printed).

    report.py MEASURES LATENCY RECORDS OUT

MEASURES holds "name wall user sys peak_rss_kb" lines (bench/run.sh's `measure`, or
bench/phase.py), LATENCY "name offered_rate latency: …" lines; a runner missing from either is
left out of the tables (and its targets shown as not measured).
"""
import datetime, json, os, platform, re, sys

NAMES = {
    "a": "raw rdkafka pass-through",
    "b": "sluice kafka -> SQL -> kafka",
    "c": "sluice kafka -> s3 parquet",
    "d": "sluice generate -> kafka",
    "e": "Quix Streams (Python) kafka -> filter/project -> kafka",
    "f": "Kafka Connect kafka -> file (ReplaceField, 4 fields)",
    "g": "sluice kafka -> file (SQL, 4 fields)",
    "h": "Debezium postgres snapshot -> kafka",
    "i": "sluice postgres CDC snapshot -> kafka",
    "j": "Debezium postgres one-transaction stream -> kafka",
    "k": "sluice postgres CDC one-transaction stream -> kafka",
    "a@emb": "raw rdkafka pass-through",
    "b@emb": "sluice kafka -> SQL -> kafka",
    "q@emb": "the quickstart: generate -> SQL -> file (`kafka: embedded`)",
}


def main():
    measures, latfile, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    lat = {}
    if os.path.exists(latfile):
        for line in open(latfile):
            k, rate, rest = line.split(" ", 2)
            m = re.search(r"(\d+) records, p50 ([\d.]+) ms, p99 ([\d.]+) ms", rest)
            lat[k] = ({"offered_rate": int(rate), "records": int(m.group(1)), "p50_ms": float(m.group(2)),
                       "p99_ms": float(m.group(3))} if m else {"offered_rate": int(rate), "raw": rest.strip()})
    rows = {}
    for line in open(measures):
        k, wall, user, sys_, rss = line.split()
        wall, user, sys_, rss = float(wall), float(user), float(sys_), int(rss)
        rows[k] = {"key": k, "runner": NAMES.get(k, k), "records": n, "wall_s": round(wall, 2),
                   "records_per_s": round(n / wall), "mb_per_s": round(n * 200 / wall / 1e6, 1),
                   "cpu_s_per_million": round((user + sys_) / n * 1e6, 2), "peak_rss_mb": round(rss / 1024, 1),
                   "latency": lat.get(k)}
    # The quickstart's own summary line ("… (N records/s)"): its flow's rate, start-up excluded.
    q_out = f"{measures}.q@emb.out"
    if "q@emb" in rows and os.path.exists(q_out):
        m = re.search(r"\((\d+) records/s\)", open(q_out).read())
        if m:
            rows["q@emb"]["summary_records_per_s"] = int(m.group(1))

    def get(k, field):
        return rows[k][field] if k in rows else None

    def ratio(x, y):
        return round(x / y, 2) if x is not None and y else None

    p99b = (get("b", "latency") or {}).get("p99_ms")
    quick = get("q@emb", "summary_records_per_s") or get("q@emb", "records_per_s")
    targets = [
        ("sluice (b) wall rate / raw (a), ≥ 0.95", ratio(get("b", "records_per_s"), get("a", "records_per_s")), lambda v: v >= 0.95),
        ("sluice (b) CPU per record / raw (a), ≤ 1.25", ratio(get("b", "cpu_s_per_million"), get("a", "cpu_s_per_million")), lambda v: v <= 1.25),
        ("Kafka Connect (f) CPU per record / sluice (g), ≥ 3", ratio(get("f", "cpu_s_per_million"), get("g", "cpu_s_per_million")), lambda v: v >= 3),
        ("sluice (g) wall rate / Kafka Connect (f), ≥ 1", ratio(get("g", "records_per_s"), get("f", "records_per_s")), lambda v: v >= 1),
        ("sluice CDC snapshot (i) rate / Debezium (h), ≥ 2", ratio(get("i", "records_per_s"), get("h", "records_per_s")), lambda v: v >= 2),
        ("sluice CDC snapshot (i) peak RSS / Debezium (h), ≤ 0.25", ratio(get("i", "peak_rss_mb"), get("h", "peak_rss_mb")), lambda v: v <= 0.25),
        ("sluice CDC stream (k) rate / Debezium (j), ≥ 2", ratio(get("k", "records_per_s"), get("j", "records_per_s")), lambda v: v >= 2),
        ("sluice CDC stream (k) peak RSS / Debezium (j), ≤ 0.25", ratio(get("k", "peak_rss_mb"), get("j", "peak_rss_mb")), lambda v: v <= 0.25),
        ("sluice (b) p99 latency at half its rate, ms, ≤ 100", p99b, lambda v: v <= 100),
        ("the quickstart on the embedded broker, records/s, ≥ 50,000", quick, lambda v: v >= 50000),
    ]
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}", "records": n,
        "runners": list(rows.values()),
        "targets": [{"target": t, "figure": v, "met": (ok(v) if v is not None else None)} for t, v, ok in targets],
    }
    json.dump(result, open(f"{out}/latest.json", "w"), indent=2)

    md = [f"{n:,} records (rows) of ≈ 200 bytes each runner. Latency at half of each runner's rate, offered for 20 s.", ""]
    kafka = [k for k in "abcdefg" if k in rows]
    if kafka:
        md += ["On Apache Kafka (one node):", "",
               "| runner | wall rec/s | MB/s | CPU s per million | peak RSS MB | latency offered rec/s | p50 ms | p99 ms |",
               "|---|---|---|---|---|---|---|---|"]
        for k in kafka:
            r, l = rows[k], rows[k]["latency"] or {}
            offered = f"{l['offered_rate']:,}" if "offered_rate" in l else "–"
            md.append(f"| ({k}) {r['runner']} | {r['records_per_s']:,} | {r['mb_per_s']} | {r['cpu_s_per_million']} "
                      f"| {r['peak_rss_mb']} | {offered} | {l.get('p50_ms', '–')} | {l.get('p99_ms', '–')} |")
        md.append("")
    cdc = [k for k in "hijk" if k in rows]
    if cdc:
        md += ["Change data capture on Apache Kafka: from the runner's start (snapshot) or the transaction's commit (stream) "
               "to the last record in the topic; CPU and peak RSS of the runner's process.", "",
               "| runner | seconds | rows/s | CPU s per million | peak RSS MB |", "|---|---|---|---|---|"]
        for k in cdc:
            r = rows[k]
            md.append(f"| ({k}) {r['runner']} | {r['wall_s']} | {r['records_per_s']:,} | {r['cpu_s_per_million']} | {r['peak_rss_mb']} |")
        md.append("")
    emb = [k for k in ("a@emb", "b@emb", "q@emb") if k in rows]
    if emb:
        md += ["On the embedded broker (`sluice broker`, SQLite on disk):", "",
               "| runner | wall rec/s | CPU s per million | peak RSS MB |", "|---|---|---|---|"]
        for k in emb:
            r = rows[k]
            rate = f"{r['records_per_s']:,}"
            if "summary_records_per_s" in r:
                rate += f" ({r['summary_records_per_s']:,} by its summary line)"
            md.append(f"| ({k}) {r['runner']} | {rate} | {r['cpu_s_per_million']} | {r['peak_rss_mb']} |")
        md.append("")
    md += ["Targets:", "", "| target | figure | met |", "|---|---|---|"]
    for t in result["targets"]:
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")
        md.append(f"| {t['target']} | {t['figure'] if t['figure'] is not None else '–'} | {met} |")
    open(f"{out}/latest.md", "w").write("\n".join(md) + "\n")
    print("\n".join(md))


main()

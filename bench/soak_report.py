"""The soak run's report (bench/soak.sh): samples and latency windows joined into soak.csv,
a plot into soak.png (matplotlib, from the bench virtualenv), and soak.md with each series'
trend and the ledger.

    soak_report.py WORK OUT DURATION RATE_B RATE_CDC KEPT_B:OK TOTAL_CDC:OK VENV_PYTHON

A series is flat when its least-squares line over the run (after the first minute, while the
processes warm up) changes by at most 10 % of its mean from start to end.
"""

import json
import os
import subprocess
import sys

work, out, duration, rate_b, rate_cdc, ledger_b, ledger_cdc, venv_py = sys.argv[1:9]


def windows(name):
    """{unix second: (n, p50, p99)} from a windowed latency reader's output."""
    got = {}
    for line in open(os.path.join(work, f"lat-{name}.txt")):
        f = line.split()
        if f and f[0] == "window" and int(f[2]) > 0:
            got[int(f[1])] = (int(f[2]), float(f[3]), float(f[4]))
    return got


def nearest(table, t):
    """The window closest to time t (within 10 s), or None."""
    best = min(table, key=lambda k: abs(k - t), default=None)
    return table[best] if best is not None and abs(best - t) <= 10 else None


lat = {"b": windows("b"), "cdc": windows("cdc")}
rows = []
for line in open(os.path.join(work, "samples.txt")):
    t, rss_b, cpu_b, rss_c, cpu_c = line.split()
    t = int(t)
    wb, wc = nearest(lat["b"], t), nearest(lat["cdc"], t)
    rows.append({
        "t": t, "rss_b_mb": float(rss_b), "cpu_b_pct": float(cpu_b), "p99_b_ms": wb[2] if wb else None,
        "rss_cdc_mb": float(rss_c), "cpu_cdc_pct": float(cpu_c), "p99_cdc_ms": wc[2] if wc else None,
    })
if not rows:
    sys.exit("no samples were taken")
t0 = rows[0]["t"]
cols = ["rss_b_mb", "cpu_b_pct", "p99_b_ms", "rss_cdc_mb", "cpu_cdc_pct", "p99_cdc_ms"]
with open(os.path.join(out, "soak.csv"), "w") as f:
    f.write("seconds," + ",".join(cols) + "\n")
    for r in rows:
        f.write(f"{r['t'] - t0}," + ",".join("" if r[c] is None else str(r[c]) for c in cols) + "\n")


def trend(col):
    """(mean, change of the fitted line from start to end as a fraction of the mean)."""
    pts = [(r["t"] - t0, r[col]) for r in rows if r["t"] - t0 >= 60 and r[col] is not None]
    if len(pts) < 3:
        return None, None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else 0.0
    span = pts[-1][0] - pts[0][0]
    return my, (slope * span / my if my else 0.0)


lines = [
    f"Soak: {duration} s, job (b) offered {rate_b} records/s, CDC offered {rate_cdc} rows/s "
    f"(one transaction a second), one Apache Kafka node; {len(rows)} samples, 10 s apart.",
    "",
    "| series | mean | trend over the run | flat (≤ 10 %) |",
    "|---|---|---|---|",
]
verdicts = {}
for c in ["rss_b_mb", "p99_b_ms", "cpu_b_pct", "rss_cdc_mb", "p99_cdc_ms", "cpu_cdc_pct"]:
    mean, change = trend(c)
    if mean is None:
        lines.append(f"| {c} | – | too few samples | – |")
        continue
    flat = abs(change) <= 0.10 if change > 0 else True
    verdicts[c] = flat
    lines.append(f"| {c} | {mean:.1f} | {100 * change:+.1f} % | {'yes' if flat else '**no**'} |")
for name, entry in (("job (b)", ledger_b), ("the CDC flow", ledger_cdc)):
    count, ok = entry.split(":", 1)
    lines.append(f"\nLedger, {name}: {count} records expected, {'all delivered' if ok == 'yes' else '**' + ok + '**'}.")
text = "\n".join(lines) + "\n"
open(os.path.join(out, "soak.md"), "w").write(text)
json.dump({"rows": rows, "flat": verdicts}, open(os.path.join(out, "soak.json"), "w"))
print(text)

plot = r"""
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
x = [int(r["seconds"]) / 60 for r in rows]
fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
for ax, (title, cols) in zip(axes, [
    ("RSS (MB)", ["rss_b_mb", "rss_cdc_mb"]),
    ("p99 latency (ms), per 10 s", ["p99_b_ms", "p99_cdc_ms"]),
    ("CPU (% of one core)", ["cpu_b_pct", "cpu_cdc_pct"]),
]):
    for c in cols:
        pts = [(xi, float(r[c])) for xi, r in zip(x, rows) if r[c] != ""]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label="job (b)" if "_b_" in c else "CDC")
    ax.set_title(title)
    ax.legend()
    ax.grid(True, alpha=0.3)
axes[-1].set_xlabel("minutes")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=100)
"""
subprocess.run([venv_py, "-c", plot, os.path.join(out, "soak.csv"), os.path.join(out, "soak.png")], check=True)
print(f"plot: {os.path.join(out, 'soak.png')}")

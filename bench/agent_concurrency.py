"""How many LLM calls can one agent replica hold at once, and at what memory cost per call?

Starts a private nats-server, the simulated model (every call waits ``--latency``
seconds, short replies), ``python -m services.history`` on a temporary SQLite file
and ONE ``python -m services.agent`` with ``AGENT_CONCURRENCY=--concurrency``.
With the agent's durable consumer paused, creates ``--jobs`` sessions over
history's request-reply and posts each message as the gateway does (the job
record, then history's admission, which queues the ``RequestChat``), then resumes
the consumer so every job reaches the agent at once. Measures the time from the
resume until every job is ``completed`` in the KV bucket, the agent's RSS before the load and at
its peak (VmHWM, and /proc sampling), hence KB per in-flight call, and checks
for duplicates: one assistant message and one model request per job.

Install: ``pip install -e .``.
Run: ``python bench/agent_concurrency.py [--jobs 2000] [--latency 10] [--concurrency 2500]``.
Prints a summary and writes bench/results/agent_concurrency.json.
"""

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procstats import cpu_seconds, status_kb  # noqa: E402
from contracts import subjects  # noqa: E402
from contracts.base import Ping, Pong, utcnow  # noqa: E402
from contracts.chat import JobState, RequestChat  # noqa: E402
from contracts.history import (  # noqa: E402
    Admission,
    AppendMessage,
    CreateSession,
    ListMessages,
    MessagePage,
    MessageReply,
    SessionReply,
)
from services.launcher.natsserver import NatsServer, free_port, wait_for_port_async  # noqa: E402
from services.runtime.bus import BusClient, ensure_streams, jobs_bucket, make_broker  # noqa: E402
from services.runtime.config import ServiceSettings  # noqa: E402
from services.runtime.meta import RequestMeta  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "agent_concurrency.json"
SETUP_PARALLEL = 100
FINALS = (".completed", ".failed", ".cancelled")


def spawn(
    module: str, env: dict[str, str], log: Path, profile: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m module`` with its output in a log file (under cProfile if asked)."""
    runner = ["-m", "cProfile", "-o", str(profile)] if profile else []
    return subprocess.Popen(
        [sys.executable, *runner, "-m", module],
        env={**os.environ, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


async def wait_for_pong(bus: BusClient, subject: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait until a service answers its ping."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{subject}: the process exited with {proc.returncode}")
        try:
            await bus.request(subject, Ping(), Pong, RequestMeta(), timeout=1)
            return
        except Exception:
            await asyncio.sleep(0.2)
    raise RuntimeError(f"nobody answered {subject}")


async def prepare_jobs(bus: BusClient, kv: KeyValue, count: int) -> list[RequestChat]:
    """Create sessions, job records and admitted user messages, as the gateway does."""
    limiter = asyncio.Semaphore(SETUP_PARALLEL)
    timeout = 30.0

    async def one(i: int) -> RequestChat:
        user = f"bench-{i}"
        meta = RequestMeta(user_id=user)
        async with limiter:
            created = await bus.request(
                subjects.HISTORY_SESSION_CREATE,
                CreateSession(user_id=user, persona="default"),
                SessionReply, meta, timeout=timeout,
            )
            assert created.session is not None, created.error
            job_id = uuid.uuid4()
            content = f"bench job {i}"
            state = JobState(
                id=job_id, user_id=user, session_id=created.session.id, status="queued",
                created_at=utcnow(),
            )
            revision = await kv.create(str(job_id), state.model_dump_json().encode())
            admission = Admission(revision=revision, created_at=state.created_at)
            stored = await bus.request(
                subjects.HISTORY_MESSAGE_APPEND,
                AppendMessage(
                    user_id=user, session_id=created.session.id, job_id=job_id,
                    role="user", content=content, admission=admission,
                ),
                MessageReply, meta, timeout=timeout,
            )
            assert stored.message is not None, stored.error
            return RequestChat(
                job_id=job_id, user_id=user, session_id=created.session.id, persona="default",
                message_id=stored.message.id, content=content, created_at=state.created_at,
                revision=revision,
            )

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def sample_rss(pid: int, stop: asyncio.Event, peak: list[int]) -> None:
    """Keep the highest VmRSS seen until ``stop`` is set."""
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], status_kb(pid, "VmRSS"))
        except (OSError, KeyError):
            return
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except TimeoutError:
            pass


async def wait_all_completed(
    js: JetStreamContext, kv: KeyValue, jobs: list[RequestChat], limit: float
) -> tuple[float | None, Counter[str]]:
    """Wait until every job ended; return when that was seen, and the final statuses.

    The agent stores each job's final event (``chat.job.<id>.completed`` ...) right
    after its final state, so counting those subjects is a cheap poll (reading every job's state
    every few hundred milliseconds would load the machine under test); the job
    states are read once the count is reached.
    """
    deadline = time.monotonic() + limit
    statuses: Counter[str] = Counter()
    while time.monotonic() < deadline:
        info = await js.stream_info(
            subjects.JOB_EVENTS_STREAM.name, subjects_filter=subjects.job_event("*", "*")
        )
        ends = sum(1 for name in (info.state.subjects or {}) if name.endswith(FINALS))
        if ends >= len(jobs):
            seen = time.monotonic()
            entries = await asyncio.gather(*(kv.get(str(job.job_id)) for job in jobs))
            states = [JobState.model_validate_json(e.value or b"{}") for e in entries]
            statuses = Counter(s.status if s.finished else "unfinished" for s in states)
            if statuses["unfinished"] == 0:
                return seen, statuses
        await asyncio.sleep(0.1)
    entries = await asyncio.gather(*(kv.get(str(job.job_id)) for job in jobs))
    states = [JobState.model_validate_json(e.value or b"{}") for e in entries]
    return None, Counter(s.status if s.finished else "unfinished" for s in states)


async def count_duplicates(
    bus: BusClient, sim: httpx.AsyncClient, jobs: list[RequestChat]
) -> dict[str, Any]:
    """Count assistant messages per job (history) and model requests per job (simulator)."""
    limiter = asyncio.Semaphore(SETUP_PARALLEL)

    async def replies(job: RequestChat) -> int:
        async with limiter:
            page = await bus.request(
                subjects.HISTORY_MESSAGE_LIST,
                ListMessages(user_id=job.user_id, session_id=job.session_id, limit=10),
                MessagePage, RequestMeta(user_id=job.user_id), timeout=30,
            )
        return sum(1 for m in page.items if m.role == "assistant" and m.job_id == job.job_id)

    per_job = await asyncio.gather(*(replies(job) for job in jobs))
    items = (await sim.get("/sim/requests")).json()["items"]
    asked = Counter(body["messages"][-1]["content"] for body in items)
    calls = [asked.get(job.content, 0) for job in jobs]
    return {
        "jobs_with_one_reply": sum(1 for n in per_job if n == 1),
        "jobs_with_extra_replies": sum(1 for n in per_job if n > 1),
        "jobs_with_one_llm_call": sum(1 for n in calls if n == 1),
        "jobs_with_extra_llm_calls": sum(1 for n in calls if n > 1),
        "llm_requests": len(items),
    }


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> float:
    """SIGTERM a process and return how long it took to exit."""
    started = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return time.monotonic() - started


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run the whole benchmark in ``work`` and return its figures."""
    server = NatsServer(work / "nats")
    server.start()
    procs: list[subprocess.Popen[bytes]] = []
    sim_port = free_port()
    quiet = {"LOG_LEVEL": "WARNING", "NATS_URL": server.url}
    try:
        sim = spawn("services.simllm", {
            **quiet, "SIMLLM_PORT": str(sim_port), "LLM_SIM_LATENCY": str(args.latency),
            "LLM_SIM_TOKENS_PER_SECOND": "0", "SIM_KEEP_REQUESTS": str(args.jobs * 2 + 100),
        }, work / "simllm.log")
        procs.append(sim)
        history = spawn("services.history", {
            **quiet, "DATABASE_URL": f"sqlite+aiosqlite:///{work / 'history.db'}",
        }, work / "history.log")
        procs.append(history)
        agent = spawn("services.agent", {
            **quiet, "OPENAI_BASE_URL": f"http://127.0.0.1:{sim_port}/v1",
            "AGENT_CONCURRENCY": str(args.concurrency),
            "AGENT_MAX_ACK_PENDING": str(max(10_000, args.concurrency)),
            "BUS_REQUEST_TIMEOUT": str(args.bus_timeout), "LLM_TIMEOUT": str(args.latency + 60),
            "LOG_LEVEL": args.agent_log_level,
            "AGENT_CONTEXT_MESSAGES": str(args.context),
        }, work / "agent.log", work / "agent.prof" if args.profile else None)
        procs.append(agent)
        if not await wait_for_port_async(sim_port, 30):
            raise RuntimeError("the simulated model did not start")

        broker = make_broker(ServiceSettings(nats_url=server.url), "bench")
        await broker.connect()
        bus = BusClient(broker, 10)
        await ensure_streams(broker, subjects.ALL_STREAMS)
        await wait_for_pong(bus, subjects.HISTORY_PING, history)
        await wait_for_pong(bus, subjects.AGENT_PING, agent)
        kv = await jobs_bucket(broker)
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        stream = subjects.CHAT_JOBS_STREAM.name
        await js.pause_consumer(stream, subjects.AGENT_DURABLE, "2100-01-01T00:00:00Z")

        print(f"preparing {args.jobs} sessions and queued jobs ...", flush=True)
        jobs = await prepare_jobs(bus, kv, args.jobs)
        while (await js.stream_info(stream)).state.messages < args.jobs:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # history's outbox queues each admitted job
        await asyncio.sleep(1)  # let the agent settle after start-up
        rss_before = status_kb(agent.pid, "VmRSS")
        assert server.proc is not None
        pids = {"agent": agent.pid, "simllm": sim.pid, "history": history.pid,
                "nats": server.proc.pid}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        cpu_before["bench"] = cpu_seconds(os.getpid())
        peak = [rss_before]
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(agent.pid, stop_sampling, peak))

        print(f"handing {args.jobs} queued chat jobs to the agent at once ...", flush=True)
        started = time.monotonic()
        await js.resume_consumer(stream, subjects.AGENT_DURABLE)
        published = time.monotonic() - started
        ended, statuses = await wait_all_completed(js, kv, jobs, args.latency * 10 + 120)
        stop_sampling.set()
        await sampler
        pids["bench"] = os.getpid()
        cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 1) for name, pid in pids.items()}
        hwm = status_kb(agent.pid, "VmHWM")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sim_port}", timeout=60) as h:
            stats = (await h.get("/sim/stats")).json()
            duplicates = await count_duplicates(bus, h, jobs)
        await nc.close()
        await broker.stop()
        shutdown = stop_process(agent)
        peak_kb = max(peak[0], hwm)
        in_flight = int(stats["peak_streams"])
        return {
            "jobs": args.jobs,
            "latency_s": args.latency,
            "concurrency": args.concurrency,
            "context_messages": args.context,
            "publish_s": round(published, 3),
            "all_completed_s": None if ended is None else round(ended - started, 2),
            "statuses": dict(statuses),
            "peak_llm_calls_in_flight": in_flight,
            "agent_rss_before_kb": rss_before,
            "agent_rss_peak_kb": peak_kb,
            "kb_per_call_in_flight": round((peak_kb - rss_before) / max(1, in_flight), 1),
            "sim": stats,
            "cpu_seconds_during_load": cpu,
            **duplicates,
            "agent_shutdown_s": round(shutdown, 2),
        }
    finally:
        for proc in reversed(procs):
            stop_process(proc, timeout=10)
        server.stop()


def main() -> None:
    """Parse flags, run, print and store the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=2500)
    parser.add_argument("--context", type=int, default=0,
                        help="AGENT_CONTEXT_MESSAGES: 0 skips reading history before the call, "
                        "so the bench measures the agent, not history's read throughput")
    parser.add_argument("--bus-timeout", type=float, default=60.0,
                        help="the agent's BUS_REQUEST_TIMEOUT (history calls under the burst)")
    parser.add_argument("--agent-log-level", default="WARNING")
    parser.add_argument("--profile", action="store_true", help="run the agent under cProfile")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the logs and data in this directory instead of a temporary one")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(run(args, args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="chatbus-bench-") as tmp:
            result = asyncio.run(run(args, Path(tmp)))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    target = result["all_completed_s"] is not None and result["kb_per_call_in_flight"] < 100
    print(
        f"\n{result['jobs']} jobs, {result['peak_llm_calls_in_flight']} model calls in flight at "
        f"peak; all completed in {result['all_completed_s']} s (model latency "
        f"{result['latency_s']} s); agent RSS {result['agent_rss_before_kb'] / 1024:.0f} -> "
        f"{result['agent_rss_peak_kb'] / 1024:.0f} MB = {result['kb_per_call_in_flight']} KB per "
        f"call in flight; duplicates: {result['jobs_with_extra_replies']} replies, "
        f"{result['jobs_with_extra_llm_calls']} model calls; target "
        f"{'met' if target else 'MISSED'}"
    )


if __name__ == "__main__":
    main()

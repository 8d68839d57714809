"""CPU of one history (and memory) request, measured in the service's own process.

Starts a private nats-server, ``python -m services.history`` and
``python -m services.memory`` as real processes (SQLite file; or Postgres, in a
database created for the run and dropped after it, with history's cache on
Redis), drives them over NATS request-reply from this process, and reads each
service's CPU time (user + system, every thread: the SQLite driver's included)
from /proc before and after each kind of request. It prints the milliseconds of
service CPU per request by kind, with 1 and with ``--concurrency`` requests in
flight, after a warm-up round that is not counted.

Kinds, in the order they run (each user has one session; ``--jobs`` jobs over
``--jobs / 4`` users, so the limits of the admission are checked, never hit):

- ``append user``: ``AppendMessage(role="user", admission=...)``, the job's admission;
- ``list messages (miss)`` / ``(hit)``: the newest 16 to 23 messages of each session
  (about the agent's context read; each page size is its own cache entry), first
  after the appends (cache miss), then again (hit);
- ``append assistant``: the reply of half of the jobs (ends them);
- ``end job``: ``EndJob`` for the other half (``—`` where history does not serve it);
- ``feed (miss)``: the first page (16 to 23 messages) of each user's feed;
- ``memory recall``: 20 memories of a user (the agent's recall), 20 seeded per user.

Run (from the repository root)::

    python bench/history_requests.py                       # SQLite, in-process LRU cache
    python bench/history_requests.py --postgres postgresql+asyncpg://postgres@127.0.0.1/test \\
        --redis redis://127.0.0.1:6379/0                   # Postgres (a fresh database) + Redis
    python bench/history_requests.py --profile /tmp/prof   # services under cProfile

Options: ``--jobs`` (default 1000), ``--concurrency`` (default 32), ``--keep``
(keep the logs and profiles). Results also go to
``bench/results/history_requests-<backend>.json``.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procstats import cpu_seconds  # noqa: E402
from contracts import subjects  # noqa: E402
from contracts.base import Contract, Ping, Pong, Reply, utcnow  # noqa: E402
from contracts.history import (  # noqa: E402
    Admission,
    AppendMessage,
    CreateSession,
    EndJob,
    JobEnded,
    ListFeed,
    ListMessages,
    MessagePage,
    MessageReply,
    SessionReply,
)
from contracts.memory import MemoryPage, RecallMemories  # noqa: E402
from services.launcher.natsserver import NatsServer  # noqa: E402
from services.runtime.bus import BusClient, make_broker  # noqa: E402
from services.runtime.config import ServiceSettings  # noqa: E402
from services.runtime.meta import BusUnavailable, RequestMeta  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TIMEOUT = 30.0
CONTEXT = 20  # messages and memories the agent reads per job
JOBS_PER_USER = 4
LIMITS = range(CONTEXT - 4, CONTEXT + 4)  # page sizes read per session: 8 cache entries
MAX_ACTIVE_JOBS = 8
MAX_PER_MINUTE = 60


def spawn(
    module: str, env: dict[str, str], log: Path, profile: Path | None
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


async def fresh_database(url: str) -> tuple[str, Callable[[], Awaitable[None]]]:
    """Create a database for this run next to ``url``'s; return its URL and how to drop it."""
    name = f"chatbus_bench_{os.getpid()}"
    admin = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {name}"))

    async def drop() -> None:
        async with admin.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        await admin.dispose()

    return make_url(url).set(database=name).render_as_string(hide_password=False), drop


async def seed_memories(database_url: str, users: Sequence[str]) -> None:
    """Insert ``CONTEXT`` memories per user straight into the memory service's table."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    table = "memory.memories" if engine.dialect.name == "postgresql" else "memories"
    now = utcnow()
    postgres = engine.dialect.name == "postgresql"

    def ident() -> str:
        return str(uuid.uuid4()) if postgres else uuid.uuid4().hex

    rows = [
        {
            "id": ident(),
            "user_id": user,
            "session_id": ident(),
            "persona": "default",
            "content": f"The user said fact number {i} about themselves.",
            "created_at": (now - timedelta(seconds=i))
            if postgres
            else (now - timedelta(seconds=i)).replace(tzinfo=None).isoformat(" "),
        }
        for user in users
        for i in range(CONTEXT)
    ]
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    f"INSERT INTO {table} (id, user_id, session_id, persona, content, created_at) "
                    "VALUES (:id, :user_id, :session_id, :persona, :content, :created_at)"
                ),
                rows,
            )
    finally:
        await engine.dispose()


class Run:
    """One round of every kind of request, ``concurrency`` at a time."""

    def __init__(self, bus: BusClient, pids: dict[str, int], tag: str, jobs: int) -> None:
        self.bus = bus
        self.pids = pids
        self.tag = tag
        self.jobs = jobs
        self.users = [f"{tag}-u{i}" for i in range(max(1, jobs // JOBS_PER_USER))]
        self.sessions: dict[str, uuid.UUID] = {}
        self.job_ids: list[tuple[str, uuid.UUID]] = []

    async def ask(self, subject: str, body: Contract, reply: type[Reply], user: str) -> Any:
        answer = await self.bus.request(
            subject, body, reply, RequestMeta(user_id=user), timeout=TIMEOUT
        )
        assert answer.error is None, (subject, answer.error)
        return answer

    async def setup(self, concurrency: int) -> None:
        async def create(user: str) -> None:
            reply = await self.ask(
                subjects.HISTORY_SESSION_CREATE,
                CreateSession(user_id=user, persona="default"),
                SessionReply,
                user,
            )
            self.sessions[user] = reply.session.id

        await gather(concurrency, [lambda u=u: create(u) for u in self.users])  # type: ignore[misc]

    def requests(self) -> list[tuple[str, str, list[Callable[[], Awaitable[object]]]]]:
        """Return (kind, service, calls) in the order they run."""
        users, sessions = self.users, self.sessions
        self.job_ids = [(users[i % len(users)], uuid.uuid4()) for i in range(self.jobs)]

        def append(user: str, job: uuid.UUID, role: str) -> Callable[[], Awaitable[object]]:
            admission = (
                Admission(
                    revision=1,
                    created_at=utcnow(),
                    max_active_jobs=MAX_ACTIVE_JOBS,
                    max_messages_per_minute=MAX_PER_MINUTE,
                )
                if role == "user"
                else None
            )
            body = AppendMessage(
                user_id=user, session_id=sessions[user], job_id=job, role=role,  # type: ignore[arg-type]
                content=f"{role} message of job {job}", admission=admission,
            )
            return lambda: self.ask(subjects.HISTORY_MESSAGE_APPEND, body, MessageReply, user)

        def listing(user: str, limit: int) -> Callable[[], Awaitable[object]]:
            body = ListMessages(user_id=user, session_id=sessions[user], limit=limit)
            return lambda: self.ask(subjects.HISTORY_MESSAGE_LIST, body, MessagePage, user)

        def end(user: str, job: uuid.UUID) -> Callable[[], Awaitable[object]]:
            body = EndJob(user_id=user, job_id=job)
            return lambda: self.ask(subjects.HISTORY_JOB_END, body, JobEnded, user)

        def feed(user: str, limit: int) -> Callable[[], Awaitable[object]]:
            body = ListFeed(user_id=user, limit=limit)
            return lambda: self.ask(subjects.HISTORY_FEED, body, MessagePage, user)

        def recall(user: str) -> Callable[[], Awaitable[object]]:
            body = RecallMemories(user_id=user, persona="default", limit=CONTEXT)
            return lambda: self.ask(subjects.MEMORY_RECALL, body, MemoryPage, user)

        replied, ended = self.job_ids[0::2], self.job_ids[1::2]
        # Each page size is its own cache entry: the first read of each misses.
        pages = [(u, limit) for limit in LIMITS for u in users]
        return [
            ("append user", "history", [append(u, j, "user") for u, j in self.job_ids]),
            ("list messages (miss)", "history", [listing(u, n) for u, n in pages]),
            ("list messages (hit)", "history", [listing(u, n) for u, n in pages]),
            ("append assistant", "history", [append(u, j, "assistant") for u, j in replied]),
            ("end job", "history", [end(u, j) for u, j in ended]),
            ("feed (miss)", "history", [feed(u, n) for u, n in pages]),
            ("memory recall", "memory", [recall(users[i % len(users)]) for i in range(self.jobs)]),
        ]

    async def measure(self, concurrency: int) -> dict[str, float | None]:
        """Run every kind; return the service's CPU ms per request of each."""
        out: dict[str, float | None] = {}
        for kind, service, calls in self.requests():
            pid = self.pids[service]
            before = cpu_seconds(pid)
            try:
                await gather(concurrency, calls)
            except BusUnavailable:
                out[kind] = None  # the service does not serve this subject
                continue
            await asyncio.sleep(0.3)  # work after the replies (cache writes, publishes) counts
            out[kind] = (cpu_seconds(pid) - before) / len(calls) * 1000
        return out


async def gather(concurrency: int, calls: Sequence[Callable[[], Awaitable[object]]]) -> None:
    """Run the calls with at most ``concurrency`` in flight."""
    queue = list(reversed(calls))

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(calls)))))


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="history-requests-"))
    nats = NatsServer(work / "nats")
    nats.start()
    drop: Callable[[], Awaitable[None]] | None = None
    if args.postgres:
        database_url, drop = await fresh_database(args.postgres)
        backend = "postgres+redis" if args.redis else "postgres"
    else:
        database_url, backend = f"sqlite+aiosqlite:///{work / 'chatbus.db'}", "sqlite"
    env = {
        "NATS_URL": nats.url,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # memory never calls the model here
        "CACHE_NAMESPACE": f"bench:{os.getpid()}",
        "BUS_REQUEST_TIMEOUT": str(TIMEOUT),
    }
    if args.redis:
        env["REDIS_URL"] = args.redis
    profile = Path(args.profile) if args.profile else None
    if profile:
        profile.mkdir(parents=True, exist_ok=True)
    procs = {
        name: spawn(
            f"services.{name}", env, work / f"{name}.log",
            profile / f"{name}.prof" if profile else None,
        )
        for name in ("history", "memory")
    }
    broker = make_broker(ServiceSettings(nats_url=nats.url), "bench")
    results: dict[str, dict[str, float | None]] = {}
    try:
        await broker.connect()
        bus = BusClient(broker, TIMEOUT)
        await wait_for_pong(bus, subjects.HISTORY_PING, procs["history"])
        await wait_for_pong(bus, subjects.MEMORY_PING, procs["memory"])
        pids = {name: proc.pid for name, proc in procs.items()}
        rounds = [("warm-up", max(args.concurrency), min(args.jobs, 200))]
        rounds += [(f"c{c}", c, args.jobs) for c in args.concurrency]
        for tag, concurrency, jobs in rounds:
            run = Run(bus, pids, f"{tag}-{uuid.uuid4().hex[:6]}", jobs)
            await run.setup(concurrency)
            await seed_memories(database_url, run.users)
            measured = await run.measure(concurrency)
            if tag != "warm-up":
                results[f"{concurrency} in flight"] = measured
    finally:
        await broker.stop()
        for proc in procs.values():
            proc.send_signal(2)  # SIGINT: a clean exit writes the profile
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        nats.stop()
        if drop is not None:
            await drop()
    print_table(backend, results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"history_requests-{backend}.json"
    out.write_text(json.dumps({"backend": backend, "jobs": args.jobs, "cpu_ms": results}, indent=2))
    if args.keep or profile:
        print(f"logs: {work}")


def print_table(backend: str, results: dict[str, dict[str, float | None]]) -> None:
    """Print ms of service CPU per request: one row per kind, one column per concurrency."""
    columns = list(results)
    kinds = list(next(iter(results.values())))
    print(f"\nservice CPU ms per request ({backend})")
    print(f"| kind | {' | '.join(columns)} |")
    print(f"|---|{'---|' * len(columns)}")
    for kind in kinds:
        cells = [results[c][kind] for c in columns]
        shown = ["—" if v is None else f"{v:.2f}" for v in cells]
        print(f"| {kind} | {' | '.join(shown)} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument(
        "--postgres", help="SQLAlchemy URL of a Postgres server (a database is created)"
    )
    parser.add_argument("--redis", help="Redis URL for history's cache (with --postgres)")
    parser.add_argument("--profile", help="write each service's cProfile output to this directory")
    parser.add_argument("--keep", action="store_true", help="print where the logs are")
    asyncio.run(main(parser.parse_args()))

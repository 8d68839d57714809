"""Appends per second of the history service's rules on SQLite, alone and 50 at a time.

Calls ``HistoryService.append_message`` in-process (no bus) on a fresh SQLite
file with the in-process cache, ``--appends`` times per concurrency level, and
reports appends per second and the process CPU per append (the SQLite driver's
thread included). Appends that arrive together are group-committed, so the
concurrent figure shows what batching buys.

Install: ``pip install -e .``.
Run: ``python bench/history_appends.py [--appends 1000] [--concurrency 1 50]``.
"""

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contracts.base import utcnow  # noqa: E402
from contracts.history import Admission, AppendMessage, CreateSession  # noqa: E402
from services.history.cache import Cache, CacheMetrics  # noqa: E402
from services.history.cache_backends import MemoryBackend  # noqa: E402
from services.history.models import DATABASE, SCHEMA  # noqa: E402
from services.history.outbox import Relay  # noqa: E402
from services.history.service import HistoryService  # noqa: E402
from services.history.store import Store  # noqa: E402
from services.runtime.logging import configure_logging  # noqa: E402
from services.runtime.meta import RequestMeta  # noqa: E402
from services.runtime.sql import database  # noqa: E402

META = RequestMeta("bench", "bench")
SESSIONS = 50


class NoPublisher:
    """The relay's publisher: the admitted jobs' events go nowhere here."""

    async def publish(self, *_: object, **__: object) -> None:
        return None


async def measure(concurrency: int, appends: int) -> tuple[float, float]:
    """Return (appends per second, ms of CPU per append) at one concurrency."""
    with tempfile.TemporaryDirectory(prefix="history-appends-") as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/history.db"
        await DATABASE.migrate(url)
        store = Store(database(url, schema=SCHEMA))
        cache = Cache(MemoryBackend(10_000), CacheMetrics(CollectorRegistry()))
        relay = Relay(store, NoPublisher())  # type: ignore[arg-type]
        service = HistoryService(store, cache, relay, instance="bench")
        try:
            sessions = []
            for i in range(SESSIONS):
                create = CreateSession(user_id=f"u{i}", persona="p")
                sessions.append((await service.create_session(create, META)).session)

            async def append(i: int) -> None:
                session = sessions[i % SESSIONS]
                assert session is not None
                command = AppendMessage(
                    user_id=session.user_id, session_id=session.id, job_id=uuid.uuid4(),
                    role="user", content="hello there",
                    admission=Admission(revision=1, created_at=utcnow()),
                )
                assert (await service.append_message(command, META)).created

            wall, cpu = time.perf_counter(), time.process_time()
            for start in range(0, appends, concurrency):
                await asyncio.gather(*(append(i) for i in range(start, start + concurrency)))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            await store.sql.close()
    return appends / wall, cpu / appends * 1000


async def main(args: argparse.Namespace) -> None:
    configure_logging("bench", "WARNING", "console")
    for concurrency in args.concurrency:
        rate, cpu_ms = await measure(concurrency, args.appends)
        print(f"{concurrency:>3} at a time: {rate:7.0f} appends/s, {cpu_ms:.2f} ms of CPU each")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--appends", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    asyncio.run(main(parser.parse_args()))

"""Do the LangGraph peer's fast reads stay fast while slow runs are in flight?

The peer's side of ``bench/isolation.py``, measured with its functions: for
each load N, N runs whose model call takes ``--latency`` seconds are put in
flight (one thread each, ``langgraph dev --n-jobs-per-worker max(N) + 100``,
see peer.py), then a second client reads one thread at a steady ``--rate`` for
``--duration`` seconds (open loop). The read is ``GET /threads/{id}/state``
(the thread's messages, as chatbus's read is a session's messages), or
``GET /threads/{id}`` with ``--read thread``. Reported per N: p50/p95/p99 of
the read latency, failed reads, runs still pending or running at the end.

Install: the peer's own environment (see burst.py beside this file) and
``pip install -e '.[bench]'`` for this driver (matplotlib, for the chart; with
``pip install -e .`` alone the chart is skipped).
Run: ``python bench/peers/langgraph/isolation.py [--loads 0,100,500] [--latency 20]``.
Prints the table, then writes bench/results/peer_langgraph_isolation.json and .png.
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from bench.isolation import chart, read_steadily, table  # noqa: E402
from bench.peers.langgraph.peer import (  # noqa: E402
    LangGraphPeer,
    client,
    create_threads,
    find_langgraph,
    run_body,
    run_states,
)

SYSTEM = "langgraph-dev"
OPEN = ("pending", "running")
READS = {"state": "/threads/{id}/state", "thread": "/threads/{id}"}


async def put_load(http: httpx.AsyncClient, load: int) -> list[tuple[str, str]]:
    """Start ``load`` runs, one per thread (setup: gently, retried); return (thread, run) pairs."""
    threads = await create_threads(http, load, gate=8)
    limiter = asyncio.Semaphore(8)

    async def one(thread: str) -> tuple[str, str]:
        for attempt in range(8):
            async with limiter:
                resp = await http.post(f"/threads/{thread}/runs", json=run_body("slow"))
            if resp.status_code == 200:
                return thread, str(resp.json()["run_id"])
            await asyncio.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"POST runs kept failing: {resp.status_code} {resp.text[:200]}")

    return list(await asyncio.gather(*(one(t) for t in threads)))


async def count_unfinished(http: httpx.AsyncClient, runs: list[tuple[str, str]]) -> int:
    """Count the runs still pending or running."""
    states = await run_states(http, runs)
    return sum(1 for s in states.values() if s is not None and s["status"] in OPEN)


async def drain(http: httpx.AsyncClient, runs: list[tuple[str, str]], limit: float) -> None:
    """Wait until every run of a load ended, so the next load starts clean."""
    deadline = time.monotonic() + limit
    while runs and time.monotonic() < deadline:
        if await count_unfinished(http, runs) == 0:
            return
        await asyncio.sleep(2)


async def bench_peer(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Measure the peer's reads under each load; return the figures by load."""
    peer = LangGraphPeer(
        work / "langgraph-peer", latency=args.latency,
        jobs_per_worker=max(args.loads) + 100, langgraph=find_langgraph(args.langgraph),
    )
    path = READS[args.read]
    results: dict[str, Any] = {}
    try:
        await asyncio.to_thread(peer.start)
        async with client(peer.url) as http, httpx.AsyncClient(
            base_url=peer.url, timeout=30
        ) as reads:
            reader = (await create_threads(http, 1))[0]
            (await http.post(f"/threads/{reader}/runs", json=run_body("hi"))).raise_for_status()
            url = path.format(id=reader)
            for load in args.loads:
                runs = await put_load(http, load)
                await asyncio.sleep(1)
                stats = await read_steadily(lambda: reads.get(url), args.rate, args.duration)
                stats["in_flight_after"] = await count_unfinished(http, runs)
                results[str(load)] = stats
                print(f"{SYSTEM} N={load}: {stats}", flush=True)
                await drain(http, runs, args.latency + 120)
    finally:
        await asyncio.to_thread(peer.close)
    return results


def build_parser() -> argparse.ArgumentParser:
    """Describe the options (compare.py builds its runs from the same defaults)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--loads", default="0,100,500", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--latency", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--read", choices=sorted(READS), default="state")
    parser.add_argument("--langgraph", type=Path, help="langgraph command (default: .venv here)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return parser


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the peer at every load in a temporary folder; return the figures by load."""
    with tempfile.TemporaryDirectory(prefix="peer-isolation-") as tmp:
        return await bench_peer(args, Path(tmp))


def main() -> None:
    """Run every load; print the table, then write the figures and chart."""
    args = build_parser().parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {SYSTEM: asyncio.run(measure(args))}
    print(table(results))
    settings = {k: getattr(args, k) for k in ("latency", "rate", "duration", "read")}
    target = args.out / "peer_langgraph_isolation.json"
    target.write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    written = [target]
    if chart(results, args.out / "peer_langgraph_isolation.png"):
        written.append(args.out / "peer_langgraph_isolation.png")
    print(f"\nwritten: {', '.join(str(p) for p in written)}")


if __name__ == "__main__":
    main()

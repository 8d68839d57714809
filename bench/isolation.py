"""Do history reads stay fast while slow LLM jobs are in flight? chatbus vs a single-process app.

For each load N, N chat messages whose model call takes ``--latency`` seconds
are put in flight, then a second client reads a session's history at a steady
``--rate`` for ``--duration`` seconds (open loop: a request every 1/rate s,
whether or not the previous one returned). Reported per N: p50/p95/p99 of the
read latency and failed reads. Systems:

- ``chatbus``: the stack as ``chatbus up`` runs it (simulated model);
- ``baseline-async`` / ``baseline-threads``: bench/baseline.py, one FastAPI
  process calling the same simulated model inside the request.

Install: ``pip install -e '.[bench]'`` (matplotlib, for the chart; with ``pip install -e .``
alone the table is printed and the chart skipped).
Run: ``python bench/isolation.py`` (defaults: loads 0,100,500; latency 20 s;
rate 40/s; 10 s per load). Prints the table, then writes bench/results/isolation.json
and .png.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.gateway.auth import mint_token  # noqa: E402
from services.launcher.natsserver import free_port, wait_for_port  # noqa: E402

SECRET = "bench-secret-with-at-least-32-bytes!!"
BIN = Path(sys.executable).parent


def percentile(values: list[float], q: float) -> float | None:
    """Return the q-quantile (nearest rank) of the values, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def read_steadily(
    read: Callable[[], Awaitable[httpx.Response]], rate: float, duration: float
) -> dict[str, Any]:
    """Issue reads at a fixed rate; return latency percentiles (ms) and failures."""
    latencies: list[float] = []
    failures = 0

    async def one() -> None:
        nonlocal failures
        started = time.perf_counter()
        try:
            resp = await read()
            if resp.status_code != 200:
                failures += 1
                return
        except httpx.HTTPError:
            failures += 1
            return
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * duration)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return {
        "reads": len(tasks),
        "failed": failures,
        "p50_ms": percentile(latencies, 0.50),
        "p95_ms": percentile(latencies, 0.95),
        "p99_ms": percentile(latencies, 0.99),
    }


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a process with its output in a log file."""
    return subprocess.Popen(
        argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process politely, then firmly."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def bench_chatbus(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Measure reads through the chatbus gateway under each load."""
    port = free_port()
    env = {
        **os.environ,
        "CHATBUS_STATE_DIR": str(work / "chatbus"),
        "GATEWAY_PORT": str(port),
        "JWT_SECRET": SECRET,
        "LLM_SIM_LATENCY": str(args.latency),
        "LLM_SIM_TOKENS_PER_SECOND": "0",
        "AGENT_CONCURRENCY": str(max(args.loads) + 100),
        "LOG_LEVEL": "WARNING",
    }
    for key in ("NATS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "DATABASE_URL"):
        env.pop(key, None)
    proc = spawn([str(BIN / "chatbus"), "up"], env, work / "chatbus-up.log")
    base = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {}
    try:
        await wait_ready(f"{base}/readyz", proc, 120)
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            reader = {"Authorization": f"Bearer {mint_token(SECRET, 'reader')}"}
            session = (await client.post("/api/sessions", json={}, headers=reader)).json()["id"]
            await client.post(
                f"/api/sessions/{session}/messages", json={"content": "hi"}, headers=reader
            )
            async with httpx.AsyncClient(base_url=base, timeout=30) as reads:
                for load in args.loads:
                    jobs = await put_chatbus_load(client, load)
                    await asyncio.sleep(1)
                    stats = await read_steadily(
                        lambda: reads.get(f"/api/sessions/{session}/messages", headers=reader),
                        args.rate,
                        args.duration,
                    )
                    stats["in_flight_after"] = await count_unfinished(client, jobs)
                    results[str(load)] = stats
                    print(f"chatbus N={load}: {stats}", flush=True)
                    await drain_chatbus(client, jobs, args.latency + 120)
    finally:
        stop(proc)
    return results


async def put_chatbus_load(client: httpx.AsyncClient, load: int) -> list[tuple[str, str]]:
    """Start ``load`` chat jobs, one per user and session; return (token, job id) pairs."""
    stamp = time.time_ns()
    # Setup is not measured: go gently and retry, so the load is exactly N jobs.
    limiter = asyncio.Semaphore(8)

    async def post(path: str, headers: dict[str, str], body: dict[str, str]) -> dict[str, Any]:
        for attempt in range(8):
            async with limiter:
                resp = await client.post(path, json=body, headers=headers)
            if resp.status_code in (200, 201, 202):
                return dict(resp.json())
            await asyncio.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"{path} kept failing: {resp.status_code} {resp.text[:200]}")

    async def one(i: int) -> tuple[str, str]:
        token = mint_token(SECRET, f"load-{stamp}-{i}")
        headers = {"Authorization": f"Bearer {token}"}
        session = await post("/api/sessions", headers, {})
        job = await post(f"/api/sessions/{session['id']}/messages", headers, {"content": "slow"})
        return token, str(job["id"])

    return list(await asyncio.gather(*(one(i) for i in range(load))))


async def count_unfinished(client: httpx.AsyncClient, jobs: list[tuple[str, str]]) -> int:
    """Count the jobs still queued or running."""
    statuses = await asyncio.gather(
        *(
            client.get(f"/api/jobs/{job}", headers={"Authorization": f"Bearer {token}"})
            for token, job in jobs
        )
    )
    return sum(1 for r in statuses if r.json()["status"] in ("queued", "running"))


async def drain_chatbus(
    client: httpx.AsyncClient, jobs: list[tuple[str, str]], limit: float
) -> None:
    """Wait until every job of a load ended, so the next load starts clean."""
    deadline = time.monotonic() + limit
    while jobs and time.monotonic() < deadline:
        if await count_unfinished(client, jobs) == 0:
            return
        await asyncio.sleep(2)


async def bench_baseline(mode: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Measure reads of the single-process app under each load."""
    llm_port, app_port = free_port(), free_port()
    sim_env = {
        **os.environ,
        "SIMLLM_PORT": str(llm_port),
        "LLM_SIM_LATENCY": str(args.latency),
        "LLM_SIM_TOKENS_PER_SECOND": "0",
        "LOG_LEVEL": "WARNING",
    }
    sim = spawn([sys.executable, "-m", "services.simllm"], sim_env, work / f"sim-{mode}.log")
    app = spawn(
        [
            sys.executable,
            str(ROOT / "bench" / "baseline.py"),
            "--mode",
            mode,
            "--port",
            str(app_port),
            "--llm-url",
            f"http://127.0.0.1:{llm_port}/v1",
            "--db",
            str(work / f"baseline-{mode}.db"),
        ],
        dict(os.environ),
        work / f"baseline-{mode}.log",
    )
    base = f"http://127.0.0.1:{app_port}"
    results: dict[str, Any] = {}
    try:
        if not (wait_for_port(llm_port, 30) and wait_for_port(app_port, 30)):
            raise RuntimeError(f"baseline {mode} did not start; see {work}")
        limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
        async with (
            httpx.AsyncClient(
                base_url=base, timeout=args.latency + 600, limits=limits
            ) as load_client,
            httpx.AsyncClient(base_url=base, timeout=30) as reads,
        ):
            for load in args.loads:
                calls = [
                    asyncio.create_task(
                        load_client.post("/chat", json={"session": f"s{i}", "content": "slow"})
                    )
                    for i in range(load)
                ]
                await asyncio.sleep(1)
                stats = await read_steadily(
                    lambda: reads.get("/history/reader"), args.rate, args.duration
                )
                stats["in_flight_after"] = sum(1 for c in calls if not c.done())
                results[str(load)] = stats
                print(f"baseline-{mode} N={load}: {stats}", flush=True)
                await asyncio.gather(*calls, return_exceptions=True)
    finally:
        stop(app)
        stop(sim)
    return results


async def wait_ready(url: str, proc: subprocess.Popen[bytes], limit: float) -> None:
    """Poll a readiness URL; fail if the process exits first."""
    deadline = time.monotonic() + limit
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the stack exited with {proc.returncode}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError("the stack was not ready in time")


def chart(results: dict[str, dict[str, Any]], path: Path) -> bool:
    """Draw p50 and p99 read latency against load for every system; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print("chart skipped: matplotlib is not installed (pip install -e '.[bench]')")
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, per_load in results.items():
        loads = [int(n) for n in per_load]
        for key, style in (("p99_ms", "-o"), ("p50_ms", "--x")):
            values = [per_load[str(n)][key] or float("nan") for n in loads]
            ax.plot(loads, values, style, label=f"{system} {key[:3]}")
    ax.set_yscale("log")
    ax.set_xlabel("slow LLM jobs in flight")
    ax.set_ylabel("history read latency (ms, log)")
    ax.set_title("History reads under LLM load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def table(results: dict[str, dict[str, Any]]) -> str:
    """Render the results as a Markdown table."""
    lines = [
        "| system | jobs in flight | p50 ms | p95 ms | p99 ms | failed reads |",
        "|---|---|---|---|---|---|",
    ]
    for system, per_load in results.items():
        for load, s in per_load.items():
            cells = [
                f"{s[k]:.1f}" if s[k] is not None else "—" for k in ("p50_ms", "p95_ms", "p99_ms")
            ]
            lines.append(
                f"| {system} | {load} | {' | '.join(cells)} | {s['failed']}/{s['reads']} |"
            )
    lines.append("")
    for system, per_load in results.items():
        idle, loaded = per_load.get("0"), per_load.get(str(max(int(n) for n in per_load)))
        if idle and loaded and idle["p99_ms"] and loaded["p99_ms"]:
            lines.append(f"{system}: loaded/idle p99 = {loaded['p99_ms'] / idle['p99_ms']:.1f}x")
    return "\n".join(lines)


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
    parser.add_argument("--systems", default="chatbus,baseline-async,baseline-threads")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return parser


async def measure(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run every system at every load; return the figures by system and load."""
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="chatbus-bench-") as tmp:
        work = Path(tmp)
        for system in args.systems.split(","):
            if system == "chatbus":
                results[system] = await bench_chatbus(args, work)
            else:
                results[system] = await bench_baseline(system.split("-", 1)[1], args, work)
    return results


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Return the settings a result was measured with."""
    return {
        "latency_s": args.latency,
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    """Run every system at every load; print the table, then write the figures and chart."""
    args = build_parser().parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(measure(args))
    print(table(results))
    (args.out / "isolation.json").write_text(
        json.dumps({"settings": settings(args), "results": results}, indent=2)
    )
    written = [args.out / "isolation.json"]
    if chart(results, args.out / "isolation.png"):
        written.append(args.out / "isolation.png")
    print(f"\nwritten: {', '.join(str(p) for p in written)}")


if __name__ == "__main__":
    main()

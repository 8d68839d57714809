"""N runs of the LangGraph peer submitted over HTTP at once: when does the last one end?

The peer's side of ``bench/http_burst.py``, measured the same way: the
simulated model with ``LLM_SIM_LATENCY=--latency`` (short replies) and
``langgraph dev --n-jobs-per-worker --jobs-per-worker`` (see peer.py). Creates
``--jobs`` threads (not timed), then fires one ``POST /threads/{id}/runs`` per
thread all at once (httpx AsyncClient, no connection cap) and follows the runs
with ``GET /threads/{id}/runs/{run_id}`` every 0.5 s until each ends.
Completion times come from each run's ``updated_at`` when it turned
``success`` (the server's clock, on this machine), so the polling rate does not
blur them.

Reports what http_burst reports: the last completion after the first submit,
p50/p95/p99 of the POST latency and of each run's completion time, refused
submits by kind, final statuses, assistant messages per thread and model calls
per run (1 is right: 0 lost, 2+ doubled), the CPU seconds of the server and the
model while the POSTs were answered and until the last run ended, and their CPU
per completed run.

Install: the peer's own environment (``python -m venv bench/peers/langgraph/.venv``
and ``bench/peers/langgraph/.venv/bin/pip install -r bench/peers/langgraph/requirements.txt``)
and ``pip install -e .`` for this driver, which runs in chatbus's environment.
Run: ``python bench/peers/langgraph/burst.py [--jobs 500] [--latency 5]``.
Prints a summary and writes bench/results/peer_langgraph_burst.json.
"""

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from bench.clients import Clients  # noqa: E402
from bench.http_burst import epoch, release_together, spread, summary  # noqa: E402
from bench.peers.langgraph.peer import (  # noqa: E402
    TERMINAL,
    LangGraphPeer,
    assistant_replies,
    client,
    create_threads,
    find_langgraph,
    model_calls,
    run_body,
    run_states,
)
from bench.procstats import cpu_seconds, status_kb  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "peer_langgraph_burst.json"


async def submit(http: Clients, threads: list[str]) -> tuple[float, list[dict[str, Any]]]:
    """POST one run per thread at once; return the first submit's wall time, the answers."""

    async def one(n: int, thread: str) -> dict[str, Any]:
        sent = time.time()
        began = time.perf_counter()
        try:
            resp = await http.post(f"/threads/{thread}/runs", json=run_body(f"burst {n}"))
        except httpx.HTTPError as exc:
            return {"sent": sent, "latency": time.perf_counter() - began, "error": repr(exc)}
        answer: dict[str, Any] = {
            "n": n, "sent": sent, "latency": time.perf_counter() - began,
            "status": resp.status_code, "thread": thread,
        }
        if resp.status_code == 200:
            answer["run"] = resp.json()["run_id"]
        else:
            answer["error"] = f"{resp.status_code} {resp.text[:200]}"
        return answer

    return await release_together([partial(one, n, t) for n, t in enumerate(threads)])


async def follow(
    http: Clients, answers: list[dict[str, Any]], deadline: float
) -> dict[str, dict[str, Any]]:
    """Poll every accepted run until it ends or the deadline passes; return the last states."""
    pending = {(a["thread"], a["run"]) for a in answers if "run" in a}
    final: dict[str, dict[str, Any]] = {}
    while pending and time.monotonic() < deadline:
        try:
            states = await run_states(http, sorted(pending))
        except httpx.HTTPError:
            states = {}
        for key, state in states.items():
            if state is not None and state["status"] in TERMINAL:
                final[key[1]] = state
                pending.discard(key)
        if pending:
            await asyncio.sleep(0.5)
    return final


async def run_errors(http: Clients, failed: list[dict[str, Any]]) -> list[str]:
    """Return what the peer says went wrong in a few failed runs (the thread keeps the error)."""
    found = []
    for state in failed[:3]:
        resp = await http.get(f"/threads/{state['thread_id']}")
        found.append(str(resp.json().get("error"))[:300] if resp.status_code == 200 else "?")
    return found


async def run(peer: LangGraphPeer, args: argparse.Namespace) -> dict[str, Any]:
    """Drive the burst against a started peer and return the figures."""
    async with Clients(lambda: client(peer.url)) as http:
        began = time.perf_counter()
        threads = await create_threads(http, args.jobs)
        setup = time.perf_counter() - began
        pids = peer.pids()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        first, answers = await submit(http, threads)
        cpu_submits = {n: round(cpu_seconds(pid) - cpu_before[n], 2) for n, pid in pids.items()}
        final = await follow(http, answers, time.monotonic() + args.latency + args.follow)
        cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in pids.items()}
        rss_peak_mb = round(status_kb(pids["langgraph"], "VmHWM") / 1024, 1)
        accepted = [a for a in answers if "run" in a]
        replies = await assistant_replies(http, [a["thread"] for a in accepted])
        errors = await run_errors(http, [s for s in final.values() if s["status"] == "error"])
    calls = await model_calls(peer.sim_url)
    per_run_calls = Counter(calls[f"burst {a['n']}"] for a in accepted)
    finished = {r: epoch(s["updated_at"]) for r, s in final.items() if s["status"] == "success"}
    completion = [finished[a["run"]] - a["sent"] for a in accepted if a["run"] in finished]
    last = max(finished.values()) - first if finished else None
    statuses = Counter(s["status"] for s in final.values())
    statuses["unfinished"] = len(accepted) - len(final)
    failures = Counter(a["error"].split(" ", 1)[0] for a in answers if "error" in a)
    done = statuses["success"]
    figures = {
        "system": "langgraph dev (in-memory runtime)",
        "jobs": args.jobs,
        "latency_s": args.latency,
        "jobs_per_worker": args.jobs_per_worker,
        "target_s": args.target,
        "thread_setup_s": round(setup, 2),
        "last_completion_after_first_submit_s": round(last, 3) if last is not None else None,
        "met_target": last is not None and last <= args.target and done == args.jobs,
        "submit_window_s": round(max(a["sent"] for a in answers) - first, 3),
        "post_latency_s": spread([a["latency"] for a in answers]),
        "completion_s": spread(completion),
        "refused": len(answers) - len(accepted),
        "post_failures": dict(failures),
        "post_failure_examples": sorted({a["error"][:160] for a in answers if "error" in a})[:5],
        "statuses": {k: v for k, v in statuses.items() if v},
        "run_error_examples": errors,
        "assistant_messages_per_job": {str(k): v for k, v in sorted(replies.items())},
        "model_calls_per_job": {str(k): v for k, v in sorted(per_run_calls.items())},
        "doubled": sum(v for k, v in replies.items() if k > 1)
        + sum(v for k, v in per_run_calls.items() if k > 1),
        "server_rss_peak_mb": rss_peak_mb,
        "cpu_seconds_during_submits": cpu_submits,
        "cpu_seconds_from_submit_to_last_follow": cpu,
        # Server and model, polling included: the same scope as chatbus's stack figure.
        "stack_cpu_ms_per_completed_job": round(1000 * sum(cpu.values()) / done, 1)
        if done else None,
        "server_cpu_ms_per_completed_job": round(1000 * cpu["langgraph"] / done, 1)
        if done else None,
    }
    return figures


def build_parser() -> argparse.ArgumentParser:
    """Describe the options (compare.py builds its runs from the same defaults)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--latency", type=float, default=5.0, help="model latency (s)")
    parser.add_argument(
        "--jobs-per-worker", type=int, default=600,
        help="--n-jobs-per-worker of langgraph dev (runs at once; chatbus's AGENT_CONCURRENCY)",
    )
    parser.add_argument("--target", type=float, default=6.0, help="seconds, first submit → last")
    parser.add_argument("--follow", type=float, default=60.0, help="seconds to wait past latency")
    parser.add_argument("--langgraph", type=Path, help="langgraph command (default: .venv here)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the peer's logs (path printed)")
    return parser


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Start the peer, run the burst, stop the peer; return the figures."""
    langgraph = find_langgraph(args.langgraph)
    tmp = Path(tempfile.mkdtemp(prefix="peer-burst-"))
    try:
        peer = LangGraphPeer(
            tmp, latency=args.latency, jobs_per_worker=args.jobs_per_worker,
            langgraph=langgraph, keep_requests=2 * args.jobs + 100,
        )
        try:
            peer.start()
            return asyncio.run(run(peer, args))
        finally:
            peer.close()
    finally:
        if args.keep:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    """Start the peer, run the burst, print and store the figures."""
    args = build_parser().parse_args()
    figures = measure(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"\nlanggraph dev: {summary(figures)}; written to {args.output}")


if __name__ == "__main__":
    main()

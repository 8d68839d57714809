"""What does the LangGraph peer lose when it is killed between two of its saves?

The claim to check: the in-memory dev runtime keeps threads and runs in
memory and saves them to ``.langgraph_api`` every ~10 s (a background thread
pickles the whole store; ``langgraph_runtime_inmem._persistence``). So:

1. start the peer (see peer.py) with runs of ``--latency`` seconds;
2. submit batch A (``--batch`` threads, one run each) and wait for the next
   save (the saved file's mtime moves): A is on disk;
3. right after that save, submit batch B the same way: every POST answered
   200 with a run id, so the client holds B as accepted;
4. SIGKILL the server ``--kill-after`` seconds after the save (before the
   next one), restart it on the same folder;
5. ask for every accepted run (``GET /threads/{id}/runs/{run_id}``; 404 means
   it vanished) and thread, wait for the survivors to end, and count model
   calls per run (a run cut off by the kill and retried calls the model twice).

Install: the peer's own environment (see burst.py beside this file) and
``pip install -e .`` for this driver.
Run: ``python bench/peers/langgraph/kill.py [--batch 100] [--latency 20]``.
Prints a table and writes bench/results/peer_langgraph_kill.json.
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

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

RESULTS = ROOT / "bench" / "results" / "peer_langgraph_kill.json"


async def wait_for_save(peer: LangGraphPeer, after: float, limit: float = 30) -> float:
    """Wait until the saved file is written later than ``after``; return its mtime."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            stamp = peer.saved_file.stat().st_mtime
        except FileNotFoundError:
            stamp = 0.0
        if stamp > after:
            return stamp
        await asyncio.sleep(0.05)
    raise RuntimeError(f"no save of {peer.saved_file} within {limit} s")


async def submit_batch(http: httpx.AsyncClient, tag: str, count: int) -> list[tuple[str, str]]:
    """Create ``count`` threads and one run on each; return the accepted (thread, run) pairs."""
    threads = await create_threads(http, count)

    async def one(n: int, thread: str) -> tuple[str, str] | None:
        resp = await http.post(f"/threads/{thread}/runs", json=run_body(f"{tag} {n}"))
        return (thread, str(resp.json()["run_id"])) if resp.status_code == 200 else None

    answers = await asyncio.gather(*(one(n, t) for n, t in enumerate(threads)))
    return [a for a in answers if a is not None]


async def survivors_end(
    http: httpx.AsyncClient, runs: list[tuple[str, str]], limit: float
) -> dict[tuple[str, str], dict[str, Any] | None]:
    """Poll the runs until none is pending or running, or the limit passes; return the states."""
    deadline = time.monotonic() + limit
    while True:
        states = await run_states(http, runs)
        open_runs = [s for s in states.values() if s is not None and s["status"] not in TERMINAL]
        if not open_runs or time.monotonic() > deadline:
            return states
        await asyncio.sleep(1)


async def run(peer: LangGraphPeer, args: argparse.Namespace) -> dict[str, Any]:
    """Submit, save, submit, kill, restart; return what came back."""
    async with client(peer.url) as http:
        batch_a = await submit_batch(http, "A", args.batch)
        accepted_a = time.time()
        saved = await wait_for_save(peer, accepted_a)
        batch_b = await submit_batch(http, "B", args.batch)
        accepted_b = time.time()
    await asyncio.sleep(max(0.0, saved + args.kill_after - time.time()))
    unsaved = peer.saved_file.stat().st_mtime == saved
    killed = time.time()
    await asyncio.to_thread(peer.kill_server)
    began = time.perf_counter()
    await asyncio.to_thread(peer.start_server)
    restart_s = time.perf_counter() - began
    async with client(peer.url) as http:
        states = await survivors_end(http, batch_a + batch_b, args.latency + 120)
        threads_known = {
            t: (await http.get(f"/threads/{t}")).status_code == 200 for t, _ in batch_a + batch_b
        }
        live = [t for t, _ in batch_a + batch_b if threads_known[t]]
        replies = await assistant_replies(http, live)
    calls = await model_calls(peer.sim_url)

    def batch_figures(tag: str, batch: list[tuple[str, str]]) -> dict[str, Any]:
        found = [states[key] for key in batch]
        per_run_calls = Counter(calls[f"{tag} {n}"] for n in range(args.batch))
        return {
            "accepted": len(batch),
            "vanished_runs": sum(1 for s in found if s is None),
            "vanished_threads": sum(1 for t, _ in batch if not threads_known[t]),
            "final_statuses": dict(Counter(s["status"] for s in found if s is not None)),
            "model_calls_per_run": {str(k): v for k, v in sorted(per_run_calls.items())},
        }

    return {
        "latency_s": args.latency,
        "batch": args.batch,
        "a_saved_before_kill": batch_figures("A", batch_a),
        "b_accepted_after_last_save": batch_figures("B", batch_b),
        "b_submitted_in_s": round(accepted_b - saved, 2),
        "kill_after_last_save_s": round(killed - saved, 2),
        "no_save_between_b_and_kill": unsaved,
        "restart_s": round(restart_s, 1),
        "assistant_messages_per_surviving_thread": {
            str(k): v for k, v in sorted(replies.items())
        },
    }


def table(figures: dict[str, Any]) -> str:
    """Render the outcome by batch as a Markdown table."""
    lines = [
        "| batch | accepted | runs lost | threads lost | final statuses | model calls/run |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (
        ("a_saved_before_kill", "A: accepted, then saved"),
        ("b_accepted_after_last_save", "B: accepted after the last save"),
    ):
        b = figures[key]
        lines.append(
            f"| {label} | {b['accepted']} | {b['vanished_runs']} | {b['vanished_threads']} | "
            f"{b['final_statuses'] or '—'} | {b['model_calls_per_run']} |"
        )
    lines.append(
        f"\nkilled {figures['kill_after_last_save_s']} s after the last save "
        f"(no save in between: {figures['no_save_between_b_and_kill']}); restarted in "
        f"{figures['restart_s']} s; assistant messages per surviving thread: "
        f"{figures['assistant_messages_per_surviving_thread']}"
    )
    return "\n".join(lines)


def main() -> None:
    """Start the peer, run the kill, print and store what it lost."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch", type=int, default=100, help="runs in each batch")
    parser.add_argument("--latency", type=float, default=20.0, help="model latency (s)")
    parser.add_argument(
        "--kill-after", type=float, default=4.0, help="seconds after a save (saves are ~10 s apart)"
    )
    parser.add_argument("--langgraph", type=Path, help="langgraph command (default: .venv here)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="peer-kill-") as tmp:
        peer = LangGraphPeer(
            Path(tmp), latency=args.latency, jobs_per_worker=2 * args.batch + 10,
            langgraph=find_langgraph(args.langgraph), keep_requests=8 * args.batch + 100,
        )
        try:
            peer.start()
            figures = asyncio.run(run(peer, args))
        finally:
            peer.close()
    print(table(figures))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()

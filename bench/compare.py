"""chatbus beside the LangGraph peer in one run: burst and isolation figures, and their ratios.

Runs one after the other on this machine, each through its own module's
``measure`` with its own defaults except the options given here:

- burst: ``bench/http_burst.py`` (chatbus: the whole stack, one agent) and
  ``bench/peers/langgraph/burst.py`` (``langgraph dev``): ``--jobs`` runs of
  ``--latency`` s of simulated model latency submitted over HTTP at once;
- isolation: ``bench/isolation.py``'s chatbus system and
  ``bench/peers/langgraph/isolation.py``: read latency idle and with each of
  ``--loads`` slow runs (``--iso-latency`` s) in flight.

Then prints one table with chatbus / peer ratios (below 1: chatbus lower, so
faster or cheaper, for every row here) and writes bench/results/compare.json.

Install: ``pip install -e .`` (chatbus) and the peer's own environment
(``python -m venv bench/peers/langgraph/.venv`` and
``bench/peers/langgraph/.venv/bin/pip install -r bench/peers/langgraph/requirements.txt``).
Run: ``python bench/compare.py --jobs 500`` (about 6 minutes on two cores);
``--only burst`` or ``--only isolation`` for half of it.
"""

import argparse
import asyncio
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import http_burst, isolation  # noqa: E402
from bench.peers.langgraph import burst as peer_burst  # noqa: E402
from bench.peers.langgraph import isolation as peer_isolation  # noqa: E402
from bench.peers.langgraph.peer import find_langgraph  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "compare.json"
Row = tuple[str, float | None, float | None]


def run_bursts(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run chatbus's burst, then the peer's, with the same jobs and latency."""
    common = ["--jobs", str(args.jobs), "--latency", str(args.latency)]
    ours = http_burst.measure(http_burst.build_parser().parse_args(common))
    print(f"chatbus: {http_burst.summary(ours)}", flush=True)
    theirs = peer_burst.measure(
        peer_burst.build_parser().parse_args([*common, *langgraph_option(args)])
    )
    print(f"langgraph dev: {http_burst.summary(theirs)}", flush=True)
    return {"chatbus": ours, "peer": theirs}


def run_isolations(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run chatbus's isolation, then the peer's, with the same loads, latency and read rate."""
    common = [
        "--loads", ",".join(str(n) for n in args.loads), "--latency", str(args.iso_latency),
        "--rate", str(args.rate), "--duration", str(args.duration),
    ]
    ours = asyncio.run(
        isolation.measure(isolation.build_parser().parse_args([*common, "--systems", "chatbus"]))
    )["chatbus"]
    theirs = asyncio.run(
        peer_isolation.measure(
            peer_isolation.build_parser().parse_args([*common, *langgraph_option(args)])
        )
    )
    return {"chatbus": ours, "peer": theirs}


def langgraph_option(args: argparse.Namespace) -> list[str]:
    """Pass on the langgraph command when one was given."""
    return ["--langgraph", str(args.langgraph)] if args.langgraph else []


def burst_rows(ours: dict[str, Any], theirs: dict[str, Any]) -> list[Row]:
    """Pick the burst figures both sides report."""

    def completed(f: dict[str, Any]) -> int:
        return int(f["statuses"].get("completed", 0) + f["statuses"].get("success", 0))

    def doubled(f: dict[str, Any]) -> int:
        counts = f["assistant_messages_per_job"]
        return sum(v for k, v in counts.items() if int(k) > 1)

    jobs = ours["jobs"]
    return [
        ("burst: last completion after first submit (s)",
         ours["last_completion_after_first_submit_s"],
         theirs["last_completion_after_first_submit_s"]),
        ("burst: completion p50 (s)", ours["completion_s"]["p50"], theirs["completion_s"]["p50"]),
        ("burst: completion p99 (s)", ours["completion_s"]["p99"], theirs["completion_s"]["p99"]),
        ("burst: POST p50 (s)", ours["post_latency_s"]["p50"], theirs["post_latency_s"]["p50"]),
        ("burst: POST p99 (s)", ours["post_latency_s"]["p99"], theirs["post_latency_s"]["p99"]),
        (f"burst: submits refused (of {jobs})",
         sum(ours["post_failures"].values()), sum(theirs["post_failures"].values())),
        (f"burst: not completed (of {jobs})", jobs - completed(ours), jobs - completed(theirs)),
        ("burst: doubled replies", doubled(ours), doubled(theirs)),
        ("burst: CPU ms per completed job, every process",
         ours["stack_cpu_ms_per_completed_job"], theirs["stack_cpu_ms_per_completed_job"]),
    ]


def isolation_rows(ours: dict[str, Any], theirs: dict[str, Any]) -> list[Row]:
    """Pick the read latencies of every load, and loaded/idle p99."""
    rows: list[Row] = []
    for load in ours:
        for key in ("p50_ms", "p99_ms"):
            rows.append(
                (f"isolation: read {key[:3]} ms, {load} in flight",
                 ours[load][key], theirs.get(load, {}).get(key))
            )
        rows.append(
            (f"isolation: failed reads, {load} in flight",
             ours[load]["failed"], theirs.get(load, {}).get("failed"))
        )
    idle, loaded = "0", str(max(int(n) for n in ours))
    if idle in ours and loaded != idle:

        def ratio(side: dict[str, Any]) -> float | None:
            a, b = side.get(loaded, {}).get("p99_ms"), side.get(idle, {}).get("p99_ms")
            return round(a / b, 2) if a and b else None

        rows.append((f"isolation: p99 {loaded} in flight / idle", ratio(ours), ratio(theirs)))
    return rows


def render(rows: list[Row]) -> str:
    """Render the rows as a Markdown table with the chatbus / peer ratio."""

    def cell(value: float | None) -> str:
        if value is None:
            return "—"
        return f"{value:g}" if isinstance(value, int) else f"{value:.3g}"

    lines = ["| figure | chatbus | langgraph dev | chatbus / peer |", "|---|---|---|---|"]
    for name, ours, theirs in rows:
        ratio = f"{ours / theirs:.2f}" if ours is not None and theirs else "—"
        lines.append(f"| {name} | {cell(ours)} | {cell(theirs)} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    """Run both systems' figures, print one table, store everything."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=500, help="burst: runs submitted at once")
    parser.add_argument("--latency", type=float, default=5.0, help="burst: model latency (s)")
    parser.add_argument(
        "--loads", default="0,100,500", type=lambda s: [int(x) for x in s.split(",")],
        help="isolation: slow runs in flight",
    )
    parser.add_argument("--iso-latency", type=float, default=20.0, help="isolation: latency (s)")
    parser.add_argument("--rate", type=float, default=40.0, help="isolation: reads per second")
    parser.add_argument("--duration", type=float, default=10.0, help="isolation: seconds of reads")
    parser.add_argument("--only", choices=["burst", "isolation"])
    parser.add_argument("--langgraph", type=Path, help="langgraph command (default: its .venv)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    find_langgraph(args.langgraph)  # fail before chatbus's half runs, not after
    figures: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}}
    # Everything runs on this machine: what else ran shows in the load average.
    figures["load_average_before"] = os.getloadavg()
    rows: list[Row] = []
    halves = {
        "burst": (run_bursts, burst_rows),
        "isolation": (run_isolations, isolation_rows),
    }
    for name, (measure, pick) in halves.items():
        if args.only not in (None, name):
            continue
        try:
            figures[name] = measure(args)
        except Exception as exc:  # one half failing still leaves the other half's table
            figures[f"{name}_error"] = repr(exc)
            traceback.print_exc()
            continue
        rows += pick(figures[name]["chatbus"], figures[name]["peer"])
    figures["load_average_after"] = os.getloadavg()
    print()
    print(render(rows))
    print(
        "\nload average (1, 5, 15 min) before: "
        f"{', '.join(f'{x:.2f}' for x in figures['load_average_before'])}; after: "
        f"{', '.join(f'{x:.2f}' for x in figures['load_average_after'])}"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()

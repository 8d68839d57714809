"""Start child processes, mirror their warnings, and notice when one dies."""

import asyncio
import json
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

CONSOLE_LEVELS = {"warning", "error", "critical", "exception"}


@dataclass
class Child:
    """One process of the stack and where its output goes."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=30))
    pump: asyncio.Task[None] | None = None


def service_argv(module: str) -> list[str]:
    """Run a service module with this launcher's own Python."""
    return [sys.executable, "-m", module]


def echo(line: str) -> None:
    """Print a launcher line to the console at once."""
    print(line, flush=True)


def worth_showing(line: str) -> bool:
    """Tell whether a child's log line belongs on the console (warnings and worse)."""
    try:
        record = json.loads(line)
    except ValueError:
        return "Traceback" in line or "ERROR" in line or "WARNING" in line
    return isinstance(record, dict) and str(record.get("level", "")).lower() in CONSOLE_LEVELS


class Supervisor:
    """Own the children: start them in order, stop them in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.stopping = False

    async def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        """Start a child with its output in ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child = Child(name, argv, env, self.log_dir / f"{name}.log")
        # Own session: a terminal's Ctrl-C reaches only the launcher, which stops children in order.
        child.proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        child.pump = asyncio.create_task(self._pump(child), name=f"pump-{name}")
        self.children.append(child)
        return child

    async def _pump(self, child: Child) -> None:
        assert child.proc is not None and child.proc.stdout is not None
        with child.log_path.open("ab") as log:
            async for raw in child.proc.stdout:
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", "replace").rstrip()
                child.tail.append(line)
                if worth_showing(line):
                    echo(f"[{child.name}] {line}")

    async def wait_first_exit(self) -> Child:
        """Return the first child that exits."""
        waits = {
            asyncio.create_task(c.proc.wait()): c for c in self.children if c.proc is not None
        }
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        return waits[next(iter(done))]

    def dead(self) -> Child | None:
        """Return a child that has already exited, if any."""
        for child in self.children:
            if child.proc is not None and child.proc.returncode is not None:
                return child
        return None

    async def stop_all(self, timeout: float) -> None:
        """Send SIGTERM in reverse start order; SIGKILL whatever outlives ``timeout``."""
        self.stopping = True
        for child in reversed(self.children):
            proc = child.proc
            if proc is None or proc.returncode is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                echo(f"chatbus: {child.name} did not stop within {timeout:.0f}s; killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        for child in self.children:
            if child.pump is not None:
                await asyncio.gather(child.pump, return_exceptions=True)

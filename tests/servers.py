"""Find or start the real servers the integration tests need.

Order for each server: an environment variable (CI points at the machine's
servers), a private process from a local binary, a testcontainers container
when a Docker engine answers, else the test is skipped with the reason.
"""

import importlib
import os
import shutil
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.launcher.natsserver import NatsServer, free_port, wait_for_port

NATS_IMAGE = os.environ.get("CHATBUS_TEST_NATS_IMAGE", "nats:2.11")
POSTGRES_IMAGE = os.environ.get("CHATBUS_TEST_POSTGRES_IMAGE", "postgres:16")
REDIS_IMAGE = os.environ.get("CHATBUS_TEST_REDIS_IMAGE", "redis:7")


def docker_answers() -> str | None:
    """Return None when a Docker engine answers ``GET /_ping``, else why not."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = host.removeprefix("unix://")
        else:
            hostport = host.split("://", 1)[-1].rsplit(":", 1)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (hostport[0], int(hostport[1]) if len(hostport) > 1 else 2375)
        with sock:
            sock.settimeout(2)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = sock.recv(64)
    except (OSError, ValueError) as exc:
        return f"no Docker engine answers at {host} ({exc})"
    if b" 200 " not in answer:
        return f"the Docker engine at {host} answered {answer[:40]!r}"
    return None


@contextmanager
def nats_server() -> Iterator[str]:
    """Yield the URL of a NATS server with JetStream."""
    if url := os.environ.get("CHATBUS_TEST_NATS_URL"):
        yield url
        return
    try:
        with tempfile.TemporaryDirectory(prefix="chatbus-nats-") as tmp:
            server = NatsServer(Path(tmp))
            server.start()
            try:
                yield server.url
            finally:
                server.stop()
            return
    except FileNotFoundError:
        pass
    if reason := docker_answers():
        raise SkipServer(f"NATS: no CHATBUS_TEST_NATS_URL, no nats-server binary, {reason}")
    NatsContainer = _container_class("nats", "NatsContainer")

    with NatsContainer(NATS_IMAGE, jetstream=True) as container:
        yield container.nats_uri()


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an asyncpg SQLAlchemy URL of a Postgres database the tests may wipe."""
    if url := os.environ.get("CHATBUS_TEST_POSTGRES_URL"):
        yield url
        return
    if reason := docker_answers():
        raise SkipServer(f"Postgres: no CHATBUS_TEST_POSTGRES_URL and {reason}")
    PostgresContainer = _container_class("postgres", "PostgresContainer")

    with PostgresContainer(POSTGRES_IMAGE, driver="asyncpg") as container:
        yield container.get_connection_url()


@contextmanager
def redis_server() -> Iterator[str]:
    """Yield the URL of a Redis server the tests may flush."""
    if url := os.environ.get("CHATBUS_TEST_REDIS_URL"):
        yield url
        return
    if binary := shutil.which("redis-server"):
        port = free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not wait_for_port(port, 10):
                raise SkipServer("Redis: redis-server did not start")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        return
    if reason := docker_answers():
        raise SkipServer(f"Redis: no CHATBUS_TEST_REDIS_URL, no redis-server binary, {reason}")
    RedisContainer = _container_class("redis", "RedisContainer")

    with RedisContainer(REDIS_IMAGE) as container:
        host = container.get_container_host_ip()
        yield f"redis://{host}:{container.get_exposed_port(6379)}/0"


def _container_class(module: str, name: str) -> Any:
    """Import a testcontainers class; its own deprecation warnings are not ours to fix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        mod = importlib.import_module(f"testcontainers.community.{module}")
    return getattr(mod, name)


class SkipServer(Exception):
    """No way to get the server here; the message says why."""


def port_open(host: str, port: int) -> bool:
    """Tell whether a TCP port answers."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False

"""Find or start the real servers the integration tests need.

Order for each server: an environment variable (CI points at the machine's
servers), a private process from a local binary, a testcontainers container
when a Docker engine answers, else the test is skipped with the reason.

Container images: ``CHATBUS_TEST_<NATS|POSTGRES|REDIS>_IMAGE`` when set, else the
image ``docker/build-images.sh`` built (names in ``docker/local-images.env``) when
the engine has it, else the official image from a registry.
"""

import importlib
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.launcher.natsserver import NatsServer, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
LOCAL_IMAGES_FILE = ROOT / "docker" / "local-images.env"
# kind: (override variable, variable in docker/local-images.env, official image)
IMAGES = {
    "nats": ("CHATBUS_TEST_NATS_IMAGE", "NATS_IMAGE", "nats:2.11"),
    "postgres": ("CHATBUS_TEST_POSTGRES_IMAGE", "POSTGRES_IMAGE", "postgres:16"),
    "redis": ("CHATBUS_TEST_REDIS_IMAGE", "REDIS_IMAGE", "redis:7"),
}
# Ryuk, testcontainers' reaper, is an image of its own that cannot be pulled everywhere;
# every container here is stopped by its context manager instead.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


def local_images() -> dict[str, str]:
    """Return the image names of ``docker/local-images.env`` (variable: image)."""
    names: dict[str, str] = {}
    for line in LOCAL_IMAGES_FILE.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            names[key.strip()] = value.strip()
    return names


def _engine_get(path: str) -> tuple[int, bytes]:
    """GET a path of the Docker engine's API; return the status and the start of the body."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
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
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        answer = sock.recv(256)
    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b"0"
    return int(status) if status.isdigit() else 0, answer


def docker_answers() -> str | None:
    """Return None when a Docker engine answers ``GET /_ping``, else why not."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        status, answer = _engine_get("/_ping")
    except (OSError, ValueError) as exc:
        return f"no Docker engine answers at {host} ({exc})"
    if status != 200:
        return f"the Docker engine at {host} answered {answer[:40]!r}"
    return None


def image_exists(name: str) -> bool:
    """Tell whether the Docker engine has the image (False when no engine answers)."""
    try:
        status, _ = _engine_get(f"/images/{urllib.parse.quote(name, safe='')}/json")
    except (OSError, ValueError):
        return False
    return status == 200


def container_image(kind: str) -> str:
    """Name the image of a ``nats``, ``postgres`` or ``redis`` test container."""
    override, local_key, official = IMAGES[kind]
    if name := os.environ.get(override):
        return name
    local = local_images().get(local_key)
    return local if local and image_exists(local) else official


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
    with nats_container("no CHATBUS_TEST_NATS_URL, no nats-server binary") as url:
        yield url


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an asyncpg SQLAlchemy URL of a Postgres database the tests may wipe."""
    if url := os.environ.get("CHATBUS_TEST_POSTGRES_URL"):
        yield url
        return
    with postgres_container("no CHATBUS_TEST_POSTGRES_URL") as url:
        yield url


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
    with redis_container("no CHATBUS_TEST_REDIS_URL, no redis-server binary") as url:
        yield url


def _need_engine(server: str, why: str) -> None:
    if reason := docker_answers():
        raise SkipServer(f"{server}: {why}{', ' if why else ''}{reason}")


@contextmanager
def nats_container(why: str = "") -> Iterator[str]:
    """Yield the URL of a NATS container with JetStream."""
    _need_engine("NATS", why)
    NatsContainer = _container_class("nats", "NatsContainer")

    with _running(NatsContainer(container_image("nats"), jetstream=True)) as container:
        yield container.nats_uri()


@contextmanager
def postgres_container(why: str = "") -> Iterator[str]:
    """Yield an asyncpg SQLAlchemy URL of a Postgres container's database."""
    _need_engine("Postgres", why)
    PostgresContainer = _container_class("postgres", "PostgresContainer")

    with _running(PostgresContainer(container_image("postgres"), driver="asyncpg")) as container:
        yield container.get_connection_url()


@contextmanager
def redis_container(why: str = "") -> Iterator[str]:
    """Yield the URL of a Redis container."""
    _need_engine("Redis", why)
    RedisContainer = _container_class("redis", "RedisContainer")

    with _running(RedisContainer(container_image("redis"))) as container:
        host = container.get_container_host_ip()
        yield f"redis://{host}:{container.get_exposed_port(6379)}/0"


@contextmanager
def _running(container: Any) -> Iterator[Any]:
    """Start a container and stop it afterwards; its own deprecation warnings are not ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"testcontainers\.")
        container.start()
    try:
        yield container
    finally:
        container.stop()


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

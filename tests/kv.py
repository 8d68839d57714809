"""An in-memory stand-in for the subset of a JetStream KV bucket the services use.

Compare-and-set (``create``, ``update``, ``delete`` with ``last``), ``put``; watches
that behave like nats-py's (the current entries first, then a ``None`` marker, then live
changes; ``updates`` raises the NATS timeout when nothing comes in time); and, for
:meth:`services.runtime.kv.Entries.wait`, an ordered consumer on one key's subject
(``_js.subscribe``) that delivers the key's last entry, then every later one.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL


@dataclass
class FakeEntry:
    """A bucket entry: the value, its revision, its key and its operation (None: a put)."""

    value: bytes | None
    revision: int
    key: str = ""
    operation: str | None = None


class FakeWatcher:
    """Entries of the keys a watch matches, as nats-py's ``KeyWatcher`` hands them out."""

    def __init__(self, kv: "FakeKV", pattern: str) -> None:
        self.kv = kv
        self.pattern = pattern
        self.queue: asyncio.Queue[FakeEntry | None] = asyncio.Queue()
        self.stopped = False
        for key, entry in sorted(kv.entries.items(), key=lambda item: item[1].revision):
            if self.matches(key):
                self.queue.put_nowait(entry)
        self.queue.put_nowait(None)

    def matches(self, key: str) -> bool:
        """Tell whether the watch covers ``key``."""
        return self.pattern == ">" or self.pattern == key

    async def updates(self, timeout: float = 5.0) -> FakeEntry | None:
        """Return the next entry (None: the end of the current ones); time out as NATS does."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise nats.errors.TimeoutError from None

    async def stop(self) -> None:
        """Stop receiving changes."""
        self.stopped = True
        self.kv.watchers.remove(self)


@dataclass
class FakeMsg:
    """A bucket entry as a JetStream message on ``$KV.<bucket>.<key>``."""

    data: bytes
    headers: dict[str, str] | None
    metadata: Any


class FakeSubscription:
    """An ordered consumer on one key: messages handed to its callback in order."""

    def __init__(self, js: "FakeJetStream", key: str, cb: Callable[[Any], Awaitable[None]]):
        self.js = js
        self.key = key
        self.queue: asyncio.Queue[FakeMsg] = asyncio.Queue()
        self.pump = asyncio.create_task(self._pump(cb))

    def deliver(self, entry: FakeEntry) -> None:
        headers = {"KV-Operation": entry.operation} if entry.operation else None
        metadata = SimpleNamespace(sequence=SimpleNamespace(stream=entry.revision))
        self.queue.put_nowait(FakeMsg(entry.value or b"", headers, metadata))

    async def _pump(self, cb: Callable[[Any], Awaitable[None]]) -> None:
        while True:
            await cb(await self.queue.get())

    async def unsubscribe(self) -> None:
        self.pump.cancel()
        self.js.subscriptions.remove(self)


class FakeJetStream:
    """``subscribe`` as :meth:`Entries.wait` calls it, over one fake bucket."""

    def __init__(self, kv: "FakeKV") -> None:
        self.kv = kv
        self.subscriptions: list[FakeSubscription] = []

    async def subscribe(
        self, subject: str, cb: Callable[[Any], Awaitable[None]], **_: Any
    ) -> FakeSubscription:
        prefix = f"$KV.{self.kv._name}."
        assert subject.startswith(prefix), subject
        sub = FakeSubscription(self, subject.removeprefix(prefix), cb)
        if (entry := self.kv.entries.get(sub.key)) is not None:
            sub.deliver(entry)  # LAST_PER_SUBJECT: the current entry first
        self.subscriptions.append(sub)
        return sub


class FakeKV:
    """A bucket over a dict, with the bucket's compare-and-set errors and watches."""

    def __init__(self, name: str = "fake") -> None:
        self.entries: dict[str, FakeEntry] = {}
        self.revision = 0
        self.watchers: list[FakeWatcher] = []
        self._name = name
        self._js = FakeJetStream(self)

    async def get(self, key: str) -> FakeEntry:
        """Return the latest entry of a key."""
        entry = self.entries.get(key)
        if entry is None or entry.operation is not None:
            raise KeyNotFoundError
        return entry

    async def create(self, key: str, value: bytes) -> int:
        """Store a new key (a deleted key counts as new)."""
        if key in self.entries and self.entries[key].operation is None:
            raise KeyWrongLastSequenceError
        return self._write(key, value, None)

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Replace a key at the expected revision."""
        self._check(key, last)
        return self._write(key, value, None)

    async def put(self, key: str, value: bytes) -> int:
        """Store a value whatever was there."""
        return self._write(key, value, None)

    async def delete(self, key: str, last: int | None = None) -> bool:
        """Leave a delete marker (only at the expected revision, when given)."""
        if last is not None:
            self._check(key, last)
        self._write(key, b"", KV_DEL)
        return True

    async def watch(self, key: str) -> FakeWatcher:
        """Watch one key."""
        watcher = FakeWatcher(self, key)
        self.watchers.append(watcher)
        return watcher

    async def watchall(self) -> FakeWatcher:
        """Watch every key."""
        return await self.watch(">")

    def _check(self, key: str, last: int) -> None:
        if key not in self.entries or self.entries[key].revision != last:
            raise KeyWrongLastSequenceError

    def _write(self, key: str, value: bytes, operation: str | None) -> int:
        self.revision += 1
        entry = FakeEntry(value, self.revision, key, operation)
        self.entries[key] = entry
        for watcher in self.watchers:
            if watcher.matches(key):
                watcher.queue.put_nowait(entry)
        for sub in self._js.subscriptions:
            if sub.key == key:
                sub.deliver(entry)
        return self.revision

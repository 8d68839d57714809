"""An in-memory stand-in for the compare-and-set subset of a JetStream KV bucket."""

from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError


@dataclass
class FakeEntry:
    """A bucket entry: the value and its revision."""

    value: bytes
    revision: int


class FakeKV:
    """``get``, ``create`` and ``update`` over a dict, with the bucket's CAS errors."""

    def __init__(self) -> None:
        self.entries: dict[str, FakeEntry] = {}
        self.revision = 0

    async def get(self, key: str) -> FakeEntry:
        """Return the latest entry of a key."""
        if key not in self.entries:
            raise KeyNotFoundError
        return self.entries[key]

    async def create(self, key: str, value: bytes) -> int:
        """Store a new key."""
        if key in self.entries:
            raise KeyWrongLastSequenceError
        return self._put(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Replace a key at the expected revision."""
        if key not in self.entries or self.entries[key].revision != last:
            raise KeyWrongLastSequenceError
        return self._put(key, value)

    def _put(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.entries[key] = FakeEntry(value, self.revision)
        return self.revision

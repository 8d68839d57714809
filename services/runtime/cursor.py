"""Opaque keyset cursors: the position of the last item of a newest-first page.

A cursor is ``base64url("<kind>|<created_at iso>|<id hex>")``, unpadded. The
kind (one letter per list) keeps a cursor of one list from being replayed
against another. Services turn :class:`MalformedCursor` into their ``invalid``.
"""

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID


class MalformedCursor(ValueError):
    """The token was not made by :func:`encode_cursor` for this kind of list."""


@dataclass(frozen=True)
class Position:
    """Where a newest-first page ended: items strictly older come next."""

    created_at: datetime
    id: UUID


def encode_cursor(kind: str, position: Position) -> str:
    """Render a position as an opaque token."""
    raw = f"{kind}|{position.created_at.isoformat()}|{position.id.hex}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(kind: str, token: str) -> Position:
    """Parse a token made by :func:`encode_cursor`, or raise :class:`MalformedCursor`."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        got_kind, created, ident = raw.split("|")
        created_at = datetime.fromisoformat(created)
        position = Position(created_at=created_at, id=UUID(hex=ident))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise MalformedCursor("malformed cursor") from exc
    if got_kind != kind or created_at.tzinfo is None:
        raise MalformedCursor("malformed cursor")
    return position

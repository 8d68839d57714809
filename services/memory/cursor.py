"""Opaque keyset cursors of recall pages: the position of the last memory of a page.

A cursor is ``base64url("r|<created_at iso>|<id hex>")``.
"""

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from services.memory.errors import InvalidInput

KIND = "r"


@dataclass(frozen=True)
class Position:
    """Where a newest-first page ended: memories strictly older come next."""

    created_at: datetime
    id: UUID


def encode_cursor(position: Position) -> str:
    """Render a position as an opaque token."""
    raw = f"{KIND}|{position.created_at.isoformat()}|{position.id.hex}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> Position:
    """Parse a token made by :func:`encode_cursor`, or raise :class:`InvalidInput`."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, created, ident = raw.split("|")
        created_at = datetime.fromisoformat(created)
        position = Position(created_at=created_at, id=UUID(hex=ident))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("malformed cursor") from exc
    if kind != KIND or created_at.tzinfo is None:
        raise InvalidInput("malformed cursor")
    return position

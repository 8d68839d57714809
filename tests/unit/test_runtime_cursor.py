"""Keyset cursors round-trip and refuse anything they did not make."""

import base64
import uuid
from datetime import UTC, datetime

import pytest

from services.runtime.cursor import MalformedCursor, Position, decode_cursor, encode_cursor


def test_round_trip_keeps_time_and_id() -> None:
    position = Position(datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC), uuid.uuid4())
    token = encode_cursor("m", position)
    assert decode_cursor("m", token) == position
    assert "=" not in token and "|" not in token


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not base64 at all!",
        "%%%",
        _b64("garbage"),
        _b64("m|yesterday|" + uuid.uuid4().hex),
        _b64("m|2024-01-01T00:00:00+00:00|not-a-uuid"),
        _b64("m|2024-01-01T00:00:00|" + uuid.uuid4().hex),  # naive time
        _b64("m|2024-01-01T00:00:00+00:00|" + uuid.uuid4().hex + "|extra"),
        base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
    ],
)
def test_garbage_is_rejected(token: str) -> None:
    with pytest.raises(MalformedCursor):
        decode_cursor("m", token)


def test_cursor_of_another_kind_is_rejected() -> None:
    token = encode_cursor("s", Position(datetime.now(UTC), uuid.uuid4()))
    with pytest.raises(MalformedCursor):
        decode_cursor("m", token)

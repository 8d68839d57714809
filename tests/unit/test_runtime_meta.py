"""RequestMeta travels in NATS headers and survives garbage in them."""

from contracts import subjects
from services.runtime.meta import RequestMeta


def test_headers_round_trip() -> None:
    meta = RequestMeta(request_id="r1", user_id="alice", deadline=1234.5)
    assert RequestMeta.from_headers(meta.headers()) == meta


def test_missing_request_id_gets_a_fresh_one() -> None:
    first = RequestMeta.from_headers({})
    second = RequestMeta.from_headers(None)
    assert first.request_id and second.request_id and first.request_id != second.request_id
    assert first.user_id is None and first.deadline is None


def test_garbled_deadline_is_ignored() -> None:
    for garbage in ("soon", "nan", ""):
        meta = RequestMeta.from_headers({subjects.HEADER_DEADLINE: garbage})
        assert meta.deadline is None
        assert meta.remaining(3.0) == 3.0


def test_remaining_never_negative() -> None:
    assert RequestMeta(deadline=1.0).remaining(5.0) == 0.0

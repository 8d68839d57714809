"""The webhooks pull consumer on real NATS: a retry (nak with a delay) comes back after its delay,
not after the consumer's ack_wait, while short fetches come and go."""

import asyncio
import time
from collections.abc import AsyncIterator
from itertools import pairwise

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from services.runtime.settle import ACK, Verdict, retry
from services.webhooks.consumer import PullConsumer
from tests.streams import eventually

pytestmark = pytest.mark.integration
STREAM, DURABLE = "PULL_CONSUMER_TEST", "pull-consumer-test"
ACK_WAIT = 30.0  # far beyond the test: only the nak's delay can bring a message back in time
DELAYS = (0.3, 0.7, 0.4, 0.9)


@pytest.fixture
async def nc(clean_nats: str) -> AsyncIterator[Client]:
    conn = await nats.connect(clean_nats)
    js = conn.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=["pulltest.>"]))
    await js.add_consumer(STREAM, ConsumerConfig(
        durable_name=DURABLE, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT, max_deliver=-1,
    ))
    yield conn
    await conn.close()


async def test_each_retry_is_handed_over_after_its_delay(nc: Client) -> None:
    arrivals: dict[bytes, list[tuple[float, int]]] = {b"a": [], b"b": []}
    done = asyncio.Event()

    async def handler(msg: Msg) -> Verdict:
        tries = arrivals[msg.data]
        tries.append((time.monotonic(), msg.metadata.num_delivered))
        if all(len(t) > len(DELAYS) for t in arrivals.values()):
            done.set()
        return retry(DELAYS[len(tries) - 1]) if len(tries) <= len(DELAYS) else ACK

    consumer = PullConsumer(
        nc.jetstream(), STREAM, DURABLE, handler, workers=4, fetch_timeout=0.2
    )
    await consumer.start()
    try:
        js = nc.jetstream()
        await js.publish("pulltest.a", b"a", stream=STREAM)
        await asyncio.sleep(0.25)  # the two retry schedules out of step with each other
        await js.publish("pulltest.b", b"b", stream=STREAM)
        await asyncio.wait_for(done.wait(), timeout=sum(DELAYS) + 5.0)
    finally:
        await consumer.stop(grace=1.0)

    for tries in arrivals.values():
        assert [count for _, count in tries] == list(range(1, len(DELAYS) + 2))
        gaps = [later - earlier for (earlier, _), (later, _) in pairwise(tries)]
        for gap, delay in zip(gaps, DELAYS, strict=True):
            assert delay * 0.9 <= gap < delay + 1.0, (gaps, DELAYS)
    info = await eventually(
        lambda: nc.jetstream().consumer_info(STREAM, DURABLE),
        lambda found: found.num_ack_pending == 0, 5.0,
    )
    assert info.num_ack_pending == 0 and info.num_pending == 0

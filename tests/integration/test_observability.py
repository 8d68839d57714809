"""Metrics, traces and error logs of the services, over a real NATS server and real HTTP."""

import asyncio
import gc
import io
import json
import logging
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import structlog
from faststream.nats import NatsBroker, NatsMessage
from nats.js.api import StreamConfig
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from contracts import subjects
from contracts.base import Ping, Pong
from contracts.chat import ChatDelta
from contracts.history import MessageRecord, SessionReply
from services.agent.app import create_app as create_agent
from services.agent.config import Settings as AgentSettings
from services.agent.llm import OpenAIChat
from services.agent.metrics import AgentMetrics
from services.gateway.app import create_app as create_gateway
from services.history.app import create_app as create_history
from services.history.config import Settings as HistorySettings
from services.launcher.natsserver import NatsServer, free_port
from services.memory.app import ObservedExtractor
from services.memory.config import Settings as MemorySettings
from services.memory.llm import OpenAIExtractor
from services.runtime.bus import BusClient, make_broker
from services.runtime.config import ServiceSettings
from services.runtime.logging import configure_logging, spawn
from services.runtime.meta import RequestMeta
from services.runtime.metrics import ServiceMetrics
from services.runtime.telemetry import Observability, Telemetry
from services.simllm.config import Settings as SimSettings
from services.simllm.server import running as running_sim
from tests.unit.test_agent_fakes import FakeJobs, make_request, queued
from tests.unit.test_gateway_fakes import FakeBus, bearer, make_settings

WAIT = 10.0
NO_TRACING: dict[str, Any] = {"otel_exporter_otlp_endpoint": None, "metrics_port": None}


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A private NATS server: these tests create streams and must not meet anyone else's."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@dataclass
class Spans:
    exporter: InMemorySpanExporter
    telemetry: Telemetry

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    async def wait_for(self, name: str) -> ReadableSpan:
        """Wait until a span of this name has ended (a handler ends its span after replying)."""
        async with asyncio.timeout(WAIT):
            while True:
                for span in self.finished():
                    if span.name == name:
                        return span
                await asyncio.sleep(0.02)


@pytest.fixture
def spans() -> Iterator[Spans]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Spans(exporter, Telemetry(provider))
    provider.shutdown()


class JsonLogs:
    """The JSON lines the services log, parsed."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream
        self.records: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        self.records = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return self.records

    def where(self, **fields: Any) -> list[dict[str, Any]]:
        return [r for r in self.read() if all(r.get(k) == v for k, v in fields.items())]

    async def wait_for(self, **fields: Any) -> list[dict[str, Any]]:
        async with asyncio.timeout(WAIT):
            while True:
                if found := self.where(**fields):
                    return found
                await asyncio.sleep(0.02)


@pytest.fixture
def logs() -> Iterator[JsonLogs]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    hooks = sys.excepthook, threading.excepthook
    # As in a service process, where the interpreter's own hooks are in place.
    sys.excepthook, threading.excepthook = sys.__excepthook__, threading.__excepthook__
    configure_logging("obs-test", "INFO", "json")
    stream = io.StringIO()
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    yield JsonLogs(stream)
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook, threading.excepthook = hooks
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def frames(record: dict[str, Any]) -> list[str]:
    """Return the function names of a logged stack trace."""
    return [frame["name"] for exc in record["exception"] for frame in exc["frames"]]


def history_settings(nats_url: str, tmp_path: Path, **overrides: Any) -> HistorySettings:
    values: dict[str, Any] = {
        **NO_TRACING,
        "nats_url": nats_url,
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/db/history.db",
        "instance": "obs-1",
        "redis_url": None,
    }
    return HistorySettings(**{**values, **overrides})


@pytest.fixture
async def history(
    nats_url: str, tmp_path: Path, spans: Spans
) -> AsyncIterator[HistorySettings]:
    settings = history_settings(nats_url, tmp_path, metrics_port=free_port())
    async with create_history(settings, telemetry=spans.telemetry):
        yield settings


# ---- tracing -----------------------------------------------------------------------------


@pytest.mark.integration
async def test_a_gateway_request_and_the_history_handler_share_one_trace(
    nats_url: str, history: HistorySettings, spans: Spans
) -> None:
    app = create_gateway(make_settings(nats_url=nats_url, **NO_TRACING), telemetry=spans.telemetry)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            created = await http.post(
                "/api/sessions", json={"persona": "default"}, headers=bearer("tracer")
            )
    assert created.status_code == 201, created.text

    handled = await spans.wait_for(f"{subjects.HISTORY_SESSION_CREATE} process")
    [server] = [
        s for s in spans.finished()
        if s.kind is trace.SpanKind.SERVER and s.attributes
        and s.attributes.get("http.route") == "/api/sessions"
    ]
    assert server.context is not None and handled.context is not None
    assert handled.context.trace_id == server.context.trace_id
    # The handler's span descends from the gateway's publish, not a fresh root.
    assert handled.parent is not None
    by_id = {s.context.span_id: s for s in spans.finished() if s.context is not None}
    ancestors = []
    parent = handled.parent
    while parent is not None and parent.span_id in by_id:
        ancestors.append(by_id[parent.span_id])
        parent = by_id[parent.span_id].parent
    assert server in ancestors


@pytest.mark.integration
async def test_a_chat_message_is_one_trace_from_http_through_the_agent_to_history(
    nats_url: str, history: HistorySettings, spans: Spans
) -> None:
    sim = SimSettings(simllm_port=free_port(), llm_sim_latency=0.01, llm_sim_tokens_per_second=0)
    async with running_sim(sim) as base_url:
        agent_settings = AgentSettings(
            **NO_TRACING, nats_url=nats_url, openai_base_url=base_url, llm_model="chatbus-sim",
            agent_concurrency=4, agent_memory_limit=0, instance="obs-agent",
        )
        gateway = create_gateway(
            make_settings(nats_url=nats_url, **NO_TRACING), telemetry=spans.telemetry
        )
        async with (
            create_agent(agent_settings, telemetry=spans.telemetry),
            gateway.router.lifespan_context(gateway),
        ):
            transport = httpx.ASGITransport(app=gateway)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                auth = bearer("tracer")
                session = await http.post("/api/sessions", json={"persona": "p"}, headers=auth)
                posted = await http.post(
                    f"/api/sessions/{session.json()['id']}/messages", params={"wait": 20},
                    json={"content": "trace me"}, headers=auth,
                )
            assert posted.status_code == 200 and posted.json()["status"] == "completed"
            job = await spans.wait_for(f"{subjects.CHAT_REQUESTED} process")

    [server] = [
        s for s in spans.finished()
        if s.kind is trace.SpanKind.SERVER and s.attributes
        and s.attributes.get("http.route") == "/api/sessions/{session_id}/messages"
    ]
    assert server.context is not None and job.context is not None
    trace_id = server.context.trace_id
    assert job.context.trace_id == trace_id
    in_trace = {s.name for s in spans.finished() if s.context and s.context.trace_id == trace_id}
    # The agent's requests to history, made for the job, belong to the same trace.
    assert f"{subjects.HISTORY_MESSAGE_LIST} process" in in_trace
    names = [s.name for s in spans.finished()]
    assert not [n for n in names if n.startswith(("_INBOX", subjects.CHAT_JOB_PREFIX))]


@pytest.mark.integration
async def test_the_agent_continues_the_trace_of_a_queued_job_and_counts_redeliveries(
    nats_url: str, spans: Spans
) -> None:
    name = f"OBS_{uuid.uuid4().hex[:8]}"
    subject = f"obs.{name}.jobs"
    nc = await nats.connect(nats_url)
    broker = NatsBroker(nats_url, middlewares=spans.telemetry.broker_middlewares())
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=name, subjects=[subject]))
        await broker.start()
        assert spans.telemetry.tracer is not None
        with spans.telemetry.tracer.start_as_current_span("enqueue") as enqueue:
            await broker.publish(Ping(), subject, stream=name, timeout=WAIT)
        observability = Observability(
            ServiceSettings(**NO_TRACING), "agent", telemetry=spans.telemetry
        )
        metrics = AgentMetrics(observability, "m")
        sub = await js.pull_subscribe(subject, durable="obs-agent", stream=name)
        seen: list[int] = []
        for _ in range(2):
            [msg] = await sub.fetch(1, timeout=WAIT)
            with metrics.delivery(msg):
                seen.append(trace.get_current_span().get_span_context().trace_id)
            await msg.nak()
    finally:
        await broker.stop()
        await nc.close()
    assert seen == [enqueue.get_span_context().trace_id] * 2
    registry = observability.metrics.registry
    assert registry.get_sample_value("chatbus_agent_redeliveries_total") == 1.0


def test_without_an_endpoint_nothing_is_set_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    settings = make_settings(**NO_TRACING)
    telemetry = Telemetry.from_settings(settings, "gateway")
    assert telemetry.provider is None and telemetry.tracer is None and not telemetry.enabled
    assert telemetry.broker_middlewares() == ()
    with telemetry.consumer_span("x process", {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16
                                                + "-01"}):
        assert not trace.get_current_span().get_span_context().is_valid
    app = create_gateway(settings, bus=FakeBus())
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
    # Only the metrics middlewares, none of FastStream's telemetry.
    middlewares = Observability(settings, "gateway").broker_middlewares()
    assert len(middlewares) == len(ServiceMetrics("gateway").broker_middlewares())
    # Nothing was installed process-wide either.
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)


async def test_with_an_endpoint_spans_go_to_it() -> None:
    settings = make_settings(otel_exporter_otlp_endpoint="http://127.0.0.1:4318/")
    telemetry = Telemetry.from_settings(settings, "gateway")
    try:
        assert telemetry.provider is not None
        assert telemetry.provider.resource.attributes["service.name"] == "chatbus-gateway"
        assert len(telemetry.broker_middlewares()) == 1
        app = create_gateway(settings, bus=FakeBus(), telemetry=telemetry)
        assert getattr(app, "_is_instrumented_by_opentelemetry", False)
    finally:
        await telemetry.shutdown()


# ---- metrics -----------------------------------------------------------------------------


@pytest.mark.integration
async def test_history_and_its_callers_fill_the_bus_metrics(
    nats_url: str, history: HistorySettings
) -> None:
    caller = ServiceMetrics("caller")
    broker = make_broker(ServiceSettings(nats_url=nats_url, **NO_TRACING), "caller",
                         caller.broker_middlewares())
    await broker.start()
    try:
        bus = BusClient(broker, WAIT, timer=caller.bus_requests)
        meta = RequestMeta(user_id="metrics-user")
        assert await bus.request(subjects.HISTORY_PING, Ping(), Pong, meta) is not None
        # Not a GetSession: answered "invalid" and dead-lettered.
        refused = await bus.request(subjects.HISTORY_SESSION_GET, Ping(), SessionReply, meta)
        assert refused.error is not None and refused.error.code == "invalid"
        with pytest.raises(Exception, match="no service answers"):
            await bus.request(f"obs.nobody.{uuid.uuid4().hex}", Ping(), Pong, meta)
        # Job events leave no per-job label behind.
        job = uuid.uuid4()
        delta = ChatDelta(job_id=job, attempt=1, text="x")
        await bus.publish(subjects.job_event(job, "delta"), delta, meta)
    finally:
        await broker.stop()

    def sample(name: str, registry: CollectorRegistry, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    requests = "chatbus_bus_request_duration_seconds_count"
    registry = caller.registry
    assert sample(requests, registry, subject=subjects.HISTORY_PING, outcome="ok") == 1.0
    assert sample(requests, registry, subject=subjects.HISTORY_SESSION_GET, outcome="ok") == 1.0
    nobody = [
        s for m in registry.collect() for s in m.samples
        if s.name == requests and s.labels["outcome"] == "no_responders"
    ]
    assert [s.value for s in nobody] == [1.0]
    exposed = [s.labels for m in registry.collect() for s in m.samples]
    assert not any(
        str(v).startswith(subjects.CHAT_JOB_PREFIX) for labels in exposed for v in labels.values()
    )

    assert history.metrics_port is not None
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{history.metrics_port}/metrics")).text
    get = subjects.HISTORY_SESSION_GET
    assert f'chatbus_bus_error_replies_total{{code="invalid",subject="{get}"}} 1.0' in text
    assert f'chatbus_dead_letters_total{{subject="{get}"}} 1.0' in text
    assert (
        "chatbus_received_processed_messages_duration_seconds_count"
        f'{{app_name="history",broker="nats",handler="{subjects.HISTORY_PING}"}} 1.0'
    ) in text
    assert "# TYPE chatbus_cache_hits_total counter" in text


@pytest.mark.integration
async def test_model_calls_are_timed_and_their_tokens_counted() -> None:
    sim = SimSettings(simllm_port=free_port(), llm_sim_latency=0.01, llm_sim_tokens_per_second=0)
    async with running_sim(sim) as base_url:
        agent_settings = AgentSettings(
            **NO_TRACING, openai_base_url=base_url, llm_model="chatbus-sim", llm_max_retries=0
        )
        metrics = AgentMetrics(Observability(agent_settings, "agent"), "chatbus-sim")
        chat = OpenAIChat(agent_settings, on_usage=metrics.llm.record_usage)
        llm = metrics.model(chat)
        try:
            pieces = [p async for p in llm.stream([{"role": "user", "content": "hello there"}])]
            with pytest.raises(Exception, match="500"):
                async for _ in llm.stream([{"role": "user", "content": "[sim:error]"}]):
                    pass
        finally:
            await chat.close()

        memory_settings = MemorySettings(
            **NO_TRACING, openai_base_url=base_url, llm_model="chatbus-sim", llm_max_retries=0
        )
        memory_llm = ServiceMetrics("memory").llm("chatbus-sim")
        extractor = OpenAIExtractor(memory_settings, on_usage=memory_llm.record_usage)
        said = MessageRecord(
            id=uuid.uuid4(), session_id=uuid.uuid4(), user_id="u", role="user",
            content="I like tea", created_at=make_request().created_at, job_id=None,
        )
        try:
            found = await ObservedExtractor(extractor, memory_llm).extract([said])
        finally:
            await extractor.close()

    assert "".join(str(p) for p in pieces).startswith("Echo: hello there")
    agent = metrics.llm

    def value(metric: Any, suffix: str, **labels: str) -> float:
        for family in metric.collect():
            for s in family.samples:
                if s.name.endswith(suffix) and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        raise AssertionError(f"no {suffix} sample with {labels}")

    assert value(agent.tokens, "_total", kind="prompt") > 0
    assert value(agent.tokens, "_total", kind="completion") > 0
    assert value(agent.first_token, "_count") == 1.0
    assert value(agent.duration, "_count", outcome="ok") == 1.0
    assert value(agent.duration, "_count", outcome="error") == 1.0
    assert found == ["The user said: I like tea"]
    assert value(memory_llm.tokens, "_total", kind="completion") > 0
    assert value(memory_llm.duration, "_count", outcome="ok") == 1.0
    assert value(memory_llm.first_token, "_count") == 1.0


async def test_the_agent_counts_each_job_it_ends_by_status() -> None:
    observability = Observability(ServiceSettings(**NO_TRACING), "agent")
    metrics = AgentMetrics(observability, "m")
    jobs = FakeJobs()
    store = metrics.job_store(jobs)
    request = make_request()
    created = await store.create(queued(request))
    running = await store.update(
        created.value.model_copy(update={"status": "running"}), created.revision
    )
    await store.update(running.value.model_copy(update={"status": "completed"}), running.revision)
    registry = observability.metrics.registry
    assert registry.get_sample_value("chatbus_agent_jobs_total", {"status": "completed"}) == 1.0
    assert registry.get_sample_value("chatbus_agent_jobs_total", {"status": "running"}) is None


# ---- errors in logs ----------------------------------------------------------------------


def _explode(where: str) -> None:
    raise RuntimeError(f"exploded in {where}")


@pytest.mark.integration
async def test_a_faststream_handler_failure_is_logged_once_with_stack_and_request_id(
    nats_url: str, logs: JsonLogs
) -> None:
    subject = f"obs.fail.{uuid.uuid4().hex}"
    broker = make_broker(ServiceSettings(nats_url=nats_url, **NO_TRACING), "obs-test")

    @broker.subscriber(subject)
    async def handler(msg: NatsMessage) -> None:
        _explode("a handler")

    await broker.start()
    try:
        headers = RequestMeta(request_id="rid-handler").headers()
        await broker.publish(Ping(), subject, headers=headers)
        await logs.wait_for(event="Processed", request_id="rid-handler")
    finally:
        await broker.stop()
    errors = [r for r in logs.where(request_id="rid-handler") if r["level"] == "error"]
    assert len(errors) == 1, errors
    assert "_explode" in frames(errors[0])


async def test_a_background_task_failure_is_logged_at_once_and_once(logs: JsonLogs) -> None:
    async def work() -> None:
        await asyncio.sleep(0)
        _explode("a task")

    with structlog.contextvars.bound_contextvars(request_id="rid-task"):
        task = spawn(work(), "obs-task")
    await task
    del task
    gc.collect()
    await asyncio.sleep(0)
    errors = [r for r in logs.read() if r["level"] in ("error", "critical")]
    assert len(errors) == 1, errors
    assert errors[0]["request_id"] == "rid-task" and errors[0]["task"] == "obs-task"
    assert "_explode" in frames(errors[0])


def test_an_uncaught_error_in_a_thread_is_logged_once(logs: JsonLogs) -> None:
    thread = threading.Thread(target=_explode, args=("a thread",), name="obs-thread")
    thread.start()
    thread.join()
    errors = [r for r in logs.read() if r["level"] == "error"]
    assert len(errors) == 1, errors
    assert errors[0]["thread"] == "obs-thread" and "_explode" in frames(errors[0])


async def test_a_sync_route_failing_in_the_thread_pool_is_logged_once_with_request_id(
    logs: JsonLogs,
) -> None:
    app = create_gateway(make_settings(**NO_TRACING), bus=FakeBus())

    def boom() -> None:
        structlog.get_logger("obs").info("inside the thread")
        _explode("a sync route")

    app.add_api_route("/obs-boom", boom)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        answer = await http.get("/obs-boom", headers={"X-Request-ID": "rid-sync"})
    assert answer.status_code == 500
    assert answer.json()["request_id"] == "rid-sync"
    assert logs.where(event="inside the thread", request_id="rid-sync")
    errors = [r for r in logs.read() if r["level"] == "error"]
    assert len(errors) == 1, errors
    assert errors[0]["request_id"] == "rid-sync" and "_explode" in frames(errors[0])

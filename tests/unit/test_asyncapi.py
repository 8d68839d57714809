"""The AsyncAPI document of the bus: up to date, complete, resolvable, true to the services."""

from pathlib import Path
from typing import Any
from urllib.parse import unquote

from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI

from contracts import subjects
from contracts.channels import CHANNELS, KV_PREFIX
from services.agent.app import create_app as create_agent
from services.agent.config import Settings as AgentSettings
from services.agent.subscribers import consumer_config
from services.history import subscribers as history_edges
from services.history.app import create_app as create_history
from services.history.config import Settings as HistorySettings
from services.memory import subscribers as memory_edges
from services.memory.app import create_app as create_memory
from services.memory.config import Settings as MemorySettings
from services.runtime.asyncapi import document, key_of, render
from services.webhooks import subscribers as webhooks_edges
from tests.unit.test_gateway_fakes import gateway_client

CHECKED_IN = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"
# Received by nats-py consumers, not FastStream subscribers: the agent's job consumer,
# the gateway's ordered consumers of a job's events, the webhooks service's pull
# consumers, and the bucket watches. (Request-reply answered by runtime.responder is
# checked through each service's routes.)
NOT_FASTSTREAM = {
    subjects.CHAT_REQUESTED,
    *(subjects.job_event("{job_id}", kind) for kind in subjects.JOB_EVENT_KINDS),
    subjects.MEMORY_STORED,
    subjects.WEBHOOK_DELIVER,
}
LLM = "http://127.0.0.1:1/v1"


def names_of_subjects_module() -> dict[str, str]:
    """Return every string constant of ``contracts.subjects``."""
    return {
        name: value
        for name, value in vars(subjects).items()
        if name.isupper() and isinstance(value, str)
    }


def resolve(doc: dict[str, Any], pointer: str) -> Any:
    """Follow a local ``$ref``, and the reference it leads to, if any."""
    assert pointer.startswith("#/"), pointer
    node: Any = doc
    for part in pointer[2:].split("/"):
        node = node[unquote(part).replace("~1", "/").replace("~0", "~")]
    if isinstance(node, dict) and set(node) == {"$ref"}:
        return resolve(doc, node["$ref"])
    return node


def refs(node: Any) -> list[str]:
    """Return every ``$ref`` under ``node``."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def receive_ops(spec: dict[str, Any]) -> set[tuple[str, str | None]]:
    """Return (address, queue group) of every receive operation of a document."""
    found = set()
    for operation in spec["operations"].values():
        if operation["action"] != "receive":
            continue
        channel = resolve(spec, operation["channel"]["$ref"])
        found.add((channel["address"], channel["bindings"]["nats"].get("queue")))
    return found


def test_the_checked_in_document_is_a_fresh_generation() -> None:
    assert CHECKED_IN.read_text(encoding="utf-8") == render(), (
        "docs/asyncapi.json is stale: run `chatbus asyncapi`"
    )


def test_every_name_of_the_subjects_module_is_in_the_document() -> None:
    text = render()
    addresses = {c["address"] for c in document()["channels"].values() if "address" in c}
    missing = [name for name, value in names_of_subjects_module().items() if value not in text]
    assert not missing, f"not in the AsyncAPI document: {missing}"
    for name, value in names_of_subjects_module().items():
        if name.startswith("HEADER_") or name.endswith(("_QUEUE", "_DURABLE", "_BUCKET")):
            continue
        # A subject, or the prefix of a family of subjects (deltas, dead letters).
        assert value in addresses or any(a.startswith(f"{value}.") for a in addresses), name
    for spec in subjects.ALL_STREAMS:
        assert f"`{spec.name}`" in text


def test_every_reference_resolves() -> None:
    doc = document()
    for pointer in refs(doc):
        assert resolve(doc, pointer) is not None, pointer


def test_requests_show_their_reply_and_events_their_payload() -> None:
    doc = document()
    for channel in CHANNELS:
        key = key_of(channel)
        names = [f"{key}:send"] + ([f"{key}:receive"] if channel.receivers else [])
        for name in names:
            operation = doc["operations"][name]
            [message] = [resolve(doc, r["$ref"]) for r in operation["messages"]]
            payload = resolve(doc, message["payload"]["$ref"])
            assert payload["title"] == channel.message.__name__, name
            if channel.reply is None:
                assert "reply" not in operation, name
                continue
            [answer] = [resolve(doc, r["$ref"]) for r in operation["reply"]["messages"]]
            assert resolve(doc, answer["payload"]["$ref"])["title"] == channel.reply.__name__
            reply_channel = resolve(doc, operation["reply"]["channel"]["$ref"])
            assert "address" not in reply_channel  # the requester's inbox
            assert name.split(":")[0] + ":reply" not in doc["operations"]


def test_templated_subjects_declare_their_parameters_and_buckets_their_keys() -> None:
    doc = document()
    for name, channel in doc["channels"].items():
        address = channel.get("address")
        if address and "{" in address:
            assert channel["parameters"], name
            for parameter in channel["parameters"].values():
                assert parameter["description"]
    buckets = {v for k, v in names_of_subjects_module().items() if k.endswith("_BUCKET")}
    assert {c.bucket for c in CHANNELS if c.bucket} == buckets
    entries = {c.subject for c in CHANNELS if c.bucket}
    assert {a for a, _ in receive_ops(doc) if a.startswith(f"{KV_PREFIX}.")} == entries
    assert all(entry.startswith(f"{KV_PREFIX}.") for entry in entries)


def service_brokers() -> list[NatsBroker]:
    """Build the history, memory and agent brokers as the services do, without connecting."""
    nats = "nats://127.0.0.1:1"
    history = create_history(
        HistorySettings(nats_url=nats, database_url="sqlite+aiosqlite:///:memory:")
    )
    memory = create_memory(
        MemorySettings(nats_url=nats, database_url="sqlite+aiosqlite:///:memory:",
                       openai_base_url=LLM)
    )
    agent = create_agent(AgentSettings(nats_url=nats, openai_base_url=LLM))
    brokers = [app.broker for app in (history, memory, agent)]
    assert all(isinstance(broker, NatsBroker) for broker in brokers)
    return [b for b in brokers if isinstance(b, NatsBroker)]


class AnyService:
    """Stands for a service when only the subjects of its routes are read."""

    def __getattr__(self, name: str) -> Any:
        return name


def responder_routes() -> set[tuple[str, str | None]]:
    """Return (subject, queue group) of every route the nats-py responders answer."""
    served: set[tuple[str, str | None]] = set()
    for module, queue in (
        (history_edges, subjects.HISTORY_QUEUE),
        (memory_edges, subjects.MEMORY_QUEUE),
        (webhooks_edges, subjects.WEBHOOKS_QUEUE),
    ):
        served |= {(route.subject, queue) for route in module.routes(AnyService())}
    return served


def test_every_subscriber_of_the_services_is_documented_and_nothing_else() -> None:
    served = responder_routes()
    for broker in service_brokers():
        served |= receive_ops(AsyncAPI(broker, schema_version="3.0.0").to_specification()
                              .to_jsonable())
    documented = {
        (address, queue)
        for address, queue in receive_ops(document())
        if address not in NOT_FASTSTREAM and not address.startswith(f"{KV_PREFIX}.")
    }
    assert served == documented


def test_the_agents_job_consumer_is_the_documented_one() -> None:
    config = consumer_config(AgentSettings(openai_base_url=LLM))
    [channel] = [c for c in CHANNELS if c.subject == config.filter_subject]
    assert channel.receivers == ("agent",)
    assert channel.durable == config.durable_name
    assert channel.stream == subjects.CHAT_JOBS_STREAM


async def test_the_gateway_serves_the_document() -> None:
    async with gateway_client() as (client, _):
        response = await client.get("/asyncapi.json")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.text == render()
        docs = (await client.get("/openapi.json")).json()
        assert "/asyncapi.json" in docs["paths"]

"""The gateway's OpenAPI document, fuzzed by Schemathesis against the whole stack.

NATS, history, memory, the agent, the simulated model and the gateway run as
real processes (:class:`tests.e2e.cluster.Cluster`); requests go over HTTP with
a valid token. Every answer must be documented: no 500, every status code and
body as the document says, errors as problem+json, bad input refused, good
input accepted. Two passes: each operation on its own (examples, boundary
values and random data), then workflows that follow the links Schemathesis
infers between operations (create a session, post to it, follow the job,
cancel it, delete the session...), so ids of real resources get fuzzed too.

Runs are deterministic (derandomized Hypothesis, no example database) and
bounded so the module takes about a minute on two cores.
"""

import os
import signal
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis.stateful import run_state_machine_as_test
from schemathesis import Case, Response

from services.gateway.app import create_app
from tests.e2e.cluster import SECRET, Cluster
from tests.fuzzing import fuzz_config, validate
from tests.unit.test_gateway_fakes import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

EXAMPLES_PER_OPERATION = 20
WORKFLOWS = 15
STEPS_PER_WORKFLOW = 8
READ_TIMEOUT = 30.0  # an event stream ends with its job; this only bounds a hang
# Answers must not depend on timing, or a workflow replayed by Hypothesis draws other
# steps: `?wait=` answers 202 at once (and never holds a case for a minute), and the
# per-user limits (tested on their own) never refuse the fuzzer.
GATEWAY_ENV = {
    "MAX_WAIT_SECONDS": "0", "MAX_MESSAGES_PER_MINUTE": "0", "MAX_ACTIVE_JOBS_PER_USER": "10000",
}
CONFIG = fuzz_config(SECRET, EXAMPLES_PER_OPERATION)
# The document is the one the running gateway serves (checked below). It is built here,
# at import: `@parametrize` needs it at collection, and the lazy fixture loader of
# Schemathesis does not run under this pytest.
DOCUMENT = schemathesis.openapi.from_dict(create_app(make_settings()).openapi(), config=CONFIG)
# Webhooks are left out: a fuzzed endpoint URL would have the stack send requests to
# whatever address the fuzzer made up. tests/integration/test_webhooks_api.py covers them.
SCHEMA = DOCUMENT.exclude(path_regex="^/api/webhooks")
WORKFLOW_SETTINGS = hypothesis.settings(
    max_examples=WORKFLOWS,
    stateful_step_count=STEPS_PER_WORKFLOW,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    # No shrinking: a workflow runs against a live stack whose answers move with time
    # (a job ends between two steps), so a replay would draw other rules and Hypothesis
    # would report that instead of the failure it found.
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.reuse, hypothesis.Phase.generate],
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Run the whole stack for the module; stop it and fail on a leftover process."""
    cluster = Cluster(tmp_path_factory.mktemp("fuzz"), gateway_env=GATEWAY_ENV)
    try:
        cluster.start()
        yield cluster
    finally:
        print(cluster.report(40))  # pytest shows it only when a test failed
        crashed = cluster.crashed()
        cluster.close()
        leftovers = cluster.orphans()
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not leftovers, f"processes outlived the stack: {leftovers}"
    assert not crashed, f"processes died during the fuzzing: {crashed}"


def call_kwargs(stack: Cluster) -> dict[str, Any]:
    """Reach the stack's gateway."""
    return {"base_url": stack.url(), "timeout": READ_TIMEOUT}


def test_the_fuzzed_document_is_the_one_served(stack: Cluster) -> None:
    with stack.client() as http:
        served = http.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == DOCUMENT.raw_schema


@SCHEMA.parametrize()
def test_each_operation_answers_as_documented(case: Case, stack: Cluster) -> None:
    kwargs = call_kwargs(stack)
    validate(case, case.call(**kwargs), **kwargs)


def test_workflows_over_real_resources_answer_as_documented(stack: Cluster) -> None:
    kwargs = call_kwargs(stack)

    # Whether a cancel answers 202 or 409, or how long an event stream lasts, depends on
    # when the job ends: those are fuzzed one call at a time above, not inside workflows.
    timed = SCHEMA.exclude(path_regex="^/api/jobs/[^/]+/(cancel|events)$")

    class Workflow(timed.as_state_machine()):
        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return kwargs

        def validate_response(
            self, response: Response, case: Case, additional_checks: Any = None, **_: Any
        ) -> None:
            validate(case, response, **kwargs)

    run_state_machine_as_test(Workflow, settings=WORKFLOW_SETTINGS)

"""Schemathesis as the gateway's tests use it: configuration and response checks.

Holds no tests of its own; ``tests/unit/test_gateway_fuzz.py`` (in-memory bus) and
``tests/integration/test_gateway_fuzz.py`` (the whole stack) import it.
"""

from typing import Any

from schemathesis import Case, Response
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import SchemathesisConfig

from services.gateway.auth import mint_token


def fuzz_config(secret: str, max_examples: int) -> SchemathesisConfig:
    """Generate deterministically, keep no example database, and sign in as ``fuzzer``.

    The token is given as the document's security scheme, so Schemathesis knows which
    requests carry it and which leave it out on purpose (those must get 401).
    """
    return SchemathesisConfig.from_dict(
        {
            "generation": {
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",
            },
            "auth": {"openapi": {"HTTPBearer": {"bearer": mint_token(secret, "fuzzer")}}},
        }
    )


def validate(case: Case, response: Response, **kwargs: Any) -> None:
    """Run every check, except that a cursor the gateway never issued may be refused.

    A cursor is opaque: the document allows any short string, but only the ones the
    gateway handed out are accepted; anything else is a 422 naming the cursor.
    """
    excluded = [positive_data_acceptance] if refuses_only_the_cursor(response) else []
    case.validate_response(response, excluded_checks=excluded, transport_kwargs=kwargs)


def refuses_only_the_cursor(response: Response) -> bool:
    """Tell whether the answer is a 422 whose one error is the ``cursor`` query parameter."""
    if response.status_code != 422:
        return False
    errors = response.json().get("errors") or []
    return [error.get("loc") for error in errors] == [["query", "cursor"]]

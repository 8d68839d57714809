"""The tokens the ``chatbus`` command prints are ones the gateway accepts."""

import pytest
from typer.testing import CliRunner

from services.gateway.auth import TokenVerifier
from services.launcher.cli import app, dev_token
from services.launcher.config import LauncherSettings

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


async def test_the_dev_token_carries_the_configured_audience_and_issuer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("JWT_AUDIENCE", "authenticated")
    monkeypatch.setenv("JWT_ISSUER", "https://example.supabase.co/auth/v1")
    token = dev_token(LauncherSettings(), "dev")
    verifier = TokenVerifier(
        secret=SECRET, jwks=None,
        audience="authenticated", issuer="https://example.supabase.co/auth/v1",
    )
    assert (await verifier.verify(token)).id == "dev"


async def test_chatbus_token_signs_with_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.delenv("JWT_AUDIENCE", raising=False)
    monkeypatch.delenv("JWT_ISSUER", raising=False)
    result = CliRunner().invoke(app, ["token", "alice"])
    assert result.exit_code == 0, result.output
    verifier = TokenVerifier(secret=SECRET, jwks=None)
    assert (await verifier.verify(result.output.strip())).id == "alice"

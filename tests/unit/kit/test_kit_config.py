"""Settings: parsed from PARAPET_* variables, documented, frozen, and clear about bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field, ValidationError

from parapet.kit.config import ServiceSettings, SettingsError, load_settings, settings_markdown


class MeteringLikeSettings(ServiceSettings):
    reservation_ttl_seconds: float = Field(
        60.0, gt=0, description="Unsettled reservations expire after this."
    )


def test_env_vars_are_parsed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PARAPET_HOST", "0.0.0.0")
    monkeypatch.setenv("PARAPET_PORT", "47105")
    monkeypatch.setenv("PARAPET_DATABASE_URL", "postgresql+psycopg://u:p%40ss@db:5432/parapet")
    monkeypatch.setenv("PARAPET_SHUTDOWN_GRACE_SECONDS", "2.5")
    monkeypatch.setenv("PARAPET_IDENTITY_JWKS_FILE", str(tmp_path / "jwks.json"))
    monkeypatch.setenv("PARAPET_LOG_FORMAT", "text")
    monkeypatch.setenv("PARAPET_RESERVATION_TTL_SECONDS", "15")
    settings = load_settings(MeteringLikeSettings)
    assert (settings.host, settings.port) == ("0.0.0.0", 47105)
    assert settings.database_url == "postgresql+psycopg://u:p%40ss@db:5432/parapet"
    assert settings.shutdown_grace_seconds == 2.5
    assert settings.identity_jwks_file == tmp_path / "jwks.json"
    assert settings.log_format == "text"
    assert settings.reservation_ttl_seconds == 15


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ServiceSettings.model_fields:
        monkeypatch.delenv(f"PARAPET_{name.upper()}", raising=False)
    settings = load_settings(ServiceSettings)
    assert (settings.host, settings.port) == ("127.0.0.1", 0)
    assert settings.database_url is None and settings.nats_url is None
    assert settings.shutdown_grace_seconds == 10.0 < 30  # under Kubernetes' termination grace
    assert (settings.identity_audience, settings.identity_issuer) == ("parapet", "parapet-auth")
    assert settings.log_format == "json" and settings.server_credentials() is None


def test_settings_are_frozen() -> None:
    settings = ServiceSettings()
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "mentions"),
    [
        ("PARAPET_PORT", "70000", "less than or equal to 65535"),
        ("PARAPET_PORT", "http", "valid integer"),
        ("PARAPET_LOG_FORMAT", "xml", "'json' or 'text'"),
        ("PARAPET_SHUTDOWN_GRACE_SECONDS", "-1", "greater than or equal to 0"),
        ("PARAPET_RESERVATION_TTL_SECONDS", "0", "greater than 0"),
    ],
)
def test_bad_values_raise_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, mentions: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(MeteringLikeSettings)
    message = str(caught.value)
    assert variable in message and mentions in message and repr(value) in message


def test_every_field_is_documented_in_the_markdown() -> None:
    markdown = settings_markdown(MeteringLikeSettings, title="metering")
    for name, info in MeteringLikeSettings.model_fields.items():
        assert info.description, f"{name} has no description"
        assert f"`PARAPET_{name.upper()}`" in markdown
    assert "| `PARAPET_PORT` | int | `0` |" in markdown
    assert "| `PARAPET_DATABASE_URL` | str \\| none | unset |" in markdown
    assert markdown.startswith("### metering\n")

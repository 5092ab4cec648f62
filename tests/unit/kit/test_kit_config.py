"""Settings: parsed from PARAPET_* variables, documented, frozen, and clear about bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import AnyUrl, Field, SecretStr, ValidationError

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
        # nats-py read these as host "http" (and "postgresql+psycopg"): the service served without NATS for ever.
        ("PARAPET_NATS_URL", "http://nats:4222", "nats://"),
        ("PARAPET_NATS_URL", "postgresql+psycopg://app@db:5432/parapet", "nats://"),
        ("PARAPET_NATS_URL", "nats://nats:port", "invalid"),
        # The kit's engine is psycopg 3's (async, and its connect options are libpq's).
        ("PARAPET_DATABASE_URL", "postgresql+asyncpg://app@db:5432/parapet", "postgresql+psycopg://"),
        ("PARAPET_DATABASE_URL", "nats://nats:4222", "postgresql+psycopg://"),
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


@pytest.mark.parametrize(
    ("variable", "value", "taken"),
    [
        ("PARAPET_NATS_URL", "nats://nats:4222", "nats://nats:4222"),
        ("PARAPET_NATS_URL", "tls://token@nats:4222", "tls://token@nats:4222"),
        ("PARAPET_NATS_URL", "wss://nats.example.com", "wss://nats.example.com"),
        ("PARAPET_NATS_URL", "nats:4222", "nats:4222"),
        (
            "PARAPET_DATABASE_URL",
            "postgresql+psycopg://app:pw@db:5432/parapet?sslmode=require",
            "postgresql+psycopg://app:pw@db:5432/parapet?sslmode=require",
        ),
        # A libpq URL, as most tools print one, is read as psycopg 3's.
        (
            "PARAPET_DATABASE_URL",
            "postgresql://app@db:5432/parapet",
            "postgresql+psycopg://app@db:5432/parapet",
        ),
        ("PARAPET_DATABASE_URL", "postgres://app@db/parapet", "postgresql+psycopg://app@db/parapet"),
    ],
)
def test_urls_of_the_right_kind_are_taken(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, taken: str
) -> None:
    monkeypatch.setenv(variable, value)
    settings = load_settings(MeteringLikeSettings)
    assert getattr(settings, variable.removeprefix("PARAPET_").lower()) == taken


def test_every_field_is_documented_in_the_markdown() -> None:
    markdown = settings_markdown(MeteringLikeSettings, title="metering")
    for name, info in MeteringLikeSettings.model_fields.items():
        assert info.description, f"{name} has no description"
        assert f"`PARAPET_{name.upper()}`" in markdown
    assert "| `PARAPET_PORT` | int | `0` |" in markdown
    assert "| `PARAPET_DATABASE_URL` | str \\| none | unset |" in markdown
    assert markdown.startswith("### metering\n")


class SecretHoldingSettings(ServiceSettings):
    masking_key: SecretStr | None = Field(None, min_length=40, description="A secret key.")
    provider_api_key: str | None = Field(None, min_length=40, description="A provider's API key.")


def test_a_refused_combination_names_its_variables_and_shows_no_other_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refusal of the settings as a whole (TLS files that do not fit together) once printed every input
    value it came with, the database password included, under the name ``? ()``."""
    monkeypatch.setenv("PARAPET_DATABASE_URL", "postgresql+psycopg://app:hunter2-db@db:5432/parapet")
    monkeypatch.setenv("PARAPET_TLS_REQUIRE_CLIENT_CERT", "true")
    with pytest.raises(SettingsError) as caught:
        load_settings(SecretHoldingSettings)
    message = str(caught.value)
    assert "PARAPET_TLS_REQUIRE_CLIENT_CERT needs PARAPET_TLS_CERT_FILE" in message
    assert "hunter2" not in message and "? ()" not in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PARAPET_MASKING_KEY", "short-secret-masking-key"),  # a SecretStr
        ("PARAPET_PROVIDER_API_KEY", "sk-short-secret-api-key"),  # a plain str named as a credential
    ],
)
def test_a_bad_secret_is_named_but_never_shown(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(SecretHoldingSettings)
    message = str(caught.value)
    assert variable in message and "at least 40" in message
    assert value not in message and "short-secret" not in message


def test_a_bad_url_is_shown_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARAPET_METRICS_PORT", "x")  # a valid URL elsewhere must not leak either
    monkeypatch.setenv("PARAPET_DATABASE_URL", "postgresql+psycopg://app:hunter2-db@db:5432/parapet")

    class UrlSettings(ServiceSettings):
        broker_url: AnyUrl = Field(description="A URL that must parse.")

    monkeypatch.setenv("PARAPET_BROKER_URL", "nats://app:hunter2-broker@host:port")
    with pytest.raises(SettingsError) as caught:
        load_settings(UrlSettings)
    message = str(caught.value)
    assert "PARAPET_BROKER_URL" in message and "PARAPET_METRICS_PORT" in message
    assert "hunter2" not in message and "app:***@" in message

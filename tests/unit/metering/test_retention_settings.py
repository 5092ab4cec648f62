"""The retention settings' rules: billing keeps processed event ids longer than the USAGE stream keeps
messages (else a redelivery counts twice), and its default also covers metering's default replay window."""

from __future__ import annotations

import pytest

from parapet.events.usage import USAGE_STREAM
from parapet.kit.config import SettingsError, load_settings
from services.billing.settings import BillingSettings
from services.metering.settings import MeteringSettings


def test_billing_refuses_a_processed_event_retention_within_the_stream_age() -> None:
    stream_age = USAGE_STREAM.max_age_seconds
    assert stream_age is not None
    with pytest.raises(SettingsError, match="PARAPET_PROCESSED_EVENT_RETENTION_SECONDS"):
        load_settings(BillingSettings, processed_event_retention_seconds=stream_age)
    assert load_settings(BillingSettings, processed_event_retention_seconds=stream_age + 1)


def test_the_defaults_keep_ids_past_every_redelivery_and_replay() -> None:
    billing, metering = BillingSettings(), MeteringSettings()
    stream_age = USAGE_STREAM.max_age_seconds or 0.0
    # A replay reaches events settled up to the outbox retention ago, and the republished message stays in the
    # stream for its max age: the id must outlive both.
    assert billing.processed_event_retention_seconds > stream_age + metering.outbox_retention_seconds
    # A reservation outlives the longest ttl by far: a Settle trails its reservation by the ttl plus the
    # gateway's outbox delay (a metering outage).
    assert metering.reservation_retention_seconds >= 7 * 86400 > metering.reservation_max_ttl_seconds

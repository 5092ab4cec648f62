"""The USAGE JetStream stream: declared by metering (the producer) and by billing (its reference consumer).

Limits retention, file storage, kept 7 days: long enough for a consumer to come back from an outage and
catch up; billing's durable consumer does not delete what it reads, so external consumers can read the
same events. The 2-minute duplicate window drops an event the relay republished after a crash between the
server's ack and marking the outbox row sent (that gap is milliseconds), without the memory cost of a long
window at thousands of events per second; consumers deduplicate by event id beyond it.
"""

from parapet.events.tenants import tenant_of_subject
from parapet.kit.bus import StreamSpec

# Bounds of one usage event, the same on both sides: metering refuses a settlement beyond them (INVALID_ARGUMENT),
# and billing sets aside an event beyond them, which came from no settlement.
#
# Every sum metering and billing keep is a PostgreSQL bigint (budget and rate counters, GetUsage totals, billing's
# rollups): an int64 figure near 2^63 overflowed them, refusing every later request of the window (INTERNAL) and
# blocking billing. 2^32 tokens is thousands of times the largest context window, and 2^46 micros is 70 million
# units of the currency per request; yet reaching 2^63 in one counter takes 2^30 requests at the token ceiling
# (prompt + completion), or 2^17 requests of 70 million units each, in one window: far beyond any traffic or
# spending these figures describe.
MAX_TOKENS = 2**32
MAX_MICROS = 2**46
MAX_NAME_CHARS = 256  # of each of model, provider and feature (and a settlement's requested model)
# Of model, provider and feature together, in UTF-8: billing's rollups are keyed by them, and PostgreSQL refuses an
# index entry over 2,704 bytes that compression cannot shrink (tenant, day and currency take under 100). Three
# names of 256 four-byte characters pass the character bound and fit no index.
MAX_NAMES_BYTES = 2400

SUBJECT_PREFIX = "parapet.usage.v1."
USAGE_STREAM = StreamSpec(
    name="USAGE",
    subjects=(SUBJECT_PREFIX + "*",),
    retention="limits",
    storage="file",
    max_age_seconds=7 * 24 * 3600.0,
    duplicate_window_seconds=120.0,
    description="parapet.usage.v1.UsageEvent per settled request (docs/usage-events.md)",
)


def subject(tenant_id: str) -> str:
    return SUBJECT_PREFIX + tenant_id


def tenant_of(subject_name: str) -> str | None:
    """The tenant a usage subject names, or None when it is not one of a valid tenant id."""
    return tenant_of_subject(SUBJECT_PREFIX, subject_name)


def names_too_long(model: str, provider: str, feature: str) -> bool:
    """Whether these names together are more than a rollup's key takes (``MAX_NAMES_BYTES``)."""
    return len(model.encode()) + len(provider.encode()) + len(feature.encode()) > MAX_NAMES_BYTES

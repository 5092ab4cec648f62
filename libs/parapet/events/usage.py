"""The USAGE JetStream stream: declared by metering (the producer) and by billing (its reference consumer).

Limits retention, file storage, kept 7 days: long enough for a consumer to come back from an outage and
catch up; billing's durable consumer does not delete what it reads, so external consumers can read the
same events. The 2-minute duplicate window drops an event the relay republished after a crash between the
server's ack and marking the outbox row sent (that gap is milliseconds), without the memory cost of a long
window at thousands of events per second; consumers deduplicate by event id beyond it.
"""

from parapet.events.tenants import tenant_of_subject
from parapet.kit.bus import StreamSpec

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

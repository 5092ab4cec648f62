"""Per-tenant subjects: every Parapet event stream puts the tenant in the subject's last token."""

from __future__ import annotations

from parapet.kit.identity import TENANT_ID_PATTERN


def tenant_of_subject(prefix: str, subject_name: str) -> str | None:
    """The tenant ``subject_name`` names after ``prefix``, or None when it is not a subject of a valid tenant id
    under ``prefix`` (a consumer then sets the message aside instead of trusting the tenant in its body)."""
    if not subject_name.startswith(prefix):
        return None
    tenant = subject_name[len(prefix) :]
    return tenant if TENANT_ID_PATTERN.fullmatch(tenant) else None

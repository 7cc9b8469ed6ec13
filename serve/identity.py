"""Who is calling: the identity every authenticated request carries, and the roles it may hold."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("clinician", "admin")


@dataclass(frozen=True)
class Identity:
    name: str  # the key's name or the SSO user; what the audit log records
    key_id: str | None  # None for proxy-authenticated users and the auth-off demo
    role: str
    rate_limit_per_minute: int | None = None  # this key's own limit, overriding the service's

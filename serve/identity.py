"""Who is calling, and what each role may do.

A route declares the one permission it needs (``serve.routes``); a role is a set of permissions.
``integration`` reads only what it submitted (``READ_OWN``): a PACS bridge must not browse other
patients. ``gateway`` (the DICOM gateway) also takes over delivering the results of instances others
stored by STOW-RS (``DELIVER``): their identifiers, results and source instance, nothing else.
``admin`` holds every permission (keys included); give day-to-day users narrower roles.
"""

from __future__ import annotations

from dataclasses import dataclass

PREDICT = "predict"  # classify an image, save the result
READ = "read"  # any stored prediction, image and patient listing
READ_OWN = "read_own"  # only the predictions this identity saved
REVIEW = "review"  # record a radiologist's verdict (the worklist)
AUDIT = "audit"  # read the audit log
KEYS = "keys"  # create, list and revoke API keys
MODEL = "model"  # the model card
DELIVER = "deliver"  # claim STOW-RS-received records whose results are due at the PACS, and report them

PERMISSIONS = (PREDICT, READ, READ_OWN, REVIEW, AUDIT, KEYS, MODEL, DELIVER)
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "clinician": frozenset({PREDICT, READ, MODEL}),
    "radiologist": frozenset({PREDICT, READ, REVIEW, MODEL}),
    "integration": frozenset({PREDICT, READ_OWN, MODEL}),
    "gateway": frozenset({PREDICT, READ_OWN, MODEL, DELIVER}),
    "auditor": frozenset({AUDIT}),
    "admin": frozenset(PERMISSIONS),
}
ROLES = tuple(ROLE_PERMISSIONS)


@dataclass(frozen=True)
class Identity:
    name: str  # the key's name or the SSO user; what the audit log records
    key_id: str | None  # None for proxy-authenticated users and the auth-off demo
    role: str
    rate_limit_per_minute: int | None = None  # this key's own limit, overriding the service's
    via: str = "bearer"  # bearer | session | proxy | demo: how the request proved it

    def may(self, permission: str) -> bool:
        permissions = ROLE_PERMISSIONS.get(self.role, frozenset())
        return permission in permissions or (permission == READ_OWN and READ in permissions)

    @property
    def reads_only_own(self) -> bool:
        return not self.may(READ) and self.may(READ_OWN)

    @property
    def owner(self) -> str:
        """What a saved record names as its creator's identity, for ``READ_OWN`` checks."""
        return self.key_id or f"user:{self.name}"

"""The service's one settings object: ``CXR_*`` environment variables, read once at the app builder.

Deployment-shaped settings (replicas, batch sizes, checkpoint path) live in ``serve_config.yaml``;
what differs per installation (where MongoDB is, size limits, timeouts) comes from the environment,
so one image runs everywhere. The builder (``serve.app.build_app``) passes this object to every
deployment's constructor; nothing below it reads the environment. Each knob has its one default here.

Secrets (``SECRET_FIELDS``) are the exception: Serve keeps deployment arguments in the GCS (with
fault tolerance, in Redis), so the builder passes them blank and each replica that needs one reads
it on its own node (``with_own_secrets``); pods that need none (the GPU nodes, the head) carry none.
On a node a secret is a ``CXR_*`` variable or, better, a file named like it in the folder
``CXR_SECRETS_DIR`` names (Kubernetes mounts a Secret's keys so): a file stays out of the
environment that every Ray worker process on the node inherits. A variable wins over a file.

Which checkpoint is served, highest first (applied in ``serve.app`` and ``BatchedClassifier``):
1. ``user_config.checkpoint`` of the BatchedClassifier deployment: a model roll, applied at runtime;
2. ``CXR_CHECKPOINT`` (``ServeSettings.checkpoint``): one config file for every installation;
3. ``args.checkpoint`` in ``serve_config.yaml``.
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SecretsSettingsSource, SettingsConfigDict

from cxr_model.formats import MAX_PIXELS
from serve.worklist import UrgencyPolicy

SECRET_FIELDS = ("mongodb_uri", "session_secret", "pseudonym_key", "proxy_secret")
SECRETS_DIR_VARIABLE = "CXR_SECRETS_DIR"  # where a node's secrets are files (see above)


class MissingSecret(RuntimeError):
    """A replica's pod lacks a secret that the app needs there (the Secret is not mounted on it)."""


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Every node may name the folder (one set of plain settings everywhere); only where the
        # Secret is mounted does it exist, and only there are files read.
        folder = os.environ.get(SECRETS_DIR_VARIABLE)
        if folder and Path(folder).is_dir():
            file_secret_settings = SecretsSettingsSource(settings_cls, secrets_dir=folder)
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    checkpoint: str | None = None
    # Unset: an embedded SecantusDB server is started once per Ray cluster on loopback.
    mongodb_uri: str | None = None
    mongodb_database: str = "cxr"
    embedded_db_dir: str = "runs/secantus-data"
    embedded_db_port: int = Field(default=27027, ge=1024, le=65535)
    mongodb_timeout_ms: int = Field(default=3000, ge=100)
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=MAX_PIXELS, ge=1024)  # decoded pixels per upload
    # POST /api/v1/predictions:batch (bridges, backfills): images per request, and the whole body's bound.
    max_batch_items: int = Field(default=16, ge=1, le=256)
    max_batch_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    image_cache_s: int = Field(default=3600, ge=0)  # browsers may keep a stored image this long (private)
    # Annotated pictures and Grad-CAM overlays are drawn on first request; each Ingress keeps this many bytes.
    view_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)

    # Who may call: api_key (bearer tokens for the API, a login session for the pages), proxy (an SSO
    # reverse proxy's identity header, trusted only from trusted_proxies), or off (the local demo only).
    auth: Literal["api_key", "proxy", "off"] = "api_key"
    demo: bool = False  # set by scripts/run.sh; nothing else may turn auth off
    proxy_user_header: str = "X-Forwarded-User"
    trusted_proxies: str = ""  # comma-separated CIDRs of the reverse proxies allowed to send that header
    # What a client cannot forge: the SSO proxy also sends this shared secret (a Secret in k8s). A peer
    # address alone is not enough: the HTTP server rewrites it from X-Forwarded-For on loopback.
    proxy_secret: str = ""
    proxy_secret_header: str = "X-CXR-Proxy-Secret"
    # Signing key for page sessions and keyed pseudonyms of patient IDs in logs. Set both in production
    # (a Secret); left empty, the app builder draws random ones (sessions end and pseudonyms change on redeploy).
    session_secret: str = ""
    pseudonym_key: str = ""
    session_hours: float = Field(default=12, gt=0, le=24 * 7)  # a page session's longest life
    session_idle_minutes: float = Field(default=30, gt=0)  # ended after this long unused
    rate_limit_per_minute: int = Field(default=600, ge=1)  # per API key / user, per Ingress replica
    # Credentials presented and refused (a wrong key, a forged session), per client address: the
    # unauthenticated work one client can cause is bounded.
    failed_auth_per_minute: int = Field(default=30, ge=1)
    # Every body but an upload's: login, logout, save and the like are a few short fields.
    max_form_bytes: int = Field(default=64 * 1024, ge=1024)
    # A verified key is trusted this long per Ingress replica (so a revocation takes effect within it),
    # and while the database is down, for this much longer.
    key_cache_s: float = Field(default=30, ge=0)
    key_stale_s: float = Field(default=900, ge=0)
    # The worklist's reading order (serve.worklist): a weight per label (JSON; others weigh 1), the
    # bands' cut-offs on weight x probability, and the longest wait before an entry goes to the top.
    worklist_weights: dict[str, float] = Field(
        default_factory=lambda: {"COVID-19": 3.0, "Lung Opacity": 2.0, "Viral Pneumonia": 2.0, "Normal": 0.0}
    )
    worklist_urgent_at: float = Field(default=1.5, ge=0)
    worklist_soon_at: float = Field(default=0.75, ge=0)
    worklist_max_wait_minutes: float = Field(default=240, gt=0)
    # A radiologist's claim on a study ("reading now"), so that two do not read the same one; it
    # lapses by itself after this long.
    review_claim_minutes: float = Field(default=15, gt=0, le=24 * 60)
    agreement_refresh_s: float = Field(default=60, gt=0)  # how often the review agreement gauges are recomputed
    # A gateway's hold on the STOW-RS records it claimed: if it reports none of them in this time
    # (it died), another gateway may claim them.
    delivery_lease_s: float = Field(default=300, gt=0)
    request_timeout_s: float = Field(default=30, gt=0)  # a prediction that takes longer gets a 504
    # Threads per Ingress replica for decoding, drawing and encoding, off the event loop. Each may hold
    # a decoded image of up to CXR_MAX_PIXELS, so this also bounds the replica's peak memory.
    ingress_threads: int = Field(default=4, ge=1, le=64)
    # Retry-After (s) for each way of being unavailable.
    retry_after_overloaded_s: int = Field(default=2, ge=1)
    retry_after_timeout_s: int = Field(default=5, ge=1)
    retry_after_model_changing_s: int = Field(default=2, ge=1)
    retry_after_database_s: int = Field(default=5, ge=1)
    # A replica that died under a prediction: the pause before it is retried (within the timeout).
    retry_pause_s: float = Field(default=0.5, gt=0)
    # The pages hold recent uploads per Ingress replica so "Save to record" stores what was shown.
    held_uploads: int = Field(default=32, ge=1)
    held_upload_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    held_upload_s: float = Field(default=900, gt=0)
    # Image files left by a save the database interrupted (no record names them) are removed once
    # older than the grace period, which must outlast any save still in progress.
    orphan_sweep_interval_s: float = Field(default=600, gt=0)
    orphan_grace_s: float = Field(default=900, ge=60)
    # Input drift without ground truth (cxr_model.drift): each classifier replica compares its last
    # drift_window images with the model card's validation-split reference, and exports PSI only once
    # it holds drift_min_window of them (two samples of one distribution differ by chance; fewer is noise).
    drift_window: int = Field(default=500, ge=10, le=100_000)
    drift_min_window: int = Field(default=100, ge=10)

    def for_deployments(self) -> ServeSettings:
        """What the builder passes down: the secrets set in this environment blanked (each replica
        reads them from its own), and development draws for keys set nowhere, so that every replica
        shares one (they change on redeploy; production sets both from a Secret)."""
        blank = {name: type(self).model_fields[name].default for name in SECRET_FIELDS if getattr(self, name)}
        keys = ("session_secret", "pseudonym_key")
        draws = {name: secrets.token_urlsafe(32) for name in keys if not getattr(self, name)}
        return self.model_copy(update=blank | draws)

    def with_own_secrets(self) -> ServeSettings:
        """In a replica: this node's own secrets (variables, or files in CXR_SECRETS_DIR) over what was passed down."""
        own = ServeSettings()
        settings = self.model_copy(update={name: getattr(own, name) for name in SECRET_FIELDS if getattr(own, name)})
        for name in ("session_secret", "pseudonym_key"):
            if not getattr(settings, name):
                raise MissingSecret(
                    f"CXR_{name.upper()} is set where the app was built but not on this node"
                    f" (neither a variable nor a file in {SECRETS_DIR_VARIABLE})"
                )
        if settings.auth == "proxy" and len(settings.proxy_secret) < 32:
            raise MissingSecret("CXR_AUTH=proxy needs CXR_PROXY_SECRET (32+ characters) on this node")
        return settings

    def urgency_policy(self) -> UrgencyPolicy:
        return UrgencyPolicy(
            dict(self.worklist_weights),
            self.worklist_urgent_at,
            self.worklist_soon_at,
            timedelta(minutes=self.worklist_max_wait_minutes),
        )

    @model_validator(mode="after")
    def _worklist_bands_in_order(self):
        if self.worklist_soon_at > self.worklist_urgent_at:
            raise ValueError("CXR_WORKLIST_SOON_AT must not be above CXR_WORKLIST_URGENT_AT")
        if any(w < 0 for w in self.worklist_weights.values()):
            raise ValueError("CXR_WORKLIST_WEIGHTS are 0 or more")
        return self

    @model_validator(mode="after")
    def _auth_off_only_in_the_demo(self):
        if self.auth == "off" and not self.demo:
            raise ValueError("CXR_AUTH=off is allowed only in the local demo (CXR_DEMO=true, scripts/run.sh)")
        if self.auth == "proxy" and not self.trusted_proxies.strip():
            raise ValueError("CXR_AUTH=proxy needs CXR_TRUSTED_PROXIES (the reverse proxies' CIDRs)")
        # Blank where the app is built (secrets stay on the pods that use them); checked in full there.
        if self.auth == "proxy" and self.proxy_secret and len(self.proxy_secret) < 32:
            raise ValueError(
                "CXR_AUTH=proxy needs CXR_PROXY_SECRET (32+ characters), sent by the proxy in CXR_PROXY_SECRET_HEADER"
            )
        return self

    @model_validator(mode="after")
    def _drift_min_window_fits(self):
        if self.drift_min_window > self.drift_window:
            raise ValueError("CXR_DRIFT_MIN_WINDOW must not be above CXR_DRIFT_WINDOW")
        return self

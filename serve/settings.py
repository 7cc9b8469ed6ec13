"""The service's one settings object: ``CXR_*`` environment variables, read at the app builder.

Deployment-shaped settings (replicas, batch sizes, checkpoint path) live in
``serve_config.yaml``; what differs per installation (where MongoDB is, size
limits) comes from the environment, so one image runs everywhere.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore", frozen=True)

    checkpoint: str | None = None
    # Unset: an embedded SecantusDB server is started once per Ray cluster on loopback.
    mongodb_uri: str | None = None
    mongodb_database: str = "cxr"
    embedded_db_dir: str = "runs/secantus-data"
    embedded_db_port: int = Field(default=27027, ge=1024, le=65535)
    mongodb_timeout_ms: int = Field(default=3000, ge=100)
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=50_000_000, ge=1024)

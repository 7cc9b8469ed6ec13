"""``GatewaySettings``: every ``cxr gateway`` knob, from flags or ``CXR_GATEWAY_*``, one default each."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CXR_GATEWAY_", extra="forbid")

    ae_title: str = Field(default="CXR_GATEWAY", min_length=1, max_length=16)
    host: str = "127.0.0.1"  # 0.0.0.0 in a pod; loopback on a workstation
    port: int = Field(default=11112, ge=1, le=65535)
    # Calling AE titles allowed to associate; every other is refused. Required: no open gateway.
    allow_ae: list[str] = Field(default_factory=list)
    service_url: str = "http://127.0.0.1:8000"
    send_to: list[str] = Field(default_factory=list)  # AE@host:port destinations for the SR
    stow_to: list[str] = Field(default_factory=list)  # DICOMweb roots that take the SR by STOW-RS
    # Also send the annotated picture as a Secondary Capture, for viewers without SR display.
    secondary_capture: bool = False
    # Also deliver the results of instances the service received by STOW-RS (the key's role: gateway).
    claim_stow_results: bool = True
    claim_interval_s: float = Field(default=5.0, gt=0)  # how often to ask the service for them
    metrics_port: int = Field(default=0, ge=0, le=65535)  # Prometheus metrics; 0: not served
    api_key_file: str | None = None
    spool: str = "runs/gateway-spool"
    max_spool_bytes: int = Field(default=4 * 1024**3, ge=1024)
    retry_initial_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=60.0, gt=0)

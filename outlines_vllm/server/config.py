"""The server app's settings: what ``outlines-vllm serve`` flags and ``server/serve-config.yaml``
``args`` both turn into, validated once (pydantic), so a typo fails at deploy time, not later."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

API_KEY_ENV = "OUTLINES_VLLM_API_KEY"
DEFAULT_MODEL = "default"  # the package's default model folder (``outlines-vllm model path``)


class ModelConfig(BaseModel):
    """One served model: a deployment of engine replicas, each owning one vLLM server."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_MODEL, description="model folder or hub name; 'default' = the default model")
    name: str | None = Field(None, description="served model name clients put in 'model'")
    replicas: int | None = Field(None, ge=1, description="fixed replica count (turns autoscaling off)")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8, gt=0, description="autoscaling target per replica")
    max_ongoing_requests: int = Field(64, ge=1, description="requests a replica takes at once")
    upscale_delay_s: float = Field(30, ge=0, description="load must last this long before adding a replica")
    downscale_delay_s: float = Field(600, ge=0, description="idle time before removing a replica")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per pipeline stage (one node)")
    pipeline_parallel_size: int = Field(
        1, ge=1, description="pipeline stages; > 1 reserves a Ray placement group that may span nodes"
    )
    replica_cpus: float = Field(1, ge=0, description="CPUs Ray reserves per replica")
    gpus_per_replica: float | None = Field(
        None,
        ge=0,
        description="GPUs Ray reserves per replica; default: tensor_parallel_size if the cluster has GPUs",
    )
    routing: Literal["balanced", "prefix_affinity"] = Field(
        "balanced",
        description="how a request picks a replica: 'balanced' (the less loaded of two) or "
        "'prefix_affinity' (the replica that already holds the prompt's prefix in its cache, "
        "while loads stay close; needs the HAProxy proxy)",
    )
    engine: dict[str, Any] = Field(default_factory=dict, description="engine_kwargs() overrides")
    vllm_args: list[str] = Field(default_factory=list, description="extra api_server flags")
    startup_timeout_s: float = Field(900, gt=0)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.replicas is None and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self

    @property
    def served_name(self) -> str:
        if self.name:
            return self.name
        if self.model == DEFAULT_MODEL:
            return "smollm2"
        path = Path(self.model)
        return path.name if path.is_dir() else self.model

    @property
    def deployment_name(self) -> str:
        """A Serve deployment name for this model (letters, digits, '-', '_' only)."""
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in self.served_name)
        return f"engine-{safe}"

    def model_location(self) -> str:
        """The model argument for vLLM, preparing the default model where it runs."""
        if self.model == DEFAULT_MODEL:
            from ..default_model import prepare

            return str(prepare())
        return self.model


class AppConfig(BaseModel):
    """The whole app: its models, and the security and health settings every replica applies.

    A single-model shorthand is accepted: ``{"model": ..., "replicas": 2}`` means
    ``{"models": [{"model": ..., "replicas": 2}]}``.
    """

    model_config = ConfigDict(extra="forbid")

    models: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig()], min_length=1)
    api_key: str | None = Field(None, description=f"required on /v1/* when set (else ${API_KEY_ENV})")
    max_body_bytes: int = Field(4 << 20, ge=1024, description="larger request bodies get 413")
    health_check_period_s: float = Field(2.0, gt=0)
    health_check_timeout_s: float = Field(10.0, gt=0)
    graceful_shutdown_timeout_s: float = Field(30.0, ge=0, description="drain time for in-flight requests")
    metrics_push_period_s: float = Field(2.0, gt=0, description="how often replicas publish vllm: metrics")

    @model_validator(mode="before")
    @classmethod
    def _single_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and "models" not in data:
            model_keys = set(ModelConfig.model_fields) & set(data)
            if model_keys:
                data = dict(data)
                data["models"] = [{key: data.pop(key) for key in model_keys}]
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> AppConfig:
        names = [m.served_name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"served model names must be unique, got {names}")
        return self

    def resolved_api_key(self) -> str | None:
        return self.api_key or os.environ.get(API_KEY_ENV) or None

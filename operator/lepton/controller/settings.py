"""Operator settings, read once from the environment at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

ANNOTATION_PREFIX = "lepton.ai"


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    """Everything the operator reads from its environment (LEPTON_*), parsed and checked once."""

    namespaces: tuple[str, ...] = ()  # empty: watch the whole cluster
    metrics_port: int = 8080
    metrics_host: str = "0.0.0.0"
    log_level: str = "INFO"
    images: dict[str, str] = field(default_factory=dict)
    restart_backoff_seconds: float = 10.0  # first gang-restart delay; doubles per restart up to 5 min
    termination_grace_seconds: int = 60  # for training pods: time to flush the last checkpoint

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        raw_ns = env.get("LEPTON_WATCH_NAMESPACES", "")
        namespaces = tuple(n.strip() for n in raw_ns.split(",") if n.strip())
        try:
            port = int(env.get("LEPTON_METRICS_PORT", "8080"))
        except ValueError:
            raise SettingsError(f"LEPTON_METRICS_PORT must be an integer, got {env['LEPTON_METRICS_PORT']!r}") from None
        if not 0 <= port <= 65535:
            raise SettingsError(f"LEPTON_METRICS_PORT must be 0-65535, got {port}")
        level = env.get("LEPTON_LOG_LEVEL", "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"LEPTON_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
        images = {
            workload: env[f"LEPTON_{workload.upper()}_IMAGE"]
            for workload in ("trainer", "tuner", "server", "data")
            if env.get(f"LEPTON_{workload.upper()}_IMAGE")
        }
        try:
            backoff = float(env.get("LEPTON_RESTART_BACKOFF_SECONDS", "10"))
        except ValueError:
            raise SettingsError("LEPTON_RESTART_BACKOFF_SECONDS must be a number of seconds") from None
        if backoff < 0:
            raise SettingsError("LEPTON_RESTART_BACKOFF_SECONDS must not be negative")
        grace = env.get("LEPTON_TERMINATION_GRACE_SECONDS", "60")
        if not grace.isdigit():
            raise SettingsError(f"LEPTON_TERMINATION_GRACE_SECONDS must be a whole number of seconds, got {grace!r}")
        return cls(
            restart_backoff_seconds=backoff,
            termination_grace_seconds=int(grace),
            namespaces=namespaces,
            metrics_port=port,
            metrics_host=env.get("LEPTON_METRICS_HOST", "0.0.0.0"),
            log_level=level,
            images=images,
        )

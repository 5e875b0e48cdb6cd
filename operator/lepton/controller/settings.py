"""Operator settings, read once from the environment at start."""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from lepton.render.networkpolicy import NetworkSettings

ANNOTATION_PREFIX = "lepton.ai"
MIN_PROGRESS_KEY = 32  # characters of LEPTON_PROGRESS_KEY; the chart generates 64
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
log = logging.getLogger(__name__)


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class LeaderElection:
    namespace: str  # where the Lease lives (the operator's own namespace)
    lease: str = "lepton-operator"
    identity: str = ""  # unique per process: the pod's name and a random suffix
    lease_seconds: float = 15.0


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
    # The key of every job's progress token (lepton.api.tokens). Generated when LEPTON_PROGRESS_KEY is
    # unset: tokens then change on every restart, so running trainers answer the new operator 401 and
    # their progress stops reaching status until they restart. The chart always sets a stable one.
    progress_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    progress_key_generated: bool = True
    operator_namespace: str | None = None  # where the operator runs (downward API); None: out of cluster
    prometheus_namespace: str | None = None  # whose Prometheus may scrape the workloads' metrics ports
    network_policies: bool = True  # a NetworkPolicy per job (needs operator_namespace)
    discovery_seconds: float = 60.0  # how often optional APIs (the Gateway API) are looked for again
    # A Dataset's preparation keeps its /metrics up after the end until two scrapes read its final numbers,
    # at most this long (twice your scrape interval); None: it exits at once.
    data_metrics_linger_seconds: float | None = None
    # Leader election on a Lease (several replicas, one acts); None: this process acts alone.
    leader_election: LeaderElection | None = None
    # (namespace, name) of the activator's Service (LEPTON_ACTIVATOR_SERVICE, "name" in the operator's
    # namespace or "namespace/name"); None: services with minReplicas 0 keep one replica.
    activator: tuple[str, str] | None = None

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def network(self) -> NetworkSettings | None:
        """What each job's NetworkPolicy admits, or None when jobs get no policy: turned off, or an
        operator outside the cluster (no namespace to admit; a policy would shut it out)."""
        if not self.network_policies or self.operator_namespace is None:
            return None
        return NetworkSettings(self.operator_namespace, self.prometheus_namespace)

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
        key = env.get("LEPTON_PROGRESS_KEY", "")
        if key and len(key) < MIN_PROGRESS_KEY:
            raise SettingsError(f"LEPTON_PROGRESS_KEY must be at least {MIN_PROGRESS_KEY} characters long")
        if not key:
            log.warning(
                "LEPTON_PROGRESS_KEY is not set: using a random key for this run; progress tokens change on "
                "restart, and trainers started before it no longer report progress to this operator"
            )
        policies = env.get("LEPTON_NETWORK_POLICIES", "true").lower()
        if policies not in ("true", "false"):
            raise SettingsError(f"LEPTON_NETWORK_POLICIES must be true or false, got {policies!r}")
        discovery = env.get("LEPTON_DISCOVERY_SECONDS", "60")
        if not discovery.isdigit() or int(discovery) < 1:
            raise SettingsError(f"LEPTON_DISCOVERY_SECONDS must be a whole number of seconds, at least 1, "
                                f"got {discovery!r}")  # fmt: skip
        linger = env.get("LEPTON_DATA_METRICS_LINGER_SECONDS", "0").strip() or "0"
        if not linger.isdigit() or int(linger) > 600:
            raise SettingsError(f"LEPTON_DATA_METRICS_LINGER_SECONDS must be a whole number of seconds from 0 to "
                                f"600, got {linger!r}")  # fmt: skip
        return cls(
            activator=_activator(env),
            leader_election=_leader_election(env),
            discovery_seconds=float(discovery),
            data_metrics_linger_seconds=float(linger) or None,
            progress_key=key.encode() if key else secrets.token_bytes(32),
            progress_key_generated=not key,
            operator_namespace=_namespace(env, "LEPTON_OPERATOR_NAMESPACE"),
            prometheus_namespace=_namespace(env, "LEPTON_PROMETHEUS_NAMESPACE"),
            network_policies=policies == "true",
            restart_backoff_seconds=backoff,
            termination_grace_seconds=int(grace),
            namespaces=namespaces,
            metrics_port=port,
            metrics_host=env.get("LEPTON_METRICS_HOST", "0.0.0.0"),
            log_level=level,
            images=images,
        )


def _leader_election(env: Mapping[str, str]) -> LeaderElection | None:
    enabled = env.get("LEPTON_LEADER_ELECTION", "false").lower()
    if enabled not in ("true", "false"):
        raise SettingsError(f"LEPTON_LEADER_ELECTION must be true or false, got {enabled!r}")
    if enabled == "false":
        return None
    namespace = _namespace(env, "LEPTON_LEASE_NAMESPACE") or _namespace(env, "LEPTON_OPERATOR_NAMESPACE")
    if namespace is None:
        raise SettingsError("LEPTON_LEADER_ELECTION=true needs the Lease's namespace: set LEPTON_OPERATOR_NAMESPACE "
                            "(the chart does, from the downward API) or LEPTON_LEASE_NAMESPACE")  # fmt: skip
    lease = env.get("LEPTON_LEASE_NAME", "lepton-operator").strip()
    if not _DNS_LABEL.match(lease):
        raise SettingsError(f"LEPTON_LEASE_NAME must be a DNS-1123 label, got {lease!r}")
    seconds = env.get("LEPTON_LEASE_SECONDS", "15").strip()
    if not seconds.isdigit() or not 3 <= int(seconds) <= 300:
        raise SettingsError(f"LEPTON_LEASE_SECONDS must be a whole number of seconds from 3 to 300, got {seconds!r}")
    pod = env.get("LEPTON_POD_NAME", "").strip() or socket.gethostname()
    return LeaderElection(namespace, lease, f"{pod}_{secrets.token_hex(4)}", float(seconds))


def _activator(env: Mapping[str, str]) -> tuple[str, str] | None:
    value = env.get("LEPTON_ACTIVATOR_SERVICE", "").strip()
    if not value:
        return None
    namespace, _, name = value.rpartition("/")
    namespace = namespace or _namespace(env, "LEPTON_OPERATOR_NAMESPACE") or ""
    if not namespace:
        raise SettingsError("LEPTON_ACTIVATOR_SERVICE without a namespace needs LEPTON_OPERATOR_NAMESPACE (the chart "
                            "sets it): or write it as namespace/name")  # fmt: skip
    if not (_DNS_LABEL.match(namespace) and _DNS_LABEL.match(name)):
        raise SettingsError(f"LEPTON_ACTIVATOR_SERVICE must be a Service as name or namespace/name, got {value!r}")
    return namespace, name


def _namespace(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    if value and not _DNS_LABEL.match(value):
        raise SettingsError(f"{name} must be a namespace name (DNS-1123 label), got {value!r}")
    return value or None

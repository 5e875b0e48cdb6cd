"""A real Prometheus scraping a test run: the operator's /metrics and the workloads' pods.

`Prometheus` starts the real `prometheus` binary (Debian's, from the binary cache) on a free loopback
port with a generated config: a static job for the operator's `host:port` and a pod job that finds the
workload pods through the dev cluster's apiserver. kwok gives pods on the loopback node IPs of
127.77.0.0/24 and `tests/cluster/loopback.py` runs each pod's real program bound there, so Prometheus
scrapes the real trainer, tuner, server and data processes at `podIP:port`, as it would in a cluster.

Debian builds Prometheus without its Kubernetes service discovery (`kubernetes_sd_configs` is not a
field of its scrape config), so the pod job uses Prometheus's HTTP service discovery instead, fed by
`PodDiscovery`: it lists the pods from the apiserver and hands each declared container port over as a
target with the `__meta_kubernetes_pod_*` labels the pod role of `kubernetes_sd_configs` sets. The
relabelling, which picks the ports and names the series, is the one a cluster's Prometheus uses with
`kubernetes_sd_configs` (helm/lepton/monitoring/README.md).

`dashboard_queries()` and `alert_expressions()` read every query of the Grafana dashboard and every
alert expression of the rule file (helm/lepton/monitoring/); `missing_series(prom, exprs)` names the
ones that returned no series at any moment of the run.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from lepton.local.trainingjob import free_port
from tests.cluster.kube import Kube

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "helm" / "lepton" / "monitoring"
DASHBOARD = MONITORING / "dashboard.json"
ALERTS = MONITORING / "alerts.yaml"
OPERATOR_JOB = "lepton-operator"
PODS_JOB = "lepton-pods"
# Ports Prometheus scrapes on a lepton pod: trainers and data preparations name theirs "metrics"; the
# tuner and the model server serve /metrics on their one port, "http".
SCRAPED_PORTS = ("metrics", "http")


class Prometheus:
    """The real Prometheus as a subprocess, for the length of a `with` block.

    `targets`: `host:port` of processes serving /metrics (the operator), scraped as job
    "lepton-operator" with honor_labels (the operator's `namespace` label is the namespace it counts
    GPUs of, as the chart's ServiceMonitor keeps it). `kube` and `namespaces`: running pods of those
    namespaces with a `lepton.ai/kind` label are scraped on their ports named "metrics" or "http", as
    job "lepton-pods", with the labels namespace, pod, container and, for a model server, service
    (its InferenceService's name, as the ServiceMonitor the operator makes for it labels it).
    """

    def __init__(self, binary: str | Path, workdir: Path, targets: Sequence[str] = (), kube: Kube | None = None,
                 namespaces: Sequence[str] = (), scrape_interval: str = "1s") -> None:  # fmt: skip
        self.binary, self.workdir = str(binary), workdir
        self.targets_, self.namespaces = list(targets), list(namespaces)
        self.discovery = PodDiscovery(kube, self.namespaces) if kube is not None else None
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        self.started = 0.0  # Unix time at which it was ready: missing_series looks from here on
        self._proc: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        jobs: list[dict[str, Any]] = []
        if self.targets_:
            static = [{"targets": self.targets_}]
            jobs.append({"job_name": OPERATOR_JOB, "honor_labels": True, "static_configs": static})
        if self.discovery is not None:
            # With Kubernetes discovery compiled in: kubernetes_sd_configs: [{role: pod, namespaces: ...}].
            jobs.append({
                "job_name": PODS_JOB,
                "http_sd_configs": [{"url": self.discovery.url, "refresh_interval": "1s"}],
                "relabel_configs": [
                    {"action": "keep", "regex": f".+;({'|'.join(SCRAPED_PORTS)})",
                     "source_labels": ["__meta_kubernetes_pod_label_lepton_ai_kind",
                                       "__meta_kubernetes_pod_container_port_name"]},
                    {"action": "keep", "regex": "Running", "source_labels": ["__meta_kubernetes_pod_phase"]},
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                    {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                    {"source_labels": ["__meta_kubernetes_pod_label_lepton_ai_kind",
                                       "__meta_kubernetes_pod_label_lepton_ai_name"],
                     "regex": "InferenceService;(.+)", "target_label": "service", "replacement": "$1"},
                ],
            })  # fmt: skip
        interval = self.scrape_interval
        return {"global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
                "scrape_configs": jobs}  # fmt: skip

    def __enter__(self) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.discovery is not None:
            self.discovery.start()
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        fh = self.log.open("wb")
        self._proc = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d",
             "--log.level=warn"],
            stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as rsp:
                    if rsp.status == 200:
                        self.started = time.time()
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"prometheus not ready after 60s:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *_: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self.discovery is not None:
            self.discovery.stop()

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; `data` of the answer (a failed query raises, with Prometheus's words)."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as rsp:
                body = json.loads(rsp.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant query `expr` now: its series, each {"metric": labels, "value": [t, "v"]}."""
        data = self.api("query", query=expr)
        return list(data["result"]) if data["resultType"] in ("vector", "matrix") else [data]

    def query_range(self, expr: str, start: float | None = None, end: float | None = None) -> list[dict[str, Any]]:
        """`expr` evaluated at every step from `start` (default: when Prometheus started) to `end` (now):
        every series it had at any of those moments, each {"metric": labels, "values": [[t, "v"], ...]}."""
        start = self.started if start is None else start
        end = time.time() if end is None else end
        step = max(1, math.ceil((end - start) / 2000))  # well under Prometheus's 11,000 points per series
        # Steps counted back from `end`: the last evaluation is at `end`, so a series first scraped a
        # moment ago counts too.
        start = end - step * math.ceil((end - start) / step)
        return list(self.api("query_range", query=expr, start=start, end=end, step=step)["result"])

    def targets(self, job: str | None = None) -> list[dict[str, Any]]:
        """Active targets (of `job`), each with labels, scrapeUrl, health ("up", "down", "unknown")."""
        active = self.api("targets", state="active")["activeTargets"]
        return [t for t in active if job is None or t["labels"].get("job") == job]

    def wait_up(self, job: str, n: int = 1, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until at least `n` targets of `job` were scraped successfully; those targets."""
        deadline = time.monotonic() + timeout
        while True:
            up = [t for t in self.targets(job) if t["health"] == "up"]
            if len(up) >= n:
                return up
            if time.monotonic() > deadline:
                seen = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in self.targets()]
                raise AssertionError(f"{len(up)} of {n} {job} targets up after {timeout}s; targets: {seen}")
            time.sleep(0.5)


def _label_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


class PodDiscovery:
    """Prometheus HTTP service discovery of the pods of `namespaces`, read from the apiserver at each
    request: one target `podIP:port` per declared container port of a pod that has an IP, labelled as
    the pod role of `kubernetes_sd_configs` labels it (namespace, pod name, IP, phase, container, port
    name and number, and the pod's labels)."""

    def __init__(self, kube: Kube, namespaces: Sequence[str]) -> None:
        self.kube, self.namespaces = kube, list(namespaces)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/targets"
        self._server: ThreadingHTTPServer | None = None

    def target_groups(self) -> list[dict[str, Any]]:
        groups = []
        for namespace in self.namespaces:
            pods = json.loads(self.kube.run("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
            for pod in pods:
                meta, status = pod["metadata"], pod.get("status") or {}
                ip = status.get("podIP")
                if not ip:
                    continue
                common = {"__meta_kubernetes_namespace": meta["namespace"],
                          "__meta_kubernetes_pod_name": meta["name"], "__meta_kubernetes_pod_ip": ip,
                          "__meta_kubernetes_pod_phase": status.get("phase", ""),
                          "__meta_kubernetes_pod_uid": meta.get("uid", "")}  # fmt: skip
                for key, value in (meta.get("labels") or {}).items():
                    common[f"__meta_kubernetes_pod_label_{_label_name(key)}"] = value
                    common[f"__meta_kubernetes_pod_labelpresent_{_label_name(key)}"] = "true"
                for container in pod["spec"]["containers"]:
                    for port in container.get("ports") or []:
                        number = port["containerPort"]
                        groups.append({"targets": [f"{ip}:{number}"], "labels": common | {
                            "__meta_kubernetes_pod_container_name": container["name"],
                            "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                            "__meta_kubernetes_pod_container_port_number": str(number),
                            "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
                        }})  # fmt: skip
        return groups

    def start(self) -> None:
        discovery = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    body, code = json.dumps(discovery.target_groups()).encode(), 200
                except Exception as exc:  # Prometheus keeps the last good answer and logs this
                    body, code = str(exc).encode(), 500
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # Prometheus gave up waiting: it asks again
                    pass

            def log_message(self, *_: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="pod-discovery").start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def dashboard_queries(namespace: str = ".*", rate_interval: str = "30s", range_: str = "15m",
                      dashboard: Path = DASHBOARD) -> list[str]:  # fmt: skip
    """Every target expression of every panel of the dashboard, in order, with Grafana's variables set:
    `$namespace` to the regex `namespace` (the variable's "All" is ".*"), `$__rate_interval` (and
    `$__interval`) to `rate_interval`, `$__range` to `range_`."""
    values = {"namespace": namespace, "__rate_interval": rate_interval, "__interval": rate_interval,
              "__range": range_}  # fmt: skip

    def substitute(expr: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), expr)

    return [substitute(t["expr"]) for p in panels(json.loads(dashboard.read_text())) for t in p.get("targets", [])]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row, rows' nested (collapsed) panels included."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            out += panels(panel)
        else:
            out.append(panel)
    return out


def alert_expressions(rules: Path = ALERTS) -> list[str]:
    """Every alert's `expr` in the rule file, as written (thresholds included)."""
    groups = yaml.safe_load(rules.read_text())["groups"]
    return [str(rule["expr"]).strip() for group in groups for rule in group["rules"] if "alert" in rule]


STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


def _mask_strings(expr: str) -> str:
    """`expr` with the inside of every string literal blanked (same length): a scanner then sees no
    operator, brace or name inside a label value."""
    return STRING.sub(lambda m: m.group(0)[0] + " " * (len(m.group(0)) - 2) + m.group(0)[-1], expr)


COMPARISON = re.compile(r"==|!=|>=|<=|>|<")


def underlying(expr: str) -> str:
    """The left side of `expr`'s top-level comparison (`a > 0.5` -> `a`), or `expr` itself.

    An alert fires when its comparison keeps a series; in a healthy run none should, so what a run
    can check is that the compared series exists: the left side, queried without the threshold. Only a
    comparison outside every bracket counts (`x{code=~"5.."}` and `(a > 1) * 2` keep theirs).
    """
    masked, depth = _mask_strings(expr), 0
    i = 0
    while i < len(masked):
        ch = masked[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and COMPARISON.match(masked, i):
            return " ".join(expr[:i].split())
        i += 1
    return " ".join(expr.split())


KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                      "offset", "atan2", "inf", "nan"})  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects (function names, keywords, label names and durations left out)."""
    text = _mask_strings(expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges and subqueries' durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()", text)
    return {n for n in names if n.lower() not in KEYWORDS}


def missing_series(prom: Prometheus, exprs: Iterable[str]) -> list[str]:
    """The expressions that returned no series at any moment since `prom` started, each on one line.

    Each is queried as `underlying(expr)` (a threshold comparison dropped: see there) over the run's
    whole length (a range query), so a series that existed only while a workload ran counts. An empty
    list: every one had series. `explain(prom, missing)` says, for each, which metrics were scraped.
    """
    missing = []
    for expr in exprs:
        query = underlying(expr)
        if not prom.query_range(query):
            missing.append(query)
    return missing


def explain(prom: Prometheus, missing: Sequence[str]) -> str:
    """A readable report of `missing_series`' answer: each expression with, per metric it names, how many
    series Prometheus scraped of that metric during the run (0: the run never exported it)."""
    lines = []
    for expr in missing:
        counts = []
        for name in sorted(metric_names(expr)):
            found = prom.api("series", **{"match[]": name, "start": prom.started, "end": time.time()})
            counts.append(f"{name}: {len(found)} series" if found else f"{name}: never scraped")
        lines.append(f"- {expr}\n    " + "; ".join(counts))
    return f"{len(missing)} expression(s) without a series:\n" + "\n".join(lines) if missing else "none missing"

"""The alert rules (helm/lepton/monitoring/alerts.yaml) with the real promtool; the chart's
PrometheusRule (the same rules, taken by the apiserver under the Prometheus Operator's real CRD) and
Grafana dashboard ConfigMap; and a real Prometheus scraping the operator and a real trainer pod found
through the apiserver (the harness of tests/cluster/prometheus.py)."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from lepton.api.contract import METRICS_PORT
from lepton.cli.devcluster import DevCluster
from tests.cluster.conftest import OperatorProcess
from tests.cluster.kube import Kube, eventually
from tests.cluster.loopback import PLACEMENT, LoopbackRuntime, ensure_node
from tests.cluster.prometheus import (
    DASHBOARD,
    OPERATOR_JOB,
    PODS_JOB,
    Prometheus,
    dashboard_queries,
    explain,
    missing_series,
)
from tests.cluster.test_helm import CHART, helm

ROOT = Path(__file__).resolve().parents[2]
RULES = CHART / "monitoring" / "alerts.yaml"
RULE_TESTS = ROOT / "tests" / "monitoring" / "alerts_test.yaml"


def promtool(cluster: DevCluster, *args: str) -> str:
    proc = subprocess.run([str(cluster.bins["promtool"]), *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_alert_rules_are_valid_and_fire_as_their_cases_say(dev_cluster: DevCluster) -> None:
    assert "SUCCESS: 11 rules found" in promtool(dev_cluster, "check", "rules", str(RULES))
    assert "SUCCESS" in promtool(dev_cluster, "test", "rules", str(RULE_TESTS))
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case["alert_rule_test"] if t["exp_alerts"]}  # fmt: skip
    assert tested == alerts, "every alert needs a case that fires it"


def test_the_charts_prometheus_rule_is_the_plain_file_and_the_apiserver_takes_it(
    dev_cluster: DevCluster, kube: Kube, namespace: str
) -> None:
    rendered = helm(dev_cluster, "template", "lepton", str(CHART), "-n", namespace, "--kube-version", "1.37.2",
                    "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.prometheusRule.labels.release=kp",
                    "--show-only", "templates/prometheusrule.yaml").stdout  # fmt: skip
    rule = yaml.safe_load(rendered)
    assert rule["spec"] == yaml.safe_load(RULES.read_text()) and rule["metadata"]["labels"]["release"] == "kp"
    crds = dev_cluster.bins.monitoring_crds
    assert crds is not None, "hack/build-binaries.sh provides the Prometheus Operator's CRDs"
    kube.run("apply", "--server-side", "-f", str(crds / "monitoring.coreos.com_prometheusrules.yaml"))
    kube.run("wait", "--for=condition=Established", "crd/prometheusrules.monitoring.coreos.com", "--timeout=60s")
    kube.run("apply", "--server-side", "-f", "-", stdin=rendered)
    stored = kube.get("prometheusrule", "lepton", namespace)
    assert [g["name"] for g in stored["spec"]["groups"]] == [g["name"] for g in rule["spec"]["groups"]]


def test_the_charts_dashboard_config_map_holds_the_plain_file_for_grafanas_sidecar(
    dev_cluster: DevCluster, kube: Kube, namespace: str
) -> None:
    rendered = helm(dev_cluster, "template", "lepton", str(CHART), "-n", namespace, "--kube-version", "1.37.2",
                    "--set", "metrics.grafanaDashboard.enabled=true",
                    "--set", "metrics.grafanaDashboard.labels.team=ml",
                    "--set", "metrics.grafanaDashboard.annotations.grafana_folder=Lepton",
                    "--show-only", "templates/grafana-dashboard.yaml").stdout  # fmt: skip
    config_map = yaml.safe_load(rendered)
    meta = config_map["metadata"]
    assert meta["labels"]["grafana_dashboard"] == "1" and meta["labels"]["team"] == "ml"
    assert meta["annotations"] == {"grafana_folder": "Lepton"}
    assert json.loads(config_map["data"]["lepton.json"]) == json.loads(DASHBOARD.read_text())
    kube.run("apply", "--server-side", "-f", "-", stdin=rendered)
    stored = kube.get("configmap", "lepton-dashboard", namespace)
    assert stored["data"]["lepton.json"] == config_map["data"]["lepton.json"]
    off = helm(dev_cluster, "template", "lepton", str(CHART), "--kube-version", "1.37.2").stdout
    assert "grafana_dashboard" not in off, "off by default"


def trainingjob(name: str, out: Path, steps: int) -> dict[str, Any]:
    """A CPU TrainingJob on the loopback node: its real trainer serves /metrics at the pod's IP."""
    return {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": str(ROOT / "examples/models/tiny-gpt2"), "init": "config"},
            "data": {"uri": str(ROOT / "examples/data/tickets.jsonl")},
            "hyperparameters": {"maxSteps": steps, "batchSize": 2, "maxSeqLength": 32},
            "nodes": 1,
            "gpusPerNode": 0,
            "backend": "gloo",
            "checkpoint": {"everySteps": steps},
            "scheduling": PLACEMENT,
            "output": {"uri": str(out)},
        },
    }


def test_a_real_prometheus_finds_and_scrapes_the_operator_and_a_trainer_pod(
    dev_cluster: DevCluster, kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    """The harness the pipeline test reads every dashboard query and alert through: the operator by its
    address, the trainer pod found through the apiserver (HTTP discovery with the labels of Kubernetes
    discovery's pod role) and scraped at its own IP."""
    ensure_node(kube)
    ns = namespace
    target = urllib.parse.urlsplit(operator.metrics_url).netloc
    harness = Prometheus(dev_cluster.bins["prometheus"], tmp_path / "prom", [target], kube, [ns])
    with harness as prom, LoopbackRuntime(kube, ns, tmp_path) as runtime:
        # Long enough to outlive discovery; the namespace's deletion stops it (SIGTERM from the runtime).
        kube.apply(trainingjob("watched", tmp_path / "out", steps=5000), ns)
        (op,) = prom.wait_up(OPERATOR_JOB, 1, timeout=30)
        assert op["labels"]["instance"] == target
        (pod,) = prom.wait_up(PODS_JOB, 1, timeout=90)
        ip = kube.get("pod", pod["labels"]["pod"], ns)["status"]["podIP"]
        assert pod["labels"]["namespace"] == ns and ip.startswith("127.77.")
        assert pod["scrapeUrl"] == f"http://{ip}:{METRICS_PORT}/metrics", "the pod's port named metrics, at its IP"

        def trainer_series() -> list[dict[str, Any]]:
            return prom.query(f'lepton_trainer_step{{namespace="{ns}"}} > 0')

        (step,) = eventually(trainer_series, timeout=90, interval=1, what="the trainer's steps scraped")
        assert step["metric"]["pod"] == pod["labels"]["pod"] and step["metric"]["job"] == PODS_JOB
        assert prom.query('lepton_resources{kind="TrainingJob", phase="Running"} > 0'), "the operator's families"
        # What the dashboard's namespace variable lists (label_values over the workloads' series).
        names = prom.api("label/namespace/values", **{"match[]": '{__name__=~"lepton_(trainer|tuner|server|data)_.+"}'})
        assert names == [ns]
        # missing_series over a range: the training panels and the operator's phase panels have series;
        # a name nothing exports is reported, its threshold dropped.
        queries = [q for q in dashboard_queries(namespace=ns) if "lepton_trainer_" in q or "lepton_resources" in q]
        assert len(queries) >= 6 and not (missing := missing_series(prom, queries)), explain(prom, missing)
        missing = missing_series(prom, ["sum(rate(lepton_no_such_total[5m])) > 1", "lepton_trainer_step"])
        assert missing == ["sum(rate(lepton_no_such_total[5m]))"]
        assert "lepton_no_such_total: never scraped" in explain(prom, missing)
        assert not runtime.errors, runtime.errors

"""The alert rules (helm/lepton/monitoring/alerts.yaml) with the real promtool, and the chart's
PrometheusRule: the same rules, taken by the apiserver under the Prometheus Operator's real CRD."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from lepton.cli.devcluster import DevCluster
from tests.cluster.kube import Kube
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
    assert "SUCCESS: 10 rules found" in promtool(dev_cluster, "check", "rules", str(RULES))
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

"""The Grafana dashboard (helm/lepton/monitoring/dashboard.json) and the alert rules name only metrics the
code registers: every panel query and every alert expression is read, its metric names extracted and
checked against the collectors of the operator's and the workloads' registries."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from lepton.controller.metrics import OperatorMetrics
from lepton.workloads.data.metrics import DataMetrics
from lepton.workloads.server.metrics import Metrics as ServerMetrics
from lepton.workloads.trainer.progress import Progress
from lepton.workloads.tuner.metrics import TunerMetrics
from tests.cluster.prometheus import (
    DASHBOARD,
    alert_expressions,
    dashboard_queries,
    metric_names,
    panels,
    underlying,
)

ROWS = ["Operator", "Training", "Tuning", "Serving", "Data"]
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"),
            "summary": ("", "_count", "_sum")}  # fmt: skip
# Labels that name one object (or one pod): a histogram summed by them is one quantile per object.
PER_OBJECT = {"pod", "name", "instance", "uid", "trial"}


class TextRegistry:
    """The families of a Prometheus text page, read like a registry (the trainer writes its page by hand,
    lepton.sdk.progress, so that user code exports the same lepton_trainer_* without prometheus_client)."""

    def __init__(self, text: bytes) -> None:
        self.text = text.decode()

    def collect(self) -> list[Any]:
        return list(text_string_to_metric_families(self.text))


def registries() -> dict[str, CollectorRegistry | TextRegistry]:
    return {
        "operator": OperatorMetrics().registry,
        "server": ServerMetrics().registry,
        "tuner": TunerMetrics().registry,
        "data": DataMetrics().registry,
        "trainer": TextRegistry(Progress(total_steps=1, rank=0).metrics_text()),
    }


def exported() -> dict[str, str]:
    """Every sample name the code can export (labelled families without children included), by registry."""
    names: dict[str, str] = {}
    for owner, registry in registries().items():
        for family in registry.collect():
            for suffix in SUFFIXES[family.type]:
                names[family.name + suffix] = owner
    return names


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def test_every_metric_name_in_the_dashboard_and_the_alerts_is_one_the_code_exports() -> None:
    known = exported()
    used = {name: expr for expr in dashboard_queries() + alert_expressions() for name in metric_names(expr)}
    unknown = {name: expr for name, expr in used.items() if name not in known}
    assert not unknown, f"metrics no code registers: {unknown}"
    # Every registry is shown somewhere: a family added to the code without a panel is worth a look.
    assert {known[name] for name in used} == set(registries())


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (kind, le) (rate(lepton_x_bucket{code=~"5..", a="b"}[5m]))', {"lepton_x_bucket"}),
        ("a / on (ns) group_left (svc) b > bool 0.5", {"a", "b"}),
        ("histogram_quantile(0.99, sum without (pod) (rate(m_bucket[$__rate_interval])))", {"m_bucket"}),
        ('max_over_time(x[5m:1m] offset 1h) or vector(1e3)', {"x"}),
    ],
)  # fmt: skip
def test_metric_names_skips_functions_labels_and_keywords(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    ("expr", "left"),
    [
        ("sum by (kind) (rate(x[10m])) > 0.1", "sum by (kind) (rate(x[10m]))"),
        ('x{kind="T", phase=~"A|B"} >= 600', 'x{kind="T", phase=~"A|B"}'),
        ('a{code=~"5.."}\n  / b > 0.05', 'a{code=~"5.."} / b'),
        ('a{s=">"} != 1', 'a{s=">"}'),
        ("(a > 1) * 2", "(a > 1) * 2"),
        ("sum(x)", "sum(x)"),
    ],
)  # fmt: skip
def test_underlying_drops_only_a_top_level_comparison(expr: str, left: str) -> None:
    assert underlying(expr) == left


def test_alerts_are_checked_through_the_left_side_of_their_threshold() -> None:
    for expr in alert_expressions():
        assert underlying(expr) != " ".join(expr.split()), f"no threshold found in {expr!r}"


def test_the_dashboard_has_its_rows_variables_and_one_datasource() -> None:
    d = dashboard()
    assert [p["title"] for p in d["panels"] if p["type"] == "row"] == ROWS
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    namespace = variables["namespace"]
    assert namespace["query"]["query"].startswith("label_values(") and namespace["allValue"] == ".*"
    ds = {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(d):
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert panel["datasource"] == ds and panel["targets"], panel["title"]
        assert panel.get("description"), f"{panel['title']}: a description says what it shows"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)) and all(t["datasource"] == ds for t in panel["targets"])


def test_panels_do_not_overlap_and_each_row_has_panels() -> None:
    cells: dict[tuple[int, int], str] = {}
    titles_by_row: dict[str, list[str]] = {}
    row = ""
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            titles_by_row[row] = []
        else:
            titles_by_row[row].append(panel["title"])
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    assert all(len(titles) >= 3 for titles in titles_by_row.values()), titles_by_row


def test_workload_panels_filter_by_the_namespace_variable() -> None:
    """Workload metrics carry the pod's namespace; the operator's own families count every namespace
    (only the GPU families carry one, the namespace they count)."""
    for panel in panels(dashboard()):
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            workload = any(re.match(r"lepton_(trainer|tuner|server|data|gpus?)_", n) for n in names)
            assert workload == ('namespace=~"$namespace"' in target["expr"]), (panel["title"], target["expr"])


def test_histograms_are_not_split_per_object() -> None:
    for expr in dashboard_queries() + alert_expressions():
        if "_bucket" not in expr:
            continue
        assert "histogram_quantile(" in expr
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            labels = {label.strip() for label in grouping.split(",")}
            assert "le" in labels and not labels & PER_OBJECT, expr


def test_dashboard_queries_substitute_grafanas_variables() -> None:
    queries = dashboard_queries(namespace="team-a")
    assert queries and not [q for q in queries if "$" in q]
    assert any('namespace=~"team-a"' in q for q in queries)

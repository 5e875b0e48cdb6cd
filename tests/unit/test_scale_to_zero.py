"""Scale to zero and back, in its pure parts: the decision (each state of the cycle), the metrics it
reads, what it renders (golden YAML of a service at zero), the status it tells, the activator's
reading of Host headers, the operator's setting, and the kernel's removal of a field set to None."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from lepton.api.conditions import ConditionType, Reason, get_condition
from lepton.api.constants import Phase
from lepton.api.validation import parse
from lepton.controller.activator import parse_host
from lepton.controller.children import drifted, nulls, without_nulls
from lepton.controller.settings import Settings, SettingsError
from lepton.render.inferenceservice import Activation, ServeResolved, ServeSettings, render
from lepton.status.inferenceservice import DeploymentView, Serving, Wanted, decide
from lepton.status.scaling import ReplicaSample, ScaleView, ServingSample, decide_scaling, idle_seconds, parse_metrics
from tests.conftest import assert_golden

UID = "7c1e2d3f-0a4b-4c5d-8e9f-a0b1c2d3e4f5"
NOW = 1_800_000_000.0
ACTIVATOR = ("10.0.3.7", "10.0.4.9")


def service(min_replicas: int = 0, **spec: Any) -> Any:
    scaling = {"minReplicas": min_replicas, "maxReplicas": 3, "idleSeconds": 60}
    return parse({
        "apiVersion": "lepton.ai/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": "team-a", "uid": UID, "generation": 1},
        "spec": {"model": {"uri": "/models/chat"}, "autoscaling": scaling} | spec,
    })  # fmt: skip


def sample(*lasts: float | None, inflight: float = 0, unreachable: tuple[str, ...] = ()) -> ServingSample:
    replicas = tuple(ReplicaSample(f"chat-primary-{i}", NOW - last if last is not None else None, inflight)
                     for i, last in enumerate(lasts))  # fmt: skip
    return ServingSample(NOW, replicas, unreachable)


def view(replicas: int | None, ready: int, *, routed: bool = False, sampled: ServingSample | None = None,
         addresses: tuple[str, ...] = ACTIVATOR) -> ScaleView:  # fmt: skip
    return ScaleView(replicas, ready, routed, sampled, addresses, 8012 if addresses else 0)


# (view, (active, routed, idle, at_zero, reason)) for a service with minReplicas 0 and idleSeconds 60
STATES: dict[str, tuple[ScaleView, tuple[bool, bool, bool, bool, str]]] = {
    "new, no Deployment yet": (view(None, 0), (True, False, False, False, Reason.SERVING)),
    "serving, busy a second ago": (view(2, 2, sampled=sample(1, 30)), (True, False, False, False, Reason.SERVING)),
    "serving, idle 59s": (view(1, 1, sampled=sample(59)), (True, False, False, False, Reason.SERVING)),
    "idle 60s on every replica": (view(2, 2, sampled=sample(60, 300)), (True, True, True, True, Reason.IDLE)),
    "idle, but a request in flight": (view(1, 1, sampled=sample(90, inflight=1)),
                                      (True, False, False, False, Reason.SERVING)),
    "idle, one replica unreadable": (view(2, 2, sampled=sample(90, unreachable=("chat-primary-1",))),
                                     (True, False, False, False, Reason.METRICS_UNAVAILABLE)),
    "idle, metric missing (older server)": (view(1, 1, sampled=sample(None)),
                                            (True, False, False, False, Reason.SERVING)),
    "at zero": (view(0, 0, routed=True), (True, True, False, True, Reason.IDLE)),
    "activating: scaled to 1, not ready": (view(1, 0, routed=True), (True, True, False, False, Reason.ACTIVATING)),
    "ready again: routing handed back": (view(1, 1, routed=True, sampled=sample(0)),
                                         (True, False, False, False, Reason.SERVING)),
    "no activator: stays up": (view(1, 1, sampled=sample(600), addresses=()),
                               (False, False, False, False, Reason.ACTIVATOR_UNAVAILABLE)),
}  # fmt: skip


@pytest.mark.parametrize("state", list(STATES))
def test_the_cycle(state: str) -> None:
    observed, expected = STATES[state]
    got = decide_scaling(service(), observed)
    assert got is not None
    assert (got.active, got.routed, got.idle, got.at_zero, got.reason) == expected, got.message


@pytest.mark.parametrize("spec", [dict(min_replicas=1), dict(suspend=True)], ids=["minReplicas 1", "suspended"])
def test_only_a_serving_service_with_min_replicas_zero_scales_to_zero(spec: dict[str, Any]) -> None:
    assert decide_scaling(service(**spec), view(1, 1, sampled=sample(3600))) is None


def test_idle_is_the_newest_request_over_all_replicas() -> None:
    assert idle_seconds(sample(10, 400)) == pytest.approx(10)
    assert idle_seconds(ServingSample(NOW)) is None, "no replica read: nothing known"


EXPOSITION = """# HELP lepton_server_last_request_timestamp_seconds Unix time the last request arrived
# TYPE lepton_server_last_request_timestamp_seconds gauge
lepton_server_last_request_timestamp_seconds 1.7999994e+09
# TYPE lepton_server_inflight_requests gauge
lepton_server_inflight_requests 2.0
lepton_server_requests_total{code="200",route="/v1/completions"} 12.0
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (EXPOSITION, (1.7999994e09, 2.0)),
        ("lepton_server_last_request_timestamp_seconds 0.0\n", (None, 0.0)),  # never set
        ("lepton_server_last_request_timestamp_seconds NaN\nlepton_server_inflight_requests x\n", (None, 0.0)),
        ("", (None, 0.0)),
    ],
    ids=["server", "unset", "garbage", "empty"],
)
def test_the_two_samples_are_read_from_the_exposition(text: str, expected: tuple[float | None, float]) -> None:
    got = parse_metrics("p", text)
    assert (got.last_request, got.inflight) == expected


RENDERS = {
    "new": (None, None),
    "at-zero": (0, Activation(routed=True, addresses=ACTIVATOR, port=8012)),
    "going-to-zero": (2, Activation(routed=True, idle=True, addresses=ACTIVATOR, port=8012)),
    "activating": (1, Activation(routed=True, addresses=ACTIVATOR, port=8012)),
    "serving": (2, Activation(addresses=ACTIVATOR, port=8012)),
    "no-activator": (0, None),
}


def children(case: str) -> dict[str, dict[str, Any]]:
    current, activation = RENDERS[case]
    out = render(service(), ServeSettings(), ServeResolved(), current_primary=current, activation=activation)
    return {f"{c['kind']}/{c['metadata']['name']}": c for c in out.children}


@pytest.mark.parametrize(
    ("case", "replicas", "autoscaler", "routed"),
    [
        ("new", 1, True, False),  # starts with one replica: its model is known to load before it first idles
        ("at-zero", 0, False, True),
        ("going-to-zero", 0, False, True),  # the Service is rendered first: routed before the replicas go
        ("activating", 1, True, True),  # the activator's scale-up stands; routed until a replica is ready
        ("serving", 2, True, False),  # the autoscaler's count stands
        ("no-activator", 1, True, False),  # at zero with no one to hold requests: back to one replica
    ],
)
def test_what_each_state_renders(case: str, replicas: int, autoscaler: bool, routed: bool) -> None:
    kids = children(case)
    assert kids["Deployment/chat-primary"]["spec"]["replicas"] == replicas
    assert ("HorizontalPodAutoscaler/chat" in kids) == autoscaler
    if autoscaler:
        assert kids["HorizontalPodAutoscaler/chat"]["spec"]["minReplicas"] == 1, "autoscaling/v2 takes at least 1"
    service_spec = kids["Service/chat"]["spec"]
    assert (service_spec["selector"] is None) == routed
    assert ("EndpointSlice/chat-activator" in kids) == routed
    assert next(iter(kids)) == "Service/chat"


def test_a_service_at_zero_matches_golden() -> None:
    kids = children("at-zero")
    wanted = [kids["Service/chat"], kids["EndpointSlice/chat-activator"]]
    assert_golden("inferenceservice-at-zero.yaml", yaml.safe_dump_all(wanted, sort_keys=True, width=120))


def test_at_zero_it_is_ready_and_says_so() -> None:
    svc = service()
    scaling = decide_scaling(svc, view(0, 0, routed=True))
    serving = Serving(primary=DeploymentView(generation=2, observed_generation=2, spec_replicas=0))
    status = decide(svc, serving, Wanted(0), scaling=scaling, now="2026-11-29T10:00:00Z")
    assert status.phase == Phase.SCALED_TO_ZERO
    zero, ready = (get_condition(status.conditions, t) for t in (ConditionType.SCALED_TO_ZERO, ConditionType.READY))
    assert zero is not None and (zero.status, zero.reason) == ("True", Reason.IDLE)
    assert "60s without a request" in zero.message
    assert ready is not None and ready.status == "True", "kstatus reads Current: it answers through the activator"
    again = decide(svc.model_copy(update={"status": status}), serving, Wanted(1), scaling=decide_scaling(
        svc, view(1, 1, routed=False, sampled=sample(0))), now="2026-11-29T10:05:00Z")  # fmt: skip
    zero = get_condition(again.conditions, ConditionType.SCALED_TO_ZERO)
    assert zero is not None and zero.status == "False" and zero.reason == Reason.SERVING


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("chat", ("chat", None)),
        ("chat.team-a", ("chat", "team-a")),
        ("chat.team-a.svc", ("chat", "team-a")),
        ("chat.team-a.svc.cluster.local:80", ("chat", "team-a")),
        ("Chat.Team-A.svc.example.org", ("chat", "team-a")),
        ("10.0.0.12:80", None),  # an address names no service
        ("[fd00::1]:80", None),
        ("chat.example.com", None),  # not a cluster name
        ("", None),
    ],
)
def test_the_activator_reads_the_service_from_the_host(host: str, expected: tuple[str, str | None] | None) -> None:
    assert parse_host(host) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"LEPTON_ACTIVATOR_SERVICE": "lepton-activator", "LEPTON_OPERATOR_NAMESPACE": "lepton-system"},
         ("lepton-system", "lepton-activator")),
        ({"LEPTON_ACTIVATOR_SERVICE": "ops/activator"}, ("ops", "activator")),
        ({"LEPTON_ACTIVATOR_SERVICE": "lepton-activator"}, "needs LEPTON_OPERATOR_NAMESPACE"),
        ({"LEPTON_ACTIVATOR_SERVICE": "ops/Activator!"}, "must be a Service as name or namespace/name"),
    ],
)  # fmt: skip
def test_the_activator_setting(env: dict[str, str], expected: Any) -> None:
    env = env | {"LEPTON_PROGRESS_KEY": "k" * 32}
    if isinstance(expected, str):
        with pytest.raises(SettingsError, match=expected):
            Settings.from_env(env)
    else:
        assert Settings.from_env(env).activator == expected


def test_a_field_rendered_none_is_drift_while_present_and_removed_by_a_merge_patch() -> None:
    child = {"kind": "Service", "spec": {"type": "ClusterIP", "selector": None, "ports": [{"port": 80}]}}
    assert nulls(child) == {"spec": {"selector": None}}
    assert without_nulls(child) == {"kind": "Service", "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}}
    assert drifted(child["spec"], {"type": "ClusterIP", "selector": {"app": "x"}, "ports": [{"port": 80}]})
    assert not drifted(child["spec"], {"type": "ClusterIP", "ports": [{"port": 80}], "clusterIP": "10.0.0.1"})
    assert nulls({"spec": {"selector": {"a": "b"}}}) == {}

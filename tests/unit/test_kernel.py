"""The kernel's pure pieces and the per-object loop: loops that survive any error, children matched by
owner UID, drift seen only where the plan states something, events told once per transition."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from lepton.api import KINDS, TrainingJob
from lepton.api.common import Lineage
from lepton.api.contract import ProgressReport
from lepton.api.trainingjob import Failure, TrainingJobStatus
from lepton.controller.children import controller_uid, drifted, owned, trimmed
from lepton.controller.events import BURST, EventRecorder
from lepton.controller.kube import KubeClient, KubeError
from lepton.controller.metrics import OperatorMetrics
from lepton.controller.reconciler import Binding, Reconciler
from lepton.status.events import trainingjob_events
from lepton.status.plan import EventNote, Observed, Plan
from lepton.status.pods import PodView
from lepton.status.references import Resolution
from tests.conftest import EXAMPLES

UID = "0f0f0f0f-1111-2222-3333-444444444444"


def ref(uid: str, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "TrainingJob",
        "name": "j",
        "uid": uid,
        "controller": controller,
    }


@pytest.mark.parametrize(
    ("refs", "ours"),
    [
        ([ref(UID)], True),
        ([ref("someone-else")], False),
        ([ref(UID, controller=False)], False),  # an owner, but not the controller
        ([], False),  # a user's object with the same labels
        ([{"controller": True}], False),  # a malformed reference
    ],
)
def test_children_are_ours_only_by_controller_uid(refs: list[dict[str, Any]], ours: bool) -> None:
    obj = {"metadata": {"name": "j", "ownerReferences": refs}}
    assert (owned([obj], UID) == [obj]) is ours
    assert (controller_uid(obj) == UID) is ours


@pytest.mark.parametrize(
    ("desired", "actual", "expected"),
    [
        ({"spec": {"ports": [{"port": 1}]}}, {"spec": {"ports": [{"port": 1, "protocol": "TCP"}]}}, False),
        ({"spec": {"ports": [{"port": 1}]}}, {"spec": {"ports": [{"port": 2}]}}, True),
        ({"spec": {"ports": [{"port": 1}]}}, {"spec": {"ports": []}}, True),
        ({"metadata": {"labels": {"a": "1"}}}, {"metadata": {"labels": {"a": "1", "b": "2"}}}, False),
        ({"metadata": {"labels": {"a": "1"}}}, {"metadata": {"labels": {}}}, True),
        ({"spec": {"clusterIP": "None"}}, {"spec": None}, True),
    ],
)
def test_drift_is_what_the_plan_states_and_the_object_lacks(desired: Any, actual: Any, expected: bool) -> None:
    assert drifted(desired, actual) is expected


MANAGED = [{"manager": "kube-scheduler", "operation": "Update", "fieldsV1": {"f:status": {"f:conditions": {}}}}]
FULL_POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "j-0-1", "namespace": "ns", "uid": "p1", "resourceVersion": "42", "managedFields": MANAGED,
                 "labels": {"lepton.ai/attempt": "0", "lepton.ai/node-index": "1"}, "ownerReferences": [ref(UID)],
                 "creationTimestamp": "2026-11-29T10:00:00Z", "deletionTimestamp": "2026-11-29T10:05:00Z"},
    "spec": {"nodeName": "gpu-node-3", "containers": [{"name": "trainer", "image": "t:1", "env": [{"name": "A"}]}]},
    "status": {"phase": "Failed", "podIP": "10.0.0.7", "message": "evicted",
               "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
               "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 3, "message": "oom"}},
                                      "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]},
}  # fmt: skip
SERVICE = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "j", "namespace": "ns", "labels": {"a": "1"}, "managedFields": MANAGED},
    "spec": {"clusterIP": "None", "ports": [{"port": 29500, "protocol": "TCP"}]},
}  # fmt: skip


@pytest.mark.parametrize(
    "pod",
    [FULL_POD, {**FULL_POD, "spec": {"containers": []}}, {**FULL_POD, "status": {}}, {"metadata": {"name": "x"}}],
    ids=["bound", "unbound", "no-status", "bare"],
)
def test_what_the_kernel_keeps_of_a_pod_reads_the_same(pod: dict[str, Any]) -> None:
    kept = trimmed(pod, "Pod")
    assert PodView.of(kept) == PodView.of(pod)
    assert "managedFields" not in kept["metadata"] and set(kept["spec"]) <= {"nodeName"}
    assert kept["metadata"].get("resourceVersion") == pod["metadata"].get("resourceVersion")  # fingerprints read it


@pytest.mark.parametrize(
    "desired",
    [{"spec": {"ports": [{"port": 29500}]}}, {"spec": {"ports": [{"port": 1}]}}, {"metadata": {"labels": {"a": "2"}}}],
)
def test_what_the_kernel_keeps_of_other_children_drifts_the_same(desired: dict[str, Any]) -> None:
    kept = trimmed(SERVICE, "Service")
    assert drifted(desired, kept) is drifted(desired, SERVICE)
    assert "managedFields" not in kept["metadata"] and "managedFields" in SERVICE["metadata"]  # a copy


@pytest.mark.parametrize(
    ("labels", "attempt", "index"),
    [
        ({"lepton.ai/attempt": "3", "lepton.ai/node-index": "1"}, 3, 1),
        ({"lepton.ai/attempt": "three", "lepton.ai/node-index": "x"}, -1, 0),  # edited by hand: no crash
        ({"lepton.ai/attempt": "99999999999999999999"}, -1, 0),
        ({}, -1, 0),
    ],
)
def test_pod_views_survive_odd_labels(labels: dict[str, str], attempt: int, index: int) -> None:
    view = PodView.of({"metadata": {"name": "p", "labels": labels, "creationTimestamp": "not a time"},
                       "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": "x"}}}]}})  # fmt: skip
    assert (view.attempt, view.index, view.exit_code) == (attempt, index, None)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"step": 3, "totalSteps": 10, "loss": 1.5}, {"step": 3, "totalSteps": 10, "loss": 1.5}),
        ({"step": 3, "loss": math.nan, "epoch": math.inf, "etaSeconds": -math.inf}, {"step": 3}),
        ({"step": True, "totalSteps": "10", "samplesPerSecond": None}, {}),
        ({"step": 1e300, "etaSeconds": -5, "checkpoint": ""}, {}),
        ({"checkpoint": "/ckpt/step-3", "unknown": 1}, {"checkpoint": "/ckpt/step-3"}),
        ([1, 2], {}),
        ("Infinity", {}),
    ],
)
def test_progress_reports_never_break_a_reconcile(doc: Any, expected: dict[str, Any]) -> None:
    assert ProgressReport.parse(doc).to_wire() == expected


def _status(**fields: Any) -> TrainingJobStatus:
    return TrainingJobStatus.model_validate(fields)


FAIL = {"attempt": 0, "pod": "j-0-1", "reason": "OOMKilled", "exitCode": 137, "time": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("old", "new", "reasons"),
    [
        ({"phase": "Pending"}, {"phase": "Starting"}, ["Scheduled"]),
        ({}, {"phase": "Starting"}, []),  # scheduled before its first status was written: Started tells
        ({}, {"phase": "Running"}, ["Started"]),
        ({"phase": "Starting"}, {"phase": "Running"}, ["Started"]),
        ({"phase": "Running"}, {"phase": "Running"}, []),
        ({"phase": "Running"}, {"phase": "Restarting", "restarts": 1, "failures": [FAIL]},
         ["RankFailed", "GangRestarted"]),
        ({"phase": "Restarting", "restarts": 1, "failures": [FAIL]},
         {"phase": "Restarting", "restarts": 1, "failures": [FAIL]}, []),  # told once
        ({"phase": "Running"}, {"phase": "Running", "latestCheckpoint": "/c/step-10"}, ["CheckpointWritten"]),
        ({"phase": "Running"}, {"phase": "Succeeded", "outputModel": "/m"}, ["Succeeded"]),
        ({"phase": "Running"}, {"phase": "Failed"}, ["Failed"]),
        ({"phase": "Running"}, {"phase": "Suspended"}, ["Suspended"]),
        ({"phase": "Pending"}, {"phase": "Invalid"}, ["InvalidSpec"]),
    ],
)  # fmt: skip
def test_events_are_told_once_per_transition(old: dict[str, Any], new: dict[str, Any], reasons: list[str]) -> None:
    assert [e.reason for e in trainingjob_events(_status(**old), _status(**new))] == reasons


def test_failure_event_names_pod_reason_and_exit_code() -> None:
    (rank, _) = trainingjob_events(_status(phase="Running"), _status(phase="Restarting", restarts=1, failures=[FAIL]))
    assert rank.type == "Warning" and rank.message == "j-0-1: OOMKilled (exit code 137)"
    assert Failure.model_validate(FAIL).exit_code == 137


class RefusingClient(KubeClient):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    async def request(self, *_: Any, **__: Any) -> Any:
        raise KubeError(403, self.message)


@pytest.mark.parametrize(
    ("message", "warned"),
    [
        ('events "j.1" is forbidden: unable to create new content in namespace ns because it is being terminated',
         False),  # the namespace goes, its events with it: not worth a warning
        ('events is forbidden: User "system:serviceaccount:x:y" cannot create resource "events"', True),
    ],
)  # fmt: skip
def test_an_event_refused_is_logged_unless_its_namespace_is_going(
    message: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = EventRecorder(RefusingClient(message))
    job = {"kind": "TrainingJob", "metadata": {"namespace": "ns", "name": "j", "uid": UID}}
    assert asyncio.run(recorder.post(job, [EventNote("Failed", "boom", "Warning")])) == 0
    assert ("not posted" in caplog.text) is warned


def test_event_rate_limit_drops_repeats_and_floods() -> None:
    clock = [0.0]
    recorder = EventRecorder(KubeClient(), clock=lambda: clock[0])
    key = ("TrainingJob", "ns", "j")
    assert recorder._allow(key, EventNote("A", "same"))
    assert not recorder._allow(key, EventNote("A", "same"))  # a repeat within the window
    allowed = sum(recorder._allow(key, EventNote("B", str(i))) for i in range(100))
    assert allowed == BURST - 1
    clock[0] += 60  # tokens come back over time
    assert recorder._allow(key, EventNote("B", "later"))


# --- the loop -----------------------------------------------------------------------------------
class Flaky(Binding[TrainingJob]):
    """A binding whose passes raise each of the failures seen in the wild, then settle."""

    info = KINDS["TrainingJob"]
    failures: tuple[BaseException, ...] = (
        OverflowError("cannot convert float infinity to integer"),
        ValueError("invalid literal for int() with base 10: 'x'"),
        ConnectionResetError("apiserver went away"),
        KeyError("metadata"),
        RuntimeError("anything at all"),
    )

    def __init__(self) -> None:
        self.calls = 0

    def plan(self, resource: TrainingJob, observed: Observed, resolution: Resolution, now: datetime,
             extra: Any) -> Plan:  # fmt: skip
        self.calls += 1
        if self.calls <= len(self.failures):
            raise self.failures[self.calls - 1]
        return Plan(status=resource.status)  # nothing to change: no API call

    def next_look(self, body: Any) -> tuple[float, bool]:
        return 0.01, True


def test_a_loop_survives_every_failure_and_counts_it(trainingjob_body: dict[str, Any]) -> None:
    async def run() -> tuple[Flaky, OperatorMetrics, bool]:
        binding, metrics = Flaky(), OperatorMetrics()
        client = KubeClient()
        reconciler = Reconciler(binding, client, metrics, EventRecorder(client), error_backoff=(0.001, 0.01),
                                stall_after=100)  # fmt: skip
        binding._gang = True  # type: ignore[attr-defined]
        reconciler.track(("ns", "j"), trainingjob_body)
        for _ in range(500):
            await asyncio.sleep(0.01)
            if binding.calls > len(binding.failures) + 2:
                break
        alive = not reconciler._states[("ns", "j")].task.done()  # type: ignore[union-attr]
        await reconciler.stop_all()
        return binding, metrics, alive

    binding, metrics, alive = asyncio.run(run())
    assert alive and binding.calls > len(binding.failures) + 2
    counted = {s.labels["reason"]: s.value for m in metrics.errors.collect() for s in m.samples
               if s.name.endswith("_total")}  # fmt: skip
    assert counted == {"OverflowError": 1, "ValueError": 1, "ConnectionResetError": 1, "KeyError": 1,
                       "RuntimeError": 1}  # fmt: skip


class Discovering(Binding[TrainingJob]):
    """A binding whose cluster knowledge another object's pass may change (as an API gets installed)."""

    info = KINDS["TrainingJob"]

    def __init__(self) -> None:
        self.calls, self.api = 0, False

    def learned(self) -> Any:
        return self.api

    def plan(self, resource: TrainingJob, observed: Observed, resolution: Resolution, now: datetime,
             extra: Any) -> Plan:  # fmt: skip
        self.calls += 1
        return Plan(status=resource.status)

    def next_look(self, body: Any) -> tuple[float, bool]:
        return 0.01, False  # settled: passes are skipped while nothing changes


def test_what_one_pass_learns_of_the_cluster_runs_every_objects_next_pass(trainingjob_body: dict[str, Any]) -> None:
    """The flake this pins: a ServiceMonitor never came for an object that slept on its fingerprint while
    another object's pass learned that the monitoring API had been installed."""

    async def run() -> tuple[int, int, int]:
        binding, client = Discovering(), KubeClient()
        reconciler = Reconciler(binding, client, OperatorMetrics(), EventRecorder(client))
        reconciler.track(("ns", "j"), trainingjob_body)
        await asyncio.sleep(0.2)
        settled = binding.calls
        await asyncio.sleep(0.2)
        quiet = binding.calls
        binding.api = True  # learned elsewhere; nothing about this object changed
        await asyncio.sleep(0.2)
        await reconciler.stop_all()
        return settled, quiet, binding.calls

    settled, quiet, after = asyncio.run(run())
    assert settled == quiet == 1, "a settled object is not planned again while nothing changes"
    assert after == 2, "the change in what the kind knows of the cluster planned it once more"


class Gone(Binding[TrainingJob]):
    """Every pass fails with 404, as a pass of an object deleted while the watch was down does."""

    info = KINDS["TrainingJob"]

    def __init__(self) -> None:
        self.calls = 0

    def plan(self, resource: TrainingJob, observed: Observed, resolution: Resolution, now: datetime,
             extra: Any) -> Plan:  # fmt: skip
        self.calls += 1
        raise KubeError(404, 'namespaces "ns" not found', "NotFound")

    def next_look(self, body: Any) -> tuple[float, bool]:
        return 0.01, True


class Lookup(KubeClient):
    """A client whose only answer is the GET of the object itself (found or not)."""

    def __init__(self, found: dict[str, Any] | None) -> None:
        super().__init__()
        self.found = found

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.found


@pytest.mark.parametrize("exists", [False, True], ids=["gone", "still-there"])
def test_a_loop_ends_when_its_object_is_gone_and_only_then(trainingjob_body: dict[str, Any], exists: bool) -> None:
    async def run() -> tuple[int, bool]:
        binding, client = Gone(), Lookup(trainingjob_body if exists else None)
        reconciler = Reconciler(binding, client, OperatorMetrics(), EventRecorder(client),
                                error_backoff=(0.001, 0.01), stall_after=1000)  # fmt: skip
        reconciler.track(("ns", "j"), trainingjob_body)
        await asyncio.sleep(0.3)
        tracked = ("ns", "j") in reconciler._states
        await reconciler.stop_all()
        return binding.calls, tracked

    calls, tracked = asyncio.run(run())
    assert tracked == exists
    assert (calls > 3) if exists else (calls == 1), calls


@pytest.mark.parametrize(
    ("old", "new", "waits"),
    [
        ({}, {"phase": "Pending", "observedGeneration": 1}, True),  # the first status of a new job
        ({"phase": "Pending", "observedGeneration": 1}, {"phase": "Starting", "observedGeneration": 1}, True),
        ({"phase": "Starting"}, {"phase": "Running"}, False),  # what users wait for
        ({"phase": "Running"}, {"phase": "Starting"}, False),  # going back is news
        ({"phase": "Restarting", "restarts": 1}, {"phase": "Starting", "restarts": 1}, False),
        ({"phase": "Pending", "observedGeneration": 1}, {"phase": "Pending", "observedGeneration": 2}, False),
        ({}, {"phase": "Pending", "conditions": [{"type": "Stalled", "status": "True", "reason": "NameConflict",
                                                  "lastTransitionTime": "2026-01-01T00:00:00Z"}]}, False),
        ({}, {"phase": "Invalid"}, False),
    ],
)  # fmt: skip
def test_only_a_status_on_its_way_up_may_wait(old: dict[str, Any], new: dict[str, Any], waits: bool) -> None:
    from lepton.status.lifecycle import may_wait

    assert may_wait(_status(**old), _status(**new), frozenset({"Pending", "Starting"})) is waits
    assert not may_wait(_status(**old), _status(**new), frozenset()), "a kind that settles nothing waits for nothing"


class Stepping(Binding[TrainingJob]):
    """A job coming up: its plan's phase is whatever the test says it is now."""

    info = KINDS["TrainingJob"]
    settling = frozenset({"Pending", "Starting"})

    def __init__(self) -> None:
        self.phase = "Pending"

    async def observe_extra(self, key: Any, body: Any, observed: Observed) -> Any:
        return self.phase  # as a pod's change would, it changes the pass's inputs

    def plan(self, resource: TrainingJob, observed: Observed, resolution: Resolution, now: datetime,
             extra: Any) -> Plan:  # fmt: skip
        status = resource.status.model_copy(update={"phase": extra, "observed_generation": 1})
        return Plan(status=status, events=trainingjob_events(resource.status, status))

    def next_look(self, body: Any) -> tuple[float, bool]:
        return 300.0, False


class Echoing(KubeClient):
    """Status patches land on the object, and the watch tells the loop (as the apiserver's echo would);
    events are recorded."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__()
        self.body, self.patches, self.events = body, [], []  # type: ignore[var-annotated]
        self.reconciler: Reconciler[TrainingJob] | None = None

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Any) -> None:
        self.patches.append(status.get("phase"))
        merged = {k: v for k, v in {**self.body["status"], **status}.items() if v is not None}
        self.body = {**self.body, "status": merged}
        assert self.reconciler is not None
        self.reconciler.track((namespace, name), self.body)

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        self.events.append(kw["body"]["reason"])


def test_a_gang_coming_up_is_written_once_per_settle_window(trainingjob_body: dict[str, Any]) -> None:
    """Created, scheduled and started within the window: one write, not one per step; Running at once;
    and its events are those of what was written (no Scheduled for a gang nobody saw waiting)."""

    async def run() -> tuple[list[str], list[str], list[str]]:
        binding, client = Stepping(), Echoing(trainingjob_body)
        reconciler = client.reconciler = Reconciler(binding, client, OperatorMetrics(), EventRecorder(client),
                                                    settle=0.4, child_batch=0.02)  # fmt: skip
        reconciler.track(("ns", "j"), client.body)
        await asyncio.sleep(0.1)
        binding.phase = "Starting"  # its pods were scheduled
        reconciler.poke(("ns", "j"))
        await asyncio.sleep(0.1)
        early = list(client.patches)
        await asyncio.sleep(0.4)  # the window ran out with the gang still starting: written now
        binding.phase = "Running"
        reconciler.poke(("ns", "j"))
        await asyncio.sleep(0.1)
        await reconciler.stop_all()
        return early, client.patches, client.events

    early, patches, events = asyncio.run(run())
    assert early == [], "nothing written while the gang comes up within the window"
    assert patches == ["Starting", "Running"]
    assert events == ["Started"]


def test_a_burst_of_child_changes_is_one_pass_and_the_objects_own_change_is_not_held(
    trainingjob_body: dict[str, Any],
) -> None:
    async def run() -> tuple[int, int, int]:
        binding, client = Bursty(), KubeClient()
        reconciler = Reconciler(binding, client, OperatorMetrics(), EventRecorder(client), child_batch=0.2)
        reconciler.track(("ns", "j"), trainingjob_body)
        await asyncio.sleep(0.05)
        first = binding.calls  # the object's own arrival: planned at once
        for _ in range(5):  # a gang's pods created, bound and started
            binding.extra += 1
            reconciler.poke(("ns", "j"))
            await asyncio.sleep(0.02)
        during = binding.calls
        await asyncio.sleep(0.3)
        await reconciler.stop_all()
        return first, during, binding.calls

    first, during, after = asyncio.run(run())
    assert (first, during, after) == (1, 1, 2)


class Bursty(Binding[TrainingJob]):
    info = KINDS["TrainingJob"]

    def __init__(self) -> None:
        self.calls, self.extra = 0, 0

    async def observe_extra(self, key: Any, body: Any, observed: Observed) -> Any:
        return self.extra

    def plan(self, resource: TrainingJob, observed: Observed, resolution: Resolution, now: datetime,
             extra: Any) -> Plan:  # fmt: skip
        self.calls += 1
        return Plan(status=resource.status)

    def next_look(self, body: Any) -> tuple[float, bool]:
        return 300.0, False


@pytest.mark.parametrize("watched", [True, False], ids=["watched", "unwatched"])
def test_a_child_just_created_is_not_posted_again_before_its_watch_shows_it(watched: bool) -> None:
    from lepton.controller import children as kernel_children

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j-0-0", "namespace": "ns",
                                                           "ownerReferences": [ref(UID)]}}  # fmt: skip

    class Counting(KubeClient):
        posts = 0

        async def create(self, obj: Any) -> dict[str, Any] | None:
            self.posts += 1
            if self.posts > 1:
                raise KubeError(409, "already exists", "AlreadyExists")
            return None

        async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
            return pod

    async def run() -> list[int]:
        client, created = Counting(), {}  # type: ignore[var-annotated]
        observed: dict[str, list[Any]] = {"Pod": []} if watched else {}
        plan = Plan(status=_status(), children=[pod])
        counts = []
        for _ in range(3):  # passes before the watch caught up
            await kernel_children.converge(client, UID, plan, observed, pruned=(), created=created)
            counts.append(client.posts)
        if watched:  # unseen: its pass is due when the trust runs out
            assert 0 < (kernel_children.recheck_after(created, ["Pod"]) or 0) <= kernel_children.TRUST_CREATED_SECONDS
        created[("Pod", "j-0-0")] -= kernel_children.TRUST_CREATED_SECONDS  # long unseen: asked again
        await kernel_children.converge(client, UID, plan, observed, pruned=(), created=created)
        counts.append(client.posts)
        if watched:  # seen by the watch (in a pass whose plan renders nothing), then deleted: made again at once
            quiet = Plan(status=_status(), keep=frozenset({("Pod", "j-0-0")}))
            await kernel_children.converge(client, UID, quiet, {"Pod": [pod]}, pruned=(), created=created)
            assert kernel_children.recheck_after(created, ["Pod"]) is None
            await kernel_children.converge(client, UID, plan, {"Pod": []}, pruned=(), created=created)
            counts.append(client.posts)
        return counts

    assert asyncio.run(run()) == ([1, 1, 1, 2, 3] if watched else [1, 1, 1, 1])


@pytest.fixture
def trainingjob_body() -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / "quickstart" / "trainingjob.yaml").read_text())
    doc["metadata"] |= {"namespace": "ns", "name": "j", "uid": UID, "generation": 1}
    doc["spec"]["data"] = {"uri": "examples/data/tickets.jsonl"}  # nothing to resolve: no API call
    lineage = Lineage(base_model="examples/models/tiny-gpt2", training_job="j")  # what the kernel records
    doc["status"] = TrainingJobStatus(lineage=lineage).to_wire()  # as written: a settled pass patches nothing
    assert isinstance(TrainingJob.model_validate(doc), TrainingJob)
    return doc


def test_plan_wants_its_children_and_what_it_keeps() -> None:
    plan = Plan(status=_status(), children=[{"kind": "Service", "metadata": {"name": "j"}}],
                keep=frozenset({("Pod", "j-0-0")}))  # fmt: skip
    assert plan.wanted() == {("Service", "j"), ("Pod", "j-0-0")}
    assert datetime.now(UTC) > datetime(2026, 1, 1, tzinfo=UTC)


def test_operator_settings_reach_the_rendered_pods() -> None:
    from lepton.controller.registry import bindings
    from lepton.controller.settings import Settings
    from lepton.controller.trainingjob import TrainingJobBinding

    built = bindings(Settings(termination_grace_seconds=7, images={"trainer": "registry.example/trainer:1"}))
    (tj,) = [b for b in built if isinstance(b, TrainingJobBinding)]
    assert (tj.settings.termination_grace_seconds, tj.settings.trainer_image) == (7, "registry.example/trainer:1")
    assert {b.info.kind for b in built} == set(KINDS), "every kind runs on the skeleton"


def test_every_child_kind_has_its_plural_in_the_client() -> None:
    """The client builds paths from PLURALS: a kind a binding writes must be there (a KeyError in every
    pass otherwise)."""
    from lepton.controller.kube import PLURALS
    from lepton.controller.registry import bindings
    from lepton.controller.settings import Settings

    for binding in bindings(Settings()):
        for child in (*binding.children, *binding.fetched):
            assert PLURALS.get(child.kind) == child.plural, (binding.info.kind, child.kind)


def test_a_failed_discovery_is_asked_again_not_taken_as_no() -> None:
    from lepton.controller.registry import bindings
    from lepton.controller.settings import Settings
    from lepton.controller.trainingjob import TrainingJobBinding

    (tj,) = [b for b in bindings(Settings()) if isinstance(b, TrainingJobBinding)]
    client = KubeClient()  # not logged in: every request fails like an unreachable apiserver
    for _ in range(2):
        with pytest.raises(Exception, match="discovery"):
            asyncio.run(tj.prepare(client))
        assert tj._gang is None


def test_the_phase_gauge_counts_each_object_once() -> None:
    metrics = OperatorMetrics(kinds=())
    for name, phase in (("a", "Pending"), ("b", "Pending"), ("a", "Running"), ("a", "Running"), ("b", None)):
        metrics.observe_phase("TrainingJob", "ns", name, phase)
    values = {s.labels["phase"]: s.value for m in metrics.resources.collect() for s in m.samples}
    assert values == {"Pending": 0, "Running": 1}


def test_every_bounded_series_exists_at_zero_before_anything_happened() -> None:
    """A dashboard panel or an alert over errors, restarts, failed trials or failed preparations has a
    series (at 0) in a healthy cluster, not "no data"; an unknown label value still gets its own."""
    metrics = OperatorMetrics()
    text = generate_latest(metrics.registry).decode()
    for line in ('lepton_resources{kind="TuningStudy",phase="Failed"} 0.0',
                 'lepton_reconcile_total{kind="Dataset",outcome="error"} 0.0',
                 'lepton_trainingjob_restarts_total{reason="OOMKilled"} 0.0',
                 'lepton_tuningstudy_trials{state="failed"} 0.0',
                 'lepton_dataset_preparation_seconds_count{outcome="failed"} 0.0',
                 'lepton_phase_oldest_seconds{kind="InferenceService",phase="Pending"} 0.0'):  # fmt: skip
        assert line in text, line
    assert 'phase="Succeeded"' not in "".join(x for x in text.splitlines() if "phase_oldest" in x)
    metrics.observe_phase("TrainingJob", "ns", "a", "Pending")
    assert 'lepton_resources{kind="TrainingJob",phase="Pending"} 1.0' in generate_latest(metrics.registry).decode()

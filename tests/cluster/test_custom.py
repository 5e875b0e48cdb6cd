"""Your own program as a TrainingJob, end to end on the real control plane: the operator renders the
gang, each pod's command runs as a real process at the pod's IP (the loopback runtime), and the
operator reads what the program says, through lepton.sdk's /progress with the job's token, into
status. Three programs at once: the shipped example (progress, final metrics), one that never
imports the SDK (progress unknown, still succeeds), and one that exits 3 (the worker's code and last
lines in status, though torchrun exits 1)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.conftest import OperatorProcess
from tests.cluster.kube import Kube, eventually
from tests.cluster.loopback import PLACEMENT, LoopbackRuntime, ensure_node
from tests.conftest import EXAMPLES

EXAMPLE = yaml.safe_load((EXAMPLES / "trainingjob-custom.yaml").read_text())
PLAIN = """import os, time
time.sleep(20)  # a few of the operator's looks at /progress, none answered
if os.environ["RANK"] == "0":
    os.makedirs(os.environ["LEPTON_OUTPUT_DIR"], exist_ok=True)
"""
BROKEN = """import os, sys
print(f"rank {os.environ['RANK']}: reading the data", flush=True)
print("bad column: label is missing", file=sys.stderr, flush=True)
sys.exit(3 if os.environ["RANK"] == "0" else 0)
"""


def custom(name: str, out: Path, command: list[str] | None = None, **hyper: Any) -> dict[str, Any]:
    """The example, one pod of 2 processes on the loopback node (each pod here gets a rendezvous of its own)."""
    doc = copy.deepcopy(EXAMPLE)
    doc["metadata"] = {"name": name}
    spec = doc["spec"]
    spec |= {"nodes": 1, "procsPerNode": 2, "backoffLimit": 0, "scheduling": PLACEMENT,
             "output": {"uri": str(out / name)}}  # fmt: skip
    spec["trainer"]["hyperparameters"] |= hyper
    if command is not None:
        spec["trainer"]["command"] = command
    return doc


def status(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return dict(kube.get("trainingjob", name, ns).get("status") or {})


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == kind), {})


def test_the_operator_reads_your_programs_progress_or_says_it_is_unknown_and_tells_its_failure(
    kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    ensure_node(kube)
    ns = namespace
    (tmp_path / "plain.py").write_text(PLAIN)
    (tmp_path / "broken.py").write_text(BROKEN)
    kube.apply(custom("sdk", tmp_path, step_sleep=0.1), ns)
    kube.apply(custom("plain", tmp_path, ["python", str(tmp_path / "plain.py")]), ns)
    kube.apply(custom("broken", tmp_path, ["python", str(tmp_path / "broken.py")]), ns)
    work = tmp_path / "run"
    work.mkdir()
    with LoopbackRuntime(kube, ns, work) as runtime:

        def midway() -> dict[str, Any] | None:
            progress = status(kube, ns, "sdk").get("progress") or {}
            return progress if 0 < (progress.get("percent") or 0) < 100 else None

        progress = eventually(midway, timeout=180, interval=0.5, what="the program's progress in status")
        assert progress["totalSteps"] == 160 and progress.get("loss")
        unknown = eventually(lambda: "progress unknown" in condition(status(kube, ns, "plain"), "Ready").get(
            "message", ""), timeout=120, what="status saying the plain program's progress is unknown")  # fmt: skip
        assert unknown
        message = condition(status(kube, ns, "plain"), "Ready")["message"]
        assert "lepton.sdk" in message and status(kube, ns, "plain").get("progress") is None

        def finished(name: str) -> dict[str, Any] | None:
            st = status(kube, ns, name)
            return st if st.get("phase") in ("Succeeded", "Failed") else None

        done = {name: eventually(lambda name=name: finished(name), timeout=240, what=f"{name} finished")
                for name in ("sdk", "plain", "broken")}  # fmt: skip
        assert not runtime.errors, runtime.errors
    assert done["sdk"]["phase"] == "Succeeded", done["sdk"]
    assert set(done["sdk"]["metrics"]) >= {"accuracy", "eval_loss"}, "lepton.sdk.finish's metrics reach status"
    assert done["sdk"]["progress"]["step"] == 160
    assert done["plain"]["phase"] == "Succeeded" and not done["plain"].get("metrics")
    broken = done["broken"]
    assert broken["phase"] == "Failed", broken
    (failure,) = broken["failures"]
    assert failure["exitCode"] == 3, failure  # the worker's, from torchrun's report in the log's tail
    assert failure["message"].splitlines()[-1] == "bad column: label is missing", failure
    failed = condition(broken, "Failed")["message"]
    assert "(exit code 3): bad column: label is missing" in failed, failed

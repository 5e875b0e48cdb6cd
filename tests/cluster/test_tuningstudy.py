"""TuningStudy on a real control plane, with a real tuner and real trainers.

kwok cannot run a container, so the tuner pod's program (`python -m lepton.workloads.tuner`, Optuna
on a real SQLite RDB) and each trial pod's torchrun trainer run as real processes at the pods' own
(loopback) IPs (`tests/cluster/loopback.py`): the operator syncs with the tuner and reads every trial's
progress over HTTP as in a cluster, and a trial's objective is the trainer's own termination message.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from lepton.cli.devcluster import DevCluster
from tests.cluster.conftest import FAST, TEST_NS_PREFIX, OperatorProcess, start_operator, stop_operator
from tests.cluster.kube import Kube, eventually
from tests.cluster.loopback import PLACEMENT, LoopbackRuntime, ensure_node

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("Succeeded", "Failed")


def study(name: str, out: Path, **spec: Any) -> dict[str, Any]:
    template = {
        "model": {"uri": str(ROOT / "examples/models/tiny-gpt2"), "init": "config"},
        "data": {"uri": str(ROOT / "examples/data/tickets.jsonl"), "validationFraction": 0.2},
        "hyperparameters": {"maxSteps": 12, "evalEverySteps": 4, "batchSize": 4, "maxSeqLength": 32},
        "nodes": 1,
        "gpusPerNode": 0,
        "backend": "gloo",
        "checkpoint": {"everySteps": 100},
        "scheduling": PLACEMENT,
        "output": {"uri": str(out)},
    }
    return {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": name},
        "spec": {
            "objective": {"metric": "eval_loss", "direction": "minimize"},
            "searchSpace": [{"name": "learningRate", "type": "float", "low": 0.0001, "high": 0.1, "log": True}],
            "sampler": {"type": "random", "seed": 1},
            "pruner": {"type": "none"},
            "storage": {"urlSecretRef": {"name": "optuna-db", "key": "url"}},
            "scheduling": PLACEMENT,
            "trialTemplate": {"trainingJob": template},
        }
        | spec,
    }


def db_secret(kube: Kube, ns: str, url: str) -> None:
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "optuna-db"}, "stringData": {"url": url}},
               ns)  # fmt: skip


def trials(kube: Kube, ns: str, name: str) -> list[dict[str, Any]]:
    items = kube.get("trainingjobs", namespace=ns)["items"]
    return [t for t in items if t["metadata"].get("labels", {}).get("lepton.ai/name") == name
            and any(r.get("kind") == "TuningStudy" for r in t["metadata"].get("ownerReferences", []))]  # fmt: skip


def live(ts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in ts if t.get("status", {}).get("phase") not in TERMINAL and not t["spec"].get("suspend")]


def status(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return dict(kube.get("tuningstudy", name, ns).get("status") or {})


def stored_numbers(db: Path) -> list[int]:
    """Trial numbers in the study's own storage (Optuna's RDB schema)."""
    with sqlite3.connect(db) as conn:
        return sorted(int(n) for (n,) in conn.execute("SELECT number FROM trials"))


def finished(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    st = status(kube, ns, name)
    return st if st.get("phase") in TERMINAL else None


def running_pods(kube: Kube, ns: str) -> list[str]:
    pods = kube.get("pods", namespace=ns)["items"]
    return [p["metadata"]["name"] for p in pods if p["status"].get("phase") in ("Pending", "Running")
            and not p["metadata"].get("deletionTimestamp")]  # fmt: skip


def test_a_study_runs_parallelism_trials_at_a_time_then_hands_its_best_model_on(
    kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    ensure_node(kube)
    ns, db = namespace, tmp_path / "study.db"
    db_secret(kube, ns, f"sqlite:///{db}")
    # A user's TrainingJob carrying the study's labels, not owned by it: never touched.
    mine = {"apiVersion": "lepton.ai/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "mine", "labels": {"lepton.ai/kind": "TuningStudy", "lepton.ai/name": "lr"}},
            "spec": {"model": {"uri": "/m"}, "data": {"uri": "/d"}, "hyperparameters": {"maxSteps": 1},
                     "nodes": 1, "output": {"uri": "/o"}, "suspend": True}}  # fmt: skip
    kube.apply(mine, ns)
    # A TrainingJob that continues from the study's best model: it waits for the study to finish.
    follow = {"apiVersion": "lepton.ai/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "final"},
              "spec": {"model": {"tuningStudy": {"name": "lr"}}, "data": {"uri": "/d"},
                       "hyperparameters": {"maxSteps": 1}, "nodes": 1, "output": {"uri": "/o"}}}  # fmt: skip
    kube.apply(follow, ns)
    with LoopbackRuntime(kube, ns, tmp_path, storage_url=f"sqlite:///{db}") as runtime:
        kube.apply(study("lr", tmp_path / "out", maxTrials=5, parallelism=1), ns)
        eventually(lambda: status(kube, ns, "lr").get("phase") == "Running", timeout=90, what="study Running")
        most = 0

        def first_done() -> bool:
            nonlocal most
            most = max(most, len(live(trials(kube, ns, "lr"))))
            return bool(status(kube, ns, "lr").get("trialsDone", "0/5") != "0/5")

        eventually(first_done, timeout=180, interval=0.5, what="the first trial finished")
        assert most == 1, "parallelism 1 ran more than one trial at once"
        kube.patch("tuningstudy", "lr", ns, {"spec": {"parallelism": 2}})
        eventually(lambda: len(live(trials(kube, ns, "lr"))) == 2, timeout=60, interval=0.5, what="2 trials at once")
        final = eventually(lambda: finished(kube, ns, "lr"), timeout=300, interval=1, what="study finished")
        assert not runtime.errors, runtime.errors
    assert final["phase"] == "Succeeded", final
    assert final["trialsDone"] == "5/5" and final["trials"]["total"] == 5 and final["trials"]["succeeded"] == 5
    assert stored_numbers(db) == [0, 1, 2, 3, 4]
    best = final["bestTrial"]
    values = [float(t["value"]) for t in final["topTrials"]]
    assert values == sorted(values) and float(best["value"]) == values[0] and len(values) == 5
    assert best["model"] == str(tmp_path / "out" / f"lr-{best['number']}")
    assert (Path(best["model"]) / "config.json").exists()  # a real model, written by a real trainer
    # Nothing of the study runs after it ends: the only pod left running is the follow-up job's, whose
    # model is the best trial's (modelFrom.tuningStudy resolved once the study succeeded).
    eventually(lambda: running_pods(kube, ns) == ["final-0-0"], timeout=60, what="only final-0-0 running")
    pod = kube.get("pod", "final-0-0", ns)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert json.loads(env["LEPTON_TRAINER_CONFIG"])["modelPath"] == best["model"]
    assert kube.run("get", "trainingjob", "mine", "-n", ns, check=False).returncode == 0  # not ours: untouched


def test_operator_and_tuner_killed_mid_study_converge_with_no_duplicate_or_lost_trial(
    dev_cluster: DevCluster, kube: Kube, tmp_path: Path
) -> None:
    ensure_node(kube)
    ns = f"lepton-tune-{uuid.uuid4().hex[:6]}"  # outside the session operator's glob
    assert not ns.startswith(TEST_NS_PREFIX)
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    db = tmp_path / "study.db"
    db_secret(kube, ns, f"sqlite:///{db}")
    op = start_operator(dev_cluster.kubeconfig, tmp_path / "op1.log", ns, FAST)
    try:
        with LoopbackRuntime(kube, ns, tmp_path, storage_url=f"sqlite:///{db}") as runtime:
            kube.apply(study("chaos", tmp_path / "out", maxTrials=4, parallelism=2), ns)
            eventually(lambda: len(live(trials(kube, ns, "chaos"))) == 2, timeout=120, what="2 trials running")
            op.proc.kill()  # no goodbye
            op.proc.wait()
            assert runtime.kill_tuner()  # and the Optuna process with it (its pod stays; it restarts)
            time.sleep(2)
            op = start_operator(dev_cluster.kubeconfig, tmp_path / "op2.log", ns, FAST)
            final = eventually(lambda: finished(kube, ns, "chaos"), timeout=300, interval=1, what="study finished")
            assert not runtime.errors, runtime.errors
        assert final["phase"] == "Succeeded" and final["trials"]["total"] == 4, final
        assert stored_numbers(db) == [0, 1, 2, 3]
        names = sorted(t["metadata"]["name"] for t in trials(kube, ns, "chaos"))
        assert names == ["chaos-0", "chaos-1", "chaos-2", "chaos-3"]
        assert runtime.restarts == 1
    finally:
        stop_operator(op)
        kube.run("delete", "namespace", ns, "--wait=false", check=False)


def test_a_study_without_storage_gets_a_journal_pvc_of_its_own(
    kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    doc = study("plain", tmp_path / "out")
    del doc["spec"]["storage"], doc["spec"]["scheduling"]
    kube.apply(doc, namespace)
    pvc = eventually(lambda: next(iter(kube.get("pvc", namespace=namespace)["items"]), None), timeout=30,
                     what="the journal PVC")  # fmt: skip
    assert pvc["metadata"]["name"] == "plain-tuner"
    assert pvc["metadata"]["ownerReferences"][0]["kind"] == "TuningStudy"  # deleted with the study
    pod = eventually(lambda: next(iter(kube.get("pods", namespace=namespace)["items"]), None), timeout=30,
                     what="the tuner pod")  # fmt: skip
    assert pod["metadata"]["name"] == "plain-tuner"
    assert pod["spec"]["volumes"][-1]["persistentVolumeClaim"]["claimName"] == "plain-tuner"

    def unschedulable() -> dict[str, Any] | None:  # no provisioner here: the scheduler's words are shown
        st = status(kube, namespace, "plain")
        ready = next((c for c in st.get("conditions", []) if c["type"] == "Reconciling"), {})
        return st if ready.get("reason") == "Unschedulable" else None

    st = eventually(unschedulable, timeout=60, what="Reconciling: Unschedulable")
    assert st["phase"] == "Pending" and st["tuner"] == "plain-tuner"
    assert "PersistentVolumeClaim" in next(c for c in st["conditions"] if c["type"] == "Reconciling")["message"]


def test_a_study_of_your_own_program_reads_its_objective_and_evaluations_from_the_sdk(
    kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    """Trials of a custom-mode template (examples/custom/train.py, real processes): the tuner tells Optuna
    the evaluations the program reported through lepton.sdk, and its objective is what lepton.sdk.finish
    wrote; the searched parameters reach the program in trainer.hyperparameters."""
    ensure_node(kube)
    ns, db = namespace, tmp_path / "study.db"
    db_secret(kube, ns, f"sqlite:///{db}")
    doc = study("mine", tmp_path / "out", maxTrials=2, parallelism=2)
    doc["spec"]["searchSpace"] = [{"name": "lr", "type": "float", "low": 0.005, "high": 0.2, "log": True},
                                  {"name": "hidden", "type": "categorical", "choices": ["16", "32"]}]  # fmt: skip
    template = doc["spec"]["trialTemplate"]["trainingJob"]
    for key in ("model", "data", "hyperparameters"):
        template.pop(key)
    template |= {
        "procsPerNode": 2,
        "trainer": {
            "image": "lepton/trainer:0.1.0",
            "command": ["python", "examples/custom/train.py"],
            # step_sleep: ~20 s a trial, for the operator (which reads /progress every 10 s) to see evaluations
            "hyperparameters": {"batch_size": 64, "epochs": 3, "eval_every": 8, "seed": 3, "step_sleep": 0.4},
        },
    }
    with LoopbackRuntime(kube, ns, tmp_path, storage_url=f"sqlite:///{db}") as runtime:
        kube.apply(doc, ns)
        final = eventually(lambda: finished(kube, ns, "mine"), timeout=300, interval=1, what="study finished")
        assert not runtime.errors, runtime.errors
    assert final["phase"] == "Succeeded" and final["trialsDone"] == "2/2", final
    jobs = {t["metadata"]["name"]: t for t in trials(kube, ns, "mine")}
    for top in final["topTrials"]:
        job = jobs[f"mine-{top['number']}"]
        # The objective is the program's final eval_loss (lepton.sdk.finish), as the job's status shows it.
        assert float(top["value"]) == float(job["status"]["metrics"]["eval_loss"]), (top, job["status"])
        assert [e["step"] for e in job["status"].get("evaluations", [])][:1] == [8], json.dumps(job["status"])
        params = job["spec"]["trainer"]["hyperparameters"]
        assert isinstance(params["lr"], float) and params["hidden"] in (16, 32) and params["epochs"] == 3
    with sqlite3.connect(db) as conn:  # the evaluations reached Optuna as intermediate values
        steps = {s for (s,) in conn.execute("SELECT step FROM trial_intermediate_values")}
    assert 8 in steps, steps

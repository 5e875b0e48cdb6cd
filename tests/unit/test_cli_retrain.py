"""`leptonctl retrain JOB` against a stand-in kubectl that answers `get` from a JSON state file, applies
`patch` to it (bumping the generation), answers `create` by echoing the object under a generated name,
and records every call. A Dataset's successive reads can be scripted (a list of statuses the operator
would write), so the wait for a preparation is exercised without a cluster: the exact calls, the exact
body created, and the one clear line for each refusal or failure."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from lepton.cli import retrain
from lepton.cli.main import main

FAKE_KUBECTL = '''#!{python}
"""A stand-in kubectl. get: $FAKE_STATE[kind][name] (NotFound when absent), its status replaced first by
the next of $FAKE_STATE["statuses"]["kind/name"] when there is one; patch --type=merge: merges the body
and bumps metadata.generation; create -f -: the object with a generated name, kept in "created". Every
call is appended to $FAKE_CALLS (with the stdin of a create)."""
import json, os, sys
args = sys.argv[1:]
path = os.environ["FAKE_STATE"]
state = json.load(open(path))
stdin = sys.stdin.read() if args[0] == "create" else None
with open(os.environ["FAKE_CALLS"], "a") as fh:
    fh.write(json.dumps(args) + "\\n")
def save():
    json.dump(state, open(path, "w"))
def merge(into, patch):
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        elif value is None:
            into.pop(key, None)
        else:
            into[key] = value
if state.get("unreachable"):
    print("E1128 memcache.go:265] couldn't get current server API group list", file=sys.stderr)
    print("The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?",
          file=sys.stderr)
    sys.exit(1)
if state.get("no_crd"):
    print(f'error: the server doesn\\'t have a resource type "{{args[1]}}"', file=sys.stderr)
    sys.exit(1)
if args[0] in state.get("forbidden", []):
    print(f'Error from server (Forbidden): User "ann" cannot {{args[0]}} trainingjobs', file=sys.stderr)
    sys.exit(1)
if args[0] in ("get", "patch"):
    kind, name = args[1], args[2]
    found = state.get(kind, {{}}).get(name)
    if found is None:
        print(f'Error from server (NotFound): {{kind}} "{{name}}" not found', file=sys.stderr)
        sys.exit(1)
    if args[0] == "patch":
        merge(found, json.loads(args[args.index("-p") + 1]))
        found["metadata"]["generation"] = found["metadata"].get("generation", 1) + 1
    else:
        script = state.get("statuses", {{}}).get(f"{{kind}}/{{name}}") or []
        if script:
            found["status"] = script.pop(0)
    save()
    print(json.dumps(found))
    sys.exit(0)
if args[0] == "create":
    obj = json.loads(stdin)
    obj["metadata"]["name"] = obj["metadata"]["generateName"] + "x7k2p"
    obj["metadata"].update(uid="new-uid", resourceVersion="9", generation=1)
    state.setdefault("created", []).append(obj)
    save()
    print(json.dumps(obj))
    sys.exit(0)
sys.exit(2)
'''

NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
STAMP = "20250304-050607"
TIMEOUT = "--request-timeout=15s"
OLD, NEW = "sha256-old", "sha256-new"


def job(ref: dict[str, Any] | None = None, trained: str | None = OLD, **spec: Any) -> dict[str, Any]:
    data = {"uri": "/data/train.jsonl"} if ref is None else {"datasetRef": ref, "textField": "text"}
    return {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": "chat", "namespace": "team-a", "uid": "u-1", "resourceVersion": "41", "generation": 3,
            "creationTimestamp": "2025-03-01T00:00:00Z", "finalizers": ["lepton.ai/x"],
            "managedFields": [{"manager": "kubectl"}], "ownerReferences": [{"kind": "X", "name": "y", "uid": "z"}],
            "labels": {"team": "nlp", "app.kubernetes.io/instance": "gitops-app",
                       "kustomize.toolkit.fluxcd.io/name": "apps"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "lepton.ai/last-handled": "{}"},
        },
        "spec": {"model": {"hub": {"id": "org/m"}}, "data": data,
                 "output": {"pvc": {"claimName": "models", "path": "chat"}}, **spec},
        "status": {"phase": "Succeeded", "datasetVersion": trained, "observedGeneration": 3},
    }  # fmt: skip


REF = {"name": "feedback", "split": "train"}


def dataset(version: str | None = OLD, *, generation: int = 4, suspend: bool = False) -> dict[str, Any]:
    return {"apiVersion": "lepton.ai/v1alpha1", "kind": "Dataset",
            "metadata": {"name": "feedback", "namespace": "team-a", "generation": generation},
            "spec": {"refresh": "r1", "suspend": suspend},
            "status": ds_status(version, generation, "Ready" if version else "Preparing")}  # fmt: skip


def ds_status(version: str | None, generation: int, phase: str, reason: str = "Prepared", message: str = "",
              reused: bool = False) -> dict[str, Any]:  # fmt: skip
    reconciling = phase == "Preparing"
    return {"observedGeneration": generation, "phase": phase, "version": version, "reused": reused,
            "conditions": [
                {"type": "Ready", "status": "False" if phase == "Failed" else "True", "reason": reason,
                 "message": message},
                {"type": "Reconciling", "status": str(reconciling), "reason": reason,
                 "message": message if reconciling else ""},
                {"type": "Stalled", "status": str(phase == "Failed"), "reason": reason,
                 "message": message if phase == "Failed" else ""},
            ]}  # fmt: skip


PREPARING_OLD_GEN = ds_status(OLD, 4, "Ready")  # the operator has not seen the patch yet
PREPARING = ds_status(OLD, 5, "Preparing", "Preparing", "Preparing: Job feedback-prep-1 running")


@pytest.fixture
def kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """set(state) -> (calls file, state file); $KUBECTL points at the stand-in."""
    script = tmp_path / "kubectl"
    script.write_text(FAKE_KUBECTL.format(python=sys.executable))
    script.chmod(0o755)
    calls, state = tmp_path / "calls.jsonl", tmp_path / "state.json"
    for key, value in {"KUBECTL": str(script), "FAKE_CALLS": str(calls), "FAKE_STATE": str(state)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(retrain, "_utcnow", lambda: NOW)
    monkeypatch.setattr(retrain, "POLL_SECONDS", 0.0)

    def set_state(value: dict[str, Any]) -> tuple[Path, Path]:
        state.write_text(json.dumps(value))
        return calls, state

    return set_state


def recorded(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def created(state: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(state.read_text()).get("created", [])
    return found


GET_JOB = ["get", "trainingjob", "chat", "-n", "team-a", "-o", "json", TIMEOUT]
GET_DS = ["get", "dataset", "feedback", "-n", "team-a", "-o", "json", TIMEOUT]
PATCH_DS = ["patch", "dataset", "feedback", "-n", "team-a", "--type=merge", "-p",
            json.dumps({"spec": {"refresh": f"retrain-{STAMP}"}}), "-o", "json", TIMEOUT]  # fmt: skip
CREATE = ["create", "-n", "team-a", "-f", "-", "-o", "json", TIMEOUT]


def expected_body(version: str) -> dict[str, Any]:
    """What is POSTed: the source's spec with a retrain output; its labels less GitOps tracking ones."""
    return {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "generateName": "chat-retrain-",
            "namespace": "team-a",
            "labels": {"team": "nlp"},
            "annotations": {"lepton.ai/retrain-of": "chat", "lepton.ai/dataset-version": version},
        },
        "spec": {**job(REF)["spec"], "output": {"pvc": {"claimName": "models", "path": f"chat/retrain-{STAMP}"}}},
    }


# --- refusals and failures: one line, exit 1, nothing created -------------------------------------
UNREACHABLE = "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?"


@pytest.mark.parametrize(
    ("state", "argv", "words", "calls"),
    [
        ({}, [], "no TrainingJob chat in namespace team-a (another namespace: -n)", [GET_JOB]),
        ({"unreachable": True}, [], f"cannot ask the cluster (kubectl get trainingjob chat): {UNREACHABLE}",
         [GET_JOB]),
        ({"no_crd": True}, [], "the cluster has no trainingjob kind (are Lepton's CRDs installed?): error: the server "
         "doesn't have a resource type \"trainingjob\"", [GET_JOB]),
        ({"trainingjob": {"chat": job({**REF, "version": OLD})}}, [],
         f"team-a/chat pins Dataset feedback to version {OLD}: it would train on the same data again; remove "
         "data.datasetRef.version", [GET_JOB]),
        ({"trainingjob": {"chat": job(None)}}, [],
         "team-a/chat reads no Dataset: nothing new to train on (retrain needs data.datasetRef naming a Dataset)",
         [GET_JOB]),
        ({"trainingjob": {"chat": job(REF)}}, [],
         "team-a/chat reads Dataset feedback, which is not in namespace team-a", [GET_JOB, GET_DS]),
        ({"trainingjob": {"chat": job(REF)}, "dataset": {"feedback": dataset(None)}}, [],
         "Dataset team-a/feedback has no version yet (phase Preparing): wait for it (kubectl wait "
         "--for=condition=Ready dataset/feedback -n team-a), or pass --refresh-dataset", [GET_JOB, GET_DS]),
        ({"trainingjob": {"chat": job(REF)}, "dataset": {"feedback": dataset(suspend=True)}}, ["--refresh-dataset"],
         "Dataset team-a/feedback is suspended: no preparation runs (spec.suspend: false)", [GET_JOB, GET_DS]),
        ({"trainingjob": {"chat": job(REF)}, "dataset": {"feedback": dataset()},
          "statuses": {"dataset/feedback": [dataset()["status"], PREPARING, ds_status(
              OLD, 5, "Failed", "SourceUnreachable", "pvc://request-log/chat: no such directory; version "
              f"{OLD} stays current")]}}, ["--refresh-dataset"],
         "Dataset team-a/feedback Failed (SourceUnreachable): pvc://request-log/chat: no such directory; version "
         f"{OLD} stays current", [GET_JOB, GET_DS, PATCH_DS, GET_DS, GET_DS]),
        ({"trainingjob": {"chat": job(REF)}, "dataset": {"feedback": dataset()},
          "statuses": {"dataset/feedback": [dataset()["status"], PREPARING]}},
         ["--refresh-dataset", "--wait-seconds", "1"],
         "Dataset team-a/feedback not prepared within 1s (Preparing: Job feedback-prep-1 running); it goes on: "
         "kubectl get dataset feedback -n team-a -w, then retrain without --refresh-dataset",
         None),
        ({"trainingjob": {"chat": job(REF)}, "dataset": {"feedback": dataset(NEW)}, "forbidden": ["create"]}, [],
         'cannot create the new TrainingJob (kubectl create -n team-a): Error from server (Forbidden): User "ann" '
         'cannot create trainingjobs', [GET_JOB, GET_DS, CREATE]),
    ],
    ids=["not found", "no cluster", "no CRD", "pinned version", "no datasetRef", "no Dataset",
         "Dataset without a version", "Dataset suspended", "preparation failed", "timeout", "create forbidden"],
)  # fmt: skip
def test_refusals_and_failures_are_one_line(
    kubectl: Any,
    capsys: pytest.CaptureFixture[str],
    state: dict[str, Any],
    argv: list[str],
    words: str,
    calls: list[list[str]] | None,
) -> None:
    calls_file, state_file = kubectl(state)
    assert main(["retrain", "chat", "-n", "team-a", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"leptonctl retrain: {words}", err
    assert len([line for line in err if line.startswith("leptonctl retrain:")]) == 1
    if calls is not None:
        assert recorded(calls_file) == calls
    else:  # the timeout: it polled until the deadline (the last status repeats)
        got = recorded(calls_file)
        assert got[:3] == [GET_JOB, GET_DS, PATCH_DS] and len(got) > 4 and set(map(tuple, got[3:])) == {tuple(GET_DS)}
    assert created(state_file) == [] or "forbidden" in state


# --- retrains ---------------------------------------------------------------------------------------
def test_a_plain_retrain_posts_the_source_spec_under_a_generated_name(
    kubectl: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    calls, state = kubectl({"trainingjob": {"chat": job(REF)}, "dataset": {"feedback": dataset(NEW)}})
    assert main(["retrain", "chat", "-n", "team-a"]) == 0
    assert recorded(calls) == [GET_JOB, GET_DS, CREATE]  # no patch, and POST (create), never apply
    (body,) = created(state)
    for key in ("name", "uid", "resourceVersion", "generation"):  # what the fake apiserver set
        body["metadata"].pop(key)
    assert body == expected_body(NEW)  # no status, uid, resourceVersion, managedFields, ownerReferences, …
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"created TrainingJob team-a/chat-retrain-x7k2p from chat: Dataset feedback version {NEW}; chat trained on "
        f"{OLD}",
        f"its model goes to pvc://models/chat/retrain-{STAMP}",
        "next: kubectl get trainingjob chat-retrain-x7k2p -n team-a -w",
    ]


def test_the_context_namespace_is_the_jobs(kubectl: Any) -> None:
    calls, _ = kubectl({"trainingjob": {"chat": job(REF)}, "dataset": {"feedback": dataset(NEW)}})
    assert main(["retrain", "chat"]) == 0
    assert recorded(calls)[0] == ["get", "trainingjob", "chat", "-o", "json", TIMEOUT]
    assert recorded(calls)[1:] == [GET_DS, CREATE]  # then the namespace the job lives in


@pytest.mark.parametrize(
    ("script", "argv", "out", "creates"),
    [
        ([PREPARING_OLD_GEN, PREPARING, ds_status(NEW, 5, "Ready")], [],
         f"Dataset team-a/feedback prepared again: new version {NEW} (was {OLD})", True),
        ([PREPARING_OLD_GEN, PREPARING, ds_status(OLD, 5, "Ready", "VersionReused", reused=True)], [],
         f"Dataset team-a/feedback unchanged: version {OLD} reused (no new data since the last preparation)", False),
        ([PREPARING_OLD_GEN, PREPARING, ds_status(OLD, 5, "Ready", "VersionReused", reused=True)], ["--force"],
         f"Dataset team-a/feedback unchanged: version {OLD} reused (no new data since the last preparation)", True),
        # waiting for a reference: Ready with the old version, but still Reconciling: not the outcome yet
        ([ds_status(OLD, 5, "Ready", "ReferenceNotReady") | {"conditions": [
            {"type": "Ready", "status": "True", "reason": "ReferenceNotReady"},
            {"type": "Reconciling", "status": "True", "reason": "ReferenceNotReady"}]}, ds_status(NEW, 5, "Ready")],
         [], f"Dataset team-a/feedback prepared again: new version {NEW} (was {OLD})", True),
    ],
    ids=["new version", "unchanged: no job", "unchanged --force", "Ready while reconciling is not done"],
)  # fmt: skip
def test_refresh_dataset_waits_for_the_preparation(kubectl: Any, capsys: pytest.CaptureFixture[str],
                                                   script: list[dict[str, Any]], argv: list[str], out: str,
                                                   creates: bool) -> None:  # fmt: skip
    calls, state = kubectl({"trainingjob": {"chat": job(REF)}, "dataset": {"feedback": dataset()},
                            "statuses": {"dataset/feedback": [dataset()["status"], *script]}})  # fmt: skip
    assert main(["retrain", "chat", "-n", "team-a", "--refresh-dataset", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == out
    polls = [GET_DS] * len(script)
    assert recorded(calls) == [GET_JOB, GET_DS, PATCH_DS, *polls, *([CREATE] if creates else [])]
    stored = json.loads(state.read_text())["dataset"]["feedback"]
    assert stored["spec"]["refresh"] == f"retrain-{STAMP}" and stored["metadata"]["generation"] == 5
    if creates:
        (body,) = created(state)
        version = script[-1]["version"]
        assert body["metadata"]["annotations"] == {"lepton.ai/retrain-of": "chat", "lepton.ai/dataset-version": version}
        assert lines[1].startswith("created TrainingJob team-a/chat-retrain-x7k2p from chat")
    else:
        assert created(state) == []
        assert lines[1:] == [f"team-a/chat trained on version {OLD} of Dataset feedback already: no new data, "
                             "nothing created (--force to train again anyway)"]  # fmt: skip


def test_no_new_version_creates_nothing_unless_forced(kubectl: Any, capsys: pytest.CaptureFixture[str]) -> None:
    calls, state = kubectl({"trainingjob": {"chat": job(REF)}, "dataset": {"feedback": dataset(OLD)}})
    assert main(["retrain", "chat", "-n", "team-a"]) == 0
    assert recorded(calls) == [GET_JOB, GET_DS] and created(state) == []
    assert "no new data, nothing created (--force to train again anyway)" in capsys.readouterr().out
    assert main(["retrain", "chat", "-n", "team-a", "--force"]) == 0
    (body,) = created(state)
    assert body["metadata"]["annotations"]["lepton.ai/dataset-version"] == OLD


@pytest.mark.parametrize("refresh", [False, True], ids=["plain", "--refresh-dataset"])
def test_dry_run_prints_the_manifest_and_changes_nothing(kubectl: Any, capsys: pytest.CaptureFixture[str],
                                                         refresh: bool) -> None:  # fmt: skip
    version = OLD if refresh else NEW
    calls, state = kubectl({"trainingjob": {"chat": job(REF)}, "dataset": {"feedback": dataset(version)}})
    argv = ["--refresh-dataset"] if refresh else []
    assert main(["retrain", "chat", "-n", "team-a", "--dry-run", *argv]) == 0
    assert recorded(calls) == [GET_JOB, GET_DS]  # no patch, no create
    assert created(state) == []
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out) == expected_body(version)
    if refresh:
        words = f"--dry-run: Dataset team-a/feedback is not prepared again (it would get spec.refresh: retrain-{STAMP})"
        assert words in captured.err


# --- the manifest ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "output", "checkpoint", "prefix", "moved", "moved_ckpt"),
    [
        ("chat", {"uri": "/srv/models/chat/"}, None, "chat-retrain-", {"uri": f"/srv/models/chat/retrain-{STAMP}"},
         None),
        # a retrain of a retrain: the same prefix, and a sibling directory, not a nested one
        ("chat-retrain-ab12c", {"pvc": {"claimName": "m", "path": "chat/retrain-20250101-000000"}},
         {"pvc": {"claimName": "ck", "path": ""}}, "chat-retrain-",
         {"pvc": {"claimName": "m", "path": f"chat/retrain-{STAMP}"}},
         {"pvc": {"claimName": "ck", "path": f"retrain-{STAMP}"}}),
        # a long name: the generated one stays within the 50 characters of a TrainingJob name
        ("a" * 35 + "-bbbbbbbbbbbbbb", {"pvc": {"claimName": "m"}}, None, "a" * 35 + "-retrain-",
         {"pvc": {"claimName": "m", "path": f"retrain-{STAMP}"}}, None),
    ],
    ids=["uri output", "retrain of a retrain", "long name"],
)  # fmt: skip
def test_manifest_names_and_locations(
    name: str,
    output: dict[str, Any],
    checkpoint: dict[str, Any] | None,
    prefix: str,
    moved: dict[str, Any],
    moved_ckpt: dict[str, Any] | None,
) -> None:
    extra = {"checkpoint": {"location": checkpoint, "everySteps": 100}} if checkpoint else {}
    source = job(REF, output=output, **extra)
    source["metadata"]["name"] = name
    manifest = retrain.retrain_manifest(source, "team-a", NEW, STAMP)
    assert manifest["metadata"]["generateName"] == prefix and len(prefix) + 5 <= retrain.MAX_NAME
    assert manifest["spec"]["output"] == moved
    assert manifest["spec"].get("checkpoint", {}).get("location") == moved_ckpt
    if moved_ckpt:
        assert manifest["spec"]["checkpoint"]["everySteps"] == 100
    assert source["spec"]["output"] == output  # the source is not changed


def test_arguments(kubectl: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    kubectl({})
    assert main(["retrain", "chat", "--wait-seconds", "0"]) == 1
    assert "--wait-seconds 0: at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["retrain"])
    assert exc.value.code == 2 and "the following arguments are required: job" in capsys.readouterr().err
    monkeypatch.setenv("KUBECTL", "no-such-kubectl")
    assert main(["retrain", "chat"]) == 1
    assert "no-such-kubectl not found: retrain drives kubectl" in capsys.readouterr().err

"""`leptonctl tune dashboard` on a cluster, against a stand-in kubectl that answers from a JSON file
and records its arguments: which study and tuner pod it asks for, the one clear line for each reason
there is nothing to forward to, the port-forward it runs (local port : the tuner's loopback-only
dashboard port) and the URL it prints; and how it chooses between a local study and a cluster's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lepton.api.tuner import DASHBOARD_PORT
from lepton.cli.main import main
from tests.conftest import ROOT

FAKE_KUBECTL = '''#!{python}
"""A stand-in kubectl: `get KIND NAME` answers from $FAKE_STATE (NotFound when absent), port-forward
prints what kubectl prints and waits for SIGINT; every call is appended to $FAKE_CALLS."""
import json, os, signal, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as fh:
    fh.write(json.dumps(args) + "\\n")
state = json.load(open(os.environ["FAKE_STATE"]))
if state.get("unreachable"):
    print("E1128 memcache.go:265] couldn't get current server API group list", file=sys.stderr)
    print("The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?",
          file=sys.stderr)
    sys.exit(1)
if args[0] == "get":
    kind, name = args[1], args[2]
    found = state.get(kind, {{}}).get(name)
    if found is None:
        print(f'Error from server (NotFound): {{kind}} "{{name}}" not found', file=sys.stderr)
        sys.exit(1)
    print(json.dumps(found))
    sys.exit(0)
if args[0] == "port-forward":
    if state.get("port_taken"):
        print("Unable to listen on port 18081: bind: address already in use", file=sys.stderr)
        print("error: unable to listen on any of the requested ports: [{{18081 8081}}]", file=sys.stderr)
        sys.exit(1)
    local = args[args.index("--address") - 1].split(":")[0]
    print(f"Forwarding from 127.0.0.1:{{local}} -> 8081", flush=True)
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    while True:
        time.sleep(0.1)
sys.exit(2)
'''


def study(phase: str = "Running", suspend: bool = False, ns: str = "team-a") -> dict[str, Any]:
    return {"apiVersion": "lepton.ai/v1alpha1", "kind": "TuningStudy", "metadata": {"name": "lr", "namespace": ns},
            "spec": {"suspend": suspend}, "status": {"phase": phase, "tuner": "lr-tuner"}}  # fmt: skip


def pod(phase: str = "Running") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lr-tuner", "namespace": "team-a"},
            "status": {"phase": phase}}  # fmt: skip


@pytest.fixture
def kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """set(state) -> the calls file; $KUBECTL points at the stand-in."""
    script = tmp_path / "kubectl"
    script.write_text(FAKE_KUBECTL.format(python=sys.executable))
    script.chmod(0o755)
    calls, state = tmp_path / "calls.jsonl", tmp_path / "state.json"
    for key, value in {"KUBECTL": str(script), "FAKE_CALLS": str(calls), "FAKE_STATE": str(state)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)

    def set_state(value: dict[str, Any]) -> Path:
        state.write_text(json.dumps(value))
        return calls

    return set_state


def recorded(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ({}, "no TuningStudy lr in namespace team-a (another namespace: -n; a study run here: --local)"),
        (
            {"tuningstudy": {"lr": study("Succeeded")}},
            "team-a/lr has finished (Succeeded): its tuner pod is gone, so nothing serves its dashboard; open its "
            "storage instead: optuna-dashboard <RDB URL> for storage.urlSecretRef, or, for a study run here, "
            "leptonctl tune dashboard --local",
        ),
        (
            {"tuningstudy": {"lr": study("Suspended", suspend=True)}},
            "team-a/lr is suspended, and its tuner with it: resume it (spec.suspend: false) to see its dashboard",
        ),
        ({"tuningstudy": {"lr": study("Pending")}}, "team-a/lr has no tuner pod yet (phase Pending)"),
        (
            {"tuningstudy": {"lr": study()}, "pod": {"lr-tuner": pod("Pending")}},
            "the tuner pod lr-tuner of team-a/lr is Pending yet",
        ),
        (
            {"unreachable": True},
            "cannot ask the cluster (kubectl get tuningstudy lr): The connection to the server 127.0.0.1:6443 was "
            "refused - did you specify the right host or port?; for a study run here: --local",
        ),
        (
            {"tuningstudy": {"lr": study()}, "pod": {"lr-tuner": pod()}, "port_taken": True},
            "local port 18081 is taken: pick another with --port",
        ),
    ],
    ids=["no study", "finished", "suspended", "no tuner yet", "tuner pending", "no cluster", "port taken"],
)
def test_nothing_to_forward_to_is_one_line(kubectl: Any, capsys: pytest.CaptureFixture[str],
                                           state: dict[str, Any], words: str) -> None:  # fmt: skip
    calls = kubectl(state)
    assert main(["tune", "dashboard", "lr", "-n", "team-a", "--port", "18081"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"leptonctl tune dashboard: {words}"), err
    assert len(err.strip().splitlines()) == 1
    first = recorded(calls)[0]
    assert first[:3] == ["get", "tuningstudy", "lr"] and first[3:5] == ["-n", "team-a"]


def test_a_running_study_is_port_forwarded_to_its_tuners_loopback(kubectl: Any, tmp_path: Path) -> None:
    calls = kubectl({"tuningstudy": {"lr": study()}, "pod": {"lr-tuner": pod()}})
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    argv = [sys.executable, "-m", "lepton.cli.main", "tune", "dashboard", "lr", "--port", "18099"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the forward ends, and that is a success
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert line == "optuna-dashboard of team-a/lr (read-only): http://127.0.0.1:18099/dashboard\n"
    assert "loopback only" in err
    assert recorded(calls) == [
        ["get", "tuningstudy", "lr", "-o", "json", "--request-timeout=15s"],  # the context's namespace
        ["get", "pod", "lr-tuner", "-n", "team-a", "-o", "json", "--request-timeout=15s"],
        ["port-forward", "-n", "team-a", "pod/lr-tuner", f"18099:{DASHBOARD_PORT}", "--address", "127.0.0.1"],
    ]


def test_a_local_journal_is_served_unless_a_namespace_is_given(kubectl: Any, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    calls = kubectl({})
    journal = tmp_path / ".lepton" / "runs" / "lr.study" / "journal.log"
    assert main(["tune", "dashboard", "lr", "--local"]) == 1  # no journal yet: --local says so, asks no cluster
    assert "no local study lr: no journal at .lepton/runs/lr.study/journal.log" in capsys.readouterr().err
    assert recorded(calls) == []
    journal.parent.mkdir(parents=True)
    journal.write_text("")
    assert main(["tune", "dashboard", "lr", "-n", "team-a"]) == 1  # -n: the cluster's, though a local one exists
    assert "no TuningStudy lr in namespace team-a" in capsys.readouterr().err
    assert len(recorded(calls)) == 1


def test_arguments(kubectl: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    kubectl({})
    assert main(["tune", "dashboard", "lr", "--port", "70000"]) == 1
    assert "--port 70000: a port is 1-65535" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["tune", "dashboard"])
    assert exc.value.code == 2 and "the following arguments are required: name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tune"])
    assert "ACTION" in capsys.readouterr().err
    monkeypatch.setenv("KUBECTL", "no-such-kubectl")
    assert main(["tune", "dashboard", "lr"]) == 1
    err = capsys.readouterr().err
    assert "no-such-kubectl not found: the dashboard of a study on a cluster is reached through kubectl" in err

"""optuna-dashboard beside the tuner and in `leptonctl tune dashboard --local`: real processes, real
storage, real HTTP against optuna-dashboard's own API.

The tuner binds its sync port on the pod's address; the dashboard only on 127.0.0.1, so on a cluster
only `kubectl port-forward` (which connects inside the pod's network namespace) reaches it. Here the
"pod address" is another loopback address, 127.77.0.250 (all of 127/8 is loopback on Linux): the
dashboard answers on 127.0.0.1 and refuses connections on the tuner's own address.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from lepton.api.tuner import DASHBOARD_PORT, optuna_study_name
from tests.conftest import ROOT
from tests.workloads import test_tuner
from tests.workloads.conftest import free_ports
from tests.workloads.test_tuner import STUDY, UID, complete, config, running, stored_trials

tuners = test_tuner.tuners  # the fixture: start(config, env) -> a real tuner process, ready
POD_IP = "127.77.0.250"
CACHE_SECONDS = 2  # optuna-dashboard keeps a study's trials that long (under 100 trials)
DASHBOARD_LINE = "optuna-dashboard (read-only) on http://127.0.0.1:"


def get(host: str, port: int, path: str, method: str = "GET") -> tuple[int, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path)
        rsp = conn.getresponse()
        body = rsp.read()
        kind = rsp.getheader("Content-Type") or ""
        return rsp.status, json.loads(body) if "json" in kind and body else body
    finally:
        conn.close()


def refuses(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def dashboard_trials(port: int, name: str) -> dict[int, str]:
    """Trial number -> state, as optuna-dashboard's API shows the study called `name`."""
    status, studies = get("127.0.0.1", port, "/api/studies")
    assert status == 200, studies
    (study,) = [s for s in studies["study_summaries"] if s["study_name"] == name]
    status, detail = get("127.0.0.1", port, f"/api/studies/{study['study_id']}?after=0")
    assert status == 200, detail
    return {t["number"]: t["state"] for t in detail["trials"]}


def test_the_tuner_serves_a_read_only_dashboard_on_its_loopback_only(tuners: Any, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    tuner = tuners(config(tmp_path, host=POD_IP, dashboardPort=port))
    assert tuner.host == POD_IP
    assert f"{DASHBOARD_LINE}{port}/dashboard" in tuner.output()
    name = optuna_study_name(STUDY, UID)
    first = tuner.sync(parallelism=2, max_trials=4)
    assert dashboard_trials(port, name) == {0: "Running", 1: "Running"}
    second = tuner.sync(parallelism=2, max_trials=4, results=complete(running(first)))
    assert sorted(running(second)) == [2, 3]
    shown: dict[int, str] = {}
    deadline = time.monotonic() + CACHE_SECONDS + 10
    while shown != {0: "Complete", 1: "Complete", 2: "Running", 3: "Running"} and time.monotonic() < deadline:
        time.sleep(0.5)
        shown = dashboard_trials(port, name)
    assert shown == {0: "Complete", 1: "Complete", 2: "Running", 3: "Running"}
    status, page = get("127.0.0.1", port, "/dashboard")
    assert status == 200 and b"<html" in page.lower()
    # On the tuner's own (pod) address, where its sync port is: nothing listens on the dashboard's port.
    assert refuses(POD_IP, port)
    assert get(POD_IP, tuner.port, "/healthz")[0] == 200
    # Read-only: telling a trial or deleting the study through the dashboard is refused, storage unchanged.
    for method, path in (("POST", "/api/trials/2/tell"), ("DELETE", "/api/studies/0"),
                         ("POST", "/api/studies/0/rename"), ("PUT", "/api/studies/0/note")):  # fmt: skip
        status, body = get("127.0.0.1", port, path, method)
        assert status == 405 and "read-only" in body["reason"], (method, path, body)
    assert [t.state for t in stored_trials(tmp_path, "journal")] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING] * 2
    assert tuner.terminate() == 0
    assert refuses("127.0.0.1", port)  # stopped with the tuner


def test_without_a_dashboard_the_tuner_serves_as_before(tuners: Any, tmp_path: Path) -> None:
    """Switched off; optuna-dashboard not importable; its port taken: one line at most, syncs as usual."""
    off, missing, taken = free_ports(3)
    shim = tmp_path / "shim"  # an optuna_dashboard that cannot be imported, first on the path
    shim.mkdir()
    (shim / "optuna_dashboard.py").write_text("raise ImportError('No module named optuna_dashboard')\n")
    holder = socket.create_server(("127.0.0.1", taken))
    path = {"PYTHONPATH": f"{shim}{os.pathsep}{ROOT / 'operator'}"}
    try:
        cases = [
            (config(tmp_path / "off", dashboard=False, dashboardPort=off), {}, None),
            (config(tmp_path / "missing", dashboardPort=missing), path, "no dashboard: optuna-dashboard is not"),
            (config(tmp_path / "taken", dashboardPort=taken), {}, f"no dashboard: cannot listen on 127.0.0.1:{taken}"),
        ]  # fmt: skip
        for cfg, env, line in cases:
            tuner = tuners(cfg, env)
            reply = tuner.sync(parallelism=1, max_trials=2)
            assert sorted(running(reply)) == [0]
            assert tuner.terminate() == 0
            out = tuner.output()
            assert DASHBOARD_LINE not in out
            said = [x for x in out.splitlines() if "no dashboard" in x or "optuna-dashboard" in x]
            assert len(said) == (0 if line is None else 1), out
            if line is not None:
                assert line in out, out
        assert refuses("127.0.0.1", off)
    finally:
        holder.close()


# --- leptonctl tune dashboard, a study run here ----------------------------------------------------
NAME = "lr-search"


def local_study(runs: Path) -> str:
    """A journal where `leptonctl run -f` keeps it, holding a study as the local backend names it."""
    journal = runs / f"{NAME}.study" / "journal.log"
    journal.parent.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    name = optuna_study_name(f"local/{NAME}", "local")
    study = optuna.create_study(storage=storage, study_name=name, sampler=optuna.samplers.RandomSampler(seed=1))
    for i in range(3):
        trial = study.ask({"learningRate": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
        trial.report(1.0 / (i + 1), 5)
        study.tell(trial, 0.5 + i if i < 2 else None, state=TrialState.COMPLETE if i < 2 else TrialState.PRUNED)
    return name


def leptonctl_dashboard(cwd: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """`leptonctl tune dashboard` running, and the URL it printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    proc = subprocess.Popen([sys.executable, "-m", "lepton.cli.main", "tune", "dashboard", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise AssertionError(f"no URL: {line!r} {proc.communicate()}")
    return proc, line.split()[-1]


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_leptonctl_serves_a_local_study_from_its_journal(tmp_path: Path) -> None:
    name = local_study(tmp_path / ".lepton" / "runs")
    (port,) = free_ports(1)
    proc, url = leptonctl_dashboard(tmp_path, NAME, "--port", str(port))  # found in the default runs directory
    try:
        assert url == f"http://127.0.0.1:{port}/dashboard"
        assert dashboard_trials(port, name) == {0: "Complete", 1: "Complete", 2: "Pruned"}
        status, body = get("127.0.0.1", port, "/api/studies/0", "DELETE")
        assert status == 405, body
    finally:
        code, err = interrupt(proc)
    assert code == 0, err
    assert f"the local study {NAME}" in err  # found on its own: it says which one it serves
    assert refuses("127.0.0.1", port)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / ".lepton/runs" / f"{NAME}.study" / "journal.log")))
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 3


def test_leptonctl_local_ports(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    local_study(runs)
    holder = socket.socket()  # the default port taken (if nothing else holds it already): another is used
    try:
        holder.bind(("127.0.0.1", DASHBOARD_PORT))
        holder.listen()
    except OSError:
        pass
    try:
        proc, url = leptonctl_dashboard(tmp_path, NAME, "--local", "--runs-dir", str(runs))
        try:
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            assert port != DASHBOARD_PORT and get("127.0.0.1", port, "/api/studies")[0] == 200
        finally:
            assert interrupt(proc)[0] == 0
        # A port asked for and taken: an error, not another port.
        argv = ["tune", "dashboard", NAME, "--local", "--runs-dir", str(runs), "--port", str(DASHBOARD_PORT)]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
        done = subprocess.run([sys.executable, "-m", "lepton.cli.main", *argv], capture_output=True, text=True,
                              env=env, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{DASHBOARD_PORT}" in done.stderr, done.stderr
    finally:
        holder.close()

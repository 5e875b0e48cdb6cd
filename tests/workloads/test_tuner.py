"""The tuner as it runs in its pod: `python -m lepton.workloads.tuner` as a real process, its study
in real Optuna storage (a journal file, or an RDB: sqlite), driven over real HTTP the way the operator
drives it. The objective is analytic, (lr - 0.01)^2: real training is the end-to-end test's business.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from lepton.api.tokens import PROGRESS_TOKEN_ENV
from lepton.api.tuner import JOURNAL_FILE, STORAGE_URL_ENV, TUNER_CONFIG_ENV, optuna_study_name
from lepton.workloads.tuner.storage import SEED_ATTR, redact
from tests.conftest import ROOT

STUDY, UID = "ns/quad", "6f1c2a9e-0000-4000-8000-000000000001"
SERVING = re.compile(r"serving on http://([\d.]+):(\d+)")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(params: dict[str, Any]) -> float:
    return (float(params["learningRate"]) - 0.01) ** 2


def config(tmp_path: Path, backend: str = "journal", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "study": STUDY,
        "uid": UID,
        "storage": "journal" if backend == "journal" else "rdb",
        "objectives": [{"metric": "eval_loss", "direction": "minimize"}],
        "searchSpace": [
            {"name": "learningRate", "type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            {"name": "batchSize", "type": "categorical", "choices": ["8", "16", "32"]},
        ],
        "sampler": {"type": "tpe", "seed": 1},
        "pruner": {"type": "none"},
        "host": "127.0.0.1",
        "port": 0,
    }
    if backend == "journal":
        base["journalDir"] = str(tmp_path / "study")
    return base | fields


def storage_env(tmp_path: Path, backend: str) -> dict[str, str]:
    return {STORAGE_URL_ENV: f"sqlite:///{tmp_path / 'study.db'}"} if backend == "rdb" else {}


def open_storage(tmp_path: Path, backend: str) -> optuna.storages.BaseStorage:
    """The same storage, opened by the test itself (as optuna-dashboard would)."""
    if backend == "rdb":
        return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study" / JOURNAL_FILE))
    )


def stored_trials(tmp_path: Path, backend: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=optuna_study_name(STUDY, UID), storage=open_storage(tmp_path, backend))
    return study.get_trials(deepcopy=False)


@dataclass
class Tuner:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path
    token: str | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            rsp = conn.getresponse()
            return rsp.status, rsp.read()
        finally:
            conn.close()

    def post(self, body: bytes, token: str | None = None) -> tuple[int, bytes]:
        token = token if token is not None else self.token
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        return self.request("POST", "/v1/sync", body, headers)

    def sync(self, **fields: Any) -> dict[str, Any]:
        status, body = self.post(json.dumps(request(**fields)).encode())
        assert status == 200, body
        reply: dict[str, Any] = json.loads(body)
        return reply

    def send_only(self, **fields: Any) -> http.client.HTTPConnection:
        """Send a sync and read nothing back (what a caller that crashes right after sending does)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        headers = {
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {self.token}"} if self.token else {}),
        }
        conn.request("POST", "/v1/sync", body=json.dumps(request(**fields)).encode(), headers=headers)
        return conn

    def kill9(self) -> None:
        self.proc.kill()
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text()


def request(parallelism: int = 1, max_trials: int = 10, results: list[dict[str, Any]] | None = None,
            reports: list[dict[str, Any]] | None = None, known: list[int] | None = None,
            study: str = STUDY, uid: str = UID) -> dict[str, Any]:  # fmt: skip
    return {"study": study, "uid": uid, "parallelism": parallelism, "maxTrials": max_trials,
            "results": results or [], "reports": reports or [], "known": known or []}  # fmt: skip


def run_tuner(cfg: dict[str, Any] | str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    text = cfg if isinstance(cfg, str) else json.dumps(cfg)
    environ = {k: v for k, v in os.environ.items() if k not in (PROGRESS_TOKEN_ENV, STORAGE_URL_ENV)}
    environ |= {TUNER_CONFIG_ENV: text, "PYTHONPATH": str(ROOT / "operator"), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "lepton.workloads.tuner"], stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, env=environ, cwd=ROOT)  # fmt: skip


@pytest.fixture
def tuners(tmp_path: Path) -> Iterator[Any]:
    """start(config, env) -> a running Tuner, ready (its /healthz answers); all stopped at the end."""
    started: list[Tuner] = []

    def start(cfg: dict[str, Any], env: dict[str, str] | None = None) -> Tuner:
        log = tmp_path / f"tuner-{len(started)}.log"
        proc = run_tuner(cfg, log, env)
        deadline = time.monotonic() + 60
        while not (found := SERVING.search(log.read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the tuner did not start (exit {proc.poll()}):\n{log.read_text()}")
            time.sleep(0.02)
        tuner = Tuner(proc, found.group(1), int(found.group(2)), log, (env or {}).get(PROGRESS_TOKEN_ENV))
        started.append(tuner)
        assert tuner.request("GET", "/healthz")[0] == 200
        return tuner

    yield start
    for tuner in started:
        if tuner.proc.poll() is None:
            tuner.proc.kill()
            tuner.proc.wait()


def running(reply: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {t["number"]: t for t in reply["trials"] if t["state"] == "running"}


def complete(trials: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"number": n, "state": "complete", "values": [objective(t["parameters"])]} for n, t in trials.items()]


@pytest.mark.parametrize("backend", ["journal", "rdb"])
def test_sync_asks_up_to_parallelism_and_never_past_max_trials(tuners: Any, tmp_path: Path, backend: str) -> None:
    tuner = tuners(config(tmp_path, backend), storage_env(tmp_path, backend))
    first = tuner.sync(parallelism=3, max_trials=5)
    assert sorted(running(first)) == [0, 1, 2]
    for t in first["trials"]:
        assert set(t["parameters"]) == {"learningRate", "batchSize"}
        assert 1e-4 <= t["parameters"]["learningRate"] <= 1e-1 and t["parameters"]["batchSize"] in ("8", "16", "32")
    assert first["summary"] | {"best": [], "top": []} == {"total": 3, "running": 3, "waiting": 0, "complete": 0,
                                                        "pruned": 0, "fail": 0, "best": [], "top": []}  # fmt: skip
    done = {n: t for n, t in running(first).items() if n < 2}
    second = tuner.sync(parallelism=3, max_trials=5, results=complete(done), known=[0, 1])
    assert sorted(running(second)) == [2, 3, 4]  # two finished, two asked: 3 run, 5 exist
    assert {t["number"]: t["state"] for t in second["trials"]} == {0: "complete", 1: "complete", 2: "running",
                                                                   3: "running", 4: "running"}  # fmt: skip
    third = tuner.sync(parallelism=3, max_trials=5, results=complete(running(second)))
    assert third["trials"] == [] and third["summary"]["total"] == 5 and third["summary"]["complete"] == 5
    again = tuner.sync(parallelism=10, max_trials=5)
    assert again["trials"] == [] and again["summary"]["total"] == 5  # maxTrials: never a sixth
    values = sorted((objective(t.params), t.number) for t in stored_trials(tmp_path, backend))
    summary = again["summary"]
    assert [(t["number"], t["values"]) for t in summary["best"]] == [(values[0][1], [values[0][0]])]
    assert [t["number"] for t in summary["top"]] == [n for _, n in values[:5]]
    assert tuner.terminate() == 0
    assert "asked [0, 1, 2]" in tuner.output() and "told complete [0, 1]" in tuner.output()


def test_repeated_syncs_return_the_same_trials_and_results_told_twice_are_harmless(tuners: Any, tmp_path: Path) -> None:
    tuner = tuners(config(tmp_path))
    first = tuner.sync(parallelism=2, max_trials=10)
    for _ in range(3):
        assert tuner.sync(parallelism=2, max_trials=10) == first  # nothing new asked, same parameters
    result = {"number": 0, "state": "complete", "values": [0.25]}
    told = tuner.sync(parallelism=2, max_trials=10, results=[result], known=[0])
    assert tuner.sync(parallelism=2, max_trials=10, results=[result], known=[0]) == told
    late = tuner.sync(
        parallelism=2,
        max_trials=10,
        known=[0],
        results=[{"number": 0, "state": "complete", "values": [9.0]}, {"number": 0, "state": "fail"}],
    )
    assert late == told  # the first word on a trial stays: 0.25, complete
    assert {t["number"]: t.get("values") for t in told["trials"]} == {0: [0.25], 1: None, 2: None}
    assert told["summary"]["total"] == 3 and told["summary"]["complete"] == 1
    assert [t.state for t in stored_trials(tmp_path, "journal")] == [optuna.trial.TrialState.COMPLETE,
                                                                     optuna.trial.TrialState.RUNNING,
                                                                     optuna.trial.TrialState.RUNNING]  # fmt: skip


def test_parallelism_changed_mid_run(tuners: Any, tmp_path: Path) -> None:
    tuner = tuners(config(tmp_path))
    assert sorted(running(tuner.sync(parallelism=1, max_trials=8))) == [0]
    assert sorted(running(tuner.sync(parallelism=4, max_trials=8))) == [0, 1, 2, 3]
    lowered = tuner.sync(parallelism=2, max_trials=8)  # lowering stops nothing: the caller decides that
    assert sorted(running(lowered)) == [0, 1, 2, 3]
    paused = tuner.sync(parallelism=0, max_trials=8, results=complete({0: running(lowered)[0]}))
    assert sorted(running(paused)) == [1, 2, 3] and paused["summary"]["total"] == 4  # 0: asks none
    raised = tuner.sync(parallelism=6, max_trials=8)
    assert sorted(running(raised)) == [1, 2, 3, 4, 5, 6] and raised["summary"]["total"] == 7
    capped = tuner.sync(parallelism=10, max_trials=8)
    assert sorted(running(capped)) == [1, 2, 3, 4, 5, 6, 7]  # 10 may run, but only 8 may exist
    assert capped["summary"]["total"] == 8


def test_median_pruner_prunes_a_clearly_bad_trial(tuners: Any, tmp_path: Path) -> None:
    cfg = config(tmp_path, pruner={"type": "median", "startupTrials": 2, "warmupSteps": 0, "intervalSteps": 1})
    tuner = tuners(cfg)
    steps = [10, 20, 30, 40]
    for number in (0, 1):  # the startup trials: learning curves going down, then finished
        reply = tuner.sync(parallelism=1, max_trials=10)
        assert sorted(running(reply)) == [number]
        reports = [{"number": number, "step": s, "value": 1.0 / s + number * 0.01} for s in steps]
        tuner.sync(parallelism=0, max_trials=10, reports=reports)
        done = tuner.sync(parallelism=0, max_trials=10, reports=reports, known=[number],
                          results=[{"number": number, "state": "complete", "values": [1.0 / steps[-1]]}])  # fmt: skip
        assert done["trials"][0]["state"] == "complete" and done["trials"][0]["lastStep"] == 40
    assert sorted(running(tuner.sync(parallelism=2, max_trials=10))) == [2, 3]
    good = [{"number": 2, "step": s, "value": 0.5 / s} for s in steps[:2]]
    bad = [{"number": 3, "step": s, "value": 100.0} for s in steps[:2]]
    reply = tuner.sync(parallelism=2, max_trials=10, reports=good + bad, known=[2, 3])
    states = {t["number"]: (t["state"], t.get("lastStep")) for t in reply["trials"]}
    assert states[2] == ("running", 20) and states[3] == ("pruned", 10)  # pruned at its first bad step
    assert sorted(running(reply)) == [2, 4]  # the pruned trial's place is taken at once
    assert reply["summary"]["pruned"] == 1
    # The caller stops the pruned trial's run and tells what it saw: the pruner's word stays.
    later = tuner.sync(parallelism=2, max_trials=10, known=[3], reports=bad,
                       results=[{"number": 3, "state": "complete", "values": [100.0]}])  # fmt: skip
    assert [t["state"] for t in later["trials"] if t["number"] == 3] == ["pruned"]
    assert "pruned [3]" in tuner.output()


@pytest.mark.parametrize("backend", ["journal", "rdb"])
def test_kill_9_mid_study_loses_and_duplicates_no_trial(tuners: Any, tmp_path: Path, backend: str) -> None:
    """The tuner dies (SIGKILL) right after a sync was sent, at several moments of its ask; each time a
    new one starts on the same storage and the caller repeats its sync, as the operator does."""
    cfg, env, max_trials = config(tmp_path, backend), storage_env(tmp_path, backend), 14
    seen: dict[int, dict[str, Any]] = {}  # trial number -> parameters, as the caller learnt them
    finished: set[int] = set()
    tuner = tuners(cfg, env)

    def learn(reply: dict[str, Any]) -> None:
        for t in reply["trials"]:
            assert seen.setdefault(t["number"], t["parameters"]) == t["parameters"], "a trial changed parameters"

    learn(tuner.sync(parallelism=3, max_trials=max_trials))
    for delay in (0.0, 0.001, 0.003, 0.01, 0.03):
        todo = sorted(set(seen) - finished)[:2]
        results = complete({n: {"parameters": seen[n]} for n in todo})
        conn = tuner.send_only(parallelism=3, max_trials=max_trials, results=results, known=sorted(seen))
        time.sleep(delay)
        tuner.kill9()
        conn.close()
        tuner = tuners(cfg, env)
        reply = tuner.sync(parallelism=3, max_trials=max_trials, results=results, known=sorted(seen))
        learn(reply)
        finished |= set(todo)
        stored = {t.number: t for t in stored_trials(tmp_path, backend)}
        assert sorted(running(reply)) == sorted(n for n, t in stored.items() if t.state.name == "RUNNING")
        assert all(set(t["parameters"]) == {"learningRate", "batchSize"} for t in reply["trials"])
        assert len(running(reply)) == 3
    while len(finished) < max_trials:  # finish the study
        results = complete({n: {"parameters": seen[n]} for n in sorted(set(seen) - finished)})
        reply = tuner.sync(parallelism=3, max_trials=max_trials, known=sorted(seen), results=results)
        learn(reply)
        finished |= {t["number"] for t in reply["trials"] if t["state"] == "complete"}
    final = stored_trials(tmp_path, backend)
    assert sorted(t.number for t in final) == list(range(max_trials))  # each number once, none lost
    assert sorted(seen) == list(range(max_trials))  # and the caller learnt every one
    assert all(t.state.name == "COMPLETE" for t in final)
    assert {t.number: t.params for t in final} == seen
    assert {t.number: t.values[0] for t in final} == {n: objective(p) for n, p in seen.items()}


def test_an_ask_cut_short_by_a_crash_is_completed_under_its_number(tuners: Any, tmp_path: Path) -> None:
    """What a SIGKILL between an ask's new trial and its last suggestion leaves in storage: a running
    trial with some parameters. The next tuner completes its parameters; it creates no other trial."""
    cfg = config(tmp_path)
    Path(cfg["journalDir"]).mkdir(parents=True)
    study = optuna.create_study(study_name=optuna_study_name(STUDY, UID), storage=open_storage(tmp_path, "journal"))
    cut = study.ask()
    cut.suggest_float("learningRate", 1e-4, 1e-1, log=True)  # batchSize never came
    bare = study.ask()  # not even one parameter
    tuner = tuners(cfg)
    reply = tuner.sync(parallelism=2, max_trials=5)
    assert sorted(running(reply)) == [0, 1]
    assert running(reply)[0]["parameters"]["learningRate"] == cut.params["learningRate"]
    assert all(set(t["parameters"]) == {"learningRate", "batchSize"} for t in reply["trials"])
    assert bare.number == 1 and reply["summary"]["total"] == 2
    assert "completed the interrupted ask of [0, 1]" in tuner.output()


def test_warm_start_and_enqueued_sets_are_added_once(tuners: Any, tmp_path: Path) -> None:
    warm = [{"parameters": {"learningRate": "0.02", "batchSize": "16"}, "values": [0.0001]},
            {"parameters": {"learningRate": "7"}, "values": [1.0]},  # outside this space: left out
            {"parameters": {"learningRate": "0.03"}, "values": [0.0004]}]  # fmt: skip
    cfg = config(tmp_path, enqueue=[{"learningRate": "0.01", "batchSize": "32"}, {"batchSize": "8"}], warmStart=warm)
    tuner = tuners(cfg)
    assert "warm start: 2 finished trial(s) added, 2 parameter set(s) enqueued" in tuner.output()
    reply = tuner.sync(parallelism=1, max_trials=2)
    # Warm trials (0, 1) guide the sampler but ran elsewhere: no budget spent, no count, never "best" here.
    assert reply["summary"] | {"best": [], "top": []} == {"total": 2, "running": 1, "waiting": 1, "complete": 0,
                                                        "pruned": 0, "fail": 0, "best": [], "top": []}  # fmt: skip
    assert reply["trials"] == [
        {"number": 2, "state": "running", "parameters": {"learningRate": 0.01, "batchSize": "32"}}
    ]
    assert reply["summary"]["best"] == []
    assert tuner.terminate() == 0
    again = tuners(cfg)
    assert "warm start" not in again.output()
    reply = again.sync(parallelism=2, max_trials=2, results=complete(running(reply)))
    assert reply["summary"]["total"] == 2 and reply["summary"]["complete"] == 1  # nothing added twice
    assert running(reply)[3]["parameters"]["batchSize"] == "8"  # the second set; maxTrials 2 spent on the sets
    marks = sorted(str(t.user_attrs.get(SEED_ATTR)) for t in stored_trials(tmp_path, "journal"))
    assert marks == ["enqueue-0", "enqueue-1", "warm-0", "warm-2"]


def test_several_objectives_report_their_pareto_front(tuners: Any, tmp_path: Path) -> None:
    objectives = [
        {"metric": "eval_loss", "direction": "minimize"},
        {"metric": "eval_accuracy", "direction": "maximize"},
    ]
    tuner = tuners(config(tmp_path, objectives=objectives, sampler={"type": "nsga2", "seed": 2}))
    reply = tuner.sync(parallelism=4, max_trials=4)
    values = {0: [0.5, 0.9], 1: [0.4, 0.8], 2: [0.6, 0.7], 3: [0.3, 0.5]}  # 2 is dominated by 0
    results = [{"number": n, "state": "complete", "values": v} for n, v in values.items()]
    reports = [{"number": 0, "step": 1, "value": 1.0}]  # no pruning with several objectives: ignored
    reply = tuner.sync(parallelism=4, max_trials=4, results=results, reports=reports)
    assert [t["number"] for t in reply["summary"]["best"]] == [3, 1, 0]
    assert [t["number"] for t in reply["summary"]["top"]] == [3, 1, 0, 2]
    status, body = tuner.post(
        json.dumps(request(results=[{"number": 0, "state": "complete", "values": [1.0]}])).encode()
    )
    assert status == 400 and b"complete with 1 value(s); the study has 2 objective(s)" in body


def test_the_token_guards_sync_but_not_health_and_metrics(tuners: Any, tmp_path: Path) -> None:
    tuner = tuners(config(tmp_path), {PROGRESS_TOKEN_ENV: "s3cret-token"})
    body = json.dumps(request()).encode()
    assert tuner.post(body, token="")[0] == 401
    assert tuner.post(body, token="wrong")[0] == 401
    assert tuner.request("POST", "/v1/sync", body, {"Authorization": "s3cret-token"})[0] == 401  # not Bearer
    assert stored_trials(tmp_path, "journal") == []  # refused before anything was asked
    assert tuner.post(body)[0] == 200
    assert tuner.request("GET", "/healthz")[0] == 200
    assert tuner.request("GET", "/metrics")[0] == 200
    assert "s3cret-token" not in tuner.output()


def test_refusals_leave_the_server_serving(tuners: Any, tmp_path: Path) -> None:
    tuner = tuners(config(tmp_path))
    status, body = tuner.post(json.dumps(request(uid="someone-else")).encode())
    assert status == 409 and b"the sync is for ns/quad (uid someone-else)" in body
    assert tuner.post(json.dumps(request(study="ns/other")).encode())[0] == 409
    status, body = tuner.post(b"{not json")
    assert status == 400 and b"Invalid JSON" in body
    status, body = tuner.post(json.dumps(request(parallelism=-1)).encode())
    assert status == 400 and b"parallelism: Input should be greater than or equal to 0" in body
    status, body = tuner.post(json.dumps(request(results=[{"number": 0, "state": "complete"}])).encode())
    assert status == 400 and b"trial 0 is complete with 0 value(s)" in body
    status, body = tuner.post(b" " * (1024 * 1024 + 1))
    assert status == 413 and b"at most 1048576 bytes" in body
    assert tuner.request("GET", "/nowhere")[0] == 404
    assert stored_trials(tmp_path, "journal") == []  # no refused sync asked anything
    assert sorted(running(tuner.sync(parallelism=2))) == [0, 1]


def test_metrics_show_every_family(tuners: Any, tmp_path: Path) -> None:
    tuner = tuners(config(tmp_path))
    reply = tuner.sync(parallelism=2, max_trials=3)
    tuner.sync(parallelism=2, max_trials=3, results=complete(running(reply)))
    tuner.post(b"{")
    status, body = tuner.request("GET", "/metrics")
    text = body.decode()
    best = min(objective(t["parameters"]) for t in running(reply).values())
    assert status == 200
    for line in ('lepton_tuner_trials{state="complete"} 2.0', 'lepton_tuner_trials{state="running"} 1.0',
                 'lepton_tuner_trial_duration_seconds_count 2.0', f"lepton_tuner_best_value {best!r}",
                 "lepton_tuner_suggest_seconds_count 3.0", 'lepton_tuner_syncs_total{outcome="ok"} 2.0',
                 'lepton_tuner_syncs_total{outcome="bad_request"} 1.0'):  # fmt: skip
        assert line in text.splitlines(), line


@pytest.mark.parametrize(
    ("cfg", "env", "words"),
    [
        ("{", {}, "invalid tuner configuration"),
        ({"storage": "rdb"}, {}, "storage rdb needs the database URL in $LEPTON_TUNER_STORAGE_URL"),
        ({"enqueue": [{"batchSize": "12"}]}, {}, "enqueue: parameter batchSize: '12' is not in its search space"),
        ({"sampler": {"type": "grid"}}, {}, "learningRate: the grid sampler needs low, high and (float) a step"),
    ],
)
def test_a_configuration_it_cannot_run_exits_2(tmp_path: Path, cfg: Any, env: dict[str, str], words: str) -> None:
    text = cfg if isinstance(cfg, str) else json.dumps(config(tmp_path) | cfg)
    proc = run_tuner(text, tmp_path / "tuner.log", env)
    assert proc.wait(timeout=60) == 2
    assert words in (tmp_path / "tuner.log").read_text()


@pytest.mark.parametrize("url", [
    "postgresql://lepton:hunter2@127.0.0.1:1/study",  # no driver here, or nothing listening: either way down
    "sqlite:////nonexistent/hunter2/study.db",
])  # fmt: skip
def test_an_unreachable_database_exits_1_without_logging_its_url(tmp_path: Path, url: str) -> None:
    proc = run_tuner(json.dumps(config(tmp_path, "rdb")), tmp_path / "tuner.log", {STORAGE_URL_ENV: url})
    assert proc.wait(timeout=60) == 1
    log = (tmp_path / "tuner.log").read_text()
    assert "cannot open the study in rdb $LEPTON_TUNER_STORAGE_URL" in log
    assert "hunter2" not in log


def test_errors_are_redacted_of_the_url_and_its_password() -> None:
    url = "postgresql://lepton:hunter2@db:5432/study"
    text = f"could not connect to {url}; password hunter2 rejected"
    assert redact(text, url) == "could not connect to $LEPTON_TUNER_STORAGE_URL; password *** rejected"
    assert redact(text, None) == text


def test_sigterm_mid_run_exits_0_and_the_next_tuner_continues(tuners: Any, tmp_path: Path) -> None:
    tuner = tuners(config(tmp_path))
    first = tuner.sync(parallelism=2, max_trials=4)
    assert tuner.terminate() == 0
    with contextlib.suppress(ConnectionError, OSError):
        tuner.request("GET", "/healthz")
        raise AssertionError("still serving after SIGTERM")
    assert tuners(config(tmp_path)).sync(parallelism=2, max_trials=4) == first


def test_a_lock_left_by_a_killed_tuner_does_not_hold_up_the_next(tuners: Any, tmp_path: Path) -> None:
    """Optuna's journal lock is a symlink; a tuner killed while it appended leaves it, and Optuna would
    wait 30 s before breaking it. The next tuner, the study's only writer, removes it at start."""
    cfg = config(tmp_path)
    first = tuners(cfg).sync(parallelism=1, max_trials=3)
    journal = tmp_path / "study" / JOURNAL_FILE
    Path(f"{journal}.lock").symlink_to(journal)  # what a SIGKILL inside the lock leaves behind
    started = time.monotonic()
    tuner = tuners(cfg)
    assert time.monotonic() - started < 10
    assert "removing journal.log.lock: the lock of a tuner that died while it wrote" in tuner.output()
    assert tuner.sync(parallelism=1, max_trials=3) == first

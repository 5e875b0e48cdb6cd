"""lepton.sdk in one process: what user code reports reaches the operator's parsers unchanged
(ProgressReport, TrainingSummary, Prometheus text), the token guards /progress, checkpoints follow the
built-in trainer's layout, SIGTERM becomes a flag, and the SDK imports the standard library only."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lepton import sdk
from lepton.api.contract import MAX_EVALUATIONS, ProgressReport, TrainingSummary
from lepton.api.tokens import bearer
from lepton.sdk import checkpoints, env, runtime
from lepton.sdk.endpoint import Endpoint
from lepton.sdk.progress import MAX_EVALUATIONS as SDK_MAX_EVALUATIONS

TOKEN = "0123456789abcdef" * 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment a TrainingJob gives its program (rank 0 of 2), the SDK fresh before and after."""
    for name in (*env.ALL, env.RANK, env.WORLD_SIZE, env.LOCAL_RANK):
        monkeypatch.delenv(name, raising=False)
    values = {
        env.CHECKPOINT_DIR: str(tmp_path / "ckpt"), env.CHECKPOINT_EVERY_STEPS: "10", env.CHECKPOINT_KEEP: "2",
        env.OUTPUT_DIR: str(tmp_path / "out"), env.METRICS_PORT: str(_free_port()), env.METRICS_HOST: "127.0.0.1",
        env.PROGRESS_TOKEN: TOKEN, env.TERMINATION_LOG: str(tmp_path / "termination-log"),
        env.RANK: "0", env.WORLD_SIZE: "2", env.LOCAL_RANK: "0",
    }  # fmt: skip
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    runtime.reset()
    yield values
    runtime.reset()


def _get(url: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=bearer(token) if token is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as rsp:
            return int(rsp.status), rsp.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def _base(job: dict[str, str]) -> str:
    return f"http://127.0.0.1:{job[env.METRICS_PORT]}"


def test_the_sdk_imports_only_the_standard_library() -> None:
    code = ("import sys, lepton.sdk, lepton.sdk.checkpoints, lepton.sdk.endpoint, lepton.sdk.tokens; "
            "print(' '.join(sorted(sys.modules)))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    loaded = {name.split(".")[0] for name in out} | {".".join(name.split(".")[:2]) for name in out}
    heavy = {"pydantic", "yaml", "torch", "numpy", "prometheus_client", "aiohttp", "kopf", "transformers", "optuna"}
    assert not loaded & heavy, loaded & heavy
    assert not {n for n in out if n.startswith("lepton.") and not n.startswith("lepton.sdk")}, out


def test_progress_parses_as_the_operator_reads_it(job: dict[str, str]) -> None:
    sdk.report(step=0, total_steps=100)
    sdk.report(step=20, total_steps=100, loss=0.75, epoch=0.5, samples_per_second=512.0)
    sdk.report(step=20, metrics={"eval_loss": 0.5, "accuracy": 0.8, "bad": math.nan, "gone": None})
    sdk.report(step=30, loss=math.inf)  # dropped: the last finite loss stays
    code, body = _get(f"{_base(job)}/progress")
    assert code == 200
    doc = json.loads(body)
    report = ProgressReport.parse(doc)
    assert report == ProgressReport(step=30, total_steps=100, start_step=0, epoch=0.5, loss=0.75, eval_loss=0.5,
                                    samples_per_second=512.0, eta_seconds=report.eta_seconds,
                                    evaluations=((20, (("accuracy", 0.8), ("eval_loss", 0.5))),))  # fmt: skip
    assert report.eta_seconds is not None and report.eta_seconds >= 0
    assert doc["evaluations"] == [{"step": 20, "metrics": {"eval_loss": 0.5, "accuracy": 0.8}}]
    assert report.to_wire() == {k: v for k, v in doc.items() if k != "rank"}  # nothing lost, nothing odd


def test_evaluations_keep_the_newest_twenty_newest_last(job: dict[str, str]) -> None:
    assert SDK_MAX_EVALUATIONS == MAX_EVALUATIONS == 20
    for step in range(5, 130, 5):  # 25 evaluations
        sdk.report(step=step, total_steps=200, metrics={"eval_loss": 10.0 / step})
    sdk.report(step=125, metrics={"eval_loss": 0.25})  # the same step again: replaced
    report = ProgressReport.parse(json.loads(_get(f"{_base(job)}/progress")[1]))
    assert sorted(report.metrics_at()) == list(range(30, 126, 5))
    assert report.metrics_at()[125] == {"eval_loss": 0.25} and report.eval_loss == 0.25


def test_the_eta_counts_from_the_first_report_of_this_process(job: dict[str, str]) -> None:
    sdk.report(step=50, total_steps=150)  # resumed at 50
    state = runtime._runtime().progress.state
    assert state["startStep"] == 50 and "etaSeconds" not in state
    time.sleep(0.2)
    sdk.report(step=60)
    assert state["step"] == 60 and 1 <= state["etaSeconds"] <= 10  # 0.2 s for 10 steps, 90 to go: ~1.8 s


def test_the_token_guards_progress_and_metrics_stay_open(job: dict[str, str]) -> None:
    sdk.report(step=3, total_steps=10)
    base = _base(job)
    assert _get(f"{base}/progress", token=None)[0] == 401
    assert _get(f"{base}/progress", token=TOKEN[:-1])[0] == 401
    assert _get(f"{base}/progress", token="")[0] == 401
    assert _get(f"{base}/progress?x=1", token=None)[0] == 401  # a query string opens nothing
    assert _get(f"{base}/progress")[0] == 200
    assert _get(f"{base}/metrics", token=None)[0] == 200
    assert _get(f"{base}/nope")[0] == 404 and _get(f"{base}/")[0] == 404
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{base}/progress", timeout=5)
    assert caught.value.headers["WWW-Authenticate"] == 'Bearer realm="lepton-progress"'


def test_the_local_rank_picks_the_port_and_no_port_serves_nothing(
    job: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env.LOCAL_RANK, "1")
    monkeypatch.setenv(env.METRICS_PORT, str(int(job[env.METRICS_PORT]) - 1))
    sdk.report(step=1)
    assert _get(f"{_base(job)}/progress")[0] == 200
    runtime.reset()
    monkeypatch.setenv(env.METRICS_PORT, "0")
    sdk.report(step=1)
    assert runtime._runtime().endpoint is None


def test_metrics_are_prometheus_text(job: dict[str, str]) -> None:
    sdk.report(step=40, total_steps=100, loss=1.25, epoch=1.5, samples_per_second=300.0)
    sdk.report(step=40, metrics={"eval_loss": 0.5, 'odd "name"\\': 2.0})
    code, body = _get(f"{_base(job)}/metrics", token=None)
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    values = {name: families[name].samples[0].value for name in families if name != "lepton_trainer_metric"}
    assert values == {"lepton_trainer_step": 40, "lepton_trainer_total_steps": 100, "lepton_trainer_epoch": 1.5,
                      "lepton_trainer_loss": 1.25, "lepton_trainer_samples_per_second": 300,
                      "lepton_trainer_eval_loss": 0.5}  # fmt: skip
    assert all(families[name].type == "gauge" and families[name].documentation for name in families)
    metric = {s.labels["name"]: s.value for s in families["lepton_trainer_metric"].samples}
    assert metric == {"eval_loss": 0.5, 'odd "name"\\': 2.0}


def test_finish_writes_a_training_summary(job: dict[str, str]) -> None:
    sdk.report(step=96, total_steps=96, loss=0.2)
    summary = sdk.finish(metrics={"eval_loss": 0.1675, "accuracy": 0.9258, "nan": math.nan})
    written = TrainingSummary.model_validate(json.loads(Path(job[env.TERMINATION_LOG]).read_text()))
    assert written == TrainingSummary(step=96, metrics={"eval_loss": 0.1675, "accuracy": 0.9258},
                                      model=job[env.OUTPUT_DIR])  # fmt: skip
    assert summary == written.model_dump()
    report = ProgressReport.parse(json.loads(_get(f"{_base(job)}/progress")[1]))
    assert report.metrics_at() == {96: {"eval_loss": 0.1675, "accuracy": 0.9258}} and report.eval_loss == 0.1675


def test_only_rank_0_writes_the_summary_and_a_long_one_is_cut_to_fit(
    job: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = Path(job[env.TERMINATION_LOG])
    monkeypatch.setenv(env.RANK, "1")
    sdk.finish(metrics={"eval_loss": 1.0})
    assert not log.exists()
    monkeypatch.setenv(env.RANK, "0")
    many = {f"metric_{i:04d}": float(i) for i in range(300)}
    sdk.finish(metrics=many, model="/models/" + "x" * 5000)
    text = log.read_text()
    assert len(text.encode()) <= 4096
    kept = TrainingSummary.model_validate_json(text)
    assert kept.model is None and kept.metrics and kept.metrics.items() <= many.items()
    assert "left out" in capsys.readouterr().err
    monkeypatch.setenv(env.TERMINATION_LOG, str(log.parent / "no" / "such" / "dir" / "log"))
    sdk.finish(metrics={"eval_loss": 1.0})  # not in a pod: a message, no exception
    assert "could not write the termination log" in capsys.readouterr().err


def test_hyperparameters_and_the_environment(job: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert sdk.hyperparameters() == {}
    monkeypatch.setenv(env.HYPERPARAMETERS, '{"lr": 0.01, "layers": [64, 64], "name": "mlp"}')
    assert sdk.hyperparameters() == {"lr": 0.01, "layers": [64, 64], "name": "mlp"}
    monkeypatch.setenv(env.HYPERPARAMETERS, "[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        sdk.hyperparameters()
    monkeypatch.setenv(env.HYPERPARAMETERS, "{lr: 1}")
    with pytest.raises(ValueError, match="not valid JSON"):
        sdk.hyperparameters()
    assert sdk.output_dir() == Path(job[env.OUTPUT_DIR]) and sdk.checkpoint_dir() == Path(job[env.CHECKPOINT_DIR])
    assert sdk.data_path() is None and sdk.dataset_version() is None
    monkeypatch.setenv(env.DATA_PATH, "/data/v1")
    monkeypatch.setenv(env.DATASET_VERSION, "v1")
    assert sdk.data_path() == Path("/data/v1") and sdk.dataset_version() == "v1"
    assert (sdk.rank(), sdk.world_size(), sdk.local_rank(), sdk.is_main()) == (0, 2, 0, True)
    for name in (env.RANK, env.WORLD_SIZE, env.LOCAL_RANK, env.OUTPUT_DIR):
        monkeypatch.delenv(name)
    assert (sdk.rank(), sdk.world_size(), sdk.local_rank(), sdk.output_dir()) == (0, 1, 0, None)
    monkeypatch.setenv(env.RANK, "one")
    with pytest.raises(ValueError, match="RANK must be an integer"):
        sdk.rank()


def test_report_rejects_what_is_not_a_number(job: dict[str, str]) -> None:
    with pytest.raises(TypeError, match="loss must be a number"):
        sdk.report(step=1, loss="low")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="step must be an integer"):
        sdk.report(step=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"metrics\['acc'\] must be a number"):
        sdk.report(step=1, metrics={"acc": "high"})  # type: ignore[dict-item]


def test_checkpoints_follow_the_trainers_layout(job: dict[str, str]) -> None:
    root = Path(job[env.CHECKPOINT_DIR])
    assert sdk.latest_checkpoint() is None
    assert [s for s in range(1, 31) if sdk.should_checkpoint(s)] == [10, 20, 30]
    for step in (10, 20, 30):
        with sdk.save_checkpoint(step) as tmp:
            assert tmp == root / f".tmp-step-{step:08d}" and not any(tmp.iterdir())
            (tmp / "state.pt").write_text(str(step))
    assert sorted(p.name for p in root.iterdir()) == ["step-00000020", "step-00000030"]  # keep 2
    latest = sdk.latest_checkpoint()
    assert latest == root / "step-00000030" and (latest / checkpoints.COMPLETE).is_file()
    assert sdk.checkpoint_step(latest) == 30 and (latest / "state.pt").read_text() == "30"
    doc = json.loads(_get(f"{_base(job)}/progress")[1])
    assert ProgressReport.parse(doc).checkpoint == str(latest)
    with pytest.raises(RuntimeError, match="disk full"), sdk.save_checkpoint(40) as tmp:
        (tmp / "state.pt").write_text("half")
        raise RuntimeError("disk full")
    assert sdk.latest_checkpoint() == latest and not (root / ".tmp-step-00000040").exists()
    (root / "step-00000050").mkdir()  # a directory without COMPLETE is no checkpoint
    assert sdk.latest_checkpoint() == latest


def test_checkpoint_settings(job: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env.RESUME, "none")
    with sdk.save_checkpoint(5) as tmp:
        (tmp / "x").touch()
    assert sdk.latest_checkpoint() is None  # the job starts over
    monkeypatch.delenv(env.RESUME)
    assert sdk.latest_checkpoint() == Path(job[env.CHECKPOINT_DIR]) / "step-00000005"
    assert sdk.should_checkpoint(7, stopping=True) and not sdk.should_checkpoint(7, stopping=False)
    monkeypatch.delenv(env.CHECKPOINT_EVERY_STEPS)
    assert [s for s in range(1, 1001) if sdk.should_checkpoint(s)] == [500, 1000]  # spec.checkpoint's default
    monkeypatch.delenv(env.CHECKPOINT_DIR)  # outside a job: nowhere to checkpoint
    assert not sdk.should_checkpoint(500, stopping=True) and sdk.latest_checkpoint() is None
    with pytest.raises(RuntimeError, match="LEPTON_CHECKPOINT_DIR is not set"), sdk.save_checkpoint(1):
        pass
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        sdk.checkpoint_step("/ckpt/.tmp-step-00000010")


def test_sigterm_only_sets_the_flag(job: dict[str, str]) -> None:
    assert not sdk.stopping()
    os.kill(os.getpid(), signal.SIGTERM)  # the default action would end this process
    deadline = time.monotonic() + 5
    while not sdk.stopping() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sdk.stopping() and sdk.should_checkpoint(3) and sdk.EXIT_STOPPED == 143
    before = signal.getsignal(signal.SIGTERM)
    runtime.reset()
    assert signal.getsignal(signal.SIGTERM) is not before  # the previous handler is back


def test_the_endpoint_serves_routes_and_guards_what_it_is_told(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def page() -> tuple[bytes, str]:
        calls.append("page")
        return b"hello", "text/plain"

    def broken() -> tuple[bytes, str]:
        raise RuntimeError("boom")

    endpoint = Endpoint({"/page": page, "/secret": page, "/broken": broken}, 0, host="127.0.0.1", token="t0k",
                        guarded={"/secret"})  # fmt: skip
    try:
        base = f"http://127.0.0.1:{endpoint.port}"
        assert _get(f"{base}/page", token=None) == (200, b"hello")
        assert _get(f"{base}/secret", token=None)[0] == 401 and _get(f"{base}/secret", token="t0k") == (200, b"hello")
        assert _get(f"{base}/broken", token=None)[0] == 500 and _get(f"{base}/page", token=None)[0] == 200
        assert _get(f"{base}/other", token=None)[0] == 404 and calls == ["page"] * 3
    finally:
        endpoint.close()
        endpoint.close()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/page", timeout=1)


def test_the_layout_helpers(tmp_path: Path) -> None:
    assert checkpoints.latest(tmp_path / "missing") is None
    for step in (9, 10, 100_000_000):  # beyond 8 digits still sorts by number
        checkpoints.begin(tmp_path, step)
        checkpoints.commit(tmp_path, step, keep=5)
    assert checkpoints.latest(tmp_path) == tmp_path / "step-100000000"
    checkpoints.begin(tmp_path, 5)
    assert checkpoints.commit(tmp_path, 5, keep=2) == tmp_path / "step-00000005"  # the one written is kept
    assert [p.name for p in checkpoints.complete(tmp_path)] == ["step-00000005", "step-100000000"]

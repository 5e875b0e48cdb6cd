"""Progress travels from the trainer's HTTP endpoint to the operator's status fields, over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import urllib.error
import urllib.request

import pytest

from lepton.api.contract import MAX_EVALUATIONS, ProgressReport
from lepton.api.tokens import PROGRESS_TOKEN_ENV, authorized, bearer, progress_token
from lepton.controller.progress import fetch_progress
from lepton.local.trainingjob import free_port
from lepton.status.progress import progress_from
from lepton.workloads.trainer.progress import Progress


def test_trainer_progress_is_read_by_the_operator() -> None:
    port = free_port()
    progress = Progress(total_steps=200, rank=0)
    progress.serve(port)
    try:
        progress.update(startStep=0, step=50, epoch=0.5, loss=1.23456, samplesPerSecond=300.0,
                        checkpoint="/ckpt/step-00000050")  # fmt: skip
        report = asyncio.run(fetch_progress(f"http://127.0.0.1:{port}/progress"))
        assert report is not None and report["checkpoint"] == "/ckpt/step-00000050"
        status = progress_from(ProgressReport.parse(report))
        assert (status.step, status.total_steps, status.percent, status.loss) == (50, 200, 25, "1.2346")
        assert status.eta_seconds is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as rsp:
            metrics = rsp.read().decode()
        assert "lepton_trainer_step 50.0" in metrics and "lepton_trainer_loss 1.23456" in metrics
        assert asyncio.run(fetch_progress(f"http://127.0.0.1:{port}/nope")) is None
    finally:
        progress.close()
    assert asyncio.run(fetch_progress(f"http://127.0.0.1:{free_port()}/progress", timeout=0.5)) is None


def test_progress_keeps_the_latest_evaluations_for_a_slow_reader() -> None:
    port = free_port()
    progress = Progress(total_steps=200, rank=0)
    progress.serve(port, host="127.0.0.1")
    try:
        for step in range(5, 130, 5):  # 25 evaluations
            progress.evaluated(step, {"eval_loss": 10.0 / step, "loss": 20.0 / step, "eval_accuracy": None})
        progress.evaluated(125, {"eval_loss": 0.5, "loss": float("nan")})  # the same step again: replaced
        progress.evaluated(130, {"eval_loss": float("inf"), "loss": None})  # nothing finite: not an evaluation
        report = asyncio.run(fetch_progress(f"http://127.0.0.1:{port}/progress"))
        assert report is not None
        parsed = ProgressReport.parse(report)
        assert len(parsed.evaluations) == MAX_EVALUATIONS == 20
        at = parsed.metrics_at()
        assert sorted(at) == list(range(30, 126, 5))  # the last 20, oldest first dropped
        assert at[30] == {"eval_loss": 10.0 / 30, "loss": 20.0 / 30} and at[125] == {"eval_loss": 0.5}
        assert [e["step"] for e in report["evaluations"]] == sorted(at)  # newest last on the wire
    finally:
        progress.close()


def _get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers=bearer(token) if token is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as rsp:
            return int(rsp.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_a_trainer_started_with_a_token_answers_progress_only_to_its_holder(monkeypatch: pytest.MonkeyPatch) -> None:
    key, uid = b"k" * 32, "0f3c9a51-7d2e-4c1b-9a77-5be2c0d1e2f3"
    token = progress_token(key, uid)
    monkeypatch.setenv(PROGRESS_TOKEN_ENV, token)  # as the operator sets it in the pod
    port = free_port()
    progress = Progress(total_steps=10, rank=0)
    progress.serve(port)
    try:
        progress.update(startStep=0, step=3)
        url = f"http://127.0.0.1:{port}/progress"
        assert _get(url) == 401
        assert _get(url, token=progress_token(key, "another-job-uid")) == 401
        assert _get(url, token=progress_token(b"x" * 32, uid)) == 401  # another operator's key
        assert _get(url, token=token[:-1]) == 401 and _get(url, token=token + "0") == 401
        assert _get(url, token="") == 401
        assert _get(url, token=token) == 200
        # Prometheus holds no per-job token: /metrics is guarded by the job's NetworkPolicy instead.
        assert _get(f"http://127.0.0.1:{port}/metrics") == 200
        assert asyncio.run(fetch_progress(url, None)) is None
        assert asyncio.run(fetch_progress(url, "wrong")) is None
        report = asyncio.run(fetch_progress(url, token))
        assert report is not None and report["step"] == 3
    finally:
        progress.close()


def test_a_local_run_without_a_token_serves_progress_openly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROGRESS_TOKEN_ENV, raising=False)
    port = free_port()
    progress = Progress(total_steps=10, rank=0)
    progress.serve(port)
    try:
        assert _get(f"http://127.0.0.1:{port}/progress") == 200
        assert _get(f"http://127.0.0.1:{port}/progress", token="anything") == 200
    finally:
        progress.close()


def test_the_token_is_an_hmac_of_the_job_uid_under_the_operator_key() -> None:
    key = b"operator-key-of-at-least-32-bytes!"
    token = progress_token(key, "uid-1")
    assert token == hmac.new(key, b"uid-1", hashlib.sha256).hexdigest() and len(token) == 64
    assert progress_token(key, "uid-1") == token != progress_token(key, "uid-2")
    assert authorized(f"Bearer {token}", token)
    assert not authorized(token, token) and not authorized(None, token) and not authorized("Bearer ", token)
    with pytest.raises(ValueError, match="key"):
        progress_token(b"", "uid-1")
    with pytest.raises(ValueError, match="UID"):
        progress_token(key, "")

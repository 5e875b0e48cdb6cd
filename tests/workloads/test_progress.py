"""Progress travels from the trainer's HTTP endpoint to the operator's status fields, over real HTTP."""

from __future__ import annotations

import asyncio
import urllib.request

from lepton.controller.progress import fetch_progress
from lepton.local.trainingjob import free_port
from lepton.api.contract import ProgressReport
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

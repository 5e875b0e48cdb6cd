"""A TrainingJob running your own program (custom mode): what status says about it, table-driven.

The program's progress comes from the same /progress contract as the built-in trainer's (lepton.sdk);
without it status says progress is unknown. A failure names the worker's own exit code and last lines,
read from torchrun's report in the termination message, since torchrun itself exits 1 whatever failed."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from lepton.api.conditions import get_condition
from lepton.api.contract import ProgressReport
from lepton.api.kinds import TrainingJob
from lepton.api.validation import parse
from lepton.status.pods import PodView
from lepton.status.torchrun import program_lines, worker_exit_code
from lepton.status.trainingjob import decide
from tests.conftest import EXAMPLES

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
DATA = Path(__file__).parent / "data"
QUIET = (DATA / "torchrun-exit3-quiet.log").read_text()  # torchrun as custom mode runs it
LOUD = (DATA / "torchrun-exit3.log").read_text()  # plain torchrun: its own traceback too


def custom(status: dict[str, Any] | None = None, **spec: Any) -> TrainingJob:
    doc = copy.deepcopy(yaml.safe_load((EXAMPLES / "trainingjob-custom.yaml").read_text()))
    doc["metadata"] = {"name": "mlp", "namespace": "ns", "uid": "u-1", "generation": 1}
    doc["spec"].update(spec)
    doc["status"] = status or {}
    result = parse(doc)
    assert isinstance(result, TrainingJob)
    return result


def pod(index: int, phase: str = "Running", attempt: int = 0, **kw: Any) -> PodView:
    return PodView(name=f"mlp-{attempt}-{index}", attempt=attempt, phase=phase, scheduled=True, index=index,
                   uid=f"uid-{attempt}-{index}", created=NOW - timedelta(seconds=30), **kw)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "report", "percent", "says_unknown"),
    [
        ("no SDK: progress unknown, not invented", None, None, True),
        ("SDK reports: percent and loss", {"step": 30, "totalSteps": 120, "loss": 0.5}, 25, False),
        ("SDK reports metrics only: still known", {"step": 7, "evaluations": [{"step": 7, "metrics": {"acc": 0.9}}]},
         None, False),
    ],
)  # fmt: skip
def test_running_status_with_and_without_sdk_progress(name: str, report: dict[str, Any] | None,
                                                      percent: int | None, says_unknown: bool) -> None:  # fmt: skip
    progress = ProgressReport.parse(report) if report is not None else None
    st = decide(custom(), [pod(0), pod(1)], NOW, progress=progress).status
    ready = get_condition(st.conditions, "Ready")
    assert st.phase == "Running" and ready is not None and ready.status == "True"
    assert ("progress unknown" in ready.message) is says_unknown, ready.message
    if says_unknown:
        assert st.progress is None and "lepton.sdk" in ready.message
    else:
        assert st.progress is not None and st.progress.percent == percent


def test_a_report_once_made_is_kept_when_the_next_is_missing() -> None:
    first = decide(custom(), [pod(0), pod(1)], NOW, progress=ProgressReport.parse({"step": 5, "totalSteps": 10}))
    again = decide(custom(status=first.status.to_wire()), [pod(0), pod(1)], NOW + timedelta(seconds=5))
    ready = get_condition(again.status.conditions, "Ready")
    assert again.status.progress == first.status.progress and ready is not None
    assert "progress unknown" not in ready.message


@pytest.mark.parametrize(
    ("name", "message", "container_code", "code", "last"),
    [
        ("custom mode's quiet torchrun", QUIET, 1, 3, "something went wrong: bad column 'x'"),
        ("plain torchrun, its traceback dropped", LOUD, 1, 3, "something went wrong: bad column 'x'" * 2),
        ("no torchrun report: the container's code", "Killed by the OOM killer", 137, 137, "Killed by the OOM killer"),
        ("nothing said at all", "", 2, 2, "exit code 2"),
    ],
)  # fmt: skip
def test_a_failure_names_the_workers_exit_code_and_last_lines(name: str, message: str, container_code: int,
                                                              code: int, last: str) -> None:  # fmt: skip
    failed = replace(pod(0, "Failed"), terminated_reason="Error", exit_code=container_code, last_message=message)
    d = decide(custom(backoffLimit=0), [failed, pod(1)], NOW)
    (failure,) = d.status.failures
    assert failure.exit_code == code
    assert failure.message.splitlines()[-1] == last
    cond = get_condition(d.status.conditions, "Failed")
    assert d.status.phase == "Failed" and cond is not None
    assert f"(exit code {code})" in cond.message and (last in cond.message or last == f"exit code {code}")


def test_torchrun_report_reading() -> None:
    assert worker_exit_code(QUIET) == 3 and worker_exit_code(LOUD) == 3
    assert worker_exit_code("plain text") is None
    assert worker_exit_code(QUIET.replace("exitcode  : 3", "exitcode  : -9")) == 137  # a signal, as a shell says
    assert program_lines(QUIET) == ["rank 0 loading data", "something went wrong: bad column 'x'",
                                     "rank 1 loading data", "something went wrong: bad column 'x'"]  # fmt: skip
    assert all("torch" not in line for line in program_lines(LOUD))
    # The program's own traceback stays: only the launcher's is dropped.
    own = 'Traceback (most recent call last):\n  File "train.py", line 3\nValueError: bad\n' + QUIET
    assert program_lines(own, 8)[:3] == ["Traceback (most recent call last):", '  File "train.py", line 3',
                                         "ValueError: bad"]  # fmt: skip


@pytest.mark.parametrize(
    ("summary", "step", "percent"),
    [
        ('{"step": 160, "metrics": {"accuracy": 0.91}}', 160, 100),  # lepton.sdk.finish: the end, not the last poll
        ("", 70, 43),  # no summary (no SDK): the last report read stays
        ("not json", 70, 43),
    ],
)
def test_success_shows_the_end_when_rank_0_said_where_it_ended(summary: str, step: int, percent: int) -> None:
    last = decide(custom(), [pod(0), pod(1)], NOW, progress=ProgressReport.parse({"step": 70, "totalSteps": 160}))
    done = decide(custom(status=last.status.to_wire()), [replace(pod(0, "Succeeded"), summary=summary),
                                                         pod(1, "Succeeded")], NOW)  # fmt: skip
    assert done.status.phase == "Succeeded" and done.status.progress is not None
    assert (done.status.progress.step, done.status.progress.percent) == (step, percent)

"""`python -m lepton.workloads.data [--config FILE]`: read the DataConfig (the file, else
$LEPTON_DATA_CONFIG), prepare, and write the summary where the kubelet turns it into the pod's
termination message (the operator reads it from the pod's status; the pod has no API access).

Exit codes: 0 published (or found published), 2 invalid configuration (one line on stderr), 3 a
DataError (the summary says why, with file and line), 1 anything else (a traceback on stderr,
InternalError in the summary). Progress goes to stderr about every 5 seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import traceback
from pathlib import Path

from pydantic import ValidationError

from lepton.api.contract import DATA_CONFIG_ENV, DataConfig, ProgressReport
from lepton.api.dataset import PreparationError, PreparationSummary

PROGRESS_EVERY = 5.0


def _say(line: str) -> None:
    print(f"[data] {line}", file=sys.stderr, flush=True)


def write_summary(path: str, summary: PreparationSummary) -> None:
    """The summary at `path`; skipped where its directory does not exist (no /dev outside a pod)."""
    target = Path(path)
    if not target.parent.is_dir():
        return
    try:
        target.write_text(summary.model_dump_json(by_alias=True, exclude_none=True))
    except OSError as exc:
        _say(f"cannot write the summary to {path}: {exc.strerror}")


def _load(argv: list[str] | None) -> DataConfig | str:
    """The configuration, or the one line saying why there is none."""
    parser = argparse.ArgumentParser(
        prog="python -m lepton.workloads.data",
        description=f"Prepare a Dataset version from a DataConfig JSON document (--config, else ${DATA_CONFIG_ENV}).",
    )
    parser.add_argument("--config", type=Path, help="DataConfig JSON file")
    args = parser.parse_args(argv)
    try:
        text = args.config.read_text() if args.config else os.environ.get(DATA_CONFIG_ENV)
    except OSError as exc:
        return f"cannot read {args.config}: {exc.strerror}"
    if not text:
        return f"no configuration: pass --config or set {DATA_CONFIG_ENV}"
    try:
        return DataConfig.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in exc.errors())
        return f"invalid data configuration: {problems}".replace("\n", " ")


class _Ticker:
    """The latest progress, said on stderr about every PROGRESS_EVERY seconds."""

    def __init__(self) -> None:
        self.latest: ProgressReport | None = None
        self.stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True, name="progress").start()

    def __call__(self, report: ProgressReport) -> None:
        self.latest = report

    def _loop(self) -> None:
        while not self.stop.wait(PROGRESS_EVERY):
            r = self.latest
            if r is None or r.step is None:
                continue
            of = f" of {r.total_steps / 2**20:.1f} MiB" if r.total_steps else ""
            eta = f", about {r.eta_seconds} s left" if r.eta_seconds is not None else ""
            _say(f"progress: {r.step / 2**20:.1f} MiB{of} read{eta}")


def main(argv: list[str] | None = None) -> int:
    config = _load(argv)
    if isinstance(config, str):
        _say(f"error: {config}")
        return 2
    # pyarrow and the rest load only once the configuration is valid
    from lepton.workloads.data.errors import DataError
    from lepton.workloads.data.metrics import DataMetrics
    from lepton.workloads.data.runner import prepare

    metrics = DataMetrics()
    ticker = _Ticker()
    try:
        metrics.serve(config.metrics_port, host=config.metrics_host or "0.0.0.0")
        summary = prepare(config, progress=ticker, metrics=metrics, log=_say)
    except DataError as exc:
        _say(f"error: {exc}")
        write_summary(config.termination_log, PreparationSummary(error=exc.to_summary()))
        return 3
    except Exception as exc:
        traceback.print_exc()
        error = PreparationError(reason="InternalError", message=f"{type(exc).__name__}: {exc}"[:1000])
        write_summary(config.termination_log, PreparationSummary(error=error))
        return 1
    finally:
        ticker.stop.set()
        metrics.linger(config.metrics_linger_seconds)
        metrics.close()
    write_summary(config.termination_log, summary)
    if summary.reused:
        _say(f"{summary.version} already published, nothing recomputed")
    else:
        r = summary.rows
        total = r.train + r.validation + r.test if r else 0
        split = f"{r.train}/{r.validation}/{r.test}" if r else "0/0/0"
        _say(f"published {summary.version} ({total} rows: train/validation/test {split})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

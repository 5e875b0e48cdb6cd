"""`python -m lepton.workloads.data`: read the DataConfig, prepare, and write the summary where the
kubelet turns it into the pod's termination message (the operator reads it from the pod's status).

Exit codes: 0 published (or found published), 2 invalid configuration, 3 a DataError (the summary
says why, with file and line), 1 anything else (a traceback on stderr, InternalError in the summary).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from pydantic import ValidationError

from lepton.api.contract import DATA_CONFIG_ENV, DataConfig
from lepton.api.dataset import PreparationError, PreparationSummary


def _say(line: str) -> None:
    print(f"[data] {line}", file=sys.stderr, flush=True)


def _write_summary(path: str, summary: PreparationSummary) -> None:
    target = Path(path)
    if not target.parent.is_dir():  # e.g. no /dev/termination-log outside a pod
        return
    try:
        target.write_text(summary.model_dump_json(by_alias=True, exclude_none=True))
    except OSError as exc:
        _say(f"cannot write the summary to {path}: {exc.strerror}")


def _progress_lines(metrics: object, stop: threading.Event) -> None:
    state = getattr(metrics, "state", {})
    while not stop.wait(5.0):
        done, total = state.get("step", 0), state.get("totalSteps")
        _say(f"progress: {done >> 20} MiB of {total >> 20} MiB read" if total else f"progress: {done >> 20} MiB read")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lepton.workloads.data",
        description=f"Prepare a Dataset version. The configuration (a DataConfig JSON document) comes from "
        f"--config or the {DATA_CONFIG_ENV} environment variable.",
    )
    parser.add_argument("--config", type=Path, help="DataConfig JSON file")
    args = parser.parse_args(argv)
    text = args.config.read_text() if args.config else os.environ.get(DATA_CONFIG_ENV)
    if not text:
        parser.error(f"no configuration: pass --config or set {DATA_CONFIG_ENV}")
    try:
        config = DataConfig.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in exc.errors())
        _say(f"error: invalid data configuration: {problems}")
        return 2
    from lepton.workloads.data.errors import DataError  # pyarrow loads only once the config is valid
    from lepton.workloads.data.metrics import DataMetrics
    from lepton.workloads.data.runner import prepare

    metrics = DataMetrics()
    metrics.serve(config.metrics_port)
    stop = threading.Event()
    threading.Thread(target=_progress_lines, args=(metrics, stop), daemon=True).start()
    started = time.monotonic()
    try:
        summary = prepare(config, metrics, _say)
    except DataError as exc:
        _say(f"error: {exc}")
        _write_summary(config.termination_log, PreparationSummary(error=exc.to_summary()))
        return 3
    except Exception as exc:
        traceback.print_exc()
        error = PreparationError(reason="InternalError", message=f"{type(exc).__name__}: {exc}"[:500])
        _write_summary(config.termination_log, PreparationSummary(error=error))
        return 1
    finally:
        stop.set()
        metrics.close()
    _write_summary(config.termination_log, summary)
    rows = summary.rows or None
    counts = f"{rows.train} train, {rows.validation} validation, {rows.test} test" if rows else "no rows"
    if summary.reused:
        _say(f"version {summary.version} already published: nothing recomputed")
    else:
        _say(f"published {summary.version} ({counts}) in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The SDK's functions for user training code (re-exported by `lepton.sdk`).

Two kinds:
- Pure readers of the environment the job gives the program (`lepton.sdk.env`): hyperparameters(),
  data_path(), output_dir(), checkpoint_dir(), dataset_version(), rank(), world_size(), local_rank(),
  is_main(), checkpoint_step(). They change nothing and start nothing.
- The job's side: report(), finish(), stopping(), should_checkpoint(), latest_checkpoint(),
  save_checkpoint(). The first call of any of them sets the process up once: it serves /progress and
  /metrics on LEPTON_METRICS_PORT + LOCAL_RANK (when that is set and > 0) and, when called from the
  main thread, installs a SIGTERM handler that only sets the flag `stopping()` reads (it replaces a
  handler installed before; SIGTERM no longer ends the process by itself).

Every function is thread-safe.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from lepton.sdk import checkpoints, env
from lepton.sdk.endpoint import Endpoint, token_from_env
from lepton.sdk.progress import ProgressState, finite

EXIT_STOPPED = 143  # 128 + SIGTERM: exit with this after checkpointing when stopping() says so
DEFAULT_CHECKPOINT_EVERY_STEPS = 500  # spec.checkpoint.everySteps' default
DEFAULT_CHECKPOINT_KEEP = 2  # spec.checkpoint.keep's default
TERMINATION_LOG_BYTES = 4096  # what Kubernetes keeps of a termination message


# --- the environment --------------------------------------------------------------------------------
def _text(name: str) -> str | None:
    return os.environ.get(name) or None


def _path(name: str) -> Path | None:
    value = _text(name)
    return Path(value) if value is not None else None


def _int(name: str, default: int) -> int:
    value = _text(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {value!r}") from None


def hyperparameters() -> dict[str, Any]:
    """The job's hyperparameters (spec.trainer.hyperparameters; a TuningStudy's trial parameters), the
    JSON object in LEPTON_HYPERPARAMETERS; {} when it is not set."""
    raw = _text(env.HYPERPARAMETERS)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{env.HYPERPARAMETERS} is not valid JSON ({exc}): {raw[:200]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{env.HYPERPARAMETERS} must hold a JSON object such as {{\"lr\": 0.01}}, "
                         f"not {type(value).__name__}: {raw[:200]!r}")  # fmt: skip
    return value


def data_path() -> Path | None:
    """The training data (file or directory), when the job has spec.data."""
    return _path(env.DATA_PATH)


def output_dir() -> Path | None:
    """Where the final model (or any result) goes; None outside a job."""
    return _path(env.OUTPUT_DIR)


def checkpoint_dir() -> Path | None:
    """The root of the job's checkpoints (shared by all ranks); None: no checkpoints."""
    return _path(env.CHECKPOINT_DIR)


def dataset_version() -> str | None:
    """The version of the Dataset that data_path() holds, when spec.data.datasetRef is set."""
    return _text(env.DATASET_VERSION)


def rank() -> int:
    """This process's global rank (torchrun's RANK; 0 outside torchrun)."""
    return _int(env.RANK, 0)


def world_size() -> int:
    """How many processes train together (torchrun's WORLD_SIZE; 1 outside torchrun)."""
    return _int(env.WORLD_SIZE, 1)


def local_rank() -> int:
    """This process's rank on its node (torchrun's LOCAL_RANK; 0 outside torchrun): its GPU index."""
    return _int(env.LOCAL_RANK, 0)


def is_main() -> bool:
    """Whether this is rank 0, the process that writes checkpoints, the model and the summary."""
    return rank() == 0


def checkpoint_step(path: Path | str) -> int:
    """The step a checkpoint directory holds (`.../step-00000120` -> 120)."""
    return checkpoints.step_of(path)


# --- the job's side: state set up once per process ----------------------------------------------------
class _Runtime:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.progress = ProgressState(rank=rank())
        self.started = False  # whether a report gave the first step yet
        self.stop = threading.Event()
        self.previous_handler: Any = None
        self.handler_installed = False
        self.endpoint: Endpoint | None = None
        port = _int(env.METRICS_PORT, 0)
        if port > 0:
            host = _text(env.METRICS_HOST) or "0.0.0.0"
            try:
                self.endpoint = Endpoint(self.progress.routes(), port + local_rank(), host=host,
                                         token=token_from_env())  # fmt: skip
            except (OSError, OverflowError) as exc:  # training goes on; only its progress is not seen
                _warn(f"cannot serve /progress on {host}:{port + local_rank()}: {exc}")

    def on_sigterm(self, _signum: int, _frame: FrameType | None) -> None:
        self.stop.set()


_lock = threading.Lock()
_state: _Runtime | None = None


def _runtime() -> _Runtime:
    global _state  # noqa: PLW0603 - one per process, made on first use
    with _lock:
        if _state is None:
            _state = _Runtime()
        state = _state
        if not state.handler_installed and threading.current_thread() is threading.main_thread():
            state.previous_handler = signal.signal(signal.SIGTERM, state.on_sigterm)
            state.handler_installed = True
    return state


def reset() -> None:
    """Forget this process's SDK state: close the endpoint, restore the SIGTERM handler that was there
    before (for tests and notebooks; a training program never needs it)."""
    global _state
    with _lock:
        state, _state = _state, None
    if state is None:
        return
    if state.endpoint is not None:
        state.endpoint.close()
    if state.handler_installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, state.previous_handler or signal.SIG_DFL)


def _warn(message: str) -> None:
    print(f"lepton.sdk: {message}", file=sys.stderr, flush=True)


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool | str | bytes):
        raise TypeError(f"{what} must be a number, not {value!r}")
    try:
        float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, not {value!r}") from None
    return finite(value)


def _step(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, not {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, not {value!r}") from None
    if number < 0:
        raise ValueError(f"{what} must not be negative, not {number}")
    return number


def _metrics(values: Mapping[str, Any] | None) -> dict[str, float]:
    """The finite ones of `values`, as floats (NaN, infinities and None are dropped)."""
    kept: dict[str, float] = {}
    for name, value in (values or {}).items():
        number = _number(value, f"metrics[{name!r}]")
        if number is not None:
            kept[str(name)] = number
    return kept


def report(  # noqa: PLR0917 - the arguments have an order users know (step first)
    step: int | None = None,
    total_steps: int | None = None,
    loss: float | None = None,
    metrics: Mapping[str, float | None] | None = None,
    epoch: float | None = None,
    samples_per_second: float | None = None,
) -> None:
    """Tell /progress and /metrics where training stands. Numbers may be tensors with one element;
    NaN and infinities are dropped. With `metrics`, an evaluation at `step` (default: the last step
    reported) is recorded: /progress keeps the 20 newest (a TuningStudy prunes on them); one named
    eval_loss also sets evalLoss. The ETA counts from this process's first report with a step."""
    state = _runtime()
    at, total = _step(step, "step"), _step(total_steps, "total_steps")
    values = {"totalSteps": total, "loss": _number(loss, "loss"), "epoch": _number(epoch, "epoch"),
              "samplesPerSecond": _number(samples_per_second, "samples_per_second")}  # fmt: skip
    evaluation = _metrics(metrics)
    with state.lock:
        if at is not None and not state.started:
            state.started = True
            state.progress.start(at)
        state.progress.update(step=at, **values)
        if evaluation:
            state.progress.evaluated(at if at is not None else int(state.progress.state["step"]), evaluation)


def stopping() -> bool:
    """True once this process got SIGTERM: the pod is being deleted (the job was deleted or suspended,
    its gang restarts, or a TuningStudy pruned the trial). Checkpoint, then exit with EXIT_STOPPED
    within the pod's grace period. In DDP, let the ranks agree (all_reduce the flag) before acting."""
    return _runtime().stop.is_set()


def latest_checkpoint() -> Path | None:
    """The newest complete checkpoint to resume from; None when there is none, no checkpoint directory,
    or the job says LEPTON_RESUME=none."""
    _runtime()
    root = checkpoint_dir()
    if root is None or (_text(env.RESUME) or "latest") == "none":
        return None
    return checkpoints.latest(root)


def should_checkpoint(step: int, *, stopping: bool | None = None) -> bool:
    """Whether to checkpoint after `step`: every LEPTON_CHECKPOINT_EVERY_STEPS steps, or when stopping.
    `stopping` overrides this process's own flag: in DDP pass the one the ranks agreed on, so that they
    all decide alike. False when the job has no checkpoint directory."""
    stop = _runtime().stop.is_set() if stopping is None else stopping
    if checkpoint_dir() is None:
        return False
    every = _int(env.CHECKPOINT_EVERY_STEPS, DEFAULT_CHECKPOINT_EVERY_STEPS)
    return stop or (every > 0 and step > 0 and step % every == 0)


@contextlib.contextmanager
def save_checkpoint(step: int) -> Iterator[Path]:
    """Write the checkpoint of `step`: yields an empty temporary directory to save into (torch.save,
    anything); when the block ends without an exception, the checkpoint is marked COMPLETE, renamed
    into place atomically (`<checkpoint_dir>/step-%08d`, the built-in trainer's layout), the oldest
    beyond LEPTON_CHECKPOINT_KEEP (default 2) are removed, and /progress names it. On an exception
    nothing is kept. In DDP only rank 0 calls this; the other ranks wait at a barrier after it."""
    state = _runtime()
    at = _step(step, "step")
    if at is None:
        raise TypeError("save_checkpoint needs the step the checkpoint is taken after")
    root = checkpoint_dir()
    if root is None:
        raise RuntimeError(f"no checkpoint directory: {env.CHECKPOINT_DIR} is not set (see should_checkpoint())")
    keep = max(_int(env.CHECKPOINT_KEEP, DEFAULT_CHECKPOINT_KEEP), 1)
    tmp = checkpoints.begin(root, at)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with state.lock:
        final = checkpoints.commit(root, at, keep=keep)
    state.progress.update(checkpoint=str(final))


def finish(metrics: Mapping[str, float | None] | None = None, model: str | Path | None = None) -> dict[str, Any]:
    """Training succeeded: record the final metrics (an evaluation at the last step reported) and, on
    rank 0, write the summary the operator reads them from (a TuningStudy's objective) to
    LEPTON_TERMINATION_LOG: {"step", "metrics" (finite ones), "model" (default: output_dir())}.
    Call it once, at the very end; nothing writes a summary at exit by itself, so a run that fails
    keeps its log tail as its termination message. Returns the summary."""
    state = _runtime()
    final = _metrics(metrics)
    with state.lock:
        step = int(state.progress.state.get("step", 0))
        if final:
            state.progress.evaluated(step, final)
    where = model if model is not None else output_dir()
    summary: dict[str, Any] = {"step": step, "metrics": final}
    if where is not None:
        summary["model"] = str(where)
    if is_main():
        _write_summary(summary)
    return summary


def _write_summary(summary: dict[str, Any]) -> None:
    path = _path(env.TERMINATION_LOG)
    if path is None:
        return
    try:
        path.write_text(_fit(summary))
    except OSError as exc:  # no termination log to write (not in a pod): the model is what matters
        _warn(f"could not write the termination log {path}: {exc}")


def _fit(summary: dict[str, Any]) -> str:
    """The summary as JSON within what Kubernetes keeps of a termination message: too long, the model
    path is left out first, then metrics (the last by name first) rather than the JSON cut."""
    text = json.dumps(summary, sort_keys=True)
    if len(text.encode()) <= TERMINATION_LOG_BYTES:
        return text
    rest, metrics = {k: v for k, v in summary.items() if k not in {"model", "metrics"}}, dict(summary["metrics"])
    while len((text := json.dumps({**rest, "metrics": metrics}, sort_keys=True)).encode()) > TERMINATION_LOG_BYTES:
        metrics.pop(max(metrics))
    _warn(f"the summary is longer than {TERMINATION_LOG_BYTES} bytes: the model path is left out, and "
          f"{len(summary['metrics']) - len(metrics)} of {len(summary['metrics'])} metrics")  # fmt: skip
    return text

"""The generic half of the local backend: run a resource's rendered pods as processes on this machine.

A kind plugs in with a `LocalBackend` (in `local/<kind>.py`, listed in `lepton.local.BACKENDS`): it
translates its validated resource into `LocalProcess`es (argv, env, log file, progress port) and says
what an earlier run left (`finished`), how to forget it (`start_afresh`) and how this one ended. The
runner here does the rest, the same for every kind: a run directory, spawning each process in a
session of its own, polling, one progress line read from the typed `/progress` report, Ctrl-C (SIGTERM
to every process group, wait; a second Ctrl-C kills), and on failure the workload's own error line
before where its full log is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from lepton.api.contract import ProgressReport
from lepton.api.kinds import Resource
from lepton.status.torchrun import program_lines, worker_exit_code

R = TypeVar("R", bound=Resource)

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


class LocalRunError(RuntimeError):
    """A resource that cannot run on this machine; the message is one line that says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalProcess:
    """One rendered pod as a local process."""

    name: str
    argv: list[str]
    env: dict[str, str]  # on top of this process's own environment
    log: Path
    progress_port: int | None = None  # serves GET /progress (a ProgressReport), if any
    ready_url: str | None = None  # a server: base URL whose /v2/health/ready answers 200 once it serves
    cwd: Path | None = None  # its working directory (None: leptonctl's)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    ended: float | None = None  # monotonic time it was seen to exit

    @property
    def code(self) -> int | None:
        return None if self.proc is None else self.proc.returncode


class LocalBackend(ABC, Generic[R]):
    """What one kind implements to run under `leptonctl run`. Construct it from the validated resource;
    raise LocalRunError (one line) for what cannot run on this machine."""

    kind: ClassVar[str]
    serves: ClassVar[bool] = False  # a server runs until stopped: Ctrl-C is its normal end (exit 0)
    drives: ClassVar[bool] = False  # runs its own loop (`drive`): its processes start over time

    def __init__(self, resource: R, runs_root: Path = Path(".lepton/runs")) -> None:
        self.resource = resource
        self.runs_root = runs_root  # where earlier runs (of the resources this one references) are

    @abstractmethod
    def processes(self, run_dir: Path) -> list[LocalProcess]:
        """The rendered pods as processes, logging into `run_dir`."""

    @abstractmethod
    def succeeded(self, run_dir: Path) -> str:
        """The line that ends a successful run (what it made, and where)."""

    def starting(self, processes: list[LocalProcess]) -> str:
        return f"starting {len(processes)} process(es)"

    def serving(self, processes: list[LocalProcess]) -> str:
        """A server's line once every process answers ready (where, and how to call it)."""
        return "serving on " + ", ".join(str(p.ready_url) for p in processes)

    def finished(self) -> str | None:
        """A line saying that an earlier run already did all there is to do (then nothing starts)."""
        return None

    def start_afresh(self) -> list[str]:
        """Forget what earlier runs left (checkpoints, partial results); returns what it removed."""
        return []

    def interrupted(self) -> str:
        return "interrupted"

    def probe(self, processes: list[LocalProcess]) -> str:
        """A server's sample request, sent once it is ready: the line that tells what it answered
        (LocalRunError when it did not answer well)."""
        raise NotImplementedError

    def drive(self, run_dir: Path, options: RunOptions) -> int:
        """A backend whose processes start over time (a study's trials) runs its own loop; same exit codes."""
        raise NotImplementedError


@dataclass
class RunOptions:
    runs_root: Path
    echo: Callable[[str], None]
    tty: bool = False
    fresh: bool = False
    poll_seconds: float = 0.5
    serve_once: bool = False  # a server: send its sample request once it is ready, print the answer, stop
    failure_grace_seconds: float = 30.0  # the others' time to end on their own once one failed
    unknown_after_seconds: float = 10.0  # no /progress report by then: say progress is unknown


def run(backend: LocalBackend[Any], options: RunOptions) -> int:
    """Run `backend`'s processes to the end: 0 succeeded (or had nothing left to do), 1 failed,
    130 interrupted. LocalRunError for what cannot start."""
    echo = options.echo
    if options.fresh:
        for removed in backend.start_afresh():
            echo(f"--fresh: removed {removed}")
    else:
        done = backend.finished()
        if done is not None:
            echo(done)
            return 0
    run_dir = _run_dir(options.runs_root, backend.resource.metadata.name)
    if backend.drives:
        (run_dir / f"{backend.kind.lower()}.json").write_text(json.dumps(backend.resource.to_wire(), indent=2))
        return backend.drive(run_dir, options)
    try:
        processes = backend.processes(run_dir)
        if not processes:
            raise LocalRunError(f"{backend.kind} {backend.resource.metadata.name!r} has nothing to run")
    except LocalRunError:
        run_dir.rmdir()  # nothing was run: leave no run directory behind
        raise
    (run_dir / f"{backend.kind.lower()}.json").write_text(json.dumps(backend.resource.to_wire(), indent=2))
    echo(f"run directory: {run_dir}")
    echo(backend.starting(processes))
    with sigterm_as_interrupt():
        try:
            for p in processes:
                with p.log.open("wb") as fh:
                    p.proc = subprocess.Popen(p.argv, env={**os.environ, **p.env}, stdout=fh, cwd=p.cwd,
                                              stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            _watch(processes, options, lambda: backend.serving(processes) if backend.serves else "")
            if backend.serves and options.serve_once and all(p.code is None for p in processes):
                return _probe_and_stop(backend, processes, run_dir, options)
        except KeyboardInterrupt:
            _end_line(options)
            echo(f"interrupted: stopping {len(processes)} process(es) (Ctrl-C again to kill them)")
            stop(processes, echo)
            echo(backend.interrupted())
            return 0 if backend.serves else EXIT_INTERRUPTED
    _end_line(options)
    failed = [p for p in processes if p.code != 0]
    if failed:
        for line in failure_report(failed, run_dir):
            echo(line)
        return EXIT_FAILED
    echo(backend.succeeded(run_dir))
    return 0


def _probe_and_stop(backend: LocalBackend[Any], processes: list[LocalProcess], run_dir: Path,
                    options: RunOptions) -> int:  # fmt: skip
    """serve_once: the sample request, its answer, then the servers stop as after a Ctrl-C."""
    try:
        options.echo(backend.probe(processes))
        code = 0
    except LocalRunError as exc:
        options.echo(f"failed: {exc}")
        code = EXIT_FAILED
    stop(processes, options.echo)
    options.echo(backend.succeeded(run_dir))
    return code


def _run_dir(root: Path, name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        run_dir = root / (f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:
            continue
        return run_dir
    raise LocalRunError(f"cannot make a run directory under {root}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM to leptonctl itself stops the run as a Ctrl-C does (the processes checkpoint)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _watch(processes: list[LocalProcess], options: RunOptions, serving: Callable[[], str]) -> None:
    """Poll until every process ended, drawing the progress line (servers: one line once all are
    ready). Once one failed, the others get `failure_grace_seconds` to end on their own (a gang's peers
    usually notice), then a SIGTERM."""
    reporter = next((p for p in processes if p.progress_port), None)
    servers = [p for p in processes if p.ready_url]
    last, stopping, announced = "", False, False
    started, reported = time.monotonic(), False
    while True:
        now = time.monotonic()
        for p in processes:
            if p.ended is None and p.proc is not None and p.proc.poll() is not None:
                p.ended = now
        running = [p for p in processes if p.ended is None]
        if not running:
            return
        first_failure = min((p.ended for p in processes if p.ended is not None and p.code != 0), default=None)
        if not stopping and first_failure is not None and now - first_failure > options.failure_grace_seconds:
            signal_all(running, signal.SIGTERM)
            stopping = True
        elif stopping and first_failure is not None and now - first_failure > 2 * options.failure_grace_seconds:
            # torchrun's agent waiting on its peers (an exit barrier, a rendezvous) handles SIGTERM only when
            # that wait ends, minutes later: a kubelet would kill it after the grace period, and so do we.
            signal_all(running, signal.SIGKILL)
        if servers:
            if not announced and all(is_ready(str(p.ready_url)) for p in servers):
                announced = True
                if options.serve_once:
                    options.echo("ready on " + ", ".join(str(p.ready_url) for p in servers))
                    return
                options.echo(serving())
            time.sleep(options.poll_seconds)
            continue
        report = read_progress(reporter.progress_port) if reporter and reporter.progress_port else None
        reported = reported or report is not None
        silent = not reported and now - started > options.unknown_after_seconds
        if report is not None or not last or (silent and last == progress_line(None)):
            # between the last step and exit the endpoint is gone: the last line stays
            line = UNKNOWN if silent else progress_line(report)
            if options.tty:
                sys.stderr.write("\r" + line.ljust(len(last)))
                sys.stderr.flush()
            elif not last or (line != last and (line.count("#") != last.count("#") or not line.startswith("["))):
                options.echo(line)
            last = line
        time.sleep(options.poll_seconds)


def _end_line(options: RunOptions) -> None:
    if options.tty:
        sys.stderr.write("\n")
        sys.stderr.flush()


def signal_all(processes: list[LocalProcess], sig: signal.Signals) -> None:
    """`sig` to each process's group (each was started as the leader of a session of its own)."""
    for p in processes:
        if p.proc is not None and p.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.proc.pid, sig)


def stop(processes: list[LocalProcess], echo: Callable[[str], None]) -> None:
    """SIGTERM to every process group and wait for all (workloads checkpoint on SIGTERM); a Ctrl-C
    during the wait sends SIGKILL."""
    signal_all(processes, signal.SIGTERM)
    try:
        for p in processes:
            if p.proc is not None:
                p.proc.wait()
    except KeyboardInterrupt:
        echo("killing them (SIGKILL): what they did since their last checkpoint is lost")
        signal_all(processes, signal.SIGKILL)
        for p in processes:
            if p.proc is not None:
                p.proc.wait()


def is_ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/v2/health/ready", timeout=1) as rsp:
            return bool(rsp.status == 200)
    except (OSError, ValueError):
        return False


def read_progress(port: int) -> ProgressReport | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=1) as rsp:
            return ProgressReport.parse(json.loads(rsp.read()))
    except (OSError, ValueError):
        return None


UNKNOWN = "running; progress unknown: no /progress report (a program of your own reports through lepton.sdk)"


def progress_line(report: ProgressReport | None, width: int = 30) -> str:
    if report is None or not report.total_steps:
        return "starting…"
    step, total = report.step or 0, report.total_steps
    done = min(width, int(width * step / total))
    parts = [f"[{'#' * done}{'.' * (width - done)}] step {step}/{total}"]
    if report.loss is not None:
        parts.append(f"loss {report.loss:.4f}")
    if report.samples_per_second is not None:
        parts.append(f"{report.samples_per_second:.1f} samples/s")
    if report.eta_seconds is not None:
        parts.append(f"ETA {report.eta_seconds}s")
    return "  ".join(parts)


# --- a failed run: the workload's own words first ---------------------------------------------------

_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")
_ERROR_LINE = re.compile(r"^(?:\[[\w-]+\] )?error: .+|^[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)(?:: .*)?$")
_LAUNCHER = ("ChildFailedError", "torch.distributed.elastic")  # torchrun's own report of a child's failure
_SECONDARY = ("closed by peer", "reset by peer", "Broken pipe", "DistNetworkError", "DistBackendError",
              "DistStoreError")  # fmt: skip


def error_line(log: str) -> str | None:
    """The last line of a workload's log that states an error (an exception's last line, or an
    `error: …` line), leaving out the launcher's own report of it."""
    found = None
    for raw in log.splitlines():
        line = _RANK_PREFIX.sub("", raw).strip()
        if _ERROR_LINE.match(line) and not any(s in line for s in _LAUNCHER):
            found = line
    return found


def _log_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def failure_report(failed: list[LocalProcess], run_dir: Path) -> list[str]:
    """What to print when processes failed: the first failure's own error line (a gang's peers that
    only lost their connection to it come after), then where the full log is."""
    failed = sorted(failed, key=lambda p: (p.ended or 0.0, p.name))
    lines = {p.name: error_line(_log_text(p.log)) for p in failed}
    primary = [p for p in failed if lines[p.name] and not any(s in str(lines[p.name]) for s in _SECONDARY)]
    culprit = (primary or failed)[0]  # no error of its own anywhere: the one that ended first
    text = _log_text(culprit.log)
    code = worker_exit_code(text)  # torchrun exits 1 whatever its worker did: the worker's own code
    code = culprit.code if code is None else code
    where = f"  full log: {culprit.log} (exit code {code}); every process's log is in {run_dir}"
    line = lines[culprit.name]
    if line is not None:
        return [f"failed: {culprit.name}: {line}", where]
    tail = program_lines(text, 15) if "ChildFailedError" in text else text.splitlines()[-15:]
    return [f"failed: {culprit.name} exited with code {code}; its last lines:", *tail, where]

"""`leptonctl tune dashboard NAME`: a TuningStudy's optuna-dashboard, read-only, in the browser.

On a cluster the study's tuner pod serves it on its own loopback (127.0.0.1:DASHBOARD_PORT), which
nothing on the pod network reaches: this runs `kubectl port-forward pod/NAME-tuner LOCAL:DASHBOARD_PORT`
(your credentials, your RBAC) and prints the URL. For a study run here (`leptonctl run -f`) it serves
optuna-dashboard itself on the study's journal under the runs directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lepton.api.constants import TERMINAL_PHASES
from lepton.api.tuner import DASHBOARD_PORT, JOURNAL_FILE

KUBECTL_ENV = "KUBECTL"  # which kubectl to run (default: kubectl on PATH)
FORWARD_SECONDS = 30.0  # for kubectl port-forward to listen
REQUEST_TIMEOUT = "15s"


class TuneError(RuntimeError):
    """What the user must know, in one line (exit code 1)."""


def add_parser(sub: Any) -> None:
    """`tune` and its actions, under leptonctl's subcommands."""
    tune = sub.add_parser("tune", help="TuningStudy tools: a study's optuna-dashboard")
    actions = tune.add_subparsers(dest="tune_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "dashboard",
        help="open a study's optuna-dashboard (read-only): port-forward to its tuner, or serve a local study",
        description="On a cluster (KUBECONFIG / the current context): check the TuningStudy, then run kubectl "
        f"port-forward to its tuner pod, which serves optuna-dashboard on its own loopback ({DASHBOARD_PORT}), "
        "and print the URL; Ctrl-C ends it. A study run with `leptonctl run -f` (its journal under --runs-dir): "
        "serve optuna-dashboard on that journal here, on 127.0.0.1. Without --local or -n, a local study's "
        "journal is used when there is one. The dashboard is read-only: the study's tuner alone writes to it.",
    )
    p.add_argument("name", help="the TuningStudy's name")
    p.add_argument("-n", "--namespace", help="its namespace on the cluster (default: the context's)")
    p.add_argument("--port", type=int, help=f"local port (default {DASHBOARD_PORT}; locally, any free port if taken)")
    p.add_argument("--local", action="store_true", help="the study run on this machine (leptonctl run -f)")
    p.add_argument("--runs-dir", type=Path, default=Path(".lepton/runs"), help="where leptonctl run keeps runs")
    p.set_defaults(func=dashboard_command)


def local_journal(runs_dir: Path, name: str) -> Path:
    """Where `leptonctl run -f` keeps a study's journal (lepton.local.tuningstudy: `<runs>/<name>.study`)."""
    return runs_dir / f"{name}.study" / JOURNAL_FILE


def dashboard_command(args: argparse.Namespace) -> int:
    if args.port is not None and not 0 < args.port < 65536:
        return _fail(f"--port {args.port}: a port is 1-65535")
    journal = local_journal(args.runs_dir, args.name)
    try:
        if args.local or (args.namespace is None and journal.is_file()):
            return serve_local(args.name, journal, args.port, explicit=args.local)
        return forward(args.name, args.namespace, args.port or DASHBOARD_PORT)
    except TuneError as exc:
        return _fail(exc)


def _fail(message: object) -> int:
    print(f"leptonctl tune dashboard: {message}", file=sys.stderr)
    return 1


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- a study run here -----------------------------------------------------------------------------
def serve_local(name: str, journal: Path, port: int | None, *, explicit: bool) -> int:
    if not journal.is_file():
        raise TuneError(f"no local study {name}: no journal at {journal} (run it with leptonctl run -f, or pass "
                        "--runs-dir; for a study on a cluster leave out --local)")  # fmt: skip
    from lepton.workloads.tuner.dashboard import INSTALL_HINT, DashboardServer, DashboardUnavailableError

    try:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
    except ImportError as exc:
        raise TuneError(f"Optuna is not installed ({exc}); {INSTALL_HINT}") from None

    storage = JournalStorage(JournalFileBackend(str(journal)))
    try:
        try:
            server = DashboardServer(storage, port=port or DASHBOARD_PORT)
        except OSError:
            if port is not None:
                raise
            server = DashboardServer(storage, port=0)  # the default is taken (a running study's tuner?)
    except DashboardUnavailableError as exc:
        raise TuneError(exc) from None
    except OSError as exc:
        raise TuneError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; pick another --port") from None
    if not explicit:
        _say(f"the local study {name} (its journal {journal}); for the one on a cluster pass -n NAMESPACE")
    _say("Ctrl-C to stop")  # before the URL, as for a forward
    print(f"optuna-dashboard of {name} (read-only): {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


# --- a study on a cluster -------------------------------------------------------------------------
def kubectl() -> str:
    wanted = os.environ.get(KUBECTL_ENV, "kubectl")
    found = shutil.which(wanted)
    if found is None:
        raise TuneError(f"{wanted} not found: the dashboard of a study on a cluster is reached through kubectl "
                        "port-forward (for a study run here: --local)")  # fmt: skip
    return found


def _get(binary: str, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
    """The object, or None when the apiserver says NotFound; TuneError when the cluster cannot be asked."""
    scope = ["-n", namespace] if namespace else []
    proc = subprocess.run([binary, "get", kind, name, *scope, "-o", "json", f"--request-timeout={REQUEST_TIMEOUT}"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode == 0:
        found: dict[str, Any] = json.loads(proc.stdout)
        return found
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    why = lines[-1] if lines else f"exit code {proc.returncode}"  # kubectl's conclusion comes last
    if "doesn't have a resource type" in why:
        raise TuneError(f"the cluster has no {kind} kind (are Lepton's CRDs installed?): {why[:300]}")
    if "(NotFound)" in why:
        return None
    raise TuneError(f"cannot ask the cluster (kubectl get {kind} {name}): {why[:400]}; "
                    "for a study run here: --local")  # fmt: skip


def forward(name: str, namespace: str | None, port: int) -> int:
    binary = kubectl()
    study = _get(binary, "tuningstudy", name, namespace)
    where = f"namespace {namespace}" if namespace else "the current namespace"
    if study is None:
        raise TuneError(f"no TuningStudy {name} in {where} (another namespace: -n; a study run here: --local)")
    ns = str(study["metadata"].get("namespace") or namespace or "default")
    status = study.get("status") or {}
    phase = str(status.get("phase") or "")
    pod_name = str(status.get("tuner") or f"{name}-tuner")
    pod = _get(binary, "pod", pod_name, ns)
    if pod is None or pod["metadata"].get("deletionTimestamp"):
        raise TuneError(_no_tuner(name, ns, phase, bool((study.get("spec") or {}).get("suspend"))))
    pod_phase = (pod.get("status") or {}).get("phase")
    if pod_phase != "Running":
        raise TuneError(f"the tuner pod {pod_name} of {ns}/{name} is {pod_phase or 'not running'} yet: try again "
                        "once it runs (kubectl get pod -n " + ns + " " + pod_name + ")")  # fmt: skip
    argv = [binary, "port-forward", "-n", ns, f"pod/{pod_name}", f"{port}:{DASHBOARD_PORT}", "--address", "127.0.0.1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _await_forwarding(proc, port)
        # the hint goes out before the URL: whoever reads the URL and presses Ctrl-C has seen both
        _say(f"(kubectl port-forward to {pod_name}, which serves it on its loopback only; Ctrl-C to stop)")
        print(f"optuna-dashboard of {ns}/{name} (read-only): http://127.0.0.1:{port}/dashboard", flush=True)
        threading.Thread(target=_relay, args=(proc.stderr,), daemon=True).start()  # its errors, as they come
        code = proc.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if code != 0:
        return _fail(f"kubectl port-forward ended with exit code {code}")
    return 0


def _await_forwarding(proc: subprocess.Popen[str], port: int) -> None:
    """Until kubectl says it listens ("Forwarding from …"); TuneError with its words if it exits first."""
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # read to the end, so kubectl never blocks on a full pipe
            if not ready.is_set():
                lines.append(line)
                if line.startswith("Forwarding from"):
                    ready.set()
        ready.set()  # stdout closed: kubectl ended

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + FORWARD_SECONDS
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            raise TuneError(f"kubectl port-forward did not listen on 127.0.0.1:{port} within {FORWARD_SECONDS:.0f}s")
    if not any(line.startswith("Forwarding from") for line in lines):
        proc.wait()
        why = " ".join(proc.stderr.read().split()) or "".join(lines).strip() or f"exit code {proc.returncode}"
        if "address already in use" in why or "unable to listen" in why:
            raise TuneError(f"local port {port} is taken: pick another with --port ({why[:300]})")
        raise TuneError(f"kubectl port-forward failed: {why[:400]}")


def _relay(stream: Any) -> None:
    for line in stream:
        sys.stderr.write(line)


def _no_tuner(name: str, ns: str, phase: str, suspended: bool) -> str:
    if phase in TERMINAL_PHASES:
        return (f"{ns}/{name} has finished ({phase}): its tuner pod is gone, so nothing serves its dashboard; "
                "open its storage instead: optuna-dashboard <RDB URL> for storage.urlSecretRef, or, for a study "
                "run here, leptonctl tune dashboard --local")  # fmt: skip
    if suspended:
        return f"{ns}/{name} is suspended, and its tuner with it: resume it (spec.suspend: false) to see its dashboard"
    return f"{ns}/{name} has no tuner pod yet (phase {phase or 'unknown'}): try again once it runs"

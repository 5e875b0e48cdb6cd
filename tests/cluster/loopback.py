"""Real workloads behind kwok's fake pods, reachable at the pods' own IPs.

kwok runs no container, so a pod's program is run here instead, as a real process bound to the IP kwok
gave the pod: pods on the loopback node get their IPs from its podCIDR, 127.77.0.0/24, which is
loopback on Linux, so the operator reaches a real tuner, real trainers, a real data preparation and a
real server at `http://<podIP>:<port>` exactly as it would in a cluster. The process gets the pod's own
environment (the operator's config and token), with only what this machine must change: the address
it binds, and where the termination message goes. When the process ends, the pod is finished with the
fake runtime (`lepton.ai/fake-outcome`, and the real termination message as `lepton.ai/fake-message`);
a pod with restartPolicy Always (the tuner, a server) gets its process started again instead. When
the operator deletes the pod, the process gets SIGTERM, as a kubelet would send it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton.api.contract import DATA_CONFIG_ENV, SERVER_CONFIG_ENV, TRAINER_CONFIG_ENV
from lepton.api.tuner import STORAGE_URL_ENV, TUNER_CONFIG_ENV
from lepton.local.trainingjob import free_port, local_argv
from lepton.sdk import env as sdk_env
from tests.cluster.kube import Kube
from tests.conftest import ROOT
from tests.workloads.conftest import tree

LOOPBACK_CIDR = "127.77.0.0/24"
NODE = "loopback-node-0"
PLACEMENT = {
    "nodeSelector": {"lepton.ai/test-node": "loopback"},
    "tolerations": [{"key": "lepton.ai/loopback", "operator": "Exists", "effect": "NoSchedule"}],
}


def ensure_node(kube: Kube) -> None:
    """A fake node whose pods get loopback IPs (tainted: only pods that ask for it land there)."""
    if kube.run("get", "node", NODE, check=False).returncode == 0:
        return
    resources = {"cpu": "96", "memory": "1Ti", "pods": "110"}
    node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                     "labels": {"type": "kwok", "kubernetes.io/hostname": NODE, "lepton.ai/test-node": "loopback"}},
        "spec": {"podCIDR": LOOPBACK_CIDR, "taints": [{"key": "lepton.ai/loopback", "value": "true",
                                                       "effect": "NoSchedule"}]},
        "status": {"capacity": resources, "allocatable": resources},
    }  # fmt: skip
    kube.run("create", "-f", "-", stdin=json.dumps(node))  # POST: apply would reset the status kwok reads
    kube.run("wait", "--for=condition=Ready", f"node/{NODE}", "--timeout=60s")


def _log_tail(log: Path, max_bytes: int = 2048, max_lines: int = 80) -> str:
    """What a kubelet keeps of a failed container's log as its termination message."""
    try:
        data = log.read_bytes()[-max_bytes:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-max_lines:])


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@dataclass
class Running:
    pod: str
    ip: str
    proc: subprocess.Popen[bytes]
    message: Path | None
    log: Path
    always: bool = False  # restartPolicy Always (a tuner, a server): the process is started again when it ends
    stopped: bool = False  # SIGTERM sent because the pod went away


@dataclass
class LoopbackRuntime:
    """Runs the program of every lepton pod in `namespace` that lands on the loopback node."""

    kube: Kube
    namespace: str
    workdir: Path
    storage_url: str = ""  # the tuner's RDB URL (its pod reads it from a Secret)
    started: dict[str, Running] = field(default_factory=dict)  # by pod UID (a pod made again keeps its name)
    finished: dict[str, int] = field(default_factory=dict)  # pod UID -> exit code
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    errors: list[str] = field(default_factory=list)
    restarts: int = 0

    def __enter__(self) -> LoopbackRuntime:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="loopback-runtime")
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        running = [run for run in self.started.values() if run.proc.poll() is None]
        # torchrun starts its workers in sessions of their own: a SIGKILL to it alone would leave them
        # running, holding their pod's address. SIGTERM first (it stops its workers), then whatever is left.
        children = {run.proc.pid: tree(run.proc.pid)[1:] for run in running}
        for run in running:
            run.proc.terminate()
        deadline = time.monotonic() + 20
        for run in running:
            try:
                run.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                run.proc.kill()
                run.proc.wait()
            for pid in children[run.proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def kill_tuner(self) -> bool:
        """SIGKILL the tuner process, as an OOM kill would; its pod stays and the process is started
        again, as a kubelet restarts a container of a pod with restartPolicy Always."""
        for run in list(self.started.values()):
            if run.pod.endswith("-tuner") and run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
                self.restarts += 1
                return True
        return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:  # the test reads errors; the runtime goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(0.5)

    def _pods(self) -> list[dict[str, Any]]:
        out = self.kube.run("get", "pods", "-n", self.namespace, "-o", "json", check=False)
        return list(json.loads(out.stdout or '{"items": []}').get("items", []))

    def _step(self) -> None:
        pods = {p["metadata"]["uid"]: p for p in self._pods()}
        for uid, run in list(self.started.items()):
            pod = pods.get(uid)
            gone = pod is None or bool(pod["metadata"].get("deletionTimestamp"))
            if gone and run.proc.poll() is None and not run.stopped:
                run.proc.send_signal(signal.SIGTERM)  # the kubelet's stop: the trainer checkpoints
                run.stopped = True
            code = run.proc.poll()
            if code is not None and run.always and pod is not None and not gone:
                self.started[uid] = self._start(pod, run.ip)  # restartPolicy Always
                continue
            if code is not None and uid not in self.finished:
                self.finished[uid] = code
                if not gone and not run.always:
                    self._finish(run.pod, code, run)
        for uid, pod in pods.items():
            ip = (pod.get("status") or {}).get("podIP") or ""
            if uid in self.started or uid in self.finished or not ip.startswith("127.77."):
                continue
            if pod["status"].get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
                continue
            if any(r.ip == ip and r.proc.poll() is None for r in self.started.values()):
                continue  # the address is still held by the process of a pod being deleted
            self.started[uid] = self._start(pod, ip)

    def _start(self, pod: dict[str, Any], ip: str) -> Running:
        name = pod["metadata"]["name"]
        (container,) = pod["spec"]["containers"]
        cwd: Path | None = None
        env = {**os.environ, **_env(container), "HOME": str(self.workdir), "PYTHONUNBUFFERED": "1"}
        log = self.workdir / f"{name}.log"
        message: Path | None = None
        if DATA_CONFIG_ENV in env:  # a Dataset's preparation
            message = self.workdir / f"{name}.termination-log"
            config = json.loads(env[DATA_CONFIG_ENV]) | {"metricsHost": ip, "terminationLog": str(message)}
            env[DATA_CONFIG_ENV] = json.dumps(config)
            argv = [sys.executable, *container["command"][1:]]
        elif SERVER_CONFIG_ENV in env:  # an InferenceService replica
            env[SERVER_CONFIG_ENV] = json.dumps(json.loads(env[SERVER_CONFIG_ENV]) | {"host": ip})
            env["HF_HOME"] = str(self.workdir / "cache" / "hf")
            argv = [sys.executable, *container["command"][1:]]
        elif TUNER_CONFIG_ENV in env:
            config = json.loads(env[TUNER_CONFIG_ENV]) | {"host": ip}
            env[TUNER_CONFIG_ENV] = json.dumps(config)
            env[STORAGE_URL_ENV] = self.storage_url
            argv = [sys.executable, "-m", "lepton.workloads.tuner"]
        elif TRAINER_CONFIG_ENV not in env:  # a TrainingJob running your own program (custom mode)
            message = self.workdir / f"{name}.termination-log"
            env |= {sdk_env.METRICS_HOST: ip, sdk_env.TERMINATION_LOG: str(message)}
            rendezvous = f"127.0.0.1:{free_port()}"
            if "PET_RDZV_ENDPOINT" in env:
                env["PET_RDZV_ENDPOINT"] = rendezvous
            argv = local_argv([f"--rdzv-endpoint={rendezvous}" if a.startswith("--rdzv-endpoint=") else a
                               for a in container["command"]])  # fmt: skip
            cwd = ROOT  # the image's workingDir: here, the checkout (examples/custom/train.py)
        else:
            message = self.workdir / f"{name}.termination-log"
            config = json.loads(env[TRAINER_CONFIG_ENV]) | {"metricsHost": ip, "terminationLog": str(message)}
            env[TRAINER_CONFIG_ENV] = json.dumps(config)
            for key in ("HF_HOME", "TRITON_CACHE_DIR"):
                env[key] = str(self.workdir / "cache" / key.lower())
            rendezvous = f"127.0.0.1:{free_port()}"
            argv = [sys.executable, "-m", "torch.distributed.run",
                    *[f"--rdzv-endpoint={rendezvous}" if a.startswith("--rdzv-endpoint=") else a
                      for a in container["command"][1:]]]  # fmt: skip
        fh = log.open("wb")
        proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=cwd)  # fmt: skip
        return Running(name, ip, proc, message, log, always=pod["spec"].get("restartPolicy", "Always") == "Always")

    def _finish(self, name: str, code: int, run: Running) -> None:
        """The fake runtime ends the pod the way the real process ended, with its termination message."""
        notes = {"lepton.ai/fake-outcome": "Succeeded" if code == 0 else "Failed", "lepton.ai/fake-after": "0s",
                 "lepton.ai/fake-exit-code": str(code)}  # fmt: skip
        text = run.message.read_text()[:4096] if run.message is not None and run.message.exists() else ""
        if not text and code != 0:  # terminationMessagePolicy FallbackToLogsOnError: the log's last 2 KiB
            text = _log_tail(run.log)
        if text:
            notes["lepton.ai/fake-message"] = text
        self.kube.patch("pod", name, self.namespace, {"metadata": {"annotations": notes}})

    def wait_idle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(r.proc.poll() is None for r in self.started.values()):
            time.sleep(0.2)

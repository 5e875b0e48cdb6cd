"""A real local control plane for development and tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok as local processes (kwokctl, binary runtime), with fake GPU nodes.

Every binary is one this project built from Go modules (hack/build-binaries.sh); nothing is downloaded.
Native gang scheduling (Workload/PodGroup, GenericWorkload gate) is switched on, as the roadmap needs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lepton.cli.crds import generated

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
FAKE_STAGES = Path(__file__).with_name("fake-outcome-stages.yaml")
AUDIT_POLICY = Path(__file__).with_name("audit-policy.yaml")  # writes only, metadata only
# 1.37: the Workload and PodGroup APIs are beta (scheduling.k8s.io/v1beta1) behind GenericWorkload.
FEATURE_GATES = "GenericWorkload=true"
RUNTIME_CONFIG = "scheduling.k8s.io/v1beta1=true"


class DevClusterError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("LEPTON_CACHE", Path.home() / ".cache" / "lepton"))


def find_repo(start: Path | None = None) -> Path:
    """The Lepton checkout holding hack/build-binaries.sh (the dev cluster is a development tool)."""
    for d in [(start or Path.cwd()).resolve(), *(start or Path.cwd()).resolve().parents]:
        if (d / "hack" / "build-binaries.sh").exists() and (d / "pyproject.toml").exists():
            return d
    here = Path(__file__).resolve()
    for d in here.parents:
        if (d / "hack" / "build-binaries.sh").exists():
            return d
    raise DevClusterError("run from a Lepton checkout: the dev cluster needs hack/build-binaries.sh")


@dataclass(frozen=True)
class Binaries:
    paths: dict[str, Path]
    kubernetes_version: str
    stages: Path
    gateway_crds: Path | None = None  # the Gateway API's CRDs (tests install the HTTPRoute one)
    monitoring_crds: Path | None = None  # the Prometheus Operator's ServiceMonitor and PrometheusRule CRDs (tests)

    def __getitem__(self, name: str) -> str:
        return str(self.paths[name])

    @classmethod
    def ensure(cls, repo: Path, log: Callable[[str], None]) -> Binaries:
        """Build what is missing (cached outside the clone) and return where every binary is."""
        log("checking control-plane binaries (building what is missing; a cold build takes minutes)")
        proc = subprocess.run(
            ["bash", str(repo / "hack" / "build-binaries.sh"), "--print-env"],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise DevClusterError("hack/build-binaries.sh failed; see its output above")
        env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        paths = {
            key.removeprefix("LEPTON_BIN_").lower().replace("_", "-"): Path(value)
            for key, value in env.items()
            if key.startswith("LEPTON_BIN_")
        }
        gateway, monitoring = env.get("LEPTON_GATEWAY_API_CRDS"), env.get("LEPTON_MONITORING_CRDS")
        return cls(paths, env["LEPTON_KUBERNETES_VERSION"], Path(env["LEPTON_KWOK_STAGES"]),
                   Path(gateway) if gateway else None, Path(monitoring) if monitoring else None)  # fmt: skip


def advertise_address() -> str | None:
    """A non-loopback IPv4 address: the apiserver needs one on a machine without a default route."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    for addr in out.split():
        if "." in addr and not addr.startswith("127."):
            return addr
    try:
        addr = socket.gethostbyname(socket.gethostname())
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting for its parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def fake_node(name: str, zone: str, *, gpus: int = 0, product: str = "NVIDIA-H100-80GB-HBM3") -> dict[str, Any]:
    """A fake node for kwok: capacity in status; GPU nodes get GPU labels and the usual GPU taint."""
    resources = {"cpu": "96", "memory": "1Ti", "pods": "110", "ephemeral-storage": "1Ti"}
    labels = {
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "topology.kubernetes.io/zone": zone,
    }
    taints: list[dict[str, str]] = []
    if gpus:
        resources[GPU_RESOURCE] = str(gpus)
        labels |= {
            "node.kubernetes.io/instance-type": f"gpu-{gpus}x",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": product,
            "nvidia.com/gpu.count": str(gpus),
        }
        taints.append(GPU_TAINT)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": labels,
        },
        "spec": {"taints": taints},
        "status": {"capacity": resources, "allocatable": resources},
    }


def _run(
    cmd: list[str], *, check: bool, what: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, input=stdin, env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise DevClusterError(f"{what} failed: {proc.stderr.strip()[-4000:]}")
    return proc


class DevCluster:
    def __init__(self, name: str = "lepton", *, log: Callable[[str], None] | None = None,
                 audit_log_mb: int = 200) -> None:  # fmt: skip
        self.name = name
        self.audit_log_mb = audit_log_mb  # then rotated, one old file kept
        self.home = cache_dir() / "dev"
        self.kubeconfig = self.home / f"{name}.kubeconfig"
        self.log = log or (lambda msg: print(f"[dev] {msg}", file=sys.stderr, flush=True))
        self._bins: Binaries | None = None
        self.relaunches: list[str] = []  # apiserver starts that died or stayed silent (restart_apiserver)

    # --- plumbing -----------------------------------------------------------------------------
    @property
    def bins(self) -> Binaries:
        if self._bins is None:
            self._bins = Binaries.ensure(find_repo(), self.log)
        return self._bins

    def _env(self) -> dict[str, str]:
        return {**os.environ, "KWOK_WORKDIR": str(self.home / "kwok"), "KUBECONFIG": str(self.kubeconfig)}

    def kwokctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([self.bins["kwokctl"], "--name", self.name, *args], check=check, env=self._env(),
                    what=f"kwokctl {' '.join(args[:2])}")  # fmt: skip

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([self.bins["kubectl"], "--kubeconfig", str(self.kubeconfig), *args], check=check, stdin=stdin,
                    what=f"kubectl {' '.join(args[:3])}")  # fmt: skip

    def exists(self) -> bool:
        out = self.kwokctl("get", "clusters", check=False).stdout.split()
        return self.name in out

    def healthy(self) -> bool:
        if not self.kubeconfig.exists():
            return False
        proc = self.kubectl("get", "--raw=/readyz", "--request-timeout=3s", check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "ok"

    # --- commands -----------------------------------------------------------------------------
    def up(self, nodes: int = 4, gpus_per_node: int = 8, *, fresh: bool = False) -> dict[str, float]:
        """Start (or reuse) the cluster, make sure nodes and CRDs are there; returns timings.

        `fresh` deletes an existing cluster first, so nothing left by an earlier run (pods still holding
        GPUs, namespaces half deleted) can change what a test sees."""
        started = time.monotonic()
        bins = self.bins
        timings: dict[str, float] = {"binaries_s": time.monotonic() - started}
        self.home.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.down()
        t0 = time.monotonic()
        if self.healthy():
            mode = "reused"
        elif self.exists():
            mode = "warm"
            self.log(f"starting existing cluster {self.name!r}")
            self.kwokctl("start", "cluster", "--wait", "120s")
        else:
            mode = "cold"
            self.log(f"creating cluster {self.name!r} (Kubernetes {bins.kubernetes_version}, kwok)")
            self._create()
        timings[f"{mode}_start_s"] = time.monotonic() - t0
        self._wait_ready()
        t0 = time.monotonic()
        self.ensure_nodes(nodes, gpus_per_node)
        self.install_crds()
        timings["nodes_and_crds_s"] = time.monotonic() - t0
        timings["total_s"] = time.monotonic() - started
        self.log(
            f"cluster {self.name!r} ready ({mode} start {timings[f'{mode}_start_s']:.1f}s, "
            f"total {timings['total_s']:.1f}s); export KUBECONFIG={self.kubeconfig}"
        )
        return timings

    @property
    def audit_log(self) -> Path:
        """The apiserver's audit log (AUDIT_POLICY: every write, its user agent and object, no bodies)."""
        return self.home / "kwok" / "clusters" / self.name / "logs" / "audit.log"

    def audit_events(self, namespace: str) -> Iterator[dict[str, Any]]:
        """The audit log's events (writes, per AUDIT_POLICY) about objects in `namespace`, oldest first."""
        with self.audit_log.open() as fh:
            for line in fh:
                if namespace not in line:  # cheap filter before parsing
                    continue
                event: dict[str, Any] = json.loads(line)
                if (event.get("objectRef") or {}).get("namespace") == namespace:
                    yield event

    def _create(self) -> None:
        config = self.home / f"{self.name}-kwok.yaml"
        # kwok's pod-complete stage ends every Job-owned pod at once, with no termination message; here a
        # pod ends only when a test says how (lepton.ai/fake-outcome), as it would end a training rank.
        stages = sorted(p for p in self.bins.stages.glob("*.yaml") if p.name != "pod-complete.yaml")
        if not stages:
            raise DevClusterError(f"no kwok stages in {self.bins.stages}: rerun hack/build-binaries.sh")
        config.write_text("\n---\n".join([p.read_text() for p in stages] + [FAKE_STAGES.read_text()]))
        args = [
            "create", "cluster", "--runtime", "binary", "--config", str(config),
            "--kubeconfig", str(self.kubeconfig),
            "--etcd-binary", self.bins["etcd"],
            "--kube-apiserver-binary", self.bins["kube-apiserver"],
            "--kube-controller-manager-binary", self.bins["kube-controller-manager"],
            "--kube-scheduler-binary", self.bins["kube-scheduler"],
            "--kwok-controller-binary", self.bins["kwok"],
            "--kube-feature-gates", FEATURE_GATES,
            "--kube-runtime-config", RUNTIME_CONFIG,
            "--kube-audit-policy", str(AUDIT_POLICY),
            "--extra-args", f"kube-apiserver=audit-log-maxsize={self.audit_log_mb}",
            "--extra-args", "kube-apiserver=audit-log-maxbackup=1",
            "--wait", "120s",
        ]  # fmt: skip
        addr = advertise_address()
        if addr:
            args += ["--extra-args", f"kube-apiserver=advertise-address={addr}"]
        self.kwokctl(*args)

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise DevClusterError(f"apiserver of {self.name!r} not ready after {timeout:.0f}s")
            time.sleep(0.5)

    def ensure_nodes(self, nodes: int, gpus_per_node: int) -> None:
        """`nodes` GPU nodes and one CPU node for system pods (the operator), created when missing."""
        existing = set(self.kubectl("get", "nodes", "-o", "name").stdout.split())
        zones = ("zone-a", "zone-b")
        wanted = [fake_node("cpu-node-0", zones[0])]
        wanted += [fake_node(f"gpu-node-{i}", zones[i % 2], gpus=gpus_per_node) for i in range(nodes)]
        missing = [node for node in wanted if f"node/{node['metadata']['name']}" not in existing]
        for start in range(0, len(missing), 250):  # one kubectl per 250 nodes: 1,250 nodes in seconds
            # POST, not apply: apply would reset the status (capacity) kwok reads.
            self.kubectl("create", "-f", "-", stdin="\n---\n".join(json.dumps(n) for n in missing[start : start + 250]))
        timeout = f"--timeout={60 + len(wanted) // 10}s"
        self.kubectl("wait", "--for=condition=Ready", "nodes", "-l", "type=kwok", timeout)

    def install_crds(self) -> None:
        docs = "---\n".join(generated().values())
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=leptonctl", "-f", "-", stdin=docs)
        names = [yaml.safe_load(text)["metadata"]["name"] for text in generated().values()]
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])

    def down(self) -> None:
        if self.exists():
            self.kwokctl("delete", "cluster")
            self.log(f"cluster {self.name!r} deleted")
        self.kubeconfig.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "exists": self.exists(), "kubeconfig": str(self.kubeconfig)}
        info["healthy"] = info["exists"] and self.healthy()
        if info["healthy"]:
            info["server_version"] = json.loads(self.kubectl("version", "-o", "json").stdout)["serverVersion"][
                "gitVersion"
            ]
            info["nodes"] = self.kubectl("get", "nodes", "-o", "name").stdout.split()
        return info

    def _pidfile(self, component: str) -> Path:
        return self.home / "kwok" / "clusters" / self.name / "pids" / f"{component}.pid"

    def _launch(self, component: str, argv: list[str], cwd: str, log: str) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)  # fmt: skip
        self._pidfile(component).write_text(str(proc.pid))
        return proc

    def restart_apiserver(self, timeout: float = 120, revive_seconds: float = 20, silent_seconds: float = 60) -> int:
        """Crash the kube-apiserver (SIGKILL) and start it again with the same command line, the other
        components staying up: every client's watch breaks and resumes. The controller-manager and the
        scheduler exit by design when they cannot renew their own lease meanwhile; like the kubelet
        restarting static pods, any component that dies within `revive_seconds` of the apiserver's return
        is started again. Also like the kubelet, a new apiserver that dies, or writes not one log line in
        `silent_seconds`, is started again; each such start is recorded in `relaunches`, with how it ended.
        Returns the apiserver's new process id."""
        commands: dict[str, tuple[int, list[str], str, str]] = {}
        for component, (pid, _) in self.processes().items():
            argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
            commands[component] = (pid, argv, os.readlink(f"/proc/{pid}/cwd"), os.readlink(f"/proc/{pid}/fd/2"))
        pid, argv, cwd, log = commands.pop("kube-apiserver")
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
        new = self._supervise_apiserver(argv, cwd, log, timeout, silent_seconds)
        deadline = time.monotonic() + revive_seconds
        while commands and time.monotonic() < deadline:
            for component, (old, argv, cwd, log) in list(commands.items()):
                if not _alive(old):
                    self._launch(component, argv, cwd, log)
                    del commands[component]
            time.sleep(0.2)
        return new.pid

    def _supervise_apiserver(self, argv: list[str], cwd: str, log: str, timeout: float,
                             silent_seconds: float) -> subprocess.Popen[bytes]:  # fmt: skip
        """Start the apiserver and wait until it is ready, starting it again when it dies or stays silent."""
        deadline, starts = time.monotonic() + timeout, 0
        while True:
            if starts:  # a back-off between starts, as the kubelet's
                time.sleep(min(0.5 * 2**starts, 10.0))
            starts += 1
            size, launched = Path(log).stat().st_size, time.monotonic()
            new = self._launch("kube-apiserver", argv, cwd, log)
            while not self.healthy():
                code = new.poll()
                silent = Path(log).stat().st_size == size and time.monotonic() - launched > silent_seconds
                if code is None and silent:
                    new.kill()
                    code = new.wait()
                    how = f"silent for {silent_seconds:.0f}s, killed"
                else:
                    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                tail = Path(log).read_bytes()[size:].decode(errors="replace").splitlines()[-30:]
                if code is not None:
                    self.relaunches.append(f"pid {new.pid}: {how}" + (f"; last logged: {tail[-1]}" if tail else ""))
                    self.log(f"kube-apiserver pid {new.pid} ended ({how}); starting it again")
                    break
                if time.monotonic() > deadline:
                    raise DevClusterError(
                        f"apiserver of {self.name!r} not ready {timeout:.0f}s after its restart; the new one "
                        f"(pid {new.pid}, running; earlier starts: {self.relaunches or 'none'}) logged:\n"
                        + "\n".join(tail)
                    )
                time.sleep(0.5)
            else:
                return new
            if time.monotonic() > deadline:
                raise DevClusterError(f"apiserver of {self.name!r} not ready {timeout:.0f}s after its restart; "
                                      f"its starts ended: {self.relaunches}")  # fmt: skip

    def processes(self) -> dict[str, tuple[int, str]]:
        """Component -> (pid, executable) of the live control-plane processes (Linux /proc)."""
        out: dict[str, tuple[int, str]] = {}
        for pidfile in sorted((self.home / "kwok" / "clusters" / self.name / "pids").glob("*.pid")):
            pid = int(pidfile.read_text().strip() or 0)
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            out[pidfile.stem] = (pid, exe)
        return out

    def component_versions(self) -> dict[str, str]:
        """The version each running component reports about itself (for test logs)."""
        out: dict[str, str] = {}
        for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
            proc = subprocess.run([self.bins[name], "--version"], capture_output=True, text=True, check=False)
            out[name] = (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr) else "?"
        return out

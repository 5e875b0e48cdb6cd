"""The cluster tier: a REAL local control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok) started or reused once per session, the operator running against it as a
subprocess, and one Pod-Security-restricted namespace per test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lepton.cli.devcluster import DevCluster
from lepton.local.trainingjob import free_port
from tests.cluster.kube import Kube

TEST_NS_PREFIX = "lepton-test-"
CONTROL_PLANE = pytest.StashKey[list[str]]()
CHAOS_REPORT = pytest.StashKey[list[str]]()  # what the chaos tier injected and what its watch log found
# Tests need no 10 s backoff and no 60 s checkpoint grace period.
ACTIVATOR_NAMESPACE, ACTIVATOR_SERVICE = "lepton-activator-test", "lepton-activator"  # test_scale_from_zero
FAST = {
    "LEPTON_RESTART_BACKOFF_SECONDS": "1",
    "LEPTON_TERMINATION_GRACE_SECONDS": "1",
    "LEPTON_DISCOVERY_SECONDS": "2",
    "LEPTON_DATA_METRICS_LINGER_SECONDS": "10",
    "LEPTON_ACTIVATOR_SERVICE": f"{ACTIVATOR_NAMESPACE}/{ACTIVATOR_SERVICE}",
}  # a preparation run for real is scraped once more at its end


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster" in str(item.path):
            item.add_marker(pytest.mark.cluster)
    # Tests that restart (part of) the session's cluster run after every other test; chaos (the
    # apiserver alone) before the one restarting everything, after which kwok's stages are gone.
    items.sort(key=lambda item: (item.get_closest_marker("disruptive") is not None,
                                 item.get_closest_marker("chaos") is None))  # fmt: skip


@pytest.fixture(scope="session")
def dev_cluster(request: pytest.FixtureRequest) -> Iterator[DevCluster]:
    """A cluster of its own, created fresh and deleted at the end: state left by an earlier run (or by
    `leptonctl dev up` work) never leaks in. LEPTON_TEST_REUSE_CLUSTER=1 keeps it between runs."""
    reuse = os.environ.get("LEPTON_TEST_REUSE_CLUSTER") == "1"
    cluster = DevCluster(os.environ.get("LEPTON_TEST_CLUSTER", "lepton-test"))
    timings = cluster.up(fresh=not reuse)
    lines = [f"control plane {cluster.name!r}: " + ", ".join(f"{k}={v:.1f}s" for k, v in timings.items())]
    lines += [f"{name}: {version}" for name, version in cluster.component_versions().items()]
    lines += [f"process {name}: pid {pid} {exe}" for name, (pid, exe) in cluster.processes().items()]
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    lines.append(f"running apiserver reports {server}")
    request.config.stash[CONTROL_PLANE] = lines
    print("\n".join(lines), file=sys.stderr)
    yield cluster
    if not reuse:
        cluster.down()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The test log names the real components and versions the cluster tier ran against."""
    for key, title in ((CHAOS_REPORT, "chaos tier"), (CONTROL_PLANE, "control plane under test")):
        lines = config.stash.get(key, None)
        if lines:
            terminalreporter.write_sep("-", title)
            for line in lines:
                terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def kube(dev_cluster: DevCluster) -> Kube:
    return Kube(dev_cluster.bins["kubectl"], dev_cluster.kubeconfig)


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    metrics_url: str
    log: Path

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as rsp:
            return str(rsp.read().decode())


def start_operator(kubeconfig: Path, log: Path, namespaces: str, env: dict[str, str] | None = None) -> OperatorProcess:
    port = free_port()
    environ = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "LEPTON_WATCH_NAMESPACES": namespaces,
        "LEPTON_METRICS_PORT": str(port),
        "LEPTON_METRICS_HOST": "127.0.0.1",
        **(env or {}),
    }
    fh = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "lepton.cli.main", "operator"], env=environ, stdout=fh, stderr=fh)
    ready = f"http://127.0.0.1:{port}/readyz"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"operator exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(ready, timeout=1) as rsp:
                if rsp.status == 200:
                    return OperatorProcess(proc, f"http://127.0.0.1:{port}/metrics", log)
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"operator not ready after 60s:\n{log.read_text()[-3000:]}")


def stop_operator(op: OperatorProcess) -> None:
    op.proc.terminate()
    try:
        op.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        op.proc.kill()


@pytest.fixture(scope="session")
def operator(dev_cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator, out of cluster with admin credentials, watching the test namespaces (a glob)."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = start_operator(dev_cluster.kubeconfig, log, f"{TEST_NS_PREFIX}*", FAST)
    yield op
    stop_operator(op)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace enforcing Pod Security Standards 'restricted'."""
    name = f"{TEST_NS_PREFIX}{uuid.uuid4().hex[:8]}"
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
    )
    yield name
    kube.run("delete", "namespace", name, "--wait=false", check=False)

"""A thin kubectl wrapper for tests: the real client against the real apiserver, JSON in and out."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class KubectlError(RuntimeError):
    def __init__(self, args: list[str], stderr: str) -> None:
        self.stderr = stderr
        super().__init__(f"kubectl {' '.join(args)}: {stderr}")


@dataclass(frozen=True)
class Kube:
    kubectl_bin: str
    kubeconfig: Path
    extra: tuple[str, ...] = ()

    def as_user(self, user: str) -> Kube:
        return Kube(self.kubectl_bin, self.kubeconfig, (*self.extra, f"--as={user}"))

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *self.extra, *args]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise KubectlError(list(args), proc.stderr.strip())
        return proc

    def apply(self, doc: dict[str, Any] | str, namespace: str | None = None) -> None:
        text = doc if isinstance(doc, str) else json.dumps(doc)
        self.run("create", *(["-n", namespace] if namespace else []), "-f", "-", stdin=text)

    def get(self, kind: str, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        return dict(json.loads(self.run(*args).stdout))

    def patch(self, kind: str, name: str, namespace: str, patch: dict[str, Any]) -> None:
        self.run("patch", kind, name, "-n", namespace, "--type=merge", "-p", json.dumps(patch))

    def lease_holder(self, name: str, namespace: str) -> str | None:
        """Who holds the Lease now (None: nobody, or no Lease yet)."""
        proc = self.run("get", "lease", name, "-n", namespace, "-o", "json", check=False)
        return json.loads(proc.stdout)["spec"].get("holderIdentity") if proc.returncode == 0 else None


def eventually(fn: Callable[[], T | None], timeout: float = 30, interval: float = 0.3, what: str = "") -> T:
    """Poll `fn` until it returns something truthy; fail with the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or fn}; last value: {last!r}")

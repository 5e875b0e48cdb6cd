"""Benchmark: the local control plane's cold build, and its cold, warm and reused start times.

    python -m benchmarks.control_plane [--cold-build]

--cold-build builds every binary from scratch into a temporary GOPATH/GOCACHE/LEPTON_CACHE (module
downloads included), as a fresh machine does; it takes minutes. Start times use a separate cluster
name so the developer's cluster is left alone.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.results import record
from lepton.cli.devcluster import DevCluster

ROOT = Path(__file__).resolve().parent.parent


def cold_build() -> tuple[float, str]:
    with tempfile.TemporaryDirectory(prefix="lepton-cold-") as tmp:
        env = {**os.environ, "GOPATH": f"{tmp}/gopath", "GOMODCACHE": f"{tmp}/gopath/pkg/mod",
               "GOCACHE": f"{tmp}/gocache", "LEPTON_CACHE": f"{tmp}/lepton"}  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", str(ROOT / "hack" / "build-binaries.sh")], env=env, capture_output=True,
                              text=True, check=True)  # fmt: skip
        elapsed = time.perf_counter() - t0
        subprocess.run(["chmod", "-R", "u+w", tmp], check=False)  # the module cache is read-only
    # Keep the step and its timing, never this machine's paths.
    steps = [re.sub(r" (->|\(cache:) /\S+\)?", "", line.split("] ", 1)[1])
             for line in proc.stderr.splitlines() if line.startswith("[lepton-build")]  # fmt: skip
    return elapsed, "\n".join(f"    {s}" for s in steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold-build", action="store_true")
    args = parser.parse_args()
    lines = []
    if args.cold_build:
        seconds, steps = cold_build()
        lines.append(f"- cold build of every binary (empty Go module and build caches): **{seconds:.0f} s**")
        lines.append(f"  ```\n{steps}\n  ```")
    cluster = DevCluster("lepton-bench")
    cluster.down()
    cold = cluster.up(nodes=4)
    cluster.kwokctl("stop", "cluster")
    warm = cluster.up(nodes=4)
    reused = cluster.up(nodes=4)
    versions = cluster.component_versions()
    cluster.down()
    lines += [
        f"- cold start (create etcd + apiserver + controller-manager + scheduler + kwok, 5 nodes, CRDs): "
        f"**{cold['cold_start_s'] + cold['nodes_and_crds_s']:.1f} s** ({cold['cold_start_s']:.1f} s to a ready "
        f"apiserver, {cold['nodes_and_crds_s']:.1f} s nodes + CRDs)",
        f"- warm start (stopped cluster started again, state kept): **{warm['total_s']:.1f} s**",
        f"- reuse (already running; what each test session pays): **{reused['total_s']:.1f} s**",
        "- versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()),
    ]
    record(
        "Local control plane: build and start (issue 3)",
        "\n".join(lines),
        "python -m benchmarks.control_plane" + (" --cold-build" if args.cold_build else ""),
    )


if __name__ == "__main__":
    main()

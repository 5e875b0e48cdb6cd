"""Prepare a Dataset on this machine: the data workload the operator's Job runs, as a local process.

The manifest is validated by the same models and the Job rendered by the same `render_job`; its
container's configuration runs with a free metrics port, and its termination message goes to the
run directory, where the summary line is read from. Sources must be local paths, HTTP(S) URLs, S3
locations or hub datasets (a PVC is a cluster's); S3 and hub secrets come from this environment
under the names the Job would have set from its Secrets (LEPTON_SOURCE_<i>_ACCESS_KEY_ID, …).

Whether an earlier run already published this version is the workload's to say: it hashes the
inputs, finds the version and recomputes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from lepton.api.contract import DATA_CONFIG_ENV, DataConfig
from lepton.api.dataset import VERSIONS_DIR, PreparationSummary
from lepton.api.kinds import Dataset
from lepton.local.backend import LocalBackend, LocalProcess, LocalRunError, free_port
from lepton.local.results import run_outputs
from lepton.render.dataset import DataSettings, render_job

CURRENT = "current"  # <output>/current: the newest version, written by the workload
TERMINATION = "termination-log"


def published_dataset(runs_root: Path, name: str, version: str | None) -> tuple[Path, str]:
    """(directory, version) of Dataset `name`'s current (or pinned) version, from its latest local run."""
    for _, root in sorted(run_outputs(runs_root, "Dataset", name), reverse=True):
        current = root / CURRENT
        wanted = version or (current.read_text().strip() if current.is_file() else None)
        if wanted and (root / VERSIONS_DIR / wanted).is_dir():
            return root / VERSIONS_DIR / wanted, wanted
    pinned = f" version {version!r}" if version else ""
    raise LocalRunError(
        f"the data comes from Dataset {name!r}{pinned}, and no local run under {runs_root} published it: "
        "prepare it first (leptonctl run -f <its manifest>), or set data.uri to a local file or directory"
    )


class DatasetBackend(LocalBackend[Dataset]):
    kind = "Dataset"

    def __init__(self, dataset: Dataset, runs_root: Path = Path(".lepton/runs")) -> None:
        spec = dataset.spec
        if spec.suspend:
            raise LocalRunError("spec.suspend is true: a suspended Dataset prepares nothing")
        pvcs = [s for s in spec.sources if s.pvc is not None or (s.request_log and s.request_log.pvc is not None)]
        if spec.output.uri is None or pvcs:
            raise LocalRunError("locally, sources and output must not be PVCs: use uri (a local path)")
        if spec.tokenize is not None and spec.tokenize.tokenizer.uri is None:
            raise LocalRunError("locally, tokenize.tokenizer must be a uri (a local model directory)")
        meta = {"uid": dataset.metadata.uid or "local", "namespace": dataset.metadata.namespace or "default"}
        super().__init__(dataset.model_copy(update={"metadata": dataset.metadata.model_copy(update=meta)}), runs_root)
        job, _ = render_job(self.resource, DataSettings())
        (self.container,) = job["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in self.container["env"] if "value" in e}
        self.config = DataConfig.model_validate_json(env[DATA_CONFIG_ENV])
        self.output = Path(self.config.output_dir)
        self.summary_file: Path | None = None

    def processes(self, run_dir: Path) -> list[LocalProcess]:
        missing = [e["name"] for e in self.container["env"] if "valueFrom" in e and not os.environ.get(e["name"])]
        if missing:
            raise LocalRunError(f"secret-backed env {missing} must be set in your environment to run locally")
        port = free_port()
        self.summary_file = run_dir / TERMINATION
        config = self.config.model_copy(update={"metrics_port": port, "termination_log": str(self.summary_file)})
        env = {DATA_CONFIG_ENV: json.dumps(config.to_wire())}
        argv = [sys.executable, *self.container["command"][1:]]  # the image's python is this one
        return [LocalProcess(self.resource.metadata.name, argv, env, run_dir / "data.log", port)]

    def starting(self, processes: list[LocalProcess]) -> str:
        return f"preparing {len(self.config.sources)} source(s) into {self.output}"

    def _summary(self) -> PreparationSummary | None:
        try:
            return PreparationSummary.model_validate_json(self.summary_file.read_text()) if self.summary_file else None
        except (OSError, ValueError):
            return None

    def succeeded(self, run_dir: Path) -> str:
        summary = self._summary()
        if summary is None or summary.version is None:
            return f"succeeded; logs in {run_dir}"
        where = self.output / VERSIONS_DIR / summary.version
        if summary.reused:
            return f"version {summary.version} was already published in {where}: nothing recomputed"
        rows = summary.rows
        counts = f"{rows.train} train, {rows.validation} validation, {rows.test} test" if rows else "no rows"
        return f"published version {summary.version} ({counts}) in {where}; logs in {run_dir}"

    def start_afresh(self) -> list[str]:
        """Finished shards of an interrupted preparation (published versions stay: they are content-addressed)."""
        staging = self.output / ".staging"
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            return [str(staging)]
        return []

    def interrupted(self) -> str:
        return "interrupted: finished shards are kept; run the same command again to resume"

"""Serve an InferenceService on this machine: the server the operator's Deployment runs, as a local
process on 127.0.0.1, until Ctrl-C.

The manifest is validated by the same models and rendered by the same `render`; the container's
command and its $LEPTON_SERVER_CONFIG run as they are, with only what one machine without a cluster
cannot have translated: the port (8080 when free), the device (the GPU when there is one, else the
CPU), and a model that comes from a TrainingJob (its output in the latest local run of that job).
One replica per role: a canary with a local model runs as a second server on a port of its own
(locally nothing splits traffic between them).
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from lepton.api.common import ModelSource
from lepton.api.contract import SERVER_CONFIG_ENV, SERVER_PORT
from lepton.api.kinds import InferenceService
from lepton.local.backend import LocalBackend, LocalProcess, LocalRunError, free_port
from lepton.local.trainingjob import METADATA
from lepton.render.inferenceservice import ServeResolved, ServeSettings, render


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def trained_model(runs_root: Path, job: str) -> Path:
    """The output of the latest local run of TrainingJob `job` that finished (its model is there)."""
    found: list[tuple[float, Path]] = []
    for manifest in runs_root.glob("*/trainingjob.json") if runs_root.is_dir() else []:
        try:
            doc = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if (doc.get("metadata") or {}).get("name") != job:
            continue
        uri = ((doc.get("spec") or {}).get("output") or {}).get("uri")
        out = Path(str(uri).removeprefix("file://")) if uri else None
        if out is not None and (out / METADATA).is_file():
            found.append((manifest.stat().st_mtime, out))
    if not found:
        raise LocalRunError(
            f"the model comes from TrainingJob {job!r}, and no local run of it under {runs_root} has finished: "
            f"run it first (leptonctl run -f <its manifest>), or set model.uri to a model directory"
        )
    return max(found)[1]


class InferenceServiceBackend(LocalBackend[InferenceService]):
    kind = "InferenceService"
    serves = True

    def __init__(self, svc: InferenceService, runs_root: Path = Path(".lepton/runs")) -> None:
        if svc.spec.suspend:
            raise LocalRunError("spec.suspend is true: a suspended InferenceService serves nothing")
        for role, source in (("model", svc.spec.model), ("canary.model", svc.spec.canary.model if svc.spec.canary
                                                                          else None)):  # fmt: skip
            if source is not None and (source.pvc is not None or source.tuning_study is not None):
                what = "a PVC" if source.pvc is not None else "a TuningStudy"
                raise LocalRunError(f"locally, {role} cannot come from {what}: use uri (a local directory), a "
                                    "hub id or a TrainingJob run locally")  # fmt: skip
        meta = {"uid": svc.metadata.uid or "local", "namespace": svc.metadata.namespace or "default"}
        super().__init__(svc.model_copy(update={"metadata": svc.metadata.model_copy(update=meta)}), runs_root)
        self.urls: list[str] = []
        self.sources: list[str] = []  # models that came from a TrainingJob's local run

    def _resolve(self, source: ModelSource | None, runs_root: Path) -> str | None:
        if source is None or source.training_job is None:
            return None
        return str(trained_model(runs_root, source.training_job.name))

    def processes(self, run_dir: Path) -> list[LocalProcess]:
        spec = self.resource.spec
        resolved = ServeResolved(
            model_uri=self._resolve(spec.model, run_dir.parent),
            canary_uri=self._resolve(spec.canary.model if spec.canary else None, run_dir.parent),
        )
        self.sources = [f"{role} {uri}" for role, uri in (("model from", resolved.model_uri),
                                                            ("canary from", resolved.canary_uri)) if uri]  # fmt: skip
        rendered = render(self.resource, ServeSettings(), resolved)
        out, self.urls = [], []
        for deployment in (c for c in rendered.children if c["kind"] == "Deployment"):
            (container,) = deployment["spec"]["template"]["spec"]["containers"]
            env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
            port = SERVER_PORT if not self.urls and _port_free(SERVER_PORT) else free_port()
            config = json.loads(env[SERVER_CONFIG_ENV]) | {"port": port, "host": "127.0.0.1", "device": "auto"}
            env[SERVER_CONFIG_ENV] = json.dumps(config)
            env.pop("HOME", None)  # the pod's read-only-root layout; locally the user's own
            env["HF_HOME"] = str(run_dir / "cache" / "hf")
            argv = [sys.executable, *container["command"][1:]]  # the image's python: this one
            name = deployment["metadata"]["name"]
            out.append(LocalProcess(name, argv, env, run_dir / f"{name}.log", ready_url=f"http://127.0.0.1:{port}"))
            self.urls.append(f"http://127.0.0.1:{port}")
        return out

    def starting(self, processes: list[LocalProcess]) -> str:
        spec = self.resource.spec
        notes = []
        if spec.replicas not in (None, 1) or spec.autoscaling is not None:
            notes.append("one replica locally")
        if spec.canary is not None:
            notes.append(f"the canary on {self.urls[-1]} (locally nothing splits traffic)")
        notes += self.sources
        extra = f" ({'; '.join(notes)})" if notes else ""
        return f"starting the server for {self.resource.metadata.name!r}{extra}; loading the model…"

    def serving(self, processes: list[LocalProcess]) -> str:
        spec, name = self.resource.spec, self.resource.metadata.name
        base = processes[0].ready_url
        if spec.task == "causal-lm" and "openai" in spec.protocols:
            route, body = "v1/completions", {"model": name, "prompt": "hello", "max_tokens": 16}
        else:
            route = f"v2/models/{name}/infer"
            body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}
        return (
            f"serving {name!r} on {base} (Ctrl-C to stop). Try:\n  curl -s {base}/{route} "
            f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'"
        )

    def succeeded(self, run_dir: Path) -> str:
        return f"stopped serving; logs in {run_dir}"

    def interrupted(self) -> str:
        return "stopped serving"

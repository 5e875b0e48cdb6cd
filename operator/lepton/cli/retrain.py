"""`leptonctl retrain JOB`: train again on a Dataset's newer version, as a new TrainingJob.

A TrainingJob keeps the Dataset version it started with, so a retrain is a NEW job: the source's spec
under `metadata.generateName: <JOB>-retrain-`, its labels, and the annotations `lepton.ai/retrain-of`
and `lepton.ai/dataset-version` for lineage. Its output (and an explicit checkpoint location) moves to
a `retrain-<UTC stamp>` directory under the source's, so it neither overwrites the model the source
wrote (which a service may be serving) nor resumes from the source's checkpoints. With
`--refresh-dataset` the Dataset is prepared again first (a new `spec.refresh`), and its outcome
waited for. It is created with POST (`kubectl create`), never applied: nothing is overwritten.

Like `leptonctl tune dashboard` it drives your kubectl (env KUBECTL overrides; your credentials, your
RBAC), and each failure is one line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import yaml

from lepton.api.conditions import ConditionType, Reason
from lepton.api.constants import Phase

KUBECTL_ENV = "KUBECTL"  # which kubectl to run (default: kubectl on PATH)
REQUEST_TIMEOUT = "15s"
POLL_SECONDS = 2.0  # between reads of the Dataset while it is prepared
RETRAIN_OF = "lepton.ai/retrain-of"
DATASET_VERSION = "lepton.ai/dataset-version"
RETRAIN_INFIX = "-retrain-"
MAX_NAME = 50  # TrainingJob names (they become pod host names); generateName adds 5 characters
_RETRAIN_SUFFIX = re.compile(r"-retrain-[a-z0-9]{5}$")  # a name generateName gave an earlier retrain
_RETRAIN_LEAF = re.compile(r"retrain-\d{8}-\d{6}")  # an earlier retrain's output directory
# Labels a GitOps tool tracks its own objects by: a copy carrying them would be pruned as not in Git.
_TRACKING_LABELS = ("app.kubernetes.io/instance",)
_TRACKING_PREFIXES = ("argocd.argoproj.io/", "kustomize.toolkit.fluxcd.io/", "helm.toolkit.fluxcd.io/")


class RetrainError(RuntimeError):
    """What the user must know, in one line (exit code 1)."""


def add_parser(sub: Any) -> None:
    """`retrain`, under leptonctl's subcommands."""
    p = sub.add_parser(
        "retrain",
        help="train again on a Dataset's newer version: a new TrainingJob from an existing one",
        description="Create a new TrainingJob from JOB (its spec, labels; generateName JOB-retrain-), which "
        "reads the newest version of the Dataset JOB's data.datasetRef names (it must pin no version). Its "
        "output and checkpoints go to a retrain-<UTC stamp> directory under JOB's. With --refresh-dataset "
        "the Dataset is prepared again first (spec.refresh) and its outcome waited for. When the Dataset's "
        "version is the one JOB trained on, nothing is created (exit 0) unless --force. Exit codes: 0 done "
        "or nothing new, 1 refused or failed.",
    )
    p.add_argument("job", help="the TrainingJob to train again")
    p.add_argument("-n", "--namespace", help="its namespace (default: the context's)")
    p.add_argument("--refresh-dataset", action="store_true",
                   help="prepare the Dataset again first (a new spec.refresh) and wait for its outcome")  # fmt: skip
    p.add_argument("--wait-seconds", type=int, default=1800,
                   help="how long to wait for that preparation (default 1800)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="retrain even when the Dataset has no new version")
    p.add_argument("--dry-run", action="store_true",
                   help="print the new TrainingJob (YAML); change nothing on the cluster")  # fmt: skip
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    if args.wait_seconds < 1:
        return _fail(f"--wait-seconds {args.wait_seconds}: at least 1")
    try:
        return retrain(args.job, args.namespace, refresh=args.refresh_dataset, wait_seconds=args.wait_seconds,
                       force=args.force, dry_run=args.dry_run)  # fmt: skip
    except RetrainError as exc:
        return _fail(exc)


def _fail(message: object) -> int:
    print(f"leptonctl retrain: {message}", file=sys.stderr)
    return 1


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- kubectl --------------------------------------------------------------------------------------
def kubectl() -> str:
    wanted = os.environ.get(KUBECTL_ENV, "kubectl")
    found = shutil.which(wanted)
    if found is None:
        raise RetrainError(f"{wanted} not found: retrain drives kubectl (set {KUBECTL_ENV} to another one)")
    return found


def _run(binary: str, argv: list[str], what: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """kubectl ARGV; RetrainError with kubectl's own conclusion unless NotFound (the caller decides)."""
    proc = subprocess.run([binary, *argv, f"--request-timeout={REQUEST_TIMEOUT}"], input=stdin,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode == 0 or "(NotFound)" in _why(proc):
        return proc
    why = _why(proc)
    if "doesn't have a resource type" in why:
        raise RetrainError(f"the cluster has no {argv[1]} kind (are Lepton's CRDs installed?): {why[:300]}")
    raise RetrainError(f"cannot {what}: {why[:400]}")


def _why(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"  # kubectl's conclusion comes last


def _scope(namespace: str | None) -> list[str]:
    return ["-n", namespace] if namespace else []


def _json(proc: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    try:
        found: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise RetrainError(f"cannot {what}: kubectl answered no JSON ({proc.stdout.strip()[:200]!r})") from None
    return found


def _get(binary: str, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
    what = f"ask the cluster (kubectl get {kind} {name})"
    proc = _run(binary, ["get", kind, name, *_scope(namespace), "-o", "json"], what)
    return _json(proc, what) if proc.returncode == 0 else None


# --- the decision ---------------------------------------------------------------------------------
def retrain(job: str, namespace: str | None, *, refresh: bool, wait_seconds: int, force: bool,
            dry_run: bool) -> int:  # fmt: skip
    binary = kubectl()
    source = _get(binary, "trainingjob", job, namespace)
    if source is None:
        where = f"namespace {namespace}" if namespace else "the current namespace"
        raise RetrainError(f"no TrainingJob {job} in {where} (another namespace: -n)")
    ns = str(source["metadata"].get("namespace") or namespace or "default")
    ref = ((source.get("spec") or {}).get("data") or {}).get("datasetRef")
    if not ref:
        raise RetrainError(f"{ns}/{job} reads no Dataset: nothing new to train on (retrain needs "
                           "data.datasetRef naming a Dataset)")  # fmt: skip
    if ref.get("version"):
        raise RetrainError(f"{ns}/{job} pins Dataset {ref['name']} to version {ref['version']}: it would train "
                           "on the same data again; remove data.datasetRef.version")  # fmt: skip
    name = str(ref["name"])
    dataset = _get(binary, "dataset", name, ns)
    if dataset is None:
        raise RetrainError(f"{ns}/{job} reads Dataset {name}, which is not in namespace {ns}")
    status = source.get("status") or {}
    trained = status.get("datasetVersion") or (status.get("lineage") or {}).get("datasetVersion")
    stamp = _utcnow().strftime("%Y%m%d-%H%M%S")
    version = (dataset.get("status") or {}).get("version")
    if refresh:
        if (dataset.get("spec") or {}).get("suspend"):
            raise RetrainError(f"Dataset {ns}/{name} is suspended: no preparation runs (spec.suspend: false)")
        if dry_run:
            _say(f"--dry-run: Dataset {ns}/{name} is not prepared again (it would get spec.refresh: "
                 f"retrain-{stamp}); the version below is its current one")  # fmt: skip
        else:
            version = prepare(binary, name, ns, f"retrain-{stamp}", wait_seconds=wait_seconds, before=version)
    if not version:
        phase = (dataset.get("status") or {}).get("phase") or "unknown"
        raise RetrainError(f"Dataset {ns}/{name} has no version yet (phase {phase}): wait for it "
                           f"(kubectl wait --for=condition=Ready dataset/{name} -n {ns}), or pass "
                           "--refresh-dataset")  # fmt: skip
    if version == trained and not force and not (dry_run and refresh):
        print(f"{ns}/{job} trained on version {version} of Dataset {name} already: no new data, nothing created "
              "(--force to train again anyway)")  # fmt: skip
        return 0
    manifest = retrain_manifest(source, ns, str(version), stamp)
    if dry_run:
        print(yaml.safe_dump(manifest, sort_keys=False), end="")
        return 0
    what = f"create the new TrainingJob (kubectl create -n {ns})"
    proc = _run(binary, ["create", "-n", ns, "-f", "-", "-o", "json"], what, stdin=json.dumps(manifest))
    if proc.returncode != 0:
        raise RetrainError(f"cannot {what}: {_why(proc)[:400]}")
    created = str(_json(proc, what)["metadata"]["name"])
    was = f"; {job} trained on {trained}" if trained and trained != version else ""
    print(f"created TrainingJob {ns}/{created} from {job}: Dataset {name} version {version}{was}")
    print(f"its model goes to {_location(manifest['spec']['output'])}")
    print(f"next: kubectl get trainingjob {created} -n {ns} -w")
    return 0


def prepare(binary: str, name: str, ns: str, value: str, *, wait_seconds: int, before: str | None) -> str:
    """Set the Dataset's spec.refresh to VALUE and wait for the preparation it starts; its version."""
    what = f"patch Dataset {ns}/{name} (kubectl patch)"
    body = json.dumps({"spec": {"refresh": value}})
    proc = _run(binary, ["patch", "dataset", name, "-n", ns, "--type=merge", "-p", body, "-o", "json"], what)
    if proc.returncode != 0:
        raise RetrainError(f"cannot {what}: {_why(proc)[:400]}")
    generation = int(_json(proc, what)["metadata"].get("generation") or 0)
    _say(f"Dataset {ns}/{name}: spec.refresh {value}; waiting up to {wait_seconds}s for its preparation")
    deadline = time.monotonic() + wait_seconds
    while True:
        dataset = _get(binary, "dataset", name, ns)
        if dataset is None:
            raise RetrainError(f"Dataset {ns}/{name} was deleted while it was prepared")
        done = _outcome(dataset, generation)
        if done is not None:
            break
        if time.monotonic() >= deadline:
            status = dataset.get("status") or {}
            now = _condition(status, ConditionType.RECONCILING).get("message") or f"phase {status.get('phase')}"
            raise RetrainError(f"Dataset {ns}/{name} not prepared within {wait_seconds}s ({now}); it goes on: "
                               f"kubectl get dataset {name} -n {ns} -w, then retrain without "
                               "--refresh-dataset")  # fmt: skip
        time.sleep(POLL_SECONDS)
    phase, status = done
    if phase != Phase.READY:
        cond = _condition(status, ConditionType.STALLED) or _condition(status, ConditionType.READY)
        reason = cond.get("reason") or phase
        raise RetrainError(f"Dataset {ns}/{name} {phase} ({reason}): {cond.get('message') or 'no message'}")
    version = str(status.get("version") or "")
    ready = _condition(status, ConditionType.READY)
    if version == before:
        print(f"Dataset {ns}/{name} unchanged: version {version} reused (no new data since the last preparation)")
    elif status.get("reused") or ready.get("reason") == Reason.VERSION_REUSED:
        print(f"Dataset {ns}/{name}: version {version} (was {before}), published before: nothing recomputed")
    else:
        print(f"Dataset {ns}/{name} prepared again: new version {version} (was {before or 'none'})")
    return version


def _outcome(dataset: dict[str, Any], generation: int) -> tuple[str, dict[str, Any]] | None:
    """(phase, status) once the operator has finished the preparation of GENERATION; None before.

    Ready alone is not enough: a Dataset stays Ready with its old version while it waits for a
    reference or while a preparation runs (Reconciling=True); Suspended and Invalid end it too."""
    status = dataset.get("status") or {}
    if int(status.get("observedGeneration") or 0) < generation:
        return None
    phase = str(status.get("phase") or "")
    if _condition(status, ConditionType.RECONCILING).get("status") == "True":
        return None
    if phase in (Phase.READY, Phase.FAILED, Phase.SUSPENDED, Phase.INVALID):
        return phase, status
    return None


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            found: dict[str, Any] = cond
            return found
    return {}


# --- the new TrainingJob --------------------------------------------------------------------------
def retrain_manifest(source: dict[str, Any], ns: str, version: str, stamp: str) -> dict[str, Any]:
    """The source's spec and labels under a generated name, with a new output directory; nothing the
    apiserver or a controller wrote (status, uid, resourceVersion, managedFields, ownerReferences, …)."""
    meta = source["metadata"]
    job = str(meta["name"])
    base = _RETRAIN_SUFFIX.sub("", job)[: MAX_NAME - 5 - len(RETRAIN_INFIX)].rstrip("-")
    labels = {k: v for k, v in (meta.get("labels") or {}).items()
              if k not in _TRACKING_LABELS and not k.startswith(_TRACKING_PREFIXES)}  # fmt: skip
    spec = json.loads(json.dumps(source["spec"]))  # a deep copy
    leaf = f"retrain-{stamp}"
    spec["output"] = _moved(spec["output"], leaf)
    checkpoint = spec.get("checkpoint") or {}
    if checkpoint.get("location"):
        spec["checkpoint"] = {**checkpoint, "location": _moved(checkpoint["location"], leaf)}
    metadata: dict[str, Any] = {"generateName": base + RETRAIN_INFIX, "namespace": ns}
    if labels:
        metadata["labels"] = labels
    metadata["annotations"] = {RETRAIN_OF: job, DATASET_VERSION: version}
    return {"apiVersion": source.get("apiVersion", "lepton.ai/v1alpha1"), "kind": "TrainingJob",
            "metadata": metadata, "spec": spec}  # fmt: skip


def _moved(location: dict[str, Any], leaf: str) -> dict[str, Any]:
    """LOCATION/LEAF; an earlier retrain's own leaf is replaced, so retrains stay siblings."""

    def under(path: str) -> str:
        head, _, last = path.rstrip("/").rpartition("/")
        root = head if _RETRAIN_LEAF.fullmatch(last) else path.rstrip("/")
        return f"{root}/{leaf}" if root else leaf

    if location.get("pvc"):
        pvc = location["pvc"]
        return {**location, "pvc": {**pvc, "path": under(str(pvc.get("path") or ""))}}
    return {**location, "uri": under(str(location.get("uri") or ""))}


def _location(location: dict[str, Any]) -> str:
    if location.get("pvc"):
        return f"pvc://{location['pvc']['claimName']}/{location['pvc'].get('path') or ''}".rstrip("/")
    return str(location.get("uri"))

"""`leptonctl` entry point. Arguments are parsed in main(), never at import time."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lepton import __version__
from lepton.cli import crds, manifests, retrain, tune
from lepton.cli.devcluster import DevCluster, DevClusterError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leptonctl",
        description="Lepton: datasets, distributed training, tuning and serving on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"leptonctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("crds", help="write the CRDs generated from the API models, or check them for drift")
    p.add_argument("--out", type=Path, action="append", help="directory to write into (repeatable); default crds/")
    p.add_argument("--check", action="store_true", help="fail if the files differ from a fresh generation")
    p.add_argument("--stdout", action="store_true", help="print all CRDs as one YAML stream")
    p.set_defaults(func=crds.command)

    p = sub.add_parser(
        "run",
        help="run a manifest on this machine as local processes (no cluster needed)",
        description="Validate one resource, render the pods the operator would create and run their commands "
        "as local processes, with a progress line and a run directory (one log per pod). Ctrl-C stops them "
        "after a checkpoint; the same command resumes. A job whose model is already there is not run again. "
        "Exit codes: 0 succeeded or already finished, 1 the workload failed, 2 the manifest cannot run here, "
        "130 interrupted.",
    )
    p.add_argument("-f", "--filename", type=Path, required=True,
                   help="a manifest; a folder or a file of several resources runs each after what it references "
                   "(a server then answers one sample request and stops)")  # fmt: skip
    p.add_argument("--runs-dir", type=Path, default=Path(".lepton/runs"), help="where run directories go")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start again from the beginning instead of resuming or reporting an earlier run: for a "
        "TrainingJob, delete its checkpoints (step-* in its checkpoint directory) and the "
        "lepton-training.json and train_log.jsonl in its output directory first (the model files there are "
        "replaced when the run finishes)",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser("validate", help="validate manifests with the same rules the apiserver enforces")
    p.add_argument("-f", "--filename", type=Path, action="append", required=True,
                   help="file or directory (searched recursively for *.yaml and *.yml); repeatable")  # fmt: skip
    p.set_defaults(func=manifests.validate_command)

    dev = sub.add_parser("dev", help="a real local control plane (etcd, apiserver, scheduler, kwok GPU nodes)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="ACTION")
    p = dev_sub.add_parser("up", help="start or reuse the cluster, add fake GPU nodes, install the CRDs")
    p.add_argument("--nodes", type=int, default=4, help="fake GPU nodes (default 4)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="nvidia.com/gpu per node (default 8)")
    p.set_defaults(func=_dev_up)
    p = dev_sub.add_parser("down", help="stop and delete the cluster")
    p.set_defaults(func=_dev_down)
    p = dev_sub.add_parser("status", help="whether the cluster runs, its version and nodes")
    p.set_defaults(func=_dev_status)
    for q in (dev, *dev_sub.choices.values()):
        q.add_argument("--name", default="lepton", help="cluster name (default lepton)")

    tune.add_parser(sub)
    retrain.add_parser(sub)

    p = sub.add_parser("operator", help="run the operator against the cluster in KUBECONFIG / in-cluster")
    p.add_argument("-n", "--namespace", action="append", default=[], help="watch only this namespace (repeatable)")
    p.set_defaults(func=_operator)

    p = sub.add_parser(
        "activator",
        help="hold requests for InferenceServices at zero replicas, scale them up, forward once a model is loaded",
    )
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8012, help="port (default 8012)")
    p.set_defaults(func=_activator)
    return parser


def _activator(args: argparse.Namespace) -> int:
    import logging

    from lepton.controller.activator import main as activator

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return activator(args.host, args.port)


def _operator(args: argparse.Namespace) -> int:
    import os

    from lepton.controller.runner import run
    from lepton.controller.settings import Settings, SettingsError

    env = dict(os.environ)
    if args.namespace:
        env["LEPTON_WATCH_NAMESPACES"] = ",".join(args.namespace)
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        print(f"leptonctl operator: {exc}", file=sys.stderr)
        return 2
    run(settings)
    return 0


def _run(args: argparse.Namespace) -> int:
    from lepton.api.validation import ManifestError, parse
    from lepton.local import BACKENDS, LocalRunError, RunOptions, run
    from lepton.local.pipeline import run_pipeline

    def fail(message: object) -> int:
        print(f"leptonctl run: {message}", file=sys.stderr)
        return 2

    files = manifests.yaml_files(args.filename)
    try:
        docs = [(path, doc) for path in files for doc in manifests.read_documents(path)]
    except manifests.ManifestReadError as exc:
        return fail(exc)
    if not docs:
        return fail(
            f"no manifests found in {args.filename}" if args.filename.is_dir() else f"no resource in {args.filename}"
        )
    resources = []
    for path, doc in docs:
        name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
        where = str(path) if len(docs) == 1 else f"{path} ({doc.get('kind')} {name!r})"
        try:
            resources.append(parse(doc))
        except ManifestError as exc:
            return fail(f"{where}: {exc}")
    for resource in resources:
        if resource.kind not in BACKENDS:
            print(f"leptonctl run does not run {resource.kind} yet (it runs {', '.join(BACKENDS)}); "
                  "on a cluster: kubectl apply -f", file=sys.stderr)  # fmt: skip
            return 2

    def echo(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    options = RunOptions(args.runs_dir, echo, tty=sys.stderr.isatty(), fresh=args.fresh)
    try:
        if len(resources) > 1:
            return run_pipeline(resources, BACKENDS, options)
        return run(BACKENDS[resources[0].kind](resources[0], args.runs_dir), options)
    except LocalRunError as exc:
        return fail(exc)


def _dev(args: argparse.Namespace) -> DevCluster:
    return DevCluster(args.name)


def _dev_up(args: argparse.Namespace) -> int:
    timings = _dev(args).up(nodes=args.nodes, gpus_per_node=args.gpus_per_node)
    print(" ".join(f"{k}={v:.1f}" for k, v in timings.items()))
    return 0


def _dev_down(args: argparse.Namespace) -> int:
    _dev(args).down()
    return 0


def _dev_status(args: argparse.Namespace) -> int:
    info = _dev(args).status()
    for key, value in info.items():
        print(f"{key}: {value}")
    return 0 if info["healthy"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DevClusterError as exc:
        print(f"leptonctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("leptonctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

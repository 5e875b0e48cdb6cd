"""`python -m lepton.workloads.trainer` (under torchrun): read the TrainerConfig and train."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from lepton.api.contract import TRAINER_CONFIG_ENV, TrainerConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lepton.workloads.trainer",
        description=f"Train a transformers model with torchrun. The configuration (a TrainerConfig JSON document) "
        f"comes from --config or the {TRAINER_CONFIG_ENV} environment variable.",
    )
    parser.add_argument("--config", type=Path, help="TrainerConfig JSON file")
    args = parser.parse_args(argv)
    text = args.config.read_text() if args.config else os.environ.get(TRAINER_CONFIG_ENV)
    if not text:
        parser.error(f"no configuration: pass --config or set {TRAINER_CONFIG_ENV}")
    try:
        config = TrainerConfig.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in exc.errors())
        print(f"[trainer] error: invalid trainer configuration: {problems}", file=sys.stderr)
        return 2
    from lepton.workloads.trainer.data import TrainerError  # torch loads only once the config is valid
    from lepton.workloads.trainer.train import run

    try:
        return run(config)
    except TrainerError as exc:
        print(f"[trainer] error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())

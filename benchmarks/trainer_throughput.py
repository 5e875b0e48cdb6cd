"""P2: the trainer's samples/s against a hand-written plain DDP loop, same model, data and machine.

Both run under a real 2-process torchrun (gloo, CPU) and do the same work: the same hyperparameters
(AdamW learning rate and weight decay, clipping norm, sequence length, seed, passed to the baseline from
the trainer's own config), the same seeded data order (the trainer's per-epoch permutation, written out
in the baseline and checked equal here), dropout on. Each side reports the optimizer steps and samples it
did; the script stops if they differ from each other or from --steps, or if the two sides' last losses
differ (same weights, samples, order and dropout masks give the same loss).

The runs are paired: each of --repeats pairs runs the trainer and the baseline back to back, the order
alternating (trainer first in pair 1, baseline first in pair 2, ...), so slow drift of the shared machine
falls on both sides. The result is the geometric mean of the per-pair ratios trainer / baseline with its
95% confidence interval (Student's t on their logarithms), their spread, and every pair listed. The
trainer's time excludes its one checkpoint write (reported apart). With --fsdp the trainer with strategy
fsdp runs after each pair, for information.

    python -m benchmarks.trainer_throughput --steps 1000 --repeats 10 --fsdp
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from benchmarks.plain_ddp import epoch_order as baseline_order
from benchmarks.results import record
from benchmarks.stats import cv, ratio_estimate
from lepton.workloads.trainer.data import epoch_order as trainer_order
from lepton.workloads.trainer.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "tickets.jsonl"
PROCS = 2
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={PROCS}",
            "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
GOAL = 0.97
# Both sides start from the same weights (same seed), see the same samples in the same order and draw the
# same dropout masks, so their last losses agree to float precision (they come out equal). A weight decay
# of 0.0 instead of 0.01 moves the last loss of a 40-step run by 0.2%, another data order by far more.
LOSS_TOLERANCE = 1e-4


def hyperparameters(steps: int, batch: int) -> dict[str, Any]:
    """The trainer's hyperparameters; the baseline is given the same values."""
    return {"learningRate": 0.003, "batchSize": batch, "maxSteps": steps, "maxSeqLength": 48,
            "lrScheduler": "constant", "seed": 1, "weightDecay": 0.01, "maxGradNorm": 1.0}  # fmt: skip


@dataclass
class Run:
    samples_per_second: float
    steps: int
    samples: int
    final_loss: float
    rows: int
    wall: float  # the whole torchrun, start-up included
    checkpoint_seconds: float = 0.0


def _torchrun(args: list[str], what: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.perf_counter()
    proc = subprocess.run([*TORCHRUN, *args], env=ENV, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return proc, wall


def trainer_run(model: Path, work: Path, hp: dict[str, Any], strategy: str = "ddp") -> Run:
    config = {
        "job": "bench/p2", "task": "causal-lm", "modelPath": str(model), "strategy": strategy,
        "data": {"path": str(DATA)}, "backend": "gloo", "metricsPort": 0, "hyperparameters": hp,
        "checkpointDir": str(work / "ckpt"), "checkpointEverySteps": hp["maxSteps"], "outputDir": str(work / "out"),
        "resume": "none",
    }  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(config))
    _, wall = _torchrun(
        ["-m", "lepton.workloads.trainer", "--config", str(work / "config.json")], f"trainer ({strategy})"
    )
    meta = json.loads((work / "out" / "lepton-training.json").read_text())
    logged = len((work / "out" / "train_log.jsonl").read_text().splitlines())
    if logged != meta["steps"]:
        raise SystemExit(f"trainer ({strategy}): metadata says {meta['steps']} steps, its log has {logged}")
    rate = float(meta["samples_per_second"])
    return Run(samples_per_second=rate, steps=int(meta["steps"]), samples=round(rate * float(meta["train_seconds"])),
               final_loss=float(meta["final_loss"]), rows=int(meta["train_rows"]), wall=wall,
               checkpoint_seconds=float(meta["checkpoint_seconds"]))  # fmt: skip


def baseline_run(model: Path, hp: dict[str, Any]) -> Run:
    proc, wall = _torchrun([str(ROOT / "benchmarks" / "plain_ddp.py"), str(model), str(DATA), str(hp["maxSteps"]),
                            str(hp["batchSize"]), "--learning-rate", str(hp["learningRate"]),
                            "--weight-decay", str(hp["weightDecay"]), "--max-grad-norm", str(hp["maxGradNorm"]),
                            "--max-length", str(hp["maxSeqLength"]), "--seed", str(hp["seed"])],
                           "plain DDP loop")  # fmt: skip
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    rate, steps, samples = float(out["samples_per_second"]), int(out["steps"]), int(out["samples"])
    return Run(rate, steps, samples, final_loss=float(out["final_loss"]), rows=int(out["rows"]), wall=wall)


def check_same_work(trainer: Run, baseline: Run, steps: int, batch: int, label: str, *, loss: bool = True) -> None:
    """Fail loudly unless both sides did exactly the optimizer steps and samples asked for, on the same rows,
    and (`loss`) ended at the same loss."""
    want = steps * batch * PROCS
    problems = [f"{side} did {r.steps} steps / {r.samples} samples (asked: {steps} / {want})"
                for side, r in (("trainer", trainer), ("baseline", baseline))
                if (r.steps, r.samples) != (steps, want)]  # fmt: skip
    if trainer.rows != baseline.rows:
        problems.append(f"trainer trained on {trainer.rows} rows, baseline on {baseline.rows}")
    if loss and abs(trainer.final_loss - baseline.final_loss) > LOSS_TOLERANCE * max(abs(baseline.final_loss), 1e-9):
        problems.append(f"last losses differ: trainer {trainer.final_loss:.4f}, baseline {baseline.final_loss:.4f}")
    if problems:
        raise SystemExit(f"P2 {label}: the two sides did not do the same work: " + "; ".join(problems))


def check_same_order(rows: int) -> None:
    for epoch in range(-1, 4):
        if baseline_order(rows, 1, epoch) != trainer_order(rows, 1, epoch):
            raise SystemExit(f"plain_ddp.epoch_order differs from the trainer's (epoch {epoch})")


@dataclass
class Pair:
    first: str
    trainer: Run
    baseline: Run
    fsdp: Run | None

    @property
    def ratio(self) -> float:
        return self.trainer.samples_per_second / self.baseline.samples_per_second


def verdict(low: float, high: float) -> str:
    if math.isnan(low):
        return "one pair gives no interval: run more pairs"
    if low >= GOAL:
        return f"met: the whole interval is at or above {GOAL}x"
    if high < GOAL:
        return f"missed: the whole interval is below {GOAL}x"
    return f"not settled at this many pairs: the interval straddles {GOAL}x"


def report(args: argparse.Namespace, pairs: list[Pair]) -> str:
    est = ratio_estimate([p.ratio for p in pairs])
    base = [p.baseline.samples_per_second for p in pairs]
    trn = [p.trainer.samples_per_second for p in pairs]
    rows, samples = pairs[0].trainer.rows, pairs[0].trainer.samples
    hp = hyperparameters(args.steps, args.batch)
    gap = max(abs(p.trainer.final_loss - p.baseline.final_loss) / abs(p.baseline.final_loss) for p in pairs)
    lines = [
        f"Tiny GPT-2 (2 layers, 64 wide), {rows} ticket rows, {PROCS} processes x batch {args.batch}, "
        f"{args.steps} optimizer steps ({samples} samples, {samples / rows:.1f} epochs) per run, gloo on CPU; "
        f"torch {torch.__version__}, transformers {transformers.__version__}.",
        f"Same work on both sides: AdamW lr {hp['learningRate']}, weight decay {hp['weightDecay']}, clipping at "
        f"{hp['maxGradNorm']}, constant LR, max {hp['maxSeqLength']} tokens, dropout on, seed {hp['seed']}; the "
        "trainer's data order (a seeded permutation of the rows per epoch) on both sides, checked equal. Every run "
        f"did {args.steps} steps and {samples} samples on both sides (checked), and in every pair the two sides' "
        f"last losses agree within a relative {LOSS_TOLERANCE:g} (checked; largest difference {gap:.1e}).",
        "",
        f"{len(pairs)} pairs; in each the trainer and the baseline ran back to back, the order alternating. "
        "Ratio = trainer samples/s / baseline samples/s within a pair; below, their geometric mean with a 95% "
        "confidence interval (Student's t on the log ratios), then the spread of the ratios themselves.",
        "",
        f"- **trainer / baseline: {est.interval()}**; {est.spread()}",
        f"- goal >= {GOAL}x: {verdict(est.low, est.high)}",
        f"- baseline: median {statistics.median(base):.0f} samples/s, run-to-run cv {cv(base):.1%}; "
        f"trainer: median {statistics.median(trn):.0f} samples/s, cv {cv(trn):.1%}",
        f"- the trainer's time excludes its one checkpoint write "
        f"({statistics.median(p.trainer.checkpoint_seconds for p in pairs):.2f} s median)",
    ]
    fsdp = [p.fsdp.samples_per_second for p in pairs if p.fsdp is not None]
    if fsdp:
        fe = ratio_estimate([p.fsdp.samples_per_second / p.baseline.samples_per_second for p in pairs if p.fsdp])
        lines.append(f"- for information, the trainer with `strategy: fsdp` (run after each pair): median "
                     f"{statistics.median(fsdp):.0f} samples/s, {fe.interval()} of the pair's baseline")  # fmt: skip
    fsdp_head, fsdp_rule = (" fsdp samples/s |", "---|") if fsdp else ("", "")
    lines += [
        "",
        f"| pair | first | baseline samples/s | trainer samples/s | ratio | last loss baseline / trainer | "
        f"wall s baseline / trainer |{fsdp_head}",
        f"|---|---|---|---|---|---|---|{fsdp_rule}",
    ]
    for i, p in enumerate(pairs, 1):
        extra = f" {p.fsdp.samples_per_second:.0f} |" if p.fsdp else ""
        lines.append(f"| {i} | {p.first} | {p.baseline.samples_per_second:.0f} | {p.trainer.samples_per_second:.0f} | "
                     f"{p.ratio:.3f} | {p.baseline.final_loss:.6f} / {p.trainer.final_loss:.6f} | "
                     f"{p.baseline.wall:.1f} / {p.trainer.wall:.1f} |{extra}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10, help="pairs (trainer + baseline back to back)")
    parser.add_argument("--fsdp", action="store_true", help="also run the trainer with strategy fsdp after each pair")
    args = parser.parse_args()
    hp = hyperparameters(args.steps, args.batch)
    pairs: list[Pair] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_model(Path(tmp) / "model", DATA)
        for i in range(args.repeats):
            trainer_first = i % 2 == 0
            runs: dict[str, Run] = {}
            for side in ("trainer", "baseline") if trainer_first else ("baseline", "trainer"):
                runs[side] = (
                    trainer_run(model, Path(tmp) / f"t{i}", hp) if side == "trainer" else baseline_run(model, hp)
                )
            check_same_work(runs["trainer"], runs["baseline"], args.steps, args.batch, f"pair {i + 1}")
            if i == 0:
                check_same_order(runs["trainer"].rows)
            fsdp = trainer_run(model, Path(tmp) / f"f{i}", hp, "fsdp") if args.fsdp else None
            if fsdp is not None:
                check_same_work(fsdp, runs["baseline"], args.steps, args.batch, f"pair {i + 1}, fsdp", loss=False)
            pair = Pair("trainer" if trainer_first else "baseline", runs["trainer"], runs["baseline"], fsdp)
            pairs.append(pair)
            print(f"pair {i + 1}/{args.repeats} ({pair.first} first): baseline "
                  f"{pair.baseline.samples_per_second:.0f}, trainer {pair.trainer.samples_per_second:.0f} samples/s, "
                  f"ratio {pair.ratio:.3f}" + (f", fsdp {fsdp.samples_per_second:.0f}" if fsdp else ""),
                  file=sys.stderr, flush=True)  # fmt: skip
    command = (
        f"python -m benchmarks.trainer_throughput --steps {args.steps} --batch {args.batch} --repeats {args.repeats}"
    )
    record("P2 trainer throughput (issue 4)", report(args, pairs), command + (" --fsdp" if args.fsdp else ""))


if __name__ == "__main__":
    main()

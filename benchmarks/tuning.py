"""P4 tuner: a TuningStudy against a plain Optuna loop, the time pruning saves, trial throughput on the
control plane, and the tuner's suggestion latency at 1,000 trials.

(a) study wall time, same sampler (tpe), seed, search space and budget, one trial at a time, at several trial
    lengths (what a trial costs beyond its training is fixed, so short trials show it most). Three sides,
    the order rotating each round: `leptonctl run -f` (the local backend: tuner process, journal, each
    trial a torchrun TrainingJob run), and benchmarks/tuning_baseline.py, a plain Optuna loop
    (optuna.create_study in memory + ask/tell, the same sampler built by the tuner's own mapping) whose
    trials run either the same torchrun command (`torchrun`) or the trainer's training function in the
    loop's process (`inprocess`). Goal: Lepton >= 0.8x the loop's trials/hour.
(b) pruning: the same study (longer trials, evaluations as they train) with pruner none and median, the
    order alternating: sum of trial seconds (ask to tell, from the journal), best value of each, and
    whether they are equal. Goal: >= 30% of the trial time saved at an equal best value.
(c) on the real local control plane (a dev cluster of its own, deleted after): S studies x T trials at
    parallelism P submitted at once; TrainingJobs created per second and the most trial pods running at
    once (goal: S x P = 200, against Katib's 160). Real tuners, trials ended by kwok's fake runtime.
(d) suggestion latency of tpe, cmaes and gp with 1,000 trials in the study (a real tuner process).

Each part writes its own section of RESULTS.md (so one part can be run again alone).

    python -m benchmarks.tuning --rounds 3 --prune-rounds 2
    python -m benchmarks.tuning --skip-cluster --no-record --rounds 1 --trials 2 --steps 20,40 \\
        --prune-rounds 1 --prune-steps 60
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks import tuning_cluster, tuning_suggest
from benchmarks.results import record
from benchmarks.stats import estimate, ratio_estimate
from benchmarks.tuning_local import StudyRun, StudyShape, run_side, same6, same_trials

ROOT = Path(__file__).resolve().parent.parent
GOAL_RATE, GOAL_SAVED = 0.8, 0.30
SIDES = ("lepton", "torchrun", "inprocess")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def versions() -> str:
    import optuna
    import torch
    import transformers

    try:
        import optuna_dashboard  # type: ignore[import-untyped]

        dashboard = f", optuna-dashboard {optuna_dashboard.__version__}"
    except ImportError:
        dashboard = ""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    # RESULTS.md aside: the parts of this very run write into it one after the other.
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/RESULTS.md")
    commit = (git("rev-parse", "--short", "HEAD") or "?") + (" with uncommitted changes" if changed else "")
    return (f"Optuna {optuna.__version__}{dashboard}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}; Lepton at commit {commit}")  # fmt: skip


# --- (a) -----------------------------------------------------------------------------------------
@dataclass
class WallRound:
    order: tuple[str, ...]
    runs: dict[str, StudyRun]

    def ratio(self, baseline: str) -> float:
        return self.runs["lepton"].per_hour / self.runs[baseline].per_hour


def wall_time(args: argparse.Namespace) -> list[tuple[StudyShape, list[WallRound]]]:
    """Each round runs every trial length, each length's sides in an order rotating by round."""
    shapes = [StudyShape(trials=args.trials, max_steps=steps, eval_every=max(steps // 5, 1)) for steps in args.steps]
    measured: list[tuple[StudyShape, list[WallRound]]] = [(shape, []) for shape in shapes]
    for number in range(args.rounds):
        order = SIDES[number % 3 :] + SIDES[: number % 3]
        for shape, rounds in measured:
            say(f"(a) round {number + 1}/{args.rounds}, {shape.max_steps} steps: {', '.join(order)}")
            rounds.append(WallRound(order, {side: run_side(side, "p4-wall", shape) for side in order}))
    return measured


def per_trial(rounds: list[WallRound], side: str) -> float:
    return statistics.fmean(t.seconds for r in rounds for t in r.runs[side].trials)


def wall_report(measured: list[tuple[StudyShape, list[WallRound]]]) -> list[str]:
    first = measured[0][0]
    lengths = " and ".join(str(shape.max_steps) for shape, _ in measured)
    lines = [
        f"Study: {first.describe()}, measured at {lengths} steps per trial; tiny GPT-2 (init from its config) on "
        "examples/data/tickets.jsonl, CPU, one gloo process per trial. Sides, in an order rotating each round, each "
        "a fresh process tree in a fresh directory: **lepton** = `leptonctl run -f study.yaml` (tuner process on a "
        "journal, syncs over HTTP, each trial a TrainingJob run by the local backend: `torchrun -m "
        "lepton.workloads.trainer`); **torchrun** = a plain Optuna loop (`optuna.create_study` in memory, ask/tell, "
        "the same TPE sampler and seed) running for each trial the very same torchrun command and environment; "
        "**inprocess** = the same loop calling the trainer's training function (`lepton.workloads.trainer.train.run`) "
        "in its own process, one thread as in the trainer pod (no process start and no torch import per trial). "
        "Wall = the whole command; trials/hour = trials / wall. Ratio = Lepton's trials/hour / the loop's, per "
        "round; below, the geometric mean with its 95% confidence interval (Student's t on the log ratios) and "
        "the spread.",
    ]
    fixed = []
    for shape, rounds in measured:
        lines += ["", f"### {shape.max_steps} steps per trial", ""]
        for baseline in ("torchrun", "inprocess"):
            est = ratio_estimate([r.ratio(baseline) for r in rounds])
            met = "met" if est.mean >= GOAL_RATE else "**missed**"
            lines.append(f"- **Lepton / {baseline} loop, trials per hour: {est.interval(2)}**; {est.spread(2)} "
                         f"(goal >= {GOAL_RATE}x: {met})")  # fmt: skip
        same = [same_trials(r.runs["lepton"], r.runs[b]) for r in rounds for b in ("torchrun", "inprocess")]
        lines.append(f"- the same parameters asked and the same values (6 significant digits) on every side: "
                     f"{'yes, every round' if all(same) else f'{sum(same)} of {len(same)} comparisons'}")  # fmt: skip
        seconds = {side: per_trial(rounds, side) for side in SIDES}
        lines.append("- mean seconds per trial (ask to tell): " + ", ".join(f"{s} {v:.1f}" for s, v in seconds.items()))
        fixed.append(seconds["lepton"] - seconds["inprocess"])
        lines += ["", "| round | order | wall s lepton / torchrun / inprocess | trials/h lepton / torchrun / inprocess "
                  "| ratio vs torchrun | ratio vs inprocess | best lepton / torchrun / inprocess |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for i, r in enumerate(rounds, 1):
            walls = " / ".join(f"{r.runs[s].wall:.1f}" for s in SIDES)
            rates = " / ".join(f"{r.runs[s].per_hour:.0f}" for s in SIDES)
            bests = " / ".join(same6(r.runs[s].best) for s in SIDES)
            lines.append(f"| {i} | {', '.join(r.order)} | {walls} | {rates} | {r.ratio('torchrun'):.2f} | "
                         f"{r.ratio('inprocess'):.2f} | {bests} |")  # fmt: skip
    cost = statistics.fmean(fixed)
    lines += ["", f"What a trial costs Lepton beyond the in-process loop's call is fixed, not proportional: "
              f"{', '.join(f'{f:.1f} s' for f in fixed)} per trial at {lengths} steps (a fresh torchrun launcher and "
              "worker, each importing torch, the trainer's imports, the tuner's sync, the model saved where a later "
              f"job can load it). So Lepton reaches {GOAL_RATE}x of the in-process loop once a trial trains for about "
              f"{GOAL_RATE / (1 - GOAL_RATE) * cost:.0f} s in-process; a pod in a cluster pays the same start per "
              "trial, and gets in return a gang of its own, GPUs, a checkpoint and a retry."]  # fmt: skip
    return lines


# --- (b) -----------------------------------------------------------------------------------------
def pruning(args: argparse.Namespace) -> tuple[dict[str, StudyShape], list[dict[str, StudyRun]]]:
    median = {"type": "median", "startupTrials": args.prune_startup, "warmupSteps": args.prune_steps // 10,
              "intervalSteps": 1}  # fmt: skip
    every = max(args.prune_steps // 15, 1)
    shapes = {"none": StudyShape(args.prune_trials, args.prune_steps, every),
              "median": StudyShape(args.prune_trials, args.prune_steps, every, pruner=median)}  # fmt: skip
    rounds = []
    for number in range(args.prune_rounds):
        order = ("none", "median") if number % 2 == 0 else ("median", "none")
        say(f"(b) round {number + 1}/{args.prune_rounds}: pruner {', '.join(order)}")
        rounds.append({p: run_side("lepton", f"p4-prune-{p}", shapes[p]) for p in order})
    return shapes, rounds


def pruning_report(shapes: dict[str, StudyShape], rounds: list[dict[str, StudyRun]]) -> list[str]:
    saved = [1 - r["median"].trial_seconds / r["none"].trial_seconds for r in rounds]
    equal = [same6(r["median"].best) == same6(r["none"].best) for r in rounds]
    est = estimate(saved)
    met = "met" if est.mean >= GOAL_SAVED and all(equal) else "**missed**"
    interval = f"{est.mean:.0%}" + (f" [{est.low:.0%}, {est.high:.0%}] (95% CI, n={est.n})" if est.n > 1 else "")
    lines = [
        "",
        f"The same study twice, `leptonctl run -f`, the order alternating: {shapes['median'].describe()}; and "
        "the same with pruner none. A pruned trial's TrainingJob is stopped (SIGTERM: it checkpoints and exits). "
        "Trial seconds = the sum over trials of ask to tell, from the study's journal.",
        "",
        f"- **trial time saved by the median pruner: {interval}** (goal >= {GOAL_SAVED:.0%} at an equal best value: "
        f"{met})",
        f"- best values equal (6 significant digits): {'yes, every round' if all(equal) else 'not in every round'} "
        f"({sum(equal)} of {len(equal)})",
        _trial_kinds(rounds, shapes["median"].max_steps),
        "",
        "| round | order | trial s none / median | saved | best none / median | pruned trials | wall s none / median |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for i, (r, s) in enumerate(zip(rounds, saved, strict=True), 1):
        pruned = sum(t.state == "pruned" for t in r["median"].trials)
        lines.append(f"| {i} | {', '.join(r)} | {r['none'].trial_seconds:.0f} / {r['median'].trial_seconds:.0f} | "
                     f"{s:.0%} | {same6(r['none'].best)} / {same6(r['median'].best)} | {pruned} of "
                     f"{len(r['median'].trials)} | {r['none'].wall:.0f} / {r['median'].wall:.0f} |")  # fmt: skip
    return lines


def _trial_kinds(rounds: list[dict[str, StudyRun]], steps: int) -> str:
    """Why the saving is what it is: what a complete and a pruned trial cost, and where pruning stopped."""
    complete = [t.seconds for r in rounds for t in r["median"].trials if t.state == "complete"]
    pruned = [t for r in rounds for t in r["median"].trials if t.state == "pruned"]
    unpruned = [t.seconds for r in rounds for t in r["none"].trials]
    if not pruned or not complete:
        return "- no trial was pruned" if not pruned else "- every trial was pruned"
    at = statistics.median(t.last_step or 0 for t in pruned)
    stopped = statistics.fmean(t.seconds for t in pruned)
    return (f"- mean seconds per trial: {statistics.fmean(unpruned):.1f} without a pruner; with the median pruner "
            f"{statistics.fmean(complete):.1f} for a complete trial and {stopped:.1f} "
            f"for a pruned one (stopped at step {at:.0f} of {steps}, median): the part before training (process "
            "start, imports, model and data load) is spent by every trial, pruned or not")  # fmt: skip


# --- (c) -----------------------------------------------------------------------------------------
def cluster_part(args: argparse.Namespace) -> tuple[list[tuning_cluster.ClusterRun], str]:
    from lepton.cli.devcluster import DevCluster

    cluster = DevCluster(args.cluster)
    cluster.down()
    cluster.up(nodes=1)
    runs = []
    try:
        version = cluster.component_versions()["kube-apiserver"]
        for number in range(args.cluster_rounds):
            say(f"(c) round {number + 1}/{args.cluster_rounds}: {args.studies} studies x {args.study_trials} trials, "
                f"parallelism {args.parallelism}")  # fmt: skip
            with tempfile.TemporaryDirectory(prefix="p4-cluster-") as tmp:
                runs.append(tuning_cluster.run(
                    cluster, studies=args.studies, trials=args.study_trials, parallelism=args.parallelism,
                    trial_seconds=args.trial_seconds, seed=number + 1, workdir=Path(tmp), timeout=args.cluster_timeout,
                    progress=say,
                ))  # fmt: skip
            r = runs[-1]
            say(f"  {len(r.created)} TrainingJobs, peak {r.peak} trial pods running, {r.succeeded} studies finished")
    finally:
        cluster.down()
    return runs, version


def cluster_report(args: argparse.Namespace, runs: list[tuning_cluster.ClusterRun], version: str) -> str:
    r0 = runs[0]
    total = r0.studies * r0.trials
    lines = [
        f"{r0.studies} TuningStudies x {r0.trials} trials, parallelism {r0.parallelism} (so at most "
        f"{r0.wanted} trials at once), TPE, all submitted at once to a fresh `leptonctl operator` on a dev cluster "
        f"of its own ({version}, kwok); trial pods on {r0.nodes} fake nodes of {tuning_cluster.PODS_PER_NODE} pods. "
        "**A throughput benchmark**: each study's tuner is a real `python -m lepton.workloads.tuner` process "
        "(SQLite storage) at its pod's loopback IP, which the operator syncs with over HTTP; the trials train "
        f"nothing: a trial pod, once Running, is ended by kwok's fake runtime after {r0.trial_seconds:g} s with a "
        "TrainingSummary termination message whose eval_loss comes from an RNG seeded by the trial's name.",
        "",
    ]
    for i, r in enumerate(runs, 1):
        full = f"{r.full_at:.0f} s after submission" if r.full_at is not None else "never"
        done = f"{r.done_at:.0f} s" if r.done_at is not None else f"not within {args.cluster_timeout:.0f} s"
        lines += [
            f"- run {i}: **{len(r.created)} TrainingJobs created, {len(r.created) / max(r.created or [1]):.1f}/s "
            f"overall** (submission to the last creation; between the 1st and the {r.wanted}th: "
            f"{r.rate(1, r.wanted):.1f}/s); "
            f"**most trial pods running at once: {r.peak}** (goal {r.wanted}, Katib {tuning_cluster.KATIB_PODS}), "
            f"reached {r.wanted} {full}; all {r.succeeded}/{r.studies} studies finished in {done} "
            f"({total} trials); operator {r.operator_cpu:.0f} CPU-seconds, peak RSS {r.operator_rss:.0f} MiB; "
            f"{r.tuners_started} tuner processes started",
        ]
        if r.full_at is not None and len(r.created) == total:
            last = max(r.created)
            steady = (total - r.wanted) / max(last - r.full_at, 1e-9)
            lines.append(
                f"  - steady state, from {r.wanted} running to the last creation ({r.full_at:.0f}-{last:.0f} s): "
                f"{steady:.1f} TrainingJobs/s (the {r.wanted} slots of {r.trial_seconds:g} s trials allow "
                f"{r.wanted / r.trial_seconds:.1f}/s), {r.mean_running(r.full_at, last):.0f} trial pods running on "
                "average (time-weighted)"
            )
        if r.tuner_failures:
            lines.append(f"  - runtime errors: {'; '.join(r.tuner_failures[:3])}")
    return "\n".join(lines)


# --- (d) -----------------------------------------------------------------------------------------
def suggest_part(args: argparse.Namespace) -> list[tuning_suggest.Latency]:
    out = []
    for sampler in args.samplers.split(","):
        asks = min(args.suggest_asks, 10) if sampler == "gp" else args.suggest_asks
        say(f"(d) {sampler}: {asks} asks at {args.suggest_history} trials")
        out.append(tuning_suggest.measure(sampler, args.suggest_history, asks))
        say("  " + out[-1].row())
    return out


def suggest_report(latencies: list[tuning_suggest.Latency]) -> str:
    return "\n".join([
        f"A real tuner process opens a journal already holding {latencies[0].history} finished trials (3 parameters: "
        "learningRate log-float, warmupSteps int, weightDecay float; seeded random points, an analytic objective) and "
        "is driven as the operator drives it: each sync tells the previous trial and asks one more. **ask** = the "
        "tuner's own time for one ask (what `lepton_tuner_suggest_seconds` observes: creating the trial and sampling "
        "every parameter); **sync** = the round trip as the caller sees it. Sampling runs in the tuner process; the "
        "operator's event loop only awaits one HTTP answer per study (60 s timeout), so even GP's seconds delay "
        "that one study's pass, not the operator's other loops. The first ask of a fresh tuner is shown apart (GP "
        "imports torch then, CMA-ES rebuilds its state from the history); gp is timed on at most 10 asks.",
        "",
        *tuning_suggest.HEADER,
        *(lat.row() for lat in latencies),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (a)")
    parser.add_argument("--trials", type=int, default=4, help="(a) trials per study")
    parser.add_argument(
        "--steps",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[100, 1000],
        help="(a) training steps per trial, comma-separated: each length is measured",
    )
    parser.add_argument("--prune-rounds", type=int, default=2, help="rounds of (b), the order alternating")
    parser.add_argument("--prune-trials", type=int, default=10, help="(b) trials per study")
    parser.add_argument("--prune-steps", type=int, default=1000, help="(b) training steps per trial")
    parser.add_argument("--prune-startup", type=int, default=3, help="(b) the median pruner's startup trials")
    parser.add_argument("--studies", type=int, default=20, help="(c) studies")
    parser.add_argument("--study-trials", type=int, default=50, help="(c) trials per study")
    parser.add_argument("--parallelism", type=int, default=10, help="(c) parallelism of each study")
    parser.add_argument("--trial-seconds", type=float, default=60.0, help="(c) how long a trial pod runs")
    parser.add_argument("--cluster-rounds", type=int, default=1, help="(c) runs")
    parser.add_argument("--cluster-timeout", type=float, default=1800.0, help="(c) seconds for all studies to end")
    parser.add_argument("--cluster", default="bench", help="(c) name of the dedicated dev cluster (deleted after)")
    parser.add_argument("--samplers", default="tpe,cmaes,gp", help="(d) samplers")
    parser.add_argument("--suggest-history", type=int, default=1000, help="(d) trials in the study")
    parser.add_argument("--suggest-asks", type=int, default=20, help="(d) asks timed per sampler")
    for part in ("local", "pruning", "cluster", "suggest"):
        parser.add_argument(f"--skip-{part}", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="print the sections, leave RESULTS.md alone")
    args = parser.parse_args()
    command = "python -m benchmarks.tuning " + " ".join(sys.argv[1:])
    head = f"{versions()}; every run on this machine's 2 shared cores, one heavy thing at a time."

    def emit(title: str, body: str) -> None:  # each part's section as soon as it is measured
        if args.no_record:
            print(f"## {title}\n\n{body}\n")
        else:
            record(title, body, command)

    if not args.skip_local:
        emit("P4 tuner: study wall time vs a plain Optuna loop (issue 10)",
             "\n".join([head, "", *wall_report(wall_time(args))]))  # fmt: skip
    if not args.skip_pruning:
        emit("P4 tuner: trial time saved by pruning (issue 10)", "\n".join([head, *pruning_report(*pruning(args))]))
    if not args.skip_suggest:
        emit(
            "P4 tuner: suggestion latency at 1,000 trials (issue 10)", f"{head}\n\n{suggest_report(suggest_part(args))}"
        )
    if not args.skip_cluster:
        runs, version = cluster_part(args)
        emit("P4 tuner: trial throughput on the control plane (issue 10)",
             f"{head}\n\n{cluster_report(args, runs, version)}")  # fmt: skip


if __name__ == "__main__":
    main()

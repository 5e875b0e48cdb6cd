"""Run several resources on this machine, each after what it references: `leptonctl run -f DIR` (or a
file of several documents), as a GitOps sync applies a folder, but in dependency order because local
runs cannot wait for each other. A Dataset comes before what trains on it, a TuningStudy before the
TrainingJob that continues from its best trial, a TrainingJob before the InferenceService serving its
model; a server answers one sample request and stops. Each step runs as `leptonctl run -f` runs it
(its own progress lines, run directory and resume), under a header; a summary ends the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from lepton.api.kinds import Resource
from lepton.local.backend import EXIT_INTERRUPTED, LocalBackend, LocalRunError, RunOptions, run
from lepton.status.references import references

Key = tuple[str, str]


def ordered(resources: list[Resource]) -> list[Resource]:
    """Every resource after the ones among `resources` it references, otherwise in the given order;
    LocalRunError for a name given twice or a cycle. References to resources not given are left to
    earlier runs (each step says so if none left what it needs)."""
    by_key: dict[Key, Resource] = {}
    for r in resources:
        key = (r.kind, r.metadata.name)
        if key in by_key:
            raise LocalRunError(f"{r.kind} {r.metadata.name!r} is given twice")
        by_key[key] = r
    out: list[Resource] = []
    state: dict[Key, str] = {}

    def visit(key: Key, path: list[Key]) -> None:
        if state.get(key) == "done":
            return
        if state.get(key) == "visiting":
            cycle = " -> ".join(f"{k} {n}" for k, n in [*path[path.index(key) :], key])
            raise LocalRunError(f"the resources reference each other in a cycle: {cycle}")
        state[key] = "visiting"
        for ref in references(by_key[key]):
            if ref in by_key:
                visit(ref, [*path, key])
        state[key] = "done"
        out.append(by_key[key])

    for r in resources:
        visit((r.kind, r.metadata.name), [])
    return out


@dataclass
class StepResult:
    resource: Resource
    code: int
    seconds: float
    last: str  # the step's last line: what it made, or why it failed


def run_pipeline(resources: list[Resource], backends: dict[str, type[LocalBackend[Resource]]],
                 options: RunOptions) -> int:  # fmt: skip
    """Run each resource in dependency order; stop at the first that does not succeed (its exit code)."""
    steps = ordered(resources)
    echo, results = options.echo, []
    started = time.monotonic()
    for index, resource in enumerate(steps, 1):
        kind, name = resource.kind, resource.metadata.name
        echo(f"== [{index}/{len(steps)}] {kind} {name}")
        lines: list[str] = []
        step_options = replace(options, echo=_tee(echo, lines), serve_once=True)
        began = time.monotonic()
        try:  # a backend resolves its references when made: after the steps before it ran
            code = run(backends[kind](resource, options.runs_root), step_options)
        except LocalRunError as exc:
            echo(f"leptonctl run: {kind} {name!r}: {exc}")
            lines.append(str(exc))
            code = 2
        results.append(StepResult(resource, code, time.monotonic() - began, _outcome(lines)))
        if code != 0:
            break
    _summary(results, steps, time.monotonic() - started, echo)
    return results[-1].code if results and results[-1].code != 0 else 0


def _outcome(lines: list[str]) -> str:
    """The line that says what a step made: a server's answer, else its last line (without where its logs are)."""
    line = next((x for x in lines if x.startswith("asked ")), lines[-1] if lines else "")
    return line.splitlines()[0].split("; logs in ")[0]


def _tee(echo: Callable[[str], None], lines: list[str]) -> Callable[[str], None]:
    def both(line: str) -> None:
        lines.append(line)
        echo(line)

    return both


def _summary(results: list[StepResult], steps: list[Resource], seconds: float, echo: Callable[[str], None]) -> None:
    ok = all(r.code == 0 for r in results) and len(results) == len(steps)
    interrupted = any(r.code == EXIT_INTERRUPTED for r in results)
    verdict = "succeeded" if ok else "interrupted" if interrupted else "failed"
    echo(f"== pipeline {verdict}: {len(results)} of {len(steps)} step(s) in {seconds:.0f}s")
    width = max(len(f"{s.kind} {s.metadata.name}") for s in steps)
    for r in results:
        what = f"{r.resource.kind} {r.resource.metadata.name}"
        state = "ok" if r.code == 0 else f"exit {r.code}"
        echo(f"  {what:<{width}}  {state:<7} {r.seconds:6.1f}s  {r.last}")
    for s in steps[len(results) :]:
        echo(f"  {s.kind + ' ' + s.metadata.name:<{width}}  not run")

"""Drift of live inputs against the training data: the spec (`DriftMonitoring`), the summary of the
training split the trainer writes beside the model (`DataStats`, key `dataStats` of lepton-training.json,
read back by the model server), and the statistics both sides share. Standard library only: the
trainer, the server and the operator's status code import it without torch or an HTTP stack.

Features (one score each, window against reference):
- `input_length`: tokens per input, in the bins of the training split's deciles (equal-mass bins are
  where the population stability index behaves best: no bin of the reference is nearly empty).
- `tokens`: token frequencies, as the shares of the training split's TOP_TOKENS most frequent ids with
  at least MIN_TOKEN_SHARE of all tokens, plus one "other" bin for the rest.
- `label`: predicted labels of a sequence classifier against the training labels' frequencies.

Metrics: the population stability index, sum((a - e) * ln(a / e)) over the bins with the shares floored
at EPSILON (a bin empty on one side counts, without dividing by zero): < 0.1 is usually read as stable,
> 0.25 as a real shift. Or the Jensen-Shannon distance (base 2): the square root of the JS divergence,
symmetric and bounded in [0, 1], needing no floor.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import Field

from lepton.api.base import ApiModel, Int, Rule

DriftMetric = Literal["psi", "jensenShannon"]
Feature = Literal["input_length", "tokens", "label"]
FEATURES: tuple[Feature, ...] = ("input_length", "tokens", "label")
STATS_VERSION = 1
EPSILON = 1e-4  # the floor of a share in the PSI: an empty bin weighs as 1 in 10,000
LENGTH_BINS = 10  # decile edges of the training inputs' lengths
# 256 ids with >= 0.1% of the tokens each: natural text puts most of its mass on its few hundred most
# frequent tokens (Zipf), a window of a few hundred requests holds thousands of tokens, so each kept bin
# expects several counts (an empty bin in an unshifted window is rare), and the JSON stays ~4 KB.
TOP_TOKENS = 256
MIN_TOKEN_SHARE = 1e-3


class DriftMonitoring(ApiModel):
    """How the server scores drift of live inputs against the model's training data, and when the
    service reports DriftDetected."""

    rules = (
        Rule(
            cel="self.metric != 'jensenShannon' || self.threshold <= 1.0",
            message="drift.threshold must be at most 1 with metric jensenShannon: the Jensen-Shannon distance "
            "lies between 0 and 1",
            check=lambda d: d.metric != "jensenShannon" or d.threshold <= 1.0,
        ),
        Rule(
            cel="self.minInputs <= self.windowInputs",
            message="drift.minInputs must be at most drift.windowInputs: the window never holds more inputs "
            "than windowInputs",
            check=lambda d: d.min_inputs <= d.window_inputs,
        ),
    )

    metric: DriftMetric = Field(
        default="psi",
        description="psi: population stability index (unbounded; < 0.1 stable, > 0.25 a real shift); "
        "jensenShannon: Jensen-Shannon distance, base 2, between 0 and 1.",
    )
    threshold: float = Field(
        default=0.2,
        gt=0,
        le=100,
        description="A feature whose score is above this sets DriftDetected=True (the service keeps serving).",
    )
    window_inputs: Int = Field(
        default=500,
        ge=20,
        le=100000,
        description="Inputs in the sliding window each replica scores, the most recent ones (a request of n texts "
        "is n inputs).",
    )
    min_inputs: Int = Field(
        default=200,
        ge=10,
        le=100000,
        description="Fewest inputs in the window before a score is published: a score of a few inputs is noise "
        "(unshifted windows of 100 inputs measured PSI up to 0.23 on 8 length bins; of 200, up to 0.11).",
    )


class LengthHistogram(ApiModel):
    """Input lengths in tokens: counts[0] below edges[0], counts[i] in [edges[i-1], edges[i]), the last
    at edges[-1] or more."""

    edges: list[int] = Field(description="Increasing bin edges, in tokens.")
    counts: list[int] = Field(description="Inputs per bin: one more than there are edges.")


class TokenFrequencies(ApiModel):
    ids: list[int] = Field(description="The most frequent token ids of the training split, most frequent first.")
    counts: list[int] = Field(description="Occurrences of each of ids.")
    other: int = Field(description="Occurrences of every other token.")


class DataStats(ApiModel):
    """Summary statistics of the training split a model was trained on (lepton-training.json's dataStats)."""

    version: int = Field(default=STATS_VERSION, description="Format version.")
    rows: int = Field(description="Training inputs summarised.")
    max_length: int | None = Field(
        default=None, description="Inputs were truncated to this many tokens in training; live lengths are clipped "
        "to it before binning."
    )  # fmt: skip
    input_length: LengthHistogram = Field(description="Input lengths in tokens.")
    tokens: TokenFrequencies = Field(description="Token frequencies.")
    labels: list[int] | None = Field(default=None, description="Training labels' counts by class id (classifiers).")


# --- building the reference -----------------------------------------------------------------------------


def quantile_edges(values: Sequence[int], bins: int = LENGTH_BINS) -> list[int]:
    """Increasing edges that cut sorted `values` into `bins` nearly equal parts (fewer where values repeat)."""
    ordered = sorted(values)
    if not ordered:
        return []
    edges = {ordered[len(ordered) * q // bins] for q in range(1, bins)}
    return sorted(e for e in edges if e > ordered[0])


def bin_of(value: float, edges: Sequence[int]) -> int:
    return bisect.bisect_right(edges, value)


def histogram(values: Iterable[int], edges: Sequence[int]) -> list[int]:
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bin_of(v, edges)] += 1
    return counts


def count_tokens(sequences: Iterable[Sequence[int]]) -> dict[int, int]:
    """Occurrences of every token id (the trainer counts with torch.bincount; this is the same, slower)."""
    counts: dict[int, int] = {}
    for seq in sequences:
        for t in seq:
            counts[t] = counts.get(t, 0) + 1
    return counts


def data_stats(
    lengths: Sequence[int],
    token_counts: Mapping[int, int],
    labels: Sequence[int] | None = None,
    num_labels: int | None = None,
    max_length: int | None = None,
) -> DataStats:
    """The reference of a training split: its inputs' lengths, its token occurrences by id, and for a
    classifier its labels (class ids; `num_labels` classes, or as many as the largest id needs)."""
    total = sum(token_counts.values())
    top = sorted(((c, t) for t, c in token_counts.items() if c > 0), key=lambda x: (-x[0], x[1]))[:TOP_TOKENS]
    kept = [(t, c) for c, t in top if c >= MIN_TOKEN_SHARE * total]
    edges = quantile_edges(lengths)
    label_counts = None
    if labels is not None:
        label_counts = [0] * max(num_labels or 0, max(labels, default=-1) + 1)
        for label in labels:
            label_counts[label] += 1
    return DataStats(
        rows=len(lengths),
        max_length=max_length,
        input_length=LengthHistogram(edges=edges, counts=histogram(lengths, edges)),
        tokens=TokenFrequencies(ids=[t for t, _ in kept], counts=[c for _, c in kept],
                                other=total - sum(c for _, c in kept)),
        labels=label_counts,
    )  # fmt: skip


def reference_counts(stats: DataStats) -> dict[Feature, list[int]]:
    """The reference histogram of each feature the stats carry, in the bins the window counts in."""
    out: dict[Feature, list[int]] = {
        "input_length": list(stats.input_length.counts),
        "tokens": [*stats.tokens.counts, stats.tokens.other],
    }
    if stats.labels:
        out["label"] = list(stats.labels)
    return out


# --- scores ---------------------------------------------------------------------------------------------


def shares(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    return [c / total for c in counts] if total > 0 else [0.0] * len(counts)


def psi(reference: Sequence[float], window: Sequence[float], epsilon: float = EPSILON) -> float:
    """Population stability index of `window` against `reference` (counts or shares, same bins), each
    share floored at `epsilon`."""
    if len(reference) != len(window):
        raise ValueError(f"{len(reference)} reference bins and {len(window)} window bins")
    e, a = shares(reference), shares(window)
    return sum((max(ai, epsilon) - max(ei, epsilon)) * math.log(max(ai, epsilon) / max(ei, epsilon))
               for ei, ai in zip(e, a, strict=True))  # fmt: skip


def js_distance(reference: Sequence[float], window: Sequence[float]) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between the two histograms (counts or shares)."""
    if len(reference) != len(window):
        raise ValueError(f"{len(reference)} reference bins and {len(window)} window bins")
    p, q = shares(reference), shares(window)
    divergence = 0.0
    for pi, qi in zip(p, q, strict=True):
        m = (pi + qi) / 2
        if pi > 0:
            divergence += 0.5 * pi * math.log2(pi / m)
        if qi > 0:
            divergence += 0.5 * qi * math.log2(qi / m)
    return math.sqrt(max(divergence, 0.0))


def score(metric: DriftMetric, reference: Sequence[float], window: Sequence[float]) -> float:
    return psi(reference, window) if metric == "psi" else js_distance(reference, window)


def metric_name(metric: DriftMetric) -> str:
    return "PSI" if metric == "psi" else "Jensen-Shannon distance"


class DriftStatus(ApiModel):
    """What the replicas' drift scores say now (the highest of the replicas per feature)."""

    metric: DriftMetric = Field(description="The score's metric (spec.drift.metric).")
    scores: dict[str, float] = Field(
        default_factory=dict, description="Score per feature (input_length, tokens, label), rounded to 0.01."
    )
    window_inputs: int = Field(default=0, description="Inputs in the fullest replica's window.")

"""The training split's summary statistics (lepton-training.json's `dataStats`): the reference the model
server scores live inputs against (spec.drift of an InferenceService; the statistics are in
lepton.api.drift).

Read off the tokenised split the loop trained on, after training, on rank 0: one bincount over the
real tokens of the packed tensor (padding masked out), the lengths the split already holds, and the
labels; no second tokenisation and no forward. Image splits carry none (the server serves text).
"""

from __future__ import annotations

from typing import Any

import torch

from lepton.api.drift import data_stats
from lepton.workloads.trainer.data import Packed, Samples


def of(samples: Samples, *, max_length: int, num_labels: int | None) -> dict[str, Any] | None:
    """`dataStats` of a text split (wire form), or None for a split that is not tokenised text."""
    if not isinstance(samples, Packed) or len(samples) == 0:
        return None
    ids = samples.input_ids[samples.attention.bool()]
    counts = torch.bincount(ids)
    present = counts.nonzero().flatten()
    token_counts = dict(zip(present.tolist(), counts[present].tolist(), strict=True))
    labels = samples.labels.tolist() if samples.labels is not None else None
    stats = data_stats(samples.lengths.tolist(), token_counts, labels, num_labels if labels is not None else None,
                       max_length)  # fmt: skip
    return stats.to_wire()

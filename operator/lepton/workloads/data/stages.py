"""The fixed stages after the steps: split, decontamination, augmentation, tokenisation.

A row's split depends only on its key and the seed (a keyed hash mapped to [0, 1)), so adding rows
never moves an old one, whatever the batch boundaries or the machine. Augmented variants depend only
on (text, seed, copy), for the same reason.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lepton.api.dataset import Augment, Decontaminate, Split
from lepton.workloads.data.minhash import U64, band_hashes, mix, stable_hashes

SPLIT_COLUMN = "__split"
TOKENIZE_CHUNK = 1024


def assign_split(keys: pa.Array | pa.ChunkedArray, split: Split | None) -> pa.Array:
    if split is None:
        return pa.array(["train"] * len(keys), pa.string())
    with np.errstate(over="ignore"):
        h = mix(stable_hashes(keys) ^ mix(np.full(len(keys), U64(split.seed), U64)))
    unit = (h >> U64(11)).astype(np.float64) / float(1 << 53)
    names = np.array(["train", "validation", "test"], dtype=object)
    which = np.where(unit < split.train, 0, np.where(unit < split.train + split.validation, 1, 2))
    return pa.array(names[which], pa.string())


class Decontaminator:
    """Training rows whose MinHash bands meet a validation or test row's go."""

    def __init__(self, spec: Decontaminate, seed: int = 1) -> None:
        self.spec, self.seed = spec, seed
        self.reference: list[np.ndarray] = [np.zeros(0, U64) for _ in range(spec.bands)]
        self.removed = 0

    def _bands(self, texts: pa.ChunkedArray | pa.Array) -> np.ndarray:
        return band_hashes(texts, self.spec.ngram, self.spec.bands, self.spec.rows_per_band, self.seed)

    def add_reference(self, texts: pa.ChunkedArray | pa.Array) -> None:
        bands = self._bands(texts)
        for b in range(self.spec.bands):
            self.reference[b] = np.union1d(self.reference[b], bands[:, b])

    def filter(self, train: pa.Table, text_field: str) -> pa.Table:
        bands = self._bands(train[text_field])
        hit = np.zeros(train.num_rows, bool)
        for b in range(self.spec.bands):
            ref = self.reference[b]
            if len(ref):
                pos = np.minimum(np.searchsorted(ref, bands[:, b]), len(ref) - 1)
                hit |= ref[pos] == bands[:, b]
        self.removed += int(hit.sum())
        return train.filter(pa.array(~hit))


def _variant(text: str, spec: Augment, copy: int) -> str:
    digest = hashlib.blake2b(f"{spec.seed}:{copy}:{text}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    words = text.split()
    if len(words) < 2:
        return text
    if spec.method == "random-deletion":
        kept = [w for w, r in zip(words, rng.random(len(words)), strict=True) if r >= spec.probability]
        return " ".join(kept or words[:1])
    for i in np.flatnonzero(rng.random(len(words)) < spec.probability):
        j = int(rng.integers(len(words)))
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def augment(table: pa.Table, text_field: str, spec: Augment) -> pa.Table:
    """The rows, then `copies` variants of each (other columns copied)."""
    if table.num_rows == 0:
        return table
    texts = table[text_field].to_pylist()
    parts = [table]
    for copy in range(spec.copies):
        variants = pa.array([_variant(t, spec, copy) if t else t for t in texts], table[text_field].type)
        parts.append(table.set_column(table.column_names.index(text_field), text_field, variants))
    return pa.concat_tables(parts)


class Tokenizer:
    """A fast tokenizer from a model directory's tokenizer.json (the `tokenizers` library)."""

    def __init__(self, path: str, max_length: int) -> None:
        from tokenizers import Tokenizer as Fast

        self.tokenizer = Fast.from_file(str(Path(path) / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()
        self.digest = hashlib.sha256((Path(path) / "tokenizer.json").read_bytes()).hexdigest()
        config = Path(path) / "tokenizer_config.json"
        if config.is_file():  # special tokens the model adds (e.g. BOS) are part of the result
            self.digest += hashlib.sha256(
                json.dumps(json.loads(config.read_text()), sort_keys=True).encode()
            ).hexdigest()

    def apply(self, table: pa.Table, text_field: str) -> pa.Table:
        # Chunks of TOKENIZE_CHUNK rows: an Encoding keeps tokens, offsets and masks (~10 KB for a short
        # text), so a whole batch's worth at once would cost hundreds of MiB.
        texts = pc.fill_null(table[text_field], "")
        type_ = pa.list_(pa.int32())
        parts = [
            pa.array([e.ids for e in self.tokenizer.encode_batch(texts.slice(i, TOKENIZE_CHUNK).to_pylist())], type_)
            for i in range(0, len(texts), TOKENIZE_CHUNK)
        ]
        return table.append_column("input_ids", pa.chunked_array(parts, type_))

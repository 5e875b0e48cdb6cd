"""MinHash LSH band hashes of texts, columnar: word n-gram shingles hashed with numpy, one minimum per
permutation per row by `np.minimum.reduceat`, and each band's values folded into one uint64.

Why numpy and not a MinHash library: dedupe must keep its state as flat arrays (bounded memory, and
saved beside each finished shard so an interrupted preparation resumes with it), and the per-row
Python objects of MinHash libraries cost more than the hashing. Words are hashed once per distinct
word (BLAKE2b), so the result is the same on every machine and in every process.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

U64 = np.uint64
MIX1, MIX2, GOLDEN = U64(0xBF58476D1CE4E5B9), U64(0x94D049BB133111EB), U64(0x9E3779B97F4A7C15)
EMPTY = U64(0x5A5A5A5A5A5A5A5A)  # the one shingle of an empty text
CHUNK_CHARS = 1 << 20  # texts are shingled about this many characters at a time


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective scramble of uint64 values."""
    with np.errstate(over="ignore"):
        z = x + GOLDEN
        z = (z ^ (z >> U64(30))) * MIX1
        z = (z ^ (z >> U64(27))) * MIX2
        return z ^ (z >> U64(31))


def stable_hashes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit BLAKE2b hash of each value's text (nulls hash as ''), computed once per distinct value."""
    encoded = pc.dictionary_encode(pc.fill_null(pc.cast(values, pa.string()), ""))
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    words = encoded.dictionary.to_pylist()
    table = np.fromiter(
        (int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") for w in words),
        dtype=U64, count=len(words),
    )  # fmt: skip
    return table[encoded.indices.to_numpy(zero_copy_only=False)] if len(values) else np.zeros(0, U64)


def shingles(texts: pa.Array | pa.ChunkedArray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(shingle hashes, start of each row's shingles): every row has at least one shingle (a text with
    fewer words than `ngram` is one shingle; an empty one hashes as EMPTY)."""
    words = pc.utf8_split_whitespace(pc.fill_null(texts, ""))
    if isinstance(words, pa.ChunkedArray):
        words = words.combine_chunks()
    offsets = words.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    word_hash = stable_hashes(words.flatten())
    lengths = np.diff(offsets)
    counts = np.maximum(1, lengths - ngram + 1)
    starts = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    row = np.repeat(np.arange(len(counts)), counts)
    first = offsets[:-1][row] + (np.arange(starts[-1]) - starts[:-1][row])
    end = offsets[1:][row]
    out = np.where(lengths[row] == 0, EMPTY, U64(0))
    for k in range(ngram):
        pos = first + k
        inside = pos < end
        if not inside.any():
            break
        term = mix(word_hash[np.minimum(pos, max(len(word_hash) - 1, 0))] + U64(k)) if len(word_hash) else out
        with np.errstate(over="ignore"):
            out = np.where(inside, out * U64(31) + term, out)
    return mix(out), starts[:-1]


def band_hashes(texts: pa.Array | pa.ChunkedArray, ngram: int, bands: int, rows_per_band: int,
                seed: int) -> np.ndarray:  # fmt: skip
    """(rows, bands) uint64: two texts share a band's value when their MinHash signatures agree on all
    of that band's `rows_per_band` permutations."""
    n = len(texts)
    if n == 0:
        return np.zeros((0, bands), U64)
    chars = pc.sum(pc.utf8_length(pc.fill_null(texts, ""))).as_py() or 0
    step = max(1, int(n * CHUNK_CHARS / max(chars, 1)))
    if step < n:  # bounded memory: a shingle costs ~100 bytes of temporaries until its row's minima are taken
        return np.concatenate([band_hashes(texts.slice(i, step), ngram, bands, rows_per_band, seed)
                               for i in range(0, n, step)])  # fmt: skip
    shingle, starts = shingles(texts, ngram)
    rng = np.random.default_rng(seed)
    perms = bands * rows_per_band
    a = rng.integers(1, 2**63, perms, dtype=np.uint64) | U64(1)  # odd multipliers: multiply-shift hashing
    b = rng.integers(0, 2**63, perms, dtype=np.uint64)
    out = np.empty((n, bands), U64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            acc = np.full(n, U64(band), U64)
            for r in range(rows_per_band):
                p = band * rows_per_band + r
                values = (shingle * a[p] + b[p]) >> U64(32)
                acc = mix(acc * U64(0x100000001B3) + np.minimum.reduceat(values, starts))
            out[:, band] = acc
    return out

"""The fixed stages after the pipeline steps, on small Arrow tables: a split that depends only on a row's
key and the seed (stable when rows are appended, whatever the batches), decontamination, seeded
augmentation, tokenisation; and the MinHash band hashes they share with dedupe."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from lepton.api.dataset import Augment, Decontaminate, Split
from lepton.workloads.data.minhash import band_hashes
from lepton.workloads.data.stages import Decontaminator, Tokenizer, assign_split, augment
from tests.conftest import EXAMPLES

LONG = " ".join(f"word{i}" for i in range(60))
KEYS = [f"ticket {i}: the printer on floor {i % 7} is out of toner" for i in range(10_000)]


@pytest.mark.parametrize(("train", "validation", "test"), [(0.8, 0.1, 0.1), (0.5, 0.5, 0.0), (1.0, 0.0, 0.0)])
def test_split_fractions_are_honoured(train: float, validation: float, test: float) -> None:
    got = assign_split(pa.array(KEYS), Split(train=train, validation=validation, test=test, seed=3)).to_pylist()
    for name, share in (("train", train), ("validation", validation), ("test", test)):
        assert abs(got.count(name) / len(got) - share) < 0.02


def test_split_is_stable_when_rows_are_appended_and_across_batches() -> None:
    split = Split(train=0.8, validation=0.1, test=0.1, seed=3)
    before = assign_split(pa.array(KEYS), split).to_pylist()
    after = assign_split(pa.array(["new", *KEYS[::-1], "more"]), split).to_pylist()[1:-1][::-1]
    chunked = assign_split(pa.chunked_array([KEYS[:3], KEYS[3:5000], KEYS[5000:]]), split).to_pylist()
    assert before == after == chunked  # a row's split depends only on its key and the seed
    assert assign_split(pa.array(KEYS), split.model_copy(update={"seed": 4})).to_pylist() != before


def test_split_keys_of_any_type_and_nulls() -> None:
    split = Split(train=0.5, validation=0.5, seed=1)
    ints = assign_split(pa.array([1, 2, None, 40]), split).to_pylist()
    assert ints == assign_split(pa.array(["1", "2", "", "40"]), split).to_pylist()  # the key's text form


def test_minhash_is_deterministic_across_processes() -> None:
    texts = [LONG, LONG.replace("word30", "changed"), "unrelated text about something", "", "one"]
    here = band_hashes(pa.array(texts), 5, 14, 8, 1)
    code = (f"import pyarrow as pa; from lepton.workloads.data.minhash import band_hashes; "
            f"print(band_hashes(pa.array({texts!r}), 5, 14, 8, 1).tolist())")  # fmt: skip
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout  # fmt: skip
    assert here.tolist() == json.loads(there)
    assert here.dtype == np.uint64 and here.shape == (5, 14)
    assert (here[0] == here[1]).any() and not (here[0] == here[2]).any()


@pytest.mark.parametrize(
    ("a", "b", "shared"),
    [
        (LONG, LONG, True),
        (LONG, LONG + " extra", True),
        ("", "", True),
        ("short", "short", True),  # fewer words than the n-gram: the whole text is the one shingle
        ("short", "shorter", False),
        (LONG, " ".join(reversed(LONG.split())), False),
        ("", "x", False),
    ],
)
def test_minhash_band_sharing(a: str, b: str, shared: bool) -> None:
    bands = band_hashes(pa.array([a, b]), 5, 14, 8, 0)
    assert bool((bands[0] == bands[1]).any()) is shared


def test_decontamination_removes_train_rows_near_a_held_out_row() -> None:
    decon = Decontaminator(Decontaminate())
    decon.add_reference(pa.array([LONG]))
    decon.add_reference(pa.chunked_array([["another validation row that is long enough to shingle well"]]))
    train = pa.table({"text": [LONG + " tail", "a different training row with its own words",
                               "another validation row that is long enough to shingle well"]})  # fmt: skip
    assert decon.filter(train, "text").column("text").to_pylist() == [train["text"][1].as_py()]
    assert decon.removed == 2
    empty = Decontaminator(Decontaminate())
    assert empty.filter(train, "text").num_rows == 3 and empty.removed == 0


@pytest.mark.parametrize("method", ["random-deletion", "random-swap"])
def test_augmentation_is_seeded_and_only_adds_copies(method: str) -> None:
    spec = Augment(method=method, probability=0.3, copies=2, seed=5)
    table = pa.table({"text": [LONG, "one", None], "label": [1, 0, 2]})
    out = augment(table, "text", spec)
    assert out.num_rows == 9 and out.column("label").to_pylist() == [1, 0, 2] * 3
    assert out.slice(0, 3).equals(table)  # the original rows come first, unchanged
    texts = out.column("text").to_pylist()
    assert texts[3] != LONG and texts[3] != texts[6] and texts[4] == texts[7] == "one" and texts[5] is None
    if method == "random-swap":
        assert sorted(texts[3].split()) == sorted(LONG.split())
    else:
        assert set(texts[3].split()) < set(LONG.split())
    assert out.equals(augment(table, "text", spec))  # the same seed, the same rows
    assert not out.equals(augment(table, "text", spec.model_copy(update={"seed": 6})))
    # a row's variants do not depend on which other rows share its batch
    alone = augment(table.slice(0, 1), "text", spec).column("text").to_pylist()
    assert alone == [texts[0], texts[3], texts[6]]
    assert augment(table.slice(0, 0), "text", spec).num_rows == 0


@pytest.mark.parametrize("max_length", [8, 64])
def test_tokenizer_adds_input_ids_truncated(max_length: int) -> None:
    tokenizer = Tokenizer(str(EXAMPLES / "models" / "tiny-gpt2"), max_length=max_length)
    out = tokenizer.apply(pa.table({"text": [LONG, "hi", None], "label": [1, 2, 3]}), "text")
    ids = out.column("input_ids").to_pylist()
    assert out.schema.field("input_ids").type == pa.list_(pa.int32()) and out.column("label").to_pylist() == [1, 2, 3]
    assert len(ids[0]) == max_length and 0 < len(ids[1]) < 8 and ids[2] == []
    assert ids[1] == tokenizer.tokenizer.encode("hi").ids
    assert tokenizer.apply(pa.table({"text": pa.array([], pa.string())}), "text").column("input_ids").to_pylist() == []


def test_tokenizer_chunks_give_the_rows_their_own_ids() -> None:
    tokenizer = Tokenizer(str(EXAMPLES / "models" / "tiny-gpt2"), max_length=16)
    texts = [f"ticket {i} needs a reply" for i in range(2500)]  # more than one chunk of rows
    ids = tokenizer.apply(pa.table({"text": texts}), "text").column("input_ids").to_pylist()
    assert ids == [tokenizer.tokenizer.encode(t).ids for t in texts]

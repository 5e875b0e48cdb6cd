"""The data pipeline's steps and stages on small Arrow tables: each step in a table of cases, including
empty input, an all-null column, unicode edge cases and duplicate-only input; a split that stays
stable when rows are appended; dedupe state that survives a restart."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from lepton.api.dataset import Augment, Decontaminate, Split, Step
from lepton.workloads.data.errors import DataError
from lepton.workloads.data.minhash import band_hashes
from lepton.workloads.data.stages import Decontaminator, Tokenizer, assign_split, augment
from lepton.workloads.data.steps import build_steps
from tests.conftest import EXAMPLES

LONG = " ".join(f"word{i}" for i in range(60))


def run(step: dict[str, Any], rows: dict[str, list[Any]] | pa.Table, text: str = "text") -> tuple[Any, Any]:
    (runner,) = build_steps([Step.model_validate(step)], text)
    table = rows if isinstance(rows, pa.Table) else pa.table(rows)
    out = runner.apply(table)
    return out.to_pydict(), runner.details


# step, input columns, expected output columns, expected details
CASES: dict[str, tuple[dict[str, Any], dict[str, list[Any]], dict[str, list[Any]], dict[str, int]]] = {
    "select": ({"select": ["b"]}, {"a": [1], "b": [2]}, {"b": [2]}, {}),
    "rename": ({"rename": {"a": "z"}}, {"a": [1], "b": [2]}, {"z": [1], "b": [2]}, {}),
    "drop missing: null and blank": ({"dropMissing": {}}, {"text": ["a", None, "  ", "b"]},
                                     {"text": ["a", "b"]}, {"removed": 2}),
    "drop missing: blank kept on request": ({"dropMissing": {"emptyStrings": False}}, {"text": ["", None]},
                                            {"text": [""]}, {"removed": 1}),
    "drop missing: one column only": ({"dropMissing": {"columns": ["b"]}}, {"text": [None, "x"], "b": [1, None]},
                                      {"text": [None], "b": [1]}, {"removed": 1}),
    "fill missing: an int column": ({"fillMissing": {"column": "n", "value": 7}}, {"n": [1, None]},
                                    {"n": [1, 7]}, {"filled": 1}),
    "fill missing: an all-null column": ({"fillMissing": {"column": "n", "value": "x"}}, {"n": [None, None]},
                                         {"n": ["x", "x"]}, {"filled": 2}),
    "fill missing: a decimal as text": ({"fillMissing": {"column": "f", "value": "0.5"}}, {"f": [1.5, None]},
                                        {"f": [1.5, 0.5]}, {"filled": 1}),
    "normalize: NFKC ligature, full width, odd spaces": (
        {"normalize": {}}, {"text": ["ﬁne\u00a0\u00a0ｔｉｃｋｅｔ\t\n", "a\u200bb  c"]},
        {"text": ["fine ticket", "ab c"]}, {}),
    "normalize: combining marks to NFC, lower case": (
        {"normalize": {"unicode": "NFC", "case": "lower"}}, {"text": ["E\u0301TE\u0301", None]},
        {"text": ["\u00e9t\u00e9", None]}, {}),
    "normalize: emoji kept": ({"normalize": {"case": "upper"}}, {"text": ["ok 👍🏽"]}, {"text": ["OK 👍🏽"]}, {}),
    "filter: length at least": ({"filter": {"length": True, "operator": "Ge", "value": 3}},
                                {"text": ["ab", "abc", None, "日本語"]}, {"text": ["abc", "日本語"]}, {"removed": 2}),
    "filter: numbers": ({"filter": {"column": "n", "operator": "Lt", "value": "2.5"}},
                        {"n": [1.0, 3.0, None]}, {"n": [1.0]}, {"removed": 2}),
    "filter: in": ({"filter": {"column": "l", "operator": "In", "values": [1, 3]}}, {"l": [1, 2, 3, None]},
                   {"l": [1, 3]}, {"removed": 2}),
    "filter: not in keeps no nulls": ({"filter": {"column": "l", "operator": "NotIn", "values": ["a"]}},
                                      {"l": ["a", "b", None]}, {"l": ["b"]}, {"removed": 2}),
    "filter: not null": ({"filter": {"column": "l", "operator": "NotNull"}}, {"l": [None, 1]}, {"l": [1]},
                         {"removed": 1}),
    "dedupe exact": ({"dedupe": {}}, {"text": ["a", "b", "a", None, None]}, {"text": ["a", "b", None]},
                     {"removed": 2}),
    "dedupe exact: duplicates only": ({"dedupe": {}}, {"text": ["same"] * 5}, {"text": ["same"]}, {"removed": 4}),
    "dedupe minhash: a near duplicate goes": ({"dedupe": {"method": "minhash"}},
                                              {"text": [LONG, LONG + " extra", "something else entirely"]},
                                              {"text": [LONG, "something else entirely"]}, {"removed": 1}),
    "mask pii": ({"maskPii": {}}, {"text": ["mail a.b@c.org or call +1 555 123 4567 from 10.0.0.12", None]},
                 {"text": ["mail <email> or call <phone> from <ip>", None]}, {"email": 1, "phone": 1, "ip": 1}),
    "mask pii: only e-mail, own mask": ({"maskPii": {"entities": ["email"], "replacement": "[{entity}]"}},
                                        {"text": ["x@y.io 10.0.0.1"]}, {"text": ["[email] 10.0.0.1"]}, {"email": 1}),
    "map labels: drop unmapped": ({"mapLabels": {"mapping": {"bug": 1, "question": 0}, "unmapped": "drop"}},
                                  {"label": ["bug", "spam", "question"]}, {"label": [1, 0]},
                                  {"mapped": 2, "dropped": 1}),
    "map labels: keep unmapped": ({"mapLabels": {"mapping": {"1": "yes"}}}, {"label": [1, 0]},
                                  {"label": ["yes", "0"]}, {"mapped": 1}),
    "auto label: first rule wins, existing kept": (
        {"autoLabel": {"column": "l", "keywords": [{"contains": ["refund"], "label": "billing"},
                                                   {"contains": ["crash", "REFUND"], "label": "bug"}],
                       "default": "other"}},
        {"text": ["Refund please", "it CRASHED", "hello", "refund"], "l": [None, None, None, "kept"]},
        {"text": ["Refund please", "it CRASHED", "hello", "refund"], "l": ["billing", "bug", "other", "kept"]},
        {"labelled": 2}),
    "auto label: new int column": ({"autoLabel": {"column": "urgent", "keywords": [{"contains": ["now"],
                                                                                      "label": 1}]}},
                                   {"text": ["now!", "later"]}, {"text": ["now!", "later"], "urgent": [1, None]},
                                   {"labelled": 1}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_step(case: str) -> None:
    step, rows, expected, details = CASES[case]
    out, got = run(step, rows)
    assert out == expected and got == details


@pytest.mark.parametrize("step", [{"normalize": {}}, {"dedupe": {}}, {"dedupe": {"method": "minhash"}},
                                  {"maskPii": {}}, {"filter": {"length": True, "operator": "Ge", "value": 1}},
                                  {"autoLabel": {"keywords": [{"contains": ["x"], "label": 1}]}}])  # fmt: skip
def test_every_text_step_takes_empty_input(step: dict[str, Any]) -> None:
    out, _ = run(step, pa.table({"text": pa.array([], pa.string())}))
    assert out["text"] == []


@pytest.mark.parametrize(
    ("step", "error"),
    [
        ({"normalize": {"column": "body"}}, "MissingColumn"),
        ({"fillMissing": {"column": "n", "value": "abc"}}, "BadValue"),
        ({"filter": {"column": "n", "operator": "Eq", "value": "x1"}}, "BadValue"),
        ({"maskPii": {"column": "n"}}, "BadValue"),  # not a text column
    ],
)
def test_a_step_names_what_is_wrong(step: dict[str, Any], error: str) -> None:
    with pytest.raises(DataError) as exc:
        run(step, {"text": ["a"], "n": [1]})
    assert exc.value.reason == error


def test_dedupe_across_batches_and_after_a_restart() -> None:
    batches = [pa.table({"text": t}) for t in (["a", "b"], ["b", "c"], ["c", "a", "d"])]
    (whole,) = build_steps([Step.model_validate({"dedupe": {}})], "text")
    kept = [whole.apply(b).column("text").to_pylist() for b in batches]
    assert kept == [["a", "b"], ["c"], ["d"]]
    (first,) = build_steps([Step.model_validate({"dedupe": {}})], "text")
    first.apply(batches[0])
    (resumed,) = build_steps([Step.model_validate({"dedupe": {}})], "text")
    resumed.restore(first.state(), first.rows_in, first.rows_out, first.details)
    assert [resumed.apply(b).column("text").to_pylist() for b in batches[1:]] == kept[1:]
    assert (resumed.rows_in, resumed.details) == (whole.rows_in, whole.details)


def test_split_is_stable_when_rows_are_appended_and_honours_fractions() -> None:
    split = Split(train=0.8, validation=0.1, test=0.1, seed=3)
    keys = [f"row {i}" for i in range(10000)]
    before = assign_split(pa.array(keys), split).to_pylist()
    after = assign_split(pa.array(["new", *keys[::-1], "more"]), split).to_pylist()[1:-1][::-1]
    assert before == after  # a row's split depends only on its key and the seed
    shares = {s: before.count(s) / len(before) for s in ("train", "validation", "test")}
    assert abs(shares["train"] - 0.8) < 0.02 and abs(shares["test"] - 0.1) < 0.02
    assert assign_split(pa.array(keys), split.model_copy(update={"seed": 4})).to_pylist() != before


def test_minhash_is_deterministic_and_near_duplicates_share_a_band() -> None:
    texts = pa.array([LONG, LONG.replace("word30", "changed"), "unrelated text about something"])
    a, b = band_hashes(texts, 5, 14, 8, 1), band_hashes(texts, 5, 14, 8, 1)
    assert (a == b).all() and a.dtype == np.uint64 and a.shape == (3, 14)
    assert (a[0] == a[1]).any() and not (a[0] == a[2]).any()


def test_decontamination_removes_train_rows_near_a_held_out_row() -> None:
    decon = Decontaminator(Decontaminate())
    decon.add_reference(pa.array([LONG]))
    train = pa.table({"text": [LONG + " tail", "a different training row with its own words"]})
    assert decon.filter(train, "text").column("text").to_pylist() == [train["text"][1].as_py()]
    assert decon.removed == 1


@pytest.mark.parametrize("method", ["random-deletion", "random-swap"])
def test_augmentation_is_seeded_and_adds_copies(method: str) -> None:
    spec = Augment(method=method, probability=0.3, copies=2, seed=5)  # type: ignore[arg-type]
    table = pa.table({"text": [LONG, "one"], "label": [1, 0]})
    out = augment(table, "text", spec)
    assert out.num_rows == 6 and out.column("label").to_pylist() == [1, 0] * 3
    assert out.column("text").to_pylist()[:2] == [LONG, "one"] and out.column("text")[2].as_py() != LONG
    assert out.equals(augment(table, "text", spec))  # the same seed, the same rows
    # a row's variants do not depend on which other rows share its batch
    alone = augment(table.slice(0, 1), "text", spec).column("text").to_pylist()
    assert alone == [out["text"][0].as_py(), out["text"][2].as_py(), out["text"][4].as_py()]


def test_tokenizer_adds_input_ids_truncated() -> None:
    tokenizer = Tokenizer(str(EXAMPLES / "models" / "tiny-gpt2"), max_length=8)
    out = tokenizer.apply(pa.table({"text": [LONG, "hi"]}), "text")
    ids = out.column("input_ids").to_pylist()
    assert len(ids[0]) == 8 and 0 < len(ids[1]) <= 8 and out.schema.field("input_ids").type == pa.list_(pa.int32())

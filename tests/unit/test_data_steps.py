"""The data pipeline's steps on small Arrow tables: each step in a table of cases, including empty
input, an all-null column, unicode edge cases and duplicate-only input; near duplicates found whatever
the batch boundaries; dedupe state that survives a restart. The stages after the steps are in
test_data_stages.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from lepton.api.dataset import Step
from lepton.workloads.data.errors import DataError
from lepton.workloads.data.steps import build_steps

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
    "normalize: zero-width joiner, BOM and ideographic space": (
        {"normalize": {"unicode": "none"}}, {"text": ["\ufeffa\u3000\u3000b\u2060c\u200d "]}, {"text": ["a bc"]}, {}),
    "normalize: nothing asked, nothing changed": (
        {"normalize": {"unicode": "none", "whitespace": False}}, {"text": ["  ﬁ  x "]}, {"text": ["  ﬁ  x "]}, {}),
    "normalize: emoji kept": ({"normalize": {"case": "upper"}}, {"text": ["ok 👍🏽"]}, {"text": ["OK 👍🏽"]}, {}),
    "filter: length at least": ({"filter": {"length": True, "operator": "Ge", "value": 3}},
                                {"text": ["ab", "abc", None, "日本語"]}, {"text": ["abc", "日本語"]}, {"removed": 2}),
    "filter: numbers": ({"filter": {"column": "n", "operator": "Lt", "value": "2.5"}},
                        {"n": [1.0, 3.0, None]}, {"n": [1.0]}, {"removed": 2}),
    "filter: in": ({"filter": {"column": "l", "operator": "In", "values": [1, 3]}}, {"l": [1, 2, 3, None]},
                   {"l": [1, 3]}, {"removed": 2}),
    "filter: not in keeps no nulls": ({"filter": {"column": "l", "operator": "NotIn", "values": ["a"]}},
                                      {"l": ["a", "b", None]}, {"l": ["b"]}, {"removed": 2}),
    "filter: equal text": ({"filter": {"operator": "Eq", "value": "b"}}, {"text": ["a", "b", None]},
                           {"text": ["b"]}, {"removed": 2}),
    "filter: a boolean column": ({"filter": {"column": "b", "operator": "Ne", "value": "true"}},
                                 {"b": [True, False, None]}, {"b": [False]}, {"removed": 2}),
    "filter: not null": ({"filter": {"column": "l", "operator": "NotNull"}}, {"l": [None, 1]}, {"l": [1]},
                         {"removed": 1}),
    "dedupe exact": ({"dedupe": {}}, {"text": ["a", "b", "a", None, None]}, {"text": ["a", "b", None]},
                     {"removed": 2}),
    "dedupe exact: case and space matter": ({"dedupe": {}}, {"text": ["A b", "a b", "A  b", "A b"]},
                                            {"text": ["A b", "a b", "A  b"]}, {"removed": 1}),
    "dedupe exact: duplicates only": ({"dedupe": {}}, {"text": ["same"] * 5}, {"text": ["same"]}, {"removed": 4}),
    "dedupe minhash: a near duplicate goes": ({"dedupe": {"method": "minhash"}},
                                              {"text": [LONG, LONG + " extra", "something else entirely"]},
                                              {"text": [LONG, "something else entirely"]}, {"removed": 1}),
    "dedupe minhash: duplicates only": ({"dedupe": {"method": "minhash"}}, {"text": [LONG] * 4}, {"text": [LONG]},
                                        {"removed": 3}),
    "dedupe minhash: short distinct texts kept": ({"dedupe": {"method": "minhash"}},
                                                  {"text": ["a", "b", "a b", "b a", ""]},
                                                  {"text": ["a", "b", "a b", "b a", ""]}, {"removed": 0}),
    "mask pii": ({"maskPii": {}}, {"text": ["mail a.b@c.org or call +1 555 123 4567 from 10.0.0.12", None]},
                 {"text": ["mail <email> or call <phone> from <ip>", None]}, {"email": 1, "phone": 1, "ip": 1}),
    "mask pii: counts by type, an IP is not a phone number": (
        {"maskPii": {"entities": ["phone", "ip", "email"]}},
        {"text": ["a@b.de, c.d+e@f.co.uk; 192.168.100.120 or 030 1234 5678", "10.1.2.3 +49 (30) 1234-5678"]},
        {"text": ["<email>, <email>; <ip> or <phone>", "<ip> <phone>"]}, {"email": 2, "ip": 2, "phone": 2}),
    "mask pii: only e-mail, own mask": ({"maskPii": {"entities": ["email"], "replacement": "[{entity}]"}},
                                        {"text": ["x@y.io 10.0.0.1"]}, {"text": ["[email] 10.0.0.1"]}, {"email": 1}),
    "map labels: drop unmapped": ({"mapLabels": {"mapping": {"bug": 1, "question": 0}, "unmapped": "drop"}},
                                  {"label": ["bug", "spam", "question"]}, {"label": [1, 0]},
                                  {"mapped": 2, "dropped": 1}),
    "map labels: keep unmapped": ({"mapLabels": {"mapping": {"1": "yes"}}}, {"label": [1, 0]},
                                  {"label": ["yes", "0"]}, {"mapped": 1, "dropped": 0}),
    "map labels: unmapped to null": ({"mapLabels": {"mapping": {"a": "x"}, "unmapped": "null"}},
                                     {"label": ["a", "b", None]}, {"label": ["x", None, None]},
                                     {"mapped": 1, "dropped": 0}),
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


ALL_NULL: list[tuple[dict[str, Any], dict[str, list[Any]], dict[str, int]]] = [
    ({"normalize": {}}, {"text": [None, None]}, {}),
    ({"maskPii": {}}, {"text": [None, None]}, {"email": 0, "ip": 0, "phone": 0}),
    ({"dropMissing": {}}, {"text": []}, {"removed": 2}),
    ({"filter": {"operator": "In", "values": ["a"]}}, {"text": []}, {"removed": 2}),
    ({"filter": {"operator": "Eq", "value": 1}}, {"text": []}, {"removed": 2}),
    ({"filter": {"length": True, "operator": "Ge", "value": 0}}, {"text": []}, {"removed": 2}),
    ({"dedupe": {}}, {"text": [None]}, {"removed": 1}),
    ({"dedupe": {"method": "minhash"}}, {"text": [None]}, {"removed": 1}),
    ({"autoLabel": {"keywords": [{"contains": ["x"], "label": 1}], "default": 0}},
     {"text": [None, None], "label": [0, 0]}, {"labelled": 0}),
    ({"fillMissing": {"column": "text", "value": 3}}, {"text": [3, 3]}, {"filled": 2}),
]  # fmt: skip


@pytest.mark.parametrize(("step", "expected", "details"), ALL_NULL)
def test_a_step_over_an_all_null_column(
    step: dict[str, Any], expected: dict[str, Any], details: dict[str, int]
) -> None:
    out, got = run(step, pa.table({"text": pa.nulls(2)}))
    assert out == expected and got == details


@pytest.mark.parametrize(
    "step",
    [{"select": ["body"]}, {"rename": {"body": "b"}}, {"dropMissing": {"columns": ["body"]}},
     {"fillMissing": {"column": "body", "value": 1}}, {"filter": {"column": "body", "operator": "NotNull"}},
     {"dedupe": {"column": "body"}}, {"maskPii": {"column": "body"}}, {"mapLabels": {"mapping": {"a": 1}}},
     {"autoLabel": {"textColumn": "body", "keywords": [{"contains": ["x"], "label": 1}]}}],
)  # fmt: skip
def test_a_missing_column_is_named(step: dict[str, Any]) -> None:
    with pytest.raises(DataError) as exc:
        run(step, {"text": ["a"]})
    assert exc.value.reason == "MissingColumn" and ("'body'" in exc.value.message or "'label'" in exc.value.message)


def test_a_bad_value_names_the_column() -> None:
    with pytest.raises(DataError) as exc:
        run({"filter": {"column": "n", "operator": "In", "values": [1, "two"]}}, {"n": [1]})
    assert exc.value.reason == "BadValue" and "'n'" in exc.value.message and "'two'" in exc.value.message


def near_corpus() -> list[str]:
    """Texts with near duplicates (a last word changed or added: Jaccard 0.95, caught by 14 x 8 bands with
    odds of 1 - 1e-13) and exact repeats, in a shuffled order."""
    rng = np.random.default_rng(7)
    base = [" ".join(f"w{rng.integers(10_000)}" for _ in range(40)) for _ in range(60)]
    rows = base + [t + " thanks" for t in base[::2]] + [t.rsplit(" ", 1)[0] + " changed" for t in base[1::3]]
    rows += base[::5]
    return [rows[i] for i in rng.permutation(len(rows))]


@pytest.mark.parametrize("batch", [1, 7, 50, 1000])
def test_minhash_dedupe_keeps_one_per_cluster_whatever_the_batches(batch: int) -> None:
    rows = near_corpus()
    (whole,) = build_steps([Step.model_validate({"dedupe": {"method": "minhash"}})], "text")
    kept = whole.apply(pa.table({"text": rows})).column("text").to_pylist()
    assert len(kept) == 60  # one per base text: every near duplicate found, no distinct text lost
    assert {" ".join(t.split()[:20]) for t in kept} == {" ".join(t.split()[:20]) for t in rows}
    (batched,) = build_steps([Step.model_validate({"dedupe": {"method": "minhash"}})], "text")
    got = [t for i in range(0, len(rows), batch) for t in
           batched.apply(pa.table({"text": rows[i: i + batch]})).column("text").to_pylist()]  # fmt: skip
    assert got == kept and batched.details == whole.details == {"removed": len(rows) - 60}


@pytest.mark.parametrize("method", ["exact", "minhash"])
def test_dedupe_state_round_trip_equals_an_uninterrupted_run(method: str) -> None:
    rows = near_corpus()
    batches = [pa.table({"text": rows[i : i + 40]}) for i in range(0, len(rows), 40)]
    step = Step.model_validate({"dedupe": {"method": method}})
    (whole,) = build_steps([step], "text")
    expected = [whole.apply(b).column("text").to_pylist() for b in batches]
    (first,) = build_steps([step], "text")
    for b in batches[:2]:
        first.apply(b)
    state = {k: v.copy() for k, v in first.state().items()}
    assert all(v.dtype == np.uint64 for v in state.values()) and len(state) == (1 if method == "exact" else 14)
    (resumed,) = build_steps([step], "text")
    resumed.restore(state, first.rows_in, first.rows_out, first.details)
    assert [resumed.apply(b).column("text").to_pylist() for b in batches[2:]] == expected[2:]
    assert (resumed.rows_in, resumed.rows_out, resumed.details) == (whole.rows_in, whole.rows_out, whole.details)


def test_step_names_and_stateless_steps() -> None:
    specs: list[dict[str, Any]] = [{"select": ["text"]}, {"maskPii": {}}, {"dedupe": {}}]
    steps = build_steps([Step.model_validate(s) for s in specs], "text")
    assert [s.name for s in steps] == ["0:select", "1:maskPii", "2:dedupe"]
    assert steps[0].state() == {} and steps[1].state() == {}

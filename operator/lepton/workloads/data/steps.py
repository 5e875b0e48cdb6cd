"""The pipeline steps, each applied to one Arrow table (a batch) at a time with pyarrow.compute.

Every step counts rows in and out and what it did (`details`). Dedupe is the one step with memory
across batches: the hashes of the rows it kept, as sorted numpy arrays (8 bytes per kept row and
band), which `state()`/`restore()` hand to the runner so an interrupted preparation resumes with them.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lepton.api.dataset import Step
from lepton.api.pii import PII, ordered
from lepton.workloads.data.errors import DataError, Reason
from lepton.workloads.data.minhash import band_hashes, stable_hashes

_COMPARE = {"Eq": "equal", "Ne": "not_equal", "Lt": "less", "Le": "less_equal", "Gt": "greater",
            "Ge": "greater_equal"}  # fmt: skip


class StepRunner:
    kind = ""

    def __init__(self, index: int, spec: Any, text_field: str) -> None:
        self.name = f"{index}:{self.kind}"
        self.spec, self.text_field = spec, text_field
        self.rows_in = self.rows_out = 0
        self.details: dict[str, int] = {}

    def apply(self, table: pa.Table) -> pa.Table:
        self.rows_in += table.num_rows
        out = self.transform(table)
        self.rows_out += out.num_rows
        return out

    def transform(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError

    def count(self, key: str, n: int) -> None:
        self.details[key] = self.details.get(key, 0) + int(n)

    def column(self, table: pa.Table, name: str | None) -> str:
        name = name or self.text_field
        if name not in table.column_names:
            raise DataError(Reason.MISSING_COLUMN, f"step {self.name}: no column {name!r} (columns: "
                            f"{', '.join(table.column_names)})")  # fmt: skip
        return name

    def text(self, table: pa.Table, name: str | None) -> tuple[str, pa.ChunkedArray]:
        name = self.column(table, name)
        values = table[name]
        if pa.types.is_null(values.type):
            values = values.cast(pa.string())
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            raise DataError(Reason.BAD_VALUE, f"step {self.name}: column {name!r} is {values.type}, not text")
        return name, values

    def release(self) -> None:
        """Drop memory only later batches would need (after the last batch; counts stay)."""

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def restore(self, state: dict[str, np.ndarray], rows_in: int, rows_out: int, details: dict[str, int]) -> None:
        self.rows_in, self.rows_out, self.details = rows_in, rows_out, dict(details)


def _scalar(value: Any, type_: pa.DataType, where: str) -> pa.Scalar:
    """A spec value (int or text) as a scalar of the column's type."""
    try:
        if pa.types.is_null(type_):
            return pa.scalar(value)
        if isinstance(value, str) and (pa.types.is_integer(type_) or pa.types.is_floating(type_)):
            return pc.cast(pa.scalar(value), type_)
        if pa.types.is_boolean(type_) and isinstance(value, str):
            return pa.scalar({"true": True, "false": False}[value.lower()])
        return pc.cast(pa.scalar(value), type_)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError):
        raise DataError(Reason.BAD_VALUE, f"{where}: {value!r} is not a {type_} value") from None


class Select(StepRunner):
    kind = "select"

    def transform(self, table: pa.Table) -> pa.Table:
        return table.select([self.column(table, c) for c in self.spec])


class Rename(StepRunner):
    kind = "rename"

    def transform(self, table: pa.Table) -> pa.Table:
        for old in self.spec:
            self.column(table, old)
        return table.rename_columns([self.spec.get(c, c) for c in table.column_names])


class DropMissing(StepRunner):
    kind = "dropMissing"

    def transform(self, table: pa.Table) -> pa.Table:
        columns = [self.column(table, c) for c in self.spec.columns] or table.column_names
        keep = pa.array(np.ones(table.num_rows, bool))
        for name in columns:
            col = table[name]
            ok = pc.is_valid(col)
            if self.spec.empty_strings and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                ok = pc.and_(ok, pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0))
            keep = pc.and_(keep, pc.fill_null(ok, False))
        out = table.filter(keep)
        self.count("removed", table.num_rows - out.num_rows)
        return out


class FillMissing(StepRunner):
    kind = "fillMissing"

    def transform(self, table: pa.Table) -> pa.Table:
        name = self.column(table, self.spec.column)
        col = table[name]
        type_ = col.type if not pa.types.is_null(col.type) else pa.scalar(self.spec.value).type
        value = _scalar(self.spec.value, type_, f"step {self.name}, column {name!r}")
        self.count("filled", col.null_count)
        filled = pc.fill_null(col.cast(type_), value)
        return table.set_column(table.column_names.index(name), name, filled)


class Normalize(StepRunner):
    kind = "normalize"

    def transform(self, table: pa.Table) -> pa.Table:
        name, col = self.text(table, self.spec.column)
        if self.spec.unicode != "none":
            col = pc.utf8_normalize(col, form=self.spec.unicode)
        if self.spec.whitespace:
            # RE2's \s is ASCII only: add Unicode separators (no-break, ideographic, line/paragraph) and
            # NEL; zero-width characters go entirely.
            col = pc.replace_substring_regex(col, r"[\x{200B}-\x{200D}\x{2060}\x{FEFF}]", "")
            col = pc.utf8_trim_whitespace(pc.replace_substring_regex(col, r"[\s\p{Z}\x{85}]+", " "))
        if self.spec.case == "lower":
            col = pc.utf8_lower(col)
        elif self.spec.case == "upper":
            col = pc.utf8_upper(col)
        return table.set_column(table.column_names.index(name), name, col)


class Filter(StepRunner):
    kind = "filter"

    def transform(self, table: pa.Table) -> pa.Table:
        spec = self.spec
        name = self.column(table, spec.column)
        col = table[name]
        where = f"step {self.name}, column {name!r}"
        if spec.length:
            _, text = self.text(table, name)
            col = pc.utf8_length(text)
        if spec.operator == "NotNull" or pa.types.is_null(col.type):  # an all-null column: no row passes
            keep = pc.is_valid(col)
        elif spec.operator in ("In", "NotIn"):
            values = pa.array([_scalar(v, col.type, where).as_py() for v in spec.values or []], col.type)
            keep = pc.is_in(col, value_set=values)
            keep = pc.invert(keep) if spec.operator == "NotIn" else keep
            keep = pc.and_(keep, pc.is_valid(col))  # a missing value is never in (or out of) a list
        else:
            keep = getattr(pc, _COMPARE[spec.operator])(col, _scalar(spec.value, col.type, where))
        out = table.filter(pc.fill_null(keep, False))
        self.count("removed", table.num_rows - out.num_rows)
        return out


def _in_sorted(keys: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Mask of `keys` present in the sorted array `seen`."""
    if not len(seen):
        return np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(seen, keys), len(seen) - 1)
    hit: np.ndarray = seen[pos] == keys
    return hit


def _first_unseen(keys: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Mask of rows whose key is not in `seen` (sorted) and is the first of its value in this batch."""
    _, first = np.unique(keys, return_index=True)
    mask = np.zeros(len(keys), bool)
    mask[first] = True
    mask &= ~_in_sorted(keys, seen)
    return mask


_OPEN, _KEPT, _DROPPED = 0, 1, 2


def _near_keep(keys: np.ndarray, seen: list[np.ndarray]) -> np.ndarray:
    """Mask of rows none of whose band values equals a band value of a kept row (earlier batches: `seen`,
    this batch: an earlier kept row). A dropped row's bands never count, so the result is the one a
    row-by-row pass would give, whatever the batch boundaries. Decided by rounds over whole columns: a
    row is dropped once an earlier row sharing a band is kept, kept once every earlier row sharing a band
    is dropped; the earliest open row is always decided, and chains of near duplicates are short."""
    n, bands = keys.shape
    state = np.full(n, _OPEN, np.int8)
    for band in range(bands):
        state[_in_sorted(keys[:, band], seen[band])] = _DROPPED
    groups = []  # per band: row order sorted by value (stable), and each position's group start
    for band in range(bands):
        order = np.argsort(keys[:, band], kind="stable")
        value = keys[order, band]
        new = np.ones(n, bool)
        new[1:] = value[1:] != value[:-1]
        if new.all():
            continue  # every value distinct: this band relates no rows of this batch
        groups.append((order, np.maximum.accumulate(np.where(new, np.arange(n), 0))))
    while (open_ := state == _OPEN).any():
        after_kept, after_open = np.zeros(n, bool), np.zeros(n, bool)
        for order, start in groups:
            for flags, out in ((state[order] == _KEPT, after_kept), (open_[order], after_open)):
                before = np.cumsum(flags) - flags  # how many flagged rows precede, in value-then-row order
                out[order] |= before - before[start] > 0
        state[open_ & after_kept] = _DROPPED
        state[open_ & ~after_kept & ~after_open] = _KEPT
    kept: np.ndarray = state == _KEPT
    return kept


class Dedupe(StepRunner):
    """exact: a row is a duplicate when its text's 64-bit BLAKE2b hash was kept before (a false match
    among a billion rows has odds of about 1 in 40). minhash: when any band hash equals a band of an
    earlier kept row (LSH). State: one sorted uint64 array per band of the kept rows (exact: one)."""

    kind = "dedupe"

    def __init__(self, index: int, spec: Any, text_field: str) -> None:
        super().__init__(index, spec, text_field)
        self.seen: list[np.ndarray] = []  # one sorted array per band (exact: one)

    def keys(self, texts: pa.ChunkedArray) -> np.ndarray:
        if self.spec.method == "exact":
            return stable_hashes(texts)[:, None]
        return band_hashes(texts, self.spec.ngram, self.spec.bands, self.spec.rows_per_band, self.spec.seed)

    def transform(self, table: pa.Table) -> pa.Table:
        _, texts = self.text(table, self.spec.column)
        keys = self.keys(texts)
        if not self.seen:
            self.seen = [np.zeros(0, np.uint64) for _ in range(keys.shape[1])]
        exact = self.spec.method == "exact"
        keep = _first_unseen(keys[:, 0], self.seen[0]) if exact else _near_keep(keys, self.seen)
        for band in range(keys.shape[1]):  # kept keys are new and distinct: a merge, not a union's sort
            new = np.sort(keys[keep, band])
            self.seen[band] = np.insert(self.seen[band], np.searchsorted(self.seen[band], new), new)
        self.count("removed", int((~keep).sum()))
        return table.filter(pa.array(keep))

    def state(self) -> dict[str, np.ndarray]:
        return {f"band{i}": s for i, s in enumerate(self.seen)}

    def release(self) -> None:
        self.seen = []

    def restore(self, state: dict[str, np.ndarray], rows_in: int, rows_out: int, details: dict[str, int]) -> None:
        super().restore(state, rows_in, rows_out, details)
        self.seen = [np.asarray(state[f"band{i}"], np.uint64) for i in range(len(state))]


class MaskPii(StepRunner):
    kind = "maskPii"

    def transform(self, table: pa.Table) -> pa.Table:
        name, col = self.text(table, self.spec.column)
        # lepton.api.pii's fixed order whatever the spec's (the server's request log masks the same way).
        for entity in ordered(self.spec.entities):
            pattern = PII[entity]
            self.count(entity, pc.sum(pc.count_substring_regex(col, pattern)).as_py() or 0)
            col = pc.replace_substring_regex(col, pattern, self.spec.replacement.replace("{entity}", entity))
        return table.set_column(table.column_names.index(name), name, col)


class MapLabels(StepRunner):
    kind = "mapLabels"

    def transform(self, table: pa.Table) -> pa.Table:
        name = self.column(table, self.spec.column)
        as_text = pc.cast(table[name], pa.string())
        keys = pa.array(list(self.spec.mapping), pa.string())
        new_values = list(self.spec.mapping.values())
        type_ = pa.int64() if all(isinstance(v, int) for v in new_values) else pa.string()
        index = pc.index_in(as_text, value_set=keys)
        mapped = pc.take(pa.array([v if type_ == pa.int64() else str(v) for v in new_values], type_), index)
        hit = pc.fill_null(pc.is_valid(index), False)
        self.count("mapped", pc.sum(hit).as_py() or 0)
        if self.spec.unmapped == "keep":
            original = table[name] if table[name].type == type_ else pc.cast(table[name], type_, safe=False)
            mapped = pc.if_else(hit, mapped, original)
        out = table.set_column(table.column_names.index(name), name, mapped)
        if self.spec.unmapped == "drop":
            out = out.filter(hit)
        self.count("dropped", table.num_rows - out.num_rows)
        return out


class AutoLabel(StepRunner):
    kind = "autoLabel"

    def transform(self, table: pa.Table) -> pa.Table:
        spec = self.spec
        _, text = self.text(table, spec.text_column)
        lower = pc.utf8_lower(pc.fill_null(text, ""))
        labels = [r.label for r in spec.keywords] + ([spec.default] if spec.default is not None else [])
        type_ = pa.int64() if all(isinstance(v, int) for v in labels) else pa.string()
        result = pa.nulls(table.num_rows, type_) if spec.default is None else pa.array(
            [spec.default if type_ == pa.int64() else str(spec.default)] * table.num_rows, type_)  # fmt: skip
        matched = pa.array(np.zeros(table.num_rows, bool))
        for rule in reversed(spec.keywords):  # the first rule that matches wins: apply it last
            pattern = "|".join(re.escape(p.lower()) for p in rule.contains)
            hit = pc.match_substring_regex(lower, pattern)
            label = rule.label if type_ == pa.int64() else str(rule.label)
            result = pc.if_else(hit, pa.scalar(label, type_), result)
            matched = pc.or_(matched, hit)
        if spec.column in table.column_names and not spec.overwrite:
            existing = table[spec.column]
            existing = existing if existing.type == type_ else pc.cast(existing, type_, safe=False)
            keep_old = pc.is_valid(existing)
            result = pc.if_else(keep_old, existing, result)
            matched = pc.and_(matched, pc.invert(keep_old))
        self.count("labelled", pc.sum(matched).as_py() or 0)
        if spec.column in table.column_names:
            return table.set_column(table.column_names.index(spec.column), spec.column, result)
        return table.append_column(spec.column, result)


RUNNERS: dict[str, type[StepRunner]] = {r.kind: r for r in (Select, Rename, DropMissing, FillMissing, Normalize,
                                                          Filter, Dedupe, MaskPii, MapLabels, AutoLabel)}  # fmt: skip


def build_steps(pipeline: list[Step], text_field: str) -> list[StepRunner]:
    runners = []
    for index, step in enumerate(pipeline):
        (kind, _spec), *_ = ((k, v) for k, v in step.model_dump(by_alias=True).items() if v is not None)
        runners.append(RUNNERS[kind](index, getattr(step, _field(kind)), text_field))
    return runners


def _field(camel: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)

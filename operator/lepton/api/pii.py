"""The PII patterns, written once for two engines: pyarrow's RE2 (the Dataset's maskPii step) and
Python's `re` (the model server's request log, which must not import pyarrow). Standard library only.

The patterns keep to what both engines read alike: explicit `[0-9]` classes (never `\\d`), and `\\b`,
which RE2 reads as an ASCII word boundary; `re` is told the same with re.ASCII (`PATTERNS`). Matches are
leftmost-first in both. A table-driven unit test masks the same strings both ways.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

PiiEntity = Literal["email", "phone", "ip"]
ALL_PII: tuple[PiiEntity, ...] = ("email", "phone", "ip")

PII: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "ip": r"\b(?:(?:25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\b",
    # With a +country code: an optional (area) group, a first group of 1-4 digits (+33 6 ...) and 1 to 5
    # more; with an (area) group and no country code: 2 to 5 groups of 2-4 digits ((555) 123-4567); with
    # neither: 3 to 5 such groups. Groups are separated by a space, dot or dash (a bare number is not one).
    "phone": r"(?:\+[0-9]{1,3}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}(?:[ .-]?[0-9]{2,4}){1,5}"
    r"|\([0-9]{2,4}\)[ .-]?[0-9]{2,4}(?:[ .-][0-9]{2,4}){1,4}"
    r"|[0-9]{2,4}(?:[ .-][0-9]{2,4}){2,4})\b",
}
# A fixed order whatever a spec's: e-mails first (an address's digits are not a phone number), then IPs
# (192.168.100.120 has a phone number's shape).
PII_ORDER: tuple[PiiEntity, ...] = ("email", "ip", "phone")
PATTERNS: dict[str, re.Pattern[str]] = {k: re.compile(v, re.ASCII) for k, v in PII.items()}
DEFAULT_REPLACEMENT = "<{entity}>"


def ordered(entities: Iterable[str]) -> list[str]:
    """`entities` without repeats, in the order masking applies them."""
    wanted = set(entities)
    return [e for e in PII_ORDER if e in wanted]


def mask(text: str, entities: Iterable[str] = ALL_PII, replacement: str = DEFAULT_REPLACEMENT) -> tuple[str, int]:
    """`text` with every match of `entities` replaced, as the maskPii step does; and the matches' count."""
    found = 0
    for entity in ordered(entities):
        text, n = PATTERNS[entity].subn(replacement.replace("{entity}", entity).replace("\\", "\\\\"), text)
        found += n
    return text, found


def find(text: str, entities: Iterable[str] = ALL_PII) -> list[tuple[str, str]]:
    """(entity, matched text) of every match in `text`: what a scan of stored bytes looks for."""
    return [(e, m.group()) for e in ordered(entities) for m in PATTERNS[e].finditer(text)]

"""The one error a user can fix: its reason becomes the Dataset's condition reason, its file and line
say where, and its message never holds a secret."""

from __future__ import annotations

from lepton.api.dataset import PreparationError


class Reason:
    SOURCE_UNREACHABLE = "SourceUnreachable"  # DNS, connection, HTTP 4xx/5xx, missing file or bucket
    CREDENTIALS_MISSING = "CredentialsMissing"  # a named secret env var is unset or empty
    CREDENTIALS_REJECTED = "CredentialsRejected"  # the store refused the keys (403, InvalidAccessKeyId…)
    DIGEST_MISMATCH = "DigestMismatch"  # an HTTP source's sha256 does not match
    BAD_FORMAT = "BadFormat"  # a file that does not parse: file and line given
    MISSING_COLUMN = "MissingColumn"  # a step names a column the data does not have
    BAD_VALUE = "BadValue"  # a fill or filter value that does not convert to the column's type
    EMPTY_RESULT = "EmptyResult"  # no row left after the steps (or no input rows)
    OUTPUT_UNWRITABLE = "OutputUnwritable"  # the output directory cannot be written


class DataError(Exception):
    def __init__(self, reason: str, message: str, *, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.file, self.line = reason, message, file, line

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file and self.line else f"{self.file}: " if self.file else ""
        return f"{where}{self.message}"

    def to_summary(self) -> PreparationError:
        return PreparationError(reason=self.reason, message=self.message, file=self.file, line=self.line)

"""Error types of dataset validation: per-row errors and the exception that carries them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RowError:
    line: int | None  # 1-based line / record number, None for file-level problems
    field: str | None  # the field/column at fault, None if the row as a whole
    message: str

    def as_dict(self) -> dict:
        return {"line": self.line, "field": self.field, "message": self.message}

    def __str__(self) -> str:
        where = "file" if self.line is None else f"line {self.line}"
        if self.field is not None:
            where += f", field {self.field!r}"
        return f"{where}: {self.message}"


class DatasetValidationError(Exception):
    """``errors`` holds the first errors (at most max_errors); ``total`` counts all of them."""

    def __init__(self, errors: list[RowError], total: int | None = None):
        self.errors = list(errors)
        self.total = max(total or 0, len(self.errors))
        super().__init__(self._summary())

    def _summary(self) -> str:
        if not self.errors:
            return "invalid dataset"
        first = self.errors[0]
        if self.total == 1 and first.line is None:
            return first.message
        noun = "invalid row" if first.line is not None else "error"
        plural = "" if self.total == 1 else "s"
        return f"{self.total} {noun}{plural}; first: {first}"


class _RowProblem(Exception):
    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def _type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)

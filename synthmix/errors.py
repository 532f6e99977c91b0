"""User-facing errors: each names the file, subject or field at fault and what is wrong.

The CLI prints a SynthmixError's message without a traceback and exits non-zero; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class SynthmixError(Exception):
    """An error in the user's input or environment, reported as one clear message."""


class DataError(SynthmixError):
    """A problem with a dataset: a manifest, a NIfTI file, a subject."""


class SplitError(SynthmixError):
    """A split that cannot be made or that breaks a rule (overlap, empty subset)."""


class StudyError(SynthmixError):
    """An invalid study: every problem found, each naming its field."""

    def __init__(self, problems: list[str], source: str = "study"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s)\n{lines}")

    def __reduce__(self):
        # Pickled across processes (a Ray worker's error reaches the driver): rebuilt from the
        # problems, not from the formatted message, which __init__ would read as a list.
        return type(self), (self.problems, self.source)


class TrainingDiverged(SynthmixError):
    """A training loss became NaN or infinite."""


def headline(text: str) -> str:
    """An error's first line for one-line summaries; a first line that only announces what
    follows (it ends with ":", as Ray's wrappers do) takes the next non-empty line with it."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]

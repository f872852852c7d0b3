"""One exception type for every problem caused by the user's input.

The CLI turns it into a single line `error: <file>: <problem>` and exit code 2.
"""

from __future__ import annotations

from pathlib import Path


class MedfakeError(Exception):
    """Bad input: a file, a coordinate, an option. Carries the offending path if any."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = " ".join(str(self.message).split())
        return f"{self.path}: {text}" if self.path else text

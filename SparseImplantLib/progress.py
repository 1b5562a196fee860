"""One progress-event type shared by the pipeline, the terminal bar and the Slicer module.

The CLI writes events as JSON lines (``--progress json``) prefixed with ``PROGRESS_PREFIX`` so the
Slicer module can pick them out of a subprocess's mixed output.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Optional, TextIO

PROGRESS_PREFIX = "SPARSEIMPLANT_PROGRESS "


@dataclass(frozen=True)
class ProgressEvent:
    """``fraction`` is the overall completion in [0, 1]; ``stage`` a short machine-readable name."""

    stage: str
    fraction: float
    message: str = ""

    def to_json_line(self) -> str:
        return PROGRESS_PREFIX + json.dumps(asdict(self))

    @staticmethod
    def from_line(line: str) -> Optional["ProgressEvent"]:
        """Parse one output line; returns None for lines that are not progress events."""
        if not line.startswith(PROGRESS_PREFIX):
            return None
        try:
            data = json.loads(line[len(PROGRESS_PREFIX):])
            return ProgressEvent(str(data["stage"]), float(data["fraction"]), str(data.get("message", "")))
        except (ValueError, KeyError, TypeError):
            return None


ProgressCallback = Callable[[ProgressEvent], None]


def ignore_progress(event: ProgressEvent) -> None:
    """Default callback for library calls that nobody watches."""


def json_lines_progress(stream: TextIO = sys.stdout) -> ProgressCallback:
    """Callback writing machine-readable progress lines (for the Slicer module)."""

    def report(event: ProgressEvent) -> None:
        stream.write(event.to_json_line() + "\n")
        stream.flush()

    return report


class TerminalProgress:
    """A tqdm bar driven by progress events; use as a context manager."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {elapsed} {postfix}")

    def __call__(self, event: ProgressEvent) -> None:
        target = round(100 * min(max(event.fraction, 0.0), 1.0))
        self._bar.set_description(event.stage)
        if event.message:
            self._bar.set_postfix_str(event.message)
        self._bar.update(max(0, target - self._bar.n))

    def __enter__(self) -> "TerminalProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

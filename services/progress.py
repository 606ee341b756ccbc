"""A progress line at the foot of a terminal, with everything else written above it.

The demo redraws its progress line in place every second (``\\r``, then the line, then
"clear to the end of the line"). Anything else written to the terminal meanwhile (a log
line from the logging thread, the access log when asked for there) would land glued to
the end of that line; written through a ``ProgressLine`` it goes above it instead: the
line is cleared, the text written, and the line drawn again beneath, as tqdm's ``write``
does. It stands in for ``sys.stderr`` while the demo runs on a terminal.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from typing import Any, TextIO

# ANSI: clear from the cursor to the end of the line.
CLEAR_LINE = "\x1b[K"


def terminal_width() -> int:
    """The terminal's width in columns (80 when it cannot be told)."""
    return shutil.get_terminal_size().columns


class ProgressLine:
    """A stream that keeps one redrawn line below whatever is written through it."""

    def __init__(self, stream: TextIO, width: Callable[[], int] = terminal_width) -> None:
        self._stream = stream
        self._width = width
        self._line = ""
        # Text written so far ended a line: the progress line is drawn beneath it.
        self._at_line_start = True
        # The logging thread and the event loop both write.
        self._lock = threading.Lock()

    def show(self, line: str) -> None:
        """Draw the line in place of the previous one (cut to the terminal's width: a
        wrapped line cannot be redrawn with a carriage return)."""
        with self._lock:
            self._line = line[: max(self._width() - 1, 1)]
            if self._at_line_start:
                self._stream.write(f"\r{self._line}{CLEAR_LINE}")
                self._stream.flush()

    def end(self) -> None:
        """Leave the last line standing and move below it."""
        with self._lock:
            if self._line and self._at_line_start:
                self._stream.write("\n")
                self._stream.flush()
            self._line = ""

    def write(self, text: str) -> int:
        """Write text above the progress line."""
        if not text:
            return 0
        with self._lock:
            if self._line and self._at_line_start:
                self._stream.write(f"\r{CLEAR_LINE}")
            self._stream.write(text)
            self._at_line_start = text.endswith("\n")
            if self._line and self._at_line_start:
                self._stream.write(self._line)
            self._stream.flush()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        # isatty, fileno, encoding and the rest: the terminal's own.
        return getattr(self._stream, name)

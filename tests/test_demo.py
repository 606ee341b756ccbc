"""What `zai-proxy demo` shows on the terminal, as a real process: the banner, a readable
progress line, and no access lines (they go to the file the banner names)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

from tests.support import interrupt, wait_until
from tests.test_up import stack_env, url
from zai_proxy.up import DEMO_ACCESS_LOG

ACCESS_LINE = "zai_proxy.access request_id="
PROGRESS = re.compile(r"demo \d\d:\d\d  sent [\d,]+  ok [\d,]+  held back [\d,]+")


class Terminal:
    """A pseudo-terminal 200 columns wide, and everything written to it."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the other side closed
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    def text(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def close(self) -> None:
        os.close(self.slave)
        self._reader.join(5)
        os.close(self.master)


@contextmanager
def demo(
    cwd: Path, env: dict[str, str], *args: str, terminal: Terminal | None = None
) -> Iterator[tuple[subprocess.Popen, Path]]:
    """The demo, run in `cwd`, its stdout and stderr to a file (or to `terminal`)."""
    output = cwd / "terminal.txt"
    with output.open("wb") as out:
        sink: int | IO[bytes] = out if terminal is None else terminal.slave
        process = subprocess.Popen(
            [sys.executable, "-m", "zai_proxy", "demo", *args],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
        )  # fmt: skip
    try:
        yield process, output
    finally:
        interrupt(process)


def access_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if ACCESS_LINE in line]


def banner_rows(text: str) -> list[str]:
    """The banner's rows: from "is up" to "Ctrl-C stops everything."."""
    lines = text.replace("\r\n", "\n").splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.startswith("zai-proxy ") and "is up" in line
    )
    end = next(i for i, line in enumerate(lines) if line.startswith("Ctrl-C stops everything"))
    return lines[start + 1 : end]


def test_demo_writes_its_access_log_to_the_file_its_banner_names_and_plain_progress_lines(
    tmp_path: Path,
) -> None:
    env = stack_env(tmp_path)
    env.pop("ACCESS_LOG_FILE", None)
    log_file = tmp_path / DEMO_ACCESS_LOG  # the default: in the working directory
    with demo(tmp_path, env) as (process, output):
        wait_until(lambda: len(PROGRESS.findall(output.read_text())) >= 2, timeout=60)
        wait_until(lambda: len(access_lines(log_file)) >= 50, timeout=20)
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
    text = output.read_text()
    rows = banner_rows(text)
    assert f"  {'access log':<22} {log_file}" in rows, rows
    # The simulated upstream is one part of the stack, named once.
    assert [row for row in rows if row.lstrip().startswith("upstream")] == [
        next(row for row in rows if "upstream (simulated)" in row)
    ], rows
    assert ACCESS_LINE not in text
    assert "\r" not in text  # not a terminal: plain lines, nothing redrawn
    progress = [line for line in text.splitlines() if PROGRESS.search(line)]
    assert len(progress) >= 2 and all(PROGRESS.match(line) for line in progress), progress
    assert "Traceback" not in text
    lines = access_lines(log_file)
    assert any("path=/v1/chat/completions status=" in line for line in lines)
    assert any("path=/v1/messages status=" in line for line in lines)


def test_demo_on_a_terminal_redraws_one_progress_line_with_the_log_above_it(
    tmp_path: Path,
) -> None:
    env = stack_env(tmp_path)
    env.pop("ACCESS_LOG_FILE", None)
    terminal = Terminal()
    try:
        with demo(tmp_path, env, terminal=terminal) as (process, _):
            wait_until(lambda: len(PROGRESS.findall(terminal.text())) >= 3, timeout=60)
            # A log line while the progress line shows (the limiter logs an admin reset).
            reset = httpx.post(
                f"{url(env, 'LIMITER')}/reset", headers={"authorization": "Bearer admin-secret"}
            )
            assert reset.status_code == 200, reset.text
            wait_until(lambda: "reset by the admin API" in terminal.text(), timeout=10)
            count = len(PROGRESS.findall(terminal.text()))
            wait_until(lambda: len(PROGRESS.findall(terminal.text())) > count, timeout=10)
            process.send_signal(signal.SIGINT)
            assert process.wait(20) == 0
    finally:
        terminal.close()
    text = terminal.text()
    assert ACCESS_LINE not in text
    assert "Traceback" not in text
    # Each redraw returns to the line's start and clears what is left of the last one.
    assert re.search(r"\r" + PROGRESS.pattern + r".*?\x1b\[K\r" + PROGRESS.pattern, text), text
    # A log line starts on a line of its own, never glued to the end of a progress line,
    # and the progress line is drawn again beneath it (tests/test_progress.py).
    assert re.search(r"\r\x1b\[K[-\d]+ [\d:,]+ WARNING .*reset by the admin API\r?\ndemo 00:", text)
    for line in text.split("\n"):
        for drawn in line.split("\r"):
            if "zai_proxy." in drawn:
                assert re.match(r"(\x1b\[K)?\d{4}-\d\d-\d\d ", drawn), repr(line)
    assert len(access_lines(tmp_path / DEMO_ACCESS_LOG)) > 0


def test_demo_keeps_its_access_log_on_the_terminal_when_asked(tmp_path: Path) -> None:
    env = stack_env(tmp_path)
    with demo(tmp_path, env, "--access-log", "-") as (process, output):
        wait_until(lambda: ACCESS_LINE in output.read_text(), timeout=60)
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
    text = output.read_text()
    assert not any(row.lstrip().startswith("access log") for row in banner_rows(text))
    assert not (tmp_path / DEMO_ACCESS_LOG).exists()
    assert "Traceback" not in text

"""The demo's progress line on a terminal: redrawn in place, with other text above it."""

from __future__ import annotations

import io

from zai_proxy.progress import CLEAR_LINE, ProgressLine


def terminal(width: int = 40) -> tuple[io.StringIO, ProgressLine]:
    screen = io.StringIO()
    return screen, ProgressLine(screen, width=lambda: width)


def test_each_show_redraws_the_line_from_its_start_and_clears_the_rest() -> None:
    screen, line = terminal()
    line.show("demo 00:01  sent 10")
    line.show("demo 00:02  sent 9")
    assert screen.getvalue() == f"\rdemo 00:01  sent 10{CLEAR_LINE}\rdemo 00:02  sent 9{CLEAR_LINE}"


def test_a_line_wider_than_the_terminal_is_cut_so_that_it_never_wraps() -> None:
    screen, line = terminal(width=10)
    line.show("0123456789abcdef")
    assert screen.getvalue() == f"\r012345678{CLEAR_LINE}"


def test_text_written_through_it_goes_above_the_line_which_is_drawn_again_beneath() -> None:
    screen, line = terminal()
    line.show("demo 00:01")
    line.write("2026-12-07 INFO limiter leads\n")
    assert screen.getvalue() == (
        f"\rdemo 00:01{CLEAR_LINE}\r{CLEAR_LINE}2026-12-07 INFO limiter leads\ndemo 00:01"
    )


def test_a_line_written_in_parts_is_not_cut_by_a_redraw() -> None:
    screen, line = terminal()
    line.show("demo 00:01")
    line.write("half a ")
    line.show("demo 00:02")  # held back until the text ends its line
    line.write("line\n")
    assert screen.getvalue() == (f"\rdemo 00:01{CLEAR_LINE}\r{CLEAR_LINE}half a line\ndemo 00:02")


def test_text_before_any_progress_is_written_as_it_is() -> None:
    screen, line = terminal()
    line.write("zai-proxy is up\n")
    assert screen.getvalue() == "zai-proxy is up\n"


def test_end_leaves_the_last_line_standing_and_moves_below_it() -> None:
    screen, line = terminal()
    line.show("demo 00:09")
    line.end()
    line.write("shutting down\n")
    assert screen.getvalue() == f"\rdemo 00:09{CLEAR_LINE}\nshutting down\n"


def test_it_answers_for_the_terminal_it_writes_to() -> None:
    screen, line = terminal()
    assert line.isatty() is screen.isatty()

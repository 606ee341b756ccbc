"""The access log's file: appended to, shared by writers, refused with one clear error."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from zai_proxy.proxy.accesslog import AccessLog, to_terminal


def record(log: AccessLog, request_id: str) -> None:
    log.record(request_id, "POST", "/v1/chat/completions", 200, 0.25, "glm-4.6", 10, 5, "usage")


def test_unset_or_dash_means_the_terminal() -> None:
    assert to_terminal("") and to_terminal("-")
    assert not to_terminal("access.log")


def test_without_a_file_lines_go_to_the_stream() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    record(log, "r1")
    log.flush()
    assert "zai_proxy.access request_id=r1 method=POST" in stream.getvalue()


def test_two_writers_append_whole_lines_to_one_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("an earlier line\n")
    first, second = AccessLog(path=str(path)), AccessLog(path=str(path))
    for batch in range(50):
        for n in range(20):
            record(first, f"a{batch}-{n}")
            record(second, f"b{batch}-{n}")
        first.flush()
        second.flush()
    first.close()
    second.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "an earlier line"
    assert len(lines) == 1 + 2000
    assert all(line.endswith("tokens_source=usage") for line in lines[1:])


def test_run_flushes_what_is_queued_and_closes_the_file_when_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path=str(path))

    async def main() -> None:
        task = asyncio.create_task(log.run())
        await asyncio.sleep(0)
        record(log, "last")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert "request_id=last " in path.read_text()
    log.close()  # already closed: nothing to do


def test_a_file_that_cannot_be_opened_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"cannot open the access log .*missing/access\.log: No such file"
    ):
        AccessLog(path=str(tmp_path / "missing" / "access.log"))

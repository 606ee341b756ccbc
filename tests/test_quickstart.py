"""README's first quick-start command, `ZAI_API_KEY=... make run`, on a fresh clone.

The clone goes into a clean temporary directory; `make run` there must create its own
virtual environment, build the web UI and bring the whole system up. (The second command,
`make test`, is what `.ci/run` runs on a fresh clone of main: CI is its check.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support import TEST_KEY, free_port, wait_http, wait_until
from zai_proxy.simulator.process import start_simulator

ROOT = Path(__file__).resolve().parent.parent
# A fresh clone installs every Python dependency (the SDK test extras included) and the
# web UI's, then builds it: 100-130 s on two shared cores, over the suite's 120 s default.
pytestmark = pytest.mark.timeout(600)


def test_make_run_on_a_fresh_clone_brings_up_proxy_and_dashboard(tmp_path: Path) -> None:
    if shutil.which("npm") is None or shutil.which("make") is None:
        pytest.fail("the quick start needs make and npm (Node 20.19+ or 22.12+) on the PATH")
    clone = tmp_path / "zai-proxy"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    ports = {name: str(free_port()) for name in ("PROXY", "LIMITER", "COLLECTOR", "DASHBOARD")}
    with start_simulator() as upstream:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("VIRTUAL_ENV", "ZAI_", "REDIS_", "DATABASE_", "PYTHON"))
        }
        env.update({f"{name}_PORT": port for name, port in ports.items()})
        env.update(
            ZAI_API_KEY=TEST_KEY,
            ZAI_TARGET_URL=f"{upstream.url}/api/paas/v4",
            ZAI_ANTHROPIC_URL=f"{upstream.url}/api/anthropic",
            PATH=os.pathsep.join(
                p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p
            ),
        )
        log = (tmp_path / "make-run.log").open("wb")
        process = subprocess.Popen(
            ["make", "run"], cwd=clone, env=env, stdout=log, stderr=log, start_new_session=True
        )
        try:
            dashboard = f"http://127.0.0.1:{ports['DASHBOARD']}"
            wait_http(f"{dashboard}/healthz", timeout=900, process=process)
            proxy = f"http://127.0.0.1:{ports['PROXY']}"
            answer = httpx.post(
                f"{proxy}/v1/chat/completions",
                json={"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert answer.status_code == 200
            page = httpx.get(f"{dashboard}/")
            assert page.status_code == 200 and "<div id=" in page.text
            assert (clone / ".venv" / "bin" / "zai-proxy").exists()
            assert (clone / "services" / "dashboard-api" / "static" / "index.html").exists()
            wait_until(lambda: httpx.get(f"{proxy}/ready").status_code == 200, timeout=10)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()
    output = (tmp_path / "make-run.log").read_text(errors="replace")
    assert "is up" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]

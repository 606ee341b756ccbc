"""Starting a simulator as a real process, for tests and benchmarks of other packages.

Usage: `with start_simulator("--rate-limit", "40") as sim: httpx.post(sim.url + "/v1/...")`.
"""

import os
import selectors
import subprocess
import sys
import time
from types import TracebackType

from .server import READY_PREFIX

DEFAULT_START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


class SimulatorProcess:
    """A running simulator process; `url` is its base URL, `stop()` ends it."""

    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process = process
        self.url = url

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after a bound) and reap it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> "SimulatorProcess":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_simulator(
    *args: str, host: str = "127.0.0.1", timeout: float = DEFAULT_START_TIMEOUT_S
) -> SimulatorProcess:
    """Start `python -m zai_proxy.simulator` on a free port with extra CLI `args`; wait for it."""
    command = [sys.executable, "-m", "zai_proxy.simulator", "--host", host, "--port", "0", *args]
    # The simulator writes nothing to stdout but its ready line; stderr goes to ours.
    process = subprocess.Popen(command, stdout=subprocess.PIPE)  # noqa: S603 - our own command
    try:
        line = _read_ready_line(process, timeout)
    except BaseException:
        SimulatorProcess(process, "").stop()
        raise
    return SimulatorProcess(process, line.removeprefix(READY_PREFIX))


def _read_ready_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    if process.stdout is None:
        raise ValueError("the process was started without a stdout pipe")
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the simulator did not start within {timeout} s")
            if not selector.select(remaining):
                continue
            data = os.read(process.stdout.fileno(), 4096)
            if not data:
                raise RuntimeError(
                    f"simulator exited with code {process.wait()} before it was ready"
                )
            buffer += data
    line = buffer.split(b"\n", 1)[0].decode().strip()
    if not line.startswith(READY_PREFIX):
        raise RuntimeError(f"unexpected first line from the simulator: {line!r}")
    return line

"""Simulated LLM upstream (OpenAI and Anthropic dialects) for tests, benchmarks and the demo.

`build_app(SimulatorConfig(...))` gives the ASGI app; `python -m zai_proxy.simulator` serves
it; `zai_proxy.simulator.process.start_simulator()` starts it as a process. The x-sim-*
request headers that script each answer are listed in README.md beside this file.
"""

from .app import build_app
from .config import SimulatorConfig

__all__ = ["SimulatorConfig", "build_app"]

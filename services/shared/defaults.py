"""Defaults that more than one service reads."""

from __future__ import annotations

# Z.ai's general OpenAI-dialect base and its Anthropic-dialect base.
DEFAULT_TARGET_URL = "https://api.z.ai/api/paas/v4"
DEFAULT_ANTHROPIC_URL = "https://api.z.ai/api/anthropic"

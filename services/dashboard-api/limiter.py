"""The limiter's state for the dashboard: its admin ``GET /state``, or why not."""

from __future__ import annotations

from typing import Any

import aiohttp

DEFAULT_TIMEOUT = 2.0  # seconds: the dashboard's page must not hang on a dead limiter
MAX_ERROR_BODY = 200  # characters of a refusal shown to the operator


class LimiterClient:
    """Asks one limiter for its state with the admin token."""

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"LimiterClient(url={self.url!r}, token={'***' if self._token else ''!r})"

    @property
    def configured(self) -> bool:
        """Whether a limiter URL is set."""
        return bool(self.url)

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def state(self) -> dict[str, Any]:
        """``{"available": true, "state": ...}``, or ``{"available": false, "error": ...}``."""
        if not self.url:
            return {"available": False, "error": "no limiter configured (LIMITER_URL is empty)"}
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        where = f"{self.url}/state"
        try:
            async with self._session.get(where, headers=headers) as response:
                if response.status != 200:
                    body = (await response.text())[:MAX_ERROR_BODY]
                    return _unavailable(f"limiter at {where} answered {response.status}: {body}")
                state = await response.json(content_type=None)
        except TimeoutError:
            return _unavailable(f"limiter at {where} did not answer within {self._timeout.total} s")
        except aiohttp.ClientError as exc:
            return _unavailable(f"limiter at {where} unreachable: {type(exc).__name__}: {exc}")
        except ValueError as exc:
            return _unavailable(f"limiter at {where} sent no JSON: {exc}")
        if not isinstance(state, dict):
            return _unavailable(f"limiter at {where} sent {type(state).__name__}, not an object")
        return {"available": True, "state": state}


def _unavailable(error: str) -> dict[str, Any]:
    return {"available": False, "error": error}

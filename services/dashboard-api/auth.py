"""The optional read token (``DASHBOARD_TOKEN``) and where a request may carry it.

Three carriers: ``Authorization: Bearer <token>``; ``?token=<token>`` (``EventSource``
cannot set headers); and a cookie, set when a page is opened with a valid ``?token=``, so
that the page's own scripts and styles (which a browser fetches without the token) load,
and a reload without ``?token=`` still works. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

COOKIE = "zai_dashboard_token"
QUERY = "token"
REFUSAL = (
    "a valid dashboard token is required: send `Authorization: Bearer <token>` "
    "or add `?token=<token>` to the URL"
)

bearer_scheme = HTTPBearer(
    scheme_name="bearer", auto_error=False, description="DASHBOARD_TOKEN as a Bearer token."
)
query_scheme = APIKeyQuery(
    name=QUERY,
    scheme_name="query_token",
    auto_error=False,
    description="DASHBOARD_TOKEN in the query (EventSource cannot set headers).",
)
cookie_scheme = APIKeyCookie(
    name=COOKIE,
    scheme_name="cookie_token",
    auto_error=False,
    description="Set by the web UI's page when it is opened with a valid ?token=.",
)


class TokenGuard:
    """Checks a request's token against ``DASHBOARD_TOKEN`` (empty: everything is open)."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def __repr__(self) -> str:
        return f"TokenGuard(enabled={self.enabled})"

    @property
    def enabled(self) -> bool:
        """Whether a token is required."""
        return bool(self._token)

    def matches(self, given: str | None) -> bool:
        """Whether ``given`` is the token (constant time)."""
        return given is not None and hmac.compare_digest(given.encode(), self._token)

    def allows(self, request: Request) -> bool:
        """Whether any carrier of the request holds the token."""
        if not self.enabled:
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        candidates = [
            credentials.strip() if scheme.lower() == "bearer" else None,
            request.query_params.get(QUERY),
            request.cookies.get(COOKIE),
        ]
        # Every carrier is compared, so the time taken does not tell which one was close.
        results = [self.matches(candidate) for candidate in candidates]
        return any(results)

    def remember(self, request: Request, response: Response) -> None:
        """Set the cookie when the request brought a valid token in its URL."""
        if self.enabled and self.matches(request.query_params.get(QUERY)):
            response.set_cookie(
                COOKIE,
                request.query_params[QUERY],
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )

    def dependency(self) -> Any:
        """The FastAPI dependency that refuses requests without the token (401)."""

        async def require_token(
            request: Request,
            _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
            _query: Annotated[str | None, Depends(query_scheme)],
            _cookie: Annotated[str | None, Depends(cookie_scheme)],
        ) -> None:
            # The scheme parameters are there for the OpenAPI schema; the check reads the
            # request itself, so that every carrier is treated alike.
            if not self.allows(request):
                raise HTTPException(401, REFUSAL, headers={"WWW-Authenticate": "Bearer"})

        return Depends(require_token)

"""Which upstream attempts are tried again, and how long the proxy waits in between.

Retried: 429s of the frequency, concurrency and congestion classes (and Anthropic's 529
overloaded), network errors, and empty or truncated answers, as long as nothing has
reached the client yet. Never retried: quota 429s (1308/1310: the quota will not come
back within a retry), other 4xx and 5xx (passed through untouched). The wait is the
upstream's own hint (Retry-After, or a hint in the body) when it gives one, else
exponential back-off with full jitter (tenacity's ``wait_random_exponential``); a hint
longer than RETRY_MAX_DELAY ends the retries and the answer goes to the client. A 1302
(concurrency) is retried without back-off: the limiter has lowered the cap by then, and
admits the retry when a slot frees. Every retry is admitted by the limiter again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from zai_proxy.proxy.classify import body_retry_hint, retry_after_seconds
from zai_proxy.proxy.errors import ProxyError
from zai_proxy.shared.outcomes import Outcome

RETRYABLE = frozenset(
    {Outcome.RATE_FREQUENCY, Outcome.RATE_CONCURRENCY, Outcome.RATE_CONGESTION, Outcome.NETWORK}
)


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """An upstream error answer, read whole, kept to pass on if no retry succeeds."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def retry_hint(self) -> float | None:
        """Seconds the upstream asked to wait: Retry-After, else a hint in the body."""
        now = time.time()
        for name, value in self.headers:
            if name.lower() == b"retry-after":
                hint = retry_after_seconds(value.decode("latin-1"), now)
                if hint is not None:
                    return hint
        return body_retry_hint(self.body, now)


class RetryableAttempt(Exception):
    """An attempt failed in a way that another attempt may fix."""

    def __init__(
        self,
        outcome: Outcome,
        *,
        answer: UpstreamAnswer | None = None,
        error: ProxyError | None = None,
    ) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome
        self.answer = answer
        self.error = error
        self.retry_after = answer.retry_hint() if answer is not None else None


class RetryPolicy:
    """How many attempts a request gets and the waits between them."""

    def __init__(self, max_retries: int, backoff_base: float, backoff_max: float) -> None:
        if max_retries < 0 or backoff_base <= 0 or backoff_max < backoff_base:
            raise ValueError("need max_retries >= 0 and 0 < backoff_base <= backoff_max")
        self.max_retries = max_retries
        self.backoff_max = backoff_max
        self._backoff = wait_random_exponential(multiplier=backoff_base, max=backoff_max)

    def retryable(self, failed: RetryableAttempt) -> bool:
        """Whether a failed attempt is worth another (a hint beyond the back-off is not)."""
        return self.max_retries > 0 and (
            failed.retry_after is None or failed.retry_after <= self.backoff_max
        )

    def delay(self, failed: RetryableAttempt, attempt: int) -> float:
        """The wait after failed attempt number ``attempt``: the upstream's hint, else
        back-off; none after a 1302, whose retry waits for a free slot in the limiter."""
        if failed.outcome is Outcome.RATE_CONCURRENCY:
            return failed.retry_after or 0.0
        return max(failed.retry_after or 0.0, self._backoff(_Attempt(attempt)))  # type: ignore[arg-type]

    def retries(self, before_retry: Callable[[RetryableAttempt], None]) -> AsyncRetrying:
        """A tenacity loop over the retries that follow a failed first attempt.

        The first attempt runs outside it: building the loop costs objects (and garbage
        collections) that a request which succeeds at once should not pay for.
        """

        def wait(state: RetryCallState) -> float:
            exc = _failure(state)
            if exc is None:
                return 0.0
            # The loop's attempt n is the request's attempt n + 1.
            return self.delay(exc, state.attempt_number + 1)

        def retry(exc: BaseException) -> bool:
            return isinstance(exc, RetryableAttempt) and self.retryable(exc)

        def before_sleep(state: RetryCallState) -> None:
            exc = _failure(state)
            if exc is not None:
                before_retry(exc)

        return AsyncRetrying(
            stop=stop_after_attempt(self.max_retries),
            wait=wait,
            retry=retry_if_exception(retry),
            before_sleep=before_sleep,
            reraise=True,
        )


@dataclass(frozen=True, slots=True)
class _Attempt:
    """What tenacity's wait strategies read of a retry state: the attempt number."""

    attempt_number: int


def _failure(state: RetryCallState) -> RetryableAttempt | None:
    exc = state.outcome.exception() if state.outcome is not None else None
    return exc if isinstance(exc, RetryableAttempt) else None

"""Per-key counters behind x-sim-fail-first: the first n requests with a key fail."""


class FailFirstCounter:
    """Counts requests per x-sim-key, forgetting the least recently used keys beyond `capacity`."""

    __slots__ = ("_capacity", "_counts")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._counts: dict[str, int] = {}

    def should_fail(self, key: str, first: int) -> bool:
        """Count one more request with `key`; True while it is among the first `first`."""
        count = self._counts.pop(key, 0) + 1
        self._counts[key] = count
        if len(self._counts) > self._capacity:
            del self._counts[next(iter(self._counts))]
        return count <= first

    def reset(self) -> None:
        """Forget every key."""
        self._counts.clear()

"""The output text: cut into stream pieces, counted in words, repeated for bulk streams."""

import functools

BULK_CHUNK_CHARS = 16 * 1024


def split_text(text: str, pieces: int) -> list[str]:
    """Cut `text` into exactly `pieces` consecutive parts of near-equal length."""
    size = len(text)
    return [text[i * size // pieces : (i + 1) * size // pieces] for i in range(pieces)]


def word_count(text: str) -> int:
    """The number of whitespace-separated words, the default completion token count."""
    return len(text.split())


@functools.lru_cache(maxsize=16)
def bulk_text(text: str) -> str:
    """`text` repeated to about 16 KB, ending in a space so that copies stay separate words."""
    unit = text.strip() + " "
    return unit * max(1, -(-BULK_CHUNK_CHARS // len(unit)))

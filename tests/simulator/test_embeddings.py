"""OpenAI embeddings: the `list` shape, deterministic unit vectors, usage, bad requests."""

import base64
import math
import struct

import httpx
import pytest

from zai_proxy.simulator.embeddings import DEFAULT_DIMENSIONS, DEFAULT_MODEL

EMBEDDINGS = "/api/paas/v4/embeddings"


def vectors(answer: dict) -> list:
    return [item["embedding"] for item in answer["data"]]


def test_a_string_gets_one_unit_vector_with_usage(client: httpx.Client) -> None:
    answer = client.post(EMBEDDINGS, json={"model": "embedding-3", "input": "hello world"}).json()
    assert answer["object"] == "list"
    assert answer["model"] == "embedding-3"
    [item] = answer["data"]
    assert (item["object"], item["index"]) == ("embedding", 0)
    assert len(item["embedding"]) == DEFAULT_DIMENSIONS
    assert math.isclose(math.fsum(v * v for v in item["embedding"]), 1.0)
    # 11 UTF-8 bytes, one token per 4 of them rounded up
    assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


def test_the_same_input_always_gets_the_same_vector(client: httpx.Client) -> None:
    one = client.post(EMBEDDINGS, json={"input": ["a", "b"], "dimensions": 8}).json()
    two = client.post(EMBEDDINGS, json={"input": ["b", "a", "a"], "dimensions": 8}).json()
    a, b = vectors(one)
    assert a != b
    assert vectors(two) == [b, a, a]
    assert [item["index"] for item in two["data"]] == [0, 1, 2]
    assert two["model"] == DEFAULT_MODEL


def test_token_arrays_are_embedded_and_counted_by_length(client: httpx.Client) -> None:
    one = client.post(EMBEDDINGS, json={"input": [1, 2, 3], "dimensions": 4}).json()
    many = client.post(EMBEDDINGS, json={"input": [[1, 2, 3], [7], "abcdefgh"], "dimensions": 4})
    assert len(one["data"]) == 1
    assert many.json()["data"][0]["embedding"] == one["data"][0]["embedding"]
    assert one["usage"]["prompt_tokens"] == 3
    assert many.json()["usage"]["prompt_tokens"] == 3 + 1 + 2


def test_dimensions_cut_the_vector_and_it_stays_unit_length(client: httpx.Client) -> None:
    [vector] = vectors(client.post(EMBEDDINGS, json={"input": "x", "dimensions": 256}).json())
    assert len(vector) == 256
    assert math.isclose(math.fsum(v * v for v in vector), 1.0)


def test_base64_is_the_little_endian_float32_array_of_the_float_answer(
    client: httpx.Client,
) -> None:
    request = {"input": "the same text", "dimensions": 16}
    [floats] = vectors(client.post(EMBEDDINGS, json=request).json())
    encoded = client.post(EMBEDDINGS, json={**request, "encoding_format": "base64"}).json()
    [packed] = vectors(encoded)
    decoded = struct.unpack("<16f", base64.b64decode(packed))
    assert decoded == pytest.approx(floats, rel=1e-6)


def test_usage_headers_set_or_remove_the_usage(client: httpx.Client) -> None:
    exact = client.post(EMBEDDINGS, json={"input": "x"}, headers={"x-sim-prompt-tokens": "77"})
    assert exact.json()["usage"] == {"prompt_tokens": 77, "total_tokens": 77}
    none = client.post(EMBEDDINGS, json={"input": "x"}, headers={"x-sim-usage": "none"})
    assert "usage" not in none.json()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"input": ""},
        {"input": []},
        {"input": [""]},
        {"input": [[]]},
        {"input": [1.5]},
        {"input": [-1]},
        {"input": {"text": "x"}},
        {"input": "x", "dimensions": 0},
        {"input": "x", "dimensions": "8"},
        {"input": "x", "encoding_format": "int8"},
    ],
)
def test_requests_it_cannot_embed_answer_400_with_a_message(
    client: httpx.Client, body: dict
) -> None:
    answer = client.post(EMBEDDINGS, json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["message"]


def test_any_base_prefix_routes_to_embeddings(client: httpx.Client) -> None:
    for path in ("/v1/embeddings", "/api/coding/paas/v4/embeddings", EMBEDDINGS):
        assert client.post(path, json={"input": "x", "dimensions": 2}).json()["object"] == "list"

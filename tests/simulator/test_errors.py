"""Scripted failures: statuses, Z.ai error codes and shapes, fail-first, empty answers."""

import uuid

import httpx
import pytest

CHAT = "/v1/chat/completions"


@pytest.mark.parametrize("code", [1302, 1303, 1305, 1312])
def test_a_zai_code_answers_429_in_the_openai_shape_by_default(
    client: httpx.Client, code: int
) -> None:
    response = client.post(CHAT, json={}, headers={"x-sim-zai-code": str(code)})
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == str(code)
    assert error["message"]


@pytest.mark.parametrize(
    ("shape", "code_of"),
    [
        ("openai", lambda body: body["error"]["code"]),
        ("flat", lambda body: body["code"]),
        ("anthropic", lambda body: body["error"]["code"]),
    ],
)
def test_each_error_shape_carries_the_code(client: httpx.Client, shape: str, code_of) -> None:
    headers = {"x-sim-zai-code": "1305", "x-sim-error-shape": shape}
    body = client.post(CHAT, json={}, headers=headers).json()
    assert str(code_of(body)) == "1305"


def test_the_flat_shape_has_a_numeric_code_and_msg(client: httpx.Client) -> None:
    headers = {"x-sim-zai-code": "1302", "x-sim-error-shape": "flat"}
    body = client.post(CHAT, json={}, headers=headers).json()
    assert body["code"] == 1302 and body["success"] is False and body["msg"]


def test_the_anthropic_shape_is_a_rate_limit_error(client: httpx.Client) -> None:
    headers = {"x-sim-zai-code": "1303", "x-sim-error-shape": "anthropic"}
    body = client.post("/v1/messages", json={}, headers=headers).json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("code", [1308, 1310])
def test_quota_codes_name_the_reset_time(client: httpx.Client, code: int) -> None:
    body = client.post(CHAT, json={}, headers={"x-sim-zai-code": str(code)}).json()
    assert "will reset at 20" in body["error"]["message"]


def test_retry_after_is_passed_as_a_header(client: httpx.Client) -> None:
    headers = {"x-sim-zai-code": "1305", "x-sim-retry-after": "7"}
    response = client.post(CHAT, json={}, headers=headers)
    assert response.headers["retry-after"] == "7"


def test_a_scripted_status_answers_with_a_json_error(client: httpx.Client) -> None:
    response = client.post(CHAT, json={}, headers={"x-sim-status": "502"})
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "server_error"


def test_a_scripted_body_is_sent_verbatim(client: httpx.Client) -> None:
    headers = {"x-sim-status": "400", "x-sim-body": '{"error":{"message":"bad"}}'}
    response = client.post(CHAT, json={}, headers=headers)
    assert response.status_code == 400
    assert response.content == b'{"error":{"message":"bad"}}'
    assert response.headers["content-type"] == "application/json"


def test_fail_first_fails_that_many_requests_per_key(client: httpx.Client) -> None:
    headers = {"x-sim-fail-first": "2", "x-sim-key": uuid.uuid4().hex}
    statuses = [client.post(CHAT, json={}, headers=headers).status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]


def test_fail_first_uses_the_scripted_zai_code(client: httpx.Client) -> None:
    headers = {"x-sim-fail-first": "1", "x-sim-key": uuid.uuid4().hex, "x-sim-zai-code": "1302"}
    first = client.post(CHAT, json={}, headers=headers)
    second = client.post(CHAT, json={}, headers=headers)
    assert first.status_code == 429 and first.json()["error"]["code"] == "1302"
    assert second.status_code == 200


def test_fail_first_without_a_key_is_refused(client: httpx.Client) -> None:
    response = client.post(CHAT, json={}, headers={"x-sim-fail-first": "1"})
    assert response.status_code == 400
    assert "x-sim-key" in response.json()["error"]["message"]


def test_empty_answers_200_with_no_body(client: httpx.Client) -> None:
    response = client.post(CHAT, json={}, headers={"x-sim-empty": "1"})
    assert response.status_code == 200
    assert response.content == b""


def test_an_unknown_simulator_header_is_refused(client: httpx.Client) -> None:
    response = client.post(CHAT, json={}, headers={"x-sim-chunkz": "3"})
    assert response.status_code == 400
    assert "x-sim-chunkz" in response.json()["error"]["message"]


def test_a_body_that_is_not_json_is_refused(client: httpx.Client) -> None:
    assert client.post(CHAT, content=b"not json").status_code == 400

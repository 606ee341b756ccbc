"""What the simulator recorded, echoes back, and counts."""

import base64
import hashlib
import uuid

import httpx


def test_a_recorded_request_shows_what_arrived_byte_for_byte(client: httpx.Client) -> None:
    request_id = uuid.uuid4().hex
    body = b'{"model":"glm-4.6","messages":[]}\n'
    headers = [
        ("x-request-id", request_id),
        ("X-Custom", "one"),
        ("x-custom", "two"),
        ("content-type", "application/json"),
    ]
    client.post("/api/paas/v4/chat/completions?beta=1&x=%2F", content=body, headers=headers)
    record = client.get(f"/_sim/requests/{request_id}").json()
    assert record["method"] == "POST"
    assert record["path"] == "/api/paas/v4/chat/completions"
    assert record["raw_path"] == "/api/paas/v4/chat/completions"
    assert record["query_string"] == "beta=1&x=%2F"
    custom = [value for name, value in record["headers"] if name == "x-custom"]
    assert custom == ["one", "two"]
    assert ["x-request-id", request_id] in record["headers"]
    assert all(name == name.lower() for name, _ in record["headers"])
    assert base64.b64decode(record["body_b64"]) == body
    assert record["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert record["seen"] == 1


def test_a_repeated_request_id_keeps_the_last_and_counts(client: httpx.Client) -> None:
    request_id = uuid.uuid4().hex
    for attempt in (b"first", b"second"):
        client.post("/v1/anything", content=attempt, headers={"x-request-id": request_id})
    record = client.get(f"/_sim/requests/{request_id}").json()
    assert base64.b64decode(record["body_b64"]) == b"second"
    assert record["seen"] == 2


def test_an_unknown_request_id_is_404(client: httpx.Client) -> None:
    assert client.get(f"/_sim/requests/{uuid.uuid4().hex}").status_code == 404


def test_other_paths_echo_what_arrived(client: httpx.Client) -> None:
    response = client.put("/some/odd%20path?q=a+b", content=b"payload")
    echo = response.json()
    assert response.status_code == 200
    assert echo["method"] == "PUT"
    assert echo["path"] == "/some/odd path"
    assert echo["raw_path"] == "/some/odd%20path"
    assert echo["query_string"] == "q=a+b"
    assert base64.b64decode(echo["body_b64"]) == b"payload"


def test_a_get_on_a_generation_path_is_echoed(client: httpx.Client) -> None:
    echo = client.get("/v1/chat/completions").json()
    assert echo["method"] == "GET"


def test_stats_count_generation_requests_and_reset(client: httpx.Client) -> None:
    assert client.post("/_sim/reset").json() == {"reset": True}
    client.post("/v1/chat/completions", json={})
    client.post("/v1/messages", json={})
    client.post("/v1/messages", json={}, headers={"x-sim-status": "500"})
    client.post("/v1/embeddings", json={"input": "x"})
    client.get("/v1/models")
    stats = client.get("/_sim/stats").json()
    assert stats["requests"] == 4
    assert stats["accepted"] == 4
    assert stats["scripted_errors"] == 1
    assert stats["rejected_429"] == {}
    assert stats["in_flight"] == 0
    assert stats["max_in_flight"] >= 1
    assert stats["limit"] == {"rate": None, "max_concurrency": None}
    client.post("/_sim/reset")
    assert client.get("/_sim/stats").json()["requests"] == 0


def test_an_unknown_control_path_is_404(client: httpx.Client) -> None:
    assert client.get("/_sim/nothing").status_code == 404

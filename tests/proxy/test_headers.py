"""Header rules: hop-by-hop dropped both ways, credentials replaced, the rest kept in order."""

from __future__ import annotations

from zai_proxy.proxy.headers import (
    UpstreamAuth,
    client_response_headers,
    request_id_of,
    upstream_request_headers,
)

auth = UpstreamAuth("sk-upstream")


def test_upstream_key_replaces_client_credentials_in_the_dialects_form() -> None:
    client = [(b"authorization", b"Bearer mine"), (b"x-api-key", b"mine"), (b"accept", b"*/*")]
    openai = upstream_request_headers(client, "openai", auth, "rid")
    anthropic = upstream_request_headers(client, "anthropic", auth, "rid")
    assert ("Authorization", "Bearer sk-upstream") in openai
    assert [h for h in openai if h[0].lower() in ("authorization", "x-api-key")] == [
        ("Authorization", "Bearer sk-upstream")
    ]
    assert [h for h in anthropic if h[0].lower() in ("authorization", "x-api-key")] == [
        ("x-api-key", "sk-upstream")
    ]


def test_request_hop_by_hop_and_connection_listed_headers_are_dropped() -> None:
    client = [
        (b"host", b"proxy.local"),
        (b"connection", b"keep-alive, X-Secret-Hop"),
        (b"x-secret-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"te", b"trailers"),
        (b"trailer", b"x"),
        (b"upgrade", b"h2c"),
        (b"proxy-authorization", b"Basic x"),
        (b"content-length", b"10"),
        (b"accept-encoding", b"gzip, br"),
        (b"anthropic-version", b"2023-06-01"),
        (b"x-custom", b"a"),
        (b"x-custom", b"b"),
    ]
    out = upstream_request_headers(client, "anthropic", auth, "rid-1")
    names = [name.lower() for name, _ in out]
    for dropped in (
        "host",
        "connection",
        "x-secret-hop",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "content-length",
    ):
        assert dropped not in names
    assert [v for n, v in out if n == "x-custom"] == ["a", "b"]
    assert ("anthropic-version", "2023-06-01") in out
    assert ("X-Request-Id", "rid-1") in out
    assert ("Accept-Encoding", "identity") in out


def test_response_hop_by_hop_headers_are_dropped_and_the_request_id_set() -> None:
    upstream = [
        (b"Content-Type", b"text/event-stream"),
        (b"Connection", b"close, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Content-Length", b"12"),
        (b"X-Request-Id", b"upstream-id"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    kept = client_response_headers(upstream, "mine", keep_length=True)
    assert kept == [
        (b"content-type", b"text/event-stream"),
        (b"content-length", b"12"),
        (b"x-upstream-request-id", b"upstream-id"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"x-request-id", b"mine"),
    ]
    changed = client_response_headers(upstream, "mine", keep_length=False)
    assert (b"content-length", b"12") not in changed


def test_request_ids_are_kept_when_sane_and_made_otherwise() -> None:
    assert request_id_of([(b"x-request-id", b"abc-123_X.y:z")]) == "abc-123_X.y:z"
    made = request_id_of([(b"x-request-id", b"bad id\r\nx: y")])
    assert len(made) == 32 and made.isalnum()
    assert request_id_of([(b"x-request-id", b"a" * 129)]) != "a" * 129
    assert len(request_id_of([])) == 32


def test_the_key_does_not_show_in_a_repr() -> None:
    assert "sk-upstream" not in repr(auth)

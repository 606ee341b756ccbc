"""The router maps targets onto the dialect's base and refuses anything that could escape it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zai_proxy.proxy.errors import BadRequestTarget
from zai_proxy.proxy.routing import TEMPLATES, Router

OPENAI = "https://api.z.ai/api/paas/v4"
ANTHROPIC = "https://api.z.ai/api/anthropic"
router = Router(OPENAI + "/", ANTHROPIC)


@pytest.mark.parametrize(
    ("path", "query", "dialect", "url", "template"),
    [
        (
            "/v1/chat/completions",
            "",
            "openai",
            f"{OPENAI}/chat/completions",
            "/v1/chat/completions",
        ),
        ("/v1/completions", "", "openai", f"{OPENAI}/completions", "/v1/completions"),
        ("/v1/embeddings", "a=1", "openai", f"{OPENAI}/embeddings?a=1", "/v1/embeddings"),
        ("/v1/models", "", "openai", f"{OPENAI}/models", "/v1/models"),
        ("/v1/models/glm-4.6", "", "openai", f"{OPENAI}/models/glm-4.6", "/v1/models/{model}"),
        (
            "/v1/messages",
            "beta=true",
            "anthropic",
            f"{ANTHROPIC}/v1/messages?beta=true",
            "/v1/messages",
        ),
        (
            "/v1/messages/count_tokens",
            "",
            "anthropic",
            f"{ANTHROPIC}/v1/messages/count_tokens",
            "/v1/messages/count_tokens",
        ),
        ("/v1/files/file-1/content", "", "openai", f"{OPENAI}/files/file-1/content", "/v1/other"),
        ("/v1", "", "openai", OPENAI, "/v1/other"),
        ("/v1/", "", "openai", f"{OPENAI}/", "/v1/other"),
        ("/tokenizer", "", "openai", f"{OPENAI}/tokenizer", "/other"),
        ("/v1messages", "", "openai", f"{OPENAI}/v1messages", "/other"),
        ("/v1/a%20b", "q=%2F", "openai", f"{OPENAI}/a%20b?q=%2F", "/v1/other"),
    ],
)
def test_targets_map_onto_the_dialect_base(
    path: str, query: str, dialect: str, url: str, template: str
) -> None:
    route = router.resolve(path.encode(), query.encode())
    assert (route.dialect, route.url, route.template) == (dialect, url, template)


@pytest.mark.parametrize(
    "target",
    [
        b"http://evil.example/v1/chat/completions",
        b"evil.example:443",
        b"*",
        b"",
        b"//evil.example/x",
        b"/v1/../admin",
        b"/v1/..",
        b"/./v1/models",
        b"/v1/%2e%2e/admin",
        b"/v1/%2E%2E/admin",
        b"/v1/.%2e/admin",
        b"/v1/chat%2fcompletions",
        b"/v1/chat%5Ccompletions",
        b"/v1/chat\\completions",
        b"/v1/chat%00",
        b"/v1/chat%0d%0aHost:%20evil",
        b"/v1/chat completions",
        b"/v1/chat%zz",
        b"/v1/chat%",
        b"/v1/\xff",
        b"/v1/chat#frag",
    ],
)
def test_targets_that_could_escape_are_refused(target: bytes) -> None:
    with pytest.raises(BadRequestTarget):
        router.resolve(target, b"")


@pytest.mark.parametrize("query", [b"a=b c", b"a=\r\nHost:x", b"a=\xff", b"a#b", b"a=\x00"])
def test_queries_with_raw_control_or_space_bytes_are_refused(query: bytes) -> None:
    with pytest.raises(BadRequestTarget):
        router.resolve(b"/v1/chat/completions", query)


@given(st.binary(max_size=64), st.binary(max_size=32))
def test_any_accepted_target_stays_on_a_configured_host(path: bytes, query: bytes) -> None:
    try:
        route = router.resolve(path, query)
    except BadRequestTarget:
        return
    assert route.url.startswith((OPENAI, ANTHROPIC))
    assert route.template in TEMPLATES
    rest = route.url.split("://", 1)[1]
    assert rest.split("/", 1)[0] == "api.z.ai"

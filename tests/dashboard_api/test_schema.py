"""Schemathesis against the running dashboard: every answer conforms to the OpenAPI schema.

For each operation it generates valid parameters, and for those that take any, invalid
ones (a bounded number of each, so the run stays short), and checks that nothing answers
5xx, that every status code, content type and body is the one the schema documents, and
that invalid input is refused with 400. The live stream (``/api/events``) never ends, so
``test_events`` covers it.

The schema is loaded from the process and driven through schemathesis's Python API: its
lazy pytest loader (``schemathesis.pytest.from_fixture``) fails on pytest 9
(``'Function' object has no attribute '_nodeid'``, schemathesis 4.32).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.dashboard_api.processes import TOKEN, Dashboard

AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 30  # per operation and mode
OPERATIONS = [
    ("/api/metrics", GenerationMode.POSITIVE),
    ("/api/metrics", GenerationMode.NEGATIVE),
    ("/api/status", GenerationMode.POSITIVE),
    ("/api/config", GenerationMode.POSITIVE),
    ("/api/limiter", GenerationMode.POSITIVE),
    ("/healthz", GenerationMode.POSITIVE),
]


@pytest.fixture(scope="session")
def dashboard_schema(main_dashboard: Dashboard) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{main_dashboard.url}/api/openapi.json", headers=AUTH)


def test_every_operation_but_the_stream_is_checked(dashboard_schema: schemathesis.BaseSchema):
    paths = set(dashboard_schema.raw_schema["paths"])
    assert paths == {path for path, _ in OPERATIONS} | {"/api/events"}


@pytest.mark.parametrize(("path", "mode"), OPERATIONS)
def test_the_api_conforms_to_its_schema(
    dashboard_schema: schemathesis.BaseSchema, path: str, mode: GenerationMode
) -> None:
    operation = dashboard_schema[path]["GET"]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def conforms(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=AUTH, timeout=10)

    conforms()

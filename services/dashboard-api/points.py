"""What the dashboard sends: snapshots as JSON points, rounds of them, and their schemas.

A point is a stored ``Snapshot`` with every scalar field, the quota maps, the per-model
and per-client figures (each client's limiter wait as a histogram) and its three latency
histograms, thinned (``percentiles.thin_buckets``: only the
bounds a quantile or a merge can need) as ``{"count": n, "buckets": [[le, cumulative],
...]}`` with finite bounds only (``count`` is the +Inf bucket). The web UI merges the
histograms of the points of a range and reads its percentiles from them, as the
collector does (ADR 0017). The pydantic models exist for the OpenAPI schema; the
endpoints build plain dictionaries (``point``), several times faster for a few hundred
points.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from zai_proxy.collector.percentiles import thin_buckets
from zai_proxy.collector.rollup import BUCKETS
from zai_proxy.collector.snapshot import Buckets, ClientFigures, ModelFigures, Snapshot

POINT_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(Snapshot) if f.name not in (*BUCKETS, "models", "clients")
)
_MODEL_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ModelFigures))
_CLIENT_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(ClientFigures) if f.name != "wait_buckets"
)


def histogram(buckets: Buckets) -> dict[str, Any]:
    """A point's histogram: ``{"count": n, "buckets": [[le, cumulative], ...]}``."""
    thin = thin_buckets(buckets)
    return {
        "count": buckets.get(math.inf, 0.0),
        "buckets": [[bound, count] for bound, count in thin.items() if math.isfinite(bound)],
    }


def point(snapshot: Snapshot) -> dict[str, Any]:
    """The JSON point of a snapshot."""
    out = {name: getattr(snapshot, name) for name in POINT_FIELDS}
    out["ts"] = float(snapshot.ts)  # regrouped points come with whole-second ints
    out["models"] = {
        model: {name: getattr(figures, name) for name in _MODEL_FIELDS}
        for model, figures in snapshot.models.items()
    }
    out["clients"] = clients_of(snapshot.clients)
    for name in BUCKETS:
        out[name] = histogram(getattr(snapshot, name))
    return out


def clients_of(clients: typing.Mapping[str, ClientFigures]) -> dict[str, Any]:
    """Per-client figures as JSON: every field, the wait buckets as a histogram."""
    return {
        client: {
            **{name: getattr(figures, name) for name in _CLIENT_FIELDS},
            "wait_buckets": histogram(figures.wait_buckets),
        }
        for client, figures in clients.items()
    }


def event_id(ts: float) -> int:
    """A round's SSE event id: its start time in whole milliseconds."""
    return math.floor(ts * 1000 + 0.5)


@dataclass(slots=True)
class Round:
    """One collector round: the snapshot of each variant that starts at ``ts``."""

    ts: float
    points: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant → point

    @property
    def id(self) -> int:
        """The SSE event id."""
        return event_id(self.ts)

    def payload(self) -> dict[str, Any]:
        """The ``snapshot`` event's data."""
        return {"ts": self.ts, "variants": self.points}


def rounds_of(snapshots: typing.Iterable[Snapshot]) -> list[Round]:
    """Snapshots (ordered by time) grouped into rounds by their start."""
    rounds: list[Round] = []
    for snapshot in snapshots:
        if not rounds or rounds[-1].ts != snapshot.ts:
            rounds.append(Round(snapshot.ts))
        rounds[-1].points[snapshot.variant] = point(snapshot)
    return rounds


# --- schemas (OpenAPI) ---------------------------------------------------------------

_HINTS = typing.get_type_hints(Snapshot)


class Histogram(BaseModel):
    """Cumulative histogram buckets of a point (seconds), thinned; ``count`` is +Inf's."""

    count: float
    buckets: list[tuple[float, float]] = Field(description="[upper bound, cumulative count]")


ModelPoint = create_model(
    "ModelPoint",
    __doc__="One model's share of a point's interval (totals).",
    **{name: (float, Field(...)) for name in _MODEL_FIELDS},  # type: ignore[call-overload]
)
_CLIENT_HINTS = typing.get_type_hints(ClientFigures)
ClientPoint = create_model(
    "ClientPoint",
    __doc__=(
        "One client key's share of an interval: answers, admissions by class, refusals by "
        "reason, tokens, and its limiter wait (see ClientFigures in "
        "services/collector/snapshot.py)."
    ),
    wait_buckets=(Histogram, Field(...)),
    **{name: (_CLIENT_HINTS[name], Field(...)) for name in _CLIENT_FIELDS},  # type: ignore[call-overload]
)
_POINT_TYPES: dict[str, Any] = {name: _HINTS[name] for name in POINT_FIELDS if name != "variant"}
Point = create_model(
    "Point",
    __doc__=(
        "One variant's figures for [ts, ts + seconds): see services/collector/snapshot.py "
        "for each field. Totals count within the interval; rates are per second."
    ),
    variant=(str, Field(...)),
    models=(dict[str, ModelPoint], Field(...)),  # type: ignore[valid-type]
    clients=(dict[str, ClientPoint], Field(...)),  # type: ignore[valid-type]
    **{name: (Histogram, Field(...)) for name in BUCKETS},  # type: ignore[call-overload]
    **{name: (hint, Field(...)) for name, hint in _POINT_TYPES.items()},
)


class MetricsAnswer(BaseModel):
    """A range of history: points per variant at one resolution."""

    range: str
    variant: str
    start: float = Field(description="Start of the requested window (epoch seconds).")
    end: float = Field(description="End of the requested window: now.")
    step: int = Field(description="Seconds per point.")
    series: dict[str, list[Point]]  # type: ignore[valid-type]
    summary: dict[str, Point | None] = Field(  # type: ignore[valid-type]
        description="Each variant's whole range as one point: totals summed, percentiles "
        "from the merged histograms (the figures the dashboard's headline shows)."
    )
    clients: dict[str, ClientPoint] = Field(  # type: ignore[valid-type]
        description="Each client key's whole range, summed over the variants answered: "
        "totals summed, admitted_per_s the variants' rates added, wait percentiles from "
        "the merged histograms."
    )


class VariantStatus(BaseModel):
    """The newest point of a variant and how old it is."""

    latest: Point | None  # type: ignore[valid-type]
    age_seconds: float | None = Field(description="Seconds since the newest point ended.")
    stale: bool = Field(description="No point ended within the last stale_after seconds.")


class StatusAnswer(BaseModel):
    """The newest point of every variant, with staleness."""

    now: float
    stale_after: float
    variants: dict[str, VariantStatus]


class LimiterConfig(BaseModel):
    """Whether a limiter is configured (LIMITER_URL)."""

    configured: bool


class ConfigAnswer(BaseModel):
    """What the web UI needs to know about this dashboard."""

    version: str
    variants: list[str]
    ranges: list[str]
    scrape_interval: float
    sse_heartbeat_seconds: float
    sse_replay_seconds: float = Field(description="How far back Last-Event-ID replays.")
    limiter: LimiterConfig


class LimiterAnswer(BaseModel):
    """The limiter's ``GET /state``, or why it is not available."""

    model_config = ConfigDict(extra="forbid")

    available: bool
    state: dict[str, Any] | None = None
    error: str | None = None


class Problem(BaseModel):
    """An error: what went wrong, in one sentence."""

    detail: str


class Health(BaseModel):
    """Liveness."""

    status: str

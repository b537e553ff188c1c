"""What a pool's scripts take and answer: a claim, a replay, an idempotency key, the
demand; and how a claim can be refused."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jkp.errors import ApiError


@dataclass(frozen=True)
class DemandData:
    """What a pool's size is computed from, as one script read it: Redis time, arrivals per
    time bucket (bucket ``b`` holds those in ``[b, b + 1) * bucket_seconds`` of Unix time),
    recent start latencies (newest first), the earliest live start lease's expiry."""

    now: float
    buckets: dict[int, int]
    latencies: list[float]
    oldest_start_expiry: float | None = None
    bucket_seconds: float = 1.0
    held: int | None = None  # idle plus live starting kernels, of any spec
    waiting: int = 0  # pops waiting in the pool's line (any spec)


@dataclass(frozen=True)
class Idempotency:
    """A pop's idempotency key, the pop (``owner``) that holds it while it runs, and the
    fingerprint of what it asked (``request``): the key with another request is a conflict."""

    key: str
    owner: str
    request: str = ""


@dataclass(frozen=True)
class Claim:
    """A kernel taken out of the idle list for one user, not yet handed over."""

    kernel_id: str
    model_json: str
    idempotency: Idempotency | None = None
    # The replica whose pop holds the claim; "" acts on the claim whoever holds it.
    replica: str = ""

    @property
    def model(self) -> dict[str, Any]:
        return json.loads(self.model_json)


@dataclass(frozen=True)
class Replay:
    """The model an earlier pop with the same idempotency key and user answered."""

    model_json: str

    @property
    def model(self) -> dict[str, Any]:
        return json.loads(self.model_json)


class IdempotencyConflict(ApiError):
    """The idempotency key was used for another request (user, pool or env)."""

    status_code, reason = 409, "Idempotency-Key conflict"


class IdempotencyPending(Exception):
    """Another pop with the same idempotency key is still running."""


class AliasTaken(Exception):
    """A gateway create's client-side kernel id is bound, or reserved by another create."""

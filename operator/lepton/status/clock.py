"""Time as status writes it (RFC 3339, seconds, UTC), and time-to-live / deadline arithmetic."""

from __future__ import annotations

from datetime import datetime


def rfc3339(t: datetime) -> str:
    return t.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(s: str | None) -> datetime | None:
    return datetime.fromisoformat(s.replace("Z", "+00:00")) if s else None


def ttl_remaining(ttl: int | None, completion_time: str | None, now: datetime) -> float | None:
    """Seconds until a finished resource's ttlSecondsAfterFinished runs out (0: now); None when no TTL
    applies (no TTL set, or not finished)."""
    try:
        finished = parse_time(completion_time)
    except ValueError:
        return None
    if ttl is None or finished is None:
        return None
    return max(0.0, float(ttl) - (now - finished).total_seconds())

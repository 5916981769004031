"""Numbers for people: bytes, ratios, durations. Shared by the status page and `mirror stats`
so both show exactly the same text for the same value."""

from __future__ import annotations

import time

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
DASH = "\u2013"  # shown where there is no value yet (no requests, no rate-limit header)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return DASH
    sign = "-" if n < 0 else ""
    v = abs(float(n))
    unit = 0
    # Switch units at 1000, not 1024: "0.99 MiB" reads better than "1014 KiB".
    while v >= 1000 and unit < len(_BYTE_UNITS) - 1:
        v /= 1024
        unit += 1
    if unit == 0:
        return f"{sign}{int(v)} B"
    digits = 2 if v < 10 else 1 if v < 100 else 0
    return f"{sign}{v:.{digits}f} {_BYTE_UNITS[unit]}"


def fmt_ratio(r: float | None) -> str:
    return DASH if r is None else f"{r * 100:.1f}%"


def fmt_int(n: float | None) -> str:
    return DASH if n is None else f"{int(n):,}"


def fmt_duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def fmt_ago(t: float | None, now: float) -> str:
    if not t:
        return "never"
    return f"{fmt_duration(now - t)} ago"


def fmt_clock(t: float) -> str:
    """UTC wall-clock time: servers and their operators rarely share a time zone."""
    return time.strftime("%H:%M:%S", time.gmtime(t))


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

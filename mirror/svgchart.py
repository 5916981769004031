"""Small server-rendered SVG pictures for the status page: no script, no library, no CDN,
and they render the same with JavaScript off."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from mirror.units import fmt_bytes, fmt_clock


def usage_bar(ratio: float | None, label: str) -> str:
    """A horizontal bar, filled to `ratio` (0..1); amber above 85%, red above 95% (the
    default eviction watermarks)."""
    r = min(max(ratio or 0.0, 0.0), 1.0)
    level = "crit" if r > 0.95 else "warn" if r > 0.85 else "ok"
    return (f'<svg class="bar" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" '
            f'aria-label="{escape(label)}"><rect class="track" width="100" height="8" rx="2"/>'
            f'<rect class="fill {level}" width="{r * 100:.2f}" height="8" rx="2"/></svg>')


def traffic_chart(points: Sequence[dict[str, float]], slots: int = 60) -> str:
    """Bytes served (from cache or upstream) and fetched from upstreams, one pair of bars per
    minute over the last hour, newest on the right."""
    # Drawn at about the size it is shown, so the axis text keeps its CSS size.
    width, height, pad = 1160, 150, 20
    recent = list(points)[-slots:]
    top = max([max(p["served_bytes"], p["fetched_bytes"]) for p in recent] + [1.0])
    step = width / slots
    bars = []
    offset = slots - len(recent)
    for i, p in enumerate(recent):
        x = (offset + i) * step
        tip = (f"{fmt_clock(p['start'])} UTC: served {fmt_bytes(p['served_bytes'])}, "
               f"fetched {fmt_bytes(p['fetched_bytes'])}")
        bars.append(f'<g><title>{escape(tip)}</title>')
        for cls, key, dx in (("served", "served_bytes", 0.12), ("fetched", "fetched_bytes", 0.5)):
            h = (height - pad) * p[key] / top
            if h > 0:
                bars.append(f'<rect class="{cls}" x="{x + step * dx:.1f}" y="{height - pad - h:.1f}" '
                            f'width="{step * 0.38:.1f}" height="{max(h, 1.0):.1f}"/>')
        bars.append("</g>")
    grid = "".join(
        f'<line class="gridline" x1="0" x2="{width}" y1="{(height - pad) * f:.1f}" '
        f'y2="{(height - pad) * f:.1f}"/>' for f in (0.0, 0.5))
    axis = (f'<line class="axis" x1="0" x2="{width}" y1="{height - pad}" y2="{height - pad}"/>'
            f'<text x="0" y="{height - 4}">-60 min</text>'
            f'<text x="{width / 2}" y="{height - 4}" text-anchor="middle">-30 min</text>'
            f'<text x="{width}" y="{height - 4}" text-anchor="end">now</text>'
            f'<text x="4" y="12">{escape(fmt_bytes(top))}/min</text>')
    empty = ("" if any(p["served_bytes"] or p["fetched_bytes"] for p in recent) else
             f'<text class="empty" x="{width / 2}" y="{(height - pad) / 2}" '
             f'text-anchor="middle">no traffic yet</text>')
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="bytes served and fetched per minute, last hour">'
            f'{grid}{"".join(bars)}{axis}{empty}</svg>')

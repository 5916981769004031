"""Small server-rendered SVG pictures for the status page: no script, no library, no CDN,
and they render the same with JavaScript off."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from mirror.config.units import fmt_bytes, fmt_clock


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
    minute over the last hour, newest on the right. The SVG holds only shapes and stretches to
    any width (preserveAspectRatio none); the labels are HTML around it, so they keep their
    size on a phone and on a wide screen alike."""
    width, height = 600, 100  # user units; the CSS decides the size on screen
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
            h = height * p[key] / top
            if h > 0:
                h = max(h, 0.8)
                bars.append(f'<rect class="{cls}" x="{x + step * dx:.2f}" y="{height - h:.2f}" '
                            f'width="{step * 0.38:.2f}" height="{h:.2f}"/>')
        bars.append("</g>")
    lines = "".join(
        f'<line class="{cls}" x1="0" x2="{width}" y1="{y}" y2="{y}"/>'
        for cls, y in (("gridline", 0.5), ("gridline", height / 2), ("axis", height - 0.5)))
    empty = ("" if any(p["served_bytes"] or p["fetched_bytes"] for p in recent) else
             '<p class="chart-empty">no traffic yet</p>')
    return (f'<div class="chart-box"><span class="chart-top">{escape(fmt_bytes(top))}/min</span>'
            f'{empty}<svg class="chart" viewBox="0 0 {width} {height}" '
            f'preserveAspectRatio="none" role="img" '
            f'aria-label="bytes served and fetched per minute, last hour">{lines}'
            f'{"".join(bars)}</svg></div>'
            '<div class="chart-axis"><span>-60 min</span><span>-30 min</span><span>now</span>'
            '</div>')

"""The status page at `/`: what the mirror saves, for a person with a browser.

Every number is rendered on the server from the same summary as /status.json (so the page
works with JavaScript off, and a <noscript> meta refresh keeps it current). With JavaScript,
status.js re-fetches this page every few seconds and swaps the live part in place, so there
is exactly one renderer. The CSS and script are files in mirror/static, read once at start-up
and served by the mirror itself: no framework, no CDN, nothing fetched from elsewhere.

Each number carries its raw value in `data-value`, for scripts and for the test that checks
the page against /metrics."""

from __future__ import annotations

from html import escape
from typing import Any

from mirror.config.units import (
    DASH,
    fmt_ago,
    fmt_bytes,
    fmt_clock,
    fmt_duration,
    fmt_int,
    fmt_ratio,
    iso,
)
from mirror.observe.svgchart import traffic_chart, usage_bar

REFRESH_SECONDS = 5
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    # Same-origin only: the page must never pull anything from elsewhere.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
RESULT_NOTES = {
    "hit": "served from the cache",
    "stale": "served from the cache while the upstream failed",
    "coalesced": "joined a fetch already in flight",
    "miss": "fetched from the upstream",
    "error": "not served",
}


def _num(id_: str, value: float | None, text: str, cls: str = "") -> str:
    raw = "" if value is None else repr(value)  # full precision, for scripts and tests
    c = f' class="{cls}"' if cls else ""
    return f'<span id="{id_}"{c} data-value="{escape(raw)}">{escape(text)}</span>'


def _cards(d: dict[str, Any]) -> str:
    s, h = d["since_start"], d["last_hour"]
    by = s["served_by_source"]
    sources = " · ".join(f"{k} {fmt_bytes(v)}" for k, v in by.items()) or "nothing yet"
    return f"""
<section class="cards">
  <article class="card">
    <h2>Hit ratio</h2>
    <p class="big">{_num("hit-ratio", s["hit_ratio"], fmt_ratio(s["hit_ratio"]))}</p>
    <p>{_num("hits", s["requests"]["hit"] + s["requests"]["stale"],
             fmt_int(s["requests"]["hit"] + s["requests"]["stale"]))} of
       {_num("answered", s["answered"], fmt_int(s["answered"]))} requests from the cache</p>
    <p class="hour">last hour {_num("hit-ratio-hour", h["hit_ratio"], fmt_ratio(h["hit_ratio"]))}
       of {_num("answered-hour", h["answered"], fmt_int(h["answered"]))}</p>
  </article>
  <article class="card accent">
    <h2>Bandwidth saved</h2>
    <p class="big">{_num("saved", s["saved_bytes"], fmt_bytes(s["saved_bytes"]))}</p>
    <p>{_num("saved-ratio", s["saved_ratio"], fmt_ratio(s["saved_ratio"]))} of the bytes served
       never crossed the upstream link</p>
    <p class="hour">last hour {_num("saved-hour", h["saved_bytes"], fmt_bytes(h["saved_bytes"]))}
       ({_num("saved-ratio-hour", h["saved_ratio"], fmt_ratio(h["saved_ratio"]))})</p>
  </article>
  <article class="card">
    <h2>Served to clients</h2>
    <p class="big">{_num("served", s["served_bytes"], fmt_bytes(s["served_bytes"]))}</p>
    <p>{escape(sources)}</p>
    <p class="hour">last hour {_num("served-hour", h["served_bytes"],
                                     fmt_bytes(h["served_bytes"]))}</p>
  </article>
  <article class="card">
    <h2>Fetched from upstreams</h2>
    <p class="big">{_num("fetched", s["fetched_bytes"], fmt_bytes(s["fetched_bytes"]))}</p>
    <p>manifests and blobs, retries included</p>
    <p class="hour">last hour {_num("fetched-hour", h["fetched_bytes"],
                                     fmt_bytes(h["fetched_bytes"]))}</p>
  </article>
</section>"""


def _requests_table(d: dict[str, Any]) -> str:
    s, h = d["since_start"]["requests"], d["last_hour"]["requests"]
    rows = "".join(
        f'<tr><th scope="row"><span class="dot r-{r}"></span>{r}</th>'
        f'<td class="n">{_num(f"req-{r}", s[r], fmt_int(s[r]))}</td>'
        f'<td class="n">{_num(f"req-{r}-hour", h[r], fmt_int(h[r]))}</td>'
        f'<td class="note">{RESULT_NOTES[r]}</td></tr>' for r in s)
    return f"""
<section class="panel">
  <h2>Requests by cache result</h2>
  <table><thead><tr><th></th><th class="n">since start</th><th class="n">last hour</th><th></th>
  </tr></thead><tbody>{rows}</tbody></table>
</section>"""


def _tiers(d: dict[str, Any]) -> str:
    rows = []
    for t in d["tiers"]:
        name = escape(t["tier"])
        budget = f' of {fmt_bytes(t["budget"])}' if t["budget"] else ""
        rows.append(
            f'<div class="tier" data-tier="{name}"><div class="tier-head"><strong>{name}</strong>'
            f'<span>{_num(f"tier-{name}-bytes", t["bytes"], fmt_bytes(t["bytes"]))}{budget}'
            f' · {_num(f"tier-{name}-objects", t["objects"], fmt_int(t["objects"]))} objects'
            f' · {_num(f"tier-{name}-used", t["used_ratio"], fmt_ratio(t["used_ratio"]))}'
            f'</span></div>{usage_bar(t["used_ratio"], f"{name} tier use")}</div>')
    body = "".join(rows) or '<p class="muted">no cache tier reported yet</p>'
    inflight = d.get("inflight")
    if isinstance(inflight, int):
        body += (f'<p class="foot">{_num("inflight", inflight, fmt_int(inflight))} upstream '
                 f'fetches in flight</p>')
    return f'<section class="panel"><h2>Cache</h2>{body}</section>'


def _upstreams(d: dict[str, Any], now: float) -> str:
    rows = []
    for u in d["upstreams"]:
        name = escape(u["name"])
        rl = u["ratelimit_remaining"]
        limit = (f'{_num(f"ratelimit-{name}", rl, fmt_int(rl))} left' if rl is not None
                 else f'{_num(f"ratelimit-{name}", None, DASH)}')
        if u["backoff_seconds"]:
            limit += f' · backing off {fmt_duration(u["backoff_seconds"])}'
        # A refused credential is the cause to fix, whatever failed last.
        err = escape(u.get("auth_error") or u["last_error"] or "")
        rows.append(
            f'<tr data-upstream="{name}"><th scope="row"><span class="dot s-{u["state"]}">'
            f'</span>{name}<div class="sub">{escape(u["url"] or "")}</div></th>'
            f'<td class="state s-{u["state"]}">{u["state"]}</td>'
            f'<td class="n">{limit}</td>'
            f'<td class="n">{_num(f"saved-{name}", u["saved_bytes"], fmt_bytes(u["saved_bytes"]))}'
            f'</td><td>{escape(fmt_ago(u["last_ok"], now))}</td>'
            f'<td class="err" title="{err}">{err or DASH}</td></tr>')
    return f"""
<section class="panel">
  <h2>Upstreams</h2>
  <table><thead><tr><th>registry</th><th>state</th><th class="n">rate limit</th>
  <th class="n">saved</th><th>last answer</th><th>last error</th></tr></thead>
  <tbody>{"".join(rows)}</tbody></table>
</section>"""


def _cluster(d: dict[str, Any]) -> str:
    """cluster: every peer and its state (self, up, down with the reason), bytes exchanged."""
    c = d.get("cluster")
    if not isinstance(c, dict):
        return ""
    rows = "".join(
        f'<tr data-peer="{escape(p["url"])}"><th scope="row" class="mono">{escape(p["url"])}</th>'
        f'<td class="state s-{escape(p["state"])}">{escape(p["state"])}</td>'
        f'<td class="n">{fmt_int(p["served"])}</td>'
        f'<td class="err">{escape(p.get("why", "")) or DASH}</td></tr>' for p in c["peers"])
    got, sent = c["bytes"].get("received", 0), c["bytes"].get("sent", 0)
    return f"""
<section class="panel">
  <h2>Cluster peers <span class="legend">{fmt_bytes(got)} received ·
    {fmt_bytes(sent)} sent</span></h2>
  <table><thead><tr><th>peer</th><th>state</th><th class="n">fetches served us</th>
  <th>why down</th></tr></thead><tbody>{rows}</tbody></table>
</section>"""


def _top_images(d: dict[str, Any]) -> str:
    rows = "".join(
        f'<tr><td class="n rank">{i}</td><td class="mono">{escape(t["image"])}</td>'
        f'<td class="n">{_num(f"pulls-{i}", t["pulls"], fmt_int(t["pulls"]))}</td>'
        f'<td class="n">{escape(fmt_bytes(t["bytes"]))}</td></tr>'
        for i, t in enumerate(d["top_images"], 1))
    body = (f'<table><thead><tr><th class="n">#</th><th>image</th><th class="n">pulls</th>'
            f'<th class="n">served</th></tr></thead><tbody>{rows}</tbody></table>' if rows
            else '<p class="muted">no pulls yet</p>')
    return (f'<section class="panel"><h2>Most pulled images</h2>{body}'
            f'<p class="foot">pulls = manifest requests answered</p></section>')


def _errors(d: dict[str, Any]) -> str:
    rows = "".join(
        f'<tr><td><time datetime="{iso(e["time"])}">{fmt_clock(e["time"])}</time></td>'
        f'<td class="n"><span class="status">{e["status"]}</span>'
        f'<div class="sub mono">{escape(e["code"])}</div></td>'
        f'<td class="request"><div class="mono path" title="{escape(e["path"])}">'
        f'{escape(e["method"])} {escape(e["path"])}</div>'
        f'<div class="sub msg">{escape(e["message"])}</div></td></tr>'
        for e in d["recent_errors"])
    body = (f'<table class="errors"><thead><tr><th>UTC</th><th class="n">status</th>'
            f'<th>request</th></tr></thead><tbody>{rows}</tbody></table>' if rows
            else '<p class="muted">no errors</p>')
    return f'<section class="panel"><h2>Recent errors</h2>{body}</section>'


def _signatures(d: dict[str, Any]) -> str:
    """The signature rules with their counts, and the latest refusals (mode warn included)."""
    sig = d.get("signatures")
    if not isinstance(sig, dict):
        return ""
    checks = sig.get("checks", {})
    rows = []
    for r in sig.get("rules", []):
        name = escape(r["name"])
        counts = "".join(
            f'<td class="n">{_num(f"sig-{name}-{o}", n, fmt_int(n))}</td>'
            for o in ("verified", "refused", "warn")
            for n in [checks.get(r["name"], {}).get(o, 0)])
        where = escape(" ".join(r["upstreams"]) + " / " + " ".join(r["repositories"]))
        rows.append(f'<tr><th scope="row">{name}</th><td>{escape(r["mode"])}</td>'
                    f'<td class="mono">{where}</td>{counts}</tr>')
    rules = "".join(rows)
    refusals = "".join(
        f'<tr><td><time datetime="{iso(x["time"])}">{fmt_clock(x["time"])}</time></td>'
        f'<td class="request"><div class="mono">{escape(x["image"])}@{escape(x["digest"])}</div>'
        f'<div class="sub msg">{escape(x["rule"])} ({escape(x["mode"])}): '
        f'{escape(x["reason"])}</div></td></tr>' for x in sig.get("recent_refusals", []))
    recent = (f'<table class="errors"><thead><tr><th>UTC</th><th>image</th></tr></thead>'
              f'<tbody>{refusals}</tbody></table>' if refusals
              else '<p class="muted">nothing refused</p>')
    return (f'<section class="panel wide"><h2>Signature policy</h2><table><thead><tr>'
            f'<th>rule</th><th>mode</th><th>upstreams / repositories</th>'
            f'<th class="n">verified</th><th class="n">refused</th><th class="n">warn</th>'
            f'</tr></thead><tbody>{rules}</tbody></table>{recent}</section>')


def render(d: dict[str, Any]) -> str:
    now = d["generated"]
    mode = '<span class="badge off">offline</span>' if d["offline"] else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mirror · {escape(fmt_ratio(d["since_start"]["hit_ratio"]))} hits</title>
<link rel="stylesheet" href="/static/status.css">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS * 2}"></noscript>
<script src="/static/status.js" defer></script>
</head>
<body data-refresh="{REFRESH_SECONDS}">
<div id="live" data-generated="{now:.3f}">
<header>
  <h1><span class="logo">◆</span> mirror <span class="tag">pull-through cache</span> {mode}</h1>
  <p class="meta">version {escape(d["version"])} · up
    {_num("uptime", round(d["uptime"]), fmt_duration(d["uptime"]))} · updated
    <time datetime="{iso(now)}">{fmt_clock(now)} UTC</time>
    <span class="live-dot" title="refreshes every {REFRESH_SECONDS}s"></span></p>
</header>
<main>
{_cards(d)}
<section class="panel wide">
  <h2>Traffic, last hour <span class="legend"><i class="served"></i>served
    <i class="fetched"></i>fetched from upstreams</span></h2>
  {traffic_chart(d["per_minute"])}
</section>
<div class="grid">
{_requests_table(d)}
{_tiers(d)}
</div>
{_upstreams(d, now)}
{_cluster(d)}
<div class="grid">
{_top_images(d)}
{_errors(d)}
</div>
{_signatures(d)}
</main>
<footer>numbers as of {fmt_clock(now)} UTC · <a href="/metrics">/metrics</a> ·
  <a href="/status.json">/status.json</a> · <code>mirror stats</code> in a terminal</footer>
</div>
</body>
</html>
"""

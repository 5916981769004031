"""`mirror stats`: the status page's summary in a terminal, read from a running mirror's
/status.json (so it shows exactly what the page and /metrics show)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TextIO

from mirror.config import Config, load_config
from mirror.config.units import DASH, fmt_ago, fmt_bytes, fmt_clock, fmt_duration, fmt_int, fmt_ratio
from mirror.oci.errors import ConfigError

EXIT_UNREACHABLE = 1
EXIT_CONFIG = 2
TIMEOUT = 10.0


def url_from_config(config: Config) -> str:
    """Where a local `mirror serve` with this config answers: a wildcard listen address is
    reached on loopback."""
    host = config.listen_host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if getattr(config, "tls", None) is not None else "http"
    return f"{scheme}://{host}:{config.listen_port}"


def fetch_status(base: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    req = urllib.request.Request(base.rstrip("/") + "/status.json",
                                 headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        doc = json.loads(resp.read())
    if not isinstance(doc, dict) or "since_start" not in doc:
        raise ValueError("not a mirror status document")
    return doc


def _row(label: str, *cells: str, width: int = 20) -> str:
    return f"  {label:<{width}}" + "".join(f"{c:>18}" for c in cells)


def render(d: dict[str, Any], base: str, now: float | None = None) -> str:
    now = time.time() if now is None else now
    s, h = d["since_start"], d["last_hour"]
    rs, rh = s["requests"], h["requests"]
    out = [f"mirror {d.get('version', '?')} at {base} · up {fmt_duration(d['uptime'])}"
           f"{' · OFFLINE' if d.get('offline') else ''}", ""]
    out.append(_row("", "since start", "last hour"))
    out.append(_row("hit ratio", fmt_ratio(s["hit_ratio"]), fmt_ratio(h["hit_ratio"])))
    out.append(_row("requests answered", fmt_int(s["answered"]), fmt_int(h["answered"])))
    for r in ("hit", "stale", "coalesced", "miss", "error"):
        out.append(_row(f"  {r}", fmt_int(rs[r]), fmt_int(rh[r])))
    out.append(_row("bandwidth saved", fmt_bytes(s["saved_bytes"]), fmt_bytes(h["saved_bytes"])))
    out.append(_row("  of bytes served", fmt_ratio(s["saved_ratio"]), fmt_ratio(h["saved_ratio"])))
    out.append(_row("served", fmt_bytes(s["served_bytes"]), fmt_bytes(h["served_bytes"])))
    out.append(_row("fetched upstream", fmt_bytes(s["fetched_bytes"]),
                    fmt_bytes(h["fetched_bytes"])))
    out += ["", "cache"]
    for t in d["tiers"]:
        budget = f" of {fmt_bytes(t['budget'])} ({fmt_ratio(t['used_ratio'])})" if t["budget"] else ""
        out.append(f"  {t['tier']:<6} {fmt_bytes(t['bytes'])}{budget} · "
                   f"{fmt_int(t['objects'])} objects")
    out += ["", "upstreams"]
    for u in d["upstreams"]:
        rl = u["ratelimit_remaining"]
        limit = f"{fmt_int(rl)} pulls left" if rl is not None else f"rate limit {DASH}"
        if u["backoff_seconds"]:
            limit += f", backing off {fmt_duration(u['backoff_seconds'])}"
        out.append(f"  {u['name']:<20} {u['state']:<11} {limit:<24} saved "
                   f"{fmt_bytes(u['saved_bytes']):<10} last answer {fmt_ago(u['last_ok'], now)}")
        if u.get("auth_error"):  # the cause to fix, whatever failed last
            out.append(f"  {'':<20} authentication failing: {u['auth_error']}")
        elif u.get("last_error"):
            out.append(f"  {'':<20} last error: {u['last_error']}")
    out += ["", "most pulled images"]
    if not d["top_images"]:
        out.append("  none yet")
    for i, t in enumerate(d["top_images"], 1):
        out.append(f"  {i:>2}  {t['image']:<48} {fmt_int(t['pulls']):>7} pulls "
                   f"{fmt_bytes(t['bytes']):>10}")
    out += ["", "recent errors"]
    if not d["recent_errors"]:
        out.append("  none")
    for e in d["recent_errors"][:10]:
        out.append(f"  {fmt_clock(e['time'])}  {e['status']} {e['code']}  {e['method']} {e['path']}")
        if e["message"]:
            out.append(f"  {'':<10}{e['message']}")
    return "\n".join(out) + "\n"


def cmd_stats(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if args.url and args.config:
        print("mirror stats: give -c FILE or --url URL, not both", file=sys.stderr)
        return EXIT_CONFIG
    base = args.url
    if base is None:
        try:
            base = url_from_config(load_config(args.config))
        except ConfigError as e:
            for line in e.problems:
                print(f"mirror: config error: {line}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        doc = fetch_status(base)
    except urllib.error.HTTPError as e:
        hint = " (the mirror requires client authentication here)" if e.code == 401 else ""
        print(f"mirror stats: {base}/status.json answered {e.code}{hint}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        print(f"mirror stats: cannot read {base}/status.json: {reason}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write(render(doc, base))
    return 0


def add_stats_command(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "stats", help="show hit rate, bandwidth saved and health of a running mirror",
        description="Print the status page's summary (hit ratio and bandwidth saved since start "
                    "and over the last hour, cache use, upstream health and rate limits, most "
                    "pulled images, recent errors) of a running mirror, read from its "
                    "/status.json. The address comes from --url, else from the config's listen "
                    "address. Exit 1 when the mirror cannot be reached.")
    config_arg(p)
    p.add_argument("--url", metavar="URL",
                   help="base URL of the mirror, e.g. http://mirror.internal:5000")
    p.add_argument("--json", action="store_true", help="print the raw status document")
    p.set_defaults(func=cmd_stats)

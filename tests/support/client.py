"""A tiny blocking HTTP client for tests: no redirects followed, errors kept, not raised.

Fault tests need to see partial bodies and the exact failure, which urllib hides.
"""

from __future__ import annotations

import http.client
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass
class Reply:
    status: int | None  # None: the connection failed before a status line arrived
    headers: http.client.HTTPMessage | None  # .get(name), .get_all(name) for repeated headers
    body: bytes  # what arrived, even if the transfer then failed
    error: Exception | None  # IncompleteRead, ConnectionResetError, RemoteDisconnected, ...
    seconds: float

    def header(self, name: str) -> str | None:
        return self.headers.get(name) if self.headers is not None else None


def fetch(
    url: str,
    method: str = "GET",
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    body: bytes | None = None,
    timeout: float = 30.0,
) -> Reply:
    """One request on a fresh connection. `headers` may repeat names as (name, value) pairs."""
    u = urllib.parse.urlsplit(url)
    assert u.hostname is not None
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    t0 = time.monotonic()
    status, hdrs, chunks = None, None, []
    try:
        conn.putrequest(method, (u.path or "/") + (f"?{u.query}" if u.query else ""))
        for k, v in pairs:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        status, hdrs = resp.status, resp.headers
        while piece := resp.read(1 << 16):
            chunks.append(piece)
        if resp.length:  # http.client returns b"" instead of failing on a short body
            raise http.client.IncompleteRead(b"", resp.length)
        error: Exception | None = None
    except (OSError, http.client.HTTPException) as e:
        if isinstance(e, http.client.IncompleteRead):
            chunks.append(e.partial)  # a chunked body keeps the last piece here
        error = e
    finally:
        conn.close()
    return Reply(status, hdrs, b"".join(chunks), error, time.monotonic() - t0)

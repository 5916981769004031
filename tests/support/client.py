"""A tiny blocking HTTP client for tests: no redirects followed, errors kept, not raised.

Fault tests need to see partial bodies and the exact failure, which urllib hides.
"""

from __future__ import annotations

import hashlib
import http.client
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


@dataclass
class Reply:
    status: int | None  # None: the connection failed before a status line arrived
    headers: http.client.HTTPMessage | None  # .get(name), .get_all(name) for repeated headers
    body: bytes  # what arrived, even if the transfer then failed (b"" when a sink was given)
    size: int  # body bytes received
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
    sink: Callable[[bytes], object] | None = None,
) -> Reply:
    """One request on a fresh connection. `headers` may repeat names as (name, value) pairs.

    With `sink`, body pieces go to sink(piece) instead of memory (e.g. hashlib's update), so
    huge blobs can be checked in constant memory.
    """
    u = urllib.parse.urlsplit(url)
    assert u.hostname is not None
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    t0 = time.monotonic()
    status, hdrs, chunks, size = None, None, [], 0
    try:
        conn.putrequest(method, (u.path or "/") + (f"?{u.query}" if u.query else ""))
        for k, v in pairs:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        status, hdrs = resp.status, resp.headers
        while piece := resp.read1(1 << 16):  # read1: keep what arrived before a stall
            size += len(piece)
            if sink is None:
                chunks.append(piece)
            else:
                sink(piece)
        if resp.length:  # http.client returns b"" instead of failing on a short body
            raise http.client.IncompleteRead(b"", resp.length)
        error: Exception | None = None
    except (OSError, http.client.HTTPException) as e:
        if isinstance(e, http.client.IncompleteRead) and e.partial:
            # A chunked body keeps the piece it was reading when the connection broke.
            size += len(e.partial)
            if sink is None:
                chunks.append(e.partial)
            else:
                sink(e.partial)
        error = e
    finally:
        conn.close()
    return Reply(status, hdrs, b"".join(chunks), size, error, time.monotonic() - t0)


def hashed_get(url: str, headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
               sink: Callable[[bytes], object] | None = None,
               timeout: float = 120.0) -> tuple[Reply, str]:
    """GET `url` hashing the body as it arrives (constant memory for big blobs): the reply
    (body left empty) and "sha256:<hex>" of what arrived. `sink` also sees every piece."""
    h = hashlib.sha256()

    def take(piece: bytes) -> None:
        if sink is not None:
            sink(piece)
        h.update(piece)

    reply = fetch(url, headers=headers, sink=take, timeout=timeout)
    return reply, "sha256:" + h.hexdigest()

"""Thread-safe log of the HTTP requests a test server saw (used by the tap and fake registry)."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

# /v2/<name>/<endpoint>/...; the name may have any number of path components.
_V2_PATH = re.compile(r"^/v2/(?P<name>.+?)/(?P<ep>blobs/uploads|blobs|manifests|tags|referrers)(/|$)")
_KINDS = {
    "blobs/uploads": "upload",
    "blobs": "blob",
    "manifests": "manifest",
    "tags": "tags",
    "referrers": "referrers",
}


def classify(path: str) -> str:
    """Kind of a registry request path: v2, blob, manifest, tags, referrers, upload or other."""
    if path in ("/v2", "/v2/"):
        return "v2"
    m = _V2_PATH.match(path)
    return _KINDS[m.group("ep")] if m else "other"


def repo_of(path: str) -> str | None:
    """Repository name in a /v2/<name>/... path, else None."""
    m = _V2_PATH.match(path)
    return m.group("name") if m else None


@dataclass
class RecordedRequest:
    """One request. Added when it arrives; status/bytes_sent are filled in as it is answered,
    so a client that has read the response never sees its request missing from the log."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]  # in arrival order, repeated names kept
    kind: str
    status: int | None = None
    bytes_sent: int = 0  # response body bytes handed to the client socket
    fault: str | None = None  # fault mode applied to this request, if any
    error: str | None = None
    done: bool = False
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None  # monotonic time the response ended (tap only)

    def header(self, name: str) -> str | None:
        """First value of a request header (case-insensitive), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    @property
    def repo(self) -> str | None:
        return repo_of(self.path)


class Recorder:
    """Base class: keeps RecordedRequest objects and answers questions about them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RecordedRequest] = []

    def _record(self, rec: RecordedRequest) -> RecordedRequest:
        with self._lock:
            self._records.append(rec)
        return rec

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot copy of everything recorded so far, oldest first."""
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def filter(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        kind: str | None = None,
    ) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (path_contains is None or path_contains in r.path)
            and (kind is None or r.kind == kind)
        ]

    def count(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        kind: str | None = None,
    ) -> int:
        return len(self.filter(method, path_contains, kind))

    def bytes_sent(
        self,
        kind: str | None = None,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> int:
        return sum(r.bytes_sent for r in self.filter(method, path_contains, kind))

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every recorded request has been fully answered (or failed)."""
        deadline = time.monotonic() + timeout
        while any(not r.done for r in self.requests):
            if time.monotonic() > deadline:
                raise TimeoutError("requests still in flight: " + self.describe())
            time.sleep(0.01)

    def describe(self) -> str:
        """Human-readable dump, handy in assertion messages."""
        return "\n".join(
            f"{r.method} {r.path}{'?' + r.query if r.query else ''} -> {r.status} "
            f"{r.bytes_sent}B{' fault=' + r.fault if r.fault else ''}"
            f"{' error=' + r.error if r.error else ''}"
            for r in self.requests
        )

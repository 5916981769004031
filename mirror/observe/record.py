"""What one pull request did: the route handler fills it in, client auth adds who asked, and
the audit log and the status page read it when the response is done."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from mirror.oci.routing import Route


@dataclass(slots=True)
class PullRecord:
    route: Route | None = None
    reference: str = ""
    digest: str = ""
    kind: str = ""
    result: str = ""
    bytes: int = 0
    user: str | None = None  # a logged-in user's name (never a credential); None: anonymous


# Per-request storage (aiohttp warns on plain string keys).
PULL_RECORD: web.RequestKey[PullRecord] = web.RequestKey("pull_record")


def record_of(request: web.Request) -> PullRecord:
    """The request's record, made on first use (the audit middleware makes it when on)."""
    rec = request.get(PULL_RECORD)
    if rec is None:
        rec = PullRecord()
        request[PULL_RECORD] = rec
    return rec

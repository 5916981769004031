"""Documents passed through from the upstream: tag lists (cached briefly, answered from the tag
index when the upstream fails or the mirror is offline) and referrers."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl, urlencode

from cachetools import TTLCache

from mirror.oci.errors import ManifestUnknown, NameUnknown, TooManyRequests, UpstreamError
from mirror.oci.models import Digest
from mirror.pull.manifests import ClientFor, Result, content_type
from mirror.store.index import TagIndex


@dataclass(frozen=True, slots=True)
class PassThrough:
    status: int
    content_type: str | None
    body: bytes
    link: str | None = None
    result: Result = "miss"  # how the mirror got it, for the requests metric


class Listings:
    def __init__(self, tags: TagIndex, client_for: ClientFor, ttl: float) -> None:
        self.tags = tags
        self.client_for = client_for
        self._lists: TTLCache[tuple[str, str, str], PassThrough] = TTLCache(
            maxsize=10_000, ttl=max(ttl, 0.001))

    async def tags_list(self, upstream: str, repo: str, query: str) -> PassThrough:
        key = (upstream, repo, query)
        cached = self._lists.get(key)
        if cached is not None:
            return replace(cached, result="hit")
        client = self.client_for(upstream)
        if client is None:
            return replace(self._from_index(upstream, repo, query), result="hit")
        try:
            doc = await client.get_tags(repo, query)
        except (UpstreamError, TooManyRequests):
            return replace(self._from_index(upstream, repo, query), result="stale")
        answer = PassThrough(doc.status, content_type(doc), doc.body, doc.headers.get("Link"))
        if doc.status == 200:
            self._lists[key] = answer
        return answer

    def _from_index(self, upstream: str, repo: str, query: str) -> PassThrough:
        """The tags this mirror knows, paginated by the spec's `n` and `last` (lexical order,
        `last` excluded, no Link for n=0 or the last page)."""
        names = self.tags.tags_of(upstream, repo)
        if not names:
            raise NameUnknown(f"repository {repo} is not known to this mirror")
        params = dict(parse_qsl(query))
        last = params.get("last")
        if last:
            names = [t for t in names if t > last]
        link = None
        n = params.get("n", "")
        if n.isdigit() and len(names) > int(n):
            names = names[:int(n)]
            if names:  # the route rebuilds it on the client's path (oci.apipath.next_link)
                link = f'</v2/{repo}/tags/list?{urlencode({"n": n, "last": names[-1]})}>; rel="next"'
        body = json.dumps({"name": repo, "tags": names}).encode()
        return PassThrough(200, "application/json", body, link)

    async def referrers(self, upstream: str, repo: str, digest: Digest, query: str) -> PassThrough:
        client = self.client_for(upstream)
        if client is None:
            raise ManifestUnknown("referrers are not cached and the mirror is offline")
        doc = await client.get_referrers(repo, str(digest), query)
        return PassThrough(doc.status, content_type(doc), doc.body, doc.headers.get("Link"))

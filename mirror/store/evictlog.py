"""The eviction log: content removed from the hot tier, for the other processes sharing
cache.dir (server.workers > 1).

Additions reach the other workers through the `content` rows (mirror/fetch/shared.py reads the
recent ones); a removal leaves no row to read, so whoever deletes content appends its digest
here, in the same batched transaction as the `content` row's deletion. Readers keep the
sequence number they last saw and read only what follows it (a range on the primary key, not
a scan). AUTOINCREMENT keeps sequence numbers growing even when pruning empties the table.
Rows older than KEEP are pruned as new ones are written: a worker catches up every few
seconds, and one that starts reads the directory itself."""

from __future__ import annotations

import time
from collections.abc import Iterable

from mirror.oci.errors import DigestInvalid
from mirror.oci.models import Digest
from mirror.store.db import Database

KEEP = 3600.0  # seconds an eviction stays in the log


def record_evictions(db: Database, digests: Iterable[Digest]) -> None:
    """Tell the other workers that these digests left the hot tier (call it wherever content
    is deleted, with the deletion of their `content` rows)."""
    now = time.time()
    rows = [(str(d), now) for d in digests]
    if not rows:
        return
    for row in rows:
        db.write("INSERT INTO evictions (digest, evicted_at) VALUES (?, ?)", row)
    db.write("DELETE FROM evictions WHERE evicted_at < ?", (now - KEEP,))


def last_eviction(db: Database) -> int:
    """The newest sequence number: a reader starting now has seen everything up to it."""
    row = db.query_one("SELECT max(seq) FROM evictions")
    return int(row[0]) if row is not None and row[0] is not None else 0


def evictions_after(db: Database, seq: int) -> tuple[int, list[Digest]]:
    """Digests evicted after sequence number `seq`, and the number to pass next time."""
    rows = db.query("SELECT seq, digest FROM evictions WHERE seq > ? ORDER BY seq", (seq,))
    digests = []
    for _, key in rows:
        try:
            digests.append(Digest.parse(str(key)))
        except DigestInvalid:
            continue  # not written by us: nothing to forget
    return (int(rows[-1][0]) if rows else seq), digests

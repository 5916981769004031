"""Signature verdicts (mirror/pull/signatures.py), by manifest digest and rule fingerprint,
kept in the index database so they hold across restarts and while the upstream is away.

The rule fingerprint is made of the rule's keys: a key replaced in the config (SIGHUP or
restart) gives other fingerprints, so every image is evaluated again under the new policy;
the old rows simply stop matching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cachetools import LRUCache

from mirror.store.db import Database

Outcome = Literal["verified", "refused"]


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reason: str  # verified: how (the key, or the index that vouched); refused: why not
    checked_at: float  # wall-clock time of the evaluation


class VerdictStore:
    def __init__(self, db: Database, memory_entries: int = 100_000) -> None:
        self._db = db
        self._memory: LRUCache[tuple[str, str], Verdict] = LRUCache(maxsize=memory_entries)

    def get(self, digest: str, rule: str) -> Verdict | None:
        key = (digest, rule)
        v = self._memory.get(key)
        if v is not None:
            return v
        row = self._db.query_one("SELECT verdict, reason, checked_at FROM signature_verdicts "
                                 "WHERE digest=? AND rule=?", key)
        if row is None or row[0] not in ("verified", "refused"):
            return None
        v = Verdict(row[0], row[1], row[2])
        self._memory[key] = v
        return v

    def put(self, digest: str, rule: str, verdict: Verdict) -> None:
        self._memory[(digest, rule)] = verdict
        self._db.write("INSERT OR REPLACE INTO signature_verdicts (digest, rule, verdict, reason, "
                       "checked_at) VALUES (?, ?, ?, ?, ?)",
                       (digest, rule, verdict.outcome, verdict.reason, verdict.checked_at))

    def forget(self, digest: str, rule: str) -> None:
        self._memory.pop((digest, rule), None)
        self._db.write("DELETE FROM signature_verdicts WHERE digest=? AND rule=?", (digest, rule))

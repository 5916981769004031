"""The cache's SQLite database: tag records and content metadata (size, media type, last access).

Reads run on the event loop (a point lookup is ~13 us here); writes are queued and committed in
batches by one writer thread, because a commit with fsync can stall the loop for tens of ms.
Callers keep the truth for hot entries in memory, so a read never depends on a pending write."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the supervisor opens the index without loading prometheus_client
    from mirror.observe.metrics import Metrics

log = logging.getLogger("mirror.store.db")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tags (
    upstream TEXT NOT NULL, repo TEXT NOT NULL, tag TEXT NOT NULL,
    digest TEXT, media_type TEXT, size INTEGER, checked_at REAL NOT NULL,
    PRIMARY KEY (upstream, repo, tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS content (
    digest TEXT PRIMARY KEY, size INTEGER NOT NULL, media_type TEXT,
    is_manifest INTEGER NOT NULL DEFAULT 0, last_access REAL NOT NULL, stored_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS content_lru ON content (last_access);
CREATE TABLE IF NOT EXISTS links (
    upstream TEXT NOT NULL, repo TEXT NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (upstream, repo, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signature_verdicts (
    digest TEXT NOT NULL, rule TEXT NOT NULL, verdict TEXT NOT NULL, reason TEXT NOT NULL,
    checked_at REAL NOT NULL,
    PRIMARY KEY (digest, rule)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_uploads (
    digest TEXT PRIMARY KEY, kind TEXT NOT NULL, queued_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evictions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, digest TEXT NOT NULL, evicted_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS evictions_age ON evictions (evicted_at);
"""

Statement = tuple[str, Sequence[Any]]
# Writes queued while the writer cannot keep up (or the disk is full). Beyond this they are
# dropped and counted: every record can be rebuilt from the blob files or refetched, and a queue
# without bound would take the process's memory with it.
MAX_PENDING = 100_000


class Database:
    FLUSH_INTERVAL = 0.05

    def __init__(self, path: Path, metrics: Metrics | None = None,
                 max_pending: int = MAX_PENDING) -> None:
        self.path = path
        self._metrics = metrics  # None for command-line tools (nothing to export to)
        self.max_pending = max_pending
        self._overflowing = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer_conn = self._connect()
        self._writer_conn.executescript(SCHEMA)
        self._reader = self._connect()
        self._pending: list[Statement] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mirror-db")
        self._lock = threading.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                               timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a crash may lose the last commits but never corrupts the file;
        # every record here can be rebuilt from the blob files or refetched.
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    # -- reads (on the loop) ---------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._reader.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._reader.execute(sql, params).fetchone()
        return row

    # -- writes (batched, off the loop) ----------------------------------------------------

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        if len(self._pending) >= self.max_pending:
            self._lost("overflow", 1)
            if not self._overflowing:  # once per episode, not once per write
                self._overflowing = True
                log.warning("index database writes are %d behind: dropping new ones",
                            len(self._pending))
            return
        self._overflowing = False
        self._pending.append((sql, params))
        if self._wake is not None:
            self._wake.set()

    @property
    def backlog(self) -> int:
        """Writes queued and not yet handed to the writer thread."""
        return len(self._pending)

    def write_now(self, statements: Iterable[Statement]) -> None:
        """Synchronous write, for command-line tools and start-up (no loop running)."""
        self._commit(list(statements))

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._commit, batch)

    def _commit(self, batch: list[Statement]) -> None:
        with self._lock:
            conn = self._writer_conn
            try:
                conn.execute("BEGIN")
                for sql, params in batch:
                    conn.execute(sql, params)
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                # SQLite has already rolled back by itself on SQLITE_FULL, IOERR and others:
                # a ROLLBACK then raises, which used to escape and end the flusher for good.
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                self._lost("error", len(batch))
                log.error("database write of %d statements failed (%s): they are lost",
                          len(batch), e)

    def _lost(self, reason: str, n: int) -> None:
        if self._metrics is not None:
            self._metrics.index_writes_lost.labels(reason).inc(n)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._flusher = asyncio.create_task(self._run(), name="db-flusher")

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.FLUSH_INTERVAL)  # gather a batch
            try:
                await self.flush()
            except Exception:  # the flusher must outlive any one batch
                log.exception("database flush failed")

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            try:
                await self._flusher
            except asyncio.CancelledError:
                pass
        await self.flush()
        self._executor.shutdown(wait=True)
        self._reader.close()
        self._writer_conn.close()

    def close_sync(self) -> None:
        if self._pending:
            self._commit(self._pending)
            self._pending = []
        self._executor.shutdown(wait=True)
        self._reader.close()
        self._writer_conn.close()

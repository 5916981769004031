"""A committed blob's file is opened for serving without access-time updates (O_NOATIME), and
still opened where the flag is not allowed."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from mirror.store.disk import open_for_reading


def test_blob_files_are_read_without_access_time_updates(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"content")
    with open_for_reading(path) as f:
        assert f.read() == b"content"
        assert fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_NOATIME


def test_a_file_that_refuses_the_flag_is_opened_all_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """O_NOATIME needs the file's owner: another user's file answers EPERM."""
    path = tmp_path / "blob"
    path.write_bytes(b"content")
    real_open = os.open

    def not_owner(p: str | os.PathLike[str], flags: int, *args: int) -> int:
        if flags & os.O_NOATIME:
            raise PermissionError(1, "Operation not permitted")
        return real_open(p, flags, *args)

    monkeypatch.setattr(os, "open", not_owner)
    with open_for_reading(path) as f:
        assert f.read() == b"content"

"""Rejoin's SQLite database holds PII: the files it creates are the owner's only, whatever the umask."""

from __future__ import annotations

import os
from pathlib import Path

from store.engine import Store


def test_a_new_sqlite_database_and_its_wal_files_are_created_owner_only(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # the usual umask: SQLite alone would make the files 644
    try:
        store = Store(f"sqlite:///{tmp_path / 'rejoin.db'}")
        try:
            with store.engine.connect():  # open: its -wal and -shm are there until the last one closes
                modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
        finally:
            store.dispose()
    finally:
        os.umask(previous)
    assert set(modes) == {"rejoin.db", "rejoin.db-wal", "rejoin.db-shm"}, modes
    assert set(modes.values()) == {0o600}, modes


def test_an_existing_database_file_keeps_its_mode(tmp_path: Path) -> None:
    """The operator may have chosen it (a group that backs it up): Rejoin only sets the mode of files it makes."""
    path = tmp_path / "rejoin.db"
    path.touch(mode=0o640)
    path.chmod(0o640)
    Store(f"sqlite:///{path}").dispose()
    assert path.stat().st_mode & 0o777 == 0o640

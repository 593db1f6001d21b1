"""Where recorded bursts and voice messages keep their SRTP (issue 17): files under the node's data directory, or
the shared store.

One host (SQLite) keeps files: ``<directory>/<relative>``, written to a temporary name and renamed (a crash leaves
no half file), mode 0600. Several server nodes share one PostgreSQL; a file on one node would be unreadable to the
others (a replay or a fetch is served by whichever node the member is connected to), so there the octets go to
the ``media_blobs`` table in the same transaction-safe store as their index. The index's ``path`` column holds the
reference: ``shared:<relative>`` for the table, else a path relative to the directory, so a deployment that moved
from one host to several still reads its older files on the node that has them.

Everything stored here is ciphertext (SRTP under keys the server does not hold); the table adds nothing a file
did not have. PostgreSQL stores a burst of at most 3000 packets (~300 kB) as one ``bytea`` value, well inside
its 1 GB limit; TOAST compresses nothing of it (ciphertext), which the storage figures in bench/recording.py
already assume.
"""

from __future__ import annotations

import os
from pathlib import Path

from server.groups.database import StoreDatabase

__all__ = ["SHARED_PREFIX", "MediaBlobs", "SharedBlobStore", "media_blobs"]

SHARED_PREFIX = "shared:"


class SharedBlobStore(StoreDatabase):
    """The group store's part: the ``media_blobs`` table."""

    def put_blob(self, ref: str, data: bytes, *, now: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO media_blobs (ref, data, stored_at) VALUES (?, ?, ?)", (ref, data, now))

    def get_blob(self, ref: str) -> bytes | None:
        with self._read() as db:
            row = db.execute("SELECT data FROM media_blobs WHERE ref = ?", (ref,)).fetchone()
        return None if row is None else bytes(row[0])

    def delete_blob(self, ref: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM media_blobs WHERE ref = ?", (ref,))


class MediaBlobs:
    """Stores and reads the octets of one kind of media (recordings, messages); ``put`` returns the reference to
    keep in the index. Thread-safe as the store is; called on a writer thread or the store pool, never the reactor."""

    def __init__(self, directory: Path, store: SharedBlobStore | None) -> None:
        self.directory = directory
        self.shared = store
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def put(self, relative: str, data: bytes, *, now: float) -> str:
        if self.shared is not None:
            ref = SHARED_PREFIX + relative
            self.shared.put_blob(ref, data, now=now)
            return ref
        path = self.directory / relative
        path.parent.mkdir(mode=0o700, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
        return relative

    def get(self, ref: str) -> bytes:
        """The stored octets; FileNotFoundError when they are gone, ValueError for a reference that points
        outside the directory."""
        if ref.startswith(SHARED_PREFIX):
            data = None if self.shared is None else self.shared.get_blob(ref)
            if data is None:
                raise FileNotFoundError(f"{ref}: not in the shared store")
            return data
        return self.path_of(ref).read_bytes()

    def delete(self, ref: str) -> None:
        if ref.startswith(SHARED_PREFIX):
            if self.shared is not None:
                self.shared.delete_blob(ref)
            return
        self.path_of(ref).unlink(missing_ok=True)

    def path_of(self, ref: str) -> Path:
        path = (self.directory / ref).resolve()
        if self.directory.resolve() not in path.parents:
            raise ValueError(f"stored path {ref[:80]!r} outside {self.directory}")
        return path


def media_blobs(directory: Path, store: SharedBlobStore) -> MediaBlobs:
    """Files for a store on SQLite (one host), the shared table for PostgreSQL (several nodes)."""
    return MediaBlobs(directory, store if store.backend == "postgresql" else None)

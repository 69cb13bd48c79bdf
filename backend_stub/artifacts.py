"""Content-addressed artifact files: ``<root>/<sha[:2]>/<sha>``, written atomically.

A file is complete before its name appears (temp file, fsync, rename), and the
database row that makes it visible is committed only after that, so a crash
leaves at worst an orphan file, never a row without its bytes. Replicas that
share a database must share this directory too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from backend_stub.errors import InvalidArgument, ResourceExhausted, StoreError


class ArtifactStore:
    """Files named by the SHA-256 of their bytes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._incoming = self.root / "incoming"
        try:
            self._incoming.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the artifact directory {self.root}: {exc}") from exc

    def path(self, sha256: str) -> Path:
        """Return where the artifact with this digest lives."""
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        """Whether the artifact's file is present."""
        return self.path(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        """Open an artifact for reading."""
        try:
            return self.path(sha256).open("rb")
        except OSError as exc:
            raise StoreError(f"artifact {sha256} is missing from {self.root}: {exc}") from exc

    def receive(self, *, max_bytes: int) -> Incoming:
        """Start receiving a new artifact."""
        return Incoming(self, max_bytes=max_bytes)


class Incoming:
    """An upload in progress: bytes go to a temp file and are hashed on the way."""

    def __init__(self, store: ArtifactStore, *, max_bytes: int) -> None:
        self._store = store
        self._max = max_bytes
        handle, name = tempfile.mkstemp(dir=store._incoming, prefix="upload-")
        self._file = os.fdopen(handle, "wb")
        self._path = Path(name)
        self._hash = hashlib.sha256()
        self.size_bytes = 0

    def write(self, data: bytes) -> None:
        """Append a chunk."""
        self.size_bytes += len(data)
        if self.size_bytes > self._max:
            raise ResourceExhausted(f"the artifact exceeds the size limit of {self._max} bytes")
        self._hash.update(data)
        self._file.write(data)

    @property
    def sha256(self) -> str:
        """The digest of what has been written so far."""
        return self._hash.hexdigest()

    def read_back(self) -> bytes:
        """Return everything written (flushes first)."""
        self._file.flush()
        return self._path.read_bytes()

    def commit(self) -> Path:
        """Make the file durable under its content address and return its path."""
        if self.size_bytes == 0:
            raise InvalidArgument("the artifact is empty")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target = self._store.path(self.sha256)
        target.parent.mkdir(exist_ok=True)
        if target.is_file() and target.stat().st_size == self.size_bytes:
            self._path.unlink()
            return target
        os.replace(self._path, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return target

    def discard(self) -> None:
        """Drop the partial upload."""
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._path.unlink()

"""Files the ServerApp replaces while it runs, written so that a crash never leaves half.

A file is written to a temporary file in the same directory, flushed and fsynced, then
renamed over the old one with :func:`os.replace` (atomic on POSIX within one file
system), and the directory is fsynced so the rename itself survives a power cut. Whoever
reads the path sees the old file or the new one, never a part; a failure while writing
leaves the old file as it was and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Replace ``path`` with what ``write(stream)`` writes, atomically.

    Parameters
    ----------
    path : str or Path
        The file to replace (its directory is created if missing).
    write : callable
        Writes the new content into the binary stream it is given.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)
    return path


def write_json_atomically(path: str | Path, data: Any) -> Path:
    """Replace ``path`` with ``data`` as indented JSON (numbers it does not know as
    floats), atomically."""

    def write(stream: IO[bytes]) -> None:
        text = _TextStream(stream)
        json.dump(data, text, indent=1, default=float)

    return write_atomically(path, write)


class _TextStream:
    """The ``write`` of a text stream over a binary one, for :func:`json.dump`."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text.encode())


def _fsync_directory(directory: Path) -> None:
    # Some file systems cannot open a directory for fsync; the rename stands regardless.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

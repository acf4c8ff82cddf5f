"""File operations shared by the library and the commands: a streamed sha256, and writes that
leave either the old content or the new one, never a half-written file or directory."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Optional


def sha256_file(path: str | Path, stop: Optional[threading.Event] = None, chunk: int = 1 << 22) -> Optional[str]:
    """The file's hex sha256, streamed in ``chunk``-byte blocks.

    With ``stop`` (for a digest computed beside other work), returns None as soon as the event is
    set; without it, always returns the digest. Errors opening or reading the file propagate."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            if stop is not None and stop.is_set():
                return None
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: str | Path, data: bytes | str, sync: bool = False) -> None:
    """Write ``data`` to ``path`` through a sibling temporary file and one rename, so a reader
    (or a crash) sees the old file or the new one. ``sync`` fsyncs the data before the rename
    (checkpoints: the rename must not reach the disk before the bytes)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    raw = data.encode() if isinstance(data, str) else data
    with open(tmp, "wb") as f:
        f.write(raw)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def replace_directory(staging: str | Path, output: str | Path, overwrite: bool = True) -> None:
    """Move a fully written ``staging`` directory to ``output``, replacing what is there.

    The old ``output`` is removed only once ``staging`` is complete, so a failure before this call
    leaves the old one intact. With ``overwrite`` False an existing ``output`` raises
    FileExistsError (the caller turns it into its own error); ``staging`` is removed on any
    failure here, so no partial output is left behind."""
    staging, output = Path(staging), Path(output)
    try:
        if output.exists():
            if not overwrite:
                raise FileExistsError(f"{output} exists")
            shutil.rmtree(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

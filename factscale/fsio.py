"""Atomic file writes: the one helper every file factscale writes goes through.

A reader (or a process killed mid-write) sees the old file or the new one, never a torn one: the data
goes to a private temporary name in the same directory, is fsynced, then renamed over the target, and
the directory is fsynced so that the rename itself survives a crash (on POSIX a directory entry is the
directory's data).
Files get the ordinary umask-derived mode (``mkstemp`` alone would leave them 0600).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(directory: str | Path) -> None:
    """Flush a directory's entries (a rename into it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory: the file data itself is already synced
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | Path, obj, **kw) -> Path:
    return write_atomic(path, json.dumps(obj, **kw))


def write_parquet_atomic(df, path: str | Path) -> Path:
    buf = io.BytesIO()
    df.write_parquet(buf)
    return write_atomic(path, buf.getvalue())


def fix_mode(path: str | Path) -> None:
    """Give files and directories made private on purpose while being written (safetensors' temp files: 0600,
    ``tempfile.mkdtemp``: 0700) the mode the umask gives, so a group sharing a cluster can read them."""
    for p in [Path(path), *Path(path).rglob("*")] if Path(path).is_dir() else [Path(path)]:
        if p.is_file():
            os.chmod(p, 0o666 & ~_umask())
        elif p.is_dir():
            os.chmod(p, 0o777 & ~_umask())


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

"""Reading dump files: parallel decompression, compressed-position progress, broken streams.

``.bz2`` is read with ``indexed_bzip2`` and ``.gz`` with ``rapidgzip`` when installed (the ``fast``
extra): both decompress blocks on all cores, where Python's ``bz2`` module reads one block at a time
(~15-40 MB/s of JSON per core, the bottleneck of a full-dump build). Without them, or with
``threads=1``, the standard library is used. A stream that breaks (a corrupted block, a truncated
download) ends the file: what was read before stays, and the break is reported with its line.

Ranges for sharded builds (``shards``): ``range_lines`` reads the lines that start in a byte range of an
uncompressed file; ``bz2_range_lines`` does the same in the uncompressed content of a .bz2 file, entering it
at the block before the range through a block index (``bz2_block_index``, indexed_bzip2's block offsets).
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
from contextlib import contextmanager
from pathlib import Path

# what a decompressor raises on a corrupted or truncated stream (indexed_bzip2: ValueError/RuntimeError)
STREAM_ERRORS = (OSError, EOFError, ValueError, RuntimeError)


def _parallel_module(suffix: str):
    try:
        if suffix == ".bz2":
            import indexed_bzip2

            return indexed_bzip2
        if suffix == ".gz":
            import rapidgzip

            return rapidgzip
    except ImportError:
        return None
    return None


def decompressor_name(path: str | Path, threads: int) -> str:
    suffix = Path(path).suffix
    if suffix not in (".bz2", ".gz"):
        return "none"
    mod = _parallel_module(suffix) if threads > 1 else None
    return f"{mod.__name__} ({threads} threads)" if mod else {".bz2": "bz2", ".gz": "gzip"}[suffix]


class DumpReader:
    """Binary lines of one dump file plus its compressed position; see ``open_dump``."""

    def __init__(self, fh, pos, first_block_check=None):
        self.fh, self.pos, self._check = fh, pos, first_block_check
        self.broken: list[tuple[int, str]] = []  # (line, message) where the stream broke

    def lines(self):
        """Lines; a decompression error ends the iteration and is recorded in ``broken``."""
        n = 0
        try:
            for line in self.fh:
                n += 1
                yield line
        except STREAM_ERRORS as e:
            self.broken.append((n + 1, f"{type(e).__name__}: {str(e)[:120]}; the rest of the file is skipped"))
            return
        if self._check is not None and n and not self._check():
            # indexed_bzip2 finds blocks by their magic bytes, so a first block whose header is destroyed is
            # skipped without an error (later broken blocks do raise): the lines read are those after it
            self.broken.append((1, "the first bz2 block is unreadable (corrupted header); the lines read "
                                   "are those after it"))


@contextmanager
def open_dump(path: str | Path, threads: int = 1):
    """Yield a DumpReader: ``.lines()``, ``.pos()`` (compressed bytes consumed so far), ``.broken``."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dump file not found: {p}")
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a directory; give dump files (.json, .json.gz, .json.bz2)")
    magic = {".bz2": b"BZh", ".gz": b"\x1f\x8b"}.get(p.suffix)
    if magic:
        with open(p, "rb") as fh:
            if fh.read(len(magic)) != magic:
                from factscale.errors import CorpusError

                raise CorpusError(f"{p}: line 1: not {p.suffix[1:]} data (the file does not start like one); expected "
                                  "a Wikidata JSON dump: .json, .json.gz or .json.bz2")
    mod = _parallel_module(p.suffix) if threads > 1 else None
    if mod is not None:
        fh = mod.open(str(p), parallelization=threads)
        bz = fh.raw.bz2reader if hasattr(fh, "raw") and hasattr(fh.raw, "bz2reader") else None
        inner = bz or fh
        if bz is None:  # RapidgzipFile iterates lines byte by byte (~1000x slower): buffer it
            fh = io.BufferedReader(fh, buffer_size=1 << 22)
        seen = [0]

        def pos():  # tell_compressed() counts bits and reads 0 once the stream is done
            seen[0] = max(seen[0], inner.tell_compressed() // 8)
            return seen[0]

        check = (lambda: min(bz.block_offsets(), default=32) == 32) if bz is not None else None
        try:
            yield DumpReader(fh, pos, check)
        finally:
            fh.close()
        return
    raw = open(p, "rb")
    try:
        if p.suffix == ".gz":
            fh = gzip.open(raw, "rb")
        elif p.suffix == ".bz2":
            fh = bz2.open(raw, "rb")
        else:
            fh = raw
        yield DumpReader(fh, raw.tell)
    finally:
        raw.close()


def file_size(path) -> int:
    return os.path.getsize(path)


def _lines_in_range(fh, start: int, end: int):
    if start > 0:
        fh.seek(start - 1)
        fh.readline()  # the line that began before ``start`` (or only the newline ending at start - 1)
    pos = fh.tell()
    while pos < end:
        line = fh.readline()
        if not line:
            return
        yield line
        pos += len(line)


def range_lines(path: str | Path, start: int, end: int):
    """Lines of an uncompressed file whose first byte lies in [start, end): consecutive byte ranges
    partition the file's lines exactly (a line crossing ``end`` belongs to this range, and the next
    range skips it), so a file can be parsed in shards without a pass to find line boundaries."""
    with open(path, "rb") as fh:
        yield from _lines_in_range(fh, start, end)


def bz2_block_index(path: str | Path, threads: int = 1) -> tuple[dict | None, str]:
    """(block offsets, '') of a .bz2 file - {compressed offset in bits: uncompressed offset in bytes}, as
    indexed_bzip2's ``block_offsets()`` gives them, with the total uncompressed size under key -1 - or
    (None, why) when it cannot be split: indexed_bzip2 missing, or a stream that does not decompress whole.
    Building it decompresses the file once (on ``threads`` cores); a shard given it seeks without that."""
    mod = _parallel_module(".bz2")
    if mod is None:
        return None, "indexed_bzip2 is not installed (pip install indexed_bzip2, or the 'fast' extra)"
    try:
        with mod.open(str(path), parallelization=threads) as fh:
            bz = fh.raw.bz2reader
            offsets = dict(bz.block_offsets())  # decompresses the whole file (in parallel) to find the blocks
            size = bz.size()
    except STREAM_ERRORS as e:
        return None, f"it does not decompress whole ({type(e).__name__}: {str(e)[:80]})"
    if min(offsets, default=32) != 32:  # a destroyed first block is skipped silently (see DumpReader.lines)
        return None, "its first bz2 block is unreadable"
    offsets[-1] = size
    return offsets, ""


def bz2_range_lines(path: str | Path, start: int, end: int, offsets: dict, broken: list, threads: int = 1):
    """Lines of a .bz2 file whose first uncompressed byte lies in [start, end) - the rule of ``range_lines``
    on the decompressed stream - reading from the block before ``start`` (``offsets``: ``bz2_block_index``),
    not from the file's start. A decompression error ends the range and is recorded in ``broken``."""
    import indexed_bzip2

    with indexed_bzip2.open(str(path), parallelization=threads) as fh:
        fh.raw.bz2reader.set_block_offsets({k: v for k, v in offsets.items() if k >= 0})
        n = 0
        try:
            for line in _lines_in_range(fh, start, end):
                n += 1
                yield line
        except STREAM_ERRORS as e:
            broken.append((n + 1, f"{type(e).__name__}: {str(e)[:120]}; the rest of the file is skipped"))

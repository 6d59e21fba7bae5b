"""Spill-file plumbing for builds that do not hold their data in memory (label resolution, ``wikidata.labels``;
the bucketed build, ``corpus.bounded``): K hash buckets of append-only Arrow IPC streams,
sequential readers of per-bucket runs, their K-way merge, and the choice of K under the open-file limit.
Every file opened here is registered in ``OPEN`` so that a failed resolve can close them all."""

from __future__ import annotations

import contextlib
import logging
import resource
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

log = logging.getLogger(__name__)

_SEED = 0x5EED


def n_buckets(rows: int, bucket_rows: int, sets: int = 2, what: str = "label resolution") -> int:
    """K for ``rows`` rows in buckets of ``bucket_rows``, for a caller that holds ``sets`` files per bucket open at
    once (label resolution: the buckets it writes and the runs it merges; the bucketed build: three). The
    process's soft limit on open files is raised if it must be (and left raised), or K lowered to fit under
    the hard limit - then buckets outgrow ``bucket_rows``, and a line says so."""
    want = k_n = max(1, -(-rows // bucket_rows))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < sets * k_n + 256:
        soft = sets * k_n + 256 if hard == resource.RLIM_INFINITY else min(hard, sets * k_n + 256)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        k_n = min(k_n, max(1, (soft - 256) // sets))
    if k_n < want:
        log.warning("%s: %d buckets instead of %d (open-file limit %d): each bucket holds ~%d rows, "
                    "(more memory than buckets of %d rows)", what, k_n, want, hard, -(-rows // k_n), bucket_rows)
    return k_n


def bucket_of(col: str, k_n: int) -> pl.Expr:
    return (pl.col(col).hash(_SEED) % k_n).cast(pl.UInt32)


OPEN: list = []  # the spill files the resolve in progress holds open: closed if it fails (no leaked handles)


@contextlib.contextmanager
def closing_on_failure():
    """Around a pass that opens spill files (registered in ``OPEN``): if it fails, every one is closed before the
    error propagates (its directory can then be removed); ``OPEN`` is emptied either way."""
    try:
        yield
    except BaseException:
        for h in OPEN:
            h.abort()
        raise
    finally:
        OPEN.clear()


class Buckets:
    """K append-only Arrow IPC streams ``root/b-K.arrow``: rows go to the bucket of ``col``'s hash in the order
    added. Rows wait in one buffer of ``batch_rows`` rows and are written one batch per bucket per flush, so
    memory is one buffer and the files are written once, sequentially."""

    def __init__(self, root: Path, k_n: int, col: str, schema: dict, batch_rows: int):
        self.root, self.k_n, self.col, self.schema, self.batch_rows = root, k_n, col, schema, batch_rows
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self._buf, self._n, self._out = [], 0, {}

    def path(self, k: int) -> Path:
        return self.root / f"b-{k:05d}.arrow"

    def add(self, df: pl.DataFrame):
        if df.height:
            self._buf.append(df.select([pl.col(c).cast(t) for c, t in self.schema.items()]))
            self._n += df.height
        if self._n >= self.batch_rows:
            self._flush()

    def _flush(self):
        if not self._buf:
            return
        # one stable sort by bucket and zero-copy slices: per flush a fixed number of polars calls, not one per bucket
        df = pl.concat(self._buf)
        self._buf, self._n = [], 0  # at most two copies of the buffer alive at once
        df = df.with_columns(_k=bucket_of(self.col, self.k_n)).sort("_k", maintain_order=True)
        ks, starts = df["_k"].to_numpy(), np.flatnonzero(np.diff(df["_k"].to_numpy())) + 1
        t, df = df.drop("_k").to_arrow(), None
        for lo, hi in zip([0, *starts], [*starts, len(ks)]):
            self.write(int(ks[lo]), t.slice(lo, hi - lo))

    def write(self, k: int, rows, max_chunk: int | None = None):
        """Append ``rows`` (a polars or Arrow table) to bucket ``k``, in stored batches of ``max_chunk`` rows."""
        t = rows.to_arrow() if isinstance(rows, pl.DataFrame) else rows
        if k not in self._out:
            if not self._out:
                OPEN.append(self)
            sink = pa.OSFile(str(self.path(k)), "wb")
            self._out[k] = (sink, None)  # abort() closes the sink even if the stream cannot be opened
            self._out[k] = (sink, pa.ipc.new_stream(sink, t.schema))
        self._out[k][1].write_table(t, max_chunksize=max_chunk)

    def close(self):
        self._flush()
        for sink, writer in self._out.values():
            writer.close()
            sink.close()
        self._out.clear()

    def abort(self):
        """Close every file without writing the buffer (after a failure)."""
        for sink, writer in self._out.values():
            for f in (writer, sink):
                try:
                    f is not None and f.close()
                except Exception:  # noqa: BLE001 - already failing; the first error is the one reported
                    pass
        self._out.clear()

    def batches(self, k: int):
        """Bucket ``k``'s rows in the order added, one stored batch at a time (memory: one batch)."""
        p = self.path(k)
        if not p.exists():
            return
        with pa.OSFile(str(p)) as src:
            for batch in pa.ipc.open_stream(src):
                yield pl.from_arrow(pa.Table.from_batches([batch]))

    def read(self, k: int) -> pl.DataFrame:
        p = self.path(k)
        if not p.exists():
            return pl.DataFrame(schema=self.schema)
        with pa.OSFile(str(p)) as src:
            return pl.from_arrow(pa.ipc.open_stream(src).read_all())


class Run:
    """Sequential reader of one run (rows in ``pos`` order): ``until(hi)`` hands out its rows below ``hi``, one
    stored batch in memory at a time. Reading every run chunk by chunk reads each run once: a K-way merge."""

    def __init__(self, path: Path):
        OPEN.append(self)
        self._src = pa.OSFile(str(path)) if path.exists() else None
        self._reader = pa.ipc.open_stream(self._src) if self._src else None
        self._left: pa.RecordBatch | None = None
        self._pos = None

    def until(self, hi: int) -> list[pa.RecordBatch]:
        out = []
        while True:
            if self._left is None:
                if self._reader is None:
                    return out
                try:
                    self._left = self._reader.read_next_batch()
                except StopIteration:
                    self.close()
                    return out
                self._pos = self._left.column("pos").to_numpy()
            n = int(np.searchsorted(self._pos, hi, side="left"))
            if n < len(self._pos):
                if n:
                    out.append(self._left.slice(0, n))
                    self._left, self._pos = self._left.slice(n), self._pos[n:]
                return out
            out.append(self._left)
            self._left = None

    def close(self):
        if self._src:
            self._src.close()
        self._src = self._reader = None

    abort = close


def merged(runs: list[Run], hi: int, schema: dict) -> pl.DataFrame:
    got = [b for r in runs for b in r.until(hi)]
    return pl.from_arrow(pa.Table.from_batches(got)) if got else pl.DataFrame(schema=schema)

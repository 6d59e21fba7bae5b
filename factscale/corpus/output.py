"""What a build writes, however its rows arrive (one frame, or bucket by bucket in ``corpus.bounded``):
``facts.parquet`` in fixed row groups, so the same rows give the same bytes (and the same corpus hash), and
the manifest's statistics, accumulated part by part."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from factscale.corpus.render import DOMAIN_TAG_ID
from factscale.provenance import versions

CORPUS_FORMAT = "factscale-corpus/3"  # /3: fact-by-fact order keys and rarity tie-breaks, fixed row groups
ROW_GROUP = 65_536  # rows per parquet row group: the file's bytes depend on the rows only, never on the parts
GROUP_COLUMNS = ("variant", "freq_level", "phase", "rarity_bucket", "value_len")


class FactsWriter:
    """``facts.parquet`` written part by part in row groups of exactly ``ROW_GROUP`` rows (the last one shorter):
    parts of any sizes that hold the same rows in the same order make the same file. Every part must have
    the first part's columns and types."""

    def __init__(self, path):
        self.path, self._writer, self._schema, self._buf, self._n, self.rows = path, None, None, [], 0, 0

    def add(self, df: pl.DataFrame) -> None:
        t = df.to_arrow()
        if self._writer is None:
            self._schema = t.schema
            self._writer = pq.ParquetWriter(str(self.path), t.schema)
        elif t.schema != self._schema:
            t = t.select(self._schema.names).cast(self._schema)
        if t.num_rows:
            self._buf.append(t)
            self._n += t.num_rows
            self.rows += t.num_rows
        while self._n >= ROW_GROUP:
            self._flush(ROW_GROUP)

    def _flush(self, n: int) -> None:
        t = pa.concat_tables(self._buf)
        # one contiguous array per column: page boundaries then depend on the rows, not on how parts were cut
        self._writer.write_table(t.slice(0, n).combine_chunks(), row_group_size=n)
        rest = t.slice(n)
        self._buf, self._n = ([rest] if rest.num_rows else []), self._n - n

    def close(self) -> None:
        if self._n:
            self._flush(self._n)
        if self._writer is not None:
            self._writer.close()


class Stats:
    """The manifest's counts per relation, split and group, entropy sums and token totals, part by part.
    Junk-pool pieces (split ``junk``) are training text, not facts: counted by split and tokens only."""

    def __init__(self):
        self.per_rel, self.labels, self.splits = Counter(), {}, Counter()
        self.groups: dict[str, Counter] = {}
        self.bits = {"train": 0.0, "all": 0.0}
        self.tok = Counter()
        self._pending: list[pl.DataFrame] = []

    def _sum_blocks(self, final: bool) -> None:
        """Entropy sums over blocks of ``ROW_GROUP`` rows counted from the corpus' first row: the same float
        additions in the same order however the rows arrive, so every build's manifest has the same sums."""
        rows = pl.concat(self._pending) if self._pending else None
        if rows is None:
            return
        n = rows.height if final else rows.height - rows.height % ROW_GROUP
        for lo in range(0, n, ROW_GROUP):
            b = rows.slice(lo, min(ROW_GROUP, n - lo))
            x, useful = b["prior_bits"].to_numpy(), b["useful"].to_numpy()
            # numpy over one contiguous array: polars' sum would follow the frame's chunks, which differ by build
            self.bits["train"] += float(np.sum(x[useful & b["train"].to_numpy()]))
            self.bits["all"] += float(np.sum(x[useful]))
        self._pending = [rows.slice(n)] if n < rows.height else []

    def add(self, df: pl.DataFrame) -> None:
        self.splits.update(dict(df.group_by("split").len().iter_rows()))
        lengths = df["input_ids"].list.len()
        self.tok["junk"] += int(lengths.filter(df["split"] == "junk").sum())
        self.tok["train"] += int(lengths.filter(df["split"] == "train").sum())
        useful = df.filter(pl.col("split") != "junk")
        for r, lab, n in useful.group_by("relation", "relation_label").len().iter_rows():
            self.per_rel[r] += n
            self.labels[r] = lab
        for c in GROUP_COLUMNS:
            if c in df.columns:
                self.groups.setdefault(c, Counter()).update(dict(useful.group_by(c).len().iter_rows()))
        self._pending.append(df.select(pl.col("prior_bits").fill_null(0.0), train=pl.col("split") == "train",
                                       useful=pl.col("split") != "junk"))
        self._sum_blocks(final=False)
        self.tok["facts"] += useful.height
        self.tok["tokens"] += int(useful["input_ids"].list.len().sum())
        self.tok["value_tokens"] += int(useful["n_value_tokens"].sum())

    def manifest(self, *, counts: dict, entropy_bits: float | None, junk: bool, vocab: int, recipe: dict | None,
                 source_info: dict, options: dict, tokenizer_texts: int, t0: float) -> dict:
        self._sum_blocks(final=True)
        rels = sorted(self.per_rel.items(), key=lambda kv: (-kv[1], kv[0]))
        n = max(self.tok["facts"], 1)
        return {
            "format": CORPUS_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": source_info,
            "options": options,
            "counts": {**counts, "kept_facts": self.tok["facts"],
                       **{f"kept_{k}": v for k, v in sorted(self.splits.items())}},
            "facts_per_relation": dict(rels),
            "facts_per_group": {c: dict(sorted(v.items(), key=lambda kv: (kv[0] is not None, kv[0])))
                                for c, v in self.groups.items()},
            "relation_labels": {r: self.labels[r] for r, _ in rels},
            "entropy_bits": {
                # exact for synthetic corpora; for real ones the sum of empirical value surprisals
                "kind": "exact" if entropy_bits is not None else "empirical_prior",
                "train": self.bits["train"],
                # a junk pool's facts are not the corpus' information
                "all": self.bits["all"] if entropy_bits is None or junk else float(entropy_bits),
            },
            "tokens": {
                "vocab_size": vocab,
                "mean_tokens_per_fact": self.tok["tokens"] / n,
                "mean_value_tokens": self.tok["value_tokens"] / n,
                "train_tokens_per_epoch": self.tok["train"],
                "tokenizer_texts": tokenizer_texts,
                **({"junk_tokens": self.tok["junk"], "domain_tag_id": DOMAIN_TAG_ID} if junk else {}),
            },
            "recipe": recipe,
            "versions": versions(),
            "build_seconds": round(time.time() - t0, 3),
        }

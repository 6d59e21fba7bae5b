"""Raw facts from any source -> an unambiguous, split, rendered, tokenized corpus directory.

Every source (dump, triple files, synthetic) yields the same raw columns (``RAW_SCHEMA``); this module
applies the documented rules, in order, and counts what each rule did:

1. exact repeats of (subject_id, relation, value) are deduplicated;
2. multi-valued attributes - one (subject, relation) with several values - are resolved by
   ``multi_value``: ``drop`` (default: drop every value of that pair; it cannot be one fact) or
   ``first`` (keep the first value in source order, e.g. Wikidata's statement order);
3. ambiguous keys - one label shared by different subjects - are resolved by ``ambiguous_keys``:
   ``disambiguate`` (default: the key becomes ``label (subject_id)``) or ``drop``;
4. copyable facts - the value equals the subject's label, or appears as whole words in the prompt it will
   be rendered with ("The country of Latvia is Latvia") - are counted and, by ``copyable``, dropped
   (default: a model copies them from the prompt, they measure no memory) or kept with a ``copyable``
   column; before the corpus' ``max_facts`` and the study variants (which derive facts from the kept ones;
   a dump's ``max_facts`` also caps parsing, so a dump build may keep fewer than ``max_facts``). Real
   sources only: a synthetic corpus' values are drawn independently of its keys (its entropy is exact);
5. held-out split by subject (unseen keys, same relations), seeded;
6. render, train the tokenizer, tokenize, check value alignment.

Output: ``facts.parquet``, ``tokenizer/`` (``AutoTokenizer.from_pretrained``), ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from factscale.corpus.render import DOMAIN_TAG_ID, render, tokenize, train_tokenizer
from factscale.corpus.output import CORPUS_FORMAT, FactsWriter, Stats
from factscale.corpus.rules import add_statistics, assign_split, copyable_facts, resolve, tokenizer_texts
from factscale.corpus.variants import apply_variants, difficulty_columns, junk_facts, junk_options, random_junk
from factscale.errors import CorpusError
from factscale.fsio import file_sha256, fix_mode, write_json_atomic

LOG = logging.getLogger("factscale.corpus")  # stage lines; the CLI shows them on stderr
TOKENIZER_SAMPLE = 2_000_000  # training texts the BPE sees at most (CorpusSpec.tokenizer_sample)


def corpus_hash_of(path: str | Path) -> str:
    """The content hash a corpus directory's manifest records (what run identities hash)."""
    m = Path(path) / "manifest.json"
    if not m.exists():
        raise CorpusError(f"corpus.path {path} is not a corpus directory (no manifest.json); "
                          "make one with `factscale corpus build`")
    try:
        manifest = json.loads(m.read_text())
    except ValueError as e:
        raise CorpusError(f"{m}: not valid JSON ({e}); rebuild the corpus") from None
    if manifest.get("format") != CORPUS_FORMAT:
        raise CorpusError(f"{path} was built by an older factscale (format {manifest.get('format')!r}, "
                          f"need {CORPUS_FORMAT!r}); rebuild it with `factscale corpus build`")
    return manifest["corpus_hash"]


def content_hash(d: Path) -> str:
    """sha256 over facts.parquet and every tokenizer file: two corpora with this hash train identically."""
    h = hashlib.sha256()
    for p in [d / "facts.parquet", *sorted((d / "tokenizer").rglob("*"))]:
        if p.is_file():
            h.update(str(p.relative_to(d)).encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()[:16]


def read_manifest(path: str | Path) -> dict | None:
    try:
        return json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


CORPUS_ENTRIES = {"facts.parquet", "manifest.json", "tokenizer"}  # everything a build writes into its directory


def check_target(out_dir: str | Path, sources=()) -> Path:
    """Refuse an output directory whose replacement would lose anything; returns it resolved.

    A build replaces its target whole, so the target must be new, empty, or a corpus (its ``manifest.json``
    carries a ``factscale-corpus/`` format) holding nothing a build did not write. Never the current
    directory or one above it, and never a directory that holds one of the build's ``sources``.
    """
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise CorpusError(f"-o {out_dir}: exists and is not a directory")
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise CorpusError(f"-o {out_dir}: is the current directory or holds it; a build replaces its output "
                          "directory whole: choose a new path, e.g. -o corpora/NAME")
    for src in sources:
        if src is None:
            continue
        s = Path(src).resolve()
        if s == out or out in s.parents:
            raise CorpusError(f"-o {out_dir}: holds the build's input {src}; a build replaces its output directory "
                              "whole: choose another output path")
    if out.is_dir() and any(out.iterdir()):
        manifest = read_manifest(out)
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        if not (isinstance(fmt, str) and fmt.startswith("factscale-corpus/")):
            raise CorpusError(f"-o {out_dir}: exists and is not a corpus directory (no factscale manifest.json); "
                              "nothing was changed: choose a new or empty path")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in CORPUS_ENTRIES)
        if foreign:
            raise CorpusError(f"-o {out_dir}: this corpus directory also holds {', '.join(foreign[:5])}"
                              f"{' ...' if len(foreign) > 5 else ''}, which a rebuild would delete; nothing was "
                              "changed: move them out or choose another path")
    return out


@contextlib.contextmanager
def build_lock(out: Path, log=None):
    """The lock that serializes builds of ``out``: a file beside it, removed when released, so lock files do
    not pile up beside corpora (the OS releases the lock if the holder dies). A waiter checks, once it holds
    the lock, that the path still names the file it locked (the holder may have removed it meanwhile) and
    tries again otherwise. A build that has to wait says so, naming the holder's pid and start time."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    path = out.parent / f".{out.name}.lock"
    said = False
    while True:
        lock = open(path, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                log(f"waiting for the build of {out} held by {holder} to finish (lock {path})")
                said = True
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            same = os.fstat(lock.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        lock.close()  # we locked a file its holder removed on release: lock the current one
    try:
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {platform.node()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        lock.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding it: a waiter then sees its file is gone and retries
        lock.close()


@contextlib.contextmanager
def building(out_dir: str | Path, reuse_recipe: dict | None = None, sources=(), log=None):
    """Build a corpus into a private temporary directory and rename it into place on success.

    Readers see the old corpus or the new one, never a mix (a killed build leaves only a temp directory,
    removed by the next build). Concurrent builds of one target serialize on a lock beside it. With
    ``reuse_recipe``, a corpus already built (maybe meanwhile, by a concurrent build) from exactly that
    recipe is kept: the context yields None and nothing is built. The target is checked first
    (``check_target``): nothing but a corpus is ever replaced.
    """
    out = check_target(out_dir, sources)
    out.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(out, log):
        if not out.exists():  # killed between the two renames of a swap: the previous corpus is .old-*
            olds = sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime)
            if olds:
                os.replace(olds[-1], out)
        for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # a killed build's leftovers (we hold the lock)
        check_target(out_dir, sources)  # again under the lock: another build or a user may have written there
        existing = read_manifest(out)
        if reuse_recipe is not None and existing and existing.get("format") == CORPUS_FORMAT \
                and existing.get("recipe") == reuse_recipe:
            yield None
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            yield tmp
            fix_mode(tmp)  # mkdtemp made it 0700: a corpus is shared (the umask decides, as for any file)
            old = None
            if out.exists():
                old = out.parent / f".{out.name}.old-{os.getpid()}"
                os.replace(out, old)
            os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def build_corpus(raw: pl.DataFrame, out_dir: str | Path, *, recipe: dict | None = None, reuse: bool = False,
                 sources=(), bucket_facts: int | None = None, **kw) -> dict:
    """Run the rules into a private directory, rename it into place (see ``building``), return the manifest.

    ``recipe`` (what was asked for, e.g. a sweep's corpus_build) is stored in the manifest; with ``reuse``
    an existing corpus built from the same recipe is returned as it is. With ``bucket_facts`` the rules run
    bucket by bucket (``corpus.bounded``): the same corpus.
    """
    with building(out_dir, reuse_recipe=recipe if reuse else None, sources=sources) as tmp:
        if tmp is None:
            return read_manifest(out_dir)
        if bucket_facts is None:
            return build_into(raw, tmp, recipe=recipe, **kw)
        from factscale.corpus.bounded import build_bounded

        return build_bounded([raw], tmp, bucket_facts=bucket_facts, recipe=recipe, **kw)


def build_into(
    raw: pl.DataFrame,
    out_dir: str | Path,
    *,
    source_info: dict,
    counts: dict | None = None,
    options: dict | None = None,
    multi_value: str,
    ambiguous_keys: str,
    heldout_frac: float,
    vocab_size: int,
    seed: int,
    max_facts: int | None = None,
    copyable: str | None = None,
    entropy_bits: float | None = None,
    tokenizer_sample: int = TOKENIZER_SAMPLE,
    variants: dict | None = None,
    recipe: dict | None = None,
) -> dict:
    t0 = time.time()
    counts = dict(counts or {})
    counts["raw_facts"] = raw.height
    LOG.info(f"corpus: {raw.height:,} raw facts: applying the rules (dedupe, multi-value, ambiguous keys, "
             "copyable facts, split)")
    df = resolve(raw, multi_value, ambiguous_keys, counts)
    if copyable is not None:  # real sources (synthetic values are independent of their keys); before the cap
        df = copyable_facts(df, copyable, counts)
    if max_facts is not None and df.height > max_facts:
        counts["dropped_max_facts"] = df.height - max_facts
        df = df.head(max_facts)
    if df.height == 0:
        raise CorpusError(f"no facts left after filtering; counts: {json.dumps(counts)}")
    if variants and "compatibility" in variants and heldout_frac > 0:
        raise CorpusError("the compatibility variant pairs facts across keys: build it with heldout_frac=0")
    try:
        df = apply_variants(df, variants, seed, counts)
        junk = junk_options(variants)
        df = add_statistics(df)
        df = assign_split(df, heldout_frac, seed)
        if junk and junk[0] == "facts":
            df = junk_facts(df, junk[1], counts)
    except ValueError as e:
        raise CorpusError(str(e)) from None
    df = render(df)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # BPE merges from the training split only: a held-out key is spelled with pieces the model trained on,
    # never with tokens whose embeddings no training step touched (and no held-out text shapes the vocab)
    LOG.info(f"corpus: {df.height:,} facts rendered: training the BPE tokenizer ({vocab_size:,} tokens), tokenizing "
             f"({time.time() - t0:.1f} s so far)")
    texts = tokenizer_texts(df, int((df["split"] == "train").sum()), tokenizer_sample)
    tokenizer = train_tokenizer(texts, vocab_size, out / "tokenizer", domain_tag=junk is not None)
    df, n_bad = tokenize(df, tokenizer)
    counts["dropped_value_not_token_aligned"] = n_bad
    if df.height == 0:
        raise CorpusError("no facts left after tokenization")
    df = difficulty_columns(df)
    if junk and junk[0] == "random":  # token ids: drawn after the tokenizer exists, appended last
        lengths = df.filter(pl.col("split") == "train")["input_ids"].list.len().to_numpy()
        df = pl.concat([df, random_junk(lengths, junk[1], len(tokenizer), DOMAIN_TAG_ID + 1, tokenizer.bos_token_id,
                                        tokenizer.eos_token_id, seed)], how="diagonal_relaxed")
        counts["junk_pieces"] = junk[1]
    df = df.with_row_index("fact_id").with_columns(pl.col("fact_id").cast(pl.Int64))
    df = df.drop("template")
    writer, stats = FactsWriter(out / "facts.parquet"), Stats()  # out is this build's private directory
    writer.add(df)
    writer.close()
    stats.add(df)
    options = rule_options(options, multi_value=multi_value, ambiguous_keys=ambiguous_keys, heldout_frac=heldout_frac,
                           vocab_size=vocab_size, seed=seed, max_facts=max_facts, copyable=copyable,
                           tokenizer_sample=tokenizer_sample, variants=variants)
    return finish(out, stats.manifest(counts=counts, entropy_bits=entropy_bits, junk=junk is not None,
                                      vocab=len(tokenizer), recipe=recipe, source_info=source_info, options=options,
                                      tokenizer_texts=len(texts), t0=t0))


def rule_options(options: dict | None, *, variants: dict | None, **rules) -> dict:
    """The manifest's ``options``: the source's own, then the build rules (one layout for every build)."""
    return {**(options or {}), **rules, "variants": variants or {}}


def finish(out: Path, manifest: dict) -> dict:
    """Seal a built directory: the content hash goes into its manifest, written last (atomically)."""
    manifest["corpus_hash"] = content_hash(out)
    write_json_atomic(out / "manifest.json", manifest, indent=2)
    return manifest


def load_corpus(path: str | Path) -> tuple[pl.DataFrame, dict]:
    p = Path(path)
    corpus_hash_of(p)  # a clear error for a missing, foreign or outdated directory
    if not (p / "facts.parquet").exists():
        raise CorpusError(f"{p} is not a corpus directory (no facts.parquet); make one with `factscale corpus build`")
    try:
        facts = pl.read_parquet(p / "facts.parquet")
    except (pl.exceptions.PolarsError, OSError) as e:
        raise CorpusError(f"{p / 'facts.parquet'}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                          "rebuild the corpus with `factscale corpus build`") from None
    return facts, json.loads((p / "manifest.json").read_text())


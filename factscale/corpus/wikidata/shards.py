"""Sharded dump builds: parse shards of the input as a submitit job array (SLURM, local or in-process), merge.

A shard is a byte range of an uncompressed dump file, starting and ending at line boundaries
(``dumpio.range_lines``: no pass over the file is needed to find them); a range of the uncompressed content
of a ``.bz2`` file, read by the same line rule after seeking to the bz2 block before it through a block index
(``dumpio.bz2_block_index``: built once by the planner, which decompresses the file once on all cores, and
saved in the build's private directory, so no shard decompresses from the file's start); or a whole file:
a ``.gz`` stream cannot be entered in the middle, and a ``.bz2`` file is whole when indexed_bzip2 is missing
or its stream does not decompress whole (``plan_shards`` says so in one line).

Each shard job runs the local build's unit of work (``wikidata.parse_chunks``, what ``--workers``
processes run) over its lines and writes what those workers return - facts and labels as parquet parts of
bounded size (``labels.Spill``), counts, the first errors - and its line count to ``shard-NNNNN/`` in the
build's private directory (``build.building``), by renaming a finished directory into place: a shard
there is complete, a finished shard is never parsed again (a requeued job that finds it returns at once),
and a failed or requeued shard reruns alone.

The merge feeds the shards' parts, in input order whatever order they finished in, to the same
main-process code as a local build (``wikidata.Pass1`` and ``raw_from_passes``, which resolve labels on
disk: ``labels.resolve``), so the result is the local build's: the same facts.parquet, the same corpus
hash, the same counts.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import polars as pl
import submitit

from factscale.cluster import SlurmResources, executor
from factscale.corpus.build import build_into, building, check_target, read_manifest
from factscale.corpus.wikidata.dump import MAX_ERRORS_KEPT, DumpOptions, Pass1, parse_chunks
from factscale.corpus.wikidata.dumpio import bz2_block_index, bz2_range_lines, open_dump, range_lines
from factscale.corpus.wikidata.labels import BATCH_ROWS, BUCKET_ROWS, Spill
from factscale.corpus.wikidata.raw import raw_from_passes, resolved_parts
from factscale.errors import CorpusError

COMPRESSED = (".bz2", ".gz")


def plan_shards(paths, shards: int | None = None, log=print, threads: int | None = None) -> list[dict]:
    """The shards of ``paths``: one per file, and the rest of ``shards`` (default: one per file) shared by the
    files that can be split - uncompressed ones, and .bz2 ones through a block index (``dumpio.bz2_block_index``,
    built here on ``threads`` cores) - in proportion to their uncompressed size, each cut into equal byte
    ranges of its uncompressed content. A .gz file is one shard; so is a .bz2 file that cannot be indexed
    (indexed_bzip2 missing, a broken stream), which is said in one line through ``log``."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise CorpusError(f"dump file not found: {p}" if not p.exists() else f"{p} is not a file")
    shards = len(paths) if shards is None else shards
    if shards < len(paths):
        raise CorpusError(f"--shards {shards}: each of the {len(paths)} dump files is at least one shard; "
                          f"give --shards >= {len(paths)}")
    sizes, index, fell_back = {}, {}, False
    for i, p in enumerate(paths):
        if p.suffix == ".bz2" and shards > len(paths):
            t = time.time()
            offsets, why = bz2_block_index(p, threads or os.cpu_count() or 1)
            if offsets is not None:
                log(f"{p.name}: {len(offsets) - 1:,} bz2 blocks, {offsets[-1] / 1e6:,.0f} MB uncompressed, "
                    f"indexed in {time.time() - t:.1f} s")
            else:
                log(f"{p.name} is one shard, not split at its bz2 blocks: {why}")
                fell_back = True
                continue
            index[i], sizes[i] = offsets, max(offsets[-1], 1)
        elif p.suffix not in COMPRESSED:
            sizes[i] = max(p.stat().st_size, 1)
    if shards > len(paths) and not sizes and not fell_back:
        name = paths[0].name
        raise CorpusError(f"--shards {shards}: {name} is gzip-compressed and a .gz file is one shard (only "
                          f"{len(paths)} here); decompress it (newline-delimited .json splits at line boundaries), "
                          f"recompress it with bzip2, or split it into files, e.g. `zcat {name} | split -l 1000000 -d "
                          f"--additional-suffix=.json - part-`")
    k = {i: 1 for i in sizes}
    heap = [(-sizes[i], i) for i in sizes]  # the largest bytes-per-shard file gets the next shard
    heapq.heapify(heap)
    for _ in range(shards - len(paths) if sizes else 0):
        _, i = heapq.heappop(heap)
        k[i] += 1
        heapq.heappush(heap, (-sizes[i] / k[i], i))
    out = []
    for f, p in enumerate(paths):
        if f not in k or (f in index and k[f] == 1):
            out.append({"file": f, "path": str(p), "start": 0, "end": None})
            continue
        size = index[f][-1] if f in index else p.stat().st_size
        cuts = [size * j // k[f] for j in range(k[f] + 1)]
        extra = {"bz2": True, "offsets": index[f]} if f in index else {}
        out += [{"file": f, "path": str(p), "start": a, "end": b, **extra} for a, b in zip(cuts, cuts[1:])]
    for n, s in enumerate(out):
        s["index"] = n
    return out


def save_indexes(plan: list[dict], shard_dir) -> None:
    """Move the plan's bz2 block indexes into files in ``shard_dir`` (one per file), so that each job is sent
    the path, not the index (a full dump's has ~2M blocks)."""
    saved = {}
    for s in plan:
        if "offsets" in s:
            offsets = s.pop("offsets")
            if s["file"] not in saved:
                saved[s["file"]] = Path(shard_dir) / f"bz2-index-{s['file']:05d}.parquet"
                pl.DataFrame({"bits": list(offsets), "bytes": list(offsets.values())},
                             schema={"bits": pl.Int64, "bytes": pl.Int64}).write_parquet(saved[s["file"]])
            s["index_path"] = str(saved[s["file"]])


def _offsets(s: dict) -> dict:
    if "offsets" in s:
        return s["offsets"]
    return dict(pl.read_parquet(s["index_path"]).iter_rows())


def describe(s: dict) -> str:
    name = Path(s["path"]).name
    if s["end"] is None:
        return f"{name}, whole file"
    return f"{name}, {'uncompressed ' if s.get('bz2') else ''}bytes {s['start']}-{s['end']}"


def _shard_path(shard_dir, s: dict) -> Path:
    return Path(shard_dir) / f"shard-{s['index']:05d}"


HOLD_ENV = "FACTSCALE_SHARD_HOLD"  # tests: a shard job says it started, then waits for this file (an event)


def _hold() -> None:
    hold = os.environ.get(HOLD_ENV)
    if hold:
        Path(f"{hold}.pid-{os.getpid()}").write_text("")
        while not Path(hold).exists():
            time.sleep(0.05)


def parse_shard(s: dict, opts: DumpOptions, shard_dir, processes: int = 1, batch_rows: int = BATCH_ROWS) -> dict:
    """Parse one shard with ``processes`` workers into ``shard-NNNNN/`` (skipped if it is already there): its
    facts and labels as parquet parts of at most ``batch_rows`` rows (``labels.Spill``), so a shard's memory
    is one batch however large its range."""
    done = _shard_path(shard_dir, s)
    if done.is_dir():
        return {"index": s["index"], "reused": True}
    _hold()
    t0 = time.time()
    part = Path(shard_dir) / f".{done.name}.part-{uuid.uuid4().hex[:8]}"
    spill, counts, errors, n = Spill(part, batch_rows), Counter(), [], 0

    def counted(lines):
        nonlocal n
        for line in lines:
            n += 1
            yield line

    def consume(lines):
        with contextlib.closing(parse_chunks(counted(lines), opts, processes)) as chunks:  # workers stop on error
            for fs, labs, c, errs in chunks:
                spill.add("facts", fs, s["file"])
                spill.add("labels", labs, s["file"])
                counts.update(c)
                errors.extend(errs[: max(0, MAX_ERRORS_KEPT - len(errors))])

    broken = []
    if s["end"] is None:  # a compressed (or whole) file: decompressed on all the job's cores
        with open_dump(s["path"], processes) as reader:
            consume(reader.lines())
        broken = reader.broken
    elif s.get("bz2"):  # a range of a .bz2 file's content, entered at the block before it
        consume(bz2_range_lines(s["path"], s["start"], s["end"], _offsets(s), broken, processes))
    else:
        consume(range_lines(s["path"], s["start"], s["end"]))
    spill.flush()
    shard = {k: v for k, v in s.items() if k != "offsets"}  # the index stays in its file
    meta = {"shard": shard, "n_lines": n, "counts": dict(counts), "errors": errors, "broken": broken,
            "seconds": round(time.time() - t0, 3)}
    (part / "meta.json").write_text(json.dumps(meta))
    try:
        os.rename(part, done)  # atomic: the shard directory is complete or absent
    except OSError:  # a duplicate attempt finished first: its result is the same
        shutil.rmtree(part, ignore_errors=True)
    return {"index": s["index"], "entities": counts["entities_seen"], "facts": spill.rows["facts"],
            "seconds": meta["seconds"]}


class ShardJob(submitit.helpers.Checkpointable):
    """The submitted callable. ``checkpoint()`` (inherited) resubmits it on a time limit or preemption."""

    def __call__(self, s: dict, opts: DumpOptions, shard_dir: str, processes: int) -> dict:
        return parse_shard(s, opts, shard_dir, processes)


def merge(plan: list[dict], opts: DumpOptions, shard_dir, label_files=(), templates: dict | None = None,
          bucket_rows: int = BUCKET_ROWS, consume=None):
    """Finished shards -> (raw facts frame, counts, errors), exactly as ``wikidata.dump_to_raw`` makes them.

    Shards are read in plan order (the order of the input), never in the order they finished, part by part
    into the local build's ``Pass1`` and resolved on disk like it (``labels.resolve``)."""
    by_file: dict[int, list[dict]] = {}
    for s in sorted(plan, key=lambda s: s["index"]):
        by_file.setdefault(s["file"], []).append(s)
    with tempfile.TemporaryDirectory(prefix=".merge-", dir=shard_dir) as work:
        spill, passes = Spill(work, bucket_rows=bucket_rows), []
        for f in sorted(by_file):
            acc, offset, broken = Pass1(by_file[f][0]["path"], opts, spill, f), 0, []
            for s in by_file[f]:
                if broken:  # the local build stops reading a file where its stream broke; so does the merge
                    break
                d = _shard_path(shard_dir, s)
                meta = json.loads((d / "meta.json").read_text())
                acc.add([], [], Counter(meta["counts"]), meta["errors"], line_offset=offset)
                for kind in ("facts", "labels"):
                    for part in sorted((d / kind).glob("part-*.parquet")):
                        rows = pl.read_parquet(part).drop("file")
                        acc.add(rows, []) if kind == "facts" else acc.add([], rows)
                broken += [(offset + b[0], b[1]) for b in meta["broken"]]  # a shard counts lines from its start
                offset += meta["n_lines"]
            passes.append(acc.finish(broken))
        if consume is not None:  # a bucketed build reads the kept parts while they exist (``dump_to_raw``)
            return consume(*resolved_parts(passes, opts, spill, label_files, templates))
        return raw_from_passes(passes, opts, spill, label_files, templates)


def _failure_line(exc: BaseException) -> str:
    """The raised error's own line from submitit's 'failed during processing with trace' message."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    causes = [x for x in lines if ": " in x and x.split(":", 1)[0].replace(".", "").isidentifier()
              and x.split(":", 1)[0].endswith(("Error", "Exception", "Interrupt", "Exit"))]
    if not causes:
        return (lines or [type(exc).__name__])[-1][:300]
    name, msg = causes[-1].split(":", 1)
    return f"{name.rsplit('.', 1)[-1]}:{msg}"[:300]  # factscale.corpus.build.CorpusError -> CorpusError


def check_fits(res: SlurmResources) -> None:
    """A request that no node of the partition can meet pends forever (reason PartitionConfig): refuse it
    before anything is submitted. Skipped where sinfo does not answer (sbatch then has the last word)."""
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P %c %m"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return
    rows = [x.split() for x in r.stdout.splitlines() if len(x.split()) == 3]
    rows = [(p, c, m) for p, c, m in rows if (p.rstrip("*") == res.partition if res.partition else p.endswith("*"))]
    if r.returncode != 0 or not rows:
        return
    where = f"partition {rows[0][0].rstrip('*')}"
    cpus = max(int(c.rstrip("+")) for _, c, _ in rows)
    mem_gb = max(int(m.rstrip("+")) for _, _, m in rows) / 1024
    if res.cpus_per_task > cpus:
        raise CorpusError(f"--shard-cpus {res.cpus_per_task}: the largest node of {where} has {cpus} CPUs (the job would "
                          f"never start); give --shard-cpus <= {cpus} or another --shard-partition")
    if res.mem_gb > mem_gb:
        raise CorpusError(f"--shard-mem-gb {res.mem_gb:g}: the largest node of {where} has {mem_gb:.1f} GB "
                          f"(the job would never start); give less or another --shard-partition")


def run_shards(plan: list[dict], opts: DumpOptions, shard_dir, cluster: str, res: SlurmResources, folder,
               log=print) -> None:
    """Submit every unfinished shard and wait; the first failed shard cancels the rest and raises one line."""
    todo = [s for s in plan if not _shard_path(shard_dir, s).is_dir()]
    if not todo:
        return
    args = [(s, opts, str(shard_dir), res.cpus_per_task) for s in todo]
    if cluster == "slurm":
        ex = executor("slurm", folder, slurm=res, job_name="factscale-corpus")
        try:
            with ex.batch():
                jobs = [ex.submit(ShardJob(), *a) for a in args]
        except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as e:
            said = [x.strip() for x in str(e).splitlines() if "error:" in x] or [_failure_line(e)]
            raise CorpusError(f"--cluster slurm: sbatch refused the shard jobs: {said[0][:300]}") from None
        log(f"submitted array {jobs[0].job_id.split('_')[0]} ({len(jobs)} shards); logs in {folder}")
    elif cluster == "local":
        ex = executor("local", folder, timeout_min=res.time_min)
        jobs = [ex.submit(ShardJob(), *a) for a in args]
        log(f"started {len(jobs)} shard processes on this machine; logs in {folder}")
    else:
        ex = executor("debug", folder)
        jobs = [ex.submit(ShardJob(), *a) for a in args]
    shard_of = {id(j): s for j, s in zip(jobs, todo)}
    try:
        finished = jobs if cluster == "debug" else submitit.helpers.as_completed(jobs, poll_frequency=1)
        for job in finished:
            s = shard_of[id(job)]
            exc = job.exception()  # waits; never the DebugExecutor's post-mortem debugger
            if exc is not None:
                raise CorpusError(f"shard {s['index'] + 1}/{len(plan)} ({describe(s)}) failed: {_failure_line(exc)}; "
                                  f"log: {job.paths.stderr}")
            r = job.result()
            if not r.get("reused"):
                log(f"  shard {s['index'] + 1}/{len(plan)} done: {r['entities']:,} entities, {r['facts']:,} facts, "
                    f"{r['seconds']:.1f} s ({describe(s)})")
    finally:
        for j in jobs:
            if cluster != "debug" and not j.done():
                j.cancel(check=False)


def build_sharded(spec, out, *, reuse: bool = False, log=print) -> dict:
    """A dump recipe with ``sharding`` (``--cluster C --shards N``, or a sweep's ``corpus_build``): the local
    build's corpus, parsed as shards. Every option is checked before anything is created; the corpus appears
    atomically (``building``); with ``reuse``, a corpus there built from the same recipe is kept."""
    from factscale.corpus.sources import bounded_dump, dump_source, rules
    from factscale.corpus.spec import dump_options
    from factscale.corpus.tables.triples import templates_for

    sh = spec.sharding
    cluster, shards = sh.cluster or "local", sh.shards
    if cluster == "slurm" and not shutil.which("sbatch"):
        raise CorpusError("--cluster slurm: sbatch not found on this machine; run on a SLURM login node, or use "
                          "--cluster local")
    res = sh.resources()
    if cluster == "slurm":
        check_fits(res)
    check_target(out, spec.inputs())  # before indexing or submitting anything
    plan = plan_shards(spec.dump, shards, log, spec.workers)
    opts = dump_options(spec)
    templates = templates_for([], spec.templates)[0] if spec.templates else {}
    outp = Path(out).resolve()
    folder = outp.parent / f".{outp.name}.submitit" / time.strftime("%Y%m%d-%H%M%S")
    with building(out, reuse_recipe=spec.recipe() if reuse else None, sources=spec.inputs()) as tmp:
        if tmp is None:
            return read_manifest(out)
        shard_dir = tmp / "_shards"
        shard_dir.mkdir()
        save_indexes(plan, shard_dir)
        run_shards(plan, opts, shard_dir, cluster, res, folder, log)
        t = time.time()
        kw = rules(dict(multi_value=spec.multi_value, ambiguous_keys=spec.ambiguous_keys, seed=spec.seed,
                        heldout_frac=spec.heldout_frac, vocab_size=spec.vocab_size, copyable=spec.copyable,
                        tokenizer_sample=spec.tokenizer_sample), real=True)
        if spec.bucket_facts is not None:
            source = (spec.dump, opts, spec.labels, spec.templates)
            m = merge(plan, opts, shard_dir, spec.labels, templates, consume=lambda *a: bounded_dump(
                *a, bucket_facts=spec.bucket_facts, out=tmp, source=source, recipe=spec.recipe(), **kw))
            log(f"merged {len(plan)} shards and built bucket by bucket in {time.time() - t:.1f} s")
        else:
            raw, counts, errors = merge(plan, opts, shard_dir, spec.labels, templates)
            log(f"merged {len(plan)} shards in {time.time() - t:.1f} s: {raw.height:,} raw facts")
            shutil.rmtree(shard_dir)  # before the build: the shards' disk is free for it
            info, options = dump_source(spec.dump, opts, spec.labels, spec.templates, errors)
            m = build_into(raw, tmp, source_info=info, counts=counts, options=options, recipe=spec.recipe(),
                           variants=spec.variants or None, **kw)
        shutil.rmtree(shard_dir, ignore_errors=True)  # the corpus directory holds only the corpus
    shutil.rmtree(folder, ignore_errors=True)  # a failed build keeps its logs (the error names them)
    if folder.parent.is_dir() and not any(folder.parent.iterdir()):
        folder.parent.rmdir()
    return m

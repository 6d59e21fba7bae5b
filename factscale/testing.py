"""Test oracles and test helpers: the obvious per-fact implementations the fast paths are proven against.

No library module imports this one (an import contract in pyproject.toml checks it): tests prove the
vectorized packer (``training.data.Packer``) and the batched prober (``probing.engine.probe_batched``)
equal to these, and ``benchmarks/bench_data.py`` times them as the baseline. They are the data path as it
was before it became columnar: one Python object per fact. ``probe_generate`` decodes with ``generate()``
fact by fact; ``stream_dump`` reads pass 1 of a dump back into memory; ``run_dir`` names a config's run
directory.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100


def pack_reference(seqs: list[np.ndarray], value_starts: np.ndarray, order: np.ndarray, seq_len: int, pad_id: int,
                   value_only: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Greedy packing of facts (in ``order``) into windows. Returns (input_ids, labels, real tokens)."""
    rows_ids, rows_lab = [], []
    cur_ids: list[np.ndarray] = []
    cur_lab: list[np.ndarray] = []
    used = 0

    def flush():
        ids = np.full(seq_len, pad_id, dtype=np.int64)
        lab = np.full(seq_len, IGNORE, dtype=np.int64)
        if cur_ids:
            a = np.concatenate(cur_ids)
            ids[: len(a)] = a
            lab[: len(a)] = np.concatenate(cur_lab)
        rows_ids.append(ids)
        rows_lab.append(lab)

    real = 0
    for i in order:
        s = seqs[i]
        if used + len(s) > seq_len:
            flush()
            cur_ids, cur_lab, used = [], [], 0
        cur_ids.append(s)
        if value_only:
            lab = np.full(len(s), IGNORE, dtype=np.int64)
            lab[value_starts[i]:] = s[value_starts[i]:]
        else:
            lab = s.copy()
            lab[0] = IGNORE
        cur_lab.append(lab)
        used += len(s)
        real += len(s)
    if cur_ids:
        flush()
    return torch.from_numpy(np.stack(rows_ids)), torch.from_numpy(np.stack(rows_lab)), real


def probe_prep_reference(input_ids: list[list[int]], pad_id: int, batch_size: int):
    """Per-row padding of every batch, as the probe did it: yields (fact indices, padded ids, lengths)."""
    lengths = np.array([len(x) for x in input_ids])
    order = np.argsort(lengths, kind="stable")
    for b in range(0, len(input_ids), batch_size):
        idx = order[b:b + batch_size]
        T = int(lengths[idx].max())
        ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : lengths[i]] = torch.as_tensor(input_ids[i])
        yield idx, ids, lengths[idx]


@torch.no_grad()
def probe_reference(model, input_ids: list[list[int]], value_starts, pad_id: int,
                    batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The probe on full logits, per-row padded: (exact match of value + <eos>, code length in bits)."""
    was_training = model.training
    model.eval()
    n = len(input_ids)
    correct, bits = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.float64)
    for idx, ids, ln in probe_prep_reference(input_ids, pad_id, batch_size):
        T = ids.shape[1]
        pos = torch.arange(T - 1)
        vs = torch.as_tensor(np.asarray(value_starts)[idx])
        ln = torch.as_tensor(ln)
        mask = (pos[None, :] + 1 >= vs[:, None]) & (pos[None, :] + 1 < ln[:, None])
        logits = model(input_ids=ids).logits[:, :-1].float()
        targets = ids[:, 1:]
        hit = (logits.argmax(-1) == targets) | ~mask
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * mask
        correct[idx] = hit.all(-1).numpy()
        bits[idx] = (nll.sum(-1) / math.log(2)).double().numpy()
    model.train(was_training)
    return correct, bits


def tokenize_reference(facts, tokenizer):
    """Every fact encoded three times (text, prompt, " " + value): aligned iff tokens(text) ==
    tokens(prompt) + tokens(" " + value). Returns (input_ids, value_start, aligned) as lists."""
    tok = tokenizer.backend_tokenizer
    full = [e.ids for e in tok.encode_batch(facts["text"].to_list(), add_special_tokens=False)]
    pre = [e.ids for e in tok.encode_batch(facts["prompt"].to_list(), add_special_tokens=False)]
    val = [e.ids for e in tok.encode_batch((" " + facts["value"]).to_list(), add_special_tokens=False)]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ok, ids, starts = [], [], []
    for f, p, v in zip(full, pre, val):
        ok.append(f == p + v and len(v) > 0)
        ids.append([bos] + f + [eos])
        starts.append(1 + len(p))
    return ids, starts, ok


def probe_generate(model, input_ids: list[list[int]], value_starts, pad_id: int) -> np.ndarray:
    """Reference: ``model.generate(do_sample=False)`` per fact; exact match of value + <eos>."""
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros(len(input_ids), dtype=bool)
    for i, (ids, vs) in enumerate(zip(input_ids, value_starts)):
        prompt = torch.tensor([ids[:vs]], device=device)
        gold = list(ids[vs:])
        gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=len(gold),
                             do_sample=False, pad_token_id=pad_id)
        out[i] = gen[0, vs:].tolist() == gold
    return out


def stream_dump(path, opts, workers: int = 1, chunk_lines: int = 256, progress: bool = False,
                threads: int | None = None):
    """Pass 1 over one file read back into memory: (fact tuples, (id, label) rows, counts, errors). For
    inspection and tests; builds use ``pass1`` and resolve on disk (``dump_to_raw``)."""
    import tempfile

    import polars as pl

    from factscale.corpus.wikidata.dump import pass1
    from factscale.corpus.wikidata.labels import Spill

    with tempfile.TemporaryDirectory(prefix="factscale-pass1-") as d:
        spill = Spill(d)
        counts, errors = pass1(path, opts, spill, 0, workers, chunk_lines, progress, threads)
        facts, labels = ([] if not spill.files(k) else pl.read_parquet(spill.files(k)).drop("file").rows()
                         for k in ("facts", "labels"))
    return facts, labels, counts, errors


def run_dir(cfg):
    from factscale.training.rundir import RunDir

    return RunDir(cfg).path

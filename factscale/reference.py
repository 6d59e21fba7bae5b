"""The obvious per-fact implementations, kept as references for the fast paths.

Nothing in training or probing calls these: tests prove the vectorized packer (``data.pack``) and the
batched probe (``probes.probe_batched``) equal to them, and ``benchmarks/bench_data.py`` times them as
the baseline. They are the data path as it was before it became columnar: one Python object per fact.
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

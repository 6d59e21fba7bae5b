"""Memorization, capacity and bits probes, as one batched teacher-forced forward pass.

Memorized (Lu et al.'s exact match): greedy decoding from ``<bos> prompt`` yields exactly the value
tokens and then ``<eos>``. Greedy decoding reproduces a sequence iff the argmax at every position of it,
given the gold prefix, is the gold token - so one teacher-forced forward pass decides it for a whole
batch (``probe_batched``); ``probe_generate`` is the slow reference used to prove the equivalence.

Bits: code length = sum over value tokens (and <eos>) of -log2 p(token); memorized bits per fact =
max(0, prior_bits - code length), prior_bits being the value's entropy (synthetic) or its surprisal
under the relation's empirical value distribution (real corpora) (Allen-Zhu & Li's measure).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

import lightning as L


@torch.no_grad()
def probe_batched(model, input_ids: list[list[int]], value_starts, pad_id: int, batch_size: int = 512,
                  device=None) -> tuple[np.ndarray, np.ndarray]:
    """Per fact: (exact match of value + <eos> under greedy decoding, code length in bits)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = len(input_ids)
    correct = np.zeros(n, dtype=bool)
    bits = np.zeros(n, dtype=np.float64)
    lengths = np.array([len(x) for x in input_ids])
    order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
    for b in range(0, n, batch_size):
        idx = order[b:b + batch_size]
        T = int(lengths[idx].max())
        ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : lengths[i]] = torch.as_tensor(input_ids[i])
        ids = ids.to(device)
        pos = torch.arange(T - 1, device=device)
        vs = torch.as_tensor(np.asarray(value_starts)[idx], device=device)
        ln = torch.as_tensor(lengths[idx], device=device)
        # target position t (predicted from logits at t-1) is in the value span [value_start, length)
        mask = (pos[None, :] + 1 >= vs[:, None]) & (pos[None, :] + 1 < ln[:, None])
        logits = model(input_ids=ids).logits[:, :-1].float()
        targets = ids[:, 1:]
        hit = (logits.argmax(-1) == targets) | ~mask
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * mask
        correct[idx] = hit.all(-1).cpu().numpy()
        bits[idx] = (nll.sum(-1) / math.log(2)).double().cpu().numpy()
    model.train(was_training)
    return correct, bits


@torch.no_grad()
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


def fact_table(facts: pl.DataFrame, correct: np.ndarray, bits: np.ndarray) -> pl.DataFrame:
    return facts.with_columns(
        pl.Series("correct", correct),
        pl.Series("code_bits", bits),
    ).with_columns(memorized_bits=(pl.col("prior_bits") - pl.col("code_bits")).clip(lower_bound=0.0))


def summarize(table: pl.DataFrame, by: str | None, non_embedding: int) -> pl.DataFrame:
    """Metrics per group: n, MR, capacity (facts), bits, value loss (nats per value token)."""
    aggs = [
        pl.len().alias("n_facts"),
        pl.col("correct").mean().alias("mr"),
        pl.col("correct").sum().cast(pl.Int64).alias("capacity"),
        pl.col("code_bits").mean().alias("code_bits_mean"),
        (pl.col("code_bits").sum() * math.log(2) / pl.col("n_value_tokens").sum()).alias("value_loss"),
        pl.col("memorized_bits").sum().alias("capacity_bits"),
        pl.col("prior_bits").sum().alias("prior_bits"),
    ]
    if by is None:
        out = table.select(aggs).with_columns(group_by=pl.lit("all"), group=pl.lit("all"))
    else:
        out = (table.group_by(by).agg(aggs).with_columns(group_by=pl.lit(by), group=pl.col(by).cast(pl.String))
               .drop(by).sort("group"))
    return out.with_columns(bits_per_param=pl.col("capacity_bits") / non_embedding)


def frequency_buckets(values: pl.Series, n: int = 4) -> pl.Series:
    """Quantile buckets q1 (rarest) .. qn of a frequency signal; null where the signal is missing."""
    if values.null_count() == len(values):
        return pl.Series("freq_bucket", [None] * len(values), dtype=pl.String)
    ranks = values.rank("average") / values.drop_nulls().len()
    b = (ranks * n).ceil().clip(1, n).cast(pl.Int64)
    return pl.Series("freq_bucket", ["q" + str(x) if x is not None else None for x in b.to_list()], dtype=pl.String)


class ProbeCallback(L.Callback):
    """Probes the model every K epochs; rows survive checkpoint/resume through the callback state."""

    def __init__(self, sets: dict[str, pl.DataFrame], every: int, batch_size: int, pad_id: int,
                 non_embedding: int, group_columns: list[str]):
        self.sets = sets
        self.every = every
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.non_embedding = non_embedding
        self.group_columns = group_columns
        self.rows: list[dict] = []
        self.last_tables: dict[str, pl.DataFrame] = {}

    def probe(self, model, epoch: int, step: int, tokens_seen: int) -> list[dict]:
        rows = []
        for split, facts in self.sets.items():
            if facts.height == 0:
                continue
            correct, bits = probe_batched(model, facts["input_ids"].to_list(), facts["value_start"].to_numpy(),
                                          self.pad_id, self.batch_size)
            table = fact_table(facts, correct, bits)
            self.last_tables[split] = table
            for by in [None, "relation", *self.group_columns]:
                if by is not None and (by not in table.columns or table[by].null_count() == table.height):
                    continue
                for r in summarize(table, by, self.non_embedding).iter_rows(named=True):
                    rows.append({"epoch": epoch, "step": step, "tokens_seen": tokens_seen, "split": split, **r})
        return rows

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch + 1  # epochs completed
        if epoch % self.every and epoch != trainer.max_epochs:
            return
        rows = self.probe(pl_module.model, epoch, trainer.global_step, int(pl_module.tokens_seen.item()))
        self.rows.extend(rows)
        for r in rows:
            if r["group_by"] == "all":
                pl_module.log(f"probe/{r['split']}_mr", r["mr"], on_epoch=True)

    def state_dict(self):
        return {"rows": self.rows}

    def load_state_dict(self, state):
        self.rows = list(state.get("rows", []))

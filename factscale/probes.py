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


class ProbeTokens:
    """A probe set's token ids, prepared once per set (not per probe): flat ids + offsets, facts sorted
    by length so a batch needs little padding. Padding, masks and per-fact sums are then tensor ops."""

    def __init__(self, input_ids, value_starts):
        from factscale.data import flat_tokens

        col = input_ids if isinstance(input_ids, pl.Series) else pl.Series(input_ids, dtype=pl.List(pl.Int32))
        flat, offsets = flat_tokens(col)
        lengths = torch.from_numpy(np.diff(offsets))
        self.n = len(lengths)
        self.order = torch.argsort(lengths, stable=True)  # similar lengths together: little padding
        self.flat = torch.from_numpy(flat)
        self.starts = torch.from_numpy(offsets[:-1])[self.order]
        self.lengths = lengths[self.order]
        self.value_starts = torch.as_tensor(np.asarray(value_starts, dtype=np.int64))[self.order]

    def batch(self, b: int, size: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(padded ids, lengths, value starts) of sorted facts [b, b + size)."""
        st, ln = self.starts[b:b + size], self.lengths[b:b + size]
        ar = torch.arange(int(ln.max()))
        pos = (st[:, None] + ar).clamp_(max=len(self.flat) - 1)
        ids = torch.where(ar < ln[:, None], self.flat[pos], pad_id).long()
        return ids, ln, self.value_starts[b:b + size]


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@torch.no_grad()
def probe_batched(model, input_ids, value_starts=None, pad_id: int = 0, batch_size: int = 512,
                  device=None) -> tuple[np.ndarray, np.ndarray]:
    """Per fact: (exact match of value + <eos> under greedy decoding, code length in bits).

    ``input_ids``: a ``ProbeTokens`` (prepared once; ``value_starts`` unused), a list column or lists.
    The output head runs only at the scored (value) positions, and under DDP each rank probes every
    world-th batch and the results are summed across ranks: every rank returns all facts' results.
    """
    tokens = input_ids if isinstance(input_ids, ProbeTokens) else ProbeTokens(input_ids, value_starts)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    rank, world = _rank_world()
    head = model.get_output_embeddings()
    wrong = torch.zeros(tokens.n, dtype=torch.long, device=device)
    nats = torch.zeros(tokens.n, dtype=torch.float64, device=device)
    for k, b in enumerate(range(0, tokens.n, batch_size)):
        if k % world != rank:
            continue
        ids, ln, vs = (t.to(device, non_blocking=True) for t in tokens.batch(b, batch_size, pad_id))
        pos = torch.arange(1, ids.shape[1], device=device)
        # target position t (predicted from the state at t-1) is in the value span [value_start, length)
        mask = (pos >= vs[:, None]) & (pos < ln[:, None])
        rows, cols = mask.nonzero(as_tuple=True)
        hidden = model.base_model(input_ids=ids).last_hidden_state[:, :-1][rows, cols]
        logits = head(hidden).float()
        targets = ids[:, 1:][rows, cols]
        fact = rows + b
        wrong.index_add_(0, fact, (logits.argmax(-1) != targets).long())
        nats.index_add_(0, fact, F.cross_entropy(logits, targets, reduction="none").double())
    if world > 1:  # each fact was probed on exactly one rank; zeros elsewhere
        torch.distributed.all_reduce(wrong)
        torch.distributed.all_reduce(nats)
    model.train(was_training)
    correct = np.zeros(tokens.n, dtype=bool)
    bits = np.zeros(tokens.n, dtype=np.float64)
    order = tokens.order.numpy()
    correct[order] = (wrong == 0).cpu().numpy()
    bits[order] = (nats / math.log(2)).cpu().numpy()
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
        self.tokens: dict[str, ProbeTokens] = {}

    def probe(self, model, epoch: int, step: int, tokens_seen: int) -> list[dict]:
        rows = []
        for split, facts in self.sets.items():
            if facts.height == 0:
                continue
            if split not in self.tokens:  # token arrays prepared once per probe set, not every probe
                self.tokens[split] = ProbeTokens(facts["input_ids"], facts["value_start"].to_numpy())
            correct, bits = probe_batched(model, self.tokens[split], None, self.pad_id, self.batch_size)
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

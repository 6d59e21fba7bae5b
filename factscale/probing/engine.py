"""The prober: one batched teacher-forced forward pass decides exact match and code length for a whole batch.

Memorized (Lu et al.'s exact match): greedy decoding from ``<bos> prompt`` yields exactly the value
tokens and then ``<eos>``. Greedy decoding reproduces a sequence iff the argmax at every position of it,
given the gold prefix, is the gold token - so one teacher-forced forward pass decides it for a whole
batch (``probe_batched``); ``factscale.testing.probe_generate`` is the slow reference used to prove the
equivalence. ``Prober`` holds a run's probe sets (prepared once) and turns a model into result rows;
training calls it from a Lightning callback, ``analysis.quantize`` on saved models.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from factscale.probing.keyblind import keyblind_inputs
from factscale.probing.measures import fact_table, summarize, with_prior


class ProbeTokens:
    """A probe set's token ids, prepared once per set (not per probe): flat ids + offsets, facts sorted
    by length so a batch needs little padding. Padding, masks and per-fact sums are then tensor ops."""

    def __init__(self, input_ids, value_starts):
        from factscale.corpus.render import flat_tokens

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
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"probe batch_size must be a positive integer, got {batch_size!r}")
    wrong = torch.zeros(tokens.n, dtype=torch.long, device=device)
    nats = torch.zeros(tokens.n, dtype=torch.float64, device=device)
    scored = torch.zeros(tokens.n, dtype=torch.long, device=device)  # value positions scored, per fact
    for k, b in enumerate(range(0, tokens.n, batch_size)):
        if k % world != rank:
            continue
        ids, ln, vs = (t.to(device, non_blocking=True) for t in tokens.batch(b, batch_size, pad_id))
        pos = torch.arange(1, ids.shape[1], device=device)
        # target position t (predicted from the state at t-1) is in the value span [value_start, length)
        mask = (pos >= vs[:, None]) & (pos < ln[:, None])
        rows, cols = mask.nonzero(as_tuple=True)
        hidden = model.base_model(input_ids=ids).last_hidden_state[:, :-1][rows, cols]
        # the head in fp32 whatever the weights' dtype (bf16-true runs): code lengths are not bf16-rounded
        with torch.autocast(device_type=hidden.device.type, enabled=False):  # not re-cast under autocast
            logits = F.linear(hidden.float(), head.weight.float(), None if head.bias is None else head.bias.float())
        targets = ids[:, 1:][rows, cols]
        fact = rows + b
        wrong.index_add_(0, fact, (logits.argmax(-1) != targets).long())
        nats.index_add_(0, fact, F.cross_entropy(logits, targets, reduction="none").double())
        scored.index_add_(0, fact, torch.ones_like(fact))
    if world > 1:  # each fact was probed on exactly one rank; zeros elsewhere
        torch.distributed.all_reduce(wrong)
        torch.distributed.all_reduce(nats)
        torch.distributed.all_reduce(scored)
    # a fact none of whose value tokens was scored would count as memorized (wrong == 0): refuse it
    expected = (tokens.lengths - tokens.value_starts.clamp(min=1)).clamp(min=0).to(device)
    if tokens.n and not (torch.equal(scored, expected) and bool((expected > 0).all())):
        missing = int(((scored != expected) | (expected == 0)).sum())
        raise RuntimeError(f"probe scored {int(scored.sum())} of {int(expected.sum())} value tokens: {missing} of "
                           f"{tokens.n} facts not fully probed (a fact with no value token cannot be probed)")
    model.train(was_training)
    correct = np.zeros(tokens.n, dtype=bool)
    bits = np.zeros(tokens.n, dtype=np.float64)
    order = tokens.order.numpy()
    correct[order] = (wrong == 0).cpu().numpy()
    bits[order] = (nats / math.log(2)).cpu().numpy()
    return correct, bits


class Prober:
    """A run's probe sets and how to probe them: every call gives the same facts, scaled to the same population."""

    def __init__(self, sets: dict[str, pl.DataFrame], batch_size: int, pad_id: int, non_embedding: int,
                 group_columns: list[str], train_facts: pl.DataFrame | None = None, total_params: int | None = None,
                 donors: pl.DataFrame | None = None):
        """``sets``: split -> facts to probe (the ``train`` one may be a uniform sample of ``train_facts``,
        every training fact of the run; default: the set itself). Capacity and bits are scaled to it.
        ``donors``: the facts whose prompts give the training facts' key-blind baseline (the held-out facts;
        ``probing.keyblind``)."""
        self.donors = donors
        self.keyblind: dict[str, tuple] = {}
        self.sets = sets
        self.train_facts = train_facts if train_facts is not None else sets.get("train")
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.non_embedding = non_embedding
        self.total_params = total_params
        self.group_columns = group_columns
        self.last_tables: dict[str, pl.DataFrame] = {}
        self.tokens: dict[str, ProbeTokens] = {}
        self._prepared: dict | None = None

    def prepare(self, vocab_size: int) -> dict:
        """Per split: (probed facts, population), both with leak-free priors. Depends on data only."""
        if self._prepared is None:
            train = self.train_facts
            self._prepared = {}
            for split, facts in self.sets.items():
                if facts.height == 0:
                    continue
                pop = train if split == "train" and train is not None else facts
                pop = with_prior(train, pop, vocab_size) if train is not None else pop
                probed = facts.drop("prior_bits", strict=False).join(pop.select("fact_id", "prior_bits"),
                                                                     on="fact_id", how="left", maintain_order="left")
                self._prepared[split] = (probed, pop)
        return self._prepared

    def _keyblind(self, model, split: str, facts: pl.DataFrame) -> pl.DataFrame | None:
        """The training facts probed after their donors' prompts (None for other splits)."""
        if split != "train":
            return None
        if split not in self.keyblind:
            ids_frame, ids, starts = keyblind_inputs(facts, self.donors)
            self.keyblind[split] = (ids_frame, ProbeTokens(ids, starts.to_numpy()) if ids_frame.height else None)
        ids_frame, tokens = self.keyblind[split]
        if tokens is None:
            return None
        correct, bits = probe_batched(model, tokens, None, self.pad_id, self.batch_size)
        return ids_frame.with_columns(pl.Series("correct_keyblind", correct), pl.Series("code_bits_keyblind", bits))

    def probe(self, model, epoch: int, step: int, tokens_seen: int) -> list[dict]:
        rows = []
        total = self.total_params if self.total_params is not None else sum(p.numel() for p in model.parameters())
        n_train = self.train_facts.height if self.train_facts is not None else None
        for split, (facts, pop) in self.prepare(model.config.vocab_size).items():
            if split not in self.tokens:  # token arrays prepared once per probe set, not every probe
                self.tokens[split] = ProbeTokens(facts["input_ids"], facts["value_start"].to_numpy())
            correct, bits = probe_batched(model, self.tokens[split], None, self.pad_id, self.batch_size)
            table = fact_table(facts, correct, bits, self._keyblind(model, split, facts))
            self.last_tables[split] = table
            for by in [None, "relation", *self.group_columns]:
                if by is not None and (by not in table.columns or table[by].null_count() == table.height):
                    continue
                for r in summarize(table, by, self.non_embedding, total, pop).iter_rows(named=True):
                    rows.append({"epoch": epoch, "step": step, "tokens_seen": tokens_seen, "split": split,
                                 "train_facts": n_train, **r})
        return rows

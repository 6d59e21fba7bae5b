"""Memorization, capacity and bits probes, as one batched teacher-forced forward pass.

Memorized (Lu et al.'s exact match): greedy decoding from ``<bos> prompt`` yields exactly the value
tokens and then ``<eos>``. Greedy decoding reproduces a sequence iff the argmax at every position of it,
given the gold prefix, is the gold token - so one teacher-forced forward pass decides it for a whole
batch (``probe_batched``); ``probe_generate`` is the slow reference used to prove the equivalence.

Bits: code length = sum over value tokens (and <eos>) of -log2 p(token). Memorized bits are an
aggregate over a set of facts: sum(prior_bits - code length), clipped at zero only for the whole set -
clipping per fact would count noise on unknown facts as knowledge. prior_bits is the value's known
entropy (synthetic facts) or, for real facts, its code length under a leave-one-out model of the run's
own training facts (``empirical_prior``). Probing a uniform sample of the training facts estimates the
population: capacity = MR x facts, with a binomial standard error (``summarize``).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

import lightning as L

from factscale.models import count_instantiated


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
        logits = head(hidden).float()
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


def empirical_prior(train: pl.DataFrame, facts: pl.DataFrame, vocab_size: int) -> pl.DataFrame:
    """Prior bits of each of ``facts`` from the run's training facts ``train``, never from the fact itself.

    A model that knows the relation but not the key: Witten-Bell interpolation of the relation's value
    counts with a back-off, p(v | r) = (c + u*q(v)) / (n + u), where n = other training facts of relation
    r, c = how many of them have value v, u = distinct values among them. The back-off q(v) is the value's
    tokens (and <eos>) under an add-one unigram model of the other training facts' value tokens over the
    ``vocab_size`` tokens. A training fact is left out of every count it would enter (leave-one-out), so
    a value seen only in this fact costs exactly its back-off: log2((n+u)/u) + unigram bits. Returns
    ``fact_id``, ``prior_bits`` and ``backoff_bits`` in the order of ``facts``.
    """
    own = facts["fact_id"].is_in(train["fact_id"].implode()).cast(pl.Int64).to_numpy()
    tok = lambda d: d.select("fact_id", pl.col("input_ids").list.slice(pl.col("value_start")).alias("t"))  # noqa: E731
    train_tok = tok(train).explode("t")
    cnt = train_tok.group_by("t").agg(pl.len().alias("cnt"))
    total = train_tok.height
    f = tok(facts).with_row_index("i").with_columns(own=pl.Series(own), n_tok=pl.col("t").list.len())
    occ = (f.explode("t").join(cnt, on="t", how="left").with_columns(pl.col("cnt").fill_null(0))
           .with_columns(mine=pl.len().over("i", "t") * pl.col("own")))
    # each occurrence: -log2((count elsewhere + 1) / (tokens elsewhere + V))
    occ = occ.with_columns(b=-((pl.col("cnt") - pl.col("mine") + 1).cast(pl.Float64)
                               / (total - pl.col("n_tok") * pl.col("own") + vocab_size)).log(2))
    uni = f.select("i").join(occ.group_by("i").agg(pl.col("b").sum()), on="i", how="left")["b"].fill_null(0.0)

    rel = train.group_by("relation").agg(pl.len().alias("n_r"), pl.col("value").n_unique().alias("u_r"))
    val = train.group_by("relation", "value").agg(pl.len().alias("c_rv"))
    g = (facts.select("relation", "value").join(rel, on="relation", how="left")
         .join(val, on=["relation", "value"], how="left").fill_null(0))
    n = g["n_r"].to_numpy() - own
    c = g["c_rv"].to_numpy() - own
    u = g["u_r"].to_numpy() - own * (g["c_rv"].to_numpy() == 1)  # its value was distinct only through itself
    q_bits = uni.to_numpy()
    with np.errstate(divide="ignore"):
        log_escape = np.where(n > 0, np.log2(np.maximum(u, 1)) - np.log2(np.maximum(n + u, 1)), 0.0)
        backoff = q_bits - log_escape
        seen = np.where(c > 0, np.log2(np.maximum(c, 1)) - np.log2(np.maximum(n + u, 1)), -np.inf)
    prior = -np.logaddexp2(seen, -backoff)
    return pl.DataFrame({"fact_id": facts["fact_id"], "prior_bits": prior, "backoff_bits": backoff})


PROBE_SEED = 0  # one sample per corpus: every run and every epoch probes the same facts


def probe_sample(train: pl.DataFrame, n: int | None, by: str = "relation") -> pl.DataFrame:
    """The training facts a run probes: all of them, or a fixed sample of ``n``.

    A systematic sample (every (N/n)-th fact from a start in [0, N/n)) over the facts ordered by ``by``
    (relation) and then by a stable hash of the fact id. Over the start - uniform in design, fixed here by
    hashing ``PROBE_SEED``, like any seeded sample - every fact is included with probability n/N, so
    MR x N is design-unbiased; each relation gets its share of the sample to within one fact (implicit
    proportional stratification, which only lowers the variance: the binomial standard error of
    ``summarize`` is conservative for it). For the one sample a corpus gets, a relation with fewer than
    N/n facts may have none probed (its per-relation row is then absent). Deterministic and independent
    of row order and machine, so runs on one corpus are compared on the same facts.
    """
    N = train.height
    if n is None or N <= n:
        return train
    from factscale.corpus.build import stable_unit

    key = train["fact_id"].cast(pl.String) if "fact_id" in train.columns else pl.Series(range(N)).cast(pl.String)
    cols = [by] if by in train.columns else []
    order = train.with_columns(_u=stable_unit(key, PROBE_SEED)).with_row_index("_row").sort([*cols, "_u", "_row"])
    step = N / n
    start = float(stable_unit(pl.Series(["start"]), PROBE_SEED)[0]) * step
    picks = np.floor(start + step * np.arange(n)).astype(np.int64)
    rows = order["_row"].to_numpy()[picks]
    return train[np.sort(rows)]


def with_prior(train: pl.DataFrame, facts: pl.DataFrame, vocab_size: int) -> pl.DataFrame:
    """``facts`` with ``prior_bits`` that never saw the fact: synthetic facts keep their exact entropy."""
    emp = empirical_prior(train, facts, vocab_size)["prior_bits"]
    exact = (pl.col("value_type") == "synthetic") if "value_type" in facts.columns else pl.lit(False)
    if "prior_bits" not in facts.columns:
        facts = facts.with_columns(prior_bits=pl.lit(None, dtype=pl.Float64))
    return facts.with_columns(prior_bits=pl.when(exact & pl.col("prior_bits").is_not_null())
                              .then(pl.col("prior_bits")).otherwise(emp))


def fact_table(facts: pl.DataFrame, correct: np.ndarray, bits: np.ndarray) -> pl.DataFrame:
    """Per fact: exact match, code length and net bits (prior - code; unclipped: only sets are clipped)."""
    return facts.with_columns(
        pl.Series("correct", correct),
        pl.Series("code_bits", bits),
    ).with_columns(memorized_bits=pl.col("prior_bits") - pl.col("code_bits"))


def summarize(table: pl.DataFrame, by: str | None, non_embedding: int, total_params: int | None = None,
              population: pl.DataFrame | None = None) -> pl.DataFrame:
    """Metrics per group of the probed ``table``, scaled to the ``population`` it was sampled from.

    ``population`` (default: the table itself) holds every fact the table stands for, with the same
    group columns and ``prior_bits``. Per group: n_facts (population), n_probed, MR, capacity =
    MR x n_facts with its binomial standard error (finite-population corrected: 0 when every fact was
    probed), net_bits = n_facts x mean(prior - code) over the probed facts, capacity_bits =
    max(0, net_bits) (the one clip, at the set level) with its standard error, prior_bits (population
    sum), value loss (nats per value token) and bits per non-embedding / total parameter.
    """
    keys = [by] if by is not None else []
    pop = population if population is not None else table
    net = pl.col("prior_bits") - pl.col("code_bits")
    probed = [
        pl.len().alias("n_probed"),
        pl.col("correct").mean().alias("mr"),
        pl.col("code_bits").mean().alias("code_bits_mean"),
        (pl.col("code_bits").sum() * math.log(2) / pl.col("n_value_tokens").sum()).alias("value_loss"),
        net.mean().alias("_net_mean"),
        net.var(ddof=1).fill_null(0.0).alias("_net_var"),
    ]
    popu = [pl.len().alias("n_facts"), pl.col("prior_bits").sum().alias("prior_bits")]
    if keys:
        out = table.group_by(keys).agg(probed).join(pop.group_by(keys).agg(popu), on=keys, how="left",
                                                    nulls_equal=True)  # facts without a group value are a group
    else:
        out = pl.concat([table.select(probed), pop.select(popu)], how="horizontal")
    N, n = pl.col("n_facts").cast(pl.Float64), pl.col("n_probed").cast(pl.Float64)
    fpc = pl.when(N > 1).then(((N - n) / (N - 1)).clip(lower_bound=0.0)).otherwise(0.0)
    out = out.with_columns(
        capacity=pl.col("mr").cast(pl.Float64) * N,
        capacity_se=N * (pl.col("mr") * (1 - pl.col("mr")) / n * fpc).sqrt(),
        net_bits=pl.col("_net_mean") * N,
        capacity_bits_se=N * (pl.col("_net_var") / n * fpc).sqrt(),
    ).with_columns(capacity_bits=pl.col("net_bits").clip(lower_bound=0.0)).drop("_net_mean", "_net_var")
    if by is None:
        out = out.with_columns(group_by=pl.lit("all"), group=pl.lit("all"))
    else:
        out = out.with_columns(group_by=pl.lit(by), group=pl.col(by).cast(pl.String)).drop(by).sort("group")
    return out.with_columns(bits_per_param=pl.col("capacity_bits") / non_embedding,
                            bits_per_total_param=pl.col("capacity_bits") / (total_params or float("nan")))


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
                 non_embedding: int, group_columns: list[str], train_facts: pl.DataFrame | None = None,
                 total_params: int | None = None):
        """``sets``: split -> facts to probe (the ``train`` one may be a uniform sample of ``train_facts``,
        every training fact of the run; default: the set itself). Capacity and bits are scaled to it."""
        self.sets = sets
        self.train_facts = train_facts if train_facts is not None else sets.get("train")
        self.every = every
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.non_embedding = non_embedding
        self.total_params = total_params
        self.group_columns = group_columns
        self.rows: list[dict] = []
        self.last_tables: dict[str, pl.DataFrame] = {}
        self.tokens: dict[str, ProbeTokens] = {}
        self._prepared: dict | None = None

    def _prepare(self, vocab_size: int) -> dict:
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

    def probe(self, model, epoch: int, step: int, tokens_seen: int) -> list[dict]:
        rows = []
        total = self.total_params or count_instantiated(model)[1]
        n_train = self.train_facts.height if self.train_facts is not None else None
        for split, (facts, pop) in self._prepare(model.config.vocab_size).items():
            if split not in self.tokens:  # token arrays prepared once per probe set, not every probe
                self.tokens[split] = ProbeTokens(facts["input_ids"], facts["value_start"].to_numpy())
            correct, bits = probe_batched(model, self.tokens[split], None, self.pad_id, self.batch_size)
            table = fact_table(facts, correct, bits)
            self.last_tables[split] = table
            for by in [None, "relation", *self.group_columns]:
                if by is not None and (by not in table.columns or table[by].null_count() == table.height):
                    continue
                for r in summarize(table, by, self.non_embedding, total, pop).iter_rows(named=True):
                    rows.append({"epoch": epoch, "step": step, "tokens_seen": tokens_seen, "split": split,
                                 "train_facts": n_train, **r})
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

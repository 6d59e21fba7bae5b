"""Capacity after weight-only quantization of a trained run's model (Allen-Zhu & Li 3.3's int8 / int4 check).

Quantizer: round-to-nearest, symmetric, one scale per output channel: for a weight row w (the weights of
one output unit), scale = max|w| / (2^(b-1) - 1) and w -> clamp(round(w / scale), -(2^(b-1) - 1),
2^(b-1) - 1) * scale, so int8 has levels -127..127 and int4 -7..7, and every weight moves by at most
scale / 2 (no weight is clipped: |w| <= max|w|). The model is then probed in float32 with these
dequantized weights (fake quantization: the same numbers an int kernel would compute with, up to float
rounding of the matmul).

Which tensors: every linear layer inside the decoder blocks (attention q/k/v/o and the MLP; GPT-2's
``Conv1D`` layers likewise, per output column). Token embeddings, the output head (tied to them by
default), position embeddings, norms and biases stay float32 unless ``embeddings=True``, which also
quantizes the input embedding (one scale per token row) and an untied head (per output row). As we read
Allen-Zhu & Li 3.3, they quantized trained models to int8/int4 with GPTQ, which is more accurate than
round-to-nearest at 4 bits; a round-to-nearest int4 result is therefore a lower bound of what GPTQ keeps.

``probe_run`` reprobes a saved run with the run's own probe (``probing.Prober``: the same training
facts, sample, priors and measures as its final result row) at each precision, and also reports the bits
the model spends on ``<eos>`` (``eos_bits``), which random sequences make a pure bias (corpus/sequences.py).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import torch

Quantizer = Callable[[torch.Tensor, int], torch.Tensor]
"""(weight, output-channel dim) -> the weight to use instead (same shape and dtype)."""


def rtn_quantizer(bits: int) -> Quantizer:
    """Symmetric round-to-nearest with one scale per output channel, at ``bits`` bits (2..16)."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 16:
        raise ValueError(f"--bits: weight bits must be integers in [2, 16] (e.g. 8,4), got {bits!r}")
    qmax = 2 ** (bits - 1) - 1

    def quantize(w: torch.Tensor, out_dim: int) -> torch.Tensor:
        reduce = 1 - out_dim  # the other dim of a 2-D weight
        scale = w.abs().amax(dim=reduce, keepdim=True) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero channel stays zero
        return (torch.round(w / scale).clamp_(-qmax, qmax) * scale).to(w.dtype)

    return quantize


def identity_quantizer(w: torch.Tensor, out_dim: int) -> torch.Tensor:
    return w


def target_weights(model, embeddings: bool = False) -> list[tuple[str, torch.nn.Parameter, int]]:
    """(name, weight, output-channel dim) of every tensor the probe quantizes (module docstring)."""
    from transformers.pytorch_utils import Conv1D

    emb_in, head = model.get_input_embeddings(), model.get_output_embeddings()
    out, seen = [], set()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and mod is not head:
            w, dim = mod.weight, 0  # [out, in]
        elif isinstance(mod, Conv1D):
            w, dim = mod.weight, 1  # GPT-2: [in, out]
        elif embeddings and (mod is emb_in or mod is head):
            w, dim = mod.weight, 0  # [vocab, hidden]: one scale per token
        else:
            continue
        if id(w) not in seen:  # a tied head shares the embedding's tensor: quantize it once
            seen.add(id(w))
            out.append((f"{name}.weight", w, dim))
    return out


@torch.no_grad()
def quantize_model(model, quantizer: Quantizer, embeddings: bool = False) -> int:
    """Replace the target weights of ``model`` in place; returns how many parameters were quantized."""
    n = 0
    for _, w, dim in target_weights(model, embeddings):
        w.copy_(quantizer(w.detach(), dim))
        n += w.numel()
    return n


def _drop_eos(facts: pl.DataFrame) -> tuple[pl.Series, np.ndarray]:
    ids = facts.select(pl.col("input_ids").list.slice(0, pl.col("input_ids").list.len() - 1))["input_ids"]
    return ids, facts["value_start"].to_numpy()


def run_dirs(paths: list[str | Path]) -> list[Path]:
    """Each path is a run directory (with ``model/``) or a runs directory holding such runs."""
    from factscale.errors import CollectError

    out = []
    for p in map(Path, paths):
        if (p / "model").is_dir() and (p / "config.yaml").exists():
            out.append(p)
        elif p.is_dir() and any((d / "model").is_dir() for d in p.iterdir() if d.is_dir()):
            out += sorted(d for d in p.iterdir() if (d / "model").is_dir() and (d / "config.yaml").exists())
        else:
            raise CollectError(f"{p}: not a finished run directory (no model/ and config.yaml) nor a runs "
                               "directory containing finished runs")
    return out


def probe_run(run_dir: str | Path, bits: list[int] = (8, 4), embeddings: bool = False,
              quantizers: dict[str, Quantizer] | None = None, batch_size: int | None = None) -> pl.DataFrame:
    """One row per precision (``fp32`` = the saved weights, ``bf16`` for a run trained with bf16 weights, then
    ``int<b>`` per ``bits``, or the named ``quantizers``): the run's final overall training row with its
    measures recomputed on that model (mr, capacity, capacity_se, net_bits, capacity_bits, capacity_bits_se, bits_per_param,
    bits_per_total_param, value_loss), plus ``weights``, ``quantized_params``, ``eos_bits`` (population
    total of the code bits spent on ``<eos>``) and ``capacity_bits_no_eos`` (= max(0, net_bits + eos_bits))."""
    from transformers import AutoModelForCausalLM

    from factscale.corpus.build import load_corpus
    from factscale.errors import CollectError
    from factscale.probing.engine import Prober, ProbeTokens, probe_batched
    from factscale.probing.measures import probe_sample
    from factscale.training.data import select_facts
    from factscale.training.models import count_instantiated
    from factscale.training.rundir import RunDir

    rd = RunDir.open(run_dir)
    cfg = rd.cfg
    if not rd.results.exists() or not rd.model.is_dir():
        raise CollectError(f"{run_dir}: the run is not finished (no results.parquet or model/)")
    res = pl.read_parquet(rd.results)
    base = res.filter((pl.col("split") == "train") & (pl.col("group_by") == "all") & (pl.col("epoch") == res["epoch"].max()))
    if base.height != 1:
        raise CollectError(f"{rd.results}: no overall training row at the final probe (probe.splits must include train)")
    facts, _ = load_corpus(cfg.corpus.path)
    train, heldout = select_facts(facts, cfg)
    sample = probe_sample(train, cfg.probe.max_train_facts)  # the run's own probe sample
    model = AutoModelForCausalLM.from_pretrained(str(rd.model)).float()
    non_emb, total = count_instantiated(model)
    pad = model.config.pad_token_id
    # the saved weights as trained: fp32, or bf16 for a bf16-true run (probed upcast, which is exact)
    trained = "bf16" if "precision" in base.columns and base["precision"][0] == "bf16-true" else "fp32"
    qs = dict(quantizers) if quantizers is not None else \
        {trained: identity_quantizer, **{f"int{b}": rtn_quantizer(b) for b in bits}}
    rows = []
    for name, q in qs.items():
        m = copy.deepcopy(model)
        nq = quantize_model(m, q, embeddings) if q is not identity_quantizer else 0
        cb = Prober({"train": sample}, batch_size or cfg.probe.batch_size, pad, non_emb, [],
                    train_facts=train, total_params=total, donors=heldout)  # the run's own key-blind pairs
        r = next(x for x in cb.probe(m, int(base["epoch"][0]), 0, 0) if x["group_by"] == "all")
        ids, vs = _drop_eos(cb.prepare(m.config.vocab_size)["train"][0])
        _, no_eos = probe_batched(m, ProbeTokens(ids, vs), None, pad, batch_size or cfg.probe.batch_size)
        eos = float((cb.last_tables["train"]["code_bits"].to_numpy() - no_eos).mean()) * r["n_facts"]
        measures = {k: r[k] for k in ("mr", "capacity", "capacity_se", "net_bits", "capacity_bits",
                                      "capacity_bits_se", "bits_per_param", "bits_per_total_param",
                                      "value_loss", "n_probed", "n_facts", "prior_bits")}
        row = base.drop([c for c in measures if c in base.columns]).with_columns(
            *(pl.lit(v).alias(k) for k, v in measures.items()),
            weights=pl.lit(name), quantized_params=pl.lit(nq), quantized_embeddings=pl.lit(embeddings),
            eos_bits=pl.lit(eos), capacity_bits_no_eos=pl.lit(max(0.0, r["net_bits"] + eos)))
        rows.append(row)
    return pl.concat(rows, how="diagonal_relaxed")


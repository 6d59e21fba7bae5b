"""Training throughput: factscale's Lightning path beside a plain PyTorch loop, same model/data/batch.

    python benchmarks/bench_train.py [--regime mixed|demo] [--size 1m] [--steps 40] [--batch 16] [--seq 128]
                                     [--loss-on value] [--attention isolated] [--vocab 512] [--threads 1]
                                     [--rounds 5] [--compile]

Both loops train the same transformers model (same init), on the same packed batches, with the same LR
schedule, AdamW hyperparameters and gradient clipping, and the same attention. The plain loop is the
obvious one (``model(..., labels=...)``, full logits, PyTorch's default AdamW implementation; under
``isolated`` attention it passes the restarting ``position_ids`` and lets transformers build the
block-diagonal mask); factscale's is ``FactLM.training_step`` under Lightning (with ``loss_on: value`` the
output head runs only at scored positions; under ``isolated`` it builds the mask itself,
``train.fact_isolation``; fused AdamW). A third loop runs factscale's loss and optimizer without Lightning
(``FactLM.batch_loss``), to show what the Trainer costs. Rounds of all three, the order rotating; the
ratio is the median of the per-round ratios. Defaults: the earlier demo's corpus (``--regime mixed``, a
512-token vocabulary), value-only loss, the demo's isolated attention, one thread per run. Prints tokens/s
of each, the ratio, the loss of both on the same steps (they must agree), the isolation mask's cost both
ways, and achieved FLOP/s (6 * non-embedding params * tokens, plus the attention and output-layer terms)
against this machine's measured fp32 matmul peak.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from transformers import AutoTokenizer

from factscale.configio import read_yaml_mapping
from factscale.corpus import SyntheticSpec, build_synthetic
from factscale.corpus.build import load_corpus
from factscale.corpus.sources import build_from_spec as build_corpus
from factscale.demo import DEMO_SPEC
from factscale.launch.spec import spec_from_dict
from factscale.training.config import load_run_config
from factscale.training.data import FactDataModule
from factscale.training.models import non_embedding_params, resolve_shape
from factscale.training.module import FactLM, fact_isolation, fact_positions, lr_lambda


def matmul_peak(n=1024, reps=20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


class StepTimer(L.Callback):
    def __init__(self, warmup):
        self.warmup, self.t0, self.steps = warmup, None, 0

        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, *a):
        self.losses.append(float(outputs["loss"]))
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.steps += 1
            self.t1 = time.perf_counter()


def mask_timing(model, ids: torch.Tensor, reps: int = 500) -> tuple[float, float]:
    """Seconds to build one batch's isolation mask: transformers' own from restarting position_ids (what the
    plain loop gets), and train.fact_isolation; the two masks are checked equal first."""
    from transformers.masking_utils import create_causal_mask

    bos = model.config.bos_token_id
    emb = model.get_input_embeddings()(ids).detach()

    def theirs():
        return create_causal_mask(config=model.config, inputs_embeds=emb, attention_mask=None, cache=None,
                                  position_ids=fact_positions(ids, bos))

    def ours():
        return fact_isolation(ids, bos)[1]

    a, b = theirs(), ours()
    assert (a is None and b is None) or torch.equal(a, b)  # None: one fact per window, plain causal attention
    best = {}
    for _ in range(3):
        for f in (theirs, ours):
            t = time.perf_counter()
            for _ in range(reps):
                f()
            best[f] = min(best.get(f, float("inf")), (time.perf_counter() - t) / reps)
    return best[theirs], best[ours]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--regime", default="mixed", choices=["mixed", "demo"],
                    help="mixed: 3,000 keys x attributes of 64/256/1024 values under a --vocab tokenizer (the earlier "
                         "demo's, issue 11's target); demo: factscale/demo.yaml's corpus recipe (one 64-way attribute, "
                         "'[X]: [Y]', 1,024 tokens) with enough keys for --steps batches, its batch and seq_len")
    ap.add_argument("--size", default="1m")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5, help="paired rounds of both loops")
    ap.add_argument("--batch", type=int, help="default 16 (mixed) / the demo's 32 (demo)")
    ap.add_argument("--seq", type=int, help="default 128 (mixed) / the demo's 32 (demo)")
    ap.add_argument("--loss-on", default="value", choices=["all", "value"])
    ap.add_argument("--attention", default="isolated", choices=["isolated", "packed"],
                    help="train.attention of both loops (the demo trains isolated)")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="train.compile=true for the factscale path")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="factscale-bench-train-"))
    if a.regime == "demo":
        demo = spec_from_dict(read_yaml_mapping(DEMO_SPEC, "demo sweep"), str(DEMO_SPEC))
        train = demo.base["train"]
        a.batch, a.seq = a.batch or train["batch_size"], a.seq or train["seq_len"]
        # the demo's recipe; keys enough for warm-up + --steps batches in one epoch (the step's cost does not
        # depend on the number of keys: same model, batch shape and vocabulary)
        recipe = dataclasses.replace(demo.corpus_build, synthetic={**demo.corpus_build.synthetic,
                                                                   "n_keys": 8 * a.batch * (a.steps + 10)})
        build_corpus(recipe, tmp / "c")
    else:
        a.batch, a.seq = a.batch or 16, a.seq or 128
        build_synthetic(tmp / "c", SyntheticSpec(n_keys=3000, vocab_sizes=[64, 256, 1024]), vocab_size=a.vocab)
    facts, _ = load_corpus(tmp / "c")
    warm = 5
    cfg = load_run_config(None, {"corpus.path": str(tmp / "c"), "runs_dir": str(tmp / "r"), "model.size": a.size,
                                 "train.batch_size": a.batch, "train.seq_len": a.seq, "train.epochs": 1,
                                 "train.progress_bar": False, "train.loss_on": a.loss_on,
                                 "train.compile": a.compile, "train.attention": a.attention})
    dm = FactDataModule(cfg, facts, pad_id=0)
    ids, labels = dm.epoch_tensors(0)
    n_batches = ids.shape[0] // a.batch
    steps = min(a.steps, n_batches - warm)
    tokens_per_step = int((ids[: a.batch] != 0).sum())  # real tokens in a typical batch
    L.seed_everything(0, verbose=False)
    vocab = len(AutoTokenizer.from_pretrained(str(tmp / "c" / "tokenizer")))
    module = FactLM(cfg, vocab, 1, 2, 0)
    init = copy.deepcopy(module.model.state_dict())
    plain_module = copy.deepcopy(module)  # its own model: train.compile must not reach the plain loop
    plain_model = plain_module.model

    plain_losses = []

    def plain_loop(factscale_loss: bool = False) -> float:
        """The obvious loop; with ``factscale_loss`` the same loop around FactLM.batch_loss (factscale's
        loss without Lightning, on the module's own model): what Lightning itself costs."""
        model = module.model if factscale_loss else plain_model
        model.load_state_dict(init)
        # the same AdamW hyperparameters and groups as factscale; the plain loop with PyTorch's default
        # implementation (a loop over tensors on a CPU), factscale's loss with its fused one
        opt = module.optimizer() if factscale_loss else plain_module.optimizer(fused=False)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, warm + steps))  # as Lightning's max_steps
        model.train()
        if not factscale_loss:
            plain_losses.clear()
        for i in range(warm + steps):
            if i == warm:
                t = time.perf_counter()
            b = slice(i * a.batch, (i + 1) * a.batch)
            if factscale_loss:
                loss = module.batch_loss(ids[b], labels[b])
            else:
                pos = fact_positions(ids[b], module.model.config.bos_token_id) if a.attention == "isolated" else None
                loss = model(input_ids=ids[b], labels=labels[b], position_ids=pos, use_cache=False).loss
                plain_losses.append(loss.item())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            sched.step()
        return (time.perf_counter() - t) / steps

    fs_losses = []

    def factscale_path() -> float:
        """Lightning Trainer over FactLM + FactDataModule, same init, same batches."""
        module.model.load_state_dict(init)
        timer = StepTimer(warm)
        trainer = L.Trainer(accelerator="cpu", max_steps=warm + steps, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                            gradient_clip_val=cfg.optim.grad_clip, num_sanity_val_steps=0)
        trainer.fit(module, datamodule=dm)
        fs_losses[:] = timer.losses
        return (timer.t1 - timer.t0) / timer.steps

    # Rounds of all three, back to back, the order rotating. This machine's speed drifts by up to 2x between
    # seconds, so a ratio within a round (paired) is steadier than one of two bests taken minutes apart; the
    # median over rounds is the headline, the per-round ratios show the spread.
    t_plain, t_fs, t_bare, ratios, lightning = float("inf"), float("inf"), float("inf"), [], []
    loops = [("plain", plain_loop), ("factscale", factscale_path), ("bare", lambda: plain_loop(factscale_loss=True))]
    for r in range(a.rounds):
        t = {name: fn() for name, fn in loops[r % 3:] + loops[:r % 3]}  # each loop first, second, third in turn
        t_plain, t_fs, t_bare = min(t_plain, t["plain"]), min(t_fs, t["factscale"]), min(t_bare, t["bare"])
        ratios.append(t["plain"] / t["factscale"])
        lightning.append(t["factscale"] / t["bare"])

    s = resolve_shape(cfg.model)
    n = non_embedding_params(cfg.model.arch, s)
    # per token: 6N for the weights, attention scores/values 6*L*T*h (causal: ~half), output layer 6*h*V
    flops_tok = 6 * n + 6 * s.n_layers * a.seq * s.hidden + 6 * s.hidden * vocab
    peak = matmul_peak()
    print(f"regime {a.regime}; model {a.size}: {n:,} non-emb params; vocab {vocab}; batch {a.batch} x {a.seq}; "
          f"loss_on={a.loss_on}; attention={a.attention}; {tokens_per_step} real tokens/step; "
          f"{torch.get_num_threads()} threads; compile={a.compile}")
    for name, dt in (("plain PyTorch loop", t_plain), ("factscale (Lightning)", t_fs)):  # best round of each
        tps = tokens_per_step / dt
        print(f"{name:<24} {dt * 1000:8.1f} ms/step {tps:10,.0f} tokens/s  "
              f"{tps * flops_tok / 1e9:6.2f} GFLOP/s ({tps * flops_tok / peak:.0%} of matmul peak)")
    print(f"factscale's loss without Lightning: {t_bare * 1000:.1f} ms/step; Lightning / bare, median of rounds: "
          f"{statistics.median(lightning):.2f}x (what the Trainer's loop itself costs)")
    print(f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    diff = max(abs(x - y) for x, y in zip(plain_losses, fs_losses))
    print(f"loss, same {len(fs_losses)} steps from the same init: plain {plain_losses[0]:.4f} -> {plain_losses[-1]:.4f}, "
          f"factscale {fs_losses[0]:.4f} -> {fs_losses[-1]:.4f} (largest difference {diff:.1e})")
    if a.attention == "isolated":
        t_theirs, t_ours = mask_timing(module.model, ids[: a.batch])
        print(f"isolation mask per batch: transformers from position_ids {t_theirs * 1e6:.0f} us, "
              f"train.fact_isolation {t_ours * 1e6:.0f} us ({t_theirs / t_ours:.1f}x)")
    print(f"per-round factscale / plain: {', '.join(f'{x:.2f}' for x in ratios)}; best times: {t_plain / t_fs:.2f}x")
    print(f"factscale / plain: {statistics.median(ratios):.2f}x (median of {len(ratios)} paired rounds)")


if __name__ == "__main__":
    main()

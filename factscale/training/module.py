"""The LightningModule over a from-scratch ``transformers`` decoder: the learning-rate schedule (counted in
epochs, so cooldown branches fork on an epoch boundary), each fact's positions and the block-diagonal mask of
isolated attention, the loss on scored tokens only, and the one AdamW."""

from __future__ import annotations

import math

import lightning as L
import torch

from factscale.training.config import RunConfig
from factscale.training.models import build_model


def epoch_progress(trainer):
    """Training progress in epochs when the scheduler steps after a batch: epoch + batches done / batches
    in this epoch. Packing makes the number of steps vary by a step or so between epochs, so only this, not
    a step count, puts a decay's start exactly on an epoch boundary."""
    def progress(step: int) -> float:
        done = trainer.fit_loop.epoch_loop.batch_idx + 1  # batch_idx: index within the epoch (-1 before any)
        return trainer.current_epoch + done / max(1, trainer.num_training_batches)

    return progress


def lr_lambda(cfg, total_steps: int, trainer=None, progress=None):
    """LR multiplier per optimizer step. ``wsd`` decays over the last ``decay_frac`` of the epochs by training
    progress (from ``trainer``, or ``progress(step) -> epochs done`` where a loop of its own keeps count as
    ``epoch_progress`` does; without either, by steps of ``total_steps``), so a run of E epochs keeps the
    stable rate through epoch E(1 - decay_frac) exactly: a cooldown branch forked there from a constant-rate
    trunk with the same warmup equals this run (factscale.launch.branches)."""
    o = cfg.optim
    if o.warmup_steps is not None:
        warm = o.warmup_steps
    else:
        warm = max(1, math.ceil(o.warmup_frac * total_steps)) if o.warmup_frac > 0 else 0
    epochs = cfg.train.epochs
    if progress is None:
        progress = epoch_progress(trainer) if trainer is not None else (lambda step: step * epochs / max(1, total_steps))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if o.schedule == "constant":
            return 1.0
        if o.schedule == "cosine":
            p = min(1.0, (step - warm) / max(1, total_steps - warm))
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))
        decay_start = epochs * (1 - o.decay_frac)  # wsd: warmup, stable, linear decay (in epochs)
        e = progress(step)
        if e < decay_start:
            return 1.0
        p = min(1.0, (e - decay_start) / max(1e-12, epochs - decay_start))
        return 1.0 - (1 - o.min_lr_ratio) * p

    return f


def fact_positions(ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Each token's position within its fact: 0 at every ``<bos>`` (each fact's first token, and only there:
    checked by the data module), +1 after it. Padding continues the window's last fact; it is never scored
    and, attending causally, never seen by a real token."""
    t = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    start = torch.where(ids == bos_id, t, torch.zeros_like(t)).cummax(dim=1).values
    return t - start


def packs_facts(ids: torch.Tensor, bos_id: int) -> bool:
    """Whether any window of ``ids`` (``[..., seq]``) holds more than one fact (else attention is plain causal)."""
    fact = (ids == bos_id).cumsum(dim=-1)
    return bool((fact[..., -1] != fact[..., 0]).any())


def fact_isolation(ids: torch.Tensor, bos_id: int, packed: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(position_ids, SDPA attention mask) that make every fact of a packed window attend only to itself.

    The mask is the block-diagonal causal one, ``(batch, 1, seq, seq)`` booleans (True = attend), that
    transformers builds itself for SDPA from restarting ``position_ids`` (masking_utils:
    ``find_packed_sequence_indices`` and a chain of mask functions): ``None`` when no window holds more than
    one fact (plain causal attention, SDPA's mask-free kernels), else the mask. A 4D mask is used as given,
    and two tensor ops here take ~0.16 ms per 32 x 64 batch instead of ~0.52 ms on this CPU
    (benchmarks/bench_train.py prints both). Boolean masks are SDPA's convention only: eager attention
    would add them to the scores (FactLM.batch_loss passes the mask to SDPA models only). RoPE / GPT-2's
    ``wpe`` see the positions the fact would have alone. The tests prove the mask equal to transformers'
    own and the logits equal to those of each fact run alone, for every architecture. ``packed``: whether
    any window packs several facts (``packs_facts``), where the caller knows it without a device sync.
    """
    if not (packs_facts(ids, bos_id) if packed is None else packed):  # one fact per window: causal (as
        return fact_positions(ids, bos_id), None                        # transformers decides)
    fact = (ids == bos_id).cumsum(dim=1)  # which fact of its window each token belongs to
    causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device).tril_()
    return fact_positions(ids, bos_id), (fact[:, None, :, None] == fact[:, None, None, :]) & causal


def scored_loss(model, ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The causal-LM loss with the output head computed only where a label is scored.

    Equal to ``model(input_ids=ids, labels=labels).loss`` (mean cross-entropy over labels != -100,
    shifted by one; proven in the tests), but under ``loss_on: value`` only ~1/4 of the positions are
    scored, and for small models the vocabulary-wide head is most of the step's work.
    """
    moe = bool(getattr(model.config, "num_experts", 0))
    out = model.base_model(input_ids=ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False,
                           **({"output_router_logits": True} if moe else {}))
    targets = labels[:, 1:]
    rows, cols = (targets != -100).nonzero(as_tuple=True)  # the state at t predicts the token at t + 1
    logits = model.get_output_embeddings()(out.last_hidden_state[rows, cols])
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[rows, cols])
    return loss + router_loss(model, out.router_logits) if moe else loss


def router_loss(model, router_logits) -> torch.Tensor:
    """A mixture of experts' load-balancing loss (Switch Transformer's, as Qwen2-MoE adds it to its loss),
    weighted by ``model.router_aux_coef``. Every position counts, padding included: the packed windows are
    nearly full, and transformers' own version takes no 4D mask."""
    from transformers.models.qwen2_moe.modeling_qwen2_moe import load_balancing_loss_func

    c = model.config
    return c.router_aux_loss_coef * load_balancing_loss_func(router_logits, c.num_experts, c.num_experts_per_tok)


class FactLM(L.LightningModule):
    def __init__(self, cfg: RunConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
        super().__init__()
        self.cfg = cfg
        self.model = build_model(cfg.model, vocab_size, bos_id, eos_id, pad_id)
        # real (non-pad) tokens trained on; a buffer so it is saved in and restored from checkpoints
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long))

    def configure_model(self):
        if self.cfg.train.compile and not getattr(self, "_compiled", False):
            # in place (nn.Module.compile): parameter names, checkpoints and save_pretrained are unchanged
            self.model.base_model.compile()
            self._compiled = True

    def batch_loss(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one packed batch, as this run's attention and loss_on say."""
        pos = mask = None
        if self.cfg.train.attention == "isolated":
            pos, mask = fact_isolation(ids, self.model.config.bos_token_id)
            if self.model.config._attn_implementation != "sdpa":
                mask = None  # a boolean mask is SDPA's convention; others build theirs from the positions
        if self.cfg.train.loss_on == "value":
            return scored_loss(self.model, ids, labels, pos, mask)
        # nearly every position is scored: the plain full-logits path (no data-dependent shapes)
        if getattr(self.model.config, "num_experts", 0):  # the cross-entropy, then the router's loss
            out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False,
                             output_router_logits=True)
            logits = out.logits[:, :-1].float()
            ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
            return ce + router_loss(self.model, out.router_logits)
        return self.model(input_ids=ids, labels=labels, position_ids=pos, attention_mask=mask, use_cache=False).loss

    def training_step(self, batch, batch_idx):
        ids, labels = batch
        loss = self.batch_loss(ids, labels)
        self.tokens_seen += (ids != self.model.config.pad_token_id).sum()
        # only on the steps the logger writes (a self.log call costs ~2 ms, a tiny model's step ~15 ms);
        # the epoch mean is logged by callbacks.EpochLoss
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # Lightning's default clips tensor by tensor on CPU; foreach is one call (same norm, same result).
        # Gradients are already unscaled here under 16-mixed.
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), gradient_clip_val, foreach=True)
        elif gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer(self, fused: bool = True) -> torch.optim.AdamW:
        """AdamW as configured; weight decay on matrices only (not on norms and biases)."""
        o = self.cfg.optim
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
            # one kernel for all parameters instead of a Python loop of small ones (CPU and CUDA)
            fused=fused and self.device.type in ("cuda", "cpu"),
        )

    def configure_optimizers(self):
        opt = self.optimizer()
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.cfg, total, self.trainer))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

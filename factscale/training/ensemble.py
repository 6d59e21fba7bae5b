"""K models of one shape trained as one stacked model: vmap over the member dimension, one AdamW for all.

A sweep trains many tiny models of one shape (seeds, learning rates, cooldown branches). Each alone is a
chain of small kernels dominated by per-op overhead; stacked, every op works on K members at once. This
module is the stacked counterpart of one run's ``FactLM`` step (module.py), member by member the same
computation (the tests prove K stacked members equal K standalone runs for every architecture):

- ``init_member``: the model a standalone run starts from (seeded as ``run._train`` seeds it);
- ``Ensemble``: the members' parameters flattened into one ``[K, N]`` leaf tensor (laid out from
  ``torch.func.stack_module_state``); the forward is ``functional_call`` on a meta-device copy of the
  model under ``vmap`` over the member dimension; every member gets its own batch (``[K, B, T]``);
- ``StackedAdamW``: AdamW over that flat tensor with per-member learning rate, step count, betas, eps,
  weight decay and gradient-norm clipping, and an ``active`` mask (a member without a batch on a step
  does not move at all). Vectorized: a handful of ``[K, N]`` tensor ops per step, no loop over members;
- one code path on any device: the weights, moments and steps live on ``device`` (the batches are made on
  the host and copied), and ``bf16`` runs the forward and loss under bf16 autocast with fp32 weights and
  optimizer, as Lightning's bf16-mixed does (the step counts stay on the host: no device sync per step);
- ``Ensemble.member``: a member back as an ordinary ``build_model`` model (``save_pretrained`` works);
  ``Ensemble.fork``: copy a member (weights and optimizer state) into another slot for cooldown branches.

Two things differ from the standalone path, both on purpose and proven equal in the tests:

- attention is transformers' ``eager`` implementation with an *additive* float mask: SDPA has no vmap
  rule, and eager attention adds the mask to the scores (a boolean ``fact_isolation`` mask would be added
  as 0/1, silently wrong). The mask is always passed as a 4D tensor, which transformers uses as given (no
  mask construction, whose data-dependent checks vmap cannot run);
- the loss runs the output head at a fixed number of positions per member (its scored ones, padded with
  ignored ones: ``scored_targets``), not at ``scored_loss``'s exact set: gathering exactly the scored
  positions has a data-dependent shape, which vmap cannot batch. The mean over scored labels is the same
  number. (Full logits with a masked mean are the same number too, but made the whole stacked step ~2x
  slower for a 5k model, K = 4, on the demo's batch: the head, log-softmax and their backward over every
  position of a 1,024-token vocabulary outweigh the decoder. docs/results/ensemble.md.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from factscale.training.config import ModelConfig, RunConfig
from factscale.training.models import build_model
from factscale.training.module import fact_isolation, lr_lambda, packs_facts

IGNORE = -100  # the label of an unscored position (transformers' ignore_index, the data module's)
RECOMPILE_LIMIT = 64  # shapes a compiled stacked step may take in one process before dynamo runs it eager


def init_member(cfg: RunConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    """The model a standalone run of ``cfg`` starts from: ``run._train`` seeds everything with ``cfg.seed``
    and ``FactLM`` then builds the model (nothing random in between). Resets the global RNGs, as a run does."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return build_model(cfg.model, vocab_size, bos_id, eos_id, pad_id)


def scored_targets(labels: torch.Tensor, bucket: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sel ``[K, M]``, targets ``[K, M]``, counts ``[K]``): where each member's loss is scored, at one size.

    ``scored_loss`` runs the output head only at scored positions (``nonzero``: a data-dependent shape,
    which vmap cannot batch). Here every member gets the same number M of positions: its scored ones in
    order, then unscored ones as padding (target -100, ignored by the cross-entropy). M is the largest
    count rounded up to a multiple of ``bucket`` (a compiled step sees few shapes). ``sel`` indexes the
    flattened ``[B * T]`` hidden states (the state at t predicts the token at t + 1).
    """
    K, B, T = labels.shape
    targets = labels[:, :, 1:].reshape(K, B * (T - 1))
    scored = targets != IGNORE
    counts = scored.sum(1)
    M = min(B * (T - 1), -(-max(1, int(counts.max())) // bucket) * bucket)
    order = torch.argsort((~scored).to(torch.int8), dim=1, stable=True)[:, :M]  # scored first, in order
    sel = order // (T - 1) * T + order % (T - 1)
    return sel, targets.gather(1, order), counts


def additive_attention(ids: torch.Tensor, bos_id: int, isolated: bool, dtype: torch.dtype = torch.float32,
                       packed: bool | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(position_ids ``[K, B, T]`` or None, additive mask ``[K, B|1, 1, T, T]``) for stacked batches ``ids``.

    ``isolated``: ``fact_isolation``'s positions and block-diagonal causal mask; else plain causal
    attention with default positions (``train.attention: packed``). Allowed entries are 0, the rest the
    dtype's most negative number (what transformers' own eager masks hold). Always a mask, even for plain
    causal attention: eager attention applies no causality of its own. ``packed``: ``fact_isolation``'s.
    """
    K, B, T = ids.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril_()
    pos = allowed = None
    if isolated:
        pos, allowed = fact_isolation(ids.reshape(K * B, T), bos_id, packed)
        pos = pos.reshape(K, B, T)
    if allowed is None:  # one fact per window (or packed): causal only, one mask broadcast over K and B
        allowed = causal.expand(K, 1, 1, T, T)
    else:
        allowed = allowed.reshape(K, B, 1, T, T)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=ids.device)
    return pos, mask.masked_fill_(~allowed, torch.finfo(dtype).min)


class StackedAdamW:
    """AdamW over a ``[K, N]`` tensor of K members' flattened parameters, each member with its own
    hyperparameters and step count: member k's row moves exactly as ``torch.optim.AdamW`` (FactLM's
    groups: weight decay on the first ``n_decay`` columns, the matrices) after ``clip_grad_norm_`` over
    its own gradients would move it. All ops act on whole ``[K, N]`` tensors with ``[K, 1]`` coefficients.

    ``active`` (bool ``[K]``) per step: an inactive member's coefficients are neutral (decay factor 1,
    moment weights 0, step size 0) and its gradient is zeroed, so its row, moments and step count stay
    bit for bit as they were.
    """

    def __init__(self, flat: torch.Tensor, n_decay: int, betas: Sequence[tuple[float, float]],
                 eps: Sequence[float], weight_decay: Sequence[float], grad_clip: Sequence[float]):
        self.flat, self.n_decay = flat, n_decay
        col = dict(dtype=flat.dtype, device=flat.device)
        self.beta1 = torch.tensor([b[0] for b in betas], **col)
        self.beta2 = torch.tensor([b[1] for b in betas], **col)
        self.eps = torch.tensor(list(eps), **col)
        self.weight_decay = torch.tensor(list(weight_decay), **col)
        self.grad_clip = torch.tensor(list(grad_clip), **col)  # 0 = no clipping for that member
        self.exp_avg = torch.zeros_like(flat, memory_format=torch.contiguous_format).detach()
        self.exp_avg_sq = torch.zeros_like(self.exp_avg)
        # optimizer steps taken, on the host: the schedules read them every step (no device sync)
        self.steps = torch.zeros(flat.shape[0], dtype=torch.long)

    @torch.no_grad()
    def step(self, lr: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """One step of every active member at its learning rate ``lr[k]``, from ``flat.grad``; ``active``: a
        host tensor (None: all)."""
        g = self.flat.grad
        host = torch.ones_like(self.steps, dtype=torch.bool) if active is None else active.to(torch.bool)
        active = host.to(g.device, non_blocking=True)
        if not bool(host.all()):
            g.masked_fill_(~active[:, None], 0.0)  # an inactive member's gradient never reaches its moments
        a = active.to(g.dtype)
        # clip_grad_norm_ per member: the norm over that member's slice of every parameter (one row), the
        # coefficient max_norm / (norm + 1e-6) clamped to 1 (multiplied in always, as PyTorch does)
        norm = torch.linalg.vector_norm(g, dim=1)
        coef = torch.where(self.grad_clip > 0, (self.grad_clip / (norm + 1e-6)).clamp(max=1.0), 1.0)
        g.mul_(coef[:, None])
        self.steps += host.long()
        # a member not yet stepped: any finite correction (host to device: never blocking, never a sync)
        t = self.steps.clamp(min=1).to(g.device, non_blocking=True).to(g.dtype)
        bc1, bc2_sqrt = 1 - self.beta1**t, (1 - self.beta2**t).sqrt()
        lr = lr.to(g.dtype) * a
        p = self.flat.detach()
        p[:, : self.n_decay].mul_((1 - lr * self.weight_decay)[:, None])  # decoupled decay, matrices only
        self.exp_avg.lerp_(g, ((1 - self.beta1) * a)[:, None])
        self.exp_avg_sq.mul_(torch.where(active, self.beta2, 1.0)[:, None]).add_(
            g * g * ((1 - self.beta2) * a)[:, None])
        denom = (self.exp_avg_sq.sqrt() / bc2_sqrt[:, None]).add_(self.eps[:, None])
        p.sub_(self.exp_avg / denom * (lr / bc1)[:, None])

    def copy_member(self, src: int, dst: int) -> None:
        """Member ``dst``'s optimizer state and hyperparameters := member ``src``'s."""
        for t in (self.exp_avg, self.exp_avg_sq, self.steps, self.beta1, self.beta2, self.eps,
                  self.weight_decay, self.grad_clip):
            t[dst] = t[src]

    def keep(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        """Only the members ``idx`` stay (in that order), on the ensemble's new ``flat``."""
        self.flat = flat
        for name in ("exp_avg", "exp_avg_sq", "steps", "beta1", "beta2", "eps", "weight_decay", "grad_clip"):
            t = getattr(self, name)
            setattr(self, name, t[idx.to(t.device)].clone())

    def set_hyper(self, k: int, cfg: RunConfig) -> None:
        o = cfg.optim
        self.beta1[k], self.beta2[k], self.eps[k] = o.beta1, o.beta2, o.eps
        self.weight_decay[k], self.grad_clip[k] = o.weight_decay, o.grad_clip


class _ScoredHead(torch.nn.Module):
    """The decoder, then the output head at the selected positions only (``scored_loss`` at a fixed size)."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids, pos, mask, sel):
        hidden = self.lm.base_model(input_ids=ids, position_ids=pos, attention_mask=mask,
                                    use_cache=False).last_hidden_state
        return self.lm.get_output_embeddings()(hidden.flatten(0, 1)[sel])


class StackedProgram:
    """The stacked computation of one model shape: a parameterless copy of the model (meta device) with
    eager attention, run by ``functional_call`` under ``vmap`` over the member dimension. Every parameter
    and buffer is an argument, so one program (and its ``torch.compile``, per K) serves every ensemble of
    this shape (``program_for`` caches them)."""

    def __init__(self, model_cfg: ModelConfig, token_ids: tuple[int, int, int, int]):
        with torch.device("meta"):  # functional_call supplies every tensor; lm_head stays tied to the embedding
            self.base = build_model(model_cfg, *token_ids)
        self.base.config._attn_implementation = "eager"
        # eval: dropout is 0 everywhere (hf_config), but in training mode it is still a random op, which
        # vmap refuses
        self.base.eval()
        self.scored = _ScoredHead(self.base)
        self._compiled = None

    def member_logits(self, params, buffers, ids, pos, mask) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (),
                               dict(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False)).logits

    def logits(self, params, buffers, ids, pos, mask) -> torch.Tensor:
        return vmap(self.member_logits, in_dims=(0, 0, 0, None if pos is None else 0, 0))(params, buffers, ids,
                                                                                         pos, mask)

    def losses(self, params, buffers, ids, pos, mask, sel, targets, counts) -> torch.Tensor:
        """``[K]`` mean cross-entropies over each member's scored targets (``scored_targets``)."""
        params = {"lm." + n: p for n, p in params.items()}
        buffers = {"lm." + n: b for n, b in buffers.items()}

        def one(params, buffers, ids, pos, mask, sel, targets, count):
            logits = functional_call(self.scored, (params, buffers), (ids, pos, mask, sel))
            # the sum over scored targets / their count: F.cross_entropy's mean (padding: -100, ignored);
            # 0 with zero gradients for a member with nothing scored (the standalone path would give NaN)
            loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")
            return loss / count.clamp(min=1)

        return vmap(one, in_dims=(0, 0, 0, None if pos is None else 0, 0, 0, 0, 0))(
            params, buffers, ids, pos, mask, sel, targets, counts)

    def compiled_losses(self, **kwargs):
        """``losses`` under ``torch.compile`` (made once per program; kwargs to torch.compile the first time).

        Static shapes by default. Dynamo specializes vmap's batch size, so every K compiles on its own (even
        with dynamic=True), ~20-50 s each on a 2-core CPU; ensembles of one shape and K share the compiled
        code. Every program compiles the same Python function, so a second shape is a *re*compile of it:
        with automatic dynamic shapes dynamo then makes the changed widths symbolic, which vmap's batched
        tensors cannot take ("Cannot call sizes() on tensor with symbolic sizes"); hence dynamic=False.
        Dynamo runs a function eager after ``torch._dynamo.config.recompile_limit`` shapes (8 by default),
        fewer than one job's stacks may see: each width K x scored-count bucket x mask kind is a shape (a
        2-member stack of the tests' tiny corpus compiled 3), and a branch stack has a width per branch length.
        So the limit is ``RECOMPILE_LIMIT`` (or the process's, if higher) while the stacked step runs; other
        compiled code in the process keeps its own."""
        if self._compiled is None:
            compiled = torch.compile(self.losses, **{"dynamic": False, **kwargs})

            def losses(*args):
                limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
                with torch._dynamo.config.patch(recompile_limit=limit):
                    return compiled(*args)

            self._compiled = losses
        return self._compiled


_PROGRAMS: dict[tuple, StackedProgram] = {}


def program_for(model_cfg: ModelConfig, token_ids: tuple[int, int, int, int]) -> StackedProgram:
    key = (*dataclasses.astuple(model_cfg), *token_ids)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = StackedProgram(model_cfg, token_ids)
    return _PROGRAMS[key]


class Ensemble:
    """K members of one model shape (same ``cfg.model``, vocabulary and ``train.attention``), trained as
    one: ``train_step(ids [K, B, T], labels [K, B, T], active [K])``. Member k has its own config (seed,
    optimizer hyperparameters, schedule over ``total_steps[k]`` optimizer steps, as ``lr_lambda``
    without a trainer counts them) and moves as its standalone run would on the same batches.

    Parameters live in one leaf tensor ``flat`` of shape ``[K, N]``: the matrices first (weight-decayed),
    then the vectors; the model sees views of it, so the backward pass writes one ``[K, N]`` gradient and
    the optimizer is a few whole-tensor ops. Buffers (RoPE frequencies) stay stacked per member.
    """

    def __init__(self, models: Sequence[torch.nn.Module], cfgs: Sequence[RunConfig], total_steps: Sequence[int],
                 device: torch.device | str = "cpu", bf16: bool = False):
        if not (len(models) == len(cfgs) == len(total_steps) >= 1):
            raise ValueError(f"{len(models)} models, {len(cfgs)} configs, {len(total_steps)} step counts: "
                             "one of each per member")
        ref = cfgs[0]
        for c in cfgs[1:]:
            if c.model != ref.model or c.train.attention != ref.train.attention:
                raise ValueError("ensemble members must share model (arch, shape) and train.attention; got "
                                 f"{c.model} / {c.train.attention} beside {ref.model} / {ref.train.attention}")
        shapes = [{n: p.shape for n, p in m.named_parameters()} for m in models]
        if any(s != shapes[0] for s in shapes[1:]):
            raise ValueError("ensemble members have different parameter shapes (vocabulary or model)")
        hf = models[0].config
        self.model_cfg, self.isolated = ref.model, ref.train.attention == "isolated"
        self.token_ids = (hf.vocab_size, hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)
        self.K = len(models)
        # bf16: Lightning's bf16-mixed (fp32 weights and optimizer; the forward and loss under bf16 autocast)
        self.device, self.bf16 = torch.device(device), bf16
        params, self.buffers = stack_module_state(list(models))  # tied weights appear once, as in .parameters()
        self.buffers = {n: b.detach().to(self.device) for n, b in self.buffers.items()}
        # matrices first: FactLM.optimizer decays every parameter with ndim >= 2 (embeddings included)
        names = sorted(params, key=lambda n: params[n].ndim - 1 < 2)
        self.names = names
        self.shapes = [params[n].shape[1:] for n in names]
        self.sizes = [params[n][0].numel() for n in names]
        self.n_decay = sum(s for n, s in zip(names, self.sizes) if params[n].ndim - 1 >= 2)
        self.flat = torch.cat([params[n].detach().reshape(self.K, -1) for n in names], dim=1).to(self.device)
        self.flat.requires_grad_()
        self.program = program_for(self.model_cfg, self.token_ids)
        self._losses, self.compiled = self.program.losses, False
        self.opt = StackedAdamW(self.flat, self.n_decay, [(c.optim.beta1, c.optim.beta2) for c in cfgs],
                                [c.optim.eps for c in cfgs], [c.optim.weight_decay for c in cfgs],
                                [c.optim.grad_clip for c in cfgs])
        self.base_lr = [c.optim.lr for c in cfgs]
        self.schedules = [lr_lambda(c, n) for c, n in zip(cfgs, total_steps)]
        self.tokens_seen = torch.zeros(self.K, dtype=torch.long)  # real tokens per member, as FactLM counts

    @classmethod
    def from_configs(cls, cfgs: Sequence[RunConfig], vocab_size: int, bos_id: int, eos_id: int, pad_id: int,
                     total_steps: Sequence[int], device: torch.device | str = "cpu", bf16: bool = False) -> Ensemble:
        """Members initialized exactly as their standalone runs (``init_member``, each under its own seed, on
        the CPU: a standalone run builds its model there before Lightning moves it to its device)."""
        return cls([init_member(c, vocab_size, bos_id, eos_id, pad_id) for c in cfgs], cfgs, total_steps,
                   device, bf16)

    # ----- forward
    def stacked_params(self) -> dict[str, torch.Tensor]:
        """name -> ``[K, *shape]`` views of ``flat`` (split, not K slices: its backward is one cat)."""
        chunks = self.flat.split(self.sizes, dim=1)
        return {n: c.view(self.K, *s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def _inputs(self, ids: torch.Tensor, labels: torch.Tensor | None = None) -> list:
        """(ids, position ids, additive mask[, sel, targets, counts]) on the device. What is data-dependent
        (the largest scored count, whether a window packs several facts) is decided on the host, where the
        batch was made, so a step needs no device sync; the mask is built on the device from the ids (it is
        ``[K, B, 1, T, T]`` floats: copying it would cost more than the ids). An eager step scores exactly the
        largest count of positions, a compiled one a multiple of 64 (few shapes to compile)."""
        ids = ids.cpu()
        packed = packs_facts(ids, self.token_ids[1]) if self.isolated else None
        out = [ids]
        if labels is not None:
            out += scored_targets(labels.cpu(), bucket=64 if self.compiled else 1)
        ids, *rest = [t.to(self.device, non_blocking=True) for t in out]
        pos, mask = additive_attention(ids, self.token_ids[1], self.isolated, self.flat.dtype, packed)
        return [ids, pos, mask, *rest]

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """``[K, B, T, V]`` logits of every member on its own batch, attention as ``train.attention`` says."""
        return self.program.logits(self.stacked_params(), self.buffers, *self._inputs(ids))

    def losses(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[K]`` training losses (with gradient), member k's equal to ``FactLM.batch_loss`` on its batch."""
        inputs = self._inputs(ids, labels)
        # bf16-mixed as Lightning runs it: the forward and loss under autocast, the backward outside it
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self._losses(self.stacked_params(), self.buffers, *inputs)

    # ----- training
    def lrs(self) -> torch.Tensor:
        """``[K]`` learning rates of the next step: ``lr * lr_lambda(steps taken)``, as LambdaLR sets them.
        The K schedules are scalar Python functions (cheap); everything per parameter is vectorized."""
        steps = self.opt.steps.tolist()
        return torch.tensor([lr * f(s) for lr, f, s in zip(self.base_lr, self.schedules, steps)],
                            dtype=self.flat.dtype).to(self.device, non_blocking=True)

    def train_step(self, ids: torch.Tensor, labels: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """One optimizer step of every active member on its batch ``ids[k], labels[k]``; returns the ``[K]``
        losses before the step (NaN for inactive members). An inactive member's slot may hold any batch:
        its labels are masked out (loss 0, no gradient) and the optimizer leaves it untouched."""
        if ids.shape[0] != self.K or labels.shape != ids.shape:
            raise ValueError(f"ids {tuple(ids.shape)} / labels {tuple(labels.shape)}: expected [K={self.K}, B, T]")
        ids, labels = ids.cpu(), labels.cpu()  # batches are made on the host; what the step needs is too
        host = None if active is None else active.cpu().to(torch.bool)
        if host is not None:
            labels = labels.masked_fill(~host[:, None, None], IGNORE)
        self.flat.grad = None
        losses = self.losses(ids, labels)
        losses.sum().backward()  # members are independent: d(sum)/d(member k) = d(loss k)/d(member k)
        self.opt.step(self.lrs(), host)
        real = (ids != self.token_ids[3]).sum((1, 2))  # counted once the step is taken
        self.tokens_seen += real if host is None else real * host
        losses = losses.detach().float()
        return losses if host is None else losses.masked_fill(~host.to(self.device, non_blocking=True), float("nan"))

    def compile(self, **kwargs) -> None:
        """``torch.compile`` the stacked forward + loss (its backward comes with it), shared by every ensemble
        of this shape (kwargs to torch.compile, the first time); compiles on the next step."""
        self._losses, self.compiled = self.program.compiled_losses(**kwargs), True

    # ----- members in and out
    @torch.no_grad()
    def member(self, k: int):
        """Member k as an ordinary ``build_model`` model on the ensemble's device (SDPA attention, fp32 weights;
        ``save_pretrained`` works)."""
        with torch.random.fork_rng():  # its random init is overwritten: leave the caller's RNG alone
            model = build_model(self.model_cfg, *self.token_ids).to(self.device)
        own = dict(model.named_parameters())
        for n, p in self.stacked_params().items():
            own[n].copy_(p[k])
        own_buffers = dict(model.named_buffers())
        for n, b in self.buffers.items():
            own_buffers[n].copy_(b[k])
        return model

    @torch.no_grad()
    def keep(self, idx: Sequence[int]) -> None:
        """Members leave: only those at ``idx`` stay, in that order (every per-member tensor and list is
        re-indexed; a compiled step recompiles for the new width)."""
        i = torch.as_tensor(list(idx), dtype=torch.long)  # on the host: each tensor takes a copy to its device
        self.flat = self.flat.detach()[i.to(self.device)].clone().requires_grad_()
        self.opt.keep(self.flat, i)
        self.buffers = {n: b[i.to(b.device)].clone() for n, b in self.buffers.items()}
        self.tokens_seen = self.tokens_seen[i].clone()
        self.base_lr = [self.base_lr[k] for k in idx]
        self.schedules = [self.schedules[k] for k in idx]
        self.K = len(idx)

    @torch.no_grad()
    def fork(self, src: int, dst: int, cfg: RunConfig | None = None, total_steps: int | None = None) -> None:
        """Slot ``dst`` := member ``src``: weights, moments and step count (so its schedule continues from
        the same step), e.g. a cooldown branch from its trunk. ``cfg`` / ``total_steps``: the branch's own
        optimizer settings and schedule (else ``src``'s). The branch's model must equal the trunk's."""
        if cfg is not None and cfg.model != self.model_cfg:
            raise ValueError(f"fork: the branch's model {cfg.model} is not the ensemble's {self.model_cfg}")
        self.flat.detach()[dst] = self.flat.detach()[src]
        for b in self.buffers.values():
            b[dst] = b[src]
        self.opt.copy_member(src, dst)
        self.tokens_seen[dst] = self.tokens_seen[src]
        if cfg is None:
            self.base_lr[dst], self.schedules[dst] = self.base_lr[src], self.schedules[src]
        else:
            if total_steps is None:
                raise ValueError("fork with a config needs the branch's total_steps (its schedule's length)")
            self.opt.set_hyper(dst, cfg)
            self.base_lr[dst], self.schedules[dst] = cfg.optim.lr, lr_lambda(cfg, total_steps)

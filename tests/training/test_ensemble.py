"""training.ensemble: K stacked members train exactly as K standalone runs (FactLM's loss, torch AdamW,
clip_grad_norm_, LambdaLR over lr_lambda), for every architecture; inactive members stay put; forks copy
state; unstacked members are ordinary transformers models with the stacked member's logits."""

from __future__ import annotations

import lightning as L
import polars as pl
import pytest
import torch
from conftest import tiny_run_config, token_facts

from factscale.training.data import FactDataModule
from factscale.training.ensemble import Ensemble, additive_attention, scored_targets
from factscale.training.models import ARCHS
from factscale.training.module import FactLM, lr_lambda

BOS, EOS, PAD, VOCAB = 1, 2, 0, 64
B, T = 4, 32


def facts(n: int = 48, seed: int = 0) -> pl.DataFrame:
    return token_facts(n, seed, VOCAB, BOS, EOS)


def config(arch: str = "qwen2", seed: int = 0, **over):
    base = {"model.size": None, "model.arch": arch, "model.n_layers": 2, "model.hidden": 16, "model.heads": 2,
            "model.ffn": 24, "train.seq_len": T, "train.batch_size": B, "seed": seed, "optim.warmup_steps": 3}
    return tiny_run_config("/unused", "/unused", **{**base, **over})


def batches(cfg, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` packed batches of this run's own epochs (its seed orders them), epoch after epoch."""
    dm = FactDataModule(cfg, facts(), pad_id=PAD)
    ids, labels, epoch = [], [], 0
    while sum(len(x) for x in ids) < steps * B:
        i, lab = dm.epoch_tensors(epoch)
        n = len(i) // B * B
        ids.append(i[:n])
        labels.append(lab[:n])
        epoch += 1
    ids, labels = torch.cat(ids), torch.cat(labels)
    return [(ids[s * B:(s + 1) * B], labels[s * B:(s + 1) * B]) for s in range(steps)]


def standalone(cfg, data, total: int, device: str = "cpu", bf16: bool = False, attention: str = "sdpa"):
    """The existing path, step by step as Lightning runs it: FactLM.batch_loss (under bf16 autocast with
    ``bf16``, as Lightning's bf16-mixed runs the training step), backward, FactLM's clipping (clip_grad_norm_),
    FactLM.optimizer (fused AdamW), LambdaLR over lr_lambda. ``attention``: transformers' implementation (eager:
    the stacked path's kernel; FactLM then builds its mask from the positions)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # as run._train starts a run
    module = FactLM(cfg, VOCAB, BOS, EOS, PAD).to(device)
    module.model.config._attn_implementation = attention
    opt = module.optimizer()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total))
    losses = []
    for ids, labels in data:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = module.batch_loss(ids.to(device), labels.to(device))
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        module.configure_gradient_clipping(opt, cfg.optim.grad_clip, "norm")
        opt.step()
        sched.step()
    return torch.tensor(losses), module.model


def member_configs(arch: str, **over):
    """Three members differing in seed, learning rate, schedule, weight decay and clipping."""
    return [config(arch, seed=0, **{"optim.lr": 1e-2, "optim.schedule": "cosine", "optim.weight_decay": 0.1,
                                    "optim.grad_clip": 0.5, **over}),
            config(arch, seed=1, **{"optim.lr": 3e-3, "optim.schedule": "constant", **over}),
            config(arch, seed=2, **{"optim.lr": 5e-3, "optim.schedule": "wsd", "optim.grad_clip": 0.0,
                                    "optim.weight_decay": 0.01, "optim.beta2": 0.95, **over})]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def split_key_biases(arch: str, params: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(key biases, everything else) of a model's parameters, GPT-2's fused q|k|v bias split in three.

    A key bias adds the same q . b_k to all of a query's scores, which softmax ignores: its exact gradient
    is 0, and in float32 both paths move it by rounding noise that AdamW normalizes to lr-sized steps.
    Measured over 24 steps: the standalone path against itself with eager instead of SDPA attention
    differs there by 3e-5 to 4e-4 (relative), as much as the stacked path does; every other tensor agrees
    to ~1e-6. So key biases are held to the noise floor (absolute: GPT-2's start at 0 and stay at the
    noise's ~1e-5), the rest to 1e-5."""
    keys, rest = {}, {}
    for name, p in params.items():
        p = p.detach()
        if arch == "gpt2" and name.endswith("attn.c_attn.bias"):
            q, k, v = p.chunk(3)
            rest[name + "[q]"], keys[name + "[k]"], rest[name + "[v]"] = q, k, v
        elif name.endswith("k_proj.bias"):
            keys[name] = p
        else:
            rest[name] = p
    return keys, rest


@pytest.mark.parametrize("arch,attention,loss_on,tie", [
    ("qwen2", "isolated", "value", True), ("llama", "isolated", "value", True), ("gpt2", "isolated", "value", True),
    ("qwen2", "packed", "all", True), ("llama", "isolated", "all", False)])
def test_stacked_members_train_exactly_as_standalone_runs(arch, attention, loss_on, tie):
    steps = 24
    cfgs = member_configs(arch, **{"train.attention": attention, "train.loss_on": loss_on,
                                   "model.tie_embeddings": tie})
    data = [batches(c, steps) for c in cfgs]
    assert not torch.equal(data[0][0][0], data[1][0][0])  # members see different batches (their own seeds)
    ens = Ensemble.from_configs(cfgs, VOCAB, BOS, EOS, PAD, [steps] * 3)
    got = torch.stack([ens.train_step(torch.stack([d[s][0] for d in data]), torch.stack([d[s][1] for d in data]))
                       for s in range(steps)], dim=1)
    for k, c in enumerate(cfgs):
        want, model = standalone(c, data[k], steps)
        assert rel(got[k], want) < 1e-5, (k, got[k], want)
        assert want[-1] < want[0] - 0.2  # it trained: the comparison covers real updates
        (my_keys, mine), (keys, want_p) = (split_key_biases(arch, dict(m.named_parameters()))
                                           for m in (ens.member(k), model))
        assert mine.keys() == want_p.keys() and len(want_p) > 10
        flat = (torch.cat([p.flatten() for p in d.values()]) for d in (mine, want_p))
        assert rel_l2(*flat) < 1e-5  # the whole model (observed: <= 3e-6)
        for name, p in want_p.items():  # and tensor by tensor (observed: <= 1.3e-5, qwen2 q_proj.bias)
            assert rel_l2(mine[name], p) < 1e-4, (k, name, rel_l2(mine[name], p))
        for name, p in keys.items():  # the noise floor, absolute: GPT-2's start at 0 (observed: <= 7e-5)
            assert (my_keys[name] - p).abs().max() < 2e-4, (k, name, (my_keys[name] - p).abs().max())
    assert (ens.opt.steps == steps).all()


GPU = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                       reason="needs a CUDA device")])


def flat_grads(model, names) -> torch.Tensor:
    named = dict(model.named_parameters())
    return torch.cat([named[n].grad.reshape(-1) for n in names])


@pytest.mark.parametrize("arch", ARCHS)
def test_a_bf16_mixed_step_is_the_standalone_bf16_mixed_step(arch):
    """bf16-mixed as Lightning runs it (fp32 weights, the forward and loss under bf16 autocast): the stacked
    gradients equal a standalone step's with the same attention kernel to bf16 rounding of summation order
    (observed: qwen2 1.8e-4 - 4.1e-4, llama bit for bit), an order below what bf16 itself changes (fp32 against
    bf16: 3e-3; SDPA against eager attention, both bf16: 1.9e-3), so a stack that ignored bf16 would fail here.
    GPT-2 is the exception: under vmap ``addmm`` (its Conv1D) returns fp32 under autocast (the batching rule adds
    the bias after the bf16 matmul), so a stacked GPT-2 keeps those outputs in fp32 where a standalone one rounds
    them to bf16: 1.8e-3 - 1.9e-3, as far as the standalone step's own choice of attention kernel moves it."""
    cfgs = member_configs(arch)
    data = [batches(c, 1)[0] for c in cfgs]
    ids, labels = torch.stack([d[0] for d in data]), torch.stack([d[1] for d in data])
    grads = {}
    for bf16 in (True, False):
        ens = Ensemble.from_configs(cfgs, VOCAB, BOS, EOS, PAD, [1] * 3, bf16=bf16)
        ens.losses(ids, labels).sum().backward()
        grads[bf16] = ens.flat.grad
    for k, c in enumerate(cfgs):
        L.seed_everything(c.seed, workers=True, verbose=False)
        module = FactLM(c, VOCAB, BOS, EOS, PAD)
        module.model.config._attn_implementation = "eager"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = module.batch_loss(ids[k], labels[k])
        loss.backward()
        want = flat_grads(module.model, ens.names)
        if arch == "gpt2":  # vmap's addmm rule adds Conv1D's bias after autocast: those outputs stay fp32
            assert rel_l2(grads[True][k], want) < 2.5e-3  # (observed 1.8e-3 - 1.9e-3; SDPA vs eager: 0.8e-3 - 2e-3)
            continue
        assert rel_l2(grads[True][k], want) < 1e-3, rel_l2(grads[True][k], want)  # qwen2 <= 4.1e-4, llama 0
        assert rel_l2(grads[False][k], want) > 2e-3  # fp32 is told apart


@pytest.mark.parametrize("device", ["cpu", GPU])
def test_bf16_mixed_members_train_as_standalone_bf16_mixed_runs(device):
    """24 bf16-mixed steps on the device a standalone run uses, the ensemble's weights and optimizer in fp32
    there: each member's losses follow its standalone run's (SDPA, as a run trains) to bf16 noise. Training
    amplifies that noise as it amplifies any kernel change (observed here: losses 1e-4 - 2e-4 relative, as
    the same standalone run with eager instead of SDPA attention; weights 0.7-1% relative L2, from Adam's
    normalized steps on near-zero gradients)."""
    steps = 24
    cfgs = member_configs("qwen2")
    data = [batches(c, steps) for c in cfgs]
    ens = Ensemble.from_configs(cfgs, VOCAB, BOS, EOS, PAD, [steps] * 3, device=device, bf16=True)
    got = torch.stack([ens.train_step(torch.stack([d[s][0] for d in data]), torch.stack([d[s][1] for d in data]))
                       for s in range(steps)], 1).cpu()
    assert ens.flat.device.type == device and ens.flat.dtype == ens.opt.exp_avg.dtype == torch.float32
    for k, c in enumerate(cfgs):
        want, model = standalone(c, data[k], steps, device, bf16=True)
        assert want[-1] < want[0] - 0.2  # it trained
        assert rel(got[k], want) < 2e-3, (k, got[k], want)
        member = ens.member(k)
        assert member.lm_head.weight.device.type == device
        mine, theirs = (torch.cat([p.detach().flatten() for p in m.parameters()]).cpu() for m in (member, model))
        assert rel_l2(mine, theirs) < 5e-2


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss_on", ["value", "all"])
def test_stacked_loss_equals_batch_loss(arch, loss_on):
    """The stacked loss (head at a padded, fixed number of positions per member) equals FactLM.batch_loss
    (scored_loss under value, transformers' own full-logits loss under all; isolated attention) member by
    member; a member with nothing scored costs 0 and gets no gradient."""
    cfgs = [config(arch, seed=s, **{"train.loss_on": loss_on}) for s in range(3)]
    data = [batches(c, 1)[0] for c in cfgs]
    ids, labels = torch.stack([d[0] for d in data]), torch.stack([d[1] for d in data])
    labels[1, 1:] = -100  # member 1 scores far fewer positions than the others: padding in play
    labels[2] = -100  # member 2 scores nothing
    ens = Ensemble.from_configs(cfgs, VOCAB, BOS, EOS, PAD, [1] * 3)
    got = ens.losses(ids, labels)
    got.sum().backward()
    for k in range(2):
        module = FactLM(cfgs[k], VOCAB, BOS, EOS, PAD)
        module.model = ens.member(k)
        with torch.no_grad():
            want = module.batch_loss(ids[k], labels[k])
            assert abs(got[k].item() - want.item()) < 1e-5 * want.item()
    assert got[2] == 0 and ens.flat.grad[2].abs().max() == 0 and (ens.flat.grad[:2].abs().amax(1) > 0).all()


def test_scored_targets_pick_the_scored_positions_at_one_padded_size():
    labels = torch.full((2, 3, 8), -100)
    labels[0, 0, 2:5] = torch.tensor([7, 8, 9])
    labels[0, 2, 7] = 5
    labels[1, 1, 1:8] = torch.arange(10, 17)
    sel, targets, counts = scored_targets(labels, bucket=4)
    assert counts.tolist() == [4, 7] and sel.shape == targets.shape == (2, 8)  # 7 rounded up to 8
    T = labels.shape[2]
    for k in range(2):
        rows, cols = (labels[k, :, 1:] != -100).nonzero(as_tuple=True)  # as scored_loss finds them
        n = int(counts[k])
        assert sel[k, :n].tolist() == (rows * T + cols).tolist()  # the state at t predicts label t + 1
        assert targets[k, :n].tolist() == labels[k, :, 1:][rows, cols].tolist()
        assert (targets[k, n:] == -100).all()  # padding: ignored by the loss


def test_eager_attention_needs_the_additive_mask():
    """Why the mask is converted: a boolean mask added to eager scores shifts them by 0/1 instead of masking."""
    cfg = config("qwen2", **{"train.attention": "isolated"})
    ids = batches(cfg, 1)[0][0][None]
    pos, mask = additive_attention(ids, BOS, isolated=True)
    assert mask.shape == (1, B, 1, T, T) and set(mask.unique().tolist()) == {0.0, torch.finfo(torch.float32).min}
    ens = Ensemble.from_configs([cfg], VOCAB, BOS, EOS, PAD, [1])
    model = ens.member(0)
    model.config._attn_implementation = "eager"
    from factscale.training.module import fact_isolation

    p, boolean = fact_isolation(ids[0], BOS)
    with torch.no_grad():
        right = model(input_ids=ids[0], position_ids=p, attention_mask=mask[0], use_cache=False).logits
        wrong = model(input_ids=ids[0], position_ids=p, attention_mask=boolean, use_cache=False).logits
        assert (ens.logits(ids)[0] - right).abs().max() < 1e-5
        assert (wrong - right).abs().max() > 1e-2


def test_inactive_member_does_not_move():
    cfgs = member_configs("qwen2")[:2]
    data = [batches(c, 4) for c in cfgs]
    step = [(torch.stack([d[s][0] for d in data]), torch.stack([d[s][1] for d in data])) for s in range(4)]
    ens, ref = (Ensemble.from_configs(cfgs, VOCAB, BOS, EOS, PAD, [4, 4]) for _ in range(2))
    for s in range(2):
        ens.train_step(*step[s])
        ref.train_step(*step[s])
    before = [t.detach().clone() for t in (ens.flat, ens.opt.exp_avg, ens.opt.exp_avg_sq, ens.opt.steps)]
    losses = ens.train_step(*step[2], active=torch.tensor([True, False]))
    assert torch.isnan(losses[1]) and not torch.isnan(losses[0])
    after = [ens.flat.detach(), ens.opt.exp_avg, ens.opt.exp_avg_sq, ens.opt.steps]
    for b, a in zip(before, after):
        assert torch.equal(b[1], a[1])  # bit for bit: weights, both moments, step count
        assert not torch.equal(b[0], a[0])  # the active member did move
    assert ens.opt.steps.tolist() == [3, 2] and ens.lrs()[1] == ref.lrs()[1]  # its schedule did not advance
    # the active member's step does not depend on its neighbour being active
    ref.train_step(*step[2])
    assert rel(ens.flat.detach()[0], ref.flat.detach()[0]) < 1e-6
    # the skipped member resumes on the next batch as a run that never saw the skipped one
    ens.train_step(*step[3], active=torch.tensor([False, True]))
    alone = Ensemble.from_configs(cfgs[1:], VOCAB, BOS, EOS, PAD, [4])
    for s in (0, 1, 3):
        alone.train_step(step[s][0][1:], step[s][1][1:])
    assert rel(ens.flat.detach()[1], alone.flat.detach()[0]) < 1e-5


def test_fork_copies_member_state_exactly():
    cfgs = member_configs("llama")
    data = [batches(c, 4) for c in cfgs]
    step = [(torch.stack([d[s][0] for d in data]), torch.stack([d[s][1] for d in data])) for s in range(4)]
    ens = Ensemble.from_configs(cfgs, VOCAB, BOS, EOS, PAD, [8] * 3)
    for s in range(3):
        ens.train_step(*step[s])
    branch = config("llama", seed=0, **{"optim.lr": 1e-2, "optim.schedule": "wsd", "optim.weight_decay": 0.1,
                                        "optim.grad_clip": 0.5, "optim.decay_frac": 0.5})
    ens.fork(0, 2, branch, total_steps=8)
    for t in (ens.flat.detach(), ens.opt.exp_avg, ens.opt.exp_avg_sq, ens.opt.steps):
        assert torch.equal(t[2], t[0])
    assert ens.opt.steps[2] == 3 and ens.opt.beta2[2] == 0.98 and ens.opt.grad_clip[2] == 0.5
    # the branch's schedule at the trunk's step count; before its decay both rates agree
    assert ens.lrs()[2] == pytest.approx(1e-2 * lr_lambda(branch, 8)(3))
    # the trunk's cosine has not decayed yet at step 3 of 8 (warmup 3), nor has the branch's wsd (decay over
    # the last half): same rate, so on the same batch trunk and branch move identically, bit for bit
    assert ens.lrs()[0] == ens.lrs()[2] == pytest.approx(1e-2)
    ids, labels = step[3]
    ids[2], labels[2] = ids[0], labels[0]
    ens.train_step(ids, labels)
    assert torch.equal(ens.flat.detach()[2], ens.flat.detach()[0])
    assert not torch.equal(ens.flat.detach()[1], ens.flat.detach()[0])
    with pytest.raises(ValueError, match="model"):
        ens.fork(0, 1, config("llama", **{"model.hidden": 32}), total_steps=8)


def test_members_that_leave_do_not_change_the_others():
    """``keep``: after member 1 leaves (and the others swap slots), members 0 and 2 take the very steps they
    take in the full ensemble: weights, moments, step counts, learning rates and tokens bit for bit."""
    cfgs = member_configs("qwen2")
    data = [batches(c, 5) for c in cfgs]
    step = [(torch.stack([d[s][0] for d in data]), torch.stack([d[s][1] for d in data])) for s in range(5)]
    full = Ensemble.from_configs(cfgs, VOCAB, BOS, EOS, PAD, [10] * 3)
    left = Ensemble.from_configs(cfgs, VOCAB, BOS, EOS, PAD, [10] * 3)
    for s in range(2):
        full.train_step(*step[s])
        left.train_step(*step[s])
    left.keep([2, 0])
    assert left.K == 2 and left.flat.shape[0] == 2 and left.flat.requires_grad
    for s in range(2, 5):
        full.train_step(*step[s])
        left.train_step(step[s][0][[2, 0]], step[s][1][[2, 0]])
    for a, b in ((left.flat.detach(), full.flat.detach()), (left.opt.exp_avg, full.opt.exp_avg),
                 (left.opt.exp_avg_sq, full.opt.exp_avg_sq), (left.opt.steps, full.opt.steps),
                 (left.tokens_seen, full.tokens_seen)):
        assert torch.equal(a, b[[2, 0]])
    assert torch.equal(left.lrs(), full.lrs()[[2, 0]])


@pytest.mark.parametrize("arch", ARCHS)
def test_unstacked_member_is_an_ordinary_model_with_the_stacked_logits(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    from factscale.training.module import fact_isolation

    cfgs = member_configs(arch)
    data = [batches(c, 3) for c in cfgs]
    ens = Ensemble.from_configs(cfgs, VOCAB, BOS, EOS, PAD, [3] * 3)
    for s in range(2):
        ens.train_step(torch.stack([d[s][0] for d in data]), torch.stack([d[s][1] for d in data]))
    ids = torch.stack([d[2][0] for d in data])
    with torch.no_grad():
        stacked = ens.logits(ids)
        for k in range(3):
            model = ens.member(k)
            assert model.config._attn_implementation == "sdpa"
            assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
            pos, mask = fact_isolation(ids[k], BOS)
            own = model(input_ids=ids[k], position_ids=pos, attention_mask=mask, use_cache=False).logits
            assert (own - stacked[k]).abs().max() < 1e-5
        model.save_pretrained(tmp_path / "m")
        again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
        assert torch.equal(again(input_ids=ids[2], position_ids=pos, attention_mask=mask).logits,
                           model(input_ids=ids[2], position_ids=pos, attention_mask=mask).logits)


def test_members_must_share_one_shape():
    with pytest.raises(ValueError, match="share model"):
        Ensemble.from_configs([config("qwen2"), config("qwen2", **{"model.hidden": 32})], VOCAB, BOS, EOS, PAD, [1, 1])
    with pytest.raises(ValueError, match="share model"):
        Ensemble.from_configs([config("qwen2"), config("qwen2", **{"train.attention": "packed"})],
                              VOCAB, BOS, EOS, PAD, [1, 1])


@pytest.mark.slow  # torch.compile's warm-up: ~20-50 s on a 2-core CPU
def test_compiled_step_equals_eager():
    cfgs = member_configs("qwen2")
    data = [batches(c, 4) for c in cfgs]
    steps = [(torch.stack([d[s][0] for d in data]), torch.stack([d[s][1] for d in data])) for s in range(4)]
    eager, compiled = (Ensemble.from_configs(cfgs, VOCAB, BOS, EOS, PAD, [4] * 3) for _ in range(2))
    compiled.compile()
    for s in range(4):
        assert rel(compiled.train_step(*steps[s]), eager.train_step(*steps[s])) < 1e-5
    assert rel_l2(compiled.flat.detach(), eager.flat.detach()) < 1e-5

"""The columnar data path equals the per-fact reference: packing, probes, and the head-only loss."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from conftest import tiny_run_config

from factscale.corpus.render import flat_tokens
from factscale.testing import pack_reference
from factscale.training.data import FactDataModule, Packer


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: two intra-op threads mostly wait on each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_facts(n: int, seed: int, max_len: int = 20) -> pl.DataFrame:
    """Facts with random token ids and lengths, value starts, repeat counts (0 included) and phases."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, max_len + 1, size=n)
    ids = [[1, *rng.integers(3, 500, size=k - 2).tolist(), 2] for k in lengths]
    return pl.DataFrame({
        "input_ids": pl.Series(ids, dtype=pl.List(pl.Int32)),
        "value_start": pl.Series(rng.integers(1, lengths - 1), dtype=pl.Int32),
        "split": ["train"] * n,
        "order": rng.permutation(n),
        "repeats": rng.integers(0, 4, size=n),
        "phase": rng.choice(["b", "a", "c"], size=n),
    })


def reference_epoch(dm: FactDataModule, facts: pl.DataFrame, epoch: int, value_only: bool):
    """The data module's epoch as it was computed before: a numpy array per fact and per-fact packing."""
    cfg = dm.cfg
    seqs = [np.asarray(x, dtype=np.int64) for x in dm.train_facts["input_ids"].to_list()]
    index = np.repeat(np.arange(len(seqs)), dm.repeats)
    col = cfg.train.phase_column
    if col is not None:
        phase = dm.train_facts[col].cast(pl.String).to_numpy()
        names = sorted(set(phase))
        n, E = len(names), cfg.train.epochs
        if cfg.train.order == "blocked":
            keep = phase == names[min(n - 1, epoch * n // E)]
        else:
            perm = np.random.default_rng([cfg.seed, epoch // n, 7]).permutation(len(phase))
            keep = np.zeros(len(phase), dtype=bool)
            keep[perm[epoch % n::n]] = True
        index = index[keep[index]]
    order = index[np.random.default_rng([cfg.seed, epoch]).permutation(len(index))]
    return pack_reference(seqs, dm.train_facts["value_start"].to_numpy(), order, cfg.train.seq_len, 0, value_only)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("loss_on", ["all", "value"])
@pytest.mark.parametrize("variant", ["plain", "repeats", "blocked", "interleaved"])
def test_packing_equals_reference(seed, loss_on, variant):
    facts = random_facts(600, seed)
    over = {"seed": seed, "train.loss_on": loss_on, "train.seq_len": 24 + 8 * seed, "train.epochs": 6}
    if variant == "repeats":
        over["train.repeat_by"] = "repeats"
    if variant in ("blocked", "interleaved"):
        over.update({"train.phase_column": "phase", "train.order": variant, "train.repeat_by": "repeats"})
    dm = FactDataModule(tiny_run_config("/unused", "/unused", **over), facts, pad_id=0)
    for epoch in range(4):
        ref_ids, ref_lab, real = dm_ref = reference_epoch(dm, facts, epoch, loss_on == "value")
        for reuse in (True, False):  # reused buffers (grown and shrunk across epochs) and fresh tensors
            ids, lab = dm.epoch_tensors(epoch, reuse=reuse)
            assert ids.dtype == ref_ids.dtype and lab.dtype == ref_lab.dtype
            assert torch.equal(ids, ref_ids) and torch.equal(lab, ref_lab), (seed, loss_on, variant, epoch)
            assert dm.real_fraction == real / ref_ids.numel()
        del dm_ref


def test_packing_edge_cases():
    """Facts exactly filling a window, a single fact, and facts of the full window length."""
    facts = random_facts(50, 5, max_len=8)
    flat, offsets = flat_tokens(facts["input_ids"])
    seqs = [np.asarray(x, dtype=np.int64) for x in facts["input_ids"].to_list()]
    vs = facts["value_start"].to_numpy()
    for seq_len in (8, 9, 16, 400):
        p = Packer(flat, offsets, vs, seq_len, pad_id=7, value_only=True)
        for order in (np.arange(50), np.array([3]), np.array([4, 4, 4, 1]), np.arange(50)[::-1]):
            got = p.pack(order)
            want = pack_reference(seqs, vs, order, seq_len, 7, True)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2] == want[2]


def test_flat_tokens_of_a_slice():
    """Offsets are right for a sliced (non-zero arrow offset) column."""
    facts = random_facts(30, 3)
    col = facts["input_ids"][7:19]
    flat, offsets = flat_tokens(col)
    assert [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == col.to_list()


def greedy_facts(model, n: int, seed: int) -> tuple[list[list[int]], np.ndarray]:
    """Facts whose value is the model's own greedy continuation (memorized by construction), half of them
    with one value token changed (not memorized). The value ends where the model says <eos> (id 2) or
    after a random 1-4 tokens, so ``generate()`` stops exactly where the fact does."""
    rng = np.random.default_rng(seed)
    ids, starts = [], []
    for i in range(n):
        seq = [1, *rng.integers(3, 60, size=int(rng.integers(2, 7))).tolist()]
        vs = len(seq)
        for _ in range(int(rng.integers(1, 5))):
            with torch.no_grad():
                nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(nxt)
            if nxt == 2:
                break
        if i % 2:
            j = int(rng.integers(vs, len(seq)))
            seq[j] = 3 + (seq[j] - 3 + 1 + int(rng.integers(50))) % 57  # any other token
        ids.append(seq)
        starts.append(vs)
    return ids, np.array(starts)


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_probe_equals_reference_and_generate(arch, one_thread):
    """Batched probe (prepared flat arrays, head at value positions only) == per-fact references:
    exact match equals generate() and the full-logits per-row-padded probe; bits equal the latter's."""
    from factscale.probing.engine import ProbeTokens, probe_batched
    from factscale.testing import probe_generate, probe_reference
    from factscale.training.config import ModelConfig
    from factscale.training.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, size="30k"), vocab_size=64).eval()
    ids, vs = greedy_facts(model, 90, seed=1)
    tokens = ProbeTokens(pl.Series(ids, dtype=pl.List(pl.Int32)), vs)
    fast, bits = probe_batched(model, tokens, None, pad_id=0, batch_size=16)  # many batches, padding exercised
    ref_correct, ref_bits = probe_reference(model, ids, vs, pad_id=0, batch_size=16)
    slow = probe_generate(model, ids, vs, pad_id=0)
    assert fast.sum() >= 40 and (~fast).sum() >= 40, "need both memorized and unmemorized facts"
    assert (fast == slow).all() and (fast == ref_correct).all()
    np.testing.assert_allclose(bits, ref_bits, rtol=1e-5)
    again = probe_batched(model, ids, vs, pad_id=0, batch_size=1000)  # lists in, one batch: same answer
    assert (again[0] == fast).all()
    np.testing.assert_allclose(again[1], bits, rtol=1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_head_only_loss_equals_full_logits_loss(arch, one_thread):
    """The loss with the head at scored positions only == transformers' loss over full logits, and so
    are its gradients, on value-only labels packed by the data module."""
    from factscale.training.config import ModelConfig
    from factscale.training.models import build_model
    from factscale.training.module import scored_loss

    facts = random_facts(200, 4)
    dm = FactDataModule(tiny_run_config("/unused", "/unused", **{"train.loss_on": "value"}), facts, pad_id=0)
    ids, labels = dm.epoch_tensors(0)
    ids, labels = ids[:8], labels[:8]
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, size="30k"), vocab_size=512)
    full = model(input_ids=ids, labels=labels).loss
    g_full = torch.autograd.grad(full, list(model.parameters()))
    fast = scored_loss(model, ids, labels)
    g_fast = torch.autograd.grad(fast, list(model.parameters()))
    torch.testing.assert_close(fast, full, rtol=1e-6, atol=1e-6)
    for a, b in zip(g_fast, g_full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _ddp_probe(rank: int, world: int, init: str, out: str):
    from factscale.probing.engine import probe_batched
    from factscale.training.config import ModelConfig
    from factscale.training.models import build_model

    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(size="30k"), vocab_size=64).eval()
    ids, vs = greedy_facts(model, 40, seed=2) if rank == 0 else (None, None)
    batches = []
    model.base_model.register_forward_hook(lambda m, a, k: batches.append(1))
    shared = [ids, vs]
    torch.distributed.broadcast_object_list(shared, src=0)
    correct, bits = probe_batched(model, shared[0], shared[1], pad_id=0, batch_size=8)
    torch.save({"correct": correct, "bits": bits, "batches": len(batches)}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two processes importing torch + transformers: ~30 s on 2 cores
def test_probe_under_ddp_shards_and_gathers(tmp_path, one_thread):
    """Two gloo ranks: each runs half of the batches, and both return every fact's result, equal to a
    single-process probe."""
    import torch.multiprocessing as mp

    from factscale.probing.engine import probe_batched
    from factscale.training.config import ModelConfig
    from factscale.training.models import build_model

    out = str(tmp_path / "r")
    mp.spawn(_ddp_probe, args=(2, f"file://{tmp_path / 'init'}", out), nprocs=2)
    torch.manual_seed(0)
    model = build_model(ModelConfig(size="30k"), vocab_size=64).eval()
    ids, vs = greedy_facts(model, 40, seed=2)
    correct, bits = probe_batched(model, ids, vs, pad_id=0, batch_size=8)
    for rank in (0, 1):
        r = torch.load(f"{out}.{rank}", weights_only=False)
        assert (r["correct"] == correct).all()
        np.testing.assert_allclose(r["bits"], bits, rtol=1e-6)
    assert [torch.load(f"{out}.{k}", weights_only=False)["batches"] for k in (0, 1)] == [3, 2]  # 5 batches


def test_tokenize_once_equals_three_encodings(tmp_path):
    """One encoding per fact (value start from offsets) == the three-encoding reference, alignment
    decisions included, on synthetic facts and on awkward strings; the tokenizer trains the same from
    a Series fed in chunks as from a list."""
    from factscale.corpus import SyntheticSpec
    from factscale.corpus.render import tokenize, train_tokenizer
    from factscale.corpus.synthetic import generate
    from factscale.testing import tokenize_reference

    raw, _ = generate(SyntheticSpec(n_keys=300, vocab_sizes=[16, 64]))
    prompts = (raw["subject_label"] + "'s " + raw["relation_label"] + ":").to_list()
    values = raw["value"].to_list()
    odd = [("The capital of Zürich is", "Bern"), ("X was born in", "1990"), ("Temp of Y:", "-5 °C"),
           ("Key ends in space ", "value"), ("Empty value:", ""), ("Two spaces", " lead"), ("Emoji", "😀x"),
           ("東京の人口は", "1400万"), ("Tab", "\tv"), ("Quote", "'s end"), ("Digits2", "2"), ("Newline\n", "v"),
           ("Ends with hyphen-", "x"), ("Combining e\u0301", "\u0301accent")]
    prompts += [p for p, _ in odd] * 3
    values += [v for _, v in odd] * 3
    facts = pl.DataFrame({"prompt": prompts, "value": values}).with_columns(text=pl.col("prompt") + " " + pl.col("value"))
    # texts that break the render contract (no space; something after the value) must be dropped
    facts = facts.with_columns(text=pl.when(pl.int_range(pl.len()) % 50 == 7).then(pl.col("prompt") + pl.col("value"))
                               .when(pl.int_range(pl.len()) % 50 == 9).then(pl.col("text") + ".")
                               .otherwise(pl.col("text")))
    tok = train_tokenizer(facts["text"], 300, tmp_path / "a")
    assert tok.get_vocab() == train_tokenizer(facts["text"].to_list(), 300, tmp_path / "b").get_vocab()
    ref_ids, ref_starts, ref_ok = tokenize_reference(facts, tok)
    out, n_bad = tokenize(facts, tok, batch_size=97)  # several batches
    assert n_bad == len(ref_ok) - sum(ref_ok) and n_bad > 0  # some awkward strings are not aligned
    keep = [i for i, ok in enumerate(ref_ok) if ok]
    assert out["input_ids"].to_list() == [ref_ids[i] for i in keep]
    assert out["value_start"].to_list() == [ref_starts[i] for i in keep]
    assert out["text"].to_list() == [facts["text"][i] for i in keep]


def test_dataloader_batches_are_views_of_the_epoch():
    """The training batches, in order, are the epoch's packed tensors cut every batch_size rows (the last
    batch shorter), as views of the reused buffers (no copy)."""
    facts = random_facts(400, 6)
    dm = FactDataModule(tiny_run_config("/unused", "/unused", **{"train.batch_size": 7}), facts, pad_id=0)
    ids, lab = dm.epoch_tensors(0)
    batches = list(dm.train_dataloader())
    assert [len(b[0]) for b in batches[:-1]] == [7] * (len(batches) - 1) and 1 <= len(batches[-1][0]) <= 7
    assert torch.equal(torch.cat([b[0] for b in batches]), ids) and torch.equal(torch.cat([b[1] for b in batches]), lab)
    assert batches[1][0].data_ptr() == dm.packer._ids.data_ptr() + 7 * ids.shape[1] * 8


def test_ddp_ranks_get_disjoint_equal_batch_counts():
    """Under DDP rank r trains batches r, r + world, ...: disjoint, together the epoch (but the uneven tail),
    and the same count on every rank."""
    from types import SimpleNamespace

    facts = random_facts(400, 7)
    dm = FactDataModule(tiny_run_config("/unused", "/unused", **{"train.batch_size": 5}), facts, pad_id=0)
    ids, _ = dm.epoch_tensors(0)
    n = -(-len(ids) // 5)  # batches in the epoch
    got = {}
    for rank in range(3):
        dm.trainer = SimpleNamespace(current_epoch=0, global_rank=rank, world_size=3)
        got[rank] = [b[0].clone() for b in dm.train_dataloader()]
    assert [len(v) for v in got.values()] == [n // 3] * 3
    dealt = [got[k % 3][k // 3] for k in range(3 * (n // 3))]  # back in epoch order
    assert torch.equal(torch.cat(dealt), ids[: sum(len(b) for b in dealt)])

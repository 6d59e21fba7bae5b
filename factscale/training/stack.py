"""Runs of one shape trained as one stacked model (``training.ensemble``), each ending as an ordinary run.

A sweep with ``stack: seeds`` hands the runs that differ only in seed and optimizer settings to one job,
``run_stack``, which trains them together and leaves, for each member, the run directory its standalone
run would have left (same id, ``model/``, ``results.parquet``, ``fact_probe.parquet``, fact history), so
``collect``, ``fit``, ``status`` and the identity rules see ordinary runs. What is the same as a standalone
run, member by member:

- its batches: each member packs its own epochs (its seed's order: ``FactDataModule.epoch_tensors``); a
  member whose epoch has fewer batches sits out the extra steps (inactive: it does not move), and a short
  last batch is padded with unscored rows (the mean over scored labels is unchanged);
- its learning rate: ``lr_lambda`` with training progress counted as Lightning counts it (epoch + batches
  done / batches in the epoch), its own warmup, schedule and step count;
- its probes (``Prober`` on the member unstacked as an ordinary model) at its probe epochs, the per-fact
  history, ``progress.json`` for ``sweep status``, the mean training loss per epoch with its NaN guard;
- ``train.compile``: a standalone run compiles its decoder body, a stack its stacked step (one compile per
  stack; probes run eager on the unstacked member), so the two agree to float noise, not bit for bit;
- its device and precision (``stack_device``): a GPU where its standalone run would use one, bf16-mixed or
  fp32 as it would (probes outside autocast, as Lightning runs them after an epoch).

Cooldown branches (``stack: seeds`` with ``cooldown_branches``; ``launch.stacks.run_branch_stack``): a stack of
trunks keeps each member's state at every fork epoch (``fork_state``: weights, Adam moments and step count,
tokens seen, probe rows and losses so far), and a stack of branches of one length starts each member from its
trunk's state at the fork epoch (``init``): its own schedule then decays from there, exactly as its branch run
would from the trunk's Lightning fork checkpoint. Members need not share a length or a first epoch: the stack's
epoch e is member k's epoch ``first_k + e``, and a member leaves the stack (its run written, its slot dropped
from the ensemble) after its last epoch, so branches of every length train side by side.

Protocol: a stack checkpoint after every epoch (``<runs_dir>/_stacks/<id>/last.pt``, atomic, the previous
kept), so a killed stack resumes where it was, never restarts. A member that fails (non-finite loss, a
probe that raises) gets its ``error.json`` and sits out the rest; the others go on. Every member's lock is
held while the stack trains.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path

import torch

from factscale.configio import flatten, to_dict
from factscale.errors import ConfigError
from factscale.fsio import write_atomic
from factscale.training.config import RunConfig
from factscale.corpus.build import load_corpus
from factscale.probing.engine import Prober
from factscale.probing.measures import frequency_buckets
from factscale.training.callbacks import FAULT_ENV, inject_fault, parse_fault, probe_and_record
from factscale.training.data import FactDataModule
from factscale.training.ensemble import IGNORE, Ensemble, init_member
from factscale.training.models import count_instantiated, resolve_shape
from factscale.training.module import lr_lambda
from factscale.training.run import (disk_needed_mb, probe_groups, probe_sets, quiet_lightning, resolve_device,
                                   use_compile_cache, validate, write_run)
from factscale.training.rundir import RunDir

STACKS = "_stacks"


def stack_key(cfg: RunConfig, any_epochs: bool = False) -> str:
    """Runs with equal keys can be trained as one stack: everything but the seed and the optimizer (and with
    ``any_epochs`` the epoch count: members of different lengths train side by side, the shorter leave)."""
    flat = flatten(to_dict(cfg))  # the readable name (a sweep's axes prefix) is no part of what is computed
    skip = ("seed", "name", "train.epochs") if any_epochs else ("seed", "name")
    return repr(sorted((k, v) for k, v in flat.items() if k not in skip and not k.startswith("optim.")))


def check_stackable(cfgs: list[RunConfig]) -> None:
    keys = {stack_key(c, any_epochs=True) for c in cfgs}
    if len(keys) > 1:
        raise ConfigError("a stack's members must differ only in seed, train.epochs and optim.*")
    if resolve_shape(cfgs[0].model).experts:
        raise ConfigError("a mixture-of-experts model cannot be stacked yet (its routing does not vmap): stack: off")
    c = cfgs[0].train
    if c.devices * c.num_nodes > 1:
        raise ConfigError("a stack trains in one process on one device: train.devices and train.num_nodes stay 1")
    if c.precision not in ("auto", "32-true", "bf16-mixed"):
        # fp32 weights and optimizer state: the stacked AdamW is the fp32 one (no bf16 weights, no loss scaling)
        raise ConfigError(f"train.precision={c.precision} cannot be stacked; allowed in a stack: auto, 32-true, "
                          "bf16-mixed (or stack: off)")


def stack_device(cfg: RunConfig) -> tuple[torch.device, str]:
    """(device, precision) a stack trains on: its standalone runs' (``run.resolve_device``: on a GPU when one is
    visible, unless ``train.accelerator: cpu``; auto precision is bf16-mixed there, fp32 on a CPU). Resolved
    where the stack runs, not where it is launched (a login node sees no GPU)."""
    acc, prec = resolve_device(cfg)
    return torch.device("cuda" if acc == "gpu" else "cpu"), prec


class _Member:
    """One member's run: its directory, data, prober, rows and bookkeeping."""

    def __init__(self, cfg: RunConfig, rd: RunDir, facts, tok, manifest):
        self.cfg, self.rd = cfg, rd
        self.dm = FactDataModule(cfg, facts, tok.pad_token_id)
        with torch.random.fork_rng():
            probe_model = init_member(cfg, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        non_emb, total = count_instantiated(probe_model)
        groups = probe_groups(cfg, facts)
        self.prober = Prober(probe_sets(cfg, self.dm), cfg.probe.batch_size, tok.pad_token_id, non_emb, groups,
                             train_facts=self.dm.train_facts, total_params=total, donors=self.dm.heldout_facts)
        self.rows: list[dict] = []
        self.losses: list[float] = []  # mean training loss per epoch
        self.failed: str | None = None
        self.write_failed = False  # failed only in writing its run: a relaunch writes it again
        self.first = 0  # the member's epoch at the stack's epoch 0 (a branch: its fork epoch)
        # where its schedule is: epoch, batches done and batches in the epoch (Lightning's progress)
        self.epoch, self.i, self.n = 0, 0, 1
        # Lightning's estimated_stepping_batches counts epoch 0's batches (its first dataloader) x epochs
        self.batches_per_epoch = math.ceil(self.dm.epoch_tensors(0)[0].shape[0] / cfg.train.batch_size)


def fork_state(rd: RunDir, epoch: int) -> Path:
    """A stacked trunk member's state at fork epoch ``epoch`` (``fork-e<F>.stack.pt``, beside a standalone trunk's
    ``fork-e<F>.ckpt``; ``drop_checkpoints`` keeps both)."""
    return rd.last_ckpt.with_name(f"fork-e{epoch}.stack.pt")


def _save_fork(ens: Ensemble, k: int, m: _Member, epoch: int) -> None:
    dest = fork_state(m.rd, epoch)
    host = dict(device="cpu", copy=True)  # its own storage (not the whole stack's), readable on any machine
    state = {"epoch": epoch, "trunk": m.rd.id, "flat": ens.flat.detach()[k].to(**host),
             "exp_avg": ens.opt.exp_avg[k].to(**host), "exp_avg_sq": ens.opt.exp_avg_sq[k].to(**host),
             "steps": int(ens.opt.steps[k]), "tokens_seen": int(ens.tokens_seen[k]), "rows": m.rows,
             "losses": m.losses}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")  # drop_checkpoints removes a torn one
    torch.save(state, tmp)
    os.replace(tmp, dest)


def _start_from_forks(ens: Ensemble, members: list[_Member], init: list[Path]) -> None:
    """Each member := its trunk's state at its fork epoch, where its own epochs start."""
    with torch.no_grad():
        for k, (m, p) in enumerate(zip(members, init)):
            s = torch.load(p, map_location="cpu", weights_only=False)
            if s["epoch"] != m.first:
                raise ValueError(f"{p} holds epoch {s['epoch']}; run {m.rd.id} forks at epoch {m.first}")
            ens.flat[k] = s["flat"]
            ens.opt.exp_avg[k], ens.opt.exp_avg_sq[k] = s["exp_avg"], s["exp_avg_sq"]
            ens.opt.steps[k], ens.tokens_seen[k] = s["steps"], s["tokens_seen"]
            m.rows, m.losses = list(s["rows"]), list(s["losses"])
            m.rd.note(f"started from {p} (epoch {s['epoch']}) of trunk {s['trunk']}")


def _stack_dir(rds: list[RunDir]) -> Path:
    """The stack's own directory, named by all its members (done or not): a relaunch after some members
    finished finds the same checkpoint."""
    h = hashlib.blake2b("\n".join(rd.id for rd in rds).encode(), digest_size=6).hexdigest()
    return Path(rds[0].cfg.runs_dir) / STACKS / f"{rds[0].id.rsplit('-', 2)[0]}-x{len(rds)}-{h}"


def _save(path: Path, ens: Ensemble, members: list[_Member], epoch: int) -> None:
    state = {"epoch": epoch, "flat": ens.flat.detach(), "exp_avg": ens.opt.exp_avg, "exp_avg_sq": ens.opt.exp_avg_sq,
             "steps": ens.opt.steps, "tokens_seen": ens.tokens_seen, "ids": [m.rd.id for m in members],
             "rows": [m.rows for m in members], "losses": [m.losses for m in members],
             "failed": [m.failed for m in members], "write_failed": [m.write_failed for m in members],
             "precision": _precision(ens)}
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / ".last.pt.tmp"
    torch.save(state, tmp)
    if (path / "last.pt").exists():
        os.replace(path / "last.pt", path / "prev.pt")
    os.replace(tmp, path / "last.pt")
    for m in members:
        m.rd.note_progress()


def _precision(ens: Ensemble) -> str:
    return "bf16-mixed" if ens.bf16 else "32-true"


def _resume(path: Path, ens: Ensemble, members: list[_Member]) -> int:
    """Epochs done by the stack's last readable checkpoint (0 without one), its state restored."""
    for name in ("last.pt", "prev.pt"):
        p = path / name
        if not p.exists():
            continue
        try:
            s = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # a torn write or a bad disk: the previous one, else from the start
            os.replace(p, p.with_name(p.name + ".corrupt"))
            for m in members:
                m.rd.note(f"stack checkpoint {p} is unreadable ({type(e).__name__}); moved aside")
            continue
        if not {m.rd.id for m in members} <= set(s["ids"]):
            continue
        if s.get("precision", "32-true") != _precision(ens):  # e.g. a bf16 stack relaunched on a node without a GPU
            raise ConfigError(f"stack checkpoint {p} trained in {s.get('precision', '32-true')}; this job would go on "
                              f"in {_precision(ens)} on {ens.device}: relaunch where it trained, or set "
                              "train.accelerator / train.precision to match")
        idx = [s["ids"].index(m.rd.id) for m in members]  # members done since are not in this stack any more
        with torch.no_grad():
            ens.flat.copy_(s["flat"][idx])
        ens.opt.exp_avg.copy_(s["exp_avg"][idx])
        ens.opt.exp_avg_sq.copy_(s["exp_avg_sq"][idx])
        ens.opt.steps.copy_(s["steps"][idx])
        ens.tokens_seen.copy_(s["tokens_seen"][idx])
        for m, i in zip(members, idx):
            m.rows, m.losses, m.failed = s["rows"][i], s["losses"][i], s["failed"][i]
            if s.get("write_failed", [False] * len(s["ids"]))[i]:  # its outputs failed to write (a full disk, say):
                m.failed = None                                     # trained to its end, it leaves again now
        return int(s["epoch"])
    return 0


def _write_losses(m: _Member) -> None:
    """``logs/version_0/metrics.csv``: the mean training loss per epoch (0-based epochs), where and as a
    standalone run's CSV log has it (a branch's from its fork epoch on, as a non-stacked branch logs)."""
    d = m.rd.logs / "version_0"
    d.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,train/epoch_loss", *(f"{e},{v!r}" for e, v in enumerate(m.losses) if e >= m.first)]
    write_atomic(d / "metrics.csv", "\n".join(lines) + "\n")


def _fail(m: _Member, exc: BaseException) -> None:
    m.failed = f"{type(exc).__name__}: {exc}"
    m.rd.write_error(exc)
    print(f"[{m.rd.id}] failed in its stack (the other members go on): {m.failed}", flush=True)


def _epoch_batches(members: list[_Member], epoch: int):
    """The stack's steps of its epoch ``epoch`` (member k's epoch ``first + epoch``): (ids [K, B, T], labels,
    active [K], batch index, batches per member)."""
    packed = [m.dm.epoch_tensors(m.first + epoch) for m in members]
    bs, T = members[0].cfg.train.batch_size, members[0].cfg.train.seq_len
    pad = members[0].dm.pad_id
    counts = [math.ceil(ids.shape[0] / bs) for ids, _ in packed]
    for i in range(max(counts)):
        ids = torch.full((len(members), bs, T), pad, dtype=packed[0][0].dtype)
        labels = torch.full((len(members), bs, T), IGNORE, dtype=packed[0][1].dtype)
        active = torch.zeros(len(members), dtype=torch.bool)
        for k, ((pi, pl_), m) in enumerate(zip(packed, members)):
            if i < counts[k] and m.failed is None:
                rows = pi[i * bs:(i + 1) * bs]
                ids[k, :len(rows)], labels[k, :len(rows)] = rows, pl_[i * bs:(i + 1) * bs]
                active[k] = True
        yield ids, labels, active, i, counts


def run_stack(cfgs: list[RunConfig], forks: tuple[int, ...] = (), init: list[tuple[Path, str]] | None = None) -> dict:
    """Train ``cfgs`` (runs that differ only in seed, epochs and optimizer settings) as one stacked model,
    resuming from the stack's checkpoint; members already done are skipped, and a member leaves the stack
    (written as its run) after its last epoch. Returns a summary per member.

    ``forks``: epochs at which each member's ``fork_state`` is kept (a stack of cooldown-branch trunks).
    ``init``: per member, (its trunk's fork state, the trunk's id): the members are cooldown branches, each
    starting at its own fork epoch from its trunk's state while the stack has no checkpoint of its own (so
    branches of different lengths train side by side)."""
    check_stackable(cfgs)
    if init is not None and len(init) != len(cfgs):
        raise ValueError(f"{len(init)} fork states for {len(cfgs)} stack members")
    quiet_lightning()
    facts, manifest = load_corpus(cfgs[0].corpus.path)
    for c in cfgs:
        validate(c, facts)
    rds = [RunDir(c, manifest["corpus_hash"]) for c in cfgs]
    out = {"runs": [{"run_id": rd.id, "state": "done", "skipped": True} for rd in rds if rd.results.exists()]}
    todo = [(c, rd, init[i] if init else None) for i, (c, rd) in enumerate(zip(cfgs, rds)) if not rd.results.exists()]
    if not todo:
        return {**out, "state": "done"}
    held = []
    try:
        for c, rd, _ in todo:
            rd.create(min_free_mb=disk_needed_mb(c, manifest["tokens"]["vocab_size"]))
            rd.hold_lock()
            held.append(rd)
        try:
            out["runs"] += _train_stack(todo, _stack_dir(rds), facts, manifest, tuple(forks))
        except Exception as e:  # the stack itself failed: every member still to do is failed, never "interrupted"
            for _, rd, _ in todo:
                if not rd.results.exists():
                    rd.write_error(e)
            raise
    finally:
        for rd in held:
            rd.lock.release()
    out["state"] = "done" if all(r["state"] == "done" for r in out["runs"]) else "failed"
    return out


def _train_stack(todo, path: Path, facts, manifest: dict, forks: tuple[int, ...] = ()) -> list[dict]:
    from transformers import AutoTokenizer

    fault = parse_fault(os.environ.get(FAULT_ENV))
    cfgs = [c for c, _, _ in todo]
    cfg0 = cfgs[0]
    if cfg0.train.num_threads:
        torch.set_num_threads(cfg0.train.num_threads)
    tok = AutoTokenizer.from_pretrained(str(Path(cfg0.corpus.path) / "tokenizer"))
    if cfg0.probe.freq_column and cfg0.probe.freq_column in facts.columns:
        facts = facts.with_columns(frequency_buckets(facts[cfg0.probe.freq_column]))
    members = [_Member(c, rd, facts, tok, manifest) for c, rd, _ in todo]
    for m, (_, _, init) in zip(members, todo):
        m.init = init  # (its trunk's fork state, the trunk's id) for a branch, else None
        m.first = round(m.cfg.train.epochs * (1 - m.cfg.optim.decay_frac)) if init else 0
    total = [m.batches_per_epoch * m.cfg.train.epochs for m in members]  # Lightning's estimated_stepping_batches
    device, precision = stack_device(cfg0)
    ens = Ensemble.from_configs(cfgs, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, total,
                                device, bf16=precision == "bf16-mixed")
    if cfg0.train.compile:  # the stacked forward + loss (and its backward) under torch.compile, static shapes:
        use_compile_cache(cfg0)  # every step is [K, batch, seq_len] (a short last batch is padded)
        ens.compile()
    # training progress as Lightning's scheduler sees it before a member's next step: epoch + batches done / batches
    ens.schedules = [lr_lambda(c, n, progress=lambda step, m=m: m.epoch + m.i / m.n)
                     for c, n, m in zip(cfgs, total, members)]
    errors = {m.rd.id: m.rd.error.read_text() for m in members if m.rd.error.exists()}  # a new attempt clears them
    attempts, t0 = {}, time.time()

    def ended(epoch):  # members past their last epoch; a failed member keeps its (inactive) slot, so the
        return [m for m in members if m.failed is None and m.first + epoch >= m.cfg.train.epochs]  # checkpoint has it

    try:
        for m in members:
            attempts[m.rd.id] = m.rd.start_attempt()["attempts"]
        start = resumed = _resume(path, ens, members)  # the stack's epochs done (member k's: first + start)
        for m in members:
            if m.failed is not None and m.rd.id in errors:  # failed in an earlier attempt: still failed, same error
                write_atomic(m.rd.error, errors[m.rd.id])
        if not start and any(m.init for m in members):  # branches with no stack checkpoint: from their trunks' forks
            if not all(m.init for m in members):
                raise ValueError("a stack's members all start from fork states, or none does")
            _start_from_forks(ens, members, [m.init[0] for m in members])
        results: list[dict] = []
        info = {"resumed": resumed, "attempts": attempts, "t0": t0, "width": len(members), "precision": _precision(ens),
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
        results += _leave(ens, members, ended(start), tok, manifest, info)
        epoch = start
        while any(m.failed is None for m in members):
            sums, counts = torch.zeros(len(members), device=device), torch.zeros(len(members))  # one sync an epoch
            for m in members:
                m.epoch = m.first + epoch
            for ids, labels, active, i, per_member in _epoch_batches(members, epoch):
                for m, n in zip(members, per_member):
                    m.i, m.n = i, n
                losses = ens.train_step(ids, labels, active)
                sums += torch.where(active.to(device, non_blocking=True), losses, 0.0)
                counts += active
            epoch += 1
            for k, m in enumerate(members):
                if m.failed is None:
                    _after_epoch(m, ens, k, float(sums[k].cpu() / counts[k].clamp(min=1)), m.first + epoch, start)
                    if m.first + epoch in forks and m.failed is None:  # before the stack's checkpoint: a kill in
                        _save_fork(ens, k, m, m.first + epoch)         # between redoes the epoch
            hit = fault and any(m.first + epoch == fault[1] and fault[2] == attempts[m.rd.id] for m in members)
            results += _leave(ens, members, ended(epoch), tok, manifest, info)
            if members:
                _save(path, ens, members, epoch)
            if hit:  # after the epoch's checkpoint (and the writes of members that ended with it)
                inject_fault(fault[0], fault[1])
        results += [{"run_id": m.rd.id, "state": "failed", "error": m.failed} for m in members]
    finally:
        for m in members:
            m.rd.end_attempt(time.time() - t0)
    if all(r["state"] == "done" for r in results):  # else a relaunch finds the failed members where they failed
        for name in ("last.pt", "prev.pt"):
            (path / name).unlink(missing_ok=True)
        for d in (path, path.parent):  # the stack's directory, then _stacks if it was the last
            try:
                d.rmdir()
            except OSError:
                break
    return results


def _after_epoch(m: _Member, ens: Ensemble, k: int, mean: float, done: int, start: int) -> None:
    """A member's epoch ``done`` is over: its loss (NaN guard), its probe at its probe epochs, its progress."""
    E = m.cfg.train.epochs
    try:
        if not math.isfinite(mean):
            raise FloatingPointError(f"training loss is {mean} in epoch {done}: the run diverged; lower optim.lr "
                                     "or set optim.grad_clip")
        m.losses.append(mean)
        if done % m.cfg.probe.every_epochs == 0 or done == E:
            rows = probe_and_record(m.prober, ens.member(k), done, int(ens.opt.steps[k]), int(ens.tokens_seen[k]),
                                    m.rd.history)
            m.rows.extend(rows)
            mr = {r["split"]: r["mr"] for r in rows if r["group_by"] == "all"}
            print(f"[{m.rd.id}] epoch {done}/{E}: " + ", ".join(f"{s} MR {v:.3f}" for s, v in mr.items()), flush=True)
            m.rd.write_progress(done, E, mr, resumed_from=m.first + start)
    except Exception as e:
        _fail(m, e)


def _leave(ens: Ensemble, members: list[_Member], leaving: list[_Member], tok, manifest: dict, info: dict) -> list:
    """Members past their last epoch leave the stack: each is written as its run, its attempt ends, and the
    ensemble keeps only the others (no step computes a finished member). A member whose outputs fail to
    write is failed and keeps its slot, like any failed member."""
    out, gone = [], []
    for m in leaving:
        k = members.index(m)
        m.dm.epoch_tensors(m.cfg.train.epochs - 1)  # real_fraction of the last epoch, as a standalone run has it
        # train_wall_s: the stack's so far (its members train at once); device and precision: what it ran on
        meta = {"resumed_from_epoch": (m.first + info["resumed"]) if info["resumed"] else None,
                "attempts": info["attempts"][m.rd.id], "train_wall_s": time.time() - info["t0"],
                "stack_members": info["width"], "device": info["device"], "precision": info["precision"]}
        if m.init:
            meta.update(branch_of=m.init[1], fork_epoch=m.first)
        try:
            _write_losses(m)
            out.append(write_run(m.cfg, m.rd, ens.member(k), tok, m.dm, manifest, m.rows, m.prober.last_tables, meta))
        except Exception as e:  # this member's outputs failed: the others are still written
            _fail(m, e)
            m.write_failed = True
            continue
        m.rd.end_attempt(time.time() - info["t0"])
        gone.append(m)
    if gone:
        keep = [k for k, m in enumerate(members) if m not in gone]
        if keep:
            ens.keep(keep)
        members[:] = [members[k] for k in keep]
    return out

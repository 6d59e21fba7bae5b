"""Probe any local causal LM on a corpus: ``factscale probe MODEL_DIR CORPUS``.

A released model (or any ``from_pretrained`` directory: a factscale run's ``model/`` too) gets the same
probes as a from-scratch run - exact match, code length and memorized bits, the key-blind baseline - so what
it knows of a corpus sits in the same results vocabulary as the sweeps' runs.

Tokens: each fact's text (``prompt + " " + value``) is encoded with the model's own tokenizer. Where a token
of that encoding begins at the space before the value, the value starts there (the same rule as the corpus
build, ``corpus.render.tokenize``: a factscale model re-probed this way gets its own corpus' ids back).
Where no token begins there (the tokenizer merged across the boundary), the fact is **re-aligned**: the
prompt and ``" " + value`` are encoded separately and concatenated, so the value's tokens are exactly the
value's; the count is reported. ``<bos>`` is prepended when the tokenizer has one; ``<eos>`` is appended (and
must follow the value for an exact match, as in a run's probe) unless ``eos=False``: a released model has no
reason to end a sentence after a fact's value, so for it exact match and code length cover the value only.
Priors: synthetic facts keep their exact entropy; others get the empirical prior of the training split,
computed by the probe as for a run (``probing.measures.with_prior``) over this tokenizer's vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from factscale.corpus.render import DOMAIN_TAG, DOMAIN_TAG_ID
from factscale.errors import CollectError

# config fields of transformers models that change the logits after the output head (Gemma-2, Cohere, Granite)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def encode_for(facts: pl.DataFrame, tokenizer, eos: bool = True) -> tuple[pl.DataFrame, int]:
    """``facts`` with ``input_ids`` and ``value_start`` in ``tokenizer``'s ids; and the number re-aligned."""
    texts, prompts = facts["text"].to_list(), facts["prompt"].to_list()
    joint = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    to_id = getattr(tokenizer, "convert_tokens_to_ids", None)
    if to_id is not None and to_id(DOMAIN_TAG) == DOMAIN_TAG_ID:  # a junk corpus' tokenizer, maybe a tagged run's
        prefix = tokenizer("", add_special_tokens=True)["input_ids"]
        if DOMAIN_TAG_ID in prefix:  # it prefixes <bos> <domain>, as the run trained and probed every fact
            bos = list(prefix)
    end = [tokenizer.eos_token_id] if eos and tokenizer.eos_token_id is not None else []
    if eos and not end:
        raise CollectError("the tokenizer has no eos token: probe with eos=False (--no-eos)")
    ids, starts, realigned = [], [], 0
    for k, (text, prompt) in enumerate(zip(texts, prompts)):
        space = len(prompt)
        if not text.startswith(prompt) or text[space:space + 1] != " ":
            raise CollectError(f"fact {facts['fact_id'][k]}: text is not prompt + ' ' + value; not a factscale corpus?")
        at = [t for t, (a, _) in enumerate(joint["offset_mapping"][k]) if a == space]
        if at:
            tok, vs = joint["input_ids"][k], at[0]
        else:  # merged across the boundary: the value's own tokens after the prompt's
            realigned += 1
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            v = list(tokenizer(text[space:], add_special_tokens=False)["input_ids"])
            # a tokenizer that prefixes a word marker itself (SentencePiece legacy) encodes " x" as two leading
            # whitespace pieces: keep one, so the value is not charged for a token the text does not have
            while len(v) > 1 and not tokenizer.decode(v[:2]).strip():
                v = v[1:]
            tok, vs = p + v, len(p)
        ids.append(bos + list(tok) + end)
        starts.append(len(bos) + vs)
    return facts.with_columns(pl.Series("input_ids", ids, dtype=pl.List(pl.Int32)),
                              pl.Series("value_start", starts, dtype=pl.Int32)), realigned


def probe_model(model_dir: str | Path, corpus: str | Path, eos: bool = True, max_train_facts: int | None = None,
                batch_size: int = 256, group_columns: list[str] = ()) -> tuple[pl.DataFrame, dict]:
    """Result rows (one per split x breakdown group, the columns of a run's rows where they apply) of the
    model in ``model_dir`` on ``corpus``, and what was done (re-aligned facts, parameter counts)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from factscale.corpus.build import load_corpus
    from factscale.probing.engine import Prober
    from factscale.probing.measures import probe_sample
    from factscale.training.models import count_instantiated

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise CollectError(f"{model_dir}: not a from_pretrained model directory (no config.json); for a run, "
                           "give its model/ folder")
    facts, manifest = load_corpus(corpus)
    hf_logging.disable_progress_bar()  # one summary line per split instead
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    scaled = {k: getattr(model.config, k) for k in LOGIT_TRANSFORMS if getattr(model.config, k, None) not in (None, 1, 1.0)}
    if scaled:  # the probe applies the output head itself, at the value positions only
        raise CollectError(f"{model_dir}: the model transforms its logits ({scaled}); the probe's code lengths "
                           "would not be the model's, so it is refused")
    model.eval()
    non_emb, total = count_instantiated(model)
    facts = facts.filter(pl.col("split") != "junk")  # a junk pool is training text, never probed
    facts, realigned = encode_for(facts, tokenizer, eos)
    train = facts.filter(pl.col("split") == "train").sort("order")
    heldout = facts.filter(pl.col("split") == "heldout").sort("order")
    pad = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    sets = {"train": probe_sample(train, max_train_facts), **({"heldout": heldout} if heldout.height else {})}
    prober = Prober(sets, batch_size, pad, non_emb, list(group_columns), train_facts=train, total_params=total,
                    donors=heldout if heldout.height else None)
    rows = pl.DataFrame(prober.probe(model, 0, 0, 0))
    info = {"model": str(model_dir), "corpus": str(corpus), "corpus_hash": manifest.get("corpus_hash"),
            "facts": facts.height, "realigned": realigned, "eos": eos, "non_embedding_params": non_emb,
            "total_params": total, "vocab_size": model.config.vocab_size}
    return rows.with_columns(run_id=pl.lit(model_dir.name), model_path=pl.lit(str(model_dir.resolve())),
                             corpus_hash=pl.lit(info["corpus_hash"]), non_embedding_params=pl.lit(non_emb),
                             total_params=pl.lit(total), vocab_size=pl.lit(info["vocab_size"]),
                             realigned_facts=pl.lit(realigned), eos_scored=pl.lit(eos)), info

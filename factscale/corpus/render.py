"""Facts -> text with an exact value span, and a byte-level BPE tokenizer trained on the corpus.

Every fact renders as ``<bos> PROMPT + " " + VALUE <eos>``: the prompt is the relation template up to
the value slot (key substituted), the value follows after one space and nothing follows the value but
the end-of-fact token. With a GPT-2 style byte-level pre-tokenizer a space-prefixed word always starts
a new pre-token, so the value starts at a token boundary; the end-of-fact token closes it. Each fact is
still checked (tokens(prompt) + tokens(" " + value) == tokens(text)) and dropped, counted, if not.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import polars as pl

from factscale.corpus.verbalize import relation_template
from factscale.errors import CorpusError

SPECIALS = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>"}
# a junk corpus' tokenizer (``--variant junk``) adds this special token after the three above, so its id is
# 3; ``train.domain_tag`` prefixes it to every useful fact (Allen-Zhu & Li 2024's domain name)
DOMAIN_TAG, DOMAIN_TAG_ID = "<domain>", 3
GENERIC_TEMPLATE = "The [R] of [X] is [Y]"


def load_lama_templates(path: str | Path) -> dict[str, dict]:
    """LAMA/T-REx ``relations.jsonl``: relation -> {template, label, type}."""
    expected = 'one JSON object per line with "relation" and "template", e.g. {"relation": "P17", "template": ' \
               '"[X] is located in [Y] ."}'
    out = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                    out[r["relation"]] = r
                    r["template"]  # noqa: B018  (a template file without templates is not one)
                except (ValueError, KeyError, TypeError) as e:
                    raise CorpusError(f"{path}: line {n}: not a LAMA template ({type(e).__name__}); expected {expected}") \
                        from None
    except UnicodeDecodeError:
        raise CorpusError(f"{path}: not a text file (binary content); expected {expected}") from None
    return out


def prompt_template(template: str | None, relation_label: str | None = None, many: bool = False) -> str:
    """The usable prefix of a template: text before [Y], which must contain [X] before it.

    Templates where the value comes before the key (``[Y] is the capital of [X]``) cannot be probed by
    "everything before the value": they, and relations without a template, use a sentence built from the
    relation label (``verbalize.relation_template``: "[X] shares border with [Y]", "The capital of [X] is
    [Y]"); without a label, the generic template with ``[R]`` for the relation.
    """
    if not (template and "[X]" in template and "[Y]" in template and template.index("[X]") < template.index("[Y]")):
        template = relation_template(relation_label, many) if relation_label else GENERIC_TEMPLATE
    return template[: template.index("[Y]")].rstrip()


def render(facts: pl.DataFrame) -> pl.DataFrame:
    """Add prompt, text and character span of the value. Needs key, relation_label, value, template."""
    cache: dict = {}  # one template per relation: millions of facts share a few thousand relations
    prompts = []
    cards = facts["cardinality"] if "cardinality" in facts.columns else [None] * facts.height
    for t, r, k, card in zip(facts["template"], facts["relation_label"], facts["key"], cards):
        many = card in ("N-M", "1-M")  # several values per subject: "A twinned ... of X is", not "The"
        if (t, r, many) not in cache:
            cache[t, r, many] = prompt_template(t, r, many).replace("[R]", r or "")
        prompts.append(cache[t, r, many].replace("[X]", k))
    return facts.with_columns(
        pl.Series("prompt", prompts, dtype=pl.String),
    ).with_columns(
        text=pl.col("prompt") + " " + pl.col("value"),
        value_char_start=pl.col("prompt").str.len_chars() + 1,
    ).with_columns(value_char_end=pl.col("text").str.len_chars())


def train_tokenizer(texts, vocab_size: int, out_dir: str | Path, domain_tag: bool = False):
    """Train a byte-level BPE on the rendered facts; save it in Hugging Face format.

    ``texts``: a list or polars Series of texts (fed in chunks, never all as Python strings at once), or an
    iterator of lists of texts (a bucketed build reads them part by part). With
    ``domain_tag`` the tokenizer also holds ``DOMAIN_TAG`` (id ``DOMAIN_TAG_ID``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIALS.values(), *([DOMAIN_TAG] if domain_tag else [])],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    chunks = texts
    if isinstance(texts, (list, pl.Series)):
        chunks = (texts[i:i + 65_536] for i in range(0, len(texts), 65_536))
    tok.train_from_iterator((c.to_list() if isinstance(c, pl.Series) else c for c in chunks), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIALS["bos"],
        eos_token=SPECIALS["eos"],
        pad_token=SPECIALS["pad"],
        **({"additional_special_tokens": [DOMAIN_TAG]} if domain_tag else {}),
    )
    if domain_tag and hf.convert_tokens_to_ids(DOMAIN_TAG) != DOMAIN_TAG_ID:
        raise RuntimeError(f"{DOMAIN_TAG} has id {hf.convert_tokens_to_ids(DOMAIN_TAG)}, not {DOMAIN_TAG_ID}")
    hf.save_pretrained(str(out_dir))
    return hf


def tokenize(facts: pl.DataFrame, tokenizer, batch_size: int = 32_768) -> tuple[pl.DataFrame, int]:
    """Add input_ids (bos + text + eos) and value_start; drop facts whose value is not token-aligned.

    Each text is encoded once, a batch at a time, into flat int32 arrays (memory stays bounded: only one
    batch's encodings are Python objects). The value starts at the token that begins at the space
    before the value (found from the token offsets); a fact is aligned iff such a token exists - then
    the text's tokens are the prompt's followed by those of " " + value (the three-encoding check this
    replaces, ``reference.tokenize_reference``, agrees fact by fact in the tests).
    Returns (facts, number dropped for misalignment).
    """
    import pyarrow as pa

    tok = tokenizer.backend_tokenizer
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    n = facts.height
    space = facts["prompt"].str.len_chars().to_numpy()  # char index of the space before the value
    # the token test below presumes text = prompt + " " + value (what render() makes); check it too
    ok_text = facts.select(pl.col("text") == pl.col("prompt") + " " + pl.col("value")).to_series().fill_null(False)
    lengths = np.empty(n, dtype=np.int64)
    starts = np.zeros(n, dtype=np.int32)
    ok = np.zeros(n, dtype=bool)
    chunks = []
    for b in range(0, n, batch_size):
        enc = tok.encode_batch(facts["text"].slice(b, batch_size).to_list(), add_special_tokens=False)
        ids = [e.ids for e in enc]
        chunks.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32,
                                  count=sum(len(x) for x in ids)))
        for j, e in enumerate(enc):
            sp = int(space[b + j])
            t = e.char_to_token(sp)
            if t is not None and e.token_to_chars(t)[0] == sp:
                ok[b + j], starts[b + j] = True, 1 + t
            lengths[b + j] = len(ids[j]) + 2
        del enc, ids
    text_tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    del chunks
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.empty(offsets[-1], dtype=np.int32)
    flat[offsets[:-1]] = bos
    flat[offsets[1:] - 1] = eos
    # text token k of fact i lands after the i + 1 special tokens before it
    flat[np.arange(len(text_tokens)) + np.repeat(2 * np.arange(n) + 1, lengths - 2)] = text_tokens
    del text_tokens
    input_ids = pl.Series("input_ids", pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat)))
    out = facts.with_columns(
        input_ids.cast(pl.List(pl.Int32)),
        pl.Series("value_start", starts, dtype=pl.Int32),
        pl.Series("_aligned", ok & ok_text.to_numpy()),
    )
    n_bad = out.height - int(out["_aligned"].sum())
    out = out.filter(pl.col("_aligned")).drop("_aligned")
    # value tokens plus the end-of-fact token: what the memorization probe must reproduce
    out = out.with_columns(n_value_tokens=(pl.col("input_ids").list.len() - pl.col("value_start")).cast(pl.Int32))
    return out, n_bad


def flat_tokens(col: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """A list column of token ids as (flat int32 ids, int64 offsets of length n + 1).

    Arrow already stores a list column this way; this is one copy, never a Python object per fact.
    """
    lengths = col.list.len().to_numpy().astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = col.cast(pl.List(pl.Int32)).explode().to_numpy()
    if len(flat) != offsets[-1] or (lengths == 0).any():
        raise ValueError("input_ids has empty or null rows; rebuild the corpus with `factscale corpus build`")
    flat = np.ascontiguousarray(flat, dtype=np.int32)
    return (flat if flat.flags.writeable else flat.copy()), offsets  # torch wants writable memory

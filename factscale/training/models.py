"""A named size registry of decoder shapes -> ``transformers`` configs, with exact parameter counts.

Every law is fitted against *non-embedding* parameters: everything except the token embedding, an
untied output head and learned position embeddings (GPT-2's ``wpe``). ``non_embedding_params`` is a
closed form (so ``sweep plan`` needs no model), proven equal to the instantiated model in the tests.
Registry names give the approximate Qwen2 non-embedding count; ``factscale sizes`` prints exact ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from factscale.errors import ConfigError
from factscale.training.config import ModelConfig


@dataclass(frozen=True)
class Shape:
    n_layers: int
    hidden: int
    heads: int
    ffn: int  # the MLP's inner width; with experts, each expert's
    kv_heads: int | None = None
    experts: int = 0  # > 0: a sparse mixture-of-experts MLP in every layer (Qwen2-MoE)
    top_k: int = 0  # experts each token is routed to
    shared_ffn: int = 0  # the always-on shared expert's inner width (0: none)


# Roughly x3 apart from ~2k to ~300M non-embedding params (Lu et al. span 0.6M-308M), with 1k and 7k filling in.
# 500, 900, 2k, 5k and 7k are one depth family (2 layers, width 4-16): the demo's sizes vary width only, so
# its size law is not a mix of depths. Head dims stay even (RoPE); FFN ~2.75x hidden for the gated MLPs.
SIZES: dict[str, Shape] = {
    "500": Shape(2, 4, 1, 12),
    "900": Shape(2, 6, 1, 16),
    "1k": Shape(1, 8, 2, 22),
    "2k": Shape(2, 8, 2, 22),
    "5k": Shape(2, 12, 2, 32),
    "7k": Shape(2, 16, 2, 44),
    "10k": Shape(3, 16, 2, 44),
    "20k": Shape(3, 24, 2, 64),
    "30k": Shape(3, 28, 2, 78),
    "50k": Shape(3, 36, 2, 100),
    "100k": Shape(4, 48, 4, 132),
    "300k": Shape(6, 64, 4, 176),
    "1m": Shape(5, 128, 4, 352),
    "3m": Shape(7, 192, 6, 528),
    "10m": Shape(8, 320, 5, 880),
    "30m": Shape(10, 512, 8, 1408),
    "100m": Shape(14, 768, 12, 2112),
    "300m": Shape(24, 1024, 16, 2816),
    # mixture-of-experts (Qwen2-MoE, 4 experts, top-1) beside the dense 5k: matched in total non-embedding
    # parameters (3,708 vs 3,588; 1,980 per token) and in parameters per token (3,708 per token, 10,620 total)
    "5k-moe-total": Shape(2, 12, 2, 8, experts=4, top_k=1),
    "5k-moe-active": Shape(2, 12, 2, 32, experts=4, top_k=1),
}
ARCHS = ("qwen2", "llama", "gpt2")


def resolve_shape(cfg: ModelConfig) -> Shape:
    if cfg.size is not None:
        if cfg.size not in SIZES:
            raise ConfigError(f"model.size {cfg.size!r} is not in the registry; allowed values: {list(SIZES)}")
        base = SIZES[cfg.size]
        # explicit fields override a registry entry (e.g. size=1m with n_layers=2)
        shape = Shape(cfg.n_layers or base.n_layers, cfg.hidden or base.hidden, cfg.heads or base.heads,
                      cfg.ffn or base.ffn, cfg.kv_heads or base.kv_heads,
                      base.experts if cfg.experts is None else cfg.experts,
                      cfg.experts_per_token or base.top_k, cfg.shared_expert_ffn or base.shared_ffn)
    else:
        shape = Shape(cfg.n_layers, cfg.hidden, cfg.heads, cfg.ffn, cfg.kv_heads, cfg.experts or 0,
                      cfg.experts_per_token or 0, cfg.shared_expert_ffn or 0)
    if shape.experts:
        if cfg.arch != "qwen2":
            raise ConfigError(f"model.experts: mixture-of-experts models are Qwen2-MoE; model.arch must be qwen2, "
                              f"got {cfg.arch!r}")
        if not 1 <= shape.top_k <= shape.experts:
            raise ConfigError(f"model.experts_per_token must be in [1, experts={shape.experts}], got {shape.top_k}")
    if shape.hidden % shape.heads:
        raise ConfigError(f"model.hidden ({shape.hidden}) must be divisible by model.heads ({shape.heads})")
    if shape.kv_heads and shape.heads % shape.kv_heads:
        raise ConfigError(f"model.heads ({shape.heads}) must be divisible by model.kv_heads ({shape.kv_heads})")
    if cfg.arch != "gpt2" and (shape.hidden // shape.heads) % 2:
        raise ConfigError(f"model: head dim hidden/heads = {shape.hidden // shape.heads} must be even for RoPE")
    return shape


def non_embedding_params(arch: str, s: Shape) -> int:
    """Exact count of parameters outside token/position embeddings and the output head."""
    h, f, L = s.hidden, s.ffn, s.n_layers
    if s.experts and arch != "qwen2":
        raise ConfigError(f"a mixture-of-experts shape is Qwen2-MoE: model.arch must be qwen2, got {arch!r}")
    if arch == "gpt2":
        per_layer = (2 * h) + (h * 3 * h + 3 * h) + (h * h + h) + (2 * h) + (h * f + f) + (f * h + h)
        return L * per_layer + 2 * h
    if arch not in ("qwen2", "llama"):
        raise ConfigError(f"model.arch {arch!r}; allowed values: {list(ARCHS)}")
    hd = h // s.heads
    q, kv = s.heads * hd, (s.kv_heads or s.heads) * hd
    attn = h * q + 2 * h * kv + q * h
    if arch == "qwen2":  # Qwen2 has biases on q, k, v (not o)
        attn += q + 2 * kv
    per_layer = attn + _mlp(s, s.experts) + 2 * h  # gated MLP (gate, up, down) + two RMSNorms
    return L * per_layer + h  # + final norm


def _mlp(s: Shape, experts: int) -> int:
    """A layer's MLP parameters: dense gated (gate, up, down), or Qwen2-MoE's sparse block with ``experts``
    of its experts counted: the router (hidden x all experts), the experts, the shared expert and its gate."""
    h = s.hidden
    if not s.experts:
        return 3 * h * s.ffn
    return h * s.experts + experts * 3 * h * s.ffn + 3 * h * s.shared_ffn + h


def params_per_token(arch: str, s: Shape) -> int:
    """Non-embedding parameters one token passes through: all of them for a dense model; for a mixture of
    experts, the router, the token's ``top_k`` experts and the shared expert (the experts it is not routed
    to do not count)."""
    if not s.experts:
        return non_embedding_params(arch, s)
    return non_embedding_params(arch, s) - s.n_layers * (_mlp(s, s.experts) - _mlp(s, s.top_k))


def embedding_params(arch: str, s: Shape, vocab_size: int, tie: bool, max_position: int) -> int:
    n = vocab_size * s.hidden * (1 if tie else 2)
    if arch == "gpt2":
        n += max_position * s.hidden
    return n


def hf_config(cfg: ModelConfig, vocab_size: int, bos_id: int = 1, eos_id: int = 2, pad_id: int = 0):
    """The transformers config for a model of this shape over the corpus tokenizer's vocabulary."""
    s = resolve_shape(cfg)
    common = dict(vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
                  tie_word_embeddings=cfg.tie_embeddings)
    if cfg.arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(n_embd=s.hidden, n_layer=s.n_layers, n_head=s.heads, n_inner=s.ffn,
                          n_positions=cfg.max_position, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          **common)
    if cfg.arch == "qwen2" and s.experts:
        from transformers import Qwen2MoeConfig

        return Qwen2MoeConfig(hidden_size=s.hidden, moe_intermediate_size=s.ffn, intermediate_size=s.ffn,
                              num_experts=s.experts, num_experts_per_tok=s.top_k,
                              shared_expert_intermediate_size=s.shared_ffn, decoder_sparse_step=1, mlp_only_layers=[],
                              norm_topk_prob=False, router_aux_loss_coef=cfg.router_aux_coef,
                              num_hidden_layers=s.n_layers, num_attention_heads=s.heads,
                              num_key_value_heads=s.kv_heads or s.heads, max_position_embeddings=cfg.max_position,
                              attention_dropout=0.0, **common)
    if cfg.arch == "qwen2":
        from transformers import Qwen2Config as Cfg
    elif cfg.arch == "llama":
        from transformers import LlamaConfig as Cfg
    else:
        raise ConfigError(f"model.arch {cfg.arch!r}; allowed values: {list(ARCHS)}")
    return Cfg(hidden_size=s.hidden, intermediate_size=s.ffn, num_hidden_layers=s.n_layers,
               num_attention_heads=s.heads, num_key_value_heads=s.kv_heads or s.heads,
               max_position_embeddings=cfg.max_position, attention_dropout=0.0, **common)


def build_model(cfg: ModelConfig, vocab_size: int, bos_id: int = 1, eos_id: int = 2, pad_id: int = 0):
    from transformers import AutoModelForCausalLM

    hf = hf_config(cfg, vocab_size, bos_id, eos_id, pad_id)
    return AutoModelForCausalLM.from_config(hf, attn_implementation="sdpa")


def count_instantiated(model) -> tuple[int, int]:
    """(non-embedding, total) parameters of a built model, found from the model's own embedding modules."""
    emb = {id(p) for p in model.get_input_embeddings().parameters()}
    head = model.get_output_embeddings()
    if head is not None:
        emb |= {id(p) for p in head.parameters()}
    for name, mod in model.named_modules():
        if name.endswith("wpe"):  # GPT-2's learned position embeddings
            emb |= {id(p) for p in mod.parameters()}
    params = {id(p): p for p in model.parameters()}  # tied weights counted once
    total = sum(p.numel() for p in params.values())
    non_emb = sum(p.numel() for i, p in params.items() if i not in emb)
    return non_emb, total


def size_table(arch: str, vocab_size: int, tie: bool = True, max_position: int = 512) -> list[dict]:
    rows = []
    for name, s in SIZES.items():
        if s.experts and arch != "qwen2":
            continue  # mixture-of-experts entries are Qwen2-MoE
        ne = non_embedding_params(arch, s)
        rows.append({"size": name, "arch": arch, "layers": s.n_layers, "hidden": s.hidden, "heads": s.heads,
                     "ffn": s.ffn, "experts": f"{s.experts} (top-{s.top_k})" if s.experts else "-",
                     "non_embedding": ne, "per_token": params_per_token(arch, s),
                     "total": ne + embedding_params(arch, s, vocab_size, tie, max_position)})
    return rows

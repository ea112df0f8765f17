"""A Qwen2 / Qwen2.5 decoder in plain PyTorch, its Hugging Face checkpoint loader, and a KV-cached batched sampler.

    model = Transformer.from_pretrained("Qwen2.5-3B", device="cuda", dtype=torch.bfloat16)
    tok = load_tokenizer("Qwen2.5-3B")
    out = generate(model, [tok.encode("Hello").ids], max_new_tokens=64, temperature=0.7, eos_id=model.args.eos_ids)
    out.tokens, out.logprobs   # new tokens of each prompt, and each one's log-probability (see Generation)

Parameter names are Hugging Face's (`model.layers.0.self_attn.q_proj.weight`, ...), so `save_pretrained` writes a
folder that `transformers` and `Transformer.from_pretrained` both read. The file reads top to bottom: config, layers,
model, loading and saving, then the sampler. `python model.py CKPT "prompt"` samples from a checkpoint.
"""

import json
import math
import numbers
import operator
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Config


@dataclass
class ModelArgs:
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 256
    norm_eps: float = 1e-6
    rope_theta: float = 1e6
    tie_embeddings: bool = True
    max_seq_len: int = 2048
    eos_id: int | None = None  # the end-of-text token (ends SFT targets, pads batches)
    bos_id: int | None = None
    head_dim: int | None = None  # per attention head; None: dim // n_heads, as in every Qwen2.5 checkpoint
    eos_ids: tuple[int, ...] = ()  # every token that ends a reply, eos_id first (instruct models list two)

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads
        self.eos_ids = tuple(dict.fromkeys(([] if self.eos_id is None else [self.eos_id]) + list(self.eos_ids)))
        if self.eos_id is None and self.eos_ids:
            self.eos_id = self.eos_ids[0]

    @classmethod
    def from_hf_config(cls, cfg: dict, where: str = "config.json") -> "ModelArgs":
        """Reads a Qwen2 `config.json` in either style: transformers 4.x (top-level `rope_theta`, `torch_dtype`),
        as Qwen2.5 checkpoints ship it, or 5.x (`rope_parameters`, `dtype`, `layer_types`). Anything this model
        does not implement is an error rather than a silently different model."""

        def fail(msg):
            raise ValueError(f"{where}: {msg}")

        if not isinstance(cfg, dict):
            fail(f"expected a JSON object at the top level, got {type(cfg).__name__}")
        if cfg.get("model_type") != "qwen2":
            fail(f"model_type {cfg.get('model_type')!r} is not supported; this model implements 'qwen2' only")
        arch = cfg.get("architectures") or ["Qwen2ForCausalLM"]
        if arch != ["Qwen2ForCausalLM"]:
            fail(f"architectures {arch} is not supported; expected ['Qwen2ForCausalLM']")
        if cfg.get("hidden_act", "silu") not in ("silu", "swish"):  # transformers maps both to SiLU
            fail(f"hidden_act {cfg['hidden_act']!r} is not supported; expected 'silu'")
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if not is_int(cfg.get(key)) or cfg[key] <= 0:
                fail(f"{key}: expected a positive integer, got {cfg.get(key)!r}")
        eps = cfg.get("rms_norm_eps", 1e-6)
        if not is_number(eps) or eps <= 0:
            fail(f"rms_norm_eps: expected a positive number, got {eps!r}")
        types = cfg.get("layer_types")
        if types is None:  # as transformers derives them: with a sliding window, layers from max_window_layers on
            window = cfg.get("use_sliding_window", False) and cfg.get("sliding_window", 4096) is not None
            types = ["sliding_attention" if window and i >= cfg.get("max_window_layers", 28) else "full_attention"
                     for i in range(cfg["num_hidden_layers"])]
        if not isinstance(types, list) or len(types) != cfg["num_hidden_layers"]:
            fail(f"layer_types: expected a list of one type per layer ({cfg['num_hidden_layers']}), got {types!r:.80}")
        if any(t != "full_attention" for t in types):
            fail(f"layer_types {sorted(set(types))} (from layer_types or use_sliding_window) is not supported; "
                 "sliding-window attention is not implemented, only 'full_attention' is")
        for key in ("rope_scaling", "rope_parameters"):
            rope = cfg.get(key) or {}
            if not isinstance(rope, dict):
                fail(f"{key}: expected an object or null, got {rope!r}")
            kind = rope.get("rope_type", rope.get("type", "default"))
            if kind != "default":
                fail(f"{key} with rope_type {kind!r} is not supported; only plain RoPE ('default') is implemented")
        params = cfg.get("rope_parameters") or {}
        theta = params["rope_theta"] if "rope_theta" in params else cfg.get("rope_theta", 10000.0)  # HF's default
        if not is_number(theta) or theta <= 0:
            fail(f"rope_theta: expected a positive number, got {theta!r}")
        n_heads = cfg["num_attention_heads"]
        n_kv = cfg.get("num_key_value_heads")
        n_kv = n_heads if n_kv is None else n_kv  # as transformers: absent means one KV head per query head
        if not is_int(n_kv) or n_kv <= 0:
            fail(f"num_key_value_heads: expected a positive integer, got {n_kv!r}")
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
        if not is_int(head_dim) or head_dim <= 0 or head_dim % 2:
            fail(f"head_dim: expected a positive even integer (RoPE rotates halves), got {head_dim!r}")
        if n_heads % n_kv:
            fail(f"num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv}")
        if not cfg.get("head_dim") and cfg["hidden_size"] % n_heads:
            fail(f"hidden_size {cfg['hidden_size']} is not a multiple of num_attention_heads {n_heads} "
                 "(and no head_dim is given)")
        max_pos = cfg.get("max_position_embeddings", 32768)
        if not is_int(max_pos) or max_pos <= 0:
            fail(f"max_position_embeddings: expected a positive integer, got {max_pos!r}")
        eos = token_ids(cfg.get("eos_token_id"), "eos_token_id", fail)
        return cls(
            dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=n_heads, n_kv_heads=n_kv,
            intermediate_size=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
            norm_eps=float(eps), rope_theta=float(theta),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_seq_len=max_pos, eos_ids=eos, bos_id=cfg.get("bos_token_id"), head_dim=head_dim,
        )

    def to_hf_config(self, dtype: torch.dtype = torch.float32) -> dict:
        """The transformers 4.x style that Qwen2.5 checkpoints ship; transformers 5.x reads it too."""
        return {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
            "hidden_size": self.dim, "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads, "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size, "rms_norm_eps": self.norm_eps, "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_embeddings, "max_position_embeddings": self.max_seq_len,
            "eos_token_id": list(self.eos_ids) if len(self.eos_ids) > 1 else self.eos_id, "bos_token_id": self.bos_id,
            "use_sliding_window": False, "attention_dropout": 0.0, "torch_dtype": str(dtype).removeprefix("torch."),
        }


def is_int(x):  # JSON's true and false are ints to Python
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def token_ids(value, key, fail) -> tuple[int, ...]:
    """A config's token id field (null, an id, or a list of ids, as eos_token_id may be) as a tuple."""
    ids = [] if value is None else value if isinstance(value, list) else [value]
    if not all(is_int(i) and i >= 0 for i in ids):
        fail(f"{key}: expected a token id or a list of them, got {value!r}")
    return tuple(ids)


# -----------------------------------------------------------------------------
# Layers


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in fp32 and cast back before the weight, exactly as Qwen2 does, so bf16 results agree
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_tables(args: ModelArgs, device=None):
    """cos/sin of every position, [max_seq_len, head_dim], fp32 (cast to the activation dtype at use)."""
    hd = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device=device).float() / hd))
    freqs = torch.arange(args.max_seq_len, device=device).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """x [B, H, T, hd]; cos, sin [B, 1, T, hd] in x's dtype. Qwen2 rotates the two halves of each head (not
    interleaved pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class KVCache(nn.Module):
    """Static, pre-allocated keys and values for one layer: [B, n_kv_heads, S, head_dim]."""

    def __init__(self, batch, n_kv_heads, length, head_dim, dtype, device):
        super().__init__()
        shape = (batch, n_kv_heads, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, idx, k, v):
        # index_copy_ with a device tensor keeps shapes static (one CUDA graph for every decode step)
        self.k.index_copy_(2, idx, k)
        self.v.index_copy_(2, idx, v)
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.q_proj = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x, cos, sin, mask, cache_idx=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache_idx is not None:  # generating: write this call's keys and values to the static cache
            ck, cv = self.cache.update(cache_idx, k, v)
            if mask is not None and mask.shape[-1] == ck.shape[2]:  # a decode step: its mask spans the whole cache
                k, v = ck, cv  # (the prefill, slots 0..T-1, attends over its own keys, a one-token prompt included)
        return self.o_proj(attend(q, k, v, mask).transpose(1, 2).reshape(B, T, -1))


def attend(q, k, v, mask):
    """Attention with grouped-query heads: q [B, H, T, hd], k and v [B, H_kv, S, hd], mask None (causal) or
    broadcastable to [B, 1, T, S]. SDPA's fused CUDA kernels take a mask or grouped heads, not both (flash takes no
    mask), and its math fallback would copy the keys and values for every query head, for every layer and token.
    So: no mask, grouped flash; a one-token query (a decode step), its head groups folded into the query axis,
    which needs no copy; a longer query with a mask, keys and values repeated for the memory-efficient kernel."""
    B, H, T, hd = q.shape
    groups = H // k.shape[1]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=groups > 1)
    if groups > 1 and T == 1:
        return F.scaled_dot_product_attention(q.reshape(B, H // groups, groups, hd), k, v,
                                              attn_mask=mask).reshape(B, H, 1, hd)
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, cos, sin, mask, cache_idx=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_idx)
        return x + self.mlp(self.post_attention_layernorm(x))


# -----------------------------------------------------------------------------
# The model


def padding_mask(pad_mask):
    """Attention mask [B, 1, T, T] for a left-padded batch: causal, pads never attended to. A pad query attends
    to itself only, so no row of the mask is empty (an empty row makes SDPA return NaN)."""
    T = pad_mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=pad_mask.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=pad_mask.device)
    return ((causal & pad_mask[:, None, :]) | eye)[:, None]


def positions_of(pad_mask):
    """Left padding: each row's first real token is position 0."""
    return (pad_mask.long().cumsum(-1) - 1).clamp(min=0)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(args.vocab_size, args.dim),
            layers=nn.ModuleList(Block(args) for _ in range(args.n_layers)),
            norm=RMSNorm(args.dim, args.norm_eps),
        ))
        self.lm_head = None if args.tie_embeddings else nn.Linear(args.dim, args.vocab_size, bias=False)
        self.checkpointing = False  # activation checkpointing per block, for training large models
        self.init_rope()

    def init_rope(self):
        device = self.model.embed_tokens.weight.device
        cos, sin = rope_tables(self.args, None if device.type == "meta" else device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def init_weights(self, seed: int = 0, std: float = 0.02):
        """Random weights (for tests, benchmarks and the tiny demo model), seeded, no global RNG side effects."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            else:
                p.data.copy_(torch.randn(p.shape, generator=g) * std)
        return self

    def output(self, h):
        """Final hidden states -> logits (the tied embedding or lm_head)."""
        w = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, w)

    def hidden(self, tokens, pad_mask=None, positions=None, mask=None, cache_idx=None):
        """Final normed hidden states [B, T, dim]. `pad_mask` [B, T] (True on real tokens, left padding) for a
        ragged batch (HF's 0/1 attention_mask works too); the sampler passes `positions`, `mask` and `cache_idx`
        (the cache slots this call writes) itself: the prefill writes slots 0..T-1 and attends over its own keys, a
        decode step writes one slot and attends over the whole cache, under a mask that spans it."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, time], got shape {tuple(tokens.shape)}")
        T = tokens.shape[1]
        if pad_mask is not None:
            if pad_mask.shape != tokens.shape:
                raise ValueError(f"pad_mask must have the tokens' shape {tuple(tokens.shape)}, got "
                                 f"{tuple(pad_mask.shape)}")
            if pad_mask.dtype != torch.bool:
                if not bool(((pad_mask == 0) | (pad_mask == 1)).all()):
                    raise ValueError("pad_mask must be bool or 0/1 (1 on real tokens), not an additive mask")
                pad_mask = pad_mask.bool()
        if positions is None:
            if T > self.args.max_seq_len:
                raise ValueError(f"sequence of {T} tokens is longer than the context ({self.args.max_seq_len})")
            if pad_mask is None or bool(pad_mask.all()):
                positions = torch.arange(T, device=tokens.device).expand(tokens.shape[0], T)
            else:
                positions, mask = positions_of(pad_mask), padding_mask(pad_mask)
        x = self.model.embed_tokens(tokens)
        # fp32 tables cast to the activations' dtype, as Qwen2 does; shaped once for every layer's heads
        cos, sin = self.rope_cos[positions][:, None].to(x.dtype), self.rope_sin[positions][:, None].to(x.dtype)
        for layer in self.model.layers:
            if self.checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, cache_idx, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache_idx)
        return self.model.norm(x)

    def forward(self, tokens, pad_mask=None):
        """Logits [B, T, vocab] for positions 0..T-1."""
        return self.output(self.hidden(tokens, pad_mask))

    def setup_cache(self, batch, length, dtype=None, device=None):
        w = self.model.embed_tokens.weight
        for layer in self.model.layers:
            layer.self_attn.cache = KVCache(batch, self.args.n_kv_heads, length, self.args.head_dim,
                                            dtype or w.dtype, device or w.device)

    def clear_cache(self):
        for layer in self.model.layers:
            layer.self_attn.cache = None

    def cache_shape(self):
        c = self.model.layers[0].self_attn.cache
        return None if c is None else (c.k.shape[0], c.k.shape[2], c.k.dtype)

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=torch.float32) -> "Transformer":
        # a string: "bfloat16", as config.json spells it
        resolved = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
        if resolved not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise ValueError(f"dtype must be torch.float32, torch.bfloat16, torch.float16 or torch.float64, got "
                             f"{dtype!r}")
        return load_checkpoint(path, device, resolved)


# -----------------------------------------------------------------------------
# Loading and saving Hugging Face checkpoints


def read_json(file: Path):
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None


def read_config(path) -> ModelArgs:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: no such file (expected a Hugging Face model folder)")
    args = ModelArgs.from_hf_config(read_json(cfg_file), str(cfg_file))
    return replace(args, eos_ids=reply_end_ids(path, args.eos_ids))


def reply_end_ids(path: Path, known) -> tuple[int, ...]:
    """The tokens that end a reply: config.json's (`known`) and generation_config.json's (instruct models list
    <|im_end|> and <|endoftext|> there; transformers' generate stops at that file's only, we stop at either file's),
    and where neither names one, the tokenizer's eos_token."""
    gen_file, tok_cfg_file, tok_file = (path / f for f in ("generation_config.json", "tokenizer_config.json",
                                                           "tokenizer.json"))
    if gen_file.is_file():
        gen = read_json(gen_file)

        def fail(msg):
            raise ValueError(f"{gen_file}: {msg}")
        if not isinstance(gen, dict):
            fail(f"expected a JSON object at the top level, got {type(gen).__name__}")
        known += token_ids(gen.get("eos_token_id"), "eos_token_id", fail)
    if known or not (tok_cfg_file.is_file() and tok_file.is_file()):
        return known
    tok_cfg, tok = read_json(tok_cfg_file), read_json(tok_file)
    eos = tok_cfg.get("eos_token") if isinstance(tok_cfg, dict) else None
    eos = eos.get("content") if isinstance(eos, dict) else eos  # older files: {"content": "<|endoftext|>", ...}
    added = (tok.get("added_tokens") if isinstance(tok, dict) else None) or []
    return tuple([t["id"] for t in added if isinstance(t, dict) and eos and t.get("content") == eos][:1])


def shard_names(index: Path) -> list[str]:
    """The shard files that a model.safetensors.index.json lists."""
    content = read_json(index)
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ValueError(f"{index}: weight_map: expected an object of tensor name -> shard file name, "
                         f"got {weight_map!r:.80}")
    return sorted(set(weight_map.values()))


def checkpoint_files(path) -> list[Path]:
    path = Path(path)
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():  # as transformers: a single file wins over an index beside it
        return [single]
    if not index.is_file():
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
    files = [path / n for n in shard_names(index)]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: shard named in {index.name} is missing")
    return files


# the weights of a Qwen2 checkpoint are floats; quantized (int8, fp8) checkpoints need scales this model lacks
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def check_header(file, header) -> dict:
    """The tensors of a safetensors header, each checked for the fields the reader uses."""
    if not isinstance(header, dict):
        raise ValueError(f"{file}: not a safetensors file (its header is a JSON {type(header).__name__}, not an "
                         "object)")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, info in tensors.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str)
              and isinstance(info.get("shape"), list) and all(is_int(d) and d >= 0 for d in info["shape"])
              and isinstance(offsets, list) and len(offsets) == 2 and all(map(is_int, offsets))
              and 0 <= offsets[0] <= offsets[1])
        if not ok:
            raise ValueError(f"{file}: not a safetensors file (tensor {name}: expected dtype, shape and data_offsets "
                             f"[start, end], got {info!r:.120})")
    return tensors


def read_tensors(file):
    """Yields (name, shape, read) for each tensor of a .safetensors file, in file order; read() loads that tensor
    alone with a plain file read. (safetensors' loader memory-maps the whole file, and every mapped page it touches
    counts against the process: a 3B bf16 load would peak at twice the weights.)"""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > os.fstat(f.fileno()).st_size - 8:
            raise ValueError(f"{file}: not a safetensors file (its header would be {n} bytes, past the end of the "
                             "file)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{file}: not a safetensors file (bad header: {e})") from None
        header = check_header(file, header)
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if info["dtype"] not in SAFETENSORS_DTYPES:
                raise ValueError(f"{file}: tensor {name} has dtype {info['dtype']}; expected floating-point weights "
                                 f"({', '.join(SAFETENSORS_DTYPES)}); quantized checkpoints are not supported")
            start, end = info["data_offsets"]
            size = math.prod(info["shape"]) * SAFETENSORS_DTYPES[info["dtype"]].itemsize
            if end - start != size:
                raise ValueError(f"{file}: tensor {name} spans bytes {start}..{end} ({end - start} bytes), but its "
                                 f"shape {info['shape']} of {info['dtype']} takes {size} bytes")

            def read(info=info):
                start, end = info["data_offsets"]
                buf = bytearray(end - start)
                f.seek(8 + n + start)
                if f.readinto(buf) != len(buf):
                    raise ValueError(f"{file}: truncated (tensor {name} ends past the end of the file)")
                dtype = SAFETENSORS_DTYPES[info["dtype"]]
                return torch.frombuffer(buf, dtype=dtype).reshape(info["shape"]) if buf else \
                    torch.empty(info["shape"], dtype=dtype)
            yield name, tuple(info["shape"]), read


def load_checkpoint(path, device="cpu", dtype=torch.float32) -> Transformer:
    """Builds the model on the meta device (no memory), then reads each tensor from its shard and moves it to
    `device` and `dtype`, one at a time, so peak memory is one copy of the weights plus one tensor."""
    args = read_config(path)
    with torch.device("meta"):
        model = Transformer(args)
    expected = dict(model.state_dict())
    loaded, unexpected, misshaped, source, stored_head = set(), [], [], {}, None
    for file in checkpoint_files(path):
        for name, shape, read in read_tensors(file):
            if name in source:
                raise ValueError(f"{path}: tensor {name} is stored twice, in {source[name]} and in {file.name}")
            source[name] = file.name
            if name == "lm_head.weight" and args.tie_embeddings:
                stored_head = read()  # some tied checkpoints store the output matrix too: it must be the embedding
                continue
            if name not in expected:
                unexpected.append(name)
                continue
            if shape != tuple(expected[name].shape):
                misshaped.append(f"{name}: {shape} in {file.name}, expected {tuple(expected[name].shape)}")
                continue
            model.load_state_dict({name: read().to(device, dtype)}, strict=False, assign=True)
            loaded.add(name)
    missing = sorted(set(expected) - loaded)
    if missing or unexpected or misshaped:
        def show(xs):
            return ", ".join(xs[:8]) + (f" (+{len(xs) - 8} more)" if len(xs) > 8 else "")
        parts = [f"missing {len(missing)}: {show(missing)}"] if missing else []
        parts += [f"unexpected {len(unexpected)}: {show(unexpected)}"] if unexpected else []
        parts += [f"wrong shape {len(misshaped)}: {show(misshaped)}"] if misshaped else []
        raise ValueError(f"{path}: checkpoint does not match its config.json; " + "; ".join(parts))
    embed = model.model.embed_tokens.weight
    if stored_head is not None and not (stored_head.shape == embed.shape and torch.equal(stored_head.to(device, dtype),
                                                                                          embed)):
        raise ValueError(f"{path}: config.json ties the output layer to the input embedding (tie_word_embeddings), "
                         "but the checkpoint's lm_head.weight differs from model.embed_tokens.weight")
    model.init_rope()
    return model.eval()


def save_pretrained(model: Transformer, path, dtype=None, state_dict=None):
    """Writes config.json + model.safetensors in Hugging Face layout (tied checkpoints omit lm_head.weight).
    `state_dict` replaces model.state_dict() when the weights live elsewhere (e.g. gathered from FSDP shards)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if state_dict is None else state_dict
    dtype = dtype or state["model.embed_tokens.weight"].dtype
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.is_file():  # an older sharded save: remove it, as transformers does, so one set of weights remains
        shards = shard_names(index)
        index.unlink()
        for name in shards:
            if Path(name).name == name != "model.safetensors":  # only files of this folder, never the new weights
                (path / name).unlink(missing_ok=True)
    (path / "config.json").write_text(json.dumps(model.args.to_hf_config(dtype), indent=2))


def load_tokenizer(path):
    """The `tokenizers.Tokenizer` in `path/tokenizer.json` (the model's EOS id is `model.args.eos_id`)."""
    from tokenizers import Tokenizer

    f = Path(path) / "tokenizer.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no such file (expected the model's tokenizer.json)")
    try:
        return Tokenizer.from_file(str(f))
    except Exception as e:  # the tokenizers library raises a bare Exception naming neither the file nor the cause
        raise ValueError(f"{f}: not a valid tokenizer.json ({e})") from None


# -----------------------------------------------------------------------------
# Sampling


@dataclass
class Generation:
    tokens: list[list[int]]      # new tokens of each prompt, up to and including EOS
    logprobs: list[list[float]]  # of each new token under softmax(logits / temperature), before top-k/top-p


def filter_probs(probs, top_k: int = 0, top_p: float = 1.0):
    """Zeroes the probabilities outside the top-k tokens and outside the smallest set whose mass reaches top_p
    (the most likely token always stays). `probs` [B, V] need not be normalised."""
    if top_k and top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[:, -1:]
        probs = probs.masked_fill(probs < kth, 0.0)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_p.cumsum(-1) - sorted_p
        drop = mass_before >= top_p * sorted_p.sum(-1, keepdim=True)
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    return probs


def sample(logits, temperature, top_k, top_p, generator):
    """One token per row and its log-probability under softmax(logits / temperature), before truncation.
    Inverse-CDF sampling: one exp pass and one cumsum, cheaper than torch.multinomial over a large vocabulary."""
    logits = logits.float()
    if temperature == 0:
        token = logits.argmax(-1)
        return token, logits.gather(-1, token[:, None])[:, 0] - logits.logsumexp(-1)
    # shift before dividing, or logits / a tiny temperature overflow to inf (NaN logprobs). And keep 1 / T finite in
    # fp32: CUDA divides by a scalar by multiplying by its reciprocal, and the max's 0 * inf is NaN. At fp32's
    # smallest normal every gap between distinct logits already scales past exp's range: the clamp changes nothing
    temperature = max(temperature, torch.finfo(logits.dtype).tiny)
    m = logits.amax(-1, keepdim=True)  # not max(): it also finds the indices, ~8x slower at a 32k vocabulary
    # each pass over [B, vocab] costs memory traffic on a GPU: none for a division by 1, and no fp64 copy below
    scaled = logits - m if temperature == 1 else (logits - m) / temperature
    e = scaled.exp()
    log_z = e.sum(-1).log()
    # fp64, the sums and the uniform draw: on an fp32 grid (steps of 2^-24 of the total) tens of thousands of a
    # 152k vocabulary's tail tokens get no slice of the CDF and could never be drawn
    cdf = torch.cumsum(filter_probs(e, top_k, top_p), -1, dtype=torch.float64)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device, dtype=torch.float64, generator=generator) * cdf[:, -1:]
    token = torch.searchsorted(cdf, u, right=True)[:, 0].clamp(max=cdf.shape[-1] - 1)
    return token, scaled.gather(-1, token[:, None])[:, 0] - log_z


def decode_logits(model, token, idx, key_valid, pad_len):
    """One decode step for the whole batch: token [B, 1] at cache index idx [1] -> logits [B, vocab].
    Only static shapes and device tensors, so it compiles into one CUDA graph."""
    S = key_valid.shape[1]
    positions = (idx - pad_len)[:, None]  # left padding shifts each row's positions
    mask = (key_valid & (torch.arange(S, device=idx.device) <= idx))[:, None, None, :]
    return model.output(model.hidden(token, positions=positions, mask=mask, cache_idx=idx))[:, -1]


_compiled = {}
RECOMPILE_LIMIT = 64  # distinct (batch, cache length) pairs one process may compile the decode step for


def compiled_decode(device_type: str):
    """torch.compile'd decode step: CUDA graphs on GPU (per-token launch overhead gone). On CPU eager is used:
    measured on 2 cores, compile did not pay back its warm-up for our sizes (see BENCHMARKS.md).

    The KV cache is made of module buffers, whose shapes torch.compile keeps static: each new batch size or cache
    length compiles the step again (~50 s at the 3B shape on an H100). A run can meet more of them than torch's
    default limit of 8 (rollouts and held-out batches of varying prompt lengths, last partial batches, evaluations),
    and at that limit fullgraph=True raises, ending the run; hence the higher limit."""
    if device_type != "cuda":
        return decode_logits
    if device_type not in _compiled:
        # cache_size_limit: recompile_limit's older name, which torch 2.6 knows too
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
        _compiled[device_type] = torch.compile(decode_logits, mode="reduce-overhead", fullgraph=True, dynamic=False)
    return _compiled[device_type]


CACHE_ROUND = 128  # compiled: cache length rounded up, so batches of similar prompt lengths reuse one graph
EOS_CHECK_EVERY = 16  # steps between host syncs that look whether every row is done


def prompt_tensors(prompts, vocab_size):
    """Each prompt as a 1-D int64 tensor, checked: non-empty, integer token ids inside the vocabulary."""
    if len(prompts) == 0:
        raise ValueError("no prompts")
    rows = []
    for i, p in enumerate(prompts):
        t = torch.as_tensor(p)
        if t.dim() != 1 or len(t) == 0:
            raise ValueError(f"prompt {i} is empty" if t.dim() == 1 else
                             f"prompt {i}: expected a list of token ids, got shape {tuple(t.shape)}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"prompt {i}: token ids must be integers, got {t.dtype}")
        t = t.long()  # uint32 and uint64 have no min() in torch
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"prompt {i}: token id {lo if lo < 0 else hi} is outside the vocabulary "
                             f"(0..{vocab_size - 1})")
        rows.append(t)
    return rows


def stop_rows(stop, rows, eos_ids, lengths, checked):
    """Host side of `generate(stop=...)`: for each row not yet stopped, whether `stop` holds for its tokens (up to
    its EOS); if so, lengths[i] becomes the shortest prefix it holds for. checked[i]: the longest prefix seen not to
    hold, so each row's search covers only the tokens since the last check. Returns the stopped rows' indices."""
    found = []
    for i, row in enumerate(rows):
        if lengths[i] is not None:
            continue
        end = next((j + 1 for j, tok in enumerate(row) if tok in eos_ids), len(row))
        if end == checked[i]:  # ended with EOS before the last check: nothing new
            continue
        if stop(row[:end]):
            lengths[i] = next(j for j in range(checked[i] + 1, end + 1) if stop(row[:j]))
            found.append(i)
        else:
            checked[i] = end
    return found


@torch.no_grad()
def generate(model: Transformer, prompts, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int = 0, eos_id: int | list[int] | None = None, seed: int | None = None,
             compile: bool | None = None, pad_id: int = 0, stop=None) -> Generation:
    """Samples continuations of a ragged batch of prompts (lists of token ids) with a static KV cache.

    Prompts are left-padded; each row gets its own positions and key mask. Prefill runs once, then one token per
    step for the whole batch. A row stops at `eos_id` (an id, or a list of ids that each end a reply), kept as its
    last token; generation stops when every row has stopped or after `max_new_tokens`. temperature 0 is greedy.
    `seed` seeds a private torch.Generator; without one, sampling draws its seed from the global RNG (greedy
    decoding does not touch it). `compile` (default: on CUDA only) runs the decode step under torch.compile + CUDA
    graphs. `stop`, a function of a row's new tokens that becomes true once the reply is complete (and stays true
    as it grows: e.g. its text contains "</answer>"), ends a row at the shortest prefix it holds for; it is checked
    on the host with the EOS, every EOS_CHECK_EVERY steps, so rows stop a little late but are cut exactly.
    """
    prompts = prompt_tensors(prompts, model.args.vocab_size)
    if not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if (not (0 <= temperature < float("inf")) or not 0 < top_p <= 1 or not isinstance(top_k, numbers.Integral)
            or isinstance(top_k, bool) or top_k < 0):
        raise ValueError(f"bad sampling settings: temperature={temperature} top_p={top_p} top_k={top_k}")
    try:  # numpy and 0-d torch integers too, not True
        if isinstance(seed, bool) or isinstance(pad_id, bool):
            raise TypeError
        seed = None if seed is None else operator.index(seed)
        pad_id = operator.index(pad_id)
    except TypeError:
        raise ValueError(f"seed and pad_id must be integers, got seed={seed!r}, pad_id={pad_id!r}") from None
    if not 0 <= pad_id < model.args.vocab_size:
        raise ValueError(f"pad_id {pad_id} is outside the vocabulary (0..{model.args.vocab_size - 1})")
    if stop is not None and not callable(stop):
        raise TypeError(f"stop must be a function of a row's new tokens (list[int]) -> bool, got {stop!r}")
    # an id, a list, numpy or torch ints; None or [] is none (torch makes [] a float tensor, so test its length)
    try:
        eos_ids = torch.as_tensor([] if eos_id is None else eos_id).reshape(-1)
        ok = not len(eos_ids) or not (eos_ids.dtype.is_floating_point or eos_ids.dtype == torch.bool)
    except (TypeError, RuntimeError, ValueError):  # a set, a string, ragged lists
        ok = False
    if not ok:
        raise ValueError(f"eos_id must be a token id or a list of them, got {eos_id!r}")
    eos_ids = [int(e) for e in eos_ids]
    if any(not 0 <= e < model.args.vocab_size for e in eos_ids):  # it is fed back as the input of finished rows
        raise ValueError(f"eos_id {eos_ids} is outside the vocabulary (0..{model.args.vocab_size - 1})")
    B, P = len(prompts), max(len(p) for p in prompts)
    if P + max_new_tokens > model.args.max_seq_len:
        raise ValueError(f"longest prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"context of {model.args.max_seq_len} tokens")
    device = model.model.embed_tokens.weight.device
    compile = device.type == "cuda" if compile is None else compile
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    elif temperature > 0:
        generator.manual_seed(int(torch.randint(2**62, (1,)).item()))

    S = P + max_new_tokens
    if compile:  # CUDA graphs are recorded per cache length: round it so similar batches share one graph
        S = min(-(-S // CACHE_ROUND) * CACHE_ROUND, model.args.max_seq_len)
    if model.cache_shape() != (B, S, model.model.embed_tokens.weight.dtype):
        model.setup_cache(B, S)
    tokens = torch.full((B, P), pad_id, dtype=torch.long)
    key_valid = torch.zeros(B, S, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p):] = p
        key_valid[i, P - len(p):] = True
    key_valid[:, P:] = True  # generated positions; causality (index <= idx) hides the future ones
    tokens, key_valid = tokens.to(device), key_valid.to(device)
    pad_len = (~key_valid[:, :P]).sum(-1)

    # prefill: the whole prompt at once, written to cache slots 0..P-1
    prompt_mask = key_valid[:, :P]
    ragged = any(len(p) < P for p in prompts)
    mask = padding_mask(prompt_mask) if ragged else None  # None: plain causal attention, the fused kernels' fast path
    h = model.hidden(tokens, positions=positions_of(prompt_mask), mask=mask,
                     cache_idx=torch.arange(P, device=device))
    logits = model.output(h[:, -1])

    step = compiled_decode(device.type) if compile else decode_logits
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    out_tok = torch.full((B, max_new_tokens), eos_ids[0] if eos_ids else pad_id, dtype=torch.long, device=device)
    out_lp = torch.zeros(B, max_new_tokens, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    idx = torch.tensor([P - 1], device=device)  # cache slot of the token being fed
    n = max_new_tokens
    stop_len, checked = [None] * B, [0] * B  # with `stop`: each row's reply length once it holds; see stop_rows
    for t in range(max_new_tokens):
        token, logp = sample(logits, temperature, top_k, top_p, generator)
        if eos_ids or stop:
            token = token.masked_fill(done, eos_ids[0] if eos_ids else pad_id)  # finished rows: dropped below
        if eos_ids:
            done |= torch.isin(token, eos)
        out_tok[:, t], out_lp[:, t] = token, logp
        last, check = t == max_new_tokens - 1, (t + 1) % EOS_CHECK_EVERY == 0
        if stop and (check or last):
            done[stop_rows(stop, out_tok[:, :t + 1].tolist(), eos_ids, stop_len, checked)] = True
        if last or ((eos_ids or stop) and check and bool(done.all())):
            n = t + 1
            break
        idx += 1  # on the device: no host-to-device copy per token
        if compile:
            torch.compiler.cudagraph_mark_step_begin()
        logits = step(model, token[:, None], idx, key_valid, pad_len).clone()

    toks, lps = out_tok[:, :n].tolist(), out_lp[:, :n].tolist()
    result = Generation([], [])
    for row, lp, stopped_at in zip(toks, lps, stop_len):
        end = stopped_at or next((j + 1 for j, tok in enumerate(row) if tok in eos_ids), len(row))
        result.tokens.append(row[:end])
        result.logprobs.append(lp[:end])
    return result


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Sample from a Qwen2 checkpoint folder.")
    ap.add_argument("checkpoint")
    ap.add_argument("prompt")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    m = Transformer.from_pretrained(a.checkpoint, device=a.device, dtype=dtype)
    tk = load_tokenizer(a.checkpoint)
    t0 = time.time()
    g = generate(m, [tk.encode(a.prompt).ids], a.max_new_tokens, a.temperature, eos_id=m.args.eos_ids, seed=0)
    print(a.prompt + tk.decode(g.tokens[0], skip_special_tokens=False))
    print(f"[{len(g.tokens[0])} tokens in {time.time() - t0:.2f}s]")

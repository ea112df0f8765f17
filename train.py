"""RLVR training: PPO (or GRPO / RLOO / REINFORCE++) with a rule-based MCQA reward, or the SFT baseline.

    python train.py                                   # the CPU demo (same as --preset demo): ~100 s on 2 cores
    python train.py --preset demo --out runs/demo
    torchrun --nproc_per_node 8 train.py --preset qwen2.5-3b --model Qwen2.5-3B --train medqa_train.jsonl \\
        --heldout medqa_test.jsonl --out runs/rlvr
    python train.py --resume runs/rlvr                # continue exactly where a run stopped
    python train.py --algo sft ...                    # the supervised baseline, same data and checkpoints

One step: draw prompts -> sample replies with the KV-cached sampler -> verifier rewards -> old log-probs, values,
reference log-probs -> per-token rewards (KL penalty + outcome on the last token) -> advantages -> PPO epochs over
mini-batches (micro-batch gradient accumulation, grad clipping). The value head is a linear layer on the policy's own
final hidden state, so there is no separate critic model. Under torchrun, gradients are synchronised with DDP, or
with --fsdp the training state is sharded with FSDP2; the sampler runs on a plain copy of the weights (bf16 on GPU).

The demo (no --model) builds a tiny Qwen2-shaped model and a small tokenizer, gives the model a short warm-up on a
noisy teacher so that it behaves like a base model (it follows the format only sometimes and is right only half the
time), then runs RL on the synthetic drug-disease task from data.py with the same sampler, verifier and PPO.

Run folder (--out): config.json, inputs.json (what --resume must find unchanged: hashes of the training data and
the model's config and tokenizer, weight file sizes), metrics.jsonl (one object per step), samples.jsonl (full
replies every few steps), checkpoints/step_XXXXXX/ (policy in HF layout + value head, optimizer, schedule, RNG states,
data cursor), final.json.
An SFT step samples no replies: its metrics are sft_loss, lr, grad_norm, lengths and timings, and it writes no
samples.jsonl (reward, accuracy, KL and the PPO losses would be made up).
"""

import argparse
import copy
import gc
import hashlib
import inspect
import json
import math
import os
import random
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import data
import eval as evaluation
import model as M
import ppo
import verifier

# -----------------------------------------------------------------------------
# Config


@dataclass
class Config:
    # what to train (each comment is also the flag's --help)
    model: str | None = None          # HF checkpoint folder (config.json, safetensors, tokenizer.json); none: demo model
    train: list[str] = field(default_factory=list)    # MCQA files (data.load_mcqa); none: the synthetic demo task
    heldout: list[str] = field(default_factory=list)  # MCQA files answered at the end into final.json (greedy; RL runs also sampled)
    template: str = "base"            # prompt template (data.TEMPLATES)
    algo: str = "gae"                 # gae (PPO + value head) | grpo | rloo | reinforce++ | sft
    out: str = "runs/demo"            # run folder
    seed: int = 0                     # seeds data order, sampling, PPO mini-batches and the demo
    # rollout
    steps: int = 40                   # training steps (one rollout batch each)
    prompts_per_step: int = 16        # prompts per step over all ranks
    group_size: int = 4               # samples per prompt (GRPO / RLOO need >= 2); sft: items per step = prompts x this
    max_prompt_len: int = 256         # longer prompts are dropped (and counted) when the data is loaded
    max_new_tokens: int = 32          # reply length limit
    temperature: float = 1.0          # rollout sampling temperature
    top_p: float = 1.0                # rollout nucleus sampling
    shuffle_options: bool = False     # permute options each time an item is drawn (fights position bias)
    strict: bool = False              # verifier mitigation: nothing allowed before <think>
    min_think_words: int = 0          # verifier mitigation: minimum reasoning length in words
    # optimisation
    lr: float = 3e-4                  # policy learning rate (AdamW)
    value_lr: float = 1e-3            # value head learning rate
    warmup_steps: int = 0             # linear LR warm-up, then constant
    weight_decay: float = 0.0         # AdamW weight decay
    ppo_epochs: int = 1               # passes over each rollout batch
    mini_batch_size: int = 64         # rollouts per optimizer step, over all ranks
    micro_batch_size: int = 32        # rollouts per forward/backward, per rank (gradient accumulation)
    grad_clip: float = 1.0            # max gradient norm
    clip: float = 0.2                 # PPO ratio clip
    value_clip: float = 0.2           # value clip around the rollout's values
    vf_coef: float = 0.5              # value loss weight
    entropy_coef: float = 0.0         # entropy bonus weight
    gamma: float = 1.0                # discount
    lam: float = 0.95                 # GAE lambda
    kl_coef: float = 0.001            # KL penalty weight (against the frozen reference model)
    kl_kind: str | None = None        # KL estimator k1 | k2 | k3; default k1 in the reward, k3 as a loss
    kl_in_reward: bool | None = None  # KL as a per-token reward penalty (the paper), or a loss; default: loss for grpo
    whiten_advantages: bool = True    # normalise GAE advantages over the batch (reinforce++ always does)
    loss_agg: str = "token-mean"      # token-mean | seq-mean
    # demo model (when model is None)
    demo_warmup_steps: int = 500      # supervised warm-up on the noisy teacher
    demo_n_train: int = 600           # synthetic training items
    demo_n_heldout: int = 200         # synthetic held-out items
    # systems
    device: str = "auto"              # auto (cuda if available) | cuda | cpu
    bf16: bool = True                 # on CUDA: bf16 autocast, bf16 reference model and bf16 rollout weights
    fsdp: bool = False                # FSDP2 instead of DDP: shard weights, grads and optimizer state over the ranks
    grad_checkpointing: bool = False  # activation checkpointing per transformer block
    save_every: int = 20              # checkpoint every N steps (and at the end)
    keep_last: int = 2                # checkpoints kept
    sample_every: int = 5             # write replies to samples.jsonl every N steps
    n_samples: int = 4                # replies written each time
    max_bad_steps: int = 3            # consecutive non-finite steps before the run stops

    def __post_init__(self):
        # GRPO divides by the spread of a group's rewards: with equal outcomes only KL noise (~1e-4) is left, and
        # dividing makes it advantages of +-1. So GRPO takes KL as a loss, as DeepSeek's GRPO does. As a loss, k1's
        # gradient is zero in expectation (E[grad log p] = 0): k3 is the estimator with a useful gradient there.
        if self.kl_in_reward is None:
            self.kl_in_reward = self.algo != "grpo"
        if self.kl_kind is None:
            self.kl_kind = "k1" if self.kl_in_reward else "k3"


def field_help() -> dict:
    """The comment after each Config field, so that --help and the code say the same thing."""
    return {m[1]: m[2] for m in re.finditer(r"^    (\w+): .*?# (.*)$", inspect.getsource(Config), re.M)}


PRESETS = {
    "demo": {},
    # Paper-like settings on GPUs. Med-RLVR trained Qwen2.5-3B base with OpenRLHF PPO on MedQA; values the paper does
    # not state follow OpenRLHF's PPO defaults / R1-Zero replications (Logic-RL, TinyZero) of that period.
    "qwen2.5-3b": dict(
        template="base",           # R1-Zero-style base-model prompt, as in the paper
        steps=500,                 # ~ 3 epochs over MedQA train (10,178 items) at 64 prompts per step
        prompts_per_step=64, group_size=1,   # PPO with a critic: one sample per prompt (OpenRLHF n_samples=1)
        max_prompt_len=1024, max_new_tokens=1024,   # MedQA prompts reach ~1000 tokens (data.py stats)
        temperature=1.0, top_p=1.0,
        lr=5e-7, value_lr=9e-6,    # OpenRLHF PPO example actor / critic learning rates
        warmup_steps=10, ppo_epochs=1, mini_batch_size=32, micro_batch_size=4,
        kl_coef=0.001,             # OpenRLHF's R1-style example scripts (its default is 0.01); k1 in the reward
        gamma=1.0, lam=0.95,       # OpenRLHF's PPO defaults of the paper's period
        clip=0.2, value_clip=0.2, vf_coef=0.5, grad_clip=1.0, whiten_advantages=True,
        bf16=True, grad_checkpointing=True, save_every=50, keep_last=2, sample_every=10, n_samples=8,
    ),
}

ALGOS = tuple(ppo.ESTIMATORS) + ("sft",)
RESUME_MAY_CHANGE = {"steps", "save_every", "keep_last", "sample_every", "n_samples", "heldout", "max_bad_steps"}


def parse_config(argv=None) -> tuple[Config, str | None]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 argument_default=argparse.SUPPRESS)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="defaults to start from; flags override (default: demo)")
    ap.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR from its last checkpoint")
    helps = field_help()
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        kw = dict(help=f"{helps[f.name]} (default: {f.default if f.default is not MISSING else 'none'})")
        if f.type in (bool, bool | None):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name in ("train", "heldout"):
            ap.add_argument(flag, nargs="+", metavar="FILE", **kw)
        elif f.name == "algo":
            ap.add_argument(flag, choices=ALGOS, **kw)
        elif f.name == "template":
            ap.add_argument(flag, choices=data.TEMPLATES, **kw)
        else:
            ap.add_argument(flag, type=f.type if f.type in (int, float) else str, **kw)
    a = absolute_paths(vars(ap.parse_args(argv)))
    preset, resume = a.pop("preset", None), a.pop("resume")
    if resume is not None:
        if preset is not None:
            raise SystemExit(f"--resume {resume}: a resumed run keeps its own config; --preset cannot be given")
        return resume_config(resume, a), resume
    return Config(**{**PRESETS[preset or "demo"], **a}), None


def absolute_paths(flags: dict) -> dict:
    """The model and data paths made absolute, so that config.json names the same files whatever folder a later
    --resume runs from."""
    if isinstance(flags.get("model"), str):
        flags["model"] = str(Path(flags["model"]).resolve())
    for key in ("train", "heldout"):
        if isinstance(flags.get(key), list):
            flags[key] = [str(Path(f).resolve()) if isinstance(f, str) else f for f in flags[key]]
    return flags


def resume_config(run_dir, overrides) -> Config:
    f = Path(run_dir) / "config.json"
    if not f.is_file():
        raise SystemExit(f"--resume {run_dir}: no config.json there; not a med-rlvr run folder")
    try:
        saved = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"{f}: not valid JSON ({e}); not a config written by this train.py") from None
    known = {x.name for x in fields(Config)}
    if isinstance(saved, dict):
        saved = absolute_paths(saved)  # a run from before paths were stored absolute: read from here, as it was
    if set(saved) != known:
        odd, lacking = sorted(set(saved) - known), sorted(known - set(saved))
        raise SystemExit(f"{f}: not a config written by this train.py (unknown keys {odd}, missing keys {lacking})")
    if "out" in overrides and Path(overrides["out"]).resolve() != Path(run_dir).resolve():
        raise SystemExit(f"--resume {run_dir}: a resumed run continues in its own folder; --out cannot be given")
    changed = {k: (saved.get(k), v) for k, v in overrides.items() if saved.get(k) != v and k != "out"}
    bad = {k: v for k, v in changed.items() if k not in RESUME_MAY_CHANGE}
    if bad:
        lines = "; ".join(f"{k}: run has {old!r}, flag says {new!r}" for k, (old, new) in bad.items())
        raise SystemExit(f"--resume {run_dir}: config mismatch ({lines}). Only {sorted(RESUME_MAY_CHANGE)} may change.")
    cfg = Config(**{**saved, **{k: v for k, (_, v) in changed.items()}})
    cfg.out = str(run_dir)
    return cfg


def check_config(cfg: Config, world: int):
    def fail(msg):
        raise SystemExit(f"config: {msg}")
    if cfg.algo not in ALGOS:
        fail(f"algo {cfg.algo!r} unknown; expected one of {ALGOS}")
    for name in ("steps", "prompts_per_step", "group_size", "max_prompt_len", "max_new_tokens", "ppo_epochs",
                 "mini_batch_size", "micro_batch_size", "save_every", "keep_last", "sample_every", "max_bad_steps"):
        if getattr(cfg, name) < 1:
            fail(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("warmup_steps", "n_samples", "min_think_words", "demo_warmup_steps"):
        if getattr(cfg, name) < 0:
            fail(f"{name} must be >= 0, got {getattr(cfg, name)}")
    # a negative weight or rate turns a term into its opposite (gradient ascent), a zero clip freezes training
    for name in ("lr", "value_lr", "weight_decay", "vf_coef", "kl_coef"):
        if not getattr(cfg, name) >= 0:
            fail(f"{name} must be >= 0, got {getattr(cfg, name)}")
    clips = ["grad_clip"] + (["clip"] if cfg.algo != "sft" else []) + \
        (["value_clip"] if cfg.algo in ppo.NEEDS_VALUES else [])
    for name in clips:
        if not getattr(cfg, name) > 0:
            fail(f"{name} must be > 0, got {getattr(cfg, name)}")
    for name in ("gamma", "lam"):
        if not 0 <= getattr(cfg, name) <= 1:
            fail(f"{name} must be in [0, 1], got {getattr(cfg, name)}")
    if not (cfg.temperature > 0 and 0 < cfg.top_p <= 1):
        fail(f"temperature must be > 0 and top_p in (0, 1], got {cfg.temperature} and {cfg.top_p}")
    if cfg.prompts_per_step % world:
        fail(f"prompts_per_step {cfg.prompts_per_step} must be divisible by the number of ranks ({world})")
    rows = cfg.prompts_per_step // world * cfg.group_size
    if cfg.mini_batch_size % world:
        fail(f"mini_batch_size {cfg.mini_batch_size} must be divisible by the number of ranks ({world})")
    mini = cfg.mini_batch_size // world
    if rows % mini:
        fail(f"rollouts per rank per step ({rows} = prompts_per_step {cfg.prompts_per_step} / {world} ranks x "
             f"group_size {cfg.group_size}) must be divisible by mini_batch_size {cfg.mini_batch_size} / {world} "
             f"ranks = {mini}")
    if mini % cfg.micro_batch_size:
        fail(f"mini_batch_size {cfg.mini_batch_size} / {world} ranks = {mini} must be divisible by "
             f"micro_batch_size {cfg.micro_batch_size}")
    if cfg.algo in ("grpo", "rloo") and cfg.group_size < 2:
        fail(f"{cfg.algo} needs group_size >= 2 (samples per prompt), got {cfg.group_size}")
    if cfg.model is None and (cfg.train or cfg.heldout):
        fail("--train and --heldout need --model: without one, the demo trains its tiny model on its own synthetic "
             "task")
    if cfg.model is None:
        if cfg.template == "chat":  # as eval.py, which would refuse the demo model then
            fail("template chat needs <|im_start|> and <|im_end|> tokens, which the demo's small tokenizer does not "
                 "have; use base, direct or cot")
        if cfg.demo_n_heldout < 1:
            fail(f"demo_n_heldout must be >= 1 (the demo ends on its held-out accuracy), got {cfg.demo_n_heldout}")
        try:
            data.synthetic_task(cfg.demo_n_train, cfg.demo_n_heldout, cfg.seed)
        except ValueError as e:
            fail(f"demo task: {e}")
        check_context(cfg, demo_model_args(0).max_seq_len, "the demo model")
    if cfg.fsdp and world < 2:
        fail("fsdp shards over ranks: run it under torchrun with --nproc_per_node >= 2")
    if cfg.kl_kind not in ("k1", "k2", "k3"):
        fail(f"kl_kind {cfg.kl_kind!r} unknown; expected k1, k2 or k3")
    if cfg.loss_agg not in ("token-mean", "seq-mean"):
        fail(f"loss_agg {cfg.loss_agg!r} unknown; expected token-mean or seq-mean")


# -----------------------------------------------------------------------------
# Distributed helpers (eval.setup_distributed reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK)


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


def whiten_over_ranks(x, mask):
    """ppo.masked_whiten with the mean and variance of every rank's real tokens, so that a rank's advantages do
    not depend on which rollouts it happened to draw."""
    n = sum_over_ranks(mask.sum())
    mean = sum_over_ranks((x * mask).sum()) / n
    var = sum_over_ranks(((x - mean) ** 2 * mask).sum()) / n
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask  # in one process, bit for bit ppo.masked_whiten


def batch_advantages(cfg, rewards, values, mask):
    """ppo.advantages, with the batch-wide whitening (GAE's, optional; REINFORCE++'s, part of the method) taken
    over every rank's tokens: under torchrun the estimator sees only this rank's share of the batch."""
    adv, returns = ppo.advantages(cfg.algo, rewards, values, mask, cfg.group_size, cfg.gamma, cfg.lam,
                                  whiten=whiten_over_ranks)
    if cfg.algo in ppo.NEEDS_VALUES and cfg.whiten_advantages:
        adv = whiten_over_ranks(adv, mask)
    return adv, returns


def all_mean(values: dict, device, world: int) -> dict:
    """Averages a dict of floats over ranks (every rank holds the same keys)."""
    if world == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: v / world for k, v in zip(keys, t.tolist())}


# -----------------------------------------------------------------------------
# The policy: the language model plus a value head on its final hidden state


def response_logprobs(lm: M.Transformer, tokens, pad_mask, prompt_len, temperature=1.0):
    """Hidden states before each response token tokens[:, prompt_len:], their logits (fp32) and the log-probs of
    the response tokens, all [N, R, ...]. Logits are divided by the sampling temperature, so that the log-probs
    are those of the distribution the rollouts were drawn from."""
    h = lm.hidden(tokens, pad_mask)[:, prompt_len - 1:-1]
    logits = lm.output(h).float()
    if temperature != 1.0:  # a vocabulary-sized copy per token: not when it changes nothing
        logits = logits / temperature
    return h, logits, torch.log_softmax(logits, -1).gather(-1, tokens[:, prompt_len:, None])[..., 0]


class Policy(nn.Module):
    def __init__(self, lm: M.Transformer, value_head: bool):
        super().__init__()
        self.lm = lm
        self.value = nn.Linear(lm.args.dim, 1) if value_head else None
        if self.value is not None:
            nn.init.zeros_(self.value.weight)
            nn.init.zeros_(self.value.bias)

    def forward(self, tokens, pad_mask, prompt_len, entropy_grad=False, temperature=1.0):
        """Log-probs, entropies and values [N, R] for the response tokens tokens[:, prompt_len:]. The entropy is a
        metric unless an entropy bonus needs its gradient: its graph over the whole vocabulary costs memory."""
        h, logits, logp = response_logprobs(self.lm, tokens, pad_mask, prompt_len, temperature)
        values = self.value(h)[..., 0].float() if self.value is not None else None
        if entropy_grad and torch.is_grad_enabled():
            ent = ppo.entropy(logits)
        else:  # a metric: row by row, so its vocabulary-sized temporaries are one row's, not the micro-batch's
            with torch.no_grad():
                ent = torch.cat([ppo.entropy(row) for row in logits.split(1)])
        return logp, ent, values


def make_optimizer(cfg: Config, policy: Policy, device) -> torch.optim.AdamW:
    """AdamW, the value head at its own learning rate. Fused on CUDA: the default multi-tensor AdamW takes a
    temporary as large as all the weights (its sqrt of the second moments), 11.5 GiB more at the peak of a 3B
    update (`python bench.py memory`), and the fused kernel is faster too."""
    groups = [dict(params=list(policy.lm.parameters()), lr=cfg.lr)]
    if policy.value is not None:
        groups.append(dict(params=list(policy.value.parameters()), lr=cfg.value_lr))
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                             fused=True if torch.device(device).type == "cuda" else None)


def pack(prompts, responses, pad_id):
    """Left-padded prompts + right-padded responses -> tokens [N, P+R], pad_mask [N, P+R], response mask [N, R]."""
    P, R = max(map(len, prompts)), max(map(len, responses))
    N = len(prompts)
    tokens = torch.full((N, P + R), pad_id, dtype=torch.long)
    pad = torch.zeros(N, P + R, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        tokens[i, P - len(p):P], pad[i, P - len(p):P] = torch.tensor(p), True
        tokens[i, P:P + len(r)], pad[i, P:P + len(r)] = torch.tensor(r), True
    return tokens, pad, pad[:, P:].float(), P


def autocast(cfg: Config, device):
    if device.type == "cuda" and cfg.bf16:
        # no cast cache: each weight is used once per forward, so the cache saves nothing and would hold a bf16 copy
        # of every weight until the forward ends (5.75 GiB for 3B at the update's peak; `python bench.py memory`)
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return torch.autocast("cpu", enabled=False)


# -----------------------------------------------------------------------------
# The demo model: tiny Qwen2 shape, own tokenizer, a warm-up so it behaves like a base model


def demo_model_args(vocab_size: int) -> M.ModelArgs:
    return M.ModelArgs(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, intermediate_size=352,
                       vocab_size=-(-vocab_size // 64) * 64, max_seq_len=512, rope_theta=10000.0,
                       tie_embeddings=True, eos_id=0)


def teacher_reply(item: data.Item, rng: random.Random) -> str:
    """A noisy teacher, like a base model that has seen some formatted text: it reasons briefly in <think> and names
    the right option half the time (a random one otherwise); a quarter of its replies break the format. Sampled at
    temperature 1, a model trained on it is right on ~40-50% of the items and well formatted on ~70-80%."""
    letter = item.answer if rng.random() < 0.5 else rng.choice(list(item.options))
    disease = item.question.removeprefix("Which drug treats ").removesuffix("?")
    good = f"<think>\n{disease} is treated by {item.options[letter]}.\n</think>\n<answer>{letter}</answer>"
    broken = [f"The answer is {letter}.", f"<answer>{letter}</answer>",
              f"<think>\n{disease} is treated by {item.options[letter]}.\n</think>\n{letter}",
              f"<think>\n{disease} is treated by {item.options[letter]}.\n<answer>{letter}</answer>"]
    return good if rng.random() < 0.75 else rng.choice(broken)


def build_demo(cfg: Config, run: Path, log):
    """Writes run/data/{train,heldout}.jsonl (generic format) and run/base/ (the warmed-up tiny model, HF layout,
    with tokenizer.json). Deterministic for a seed, so the SFT and RL demo runs start from the same base model."""
    train_items, heldout = data.synthetic_task(cfg.demo_n_train, cfg.demo_n_heldout, cfg.seed)
    (run / "data").mkdir(parents=True, exist_ok=True)
    for name, items in (("train", train_items), ("heldout", heldout)):
        with open(run / "data" / f"{name}.jsonl", "w") as f:
            for it in items:
                f.write(json.dumps(dict(id=it.id, question=it.question, options=it.options, answer=it.answer,
                                        source=it.source)) + "\n")
    rng = random.Random(cfg.seed)
    texts = [data.render(it, t) + data.sft_target(it, t) for it in train_items[:500] for t in ("base", "direct")]
    texts += [teacher_reply(it, rng) for it in train_items[:500]]
    tokenizer = data.demo_tokenizer(texts)
    lm = M.Transformer(demo_model_args(tokenizer.get_vocab_size())).init_weights(cfg.seed)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3, weight_decay=0.0)
    bar = tqdm(range(cfg.demo_warmup_steps), desc="demo warm-up", dynamic_ncols=True, leave=False)
    for step in bar:
        batch = [train_items[(step * 32 + i) % len(train_items)] for i in range(32)]
        prompts = [tokenizer.encode(data.render(it, cfg.template), add_special_tokens=False).ids for it in batch]
        targets = [tokenizer.encode(teacher_reply(it, rng), add_special_tokens=False).ids + [0] for it in batch]
        loss = sft_loss(lm, prompts, targets, 0)
        opt.zero_grad()
        loss.backward()
        # cosine decay and clipping: at a constant 3e-3 the loss spikes late, and the base the RL run starts from
        # then depends on where in a spike the warm-up happened to stop
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.param_groups[0]["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / cfg.demo_warmup_steps))
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    # written whole, then renamed: a run killed while saving leaves no half-built base.tmp that looks finished
    tmp = run / "base.tmp"
    for old in (tmp, run / "base"):  # (a base/ without config.json is an older version's half-built one)
        shutil.rmtree(old, ignore_errors=True)
    M.save_pretrained(lm, tmp)
    tokenizer.save(str(tmp / "tokenizer.json"))
    os.replace(tmp, run / "base")
    log(f"demo: built base model ({sum(p.numel() for p in lm.parameters()) / 1e6:.2f}M params, "
        f"vocab {tokenizer.get_vocab_size()}) in {run / 'base'}")


def sft_loss(lm, prompts, targets, pad_id):
    """Cross-entropy on the target tokens only (prompt tokens carry no loss)."""
    device = lm.model.embed_tokens.weight.device
    tokens, pad, mask, P = pack(prompts, targets, pad_id)
    tokens, pad, mask = tokens.to(device), pad.to(device), mask.to(device)
    return -(response_logprobs(lm, tokens, pad, P)[2] * mask).sum() / mask.sum()


# -----------------------------------------------------------------------------
# Checkpoints: written to a temp folder then renamed, so a killed run never leaves a half-written one


def rng_state():
    s = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s):
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


FULL = StateDictOptions(full_state_dict=True)
FULL_ON_RANK0_CPU = StateDictOptions(full_state_dict=True, cpu_offload=True)  # for writing: no GPU copy of it all


def lm_part(state: dict) -> dict:
    return {k.removeprefix("lm."): v for k, v in state.items() if k.startswith("lm.")}


@torch.no_grad()
def sync_rollout(policy: Policy, rollout_lm: M.Transformer):
    """The sampler runs on a plain copy of the policy's weights (bf16 on GPU): CUDA graphs need whole tensors at fixed
    addresses, and FSDP keeps only shards. Copied in place after each step's updates (a collective under FSDP)."""
    full = lm_part(get_model_state_dict(policy, options=FULL))
    for name, t in rollout_lm.state_dict().items():
        t.copy_(full[name])


def save_checkpoint(run: Path, step: int, policy: Policy, opt, sched, cursor: int, seconds: float, keep_last: int,
                    tokenizer_file, rank: int):
    """Called on every rank (gathering FSDP shards is collective); rank 0 writes."""
    model_state = get_model_state_dict(policy, options=FULL_ON_RANK0_CPU)
    opt_state = get_optimizer_state_dict(policy, opt, options=FULL_ON_RANK0_CPU)
    if rank != 0:
        return None
    ckpts = run / "checkpoints"
    ckpts.mkdir(exist_ok=True)
    final = ckpts / f"step_{step:06d}"
    tmp = ckpts / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    M.save_pretrained(policy.lm, tmp / "model", state_dict=lm_part(model_state))
    shutil.copy(tokenizer_file, tmp / "model" / "tokenizer.json")
    value = {k.removeprefix("value."): v for k, v in model_state.items() if k.startswith("value.")}
    torch.save(dict(value=value, optimizer=opt_state, scheduler=sched.state_dict(), rng=rng_state()), tmp / "state.pt")
    (tmp / "progress.json").write_text(json.dumps(dict(step=step, cursor=cursor, seconds=seconds)))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(ckpts.glob("step_*"))[:-keep_last]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run: Path):
    ckpts = sorted((run / "checkpoints").glob("step_*")) if (run / "checkpoints").is_dir() else []
    return ckpts[-1] if ckpts else None


def load_checkpoint(ckpt: Path, policy: Policy, opt, sched):
    """Restores the weights, value head, optimizer, schedule and RNG on every rank; returns (step, cursor, seconds
    the run had taken)."""
    try:
        progress = json.loads((ckpt / "progress.json").read_text())
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
        lm = M.Transformer.from_pretrained(ckpt / "model", dtype=torch.float32)
        full = {f"lm.{k}": v for k, v in lm.state_dict().items()}
        full.update({f"value.{k}": v for k, v in state["value"].items()})
        set_model_state_dict(policy, full, options=FULL)
        set_optimizer_state_dict(policy, opt, state["optimizer"], options=FULL)
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        return progress["step"], progress["cursor"], progress.get("seconds", 0.0)
    except Exception as e:
        raise SystemExit(f"checkpoint {ckpt} is unreadable or incomplete ({type(e).__name__}: {e}); it was left as "
                         "it is. Remove it to resume from the one before.") from None


def truncate_jsonl(path: Path, last_step: int):
    """On resume, drop log lines written after the checkpoint (their steps will be redone), and a last line that a
    killed run left half-written. Returns the rows kept."""
    if not path.exists():
        return []
    lines = [l for l in path.read_text().split("\n") if l.strip()]
    rows = []
    for n, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines):
                raise SystemExit(f"{path}:{n}: not valid JSON; the run's log is damaged") from None
    keep = [r for r in rows if r["step"] <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, path)
    return keep


# -----------------------------------------------------------------------------
# One RL step and one SFT step


def draw_items(items, cursor, n, seed):
    """Items cursor .. cursor+n-1 of an endless stream that reshuffles the data every epoch (the same on every rank)."""
    epoch_orders = {}
    out = []
    for c in range(cursor, cursor + n):
        epoch, i = divmod(c, len(items))
        if epoch not in epoch_orders:
            epoch_orders[epoch] = data.shuffled(list(range(len(items))), seed + epoch)
        out.append(items[epoch_orders[epoch][i]])
    return out


def rollout(cfg, lm, tokenizer, items, step, rank, eos_ids):
    """Samples group_size replies per item (a prompt's samples are consecutive rows). Returns the items as asked
    (options shuffled if configured), prompt ids and response ids."""
    rng = random.Random(cfg.seed * 1_000_003 + step * 7919 + rank)
    if cfg.shuffle_options:
        items = [data.shuffle_options(it, rng) for it in items]
    items = [it for it in items for _ in range(cfg.group_size)]
    prompts = [tokenizer.encode(data.render(it, cfg.template), add_special_tokens=False).ids for it in items]
    lm.eval()
    out = M.generate(lm, prompts, cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, eos_id=eos_ids,
                     seed=rng.randrange(2**62))
    return items, prompts, out.tokens


def score_rollouts(cfg, tokenizer, items, responses, eos_ids):
    """The verifier's verdict on each reply, with everything samples.jsonl and the metrics need."""
    prefix = data.response_prefix(cfg.template)
    records = []
    for it, toks in zip(items, responses):
        body = toks[:-1] if toks and toks[-1] in eos_ids else toks
        text = tokenizer.decode(body, skip_special_tokens=False)
        s = verifier.score(prefix + text, it.answer, it.options, strict=cfg.strict, min_think_words=cfg.min_think_words)
        records.append(dict(prompt=data.render(it, cfg.template), response=text, gold=it.answer, pred=s.pred,
                            reward=s.reward, format_ok=s.format_ok, correct=s.correct,
                            pattern=verifier.pattern(prefix + text, it.options), think_words=s.think_words))
    return records


def rl_step(cfg, policy, ddp_policy, ref, rollout_lm, opt, tokenizer, items, step, rank, eos_ids, device, timers):
    lm = policy.lm
    t0 = time.perf_counter()
    items, prompts, responses = rollout(cfg, rollout_lm, tokenizer, items, step, rank, eos_ids)
    t1 = time.perf_counter()
    records = score_rollouts(cfg, tokenizer, items, responses, eos_ids)
    scores = torch.tensor([r["reward"] for r in records], device=device)
    timers["generate"], timers["score"] = t1 - t0, time.perf_counter() - t1
    t1 = time.perf_counter()
    tokens, pad, mask, P = pack(prompts, responses, eos_ids[0])
    tokens, pad, mask = tokens.to(device), pad.to(device), mask.to(device)

    # old log-probs and values (the policy that sampled), reference log-probs
    with torch.no_grad(), autocast(cfg, device):
        lm.eval()
        old_logp, old_values = [], []
        ref_logp = []
        for s in range(0, len(tokens), cfg.micro_batch_size):
            sl = slice(s, s + cfg.micro_batch_size)
            lp, _, v = policy(tokens[sl], pad[sl], P, temperature=cfg.temperature)
            old_logp.append(lp)
            old_values.append(v if v is not None else torch.zeros_like(lp))
        old_logp, old_values = torch.cat(old_logp), torch.cat(old_values)
        t2 = time.perf_counter()
        for s in range(0, len(tokens), cfg.micro_batch_size):
            sl = slice(s, s + cfg.micro_batch_size)
            ref_logp.append(response_logprobs(ref, tokens[sl], pad[sl], P, cfg.temperature)[2])
        ref_logp = torch.cat(ref_logp)
    timers["old_logp"] = t2 - t1
    timers["reference"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    kl_coef_reward = cfg.kl_coef if cfg.kl_in_reward else 0.0
    rewards = ppo.token_rewards(scores, old_logp, ref_logp, mask, kl_coef_reward, cfg.kl_kind)
    adv, returns = batch_advantages(cfg, rewards, old_values, mask)

    def loss_fn(idx):
        m = mask[idx]
        with autocast(cfg, device):
            logp, ent, values = ddp_policy(tokens[idx], pad[idx], P, entropy_grad=cfg.entropy_coef > 0,
                                           temperature=cfg.temperature)
        pl, pst = ppo.policy_loss(logp, old_logp[idx], adv[idx], m, cfg.clip, cfg.loss_agg)
        loss = pl
        st = dict(policy_loss=pl.item(), clipfrac=float(pst["clipfrac"]), approx_kl=float(pst["approx_kl"]),
                  entropy=float(ppo.masked_mean(ent.detach(), m)))
        if values is not None:
            vl, vst = ppo.value_loss(values, old_values[idx], returns[idx], m, cfg.value_clip, cfg.loss_agg)
            loss = loss + cfg.vf_coef * vl
            st.update(value_loss=vl.item(), vf_clipfrac=float(vst["vf_clipfrac"]))
        else:  # no value head (grpo, rloo, reinforce++): the objective has no value term
            st.update(value_loss=0.0)
        if cfg.entropy_coef:
            loss = loss - cfg.entropy_coef * ppo.aggregate(ent, m, cfg.loss_agg)
        if not cfg.kl_in_reward:
            loss = loss + cfg.kl_coef * ppo.aggregate(ppo.kl(logp, ref_logp[idx], cfg.kl_kind), m, cfg.loss_agg)
        return loss, st

    stats, skipped = optimize(cfg, policy, ddp_policy, opt, mask, loss_fn, cfg.ppo_epochs, seed=cfg.seed * 31 + step)
    if not stats:
        return None, records
    timers["train"] = time.perf_counter() - t3

    n_tok = float(mask.sum())
    metrics = mean_stats(stats)
    metrics["skipped_updates"] = skipped
    metrics.update(
        reward_mean=float(scores.mean()), accuracy=float(np.mean([r["correct"] for r in records])),
        format_rate=float(np.mean([r["format_ok"] for r in records])), response_len=n_tok / len(records),
        think_words=float(np.mean([r["think_words"] for r in records])),
        kl=float(ppo.masked_mean(old_logp - ref_logp, mask)),
        gen_tokens=n_tok,
    )
    if cfg.algo in ppo.NEEDS_VALUES:  # (no value head, nothing to explain)
        metrics["explained_variance"] = ppo.explained_variance(old_values, returns, mask)
    for p in verifier.PATTERNS:
        metrics[f"pattern_{p}"] = float(np.mean([r["pattern"] == p for r in records]))
    return metrics, records


def optimize(cfg, policy, ddp_policy, opt, mask, loss_fn, epochs, seed):
    """Epochs over shuffled mini-batches of rows; each mini-batch accumulates micro-batch gradients (synchronised
    across ranks on the last one only), clips them and takes one optimizer step. loss_fn(rows) -> (loss aggregated
    over those rows, stats). A mini-batch whose gradient is not finite is skipped: its gradients are dropped and
    the weights left as they are. Returns (stats of the mini-batches applied, number skipped)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    mini_rows = cfg.mini_batch_size // world
    n_micro = mini_rows // cfg.micro_batch_size
    g = torch.Generator().manual_seed(seed)
    policy.lm.train()
    stats, skipped = [], 0
    for _ in range(epochs):
        order = torch.randperm(len(mask), generator=g).to(mask.device)
        for m0 in range(0, len(mask), mini_rows):
            mini = order[m0:m0 + mini_rows]
            opt.zero_grad(set_to_none=True)
            mini_stats = []
            # token-mean over the mini-batch of every rank: DDP and FSDP average the ranks' gradients, so each rank
            # weighs its tokens by world / (all ranks' tokens), whatever its own share of them
            mini_tokens = sum_over_ranks(mask[mini].sum()) / world
            for k in range(n_micro):
                rows = mini[k * cfg.micro_batch_size:(k + 1) * cfg.micro_batch_size]
                # weight the micro-batch so the mini-batch total is the chosen aggregate (token- or sequence-mean)
                weight = mask[rows].sum() / mini_tokens if cfg.loss_agg == "token-mean" else len(rows) / len(mini)
                last = k == n_micro - 1
                if cfg.fsdp:
                    policy.set_requires_gradient_sync(last)
                with (ddp_policy.no_sync() if isinstance(ddp_policy, DDP) and not last else nullcontext()):
                    loss, st = loss_fn(rows)
                    (loss * weight).backward()
                mini_stats.append(st)
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            if isinstance(grad_norm, torch.distributed.tensor.DTensor):  # FSDP: a replicated DTensor
                grad_norm = grad_norm.full_tensor()
            if not torch.isfinite(grad_norm):  # the same on every rank: the norm is taken after the all-reduce
                opt.zero_grad(set_to_none=True)
                skipped += 1
                continue
            opt.step()
            mini_stats[-1]["grad_norm"] = float(grad_norm)
            stats += mini_stats
    return stats, skipped


def mean_stats(stats):
    keys = {k for s in stats for k in s}
    return {k: float(np.mean([s[k] for s in stats if k in s])) for k in sorted(keys)}


def sft_step(cfg, policy, ddp_policy, opt, tokenizer, items, step, rank, eos_id, device, timers):
    """Supervised baseline: cross-entropy on data.sft_target (the gold letter in the <answer> format) only."""
    t0 = time.perf_counter()
    rng = random.Random(cfg.seed * 1_000_003 + step * 7919 + rank)
    if cfg.shuffle_options:
        items = [data.shuffle_options(it, rng) for it in items]
    prompts = [tokenizer.encode(data.render(it, cfg.template), add_special_tokens=False).ids for it in items]
    targets = [tokenizer.encode(data.sft_target(it, cfg.template), add_special_tokens=False).ids + [eos_id]
               for it in items]
    tokens, pad, mask, P = pack(prompts, targets, eos_id)
    tokens, pad, mask = tokens.to(device), pad.to(device), mask.to(device)

    def loss_fn(rows):
        with autocast(cfg, device):
            logp, _, _ = ddp_policy(tokens[rows], pad[rows], P)
        loss = ppo.aggregate(-logp, mask[rows], cfg.loss_agg)
        return loss, dict(sft_loss=loss.item())

    stats, skipped = optimize(cfg, policy, ddp_policy, opt, mask, loss_fn, 1, seed=cfg.seed * 31 + step)
    timers["train"] = time.perf_counter() - t0
    if not stats:
        return None, []
    metrics = mean_stats(stats)
    metrics["skipped_updates"] = skipped
    metrics.update(response_len=float(mask.sum()) / len(items), gen_tokens=float(mask.sum()))
    return metrics, []


# -----------------------------------------------------------------------------
# Main


def load_items(files, tokenizer, cfg, what):
    items = []
    for f in files:
        try:
            items += data.encode_prompts(data.load_mcqa(f), tokenizer, cfg.template, cfg.max_prompt_len,
                                         where=f"{f}: ")[0]
        except (FileNotFoundError, ValueError) as e:  # DataError is a ValueError: file:line: field: what
            raise SystemExit(f"{what}: {e}") from None
    if not items:
        raise SystemExit(f"{what}: every prompt is longer than max_prompt_len {cfg.max_prompt_len}")
    return items


def check_context(cfg: Config, context: int, what: str):
    # prompts longer than max_prompt_len are dropped, so this is what every rollout fits in
    if cfg.max_prompt_len + cfg.max_new_tokens > context:
        raise SystemExit(f"config: max_prompt_len {cfg.max_prompt_len} + max_new_tokens {cfg.max_new_tokens} exceed "
                         f"the context of {what} ({context} tokens); lower one of them")


def is_run_config(file: Path):
    try:
        saved = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(saved, dict) and set(saved) == {f.name for f in fields(Config)}


def check_run_folder(cfg: Config, resume):
    """Refuses a folder that holds something else; checked on every rank before any rank writes."""
    run = Path(cfg.out)
    blocked = next((p for p in (run, *run.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise SystemExit(f"--out {run}: {blocked} exists and is not a folder")
    if resume is None and run.exists() and any(run.iterdir()):
        if is_run_config(run / "config.json"):
            raise SystemExit(f"{run} already holds a run: continue it with --resume {run}, or choose another --out")
        raise SystemExit(f"{run} exists, is not empty and is not a med-rlvr run folder; refusing to write into it")
    return run


def write_config(cfg: Config, run: Path, rank, world):
    """config.json (rank 0), once the inputs are known to be good: a run that fails on its data leaves no folder
    behind, and a resume that fails on its checkpoint leaves the config it had."""
    barrier(world)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / "config.json", asdict(cfg))
        for old in (run / "checkpoints").glob(".tmp_*") if (run / "checkpoints").is_dir() else []:
            shutil.rmtree(old)  # a checkpoint that a killed run was writing
    barrier(world)
    return run


def input_fingerprint(model_dir, train_files) -> dict:
    """What a resumed run must find as it was: the sha256 of each training file and of the model folder's small files
    (config, generation config, tokenizer), and the sizes of the weight files it loads (hashing gigabytes of weights
    would take minutes). Keyed by role, not path: a run folder that holds its inputs (the demo's) may be moved."""
    def sha256(f):
        return hashlib.sha256(Path(f).read_bytes()).hexdigest()
    model_dir = Path(model_dir)
    fingerprint = {f"--train file {i + 1}": sha256(f) for i, f in enumerate(train_files)}
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        if (model_dir / name).is_file():
            fingerprint[f"model {name}"] = sha256(model_dir / name)
    for f in M.checkpoint_files(model_dir):
        fingerprint[f"model {f.name}"] = f"{f.stat().st_size} bytes"
    return fingerprint


def check_inputs(run: Path, fingerprint: dict, resume, rank, world):
    """A resume refuses model or training files that changed since the run began (recorded in inputs.json; a run
    from before inputs.json existed gets one now)."""
    f = run / "inputs.json"
    recorded = resume is not None and f.is_file()
    barrier(world)  # every rank has looked before rank 0 may write it
    if recorded:
        try:
            saved = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise SystemExit(f"{f}: not valid JSON ({e}); remove it to resume without the check") from None
        changed = sorted(k for k in saved.keys() | fingerprint.keys() if saved.get(k) != fingerprint.get(k))
        if changed:
            raise SystemExit(f"--resume {run}: these inputs changed since the run began (or are new or gone): "
                             f"{', '.join(changed)}; a resumed run must train on the same model and data")
    elif rank == 0:
        write_json(f, fingerprint)
    barrier(world)


def write_json(path: Path, obj):
    """Written whole or not at all (a temp file, then renamed): a killed run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def barrier(world):
    if world > 1:
        dist.barrier()


def heldout_eval(cfg, lm, tokenizer, heldout, eos_ids, rank, world, temperature):
    """Accuracy and format rate on the held-out items, each rank answering its shard."""
    recs = evaluation.answer_items(lm.eval(), tokenizer, data.shard(heldout, rank, world), cfg.template,
                                   cfg.max_new_tokens, temperature=temperature, seed=cfg.seed, eos_ids=eos_ids,
                                   strict=cfg.strict, min_think_words=cfg.min_think_words)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, recs)
        recs = [r for g in gathered for r in g]
    return dict(n=len(recs), accuracy=float(np.mean([r["correct"] for r in recs])),
                format_rate=float(np.mean([r["format_ok"] for r in recs])))


def main(argv=None):
    t_start = time.time()
    cfg, resume = parse_config(argv)
    rank, world, device = evaluation.setup_distributed(cfg.device)
    check_config(cfg, world)
    log = (lambda *a: tqdm.write(" ".join(map(str, a)))) if rank == 0 else (lambda *a: None)
    run = check_run_folder(cfg, resume)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed)  # same initialisation (value head) on every rank

    if cfg.model is None:  # the demo: a tiny model and the synthetic task, built once per run folder
        if resume is None:
            write_config(cfg, run, rank, world)
        if rank == 0 and not (run / "base" / "config.json").exists():
            build_demo(cfg, run, log)
        barrier(world)
        model_dir, train_files, heldout_files = run / "base", [run / "data" / "train.jsonl"], \
            [run / "data" / "heldout.jsonl"]
    else:
        model_dir, train_files, heldout_files = Path(cfg.model), cfg.train, cfg.heldout
        if not train_files:
            raise SystemExit("--model needs --train FILE [FILE ...] (MCQA data, see data.py)")
    try:
        tokenizer = M.load_tokenizer(model_dir)
        evaluation.check_template_fits(cfg.template, tokenizer, model_dir)
        items = load_items(train_files, tokenizer, cfg, "--train")
        heldout = load_items(heldout_files, tokenizer, cfg, "--heldout") if heldout_files else []
        lm = M.Transformer.from_pretrained(model_dir, device=device, dtype=torch.float32)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"--model {model_dir}: {e}") from None
    eos_ids = lm.args.eos_ids  # every token that ends a reply; the first also ends SFT targets and pads batches
    if not eos_ids:
        raise SystemExit(f"{model_dir}: no eos_token_id in config.json or generation_config.json, and no eos_token in "
                         "tokenizer_config.json; training needs one to end replies")
    if cfg.model is not None:
        check_context(cfg, lm.args.max_seq_len, model_dir)
    if resume is None and cfg.model is not None:
        write_config(cfg, run, rank, world)  # only now: a run that fails on its inputs leaves no folder behind
    check_inputs(run, input_fingerprint(model_dir, train_files), resume, rank, world)

    lm.checkpointing = cfg.grad_checkpointing
    policy = Policy(lm, value_head=cfg.algo in ppo.NEEDS_VALUES).to(device)
    # frozen reference and the sampler's copy: whole models on every rank, in bf16 on GPU
    low = torch.bfloat16 if device.type == "cuda" and cfg.bf16 else torch.float32
    ref = copy.deepcopy(lm).requires_grad_(False).eval().to(low) if cfg.algo != "sft" else None
    rollout_lm = copy.deepcopy(lm).requires_grad_(False).eval().to(low)
    if cfg.fsdp:  # each block its own shard group, the rest (embeddings, norm, value head) the root's
        for block in lm.model.layers:
            fully_shard(block)
        fully_shard(policy)
    ddp_policy = DDP(policy, broadcast_buffers=False) if world > 1 and not cfg.fsdp else policy
    opt = make_optimizer(cfg, policy, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)

    step, cursor, logged = 0, 0, []
    if resume is not None:
        ckpt = latest_checkpoint(run)
        if ckpt is not None:
            step, cursor, seconds = load_checkpoint(ckpt, policy, opt, sched)
            t_start -= seconds  # `seconds` counts the whole run, not this process
            if step > cfg.steps:
                raise SystemExit(f"--resume {run}: the run is already at step {step}, past --steps {cfg.steps}")
            log(f"resumed from {ckpt} (step {step})")
        write_config(cfg, run, rank, world)  # only now: a resume that fails on its checkpoint leaves config.json be
        if rank == 0:
            logged = truncate_jsonl(run / "metrics.jsonl", step)
            truncate_jsonl(run / "samples.jsonl", step)
        barrier(world)
        sync_rollout(policy, rollout_lm)

    # SFT has no samples to draw: it takes group_size times more items, so a step has as many rows as in RL
    per_step = cfg.prompts_per_step * (cfg.group_size if cfg.algo == "sft" else 1)
    per_rank = per_step // world
    bad, first = 0, (logged[0] if logged else None)
    bar = tqdm(range(step + 1, cfg.steps + 1), desc=f"{cfg.algo}", disable=rank != 0, dynamic_ncols=True,
               initial=step, total=cfg.steps)
    last = logged[-1] if logged else {}
    for step in bar:
        t0 = time.perf_counter()
        batch = draw_items(items, cursor, per_step, cfg.seed)[rank * per_rank:(rank + 1) * per_rank]
        cursor += per_step
        timers = {}
        if cfg.algo == "sft":
            metrics, records = sft_step(cfg, policy, ddp_policy, opt, tokenizer, batch, step, rank, eos_ids[0], device,
                                        timers)
        else:
            metrics, records = rl_step(cfg, policy, ddp_policy, ref, rollout_lm, opt, tokenizer, batch, step, rank,
                                       eos_ids, device, timers)
        skipped = "all" if metrics is None else metrics["skipped_updates"]
        if skipped:
            bad += 1
            log(f"warning: step {step}: non-finite loss or gradient, {skipped} mini-batch update(s) skipped "
                f"({bad} step(s) in a row)")
            if bad >= cfg.max_bad_steps:
                raise SystemExit(f"stopping: {bad} steps in a row with non-finite updates; the last good checkpoint "
                                 f"is {latest_checkpoint(run)} (untouched)")
        else:
            bad = 0
        if metrics is not None:  # some update was applied
            lr = sched.get_last_lr()[0]  # the rate this step's updates used
            sched.step()
            if cfg.algo != "sft":
                sync_rollout(policy, rollout_lm)
            metrics.update({f"time_{k}": v for k, v in timers.items()})
            metrics = all_mean(metrics, device, world)
            metrics["tokens_per_s"] = metrics["gen_tokens"] * world / (time.perf_counter() - t0)
            metrics.update(step=step, lr=lr, seconds=time.time() - t_start)
            # strict JSON has no NaN (explained variance is NaN when every return is equal): write null
            metrics = {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in metrics.items()}
            first, last = first or metrics, metrics
        if rank == 0 and metrics is not None:
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            if records and (step % cfg.sample_every == 0 or step == 1):
                with open(run / "samples.jsonl", "a") as f:
                    for r in records[:cfg.n_samples]:
                        f.write(json.dumps(dict(step=step, **r)) + "\n")
            if "reward_mean" in metrics:
                bar.set_postfix(reward=f"{metrics['reward_mean']:+.2f}", acc=f"{metrics['accuracy']:.2f}",
                                fmt=f"{metrics['format_rate']:.2f}")
            else:
                bar.set_postfix(loss=f"{metrics['sft_loss']:.3f}")
        # not after a step whose updates were all skipped (the last good checkpoint stays the latest), but always at
        # the end, which would otherwise lose the steps since the last checkpoint
        if (step % cfg.save_every == 0 and metrics is not None) or step == cfg.steps:
            save_checkpoint(run, step, policy, opt, sched, cursor, time.time() - t_start, cfg.keep_last,
                            model_dir / "tokenizer.json", rank)
            barrier(world)
    bar.close()

    # the held-out keys are always there: null without held-out data (a --model run without --heldout)
    final = dict(steps=cfg.steps, seconds=time.time() - t_start, algo=cfg.algo, heldout_n=0, heldout_accuracy=None,
                 heldout_format_rate=None)
    if heldout:
        sync_rollout(policy, rollout_lm)
        greedy = heldout_eval(cfg, rollout_lm, tokenizer, heldout, eos_ids, rank, world, temperature=0.0)
        final.update(heldout_n=greedy["n"], heldout_accuracy=greedy["accuracy"], heldout_format_rate=greedy["format_rate"])
        if cfg.algo != "sft":  # RL trains the sampling policy: report it too, at the rollout temperature
            sampled = heldout_eval(cfg, rollout_lm, tokenizer, heldout, eos_ids, rank, world,
                                   temperature=cfg.temperature)
            final.update(heldout_sampled_accuracy=sampled["accuracy"], heldout_sampled_format_rate=sampled["format_rate"])
    final["last"] = last
    # every rank must end with the same weights; record a checksum per rank so a divergence is visible
    checksum = float(sum(t.double().sum() for t in get_model_state_dict(policy, options=FULL).values()))
    final["rank_checksums"] = [checksum]
    if world > 1:
        final["rank_checksums"] = [None] * world
        dist.all_gather_object(final["rank_checksums"], checksum)
    if rank == 0:
        write_json(run / "final.json", final)
        summary = f"done: {cfg.algo}, {cfg.steps} steps, {final['seconds']:.0f}s in all"
        if first and "reward_mean" in first and "reward_mean" in last:
            summary += (f"; reward {first['reward_mean']:+.2f} -> {last['reward_mean']:+.2f}, accuracy "
                        f"{first['accuracy']:.2f} -> {last['accuracy']:.2f}, format {first['format_rate']:.2f} -> "
                        f"{last['format_rate']:.2f}")
        if heldout:
            summary += f"; held-out accuracy {final['heldout_accuracy']:.3f} (format {final['heldout_format_rate']:.2f})"
        print(summary + f" -> {run / 'final.json'}")
    if world > 1:
        # DDP's reducer holds the process group: freed only after destroy_process_group (when main's locals go), the
        # group's gloo destructor can deadlock (seen once in CI: a rank stuck in ~ProcessGroupGloo). Free it first
        del ddp_policy
        gc.collect()
        dist.barrier()  # no rank tears gloo down while another still talks to it
        dist.destroy_process_group()
    return final


if __name__ == "__main__":
    main()
    evaluation.exit_torchrun_process()

"""Benchmarks: speed as a ratio against a baseline run side by side, phase splits, and memory peaks.

    python bench.py sampler                   # our KV-cached sampler vs transformers.generate, CPU cases medium, tiny
    python bench.py sampler --gpu             # Qwen2.5-3B shape, bf16, batch 64, prompt 256, 512 new: roofline,
                                              # decode profile, and transformers' static cache + compile too
    python bench.py train                     # RL steps of the demo preset: seconds per phase, tokens/s (CPU)
    python bench.py train --gpu --steps 1     # PPO steps of the qwen2.5-3b preset, 64 x 1024: memory, MFU
    python bench.py memory                    # peak memory of a 3B PPO update, counted on fake tensors (no GPU)
    python bench.py --gpu-suite [--dry-run]   # everything that needs a GPU, in one call; --dry-run: tiny, on CPU
    python bench.py --gpu-suite --sections ppo,sampler   # some of correctness, ppo, sampler, static (a rerun)

`transformers` is only the baseline (requirements-dev.txt). `sampler` ends with `sampler_speedup_vs_hf=<ratio>` for
its first case. The GPU suite prints a short table last and writes its full log to $OUT (or --log-dir).
"""

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from torch._dynamo.utils import counters
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

import data
import model as M
import ppo
import train

# Qwen2.5-3B's shape, from its config.json (tests/test_bench.py checks it against ../shared/ref when present)
QWEN25_3B = dict(dim=2048, n_layers=36, n_heads=16, n_kv_heads=2, intermediate_size=11008, vocab_size=151936,
                 norm_eps=1e-6, rope_theta=1e6, tie_embeddings=True)
# ~40M parameters: both samplers spend most of a step in matrix multiplies, so the ceiling is low
MEDIUM = dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, intermediate_size=1408, vocab_size=32000)
# what a dry run of the GPU suite uses instead of QWEN25_3B
DRY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=128, vocab_size=1024, tie_embeddings=True)

# name: (shape, dtype, batch, prompt length, new tokens)
SAMPLER_CASES = {
    "medium": (MEDIUM, torch.float32, 16, 64, 128),
    "tiny": (None, torch.float32, 64, 32, 32),  # the demo model's shape: per-step overhead dominates
    "gpu": (QWEN25_3B, torch.bfloat16, 64, 256, 512),
    "dry": (DRY, torch.float32, 4, 16, 3 * M.EOS_CHECK_EVERY),  # the decode profile stops runs at 16 and 48 tokens
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, per GPU


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def shape_of(case_shape):
    return case_shape if case_shape is not None else \
        {k: v for k, v in train.demo_model_args(512).__dict__.items()
         if k not in ("eos_id", "eos_ids", "bos_id", "max_seq_len")}


def random_model(shape, dtype, device, seed=0, max_seq_len=4096):
    """Random weights built straight on the device (a 3B model initialised on CPU would take minutes)."""
    args = M.ModelArgs(**{**shape, "max_seq_len": max_seq_len, "eos_id": 0})
    with torch.device(device):
        m = M.Transformer(args)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=g)
    return m.to(dtype).eval()


def hf_twin(ours: M.Transformer):
    """transformers' Qwen2ForCausalLM holding the same weights (the baseline and the oracle)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    w = ours.model.embed_tokens.weight
    cfg = Qwen2Config(**{k: v for k, v in ours.args.to_hf_config(w.dtype).items() if k != "torch_dtype"})
    with torch.device(w.device):
        hf = Qwen2ForCausalLM(cfg).to(w.dtype)
    hf.load_state_dict(ours.state_dict(), strict=not ours.args.tie_embeddings)
    if ours.args.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def ours_call(model, prompts, new):
    def call():
        out = M.generate(model, prompts, new, temperature=1.0, seed=0)
        assert all(len(t) == new for t in out.tokens)
    return call


def hf_call(hf, prompts, new, device, static=False):
    """transformers.generate, sampling, EOS ignored. static: its static KV cache, with which generate compiles the
    model's decode step itself (torch.compile, mode reduce-overhead: CUDA graphs) on a GPU: its own fast path."""
    x = torch.tensor(prompts, device=device)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
              eos_token_id=None, pad_token_id=0, attention_mask=torch.ones_like(x))
    if static:
        kw.update(cache_implementation="static")

    def call():
        out = hf.generate(x, **kw)
        assert out.shape[1] == x.shape[1] + new
    return call


def median_seconds(calls, device, reps, warm=True):
    """Median seconds of each call over `reps`, after a warm-up each unless `warm` is False (on CUDA: compile, graph
    capture). The calls take turns, rep by rep, so a slow spell of this shared machine slows every one of them alike,
    not one side."""
    for call in calls if warm else []:
        call()
    times = [[] for _ in calls]
    for _ in range(reps):
        for call, ts in zip(calls, times):
            sync(device)
            t0 = time.perf_counter()
            call()
            sync(device)
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def copy_bandwidth(device, nbytes=2**30):
    """Measured device-to-device copy bandwidth, bytes/s (each copy reads and writes nbytes)."""
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    sync(device)
    return 2 * nbytes * 10 / (time.perf_counter() - t0)


def run_generate(model, prompts, new, device, steps=None):
    """Seconds of one generate call for `new` tokens; `steps` (a multiple of model.EOS_CHECK_EVERY): every row stops
    after that many, with the cache still sized for `new`, so no new cache or CUDA graph is made."""
    stop = None if steps is None else (lambda row: len(row) >= steps)
    sync(device)
    t0 = time.perf_counter()
    M.generate(model, prompts, new, seed=0, stop=stop)
    sync(device)
    return time.perf_counter() - t0


def decode_step_seconds(model, prompts, new, device):
    """Seconds per decode step: the difference between a full run and one stopped after EOS_CHECK_EVERY tokens (the
    prefill and the first steps), over the steps between them, on a model already warm for this batch."""
    k = M.EOS_CHECK_EVERY
    assert new > k, f"decode_step_seconds needs more than {k} new tokens, got {new}"
    return (run_generate(model, prompts, new, device) - run_generate(model, prompts, new, device, k)) / (new - k)


# first match wins: attention kernels' names contain "cutlass" and "splitkv" too
KERNEL_KINDS = {"attention": ("sdpa", "flash", "fmha", "attention", "attn"),
                "matmul": ("gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk", "aten::mm", "aten::addmm"),
                "copies": ("memcpy", "memset")}


def kernel_kind(name):
    return next((kind for kind, words in KERNEL_KINDS.items() if any(w in name.lower() for w in words)), "other")


def decode_profile(model, prompts, new, device):
    """Where a decode step's GPU time goes, from the profiler over real generate calls (warm for this batch): two
    runs stopped after 16 and 48 tokens, so their difference is 32 decode steps, prefill excluded. Milliseconds per
    step by kind of kernel (matmul, attention, copies, other: norms, RoPE, sampling...) and the kernels that take
    most."""
    from torch.profiler import ProfilerActivity, profile
    k = M.EOS_CHECK_EVERY
    cuda = device.type == "cuda"  # on CPU (a dry run): CPU operators and their own time
    totals = []
    for steps in (k, 3 * k):
        with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
            run_generate(model, prompts, new, device, steps)
        totals.append({e.key: (e.device_time_total if cuda else e.self_cpu_time_total, e.count)
                       for e in prof.key_averages()})
    n = 2 * k
    per_step = {name: ((t - totals[0].get(name, (0, 0))[0]) / n / 1e3, (c - totals[0].get(name, (0, 0))[1]) / n)
                for name, (t, c) in totals[1].items()}
    kinds = dict.fromkeys([*KERNEL_KINDS, "other"], 0.0)
    for name, (ms, _) in per_step.items():
        kinds[kernel_kind(name)] += ms
    top = sorted(per_step.items(), key=lambda kv: -kv[1][0])[:10]
    return dict(check="decode step profile", **{f"{kind}_ms": round(ms, 3) for kind, ms in kinds.items()},
                top_kernels=[[name[:90], round(ms, 3), round(calls, 1)] for name, (ms, calls) in top])


def matmul_floor_call(model, B, P, new, device):
    """One generate call's matrix multiplies alone: every linear layer over the B x P prompt tokens, then over B
    tokens for each of the new - 1 decode steps, and the output layer once per row per step. Attention, norms and
    sampling are left out, so no sampler can be faster: a baseline's time over this is the highest speedup any
    sampler could reach against it on this machine."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    out = model.model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    x = {w.shape[1]: torch.randn(B * P, w.shape[1], device=device, dtype=w.dtype) for w in weights}

    @torch.no_grad()
    def call():
        for rows, steps in ((B * P, 1), (B, new - 1)):
            for _ in range(steps):
                for w in weights:
                    torch.nn.functional.linear(x[w.shape[1]][:rows], w)
                torch.nn.functional.linear(x[out.shape[1]][:B], out)
    return call


def sampler_inputs(case, device):
    """Our model with random weights for one SAMPLER_CASES case, its transformers twin, the prompts, and the row that
    describes the case."""
    shape, dtype, B, P, new = SAMPLER_CASES[case]
    shape = shape_of(shape)
    ours = random_model(shape, dtype, device)
    prompts = torch.randint(0, shape["vocab_size"], (B, P), generator=torch.Generator().manual_seed(0)).tolist()
    return ours, hf_twin(ours), prompts, dict(case=case, batch=B, prompt=P, new=new,
                                              dtype=str(dtype).removeprefix("torch."))


def bench_sampler(case, device, reps, log=print, roofline=False):
    """Ours vs transformers.generate (its default, dynamic KV cache) on one SAMPLER_CASES case. CPU cases add the
    matrix-multiply floor (matmul_floor_call); roofline (the GPU case) adds the fraction of the memory-bandwidth
    roofline and the decode step's profile instead (there eager matrix multiplies are no floor: their launches cost
    more than our CUDA graph's)."""
    ours, hf, prompts, row = sampler_inputs(case, device)
    B, P, new, dtype = len(prompts), len(prompts[0]), row["new"], ours.model.embed_tokens.weight.dtype
    # our warm-up on CUDA, in runs stopped early (the cache is the benchmark's): the decode step's compile for this
    # batch and cache length unless an earlier section made it, and the CUDA-graph recording for this model
    calls = [run_generate(ours, prompts, new, device, M.EOS_CHECK_EVERY) for _ in range(2)]
    row.update(warmup_s=calls[0] - calls[1])
    contenders = [ours_call(ours, prompts, new), hf_call(hf, prompts, new, device)]
    if not roofline:
        contenders.append(matmul_floor_call(ours, B, P, new, device))
    else:  # transformers' one-time costs (no compile on this path) take a short call, not a full one
        hf_call(hf, prompts, 2, device)()
    t_ours, t_hf, *t_floor = median_seconds(contenders, device, reps, warm=not roofline)
    row.update(ours_tok_s=B * new / t_ours, hf_tok_s=B * new / t_hf, speedup=t_hf / t_ours)
    if t_floor:
        row.update(matmul_floor_s=t_floor[0], max_speedup=t_hf / t_floor[0])
    if roofline:
        # a decode step must read every weight once and the KV cache written so far: on average the prompt's keys
        # and values plus half of the new tokens'
        step = decode_step_seconds(ours, prompts, new, device)
        a = ours.args
        weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
        kv_bytes = 2 * a.n_layers * B * a.n_kv_heads * (P + new / 2) * a.head_dim * dtype.itemsize
        bw = copy_bandwidth(device)
        # what our step does read: the whole cache, its unwritten slots masked
        read_bytes = weight_bytes + sum(b.numel() * b.element_size() for layer in ours.model.layers
                                        for b in layer.self_attn.cache.buffers())
        row.update(decode_step_ms=1e3 * step, copy_bw_gb_s=bw / 1e9, bytes_per_step_gb=(weight_bytes + kv_bytes) / 1e9,
                   roofline_fraction=(weight_bytes + kv_bytes) / step / bw, bytes_read_per_step_gb=read_bytes / 1e9,
                   bandwidth_fraction_of_bytes_read=read_bytes / step / bw)
        log(json.dumps(decode_profile(ours, prompts, new, device)))
    row.update(compiled_graphs_in_process=counters["stats"]["unique_graphs"],
               cudagraph_skips_in_process=counters["inductor"]["cudagraph_skips"])
    log(json.dumps(row))
    del ours, hf
    return row


def bench_static(case, device, reps, log=print):
    """Ours vs transformers.generate with its static KV cache, with which it compiles its decode step itself on a GPU
    (torch.compile, CUDA graphs): its own fast path. Its compile at the 3B shape: not yet measured."""
    ours, hf, prompts, row = sampler_inputs(case, device)
    new = row["new"]
    ours_run, static = ours_call(ours, prompts, new), hf_call(hf, prompts, new, device, static=True)
    ours_run()  # compiled already if the sampler ran before in this process
    sync(device)
    t0 = time.perf_counter()
    static()  # its warm-up: compile and CUDA-graph capture
    sync(device)
    row["hf_static_warmup_s"] = time.perf_counter() - t0
    t_ours, t_static = median_seconds([ours_run, static], device, reps, warm=False)
    row.update(ours_tok_s=len(prompts) * new / t_ours, hf_static_tok_s=len(prompts) * new / t_static,
               speedup_vs_static=t_static / t_ours)
    log(json.dumps(row))
    del ours, hf
    return row


def sampler_table(rows, static=None):
    lines = [f"{'case':7} {'batch':>5} {'prompt':>6} {'new':>4} {'ours tok/s':>11} {'hf tok/s':>9} {'speedup':>8} "
             f"{'ceiling':>8}"]
    for r in rows:
        ceiling = f"{r['max_speedup']:>7.2f}x" if "max_speedup" in r else f"{'-':>8}"
        lines.append(f"{r['case']:7} {r['batch']:>5} {r['prompt']:>6} {r['new']:>4} {r['ours_tok_s']:>11.0f} "
                     f"{r['hf_tok_s']:>9.0f} {r['speedup']:>7.2f}x {ceiling}")
    lines.append("times: medians, the calls taking turns; ceiling (CPU cases): transformers' time over the time of the "
                 "same matrix multiplies alone (bench.matmul_floor_call), the most any sampler could gain here")
    for r in rows:
        if "roofline_fraction" in r:
            lines.append(f"{r['case']}: decode step {r['decode_step_ms']:.2f} ms, {r['roofline_fraction']:.0%} of the "
                         f"memory-bandwidth roofline ({r['bytes_per_step_gb']:.2f} GB per step at "
                         f"{r['copy_bw_gb_s']:.0f} GB/s)")
    if static:
        lines.append(f"{static['case']}: transformers with its static cache + compile {static['hf_static_tok_s']:.0f} "
                     f"tok/s, ours {static['ours_tok_s']:.0f}: {static['speedup_vs_static']:.2f}x")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Training step


def bench_train(device, shape, cfg: train.Config, steps, log=print):
    """RL steps of train.rl_step on random weights: seconds per phase, tokens/s, peak memory, training MFU."""
    items, _ = data.synthetic_task(max(16, cfg.prompts_per_step), 0, seed=0)
    texts = [data.render(it, cfg.template) + data.sft_target(it, cfg.template) for it in items]
    tokenizer = data.demo_tokenizer(texts)
    dtype = torch.float32
    lm = random_model(shape, dtype, device, max_seq_len=cfg.max_prompt_len + cfg.max_new_tokens + 128)
    lm.checkpointing = cfg.grad_checkpointing
    policy = train.Policy(lm, value_head=cfg.algo in ppo.NEEDS_VALUES).to(device)
    ref = copy.deepcopy(lm).requires_grad_(False).to(torch.bfloat16 if device.type == "cuda" else dtype)
    rollout_lm = copy.deepcopy(lm).requires_grad_(False).to(torch.bfloat16 if device.type == "cuda" else dtype)
    opt = train.make_optimizer(cfg, policy, device)
    batches = [[items[(step * cfg.prompts_per_step + i) % len(items)] for i in range(cfg.prompts_per_step)]
               for step in range(1, steps + 1)]
    # the sampler's compile and CUDA-graph recording for these rollouts' batch and cache length, before the timed
    # steps (one-off costs, ~45 s at 3B); a run stopped early, on the first step's prompts
    prompts = [tokenizer.encode(data.render(it, cfg.template), add_special_tokens=False).ids
               for it in batches[0] for _ in range(cfg.group_size)]
    warmup_s = run_generate(rollout_lm, prompts, cfg.max_new_tokens, device, M.EOS_CHECK_EVERY)
    rows = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step, batch in enumerate(batches, 1):
        timers = {}
        t0 = time.perf_counter()
        metrics, _ = train.rl_step(cfg, policy, policy, ref, rollout_lm, opt, tokenizer, batch, step, 0, [0],
                                     device, timers)
        sync(device)
        total = time.perf_counter() - t0
        n_tok = metrics["gen_tokens"] if metrics else float("nan")
        row = dict(step=step, seconds=total, tokens_per_s=n_tok / total, response_len=metrics["response_len"],
                   sampler_warmup_s=warmup_s, **{f"s_{k}": v for k, v in timers.items()})
        n_params = sum(p.numel() for p in lm.parameters())
        n_prompt = sum(len(tokenizer.encode(data.render(it, cfg.template), add_special_tokens=False).ids)
                       for it in batch) * cfg.group_size
        # forward+backward = 6 N per token (prompt and response), one more forward under activation checkpointing;
        # attention's own FLOPs and padding left out
        flops = (8 if cfg.grad_checkpointing else 6) * n_params * (n_prompt + n_tok) * cfg.ppo_epochs
        if device.type == "cuda":
            # near the card's capacity the caching allocator may free its cache and retry (a synchronising
            # slowdown): counted here, with what it held at most
            stats = torch.cuda.memory_stats()
            row.update(peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9,
                       peak_reserved_gb=torch.cuda.max_memory_reserved() / 1e9,
                       alloc_retries=stats.get("num_alloc_retries", 0))
            name = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
            if peak:
                row["train_mfu"] = flops / timers["train"] / peak
        log(json.dumps(row))
        rows.append(row)
    return rows


def demo_train_config():
    return train.Config()


def gpu_train_config(dry: bool):
    cfg = train.Config(**train.PRESETS["qwen2.5-3b"])
    cfg.prompts_per_step, cfg.max_new_tokens, cfg.max_prompt_len = 64, 1024, 256
    if dry:
        cfg.prompts_per_step, cfg.max_new_tokens, cfg.max_prompt_len = 4, 8, 128
        cfg.mini_batch_size, cfg.micro_batch_size = 4, 2
    return cfg


# -----------------------------------------------------------------------------
# Memory of a PPO update, counted on fake tensors (no GPU, nothing allocated)


class LiveMemory(TorchDispatchMode):
    """After every operation, the bytes of all live tensor storages, and their peak: what
    torch.cuda.max_memory_allocated would report for the same code (the CUDA context, cuBLAS workspaces and
    allocator fragmentation come on top)."""

    def __init__(self, tensors):
        super().__init__()
        self.live, self.peak, self.peak_op = {}, 0, ""
        for t in tensors:
            self.track(t)

    def track(self, t):
        st = t.untyped_storage()
        old = self.live.get(st._cdata)
        if old is None or old[0].expired():  # a freed storage's address can be reused by a new one
            self.live[st._cdata] = (StorageWeakRef(st), st.nbytes())

    def current(self):
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        return sum(n for _, n in self.live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t)
        now = self.current()
        if now > self.peak:
            self.peak, self.peak_op = now, str(func)
        return out


def estimate_memory(shape, cfg: train.Config, prompt_len, device="cuda"):
    """Peak memory of the PPO training phase of `cfg` on one `device`, counted on fake tensors: the fp32 policy with
    its value head and optimizer (train.make_optimizer), the reference and rollout copies (bf16 with cfg.bf16) with
    the sampler's KV cache for one step's rollouts, a no-grad pass for old and reference log-probs, then two updates
    of two micro-batches each: forward (autocast), backward (activation checkpointing as cfg says), optimizer step.
    The sampler's own prefill activations are not counted. Every sequence is prompt_len + cfg.max_new_tokens long.
    Returns GiB: the peak, the operation at the peak, and what stays live at the end."""
    args = M.ModelArgs(**{**shape, "max_seq_len": prompt_len + cfg.max_new_tokens + M.CACHE_ROUND, "eos_id": 0})
    low = torch.bfloat16 if cfg.bf16 else torch.float32
    with torch.device("meta"):
        lm = M.Transformer(args)
        policy = train.Policy(lm, value_head=cfg.algo in ppo.NEEDS_VALUES)
        ref, rollout_lm = M.Transformer(args).to(low), M.Transformer(args).to(low)
    lm.checkpointing = cfg.grad_checkpointing
    n, P, R = cfg.micro_batch_size, prompt_len, cfg.max_new_tokens
    # fake CPU tensors stand in for the GPU's: the same code runs and nothing is allocated; CPU autocast casts the
    # same operations to bf16 as train.autocast's CUDA autocast does (without a cast cache, as there)
    with FakeTensorMode(allow_non_fake_inputs=True):
        for m in (policy, ref, rollout_lm):
            m.to_empty(device="cpu")
        rollout_lm.setup_cache(cfg.prompts_per_step * cfg.group_size, -(-(P + R) // M.CACHE_ROUND) * M.CACHE_ROUND)
        opt = train.make_optimizer(cfg, policy, device)
        tokens, mask = torch.zeros(n, P + R, dtype=torch.long), torch.ones(n, R)
        cast = dict(device_type="cpu", dtype=torch.bfloat16, enabled=cfg.bf16, cache_enabled=False)
        with LiveMemory([t for m in (policy, ref, rollout_lm) for t in [*m.parameters(), *m.buffers()]]) as mem:
            with torch.no_grad(), torch.autocast(**cast):
                old_logp, _, old_values = policy(tokens, None, P)
                train.response_logprobs(ref, tokens, None, P)
            policy.train()
            for _ in range(2):  # the optimizer state exists from the second update on
                opt.zero_grad(set_to_none=True)
                for _ in range(2):  # the second micro-batch's backward adds to the first one's gradients
                    with torch.autocast(**cast):
                        logp, _, values = policy(tokens, None, P)
                    # ppo's losses on the same [n, R] shapes (theirs check input values, which fake tensors lack)
                    ratio = (logp - old_logp).exp()
                    loss = -(torch.minimum(ratio, ratio.clamp(1 - cfg.clip, 1 + cfg.clip)) * mask).sum() / mask.sum()
                    if values is not None:
                        loss = loss + cfg.vf_coef * ((values - old_values) ** 2 * mask).sum() / mask.sum()
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
                opt.step()
            end = mem.current()
    return dict(peak_gib=mem.peak / 2**30, peak_op=mem.peak_op, end_gib=end / 2**30)


# -----------------------------------------------------------------------------
# GPU suite: correctness in bf16, sampler speed + roofline, 3B PPO step memory/MFU, warm-up times


def bf16_correctness(device, case, log):
    """Our bf16 logits and transformers' on the same weights, each measured against an fp32 forward of those weights
    (the bf16 weights upcast, so only the arithmetic differs). A deep random-weight model amplifies bf16 rounding, so
    the yardstick is transformers' own bf16 error: ours may exceed it by BF16_SLACK at most. Also: our fp32 forward
    against transformers' fp32 on this GPU, and greedy decoding, compiled (CUDA graphs) and eager, checked against
    a full fp32 recomputation of the log-probs it reports (a stale cache slot or a wrong position costs nats). The
    compiled run has the sampler case's batch and lengths, so its compile, the process's first, serves the sampler
    section too."""
    shape, _, B, P, new = SAMPLER_CASES[case]
    ours = random_model(shape, torch.bfloat16, device)
    exact_lm = copy.deepcopy(ours).float()
    exact_lm.init_rope()  # .to(bf16) rounded the RoPE tables too
    hf = hf_twin(exact_lm)
    prompts = torch.randint(0, shape["vocab_size"], (B, P), generator=torch.Generator().manual_seed(1)).to(device)
    x = prompts[:4]
    # fp32 references in SDPA's math kernel: the fused kernels' fp32 attention is not exact on a GPU (the two fp32
    # models differed by 5e-3 in an H100 run, 2026-11-27, where they took different kernels; TF32-like rounding)
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        exact = exact_lm(x).float()
        hf32 = hf(x).logits.float()
    with torch.no_grad():
        hf.to(torch.bfloat16)
        hf16, ours16 = hf(x).logits.float(), ours(x).float()

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    row = dict(check="bf16 logits vs transformers", fp32_rel_error=rel(hf32, exact), ours_bf16_rel_error=rel(ours16, exact),
               hf_bf16_rel_error=rel(hf16, exact), ours_vs_hf_bf16=rel(ours16, hf16))
    del exact, hf32, hf16, ours16
    # the process's first compiled generate: its cold compile (with the first CUDA-graph recording), then replays;
    # then a copy of the model, whose new weight addresses make the same compiled step record its graph again
    times = []
    for lm in (ours, ours, ours, copy.deepcopy(ours)):
        sync(device)
        t0 = time.perf_counter()
        out = M.generate(lm, prompts.tolist(), new, temperature=0)
        sync(device)
        times.append(time.perf_counter() - t0)
        if lm is ours:
            g = out
    del lm, out
    record = times[3] - times[2]
    n = 64 if device.type == "cuda" else 8  # tokens checked, of the first 4 rows
    g = M.Generation([t[:n] for t in g.tokens[:4]], [lp[:n] for lp in g.logprobs[:4]])
    eager = M.generate(ours, x.tolist(), n, temperature=0, compile=False)
    ref = hf.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                      pad_token_id=0, attention_mask=torch.ones_like(x))[:, x.shape[1]:].tolist()

    def recompute_error(gen):
        """Mean |reported log-prob - fp32 log-prob of the same token in a full forward|, over every token."""
        d = []
        for prompt, toks, lps in zip(x, gen.tokens, gen.logprobs):
            seq = torch.cat([prompt, torch.tensor(toks, device=device)])[None]
            with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
                lp = exact_lm(seq)[0, len(prompt) - 1:-1].float().log_softmax(-1)
            d += (lp.gather(-1, seq[0, len(prompt):, None])[:, 0] - torch.tensor(lps, device=device)).abs().tolist()
        return sum(d) / len(d)

    def agreement(a, b):  # tokens equal at the same position; after a first difference the rows usually diverge
        return sum(p == q for r, s in zip(a, b) for p, q in zip(r, s)) / (len(b) * n)

    row.update(compiled_logprob_error=recompute_error(g), eager_logprob_error=recompute_error(eager),
               greedy_agreement_hf=agreement(g.tokens, ref), greedy_agreement_compiled_eager=agreement(g.tokens,
                                                                                                  eager.tokens),
               first_compile_s=times[0] - times[2] - record, cudagraph_record_s=record, greedy_call_s=times[2])
    row["ok"] = (row["fp32_rel_error"] <= FP32_TOLERANCE and row["ours_bf16_rel_error"] <= BF16_SLACK *
                 row["hf_bf16_rel_error"] and row["compiled_logprob_error"] <= DECODE_SLACK * row["eager_logprob_error"])
    log(json.dumps(row))
    del hf
    row["fused_attention"] = fused_attention_only(ours, log)["ok"]
    del ours
    return row


FP32_TOLERANCE = 1e-3  # relative L2 error of logits, ours against transformers, both fp32 (on CPU: 0.0)
BF16_SLACK = 1.25  # ours in bf16 may be this much further from the fp32 logits than transformers in bf16 is
# the compiled decode's log-probs may be this much further from fp32 than the eager decode's (each over its own
# greedy tokens: bf16 noise, ~0.03 nats on the H100); a stale cache slot or a wrong position costs nats
DECODE_SLACK = 2.0


def fused_attention_only(model, log):
    """Runs the padded forward + backward (training), prefill and decode steps (sampler) with SDPA's math fallback
    disabled: each raises if its attention would need it (model.attend is written so that none does)."""
    device = model.model.embed_tokens.weight.device
    x = torch.randint(0, model.args.vocab_size, (2, 64), device=device)
    pad = torch.ones_like(x, dtype=torch.bool)
    pad[0, :5] = False
    row = dict(check="attention without the math fallback")
    prompts = [x[0, :9].tolist(), x[1].tolist()]
    runs = {"padded forward + backward": lambda: model(x, pad).float().logsumexp(-1).mean().backward(),
            "ragged prefill + decode": lambda: M.generate(model, prompts, 4, seed=0, compile=False),
            "even prefill + decode": lambda: M.generate(model, [prompts[1]] * 2, 4, seed=0, compile=False),
            "one-token prefill + decode": lambda: M.generate(model, [[5], [7]], 4, seed=0, compile=False)}
    for name, run in runs.items():
        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
                run()
            row[name] = "ok"
        except RuntimeError as e:
            row[name] = f"needs the math kernel: {e}"[:300]
    model.zero_grad(set_to_none=True)
    row["ok"] = all(v == "ok" for k, v in row.items() if k != "check")
    log(json.dumps(row))
    return row


def replaced_caches_freed(device, log):
    """generate at two cache lengths, then the first again: each new length replaces the KV cache and compiles and
    records another CUDA graph, and nothing may keep the replaced caches' memory (a training run meets a handful of
    lengths; at 3B each cache is GBs). Checked on the storages themselves, and on the allocator's count: after the
    last call, less than one cache more than after the first. A small model, so that the compiles take seconds."""
    # a small vocabulary: each CUDA graph's own outputs (the logits) stay far below a cache's size
    shape = dict(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=512, vocab_size=1024)
    m = random_model(shape, torch.bfloat16, device)
    allocated, replaced = [], []
    for P in (100, 230, 100):  # caches of 128, 256 and 128 slots with 16 new tokens
        if m.model.layers[0].self_attn.cache is not None:
            replaced += [StorageWeakRef(b.untyped_storage()) for layer in m.model.layers
                         for b in layer.self_attn.cache.buffers()]
        M.generate(m, [[1] * P] * 64, 16, seed=0)
        gc.collect()
        sync(device)
        allocated.append(torch.cuda.memory_allocated() if device.type == "cuda" else 0)
    cache = sum(b.numel() * b.element_size() for layer in m.model.layers for b in layer.self_attn.cache.buffers())
    alive = sum(not r.expired() for r in replaced)
    row = dict(check="replaced KV caches freed", replaced_storages=len(replaced), still_alive=alive,
               allocated_mb=[round(a / 2**20, 1) for a in allocated], last_cache_mb=cache / 2**20,
               ok=alive == 0 and allocated[-1] - allocated[0] < cache)
    log(json.dumps(row))
    return row


SECTIONS = ("correctness", "ppo", "sampler", "static")


def gpu_suite(dry_run: bool, log_dir: Path, sections=SECTIONS):
    """Runs the sections in order and returns whether all passed. A section that raises is logged with its
    traceback and the next one still runs: a GPU session is too short to lose the rest to one failure."""
    device = torch.device("cpu" if dry_run else "cuda")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(log_dir / "gpu_suite.jsonl", "w")

    def log(line):
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    shape = DRY if dry_run else QWEN25_3B
    t_start = time.perf_counter()
    log(json.dumps(dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
                        torch=torch.__version__, date=time.strftime("%Y-%m-%d"), sections=list(sections))))

    def correctness():
        r = bf16_correctness(device, "dry" if dry_run else "gpu", log)
        line = (f"logits vs fp32: ours bf16 {r['ours_bf16_rel_error']:.2e}, transformers bf16 "
                f"{r['hf_bf16_rel_error']:.2e}; fp32 vs transformers {r['fp32_rel_error']:.1e}; decode log-probs vs "
                f"fp32: compiled {r['compiled_logprob_error']:.3f}, eager {r['eager_logprob_error']:.3f} nats; "
                f"{'OK' if r['ok'] else 'FAIL'}; "
                f"attention without the math kernel: {'OK' if r['fused_attention'] else 'FAIL (see log)'}; "
                f"first compile {r['first_compile_s']:.0f}s, CUDA-graph record {r['cudagraph_record_s']:.1f}s")
        freed = replaced_caches_freed(device, log)["ok"]
        line += f"; replaced KV caches freed: {'OK' if freed else 'FAIL (see log)'}"
        return line, r["ok"] and r["fused_attention"] and freed

    def ppo():
        # on OOM: smaller micro-batches first (same work per step), then fewer prompts: the largest step that fits
        cfg = gpu_train_config(dry_run)
        full = cfg.prompts_per_step
        for prompts, micro in ((full, cfg.micro_batch_size), (full, 1), (full // 2, 1)):
            cfg.prompts_per_step, cfg.micro_batch_size = prompts, micro
            cfg.mini_batch_size = min(cfg.mini_batch_size, prompts)
            try:
                r = bench_train(device, shape, cfg, steps=2 if dry_run else 1, log=log)[-1]
                break
            except torch.OutOfMemoryError as e:
                log(json.dumps(dict(check="ppo step", prompts=prompts, micro_batch=micro, error=f"OOM: {e}"[:300])))
            gc.collect()  # the failed attempt's tensors, before the next one allocates
            torch.cuda.empty_cache()
        else:
            return (f"PPO step {full}x{cfg.max_new_tokens}: out of memory, down to {prompts} prompts, micro-batch 1",
                    False)
        return (f"PPO step {prompts}x{cfg.max_new_tokens} (micro-batch {micro}): {r['seconds']:.1f}s (generate "
                f"{r['s_generate']:.1f}, reference {r['s_reference']:.1f}, train {r['s_train']:.1f}); peak "
                f"{r.get('peak_mem_gb', float('nan')):.1f} GB; MFU {r.get('train_mfu', float('nan')):.1%}; sampler "
                f"warm-up before it {r['sampler_warmup_s']:.0f}s"), prompts == full

    def sampler():
        s = bench_sampler("dry" if dry_run else "gpu", device, reps=1 if dry_run else 2, log=log, roofline=True)
        return (f"sampler {s['ours_tok_s']:.0f} tok/s vs transformers {s['hf_tok_s']:.0f} ({s['speedup']:.2f}x); "
                f"roofline {s['roofline_fraction']:.0%} ({s['decode_step_ms']:.2f} ms/step; "
                f"{s['bandwidth_fraction_of_bytes_read']:.0%} counting the whole cache it reads); warm-up "
                f"{s['warmup_s']:.1f}s; CUDA-graph skips {s['cudagraph_skips_in_process']}"), True

    def static():
        s = bench_static("dry" if dry_run else "gpu", device, reps=1 if dry_run else 2, log=log)
        return (f"transformers static cache + compile {s['hf_static_tok_s']:.0f} tok/s (warm-up "
                f"{s['hf_static_warmup_s']:.0f}s) vs ours {s['ours_tok_s']:.0f}: {s['speedup_vs_static']:.2f}x"), True

    # the PPO step before the sampler comparison: the fit on one card matters most; transformers' static-cache
    # compile (minutes) last, where a GPU call's time limit cuts nothing else
    runs = dict(correctness=correctness, ppo=ppo, sampler=sampler, static=static)
    summary, ok = [], True
    for name in sections:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            line, passed = runs[name]()
        except Exception as e:
            log(json.dumps(dict(section=name, error=traceback.format_exc()[-3000:])))
            line, passed = f"{name}: FAILED, {type(e).__name__}: {str(e)[:150]} (traceback in the log)", False
        summary.append(line)
        ok = ok and passed
    summary.append(f"suite: {time.perf_counter() - t_start:.0f}s")
    log("summary:\n  " + "\n  ".join(summary))
    log_file.close()
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", choices=["sampler", "train", "memory"])
    ap.add_argument("--gpu", action="store_true", help="the GPU case (Qwen2.5-3B shape, bf16) instead of the CPU ones")
    ap.add_argument("--cases", default="medium,tiny", help="CPU sampler cases, comma-separated")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="train: RL steps to time")
    ap.add_argument("--gpu-suite", action="store_true", help="everything that needs a GPU, in one call")
    ap.add_argument("--dry-run", action="store_true", help="with --gpu-suite: tiny shapes on CPU, to catch mistakes")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"with --gpu-suite: which to run, comma-separated, of {','.join(SECTIONS)} "
                         "(a rerun after a fix)")
    ap.add_argument("--log-dir", default=os.environ.get("OUT", "bench_out"))
    a = ap.parse_args()
    if a.gpu_suite:
        sections = a.sections.split(",")
        if not sections or any(x not in SECTIONS for x in sections):
            ap.error(f"--sections: expected some of {','.join(SECTIONS)}, got {a.sections!r}")
        sys.exit(0 if gpu_suite(a.dry_run, Path(a.log_dir), sections) else 1)
    if a.what == "sampler":
        if a.gpu:
            rows = [bench_sampler("gpu", torch.device("cuda"), a.reps, roofline=True)]
            print(sampler_table(rows, bench_static("gpu", torch.device("cuda"), a.reps)))
        else:
            rows = [bench_sampler(c, torch.device("cpu"), a.reps) for c in a.cases.split(",")]
            print(sampler_table(rows))
        print(f"sampler_speedup_vs_hf={rows[0]['speedup']:.2f}")
    elif a.what == "train":
        if a.gpu:
            bench_train(torch.device("cuda"), QWEN25_3B, gpu_train_config(False), a.steps)
        else:
            rows = bench_train(torch.device("cpu"), shape_of(None), demo_train_config(), a.steps)
            keys = [k for k in rows[-1] if k.startswith("s_")]
            print(f"{'phase':12} {'seconds':>8}")
            for k in keys:
                print(f"{k[2:]:12} {sum(r[k] for r in rows[1:] or rows) / len(rows[1:] or rows):8.3f}")
            print(f"tokens_per_s={sum(r['tokens_per_s'] for r in rows[1:] or rows) / len(rows[1:] or rows):.0f}")
    elif a.what == "memory":
        cfg = gpu_train_config(False)
        print(f"qwen2.5-3b preset, PPO updates: {cfg.prompts_per_step} prompts x {cfg.max_new_tokens} new tokens, "
              f"micro-batch {cfg.micro_batch_size}, activation checkpointing {cfg.grad_checkpointing} "
              f"(each row takes ~2 min on 2 CPU cores)", flush=True)
        print(f"{'prompt':>6} {'peak GiB':>9} {'after step GiB':>15}  operation at the peak")
        for prompt_len in (256, 1024):  # MedQA prompts: mean 287 tokens, max 1006 (data.py stats)
            r = estimate_memory(QWEN25_3B, cfg, prompt_len)
            print(f"{prompt_len:>6} {r['peak_gib']:>9.1f} {r['end_gib']:>15.1f}  {r['peak_op']}", flush=True)
    else:
        ap.print_help()
        sys.exit(2)


if __name__ == "__main__":
    main()

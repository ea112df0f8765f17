"""Benchmarks, each a ratio against a baseline run side by side on the same machine.

    python bench.py sampler              # our KV-cached sampler vs transformers.generate (CPU cases medium, tiny)
    python bench.py sampler --gpu        # Qwen2.5-3B shape, bf16, batch 64, prompt 256, 512 new tokens (+ roofline)
    python bench.py train                # one RL step of the demo preset, split by phase, tokens/s
    python bench.py train --gpu          # one PPO step of the qwen2.5-3b preset on random weights: memory, MFU
    python bench.py --gpu-suite [--dry-run]   # everything that needs a GPU, in one call (see BENCHMARKS.md)

`transformers` is only needed for the baseline (requirements-dev.txt). Results go to stdout; the last line of
`sampler` is `sampler_speedup_vs_hf=<ratio>` for the first case run.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import model as M

HERE = Path(__file__).resolve().parent
QWEN3B_CONFIG = HERE.parent / "shared" / "ref" / "qwen2.5-3b-config.json"

# (model shape, dtype, batch, prompt length, new tokens)
SAMPLER_CASES = {
    # ~40M parameters: both samplers spend most of a step in matrix multiplies, so the ceiling is low
    "medium": (dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, intermediate_size=1408, vocab_size=32000),
               torch.float32, 16, 64, 128),
    # the demo model's shape: per-step overhead dominates
    "tiny": (None, torch.float32, 64, 32, 32),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def demo_shape():
    import train
    return train.demo_model_args(vocab_size=512).__dict__


def qwen3b_shape():
    cfg = json.loads(QWEN3B_CONFIG.read_text())
    a = M.ModelArgs.from_hf_config(cfg, str(QWEN3B_CONFIG))
    return dict(dim=a.dim, n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads,
                intermediate_size=a.intermediate_size, vocab_size=a.vocab_size, rope_theta=a.rope_theta,
                tie_embeddings=a.tie_embeddings, norm_eps=a.norm_eps)


def random_checkpoint(shape: dict, dtype, folder: Path, seed=0):
    """A random-weight Qwen2 written in HF layout, so both samplers load the same file."""
    args = M.ModelArgs(**{**shape, "max_seq_len": 4096})
    m = M.Transformer(args).init_weights(seed)
    M.save_pretrained(m, folder, dtype=dtype)
    return folder


def time_ours(model, prompts, new, device, reps, compile=None):
    M.generate(model, prompts, new, temperature=1.0, seed=0, compile=compile)  # warm-up (and compile)
    sync(device)
    t0 = time.perf_counter()
    for r in range(reps):
        out = M.generate(model, prompts, new, temperature=1.0, seed=r, compile=compile)
    sync(device)
    assert all(len(t) == new for t in out.tokens)
    return (time.perf_counter() - t0) / reps


def time_hf(hf, prompts, new, device, reps, static=False):
    x = torch.tensor(prompts, device=device)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
              eos_token_id=None, pad_token_id=0, attention_mask=torch.ones_like(x))
    if static:
        kw.update(cache_implementation="static")
    hf.generate(x, **kw)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        out = hf.generate(x, **kw)
    sync(device)
    assert out.shape[1] == x.shape[1] + new
    return (time.perf_counter() - t0) / reps


def copy_bandwidth(device, nbytes=2**30):
    """Measured device-to-device copy bandwidth in bytes/s (read + write)."""
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    sync(device)
    return 2 * nbytes * 10 / (time.perf_counter() - t0)


def bench_sampler(case: str, device, reps: int, log=print):
    from transformers import Qwen2ForCausalLM

    shape, dtype, B, P, new = SAMPLER_CASES[case] if case in SAMPLER_CASES else GPU_SAMPLER_CASE
    shape = shape or demo_shape()
    with tempfile.TemporaryDirectory() as d:
        random_checkpoint(shape, dtype, Path(d))
        ours = M.Transformer.from_pretrained(d, device=device, dtype=dtype)
        hf = Qwen2ForCausalLM.from_pretrained(d, dtype=dtype).to(device).eval()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, shape["vocab_size"], (B, P), generator=g).tolist()
    row = {"case": case, "batch": B, "prompt": P, "new": new, "dtype": str(dtype).removeprefix("torch.")}
    t_ours = time_ours(ours, prompts, new, device, reps)
    t_hf = time_hf(hf, prompts, new, device, reps)
    row.update(ours_tok_s=B * new / t_ours, hf_tok_s=B * new / t_hf, speedup=t_hf / t_ours)
    if device.type == "cuda":
        try:
            t_static = time_hf(hf, prompts, new, device, reps, static=True)
            row.update(hf_static_tok_s=B * new / t_static, speedup_vs_static=t_static / t_ours)
        except Exception as e:  # a transformers version whose static cache fails here: say so, keep the rest
            row["hf_static_error"] = f"{type(e).__name__}: {e}"[:200]
        # roofline: one decode step must read every weight and the KV cache once
        t_decode = decode_step_time(ours, prompts, new, device)
        weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
        S = P + new // 2  # mean cache fill over the run
        kv_bytes = 2 * ours.args.n_layers * B * ours.args.n_kv_heads * S * ours.args.head_dim * dtype.itemsize
        bw = copy_bandwidth(device)
        row.update(decode_step_ms=1e3 * t_decode, copy_bw_gb_s=bw / 1e9,
                   roofline_fraction=(weight_bytes + kv_bytes) / t_decode / bw)
    log(json.dumps(row))
    return row


def decode_step_time(model, prompts, new, device):
    """Seconds per decode step: a full run minus a run of one new token (the prefill), over the extra steps."""
    M.generate(model, prompts, 2, seed=0)
    sync(device)
    t0 = time.perf_counter()
    M.generate(model, prompts, 1, seed=0)
    sync(device)
    t_prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    M.generate(model, prompts, new, seed=0)
    sync(device)
    return (time.perf_counter() - t0 - t_prefill) / (new - 1)


GPU_SAMPLER_CASE = (None, torch.bfloat16, 64, 256, 512)


def print_sampler_table(rows, log=print):
    log(f"{'case':8} {'batch':>5} {'prompt':>6} {'new':>4} {'ours tok/s':>11} {'hf tok/s':>9} {'speedup':>8}")
    for r in rows:
        log(f"{r['case']:8} {r['batch']:>5} {r['prompt']:>6} {r['new']:>4} {r['ours_tok_s']:>11.0f} "
            f"{r['hf_tok_s']:>9.0f} {r['speedup']:>7.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", choices=["sampler", "train"])
    ap.add_argument("--gpu", action="store_true", help="run the GPU case (Qwen2.5-3B shape) instead of the CPU ones")
    ap.add_argument("--cases", default="medium,tiny", help="CPU sampler cases, comma-separated")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gpu-suite", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="with --gpu-suite: tiny shapes on CPU, to catch typos")
    a = ap.parse_args()
    if a.what == "sampler":
        if a.gpu:
            GPU_SAMPLER_CASE_SHAPE = qwen3b_shape()
            rows = [bench_sampler_gpu(GPU_SAMPLER_CASE_SHAPE, a.reps)]
        else:
            torch.set_num_threads(os.cpu_count())
            rows = [bench_sampler(c, torch.device("cpu"), a.reps) for c in a.cases.split(",")]
        print_sampler_table(rows)
        print(f"sampler_speedup_vs_hf={rows[0]['speedup']:.2f}")
    else:
        ap.print_help()
        sys.exit(2)


def bench_sampler_gpu(shape, reps):
    global GPU_SAMPLER_CASE
    GPU_SAMPLER_CASE = (shape, torch.bfloat16, 64, 256, 512)
    return bench_sampler("gpu", torch.device("cuda"), reps)


if __name__ == "__main__":
    main()

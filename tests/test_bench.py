"""bench.py: the GPU suite dry-runs on CPU (so a GPU session does not waste minutes on a typo), its embedded
Qwen2.5-3B shape matches the real config, and the fake-tensor memory estimate counts the training state."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench
import model as M
import train

REPO = Path(__file__).resolve().parent.parent
QWEN_CONFIG = REPO.parent / "shared" / "ref" / "qwen2.5-3b-config.json"


def test_gpu_suite_dry_run(tmp_path):
    pytest.importorskip("transformers")
    p = subprocess.run([sys.executable, "bench.py", "--gpu-suite", "--dry-run", "--log-dir", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = (tmp_path / "gpu_suite.jsonl").read_text().splitlines()
    rows = [json.loads(l) for l in lines if l.startswith("{")]
    assert rows[1]["check"] == "bf16 logits vs transformers" and rows[1]["ok"]
    assert rows[1]["greedy_agreement_hf"] == 1.0  # tiny model: no near-ties
    assert rows[2]["check"] == "attention without the math fallback" and rows[2]["ok"]
    assert rows[3]["check"] == "replaced KV caches freed" and rows[3]["ok"]
    assert rows[3]["replaced_storages"] == 8 and rows[3]["still_alive"] == 0  # 2 replacements x 2 layers x (k, v)
    steps = [r for r in rows if "s_train" in r]  # the PPO step comes before the sampler
    assert len(steps) == 2 and {"s_generate", "s_reference", "tokens_per_s"} <= set(steps[-1])
    assert rows[1]["greedy_agreement_compiled_eager"] == 1.0 and rows[1]["fp32_rel_error"] < 1e-4
    assert rows[1]["compiled_logprob_error"] < 0.01 and rows[1]["ours_bf16_rel_error"] < 0.02
    profile, sampler, static = rows[-3:]  # transformers' static cache last, where a GPU call's limit cuts nothing else
    assert profile["check"] == "decode step profile" and profile["top_kernels"]
    assert sum(profile[f"{k}_ms"] for k in ("matmul", "attention", "copies", "other")) > 0
    assert sampler["speedup"] > 0 and 0 < sampler["roofline_fraction"] < sampler["bandwidth_fraction_of_bytes_read"]
    assert sampler["decode_step_ms"] > 0 and "warmup_s" in sampler  # (no timed comparison in a unit test)
    assert sampler["cudagraph_skips_in_process"] == 0
    assert static["case"] == "dry" and static["hf_static_tok_s"] > 0 and static["speedup_vs_static"] > 0
    tail = [line.strip() for line in p.stdout.rstrip().splitlines()[-5:]]  # the table comes last
    assert tail[0].startswith("logits vs fp32") and tail[1].startswith("PPO step")
    assert tail[2].startswith("sampler") and tail[3].startswith("transformers static") and tail[4].startswith("suite:")


def test_cpu_sampler_cases_report_the_matmul_ceiling():
    pytest.importorskip("transformers")
    rows = [bench.bench_sampler("dry", torch.device("cpu"), 1, log=lambda line: None)]
    assert rows[0]["max_speedup"] > 0 and rows[0]["matmul_floor_s"] > 0 and "roofline_fraction" not in rows[0]
    assert "ceiling" in bench.sampler_table(rows)


@pytest.mark.parametrize("name, kind", [
    ("nvjet_sm90_tst_96x64_64x10_4x1_v_bz_TNN", "matmul"),  # kernel names from the H100 runs and PyTorch's own
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_cga1x1", "attention"),
    ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::bfloat16_t>)",
     "attention"),
    ("void flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4, cutlass::bfloat16_t>>",
     "attention"),
    ("Memcpy DtoD (Device -> Device)", "copies"),
    ("triton_red_fused__to_copy__unsafe_view_add_mean_mul_pow_rsqrt_10", "other"),
])
def test_decode_profile_kernel_kinds(name, kind):
    assert bench.kernel_kind(name) == kind


def test_embedded_qwen_shape_matches_the_real_config():
    if not QWEN_CONFIG.exists():
        pytest.skip("../shared is absent")
    a = M.ModelArgs.from_hf_config(json.loads(QWEN_CONFIG.read_text()))
    assert {k: getattr(a, k) for k in bench.QWEN25_3B} == bench.QWEN25_3B


def test_memory_estimate_counts_the_training_state():
    """bench.estimate_memory on a tiny shape: what stays live after its updates is the training state, computed here
    from parameter counts (fp32 policy and value head, gradients, AdamW's two moments and step per tensor; bf16
    reference and rollout copies; the RoPE tables; the sampler's bf16 KV cache), up to the few small tensors of the
    last micro-batch, and the peak lies above it (activations)."""
    cfg = train.Config(**train.PRESETS["qwen2.5-3b"])
    cfg.prompts_per_step, cfg.max_new_tokens, cfg.micro_batch_size = 4, 8, 2
    P = 16
    r = bench.estimate_memory(bench.DRY, cfg, P)
    args = M.ModelArgs(**{**bench.DRY, "max_seq_len": P + 8 + M.CACHE_ROUND, "eos_id": 0})
    with torch.device("meta"):
        lm = M.Transformer(args)
    n_lm, n_tensors = sum(p.numel() for p in lm.parameters()), len(list(lm.parameters()))
    n_policy, n_policy_tensors = n_lm + args.dim + 1, n_tensors + 2  # + the value head
    rope = 2 * args.max_seq_len * args.head_dim  # cos and sin; .to(bf16) converts the copies' tables too
    rows = cfg.prompts_per_step * cfg.group_size
    kv = 2 * args.n_layers * rows * args.n_kv_heads * M.CACHE_ROUND * args.head_dim * 2  # keys and values, bf16
    expected = (4 + 4 + 8) * n_policy + 4 * n_policy_tensors + 2 * 2 * n_lm + (4 + 2 * 2) * rope + kv
    assert abs(r["end_gib"] * 2**30 - expected) < 0.001 * expected, (r["end_gib"] * 2**30 - expected, expected)
    assert r["peak_gib"] > r["end_gib"]


def test_gpu_suite_section_failure_does_not_stop_the_rest(tmp_path, monkeypatch):
    """A section that raises is logged with its traceback, the next section still runs, and the suite fails."""
    pytest.importorskip("transformers")

    def broken(*a, **k):
        raise RuntimeError("simulated capture failure")

    monkeypatch.setattr(bench, "bf16_correctness", broken)
    assert not bench.gpu_suite(True, tmp_path, sections=("correctness", "sampler"))
    rows = [json.loads(l) for l in (tmp_path / "gpu_suite.jsonl").read_text().splitlines() if l.startswith("{")]
    assert rows[1]["section"] == "correctness" and "simulated capture failure" in rows[1]["error"]
    assert "Traceback" in rows[1]["error"] and rows[-1]["case"] == "dry"  # the sampler ran after it
    summary = (tmp_path / "gpu_suite.jsonl").read_text().split("summary:")[1]
    assert "correctness: FAILED, RuntimeError: simulated capture failure" in summary and "sampler " in summary


@pytest.mark.parametrize("fits_at", [(4, 2), (4, 1), (2, 1), None])
def test_gpu_suite_ppo_falls_back_to_the_largest_step_that_fits(tmp_path, monkeypatch, fits_at):
    """Out of memory, the PPO section retries with micro-batch 1, then half the prompts; it passes at the full number
    of prompts (a micro-batch only splits the same work)."""
    tried = []

    def fake_train(device, shape, cfg, steps, log):
        tried.append((cfg.prompts_per_step, cfg.micro_batch_size))
        assert cfg.mini_batch_size <= cfg.prompts_per_step and cfg.mini_batch_size % cfg.micro_batch_size == 0
        if tried[-1] != fits_at:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return [dict(seconds=1.0, s_generate=0.5, s_reference=0.2, s_train=0.3, sampler_warmup_s=0.1)]

    monkeypatch.setattr(bench, "bench_train", fake_train)
    ok = bench.gpu_suite(True, tmp_path, sections=("ppo",))
    summary = (tmp_path / "gpu_suite.jsonl").read_text().split("summary:")[1]
    expected = [(4, 2), (4, 1), (2, 1)]
    assert tried == (expected if fits_at is None else expected[:expected.index(fits_at) + 1])
    assert ok == (fits_at is not None and fits_at[0] == 4)
    if fits_at is None:
        assert "out of memory, down to 2 prompts" in summary
    else:
        assert f"PPO step {fits_at[0]}x8 (micro-batch {fits_at[1]})" in summary


def test_gpu_suite_refuses_unknown_sections():
    p = subprocess.run([sys.executable, "bench.py", "--gpu-suite", "--dry-run", "--sections", "ppo,speed"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--sections: expected some of correctness,ppo,sampler" in p.stderr

"""bench.py: the GPU suite dry-runs on CPU (so a GPU session does not waste minutes on a typo), and its embedded
Qwen2.5-3B shape matches the real config."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import bench
import model as M

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
    assert rows[1]["greedy_token_agreement"] == 1.0  # tiny model: no near-ties
    sampler = rows[2]
    assert sampler["speedup"] > 0 and 0 < sampler["roofline_fraction"] and "compile_s" in sampler
    assert sampler["max_speedup"] > sampler["speedup"]  # the matmuls alone are faster than any whole sampler
    assert {"s_generate", "s_reference", "s_train", "tokens_per_s"} <= set(rows[-1])
    assert p.stdout.rstrip().splitlines()[-3].strip().startswith("bf16 logits rel. error")  # the table comes last


def test_embedded_qwen_shape_matches_the_real_config():
    if not QWEN_CONFIG.exists():
        pytest.skip("../shared is absent")
    a = M.ModelArgs.from_hf_config(json.loads(QWEN_CONFIG.read_text()))
    assert {k: getattr(a, k) for k in bench.QWEN25_3B} == bench.QWEN25_3B

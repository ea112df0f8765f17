"""train.py end to end on the tiny demo model: learning, exact resume, torchrun (gloo) on two ranks, HF export,
non-finite steps, and clear errors on bad input. One warmed-up base model is built once and shared."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import model as M
import ppo
import train

REPO = Path(__file__).resolve().parent.parent
TINY = ["--prompts-per-step", "8", "--group-size", "4", "--mini-batch-size", "32", "--micro-batch-size", "16",
        "--max-new-tokens", "24", "--demo-n-train", "400", "--demo-n-heldout", "16"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A demo run folder holding the warmed-up base model and the synthetic data (built once)."""
    run = tmp_path_factory.mktemp("base") / "run"
    train.main(["--out", str(run), "--steps", "1", "--demo-warmup-steps", "120", *TINY])
    return run


def real_run(base, *extra):
    return ["--model", str(base / "base"), "--train", str(base / "data" / "train.jsonl"), *TINY, *extra]


def metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def weights(ckpt):
    from safetensors.torch import load_file
    return load_file(ckpt / "model" / "model.safetensors")


def test_demo_run_folder(base):
    assert json.loads((base / "config.json").read_text())["steps"] == 1
    m = metrics(base)
    assert len(m) == 1
    for key in ("step", "reward_mean", "accuracy", "format_rate", "response_len", "kl", "entropy", "policy_loss",
                "value_loss", "clipfrac", "grad_norm", "lr", "tokens_per_s", "time_generate", "time_score",
                "time_reference", "time_train"):
        assert key in m[0], key
    final = json.loads((base / "final.json").read_text())
    assert {"heldout_accuracy", "heldout_format_rate", "seconds"} <= set(final)
    assert (base / "samples.jsonl").read_text().count("\n") >= 1
    assert (base / "checkpoints" / "step_000001" / "model" / "tokenizer.json").exists()


@pytest.mark.parametrize("algo", ["gae", "grpo"])
def test_rl_raises_reward(base, tmp_path, algo):
    run = tmp_path / algo
    train.main(real_run(base, "--out", str(run), "--algo", algo, "--steps", "12", "--lr", "3e-4"))
    r = [m["reward_mean"] for m in metrics(run)]  # step 1's rollouts come from the untrained policy
    assert np.mean(r[-4:]) > r[0] + 0.15, r


def test_resume_is_exact(base, tmp_path):
    straight = tmp_path / "straight"
    args = real_run(base, "--steps", "4", "--save-every", "2", "--keep-last", "3")
    train.main([*args, "--out", str(straight)])
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000004")  # as if killed after the step-2 checkpoint
    (resumed / "final.json").unlink()
    train.main(["--resume", str(resumed)])
    a, b = weights(straight / "checkpoints" / "step_000004"), weights(resumed / "checkpoints" / "step_000004")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(straight / "checkpoints" / "step_000004" / "state.pt", weights_only=False)
    sb = torch.load(resumed / "checkpoints" / "step_000004" / "state.pt", weights_only=False)
    assert all(torch.equal(sa["value"][k], sb["value"][k]) for k in sa["value"])
    assert [m["step"] for m in metrics(resumed)] == [1, 2, 3, 4]  # no duplicated log lines
    assert metrics(resumed)[-1]["reward_mean"] == metrics(straight)[-1]["reward_mean"]


def test_exported_checkpoint_matches_transformers(base):
    transformers = pytest.importorskip("transformers")
    ckpt = base / "checkpoints" / "step_000001" / "model"
    ours = M.Transformer.from_pretrained(ckpt)
    hf = transformers.Qwen2ForCausalLM.from_pretrained(ckpt).eval()
    x = torch.randint(0, ours.args.vocab_size, (2, 40))
    with torch.no_grad():
        assert (hf(x).logits - ours(x)).abs().max().item() <= 1e-4


def torchrun(base, run, *extra, port):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(REPO / "train.py"), *real_run(base, "--out", str(run), "--steps", "2", "--save-every", "2", *extra)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((run / "final.json").read_text())


def test_torchrun_two_ranks_gloo_ddp_and_fsdp(base, tmp_path):
    ddp = torchrun(base, tmp_path / "ddp", "--heldout", str(base / "data" / "heldout.jsonl"), port=29533)
    sums = ddp["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # DDP kept both ranks' weights identical
    assert ddp["heldout_n"] == 16  # held-out items sharded over ranks and gathered
    assert len(metrics(tmp_path / "ddp")) == 2
    fsdp = torchrun(base, tmp_path / "fsdp", "--fsdp", port=29534)
    assert fsdp["rank_checksums"][0] == fsdp["rank_checksums"][1]
    # FSDP2 shards what DDP replicates; the arithmetic is the same, so are the weights
    a, b = weights(tmp_path / "ddp" / "checkpoints" / "step_000002"), weights(tmp_path / "fsdp" / "checkpoints" / "step_000002")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    from safetensors.torch import load_file
    start = load_file(base / "base" / "model.safetensors")
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-4  # and training did move them


def test_non_finite_steps_stop_the_run(base, tmp_path, monkeypatch):
    run = tmp_path / "nan"
    train.main(real_run(base, "--out", str(run), "--steps", "2", "--save-every", "2"))
    good = weights(run / "checkpoints" / "step_000002")

    def nan_loss(logp, *a, **k):
        loss, stats = real(logp, *a, **k)
        return loss * float("nan"), stats
    real = ppo.policy_loss
    monkeypatch.setattr(ppo, "policy_loss", nan_loss)
    with pytest.raises(SystemExit, match="3 non-finite steps in a row"):
        train.main(["--resume", str(run), "--steps", "10"])
    after = weights(run / "checkpoints" / "step_000002")
    assert all(torch.equal(good[k], after[k]) for k in good)
    assert not (run / "checkpoints" / "step_000004").exists()


# -----------------------------------------------------------------------------
# Bad input: clear errors, nothing already saved damaged


def test_refuses_foreign_or_existing_folder(base, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not a med-rlvr run folder"):
        train.main(real_run(base, "--out", str(foreign)))
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(SystemExit, match="already holds a run"):
        train.main(real_run(base, "--out", str(base)))
    with pytest.raises(SystemExit, match="no config.json there"):
        train.main(["--resume", str(foreign)])


def test_resume_config_mismatch(base, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(base, run)
    before = (run / "config.json").read_text()
    with pytest.raises(SystemExit, match=r"config mismatch \(lr: run has 0.0003, flag says 0.5\)"):
        train.main(["--resume", str(run), "--lr", "0.5"])
    assert (run / "config.json").read_text() == before


def test_corrupted_checkpoint(base, tmp_path):
    run = tmp_path / "c"
    shutil.copytree(base, run)
    f = run / "checkpoints" / "step_000001" / "model" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    damaged = f.read_bytes()
    with pytest.raises(SystemExit, match="step_000001 is unreadable"):
        train.main(["--resume", str(run), "--steps", "2"])
    assert f.read_bytes() == damaged  # left as it was


def test_empty_dataset_and_indivisible_batch(base, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(Exception, match="empty"):
        train.main(["--model", str(base / "base"), "--train", str(empty), "--out", str(tmp_path / "e"), *TINY])
    with pytest.raises(SystemExit, match="must be divisible by mini_batch_size 12"):
        train.main(real_run(base, "--out", str(tmp_path / "d"), "--mini-batch-size", "12"))
    with pytest.raises(SystemExit, match="grpo needs group_size >= 2"):
        train.main(real_run(base, "--out", str(tmp_path / "g"), "--algo", "grpo", "--group-size", "1",
                            "--mini-batch-size", "8", "--micro-batch-size", "8"))


def test_sft_learns_the_synthetic_task(base, tmp_path):
    run = tmp_path / "sft"
    final = train.main(real_run(base, "--out", str(run), "--algo", "sft", "--steps", "100", "--lr", "1e-3",
                                "--heldout", str(base / "data" / "heldout.jsonl")))
    assert final["heldout_accuracy"] >= 0.9, final

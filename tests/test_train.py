"""train.py end to end on the tiny demo model: learning, exact resume, torchrun (gloo) on two ranks, HF export,
non-finite steps, and clear errors on bad input. One warmed-up base model is built once and shared."""

import json
import math
import os
import re
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


REQUIRED_METRICS = ("step", "reward_mean", "accuracy", "format_rate", "response_len", "kl", "entropy", "policy_loss",
                    "value_loss", "clipfrac", "grad_norm", "lr", "tokens_per_s", "time_generate", "time_score",
                    "time_reference", "time_train")


def test_demo_run_folder(base):
    assert json.loads((base / "config.json").read_text())["steps"] == 1
    m = metrics(base)
    assert len(m) == 1
    for key in REQUIRED_METRICS:
        assert key in m[0], key
    final = json.loads((base / "final.json").read_text())
    assert {"heldout_accuracy", "heldout_format_rate", "seconds"} <= set(final)
    assert (base / "samples.jsonl").read_text().count("\n") >= 1
    assert (base / "checkpoints" / "step_000001" / "model" / "tokenizer.json").exists()


@pytest.mark.parametrize("algo,steps", [("gae", 12), ("grpo", 24)])
def test_rl_raises_reward(base, tmp_path, algo, steps):
    # GRPO learns only from groups whose 4 replies score differently, so it needs more steps than PPO's value head
    # (seeds 0-2, mean of the last four steps over step 1: with 12 steps +0.10, -0.01, +0.41; with 24, +0.21, +0.16,
    # +0.45)
    run = tmp_path / algo
    train.main(real_run(base, "--out", str(run), "--algo", algo, "--steps", str(steps), "--lr", "3e-4"))
    r = [m["reward_mean"] for m in metrics(run)]  # step 1's rollouts come from the untrained policy
    assert np.mean(r[-4:]) > r[0] + 0.15, r
    # every line carries every metric the spec lists; without a value head the value loss is 0, not absent
    for m in metrics(run):
        assert all(math.isfinite(m[k]) for k in REQUIRED_METRICS), m
        assert m["reward_mean"] == pytest.approx(m["accuracy"] - (1 - m["format_rate"]))
        assert (m["value_loss"] == 0.0) == (algo != "gae") and ("explained_variance" in m) == (algo == "gae")


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
    # `seconds` counts the whole run, across the resume
    seconds = [m["seconds"] for m in metrics(resumed)]
    assert seconds == sorted(seconds) and json.loads((resumed / "final.json").read_text())["seconds"] > seconds[1]


def test_exported_checkpoint_matches_transformers(base):
    transformers = pytest.importorskip("transformers")
    ckpt = base / "checkpoints" / "step_000001" / "model"
    ours = M.Transformer.from_pretrained(ckpt)
    hf = transformers.Qwen2ForCausalLM.from_pretrained(ckpt).eval()
    x = torch.randint(0, ours.args.vocab_size, (2, 40))
    with torch.no_grad():
        assert (hf(x).logits - ours(x)).abs().max().item() <= 1e-4


def torchrun(base, run, *extra, port, args=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = args or real_run(base, "--out", str(run), "--steps", "2", "--save-every", "2", *extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(REPO / "train.py"), *args]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((run / "final.json").read_text())


TWO_RANKS = """
import json, sys, torch, torch.distributed as dist
import eval, ppo, train
dist.init_process_group("gloo")
rank = dist.get_rank()
# rank 0 holds 4 real tokens, rank 1 holds 6: a per-rank token mean would weigh rank 0's tokens 1.5 times more
mask = torch.tensor([[[1, 0, 0, 0], [1, 1, 1, 0]], [[1, 1, 1, 1], [1, 1, 0, 0]]][rank], dtype=torch.float)
v = torch.tensor([[[1, 0, 0, 0], [2, 3, 4, 0]], [[5, 6, 7, 8], [9, 10, 0, 0]]][rank], dtype=torch.float)

class Scalar(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lm, self.w = torch.nn.Identity(), torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.w * x

policy = Scalar()
ddp = torch.nn.parallel.DistributedDataParallel(policy)
cfg = train.Config(mini_batch_size=4, micro_batch_size=1, grad_clip=1e9)  # 2 micro-batches of 1 row per rank
opt = torch.optim.SGD(policy.parameters(), lr=1.0)
loss_fn = lambda rows: (ppo.aggregate(ddp(v[rows]), mask[rows], "token-mean"), {})
train.optimize(cfg, policy, ddp, opt, mask, loss_fn, 1, seed=0)
white = train.whiten_over_ranks(v, mask)
advs = {a: train.batch_advantages(train.Config(algo=a, group_size=2, gamma=0.9), v / 10, v / 20, mask)[0].tolist()
        for a in ("gae", "reinforce++")}
out = [None, None]
dist.all_gather_object(out, (float(policy.w), white.tolist(), advs))
if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
dist.barrier()
dist.destroy_process_group()
eval.exit_torchrun_process()  # as train.py does: gloo's threads can abort a loaded interpreter's shutdown
"""


def test_token_mean_and_whitening_span_the_ranks(tmp_path):
    """Under torchrun, the token-mean loss and the advantage whitening are those of all ranks' tokens together, as
    in one process holding the whole batch: d(mean of w * v)/dw = mean of v over the 10 real tokens = 5.5 (a
    per-rank mean, averaged over the ranks, would give (2.5 + 7.5) / 2 = 5.0)."""
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path / "out.json")]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    (w0, white0, adv0), (w1, white1, adv1) = json.loads((tmp_path / "out.json").read_text())
    assert w0 == w1 == pytest.approx(-5.5)  # one SGD step of lr 1 on the global token mean
    v = torch.tensor([[1, 0, 0, 0], [2, 3, 4, 0], [5, 6, 7, 8], [9, 10, 0, 0]], dtype=torch.float)
    mask = (v > 0).float()
    whole = ppo.masked_whiten(v, mask)
    assert torch.allclose(torch.tensor(white0 + white1), whole, atol=1e-6)
    # the advantages each rank trains on are those of the whole batch in one process (whitening over all tokens)
    gae, _ = ppo.gae(v / 10, v / 20, mask, gamma=0.9, lam=0.95)
    expected = {"gae": ppo.masked_whiten(gae, mask),
                "reinforce++": ppo.advantages("reinforce++", v / 10, v / 20, mask, 2, 0.9, 0.95)[0]}
    for algo, want in expected.items():
        assert torch.allclose(torch.tensor(adv0[algo] + adv1[algo]), want, atol=1e-6), algo
        per_rank = ppo.advantages(algo, v[:2] / 10, v[:2] / 20, mask[:2], 2, 0.9, 0.95)[0]
        assert not torch.allclose(torch.tensor(adv0[algo]), per_rank if algo != "gae" else
                                  ppo.masked_whiten(per_rank, mask[:2]), atol=1e-3)  # what a per-rank pass gives


def test_whitening_in_one_process_is_ppo_masked_whiten():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 40, generator=g)
    mask = (torch.arange(40) < torch.randint(1, 41, (16, 1), generator=g)).float()
    assert torch.equal(train.whiten_over_ranks(x, mask), ppo.masked_whiten(x, mask))


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
    # a sharded run resumes exactly: 2 steps, then 1 resumed, equal 3 steps in one go (weights, value head, metrics)
    resumed, straight = tmp_path / "fsdp", tmp_path / "fsdp3"
    torchrun(base, resumed, port=29535, args=["--resume", str(resumed), "--steps", "3", "--save-every", "1"])
    torchrun(base, straight, "--fsdp", "--steps", "3", "--save-every", "3", port=29536)
    a, b = weights(resumed / "checkpoints" / "step_000003"), weights(straight / "checkpoints" / "step_000003")
    assert all(torch.equal(a[k], b[k]) for k in a)
    va, vb = (torch.load(r / "checkpoints" / "step_000003" / "state.pt", weights_only=False)["value"]
              for r in (resumed, straight))
    assert all(torch.equal(va[k], vb[k]) for k in va)
    ma, mb = metrics(resumed), metrics(straight)
    assert [m["step"] for m in ma] == [1, 2, 3]
    assert [(m["reward_mean"], m["policy_loss"], m["kl"]) for m in ma] == [(m["reward_mean"], m["policy_loss"], m["kl"])
                                                                         for m in mb]


def test_non_finite_steps_stop_the_run(base, tmp_path, monkeypatch):
    run = tmp_path / "nan"
    train.main(real_run(base, "--out", str(run), "--steps", "2", "--save-every", "2"))
    good = weights(run / "checkpoints" / "step_000002")

    def nan_loss(logp, *a, **k):
        loss, stats = real(logp, *a, **k)
        return loss * float("nan"), stats
    real = ppo.policy_loss
    monkeypatch.setattr(ppo, "policy_loss", nan_loss)
    with pytest.raises(SystemExit, match="3 steps in a row with non-finite updates"):
        train.main(["--resume", str(run), "--steps", "10"])
    after = weights(run / "checkpoints" / "step_000002")
    assert all(torch.equal(good[k], after[k]) for k in good)
    assert not (run / "checkpoints" / "step_000004").exists()


def test_a_non_finite_mini_batch_is_skipped_alone(base, tmp_path, monkeypatch):
    """Two mini-batches per step; the second one's loss is NaN on the last step: the first one's update stands (and
    the sampler gets it), the bad one is dropped, the run ends normally with the last step's checkpoint."""
    run = tmp_path / "partial"
    calls = []

    def nan_second_mini_batch(logp, *a, **k):
        loss, stats = real(logp, *a, **k)
        calls.append(1)
        return (loss * float("nan") if len(calls) > 4 and len(calls) % 2 == 0 else loss), stats
    real = ppo.policy_loss
    monkeypatch.setattr(ppo, "policy_loss", nan_second_mini_batch)
    synced = []
    real_sync = train.sync_rollout
    monkeypatch.setattr(train, "sync_rollout", lambda *a: synced.append(1) or real_sync(*a))
    final = train.main(real_run(base, "--out", str(run), "--steps", "3", "--mini-batch-size", "16",
                                "--micro-batch-size", "16"))
    m = metrics(run)
    assert [r["skipped_updates"] for r in m] == [0, 0, 1]
    assert final["last"]["step"] == 3 and len(synced) == 3  # the half-applied step refreshed the sampler too
    assert (run / "checkpoints" / "step_000003").exists()


def test_a_skipped_last_step_still_ends_cleanly(base, tmp_path, monkeypatch):
    run = tmp_path / "lastbad"
    train.main(real_run(base, "--out", str(run), "--steps", "2", "--save-every", "1"))
    real = ppo.policy_loss
    monkeypatch.setattr(ppo, "policy_loss", lambda *a, **k: (lambda l, s: (l * float("nan"), s))(*real(*a, **k)))
    final = train.main(["--resume", str(run), "--steps", "3"])
    assert final["last"]["step"] == 2  # the last step that was applied
    assert (run / "checkpoints" / "step_000003").exists()  # the cursor moved on; the weights are step 2's
    a, b = weights(run / "checkpoints" / "step_000002"), weights(run / "checkpoints" / "step_000003")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_logged_lr_is_the_one_used_and_the_log_is_strict_json(base, tmp_path, monkeypatch):
    run = tmp_path / "lr"
    monkeypatch.setattr(ppo, "explained_variance", lambda *a: float("nan"))  # as when every return is equal
    train.main(real_run(base, "--out", str(run), "--steps", "3", "--warmup-steps", "3", "--lr", "3e-4"))
    assert [round(r["lr"], 12) for r in metrics(run)] == [1e-4, 2e-4, 3e-4]

    def no_nan(name):
        raise AssertionError(f"{name} in metrics.jsonl")
    rows = [json.loads(l, parse_constant=no_nan) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["explained_variance"] is None for r in rows)


def test_an_added_estimator_that_reads_values_gets_a_value_head(base, tmp_path, monkeypatch):
    """As ppo.py's docstring says: add an estimator to ESTIMATORS, and to NEEDS_VALUES if it reads the critic."""
    def td0(token_rewards, values, mask, group_size, gamma, lam, whiten=ppo.masked_whiten):
        return ppo.ESTIMATORS["gae"](token_rewards, values, mask, group_size, gamma, 0.0, whiten=whiten)
    monkeypatch.setitem(ppo.ESTIMATORS, "td0", td0)
    monkeypatch.setattr(ppo, "NEEDS_VALUES", ppo.NEEDS_VALUES | {"td0"})
    monkeypatch.setattr(train, "ALGOS", train.ALGOS + ("td0",))
    run = tmp_path / "td0"
    train.main(real_run(base, "--algo", "td0", "--steps", "2", "--save-every", "2", "--out", str(run)))
    m = metrics(run)
    assert all(row["value_loss"] > 0 and "explained_variance" in row for row in m)
    value = torch.load(run / "checkpoints" / "step_000002" / "state.pt", weights_only=False)["value"]
    assert value and all(torch.isfinite(v).all() for v in value.values())


def test_clips_are_checked_where_they_act():
    train.check_config(train.Config(algo="grpo", value_clip=0.0), 1)  # no value head: value_clip does nothing
    train.check_config(train.Config(algo="sft", clip=0.0, value_clip=0.0), 1)
    with pytest.raises(SystemExit, match="value_clip must be > 0"):
        train.check_config(train.Config(algo="gae", value_clip=0.0), 1)


def test_kl_defaults_follow_the_algorithm():
    assert (train.Config().kl_in_reward, train.Config().kl_kind) == (True, "k1")
    assert (train.Config(algo="grpo").kl_in_reward, train.Config(algo="grpo").kl_kind) == (False, "k3")
    assert train.Config(algo="grpo", kl_in_reward=True).kl_kind == "k1"
    assert train.parse_config(["--algo", "grpo", "--kl-in-reward"])[0].kl_in_reward is True
    real = train.parse_config(["--preset", "qwen2.5-3b", "--algo", "grpo", "--group-size", "4"])[0]
    assert (real.kl_in_reward, real.kl_kind) == (False, "k3")  # the preset does not pin them


def test_training_logprobs_match_the_sampler_at_its_temperature(base):
    """Old, reference and new log-probs are those of the distribution the rollouts came from: softmax(logits / T)."""
    lm = M.Transformer.from_pretrained(base / "base")
    prompts = [[5, 6, 7, 8], [9, 10]]
    out = M.generate(lm, prompts, 6, temperature=0.7, seed=0)
    tokens, pad, mask, P = train.pack(prompts, out.tokens, 0)
    with torch.no_grad():
        lp = train.response_logprobs(lm, tokens, pad, P, 0.7)[2]
    for i, row in enumerate(out.logprobs):
        assert torch.allclose(lp[i, :len(row)], torch.tensor(row), atol=1e-5)


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
    # a Hugging Face model folder has a config.json too, but not ours
    with pytest.raises(SystemExit, match="not a med-rlvr run folder"):
        train.main(real_run(base, "--out", str(base / "base")))
    (foreign / "config.json").write_text("{not json")
    with pytest.raises(SystemExit, match="config.json: not valid JSON"):
        train.main(["--resume", str(foreign)])
    with pytest.raises(SystemExit, match="notes.txt exists and is not a folder"):
        train.main(real_run(base, "--out", str(foreign / "notes.txt" / "run")))


def test_resume_config_mismatch(base, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(base, run)
    before = (run / "config.json").read_text()
    with pytest.raises(SystemExit, match=r"config mismatch \(lr: run has 0.0003, flag says 0.5\)"):
        train.main(["--resume", str(run), "--lr", "0.5"])
    with pytest.raises(SystemExit, match="--preset cannot be given"):
        train.main(["--resume", str(run), "--preset", "qwen2.5-3b"])
    with pytest.raises(SystemExit, match="continues in its own folder; --out cannot be given"):
        train.main(["--resume", str(run), "--out", str(tmp_path / "elsewhere")])
    assert (run / "config.json").read_text() == before and not (tmp_path / "elsewhere").exists()
    two = tmp_path / "two"
    train.main(real_run(base, "--out", str(two), "--steps", "2"))
    config = (two / "config.json").read_text()
    with pytest.raises(SystemExit, match="already at step 2, past --steps 1"):  # not a rewrite of a finished run
        train.main(["--resume", str(two), "--steps", "1"])
    assert (two / "config.json").read_text() == config
    cfg = json.loads(before)
    del cfg["kl_kind"]
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit, match=r"missing keys \['kl_kind'\]"):
        train.main(["--resume", str(run)])


def test_relative_paths_resume_from_anywhere(base, tmp_path, monkeypatch):
    """config.json holds absolute model and data paths: a --resume from another folder reads the same files, and the
    same folder named another way is no mismatch."""
    monkeypatch.chdir(base.parent)
    rel = ["--model", f"{base.name}/base", "--train", f"{base.name}/data/train.jsonl", *TINY]
    final = train.main([*rel, "--out", str(tmp_path / "rel"), "--steps", "1", "--save-every", "1"])
    assert (final["heldout_n"], final["heldout_accuracy"], final["heldout_format_rate"]) == (0, None, None)
    cfg = json.loads((tmp_path / "rel" / "config.json").read_text())
    assert cfg["model"] == str(base / "base") and cfg["train"] == [str(base / "data" / "train.jsonl")]
    monkeypatch.chdir(tmp_path)
    train.main(["--resume", str(tmp_path / "rel"), "--steps", "2", "--model", str(base / "base" / ".." / "base")])
    assert [m["step"] for m in metrics(tmp_path / "rel")] == [1, 2]
    # a run from before paths were stored absolute, resumed from its folder with the same relative flag
    cfg["model"], cfg["steps"] = f"{base.name}/base", 2
    (tmp_path / "rel" / "config.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(base.parent)
    train.main(["--resume", str(tmp_path / "rel"), "--steps", "3", "--model", f"{base.name}/base"])
    assert json.loads((tmp_path / "rel" / "config.json").read_text())["model"] == str(base / "base")


def test_resume_refuses_changed_inputs(base, tmp_path):
    """inputs.json records the training data's hashes and the model's config and weight sizes: a resume on other
    contents at the same paths would not continue the same run."""
    data_file, model_dir = tmp_path / "train.jsonl", tmp_path / "model"
    shutil.copy(base / "data" / "train.jsonl", data_file)
    shutil.copytree(base / "base", model_dir)
    run = tmp_path / "r"
    train.main(["--model", str(model_dir), "--train", str(data_file), *TINY, "--out", str(run), "--steps", "1",
                "--save-every", "1"])
    assert set(json.loads((run / "inputs.json").read_text())) == {
        "--train file 1", "model config.json", "model tokenizer.json", "model model.safetensors"}
    original = data_file.read_text()
    data_file.write_text("".join(original.splitlines(keepends=True)[:-1]))  # one item fewer
    with pytest.raises(SystemExit, match=r"these inputs changed since the run began .*: --train file 1;"):
        train.main(["--resume", str(run), "--steps", "2"])
    data_file.write_text(original)
    (model_dir / "generation_config.json").write_text('{"eos_token_id": [0, 1]}')  # other reply ends
    with pytest.raises(SystemExit, match=r"these inputs changed .*: model generation_config.json;"):
        train.main(["--resume", str(run), "--steps", "2"])
    (model_dir / "generation_config.json").unlink()
    (model_dir / "stale.safetensors").write_bytes(b"not read by the loader")  # not an input: no change
    (run / "inputs.json").write_text('{"--train file 1": ')
    with pytest.raises(SystemExit, match="inputs.json: not valid JSON"):
        train.main(["--resume", str(run), "--steps", "2"])
    (run / "inputs.json").unlink()  # a run from before inputs.json: resumed, and recorded from now on
    train.main(["--resume", str(run), "--steps", "2"])
    assert [m["step"] for m in metrics(run)] == [1, 2] and (run / "inputs.json").is_file()


def test_corrupted_checkpoint(base, tmp_path):
    run = tmp_path / "c"
    shutil.copytree(base, run)
    f = run / "checkpoints" / "step_000001" / "model" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    damaged = f.read_bytes()
    config = (run / "config.json").read_text()
    with pytest.raises(SystemExit, match="step_000001 is unreadable"):
        train.main(["--resume", str(run), "--steps", "2"])
    assert f.read_bytes() == damaged  # left as it was
    assert (run / "config.json").read_text() == config  # and the run's config too (its steps are still 1)


def test_a_run_killed_while_saving_the_demo_base_resumes(tmp_path, monkeypatch):
    """The demo's base model appears whole or not at all: a run killed while writing it rebuilds it on --resume."""
    run = tmp_path / "demo"
    real = M.save_pretrained

    def killed(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt  # after the weights and config.json, before the tokenizer
    monkeypatch.setattr(M, "save_pretrained", killed)
    small = [*TINY, "--demo-warmup-steps", "2", "--steps", "1", "--out", str(run)]
    with pytest.raises(KeyboardInterrupt):
        train.main(small)
    assert not (run / "base").exists()
    monkeypatch.setattr(M, "save_pretrained", real)
    train.main(["--resume", str(run)])
    assert (run / "base" / "tokenizer.json").is_file() and [m["step"] for m in metrics(run)] == [1]


def test_resume_after_a_torn_log_line(base, tmp_path):
    run = tmp_path / "torn"
    shutil.copytree(base, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "reward_me')  # killed while writing step 2's line
    train.main(["--resume", str(run), "--steps", "2"])
    assert [m["step"] for m in metrics(run)] == [1, 2]


def test_empty_dataset_and_indivisible_batch(base, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit, match="--train: .*empty.jsonl:1: file: empty"):
        train.main(["--model", str(base / "base"), "--train", str(empty), "--out", str(tmp_path / "e"), *TINY])
    assert not (tmp_path / "e").exists()  # nothing written: the same command works once the data is fixed
    with pytest.raises(SystemExit, match="micro_batch_size must be >= 1, got 0"):
        train.main(real_run(base, "--out", str(tmp_path / "z"), "--micro-batch-size", "0"))
    with pytest.raises(SystemExit, match="demo task: need 16 <= n_train"):
        train.main(["--out", str(tmp_path / "z"), "--demo-n-train", "0"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="exists and is not a folder"):
        train.main(real_run(base, "--out", str(tmp_path / "file")))
    with pytest.raises(SystemExit, match="must be divisible by mini_batch_size 12"):
        train.main(real_run(base, "--out", str(tmp_path / "d"), "--mini-batch-size", "12"))
    with pytest.raises(SystemExit, match="--train and --heldout need --model"):
        train.main(["--out", str(tmp_path / "t"), "--train", str(base / "data" / "train.jsonl")])
    for device, message in (("gpu", "--device 'gpu': expected auto, cuda or cpu"),
                            ("cuda", None if torch.cuda.is_available() else "--device cuda: this torch sees no CUDA")):
        if message:
            with pytest.raises(SystemExit, match=message):
                train.main(real_run(base, "--out", str(tmp_path / "v"), "--device", device))
    assert not any((tmp_path / n).exists() for n in "tv")
    # rollouts that cannot fit the context are refused before anything is written (demo and real run)
    with pytest.raises(SystemExit, match=r"max_new_tokens 400 exceed the context of the demo model \(512"):
        train.main(["--out", str(tmp_path / "c"), "--max-new-tokens", "400"])
    with pytest.raises(SystemExit, match="max_new_tokens 400 exceed the context of .*base"):
        train.main(real_run(base, "--out", str(tmp_path / "c"), "--max-new-tokens", "400"))
    with pytest.raises(SystemExit, match="demo_n_heldout must be >= 1"):
        train.main(["--out", str(tmp_path / "c"), "--demo-n-heldout", "0"])
    assert not (tmp_path / "c").exists()
    with pytest.raises(SystemExit, match="grpo needs group_size >= 2"):
        train.main(real_run(base, "--out", str(tmp_path / "g"), "--algo", "grpo", "--group-size", "1",
                            "--mini-batch-size", "8", "--micro-batch-size", "8"))
    # values that would turn training into its opposite (a negative rate or weight) or freeze it (a zero clip)
    for flag, value, message in (("--warmup-steps", "-1", "warmup_steps must be >= 0"),
                                 ("--n-samples", "-1", "n_samples must be >= 0"),
                                 ("--lr", "-1e-4", "lr must be >= 0"), ("--kl-coef", "-0.1", "kl_coef must be >= 0"),
                                 ("--vf-coef", "-1", "vf_coef must be >= 0"),
                                 ("--grad-clip", "0", "grad_clip must be > 0"), ("--clip", "-0.1", "clip must be > 0"),
                                 ("--gamma", "1.5", r"gamma must be in \[0, 1\]"),
                                 ("--lam", "nan", r"lam must be in \[0, 1\]")):
        with pytest.raises(SystemExit, match=message):
            train.main(real_run(base, "--out", str(tmp_path / "n"), f"{flag}={value}"))
    assert not (tmp_path / "n").exists()
    # the chat markup needs a chat model's tokenizer, as in eval.py
    with pytest.raises(SystemExit, match=re.escape("--template chat needs the tokens <|im_start|>, <|im_end|>")):
        train.main(real_run(base, "--out", str(tmp_path / "n"), "--template", "chat"))
    with pytest.raises(SystemExit, match=re.escape("template chat needs <|im_start|> and <|im_end|> tokens")):
        train.main(["--out", str(tmp_path / "n"), "--template", "chat"])
    assert not (tmp_path / "n").exists()


def test_sft_learns_the_synthetic_task(base, tmp_path):
    run = tmp_path / "sft"
    final = train.main(real_run(base, "--out", str(run), "--algo", "sft", "--steps", "100", "--lr", "1e-3",
                                "--heldout", str(base / "data" / "heldout.jsonl")))
    assert final["heldout_accuracy"] >= 0.9, final

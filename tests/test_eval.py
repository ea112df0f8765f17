"""Tests for eval.py: bootstrap against a hand-written reference, paired comparison on hand-made result folders,
pass@k / majority vote on hand-made records, the command line end to end on tiny random models (real MedQA items
and the Qwen tokenizer where ../shared/data exists), torchrun sharding, the run report, and error messages."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import eval as E
import model as M
import verifier

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
MEDQA_DEV = SHARED / "medqa_usmle_4opt" / "phrases_no_exclude_dev.jsonl"
QWEN_TOKENIZER = SHARED / "qwen2-tokenizer" / "tokenizer.json"


# One thread: the models here are tiny, and on a busy 2-core machine two OpenMP threads wait on each other so long
# that a small matmul takes 1000x longer (measured: 16 ms instead of 0.012 ms).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -----------------------------------------------------------------------------
# bootstrap


def reference_bootstrap(x, n_resamples, seed):
    """Row r of default_rng(seed).integers(0, n, (n_resamples, n)) picks resample r; the rest is plain Python."""
    n = len(x)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    means = [sum(float(x[i]) for i in row) / n for row in idx]
    mu = sum(means) / n_resamples
    std = math.sqrt(sum((m - mu) ** 2 for m in means) / (n_resamples - 1))
    s = sorted(means)

    def percentile(q):  # linear interpolation between closest ranks
        pos = q / 100 * (n_resamples - 1)
        lo = int(math.floor(pos))
        return s[lo] + (s[min(lo + 1, n_resamples - 1)] - s[lo]) * (pos - lo)
    return std, (percentile(2.5), percentile(97.5))


@pytest.mark.parametrize("seed", [0, 7])
def test_bootstrap_matches_reference(seed):
    x = np.array([1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1,
                  0, 0, 1, 0], dtype=float)  # 37 items: an odd count
    std, (lo, hi) = E.bootstrap(x, 500, seed)
    ref_std, (ref_lo, ref_hi) = reference_bootstrap(x, 500, seed)
    assert std == pytest.approx(ref_std, abs=1e-12)
    assert lo == pytest.approx(ref_lo, abs=1e-12) and hi == pytest.approx(ref_hi, abs=1e-12)
    assert E.bootstrap(x, 500, seed) == (std, (lo, hi))  # same seed, same numbers
    # per-item mean accuracies (several samples per item) bootstrap the same way
    y = np.array([0.25, 0.5, 1.0, 0.0, 0.75, 0.5, 0.25, 1.0])
    assert E.bootstrap(y, 300, seed)[0] == pytest.approx(reference_bootstrap(y, 300, seed)[0], abs=1e-12)


def test_bootstrap_std_near_binomial_standard_error():
    # independent of the resampling details: the bootstrap std of a mean of 0/1 is ~ sqrt(p (1 - p) / n)
    x = np.array([1.0] * 60 + [0.0] * 140)
    std, (lo, hi) = E.bootstrap(x, 4000, 0)
    assert std == pytest.approx(math.sqrt(0.3 * 0.7 / 200), rel=0.08)
    assert lo < 0.3 < hi and hi - lo == pytest.approx(2 * 1.96 * std, rel=0.15)
    assert E.bootstrap(np.ones(10), 100, 0) == (0.0, (1.0, 1.0))
    with pytest.raises(ValueError, match="non-empty"):
        E.bootstrap(np.array([]), 100, 0)


# -----------------------------------------------------------------------------
# compare: paired bootstrap over hand-made result folders


def write_results(folder, records):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"model": str(folder)}))
    with open(folder / "items.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(dict(source="s", pred=None, gold="A", **r)) + "\n")
    return folder / "results.json"


def test_compare_known_difference(tmp_path, capsys):
    # A: two samples per item; 40 items right twice, 20 right once, 40 never -> per-item mean 0.5 on 100 items
    a = []
    for i in range(100):
        hits = (1, 1) if i < 40 else (1, 0) if i < 60 else (0, 0)
        a += [dict(file="medqa", id=f"q{i}", sample=s, correct=bool(h)) for s, h in enumerate(hits)]
    # B: one sample; right on 58 of the same 100 items, plus 20 items A never saw (must be ignored)
    b = [dict(file="medqa", id=f"q{i}", sample=0, correct=i % 100 >= 42) for i in range(100)]
    b += [dict(file="other", id=f"q{i}", sample=0, correct=True) for i in range(20)]
    ra, rb = write_results(tmp_path / "A", a), write_results(tmp_path / "B", b)
    out = E.main(["compare", str(ra), str(rb), "--bootstrap", "2000", "--seed", "3"])
    assert out["n"] == 100
    assert out["diff"] == pytest.approx(0.08, abs=1e-12)
    # per-item differences d = b - a; the paired bootstrap std ~ std(d) / sqrt(n)
    acc_a = np.array([1.0] * 40 + [0.5] * 20 + [0.0] * 40)
    acc_b = np.array([0.0] * 42 + [1.0] * 58)
    d = acc_b - acc_a
    assert out["std"] == pytest.approx(d.std() / math.sqrt(100), rel=0.1)
    assert out["ci95"][0] < 0.08 < out["ci95"][1]
    assert "+0.0800" in capsys.readouterr().out
    # the function itself: order of the pairs does not matter for the mean
    mean, std, _ = E.paired_bootstrap(acc_a[::-1], acc_b[::-1], 500, 0)
    assert mean == pytest.approx(0.08, abs=1e-12) and std > 0


def test_compare_refuses_items_that_are_not_the_same(tmp_path):
    """ids like "test:17" are line numbers: results on another file of the same name must not be paired."""
    ra = write_results(tmp_path / "A", [dict(file="f", id=f"f:{i}", sample=0, correct=True) for i in range(4)])
    rows = [dict(file="f", id=f"f:{i}", sample=0, correct=True) for i in range(4)]
    rb = tmp_path / "B" / "results.json"
    write_results(tmp_path / "B", [])
    with open(tmp_path / "B" / "items.jsonl", "w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps(dict(source="s", pred=None, gold="AB"[i % 2], **r)) + "\n")
    with pytest.raises(SystemExit, match="2 of 4 items paired by file name and id have different gold answers"):
        E.main(["compare", str(ra), str(rb)])
    rc = write_results(tmp_path / "C", [dict(file="f", id="f:0", sample=0, correct="false")])
    with pytest.raises(SystemExit, match="correct: expected true or false, got 'false'"):
        E.main(["compare", str(ra), str(rc)])
    with pytest.raises(SystemExit, match="a folder; expected the results.json"):
        E.main(["compare", str(ra), str(tmp_path / "C")])


def test_stop_text_ends_replies(demo_model, monkeypatch):
    """--stop: a base model that writes on after </answer> is scored on the reply up to it."""
    tok = M.load_tokenizer(demo_model)
    item = data.synthetic_task(16, 0, seed=0)[0][0]
    reply = "<think>the drug treats it</think><answer>" + item.answer + "</answer> more text"
    ids = tok.encode(reply, add_special_tokens=False).ids
    assert tok.decode(ids).replace(" ", "") == reply.replace(" ", "")  # the demo tokenizer may space words
    stops = []
    monkeypatch.setattr(M, "generate", lambda lm, prompts, *a, **k: stops.append(k["stop"]) or M.Generation(
        [ids] * len(prompts), [[0.0] * len(ids)] * len(prompts)))
    plain = E.answer_items(None, tok, [item], "base", 64)[0]
    cut = E.answer_items(None, tok, [item], "base", 64, stop="</answer>")[0]
    assert plain["reward"] == -1 and "text after </answer>" in verifier.score(plain["response"], item.answer).reason
    assert cut["response"].endswith("</answer>") and cut["reward"] == 1 and cut["response_tokens"] < len(ids)
    # the sampler is told to stop a row once its text holds the stop text (and not before)
    assert stops[0] is None and stops[1](ids) and not stops[1](ids[:len(ids) // 2])


def test_stop_in_the_sampler_changes_no_reply(demo_model, monkeypatch):
    """The sampler's stop only saves steps: replies, rewards and token counts are those of cutting the text after a
    full-length generation (same seed, sampling at T=1)."""
    lm, tok = M.Transformer.from_pretrained(demo_model), M.load_tokenizer(demo_model)
    items = data.synthetic_task(16, 0, seed=0)[0][:8]
    kw = dict(temperature=1.0, samples=2, eos_ids=lm.args.eos_ids)
    stop = "e"  # this random model rarely writes "</answer>"; a common letter ends replies at varied lengths
    with_stop = E.answer_items(lm, tok, items, "base", 48, stop=stop, **kw)
    real = M.generate
    monkeypatch.setattr(M, "generate", lambda *a, **k: real(*a, **{**k, "stop": None}))
    text_cut = E.answer_items(lm, tok, items, "base", 48, stop=stop, **kw)
    assert with_stop == text_cut
    lengths = {r["response_tokens"] for r in with_stop if r["response"].endswith(stop)}
    assert len(lengths) >= 3  # replies stopped at several lengths


def test_compare_no_shared_items(tmp_path):
    ra = write_results(tmp_path / "A", [dict(file="f", id="1", sample=0, correct=True)])
    rb = write_results(tmp_path / "B", [dict(file="g", id="1", sample=0, correct=True)])
    with pytest.raises(SystemExit, match="share no items"):
        E.main(["compare", str(ra), str(rb)])
    (tmp_path / "B" / "items.jsonl").unlink()
    with pytest.raises(SystemExit, match="items.jsonl: no such file"):
        E.main(["compare", str(ra), str(rb)])


# -----------------------------------------------------------------------------
# pass@k and majority vote on hand-made records


def test_summarize_pass_at_k_and_majority():
    def recs(source, gold, preds):
        return [dict(source=source, gold=gold, pred=p, correct=p == gold, format_ok=p is not None,
                     pattern="concise" if p else "format_failure", response_tokens=10, think_words=4) for p in preds]
    records = (recs("x", "A", ["A", "A", "B"])        # majority A: right; pass
               + recs("x", "C", ["B", None, "C"])     # B and C tie, B came first: wrong; pass
               + recs("y", "A", [None, None, None])   # no vote: wrong
               + recs("y", "B", ["D", "D", "D"]))     # wrong
    r = E.summarize(records, 3, 200, 0)
    assert r["n"] == 4
    assert r["accuracy"] == pytest.approx(3 / 12)
    assert r["pass_at_k"] == pytest.approx(2 / 4)
    assert r["majority_accuracy"] == pytest.approx(1 / 4)
    assert r["format_rate"] == pytest.approx(8 / 12)
    assert r["by_source"] == {"x": dict(n=2, accuracy=pytest.approx((2 / 3 + 1 / 3) / 2)),
                              "y": dict(n=2, accuracy=0.0)}
    assert r["patterns"]["concise"] == pytest.approx(8 / 12) and sum(r["patterns"].values()) == pytest.approx(1)
    assert "pass_at_k" not in E.summarize(records, 1, 200, 0)


# -----------------------------------------------------------------------------
# tiny random models


def save_tiny_model(folder, tokenizer, vocab_size, max_seq_len=2048):
    args = M.ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, intermediate_size=64, vocab_size=vocab_size,
                       max_seq_len=max_seq_len, eos_id=tokenizer.token_to_id("<|endoftext|>"))
    M.save_pretrained(M.Transformer(args).init_weights(0), folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    """A tiny random model with data.demo_tokenizer (no chat tokens), a 320-token context."""
    train, _ = data.synthetic_task(64, 0, seed=0)
    tok = data.demo_tokenizer([data.render(it, "base") + data.sft_target(it, "base") for it in train], vocab_size=300)
    return save_tiny_model(tmp_path_factory.mktemp("demo") / "model", tok, -(-tok.get_vocab_size() // 64) * 64,
                           max_seq_len=320)


@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory):
    if not QWEN_TOKENIZER.is_file():
        pytest.skip(f"{QWEN_TOKENIZER} not present")
    from tokenizers import Tokenizer
    return save_tiny_model(tmp_path_factory.mktemp("qwen") / "model", Tokenizer.from_file(str(QWEN_TOKENIZER)), 151936)


def write_generic(path, items):
    with open(path, "w") as f:
        for it in items:
            f.write(json.dumps(dict(id=it.id, question=it.question, options=it.options, answer=it.answer,
                                    source=it.source)) + "\n")
    return path


def read_items(folder):
    return [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]


def test_end_to_end_medqa_subprocess(qwen_model, tmp_path):
    if not MEDQA_DEV.is_file():
        pytest.skip(f"{MEDQA_DEV} not present")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "eval.py", "--model", str(qwen_model), "--data", str(MEDQA_DEV),
                        "--template", "base", "--limit", "50", "--max-new-tokens", "16", "--batch-size", "32",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=ONE_THREAD)
    assert p.returncode == 0, p.stderr
    results = json.loads((out / "results.json").read_text())
    name = MEDQA_DEV.stem
    assert set(results) == {"model", "template", "settings", name, "all"}
    r = results["all"]
    assert r["n"] == 50 and results[name]["n"] == 50 and r["dropped"] == 0
    assert r["format_rate"] <= 0.05  # random weights do not write the tags
    assert r["accuracy"] <= r["format_rate"]
    assert sum(r["patterns"].values()) == pytest.approx(1.0)
    assert sum(s["n"] for s in r["by_source"].values()) == 50
    assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
    assert 0 < r["mean_response_tokens"] <= 16

    # items.jsonl: the first 50 rows of the file, in file order, with their gold letters
    items = read_items(out)
    rows = [json.loads(line) for line in MEDQA_DEV.read_text().splitlines()[:50]]
    assert [x["id"] for x in items] == [f"{name}:{i}" for i in range(1, 51)]
    assert [x["gold"] for x in items] == [row["answer_idx"] for row in rows]
    assert {x["file"] for x in items} == {name}
    assert all(x["question"] in it["prompt"] for x, it in zip(rows, items))
    # results.json agrees with a recount of items.jsonl
    assert r["accuracy"] == pytest.approx(np.mean([x["correct"] for x in items]))
    assert r["format_rate"] == pytest.approx(np.mean([x["format_ok"] for x in items]))
    for source, s in r["by_source"].items():
        assert s["n"] == sum(row["meta_info"] == source for row in rows)
    for x in items:
        assert x["reward"] == (1.0 if x["correct"] else 0.0 if x["format_ok"] else -1.0)
    assert name in p.stdout and "all" in p.stdout and "95% CI" in p.stdout


def test_several_files_and_dropped_prompts(demo_model, tmp_path, capsys):
    train, heldout = data.synthetic_task(16, 9, seed=1)
    f1 = write_generic(tmp_path / "first.jsonl", train[:5])
    long_q = data.Item("long", "word " * 400, {"A": "x", "B": "y"}, "A", "long")  # > 320 - 16 tokens
    f2 = write_generic(tmp_path / "second.jsonl", heldout + [long_q])
    out = tmp_path / "out"
    E.main(["--model", str(demo_model), "--data", str(f1), str(f2), "--template", "direct", "--out", str(out),
                  "--max-new-tokens", "16", "--samples", "2", "--temperature", "1.0", "--batch-size", "8"])
    saved = json.loads((out / "results.json").read_text())
    assert set(saved) == {"model", "template", "settings", "first", "second", "all"}
    assert (saved["first"]["n"], saved["second"]["n"], saved["all"]["n"]) == (5, 9, 14)
    assert (saved["first"]["dropped"], saved["second"]["dropped"], saved["all"]["dropped"]) == (0, 1, 1)
    assert 0 <= saved["all"]["accuracy"] <= saved["all"]["pass_at_k"] <= 1
    items = read_items(out)
    assert len(items) == 28
    assert [(x["file"], x["id"], x["sample"]) for x in items] == \
        [("first", it.id, s) for it in train[:5] for s in (0, 1)] + [("second", it.id, s) for it in heldout for s in (0, 1)]
    # the direct template pre-fills the empty think: every well-formed reply is a direct answer
    assert all(x["pattern"] in ("direct_answer", "format_failure") for x in items)
    printed = capsys.readouterr().out.splitlines()
    second = next(line for line in printed if line.startswith("second "))
    assert second.split()[1:3] == ["9", "1"]  # n and dropped
    assert any(line.startswith("patterns (all): format_failure ") for line in printed)


def test_same_named_files_default_length_and_rescoring(demo_model, tmp_path, monkeypatch):
    """Files that share a name are keyed by folder/name; with no --max-new-tokens, a short context leaves the replies
    what the longest prompt leaves of it; items.jsonl rescores to its own verdicts with the template's pre-filled prefix and its options."""
    train, _ = data.synthetic_task(16, 0, seed=3)
    files = []
    for d in ("medqa", "mmlu"):
        (tmp_path / d).mkdir()
        files.append(str(write_generic(tmp_path / d / "test.jsonl", train[:3])))
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path / "medqa")  # relative paths name their folders too: test.jsonl, ../mmlu/test.jsonl
    files = ["test.jsonl", "../mmlu/test.jsonl"]
    saved = E.main(["--model", str(demo_model), "--data", *files, "--template", "direct", "--out", str(out)])
    tok = M.load_tokenizer(demo_model)
    assert {"medqa/test", "mmlu/test", "all"} <= set(saved) and saved["all"]["n"] == 6
    longest = max(len(tok.encode(data.render(it, "direct"), add_special_tokens=False).ids) for it in train[:3])
    assert saved["settings"]["max_new_tokens"] == 320 - longest < 512 and saved["all"]["dropped"] == 0
    items = read_items(out)
    assert [x["file"] for x in items] == ["medqa/test"] * 3 + ["mmlu/test"] * 3
    for x in items:
        s = verifier.score(data.response_prefix("direct") + x["response"], x["gold"], x["options"])
        assert (s.reward, s.pred, s.format_ok) == (x["reward"], x["pred"], x["format_ok"])


def test_eos_ids_end_replies_and_are_not_scored(demo_model, monkeypatch):
    """Any of the model's EOS ids ends a reply (the sampler is given them all) and is left out of the scored text."""
    tok = M.load_tokenizer(demo_model)
    item = data.synthetic_task(16, 0, seed=0)[0][0]
    ids = tok.encode("<think>x</think><answer>" + item.answer + "</answer>", add_special_tokens=False).ids
    given = []
    monkeypatch.setattr(M, "generate", lambda lm, prompts, *a, **k: given.append(k["eos_id"]) or M.Generation(
        [ids + [7]] * len(prompts), [[0.0] * (len(ids) + 1)] * len(prompts)))
    r = E.answer_items(None, tok, [item], "base", 64, eos_ids=(5, 7))[0]
    assert given == [[5, 7]] and r["reward"] == 1 and r["response_tokens"] == len(ids) + 1


def test_interrupted_write_leaves_no_stale_results(tmp_path):
    """results.json is written last and whole; an earlier run's goes before this run's items.jsonl is written, so a
    kill midway never leaves one run's results.json beside another run's items."""
    out = tmp_path / "out"
    E.write_outputs(out, [dict(id="1")], dict(run="old"))
    assert json.loads((out / "results.json").read_text()) == dict(run="old")
    with pytest.raises(TypeError):  # stands in for a kill while items.jsonl is being written
        E.write_outputs(out, [dict(id="1"), dict(id=object())], dict(run="new"))
    assert not (out / "results.json").exists() and read_items(out) == [dict(id="1")]
    E.write_outputs(out, [dict(id="2")], dict(run="new"))
    assert json.loads((out / "results.json").read_text()) == dict(run="new") and read_items(out) == [dict(id="2")]
    assert sorted(p.name for p in out.iterdir()) == ["items.jsonl", "results.json"]  # no temporary file left


def test_torchrun_matches_one_process(demo_model, tmp_path):
    train, _ = data.synthetic_task(24, 0, seed=2)
    f = write_generic(tmp_path / "items.jsonl", train[:11])
    args = ["eval.py", "--model", str(demo_model), "--data", str(f), "--template", "base", "--max-new-tokens", "12",
            "--batch-size", "4"]
    env = ONE_THREAD
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args,
                          "--out", str(tmp_path / "two")], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=env)
    assert two.returncode == 0, two.stderr
    a, b = read_items(tmp_path / "one"), read_items(tmp_path / "two")
    assert [x["id"] for x in b] == [it.id for it in train[:11]]  # gathered back into file order
    assert [(x["id"], x["response"]) for x in a] == [(x["id"], x["response"]) for x in b]  # greedy: same replies
    assert json.loads((tmp_path / "two" / "results.json").read_text())["settings"]["world_size"] == 2


def test_find_model(demo_model, tmp_path):
    assert E.find_model(demo_model) == demo_model
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")  # train.py's config, not a model's
    for step in (2, 10):
        shutil.copytree(demo_model, run / "checkpoints" / f"step_{step:06d}" / "model")
    assert E.find_model(run) == run / "checkpoints" / "step_000010" / "model"
    assert E.find_model(run / "checkpoints" / "step_000002") == run / "checkpoints" / "step_000002" / "model"


# -----------------------------------------------------------------------------
# bad input


def test_bad_input_messages(demo_model, tmp_path):
    train, _ = data.synthetic_task(16, 0, seed=0)
    good = write_generic(tmp_path / "good.jsonl", train[:3])
    common = ["--template", "base", "--out", str(tmp_path / "out"), "--max-new-tokens", "16"]
    with pytest.raises(SystemExit, match="no such folder"):
        E.main(["--model", str(tmp_path / "nope"), "--data", str(good), *common])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="not a model folder"):
        E.main(["--model", str(tmp_path / "empty"), "--data", str(good), *common])
    # yes/no answers where the format needs option letters: load_mcqa's file:line: field message comes through
    yn = tmp_path / "yesno.jsonl"
    yn.write_text(json.dumps(dict(question="Is it?", options={"yes": "yes", "no": "no"}, answer="yes")) + "\n")
    with pytest.raises(SystemExit, match=f"{yn}:1: options: expected keys A, B"):
        E.main(["--model", str(demo_model), "--data", str(yn), *common])
    with pytest.raises(SystemExit, match=r"--template chat needs the tokens <\|im_start\|>"):
        E.main(["--model", str(demo_model), "--data", str(good), "--template", "chat", "--out", str(tmp_path / "o")])
    long = write_generic(tmp_path / "long.jsonl", [data.Item("1", "word " * 400, {"A": "x", "B": "y"}, "A", "s")])
    with pytest.raises(SystemExit, match="all 1 prompts .* longer than 304 tokens"):
        E.main(["--model", str(demo_model), "--data", str(long), *common])
    with pytest.raises(SystemExit, match="needs --temperature > 0"):
        E.main(["--model", str(demo_model), "--data", str(good), *common, "--samples", "4"])
    twins = []  # two files that share their name and their folder's name
    for d in ("a", "b"):
        (tmp_path / d / "same").mkdir(parents=True)
        twins.append(str(shutil.copy(good, tmp_path / d / "same" / "good.jsonl")))
    with pytest.raises(SystemExit, match="share the name 'same/good'"):
        E.main(["--model", str(demo_model), "--data", *twins, *common])
    # the data is read before the model is loaded: its error comes first, whatever else is wrong
    with pytest.raises(SystemExit, match=f"{yn}:1: options"):
        E.main(["--model", str(demo_model), "--data", str(yn), "--template", "base", "--out", str(tmp_path / "out"),
                "--max-new-tokens", "4000"])
    assert not (tmp_path / "out").exists()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit, match="is not a writable folder"):  # before any item is answered
        E.main(["--model", str(demo_model), "--data", str(good), "--template", "base", "--out",
                str(tmp_path / "a_file" / "out")])
    wide = tmp_path / "wide"  # a tokenizer with more tokens than the model has embeddings
    shutil.copytree(demo_model, wide)
    cfg = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**cfg, "vocab_size": 8}))
    from safetensors.torch import load_file, save_file
    sd = load_file(wide / "model.safetensors")
    sd["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"][:8].clone()
    save_file(sd, wide / "model.safetensors")
    with pytest.raises(SystemExit, match="beyond the model's vocabulary of 8"):
        E.main(["--model", str(wide), "--data", str(good), *common])
    (wide / "tokenizer.json").write_text("{not json")
    with pytest.raises(SystemExit, match="tokenizer.json: not a valid tokenizer.json"):
        E.main(["--model", str(wide), "--data", str(good), *common])


# -----------------------------------------------------------------------------
# report


def png_size(path):
    b = path.read_bytes()
    assert b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR", f"{path} is not a PNG"
    return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")


def write_rl_run(run):
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, 13):
            # direct answers take over from format failures, as in the paper's training dynamics
            ff = max(0.0, 1 - step / 8)
            shares = dict(format_failure=ff, verbose=0.1 * (1 - ff), concise=0.3 * (1 - ff), direct_answer=0.6 * (1 - ff),
                          outside_reasoning=0.0)
            acc = [0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.5, 0.6, 0.7, 0.65, 0.6, 0.6][step - 1]
            f.write(json.dumps(dict(step=step, reward_mean=2 * acc - ff, accuracy=acc, format_rate=1 - ff,
                                    response_len=40 - step, think_words=20 - step, kl=0.01 * step, policy_loss=0.1,
                                    **{f"pattern_{p}": v for p, v in shares.items()})) + "\n")
    samples = [(1, "format_failure", "the answer is B"), (1, "concise", "<think>a b c d e f g h i j</think><answer>B</answer>"),
               (6, "concise", "<think>middle reasoning here ok then</think><answer>A</answer>"),
               (12, "direct_answer", "<think>B.</think><answer>B</answer>"), (12, "verbose", "late ```code``` reply")]
    with open(run / "samples.jsonl", "w") as f:
        for step, pattern, response in samples:
            f.write(json.dumps(dict(step=step, prompt="Q", response=response, gold="B", pred="B", reward=1.0,
                                    format_ok=True, correct=True, pattern=pattern, think_words=3)) + "\n")
    (run / "final.json").write_text(json.dumps(dict(steps=12, heldout_accuracy=0.625)))
    return samples


def test_report_rl_run(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    samples = write_rl_run(run)
    folder = E.main(["report", str(run)])
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == ["length.png", "loss.png", "patterns.png", "reward.png"]
    for name in pngs:
        w, h = png_size(folder / name)
        assert w >= 300 and h >= 200, (name, w, h)
        import matplotlib.image
        assert matplotlib.image.imread(folder / name).shape[:2] == (h, w)
    md = (folder / "report.md").read_text()
    assert "| accuracy | 0.1 | 0.6 | 0.7 (9) |" in md
    assert "| format_rate | 0.125 | 1 | 1 (8) |" in md  # the first step where the format rate reaches 1
    assert '"heldout_accuracy": 0.625' in md
    for name in pngs:
        assert f"]({name})" in md
    # one example per pattern and phase: steps 1-4 early, 5-8 middle, 9-12 late
    early, middle, late = md.index("### early"), md.index("### middle"), md.index("### late")
    for step, pattern, response in samples:
        at = md.index(response)
        assert {1: early < at < middle, 6: middle < at < late, 12: late < at}[step], (step, response)
        assert f"**{pattern}** (step {step}" in md
    assert "````\nlate ```code``` reply\n````" in md  # a reply holding a fence cannot close its block


def test_report_sft_run_without_matplotlib(tmp_path, monkeypatch, capsys):
    run = tmp_path / "sft"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(dict(step=s, sft_loss=2.0 / s, response_len=9.0)) + "\n"
                                               for s in range(1, 6)) + '{"step": 6, "sft_lo')  # killed mid-line
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    (run / "report").mkdir()
    (run / "report" / "reward.png").write_bytes(b"an earlier report's plot")
    folder = E.main(["report", str(run)])
    out = capsys.readouterr()
    assert "pip install matplotlib" in out.out and "metrics.jsonl:6: skipped a last line cut short" in out.err
    md = (folder / "report.md").read_text()
    assert "| sft_loss | 2 | 0.4 | 0.4 (5) |" in md and "reward_mean" not in md
    assert not list(folder.glob("*.png"))
    # a bad line before the last is no torn tail: still an error
    lines = (run / "metrics.jsonl").read_text().split("\n")
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "{oops", *lines[1:5]]) + "\n")
    with pytest.raises(SystemExit, match="metrics.jsonl:2: not valid JSON"):
        E.main(["report", str(run)])


def test_report_sft_run_plots_what_exists(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "sft"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(dict(step=s, sft_loss=2.0 / s, response_len=9.0)) + "\n"
                                               for s in range(1, 6)))
    folder = E.main(["report", str(run)])
    assert sorted(p.name for p in folder.glob("*.png")) == ["length.png", "loss.png"]
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        E.main(["report", str(tmp_path)])

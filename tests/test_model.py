"""model.py against outside oracles: `transformers` Qwen2ForCausalLM for logits and greedy generation, a full
forward recomputation for the KV-cached sampler, and hand-computed cases for the sampling filters."""

import copy
import json
import math

import pytest
import torch

import model as M

transformers = pytest.importorskip("transformers")
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

VOCAB = 101


def hf_model(tmp_path, n_heads=4, n_kv=2, tied=False, theta=10000.0, layers=2, dim=64, seed=0, shard=False,
             max_pos=256, **config):
    """A random-weight HF Qwen2 saved to tmp_path (all weights, biases and norms perturbed, so nothing is 0/1)."""
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=layers,
                      num_attention_heads=n_heads, num_key_value_heads=n_kv, max_position_embeddings=max_pos,
                      rope_theta=theta, tie_word_embeddings=tied, eos_token_id=3, **config)
    hf = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.1)
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.add_(1.0)
    hf.save_pretrained(tmp_path, max_shard_size="40KB" if shard else "5GB")
    return hf


CONFIGS = [  # (heads, kv heads, tied, theta, sharded): GQA ratios 1, 2, 4 and MQA
    (4, 4, False, 10000.0, False),
    (4, 2, True, 1e6, False),
    (8, 2, False, 500.0, True),
    (4, 1, True, 10000.0, True),
    (8, 1, False, 1e6, False),
]


@pytest.mark.parametrize("n_heads,n_kv,tied,theta,shard", CONFIGS)
def test_logits_match_transformers(tmp_path, n_heads, n_kv, tied, theta, shard):
    hf = hf_model(tmp_path, n_heads, n_kv, tied, theta, shard=shard)
    if shard:
        assert (tmp_path / "model.safetensors.index.json").exists()
    m = M.Transformer.from_pretrained(tmp_path)
    assert m.args.n_kv_heads == n_kv and m.args.tie_embeddings == tied and m.args.rope_theta == theta
    x = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, ours = hf(x).logits, m(x)
    assert ours.shape == (3, 40, VOCAB)
    assert (ref - ours).abs().max().item() <= 1e-4


def test_transformers_4x_config_style(tmp_path):
    """Qwen2.5 checkpoints ship top-level rope_theta / torch_dtype (transformers 4.x); 5.x writes rope_parameters."""
    hf = hf_model(tmp_path, theta=1e6)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert "rope_parameters" in cfg  # what transformers 5.x wrote
    old = {k: v for k, v in cfg.items() if k not in ("rope_parameters", "layer_types", "dtype")}
    old.update(rope_theta=1e6, torch_dtype="float32", sliding_window=32768, use_sliding_window=False)
    (tmp_path / "config.json").write_text(json.dumps(old))
    m = M.Transformer.from_pretrained(tmp_path)
    assert m.args.rope_theta == 1e6
    x = torch.randint(0, VOCAB, (2, 30))
    with torch.no_grad():
        assert (hf(x).logits - m(x)).abs().max().item() <= 1e-4


def test_explicit_head_dim_matches_transformers(tmp_path):
    """A config may set head_dim apart from hidden_size / heads (transformers honours it): 4 heads of 24 on 64."""
    hf = hf_model(tmp_path, head_dim=24)
    m = M.Transformer.from_pretrained(tmp_path)
    assert m.args.head_dim == 24 and m.model.layers[0].self_attn.q_proj.weight.shape == (96, 64)
    x = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (hf(x).logits - m(x)).abs().max().item() <= 1e-4
    g = M.generate(m, x[:, :8].tolist(), 6, temperature=0)
    ref = hf.generate(x[:, :8], max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert g.tokens == ref[:, 8:].tolist()


def test_reply_ending_tokens(tmp_path):
    """Every EOS id ends a reply: config.json's list, then generation_config.json's (transformers' generate reads it;
    instruct models list <|im_end|> and <|endoftext|> there), else the tokenizer's eos_token. They survive a save."""
    hf_model(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "eos_token_id": [5, 3]}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 5]}))
    m = M.Transformer.from_pretrained(tmp_path)
    assert (m.args.eos_id, m.args.eos_ids) == (5, (5, 3, 7))
    M.save_pretrained(m, tmp_path / "saved")
    assert M.read_config(tmp_path / "saved").eos_ids == (5, 3, 7)
    # a row stops at whichever of them it samples: the greedy token after [11] of a model that always predicts 7
    with torch.no_grad():
        m.lm_head.weight.zero_()
        m.lm_head.weight[7] = 1.0
        m.model.norm.weight.fill_(1.0)
    assert M.generate(m, [[11]], 5, temperature=0, eos_id=m.args.eos_ids).tokens == [[7]]

    (tmp_path / "generation_config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "eos_token_id"}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": [{"id": 9, "content": "<|im_end|>"},
                                                                          {"id": 12, "content": "<|endoftext|>"}]}))
    assert M.read_config(tmp_path).eos_ids == (12,)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": None}))
    assert M.read_config(tmp_path).eos_ids == () and M.read_config(tmp_path).eos_id is None
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "<|endoftext|>"}))
    with pytest.raises(ValueError, match=r"generation_config.json: eos_token_id: expected a token id"):
        M.read_config(tmp_path)


@pytest.mark.parametrize("patch", [
    {"hidden_act": "swish"},  # transformers' name for the same SiLU
    {"rope_scaling": {"rope_type": "default"}},
    {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 2, "layer_types": None},  # no layer slides
    {"rope_parameters": None, "rope_theta": None},  # transformers' default theta, 10000
    {"eos_token_id": []},  # no EOS id
])
def test_configs_transformers_reads_as_the_plain_model(tmp_path, patch):
    hf = hf_model(tmp_path, theta=10000.0)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(patch)
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    if patch.get("eos_token_id") == []:
        (tmp_path / "generation_config.json").unlink()  # which would name transformers' EOS, 3
    m = M.Transformer.from_pretrained(tmp_path)
    assert m.args.eos_id == (None if patch.get("eos_token_id") == [] else 3)
    hf2 = Qwen2ForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (hf(x).logits - hf2(x).logits).abs().max().item() == 0  # transformers reads it as the same model
        assert (hf2(x).logits - m(x)).abs().max().item() <= 1e-4


def test_bf16_load_converts_dtype(tmp_path):
    hf = hf_model(tmp_path)
    m = M.Transformer.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    x = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        ref, ours = hf(x).logits, m(x).float()
    assert torch.isfinite(ours).all()
    rel = (ref - ours).norm() / ref.norm()
    assert rel < 0.03, rel  # bf16 has 8 bits of mantissa


def test_save_pretrained_round_trip(tmp_path):
    hf_model(tmp_path / "a", tied=False)
    m = M.Transformer.from_pretrained(tmp_path / "a")
    M.save_pretrained(m, tmp_path / "b")
    hf2 = Qwen2ForCausalLM.from_pretrained(tmp_path / "b").eval()
    m2 = M.Transformer.from_pretrained(tmp_path / "b")
    x = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        assert (hf2(x).logits - m(x)).abs().max().item() <= 1e-4
        assert torch.equal(m2(x), m(x))


def test_save_pretrained_over_a_sharded_checkpoint(tmp_path):
    """Saving into a folder that holds shards leaves one set of weights (the shards and their index go, as with
    transformers' save_pretrained); an index beside a model.safetensors loses to it, as in transformers."""
    hf_model(tmp_path, shard=True)
    index = (tmp_path / "model.safetensors.index.json").read_text()
    shards = sorted(set(json.loads(index)["weight_map"].values()))
    m = M.Transformer.from_pretrained(tmp_path)
    with torch.no_grad():
        m.model.norm.weight.mul_(3.0)
    M.save_pretrained(m, tmp_path)
    assert not any((tmp_path / f).exists() for f in ["model.safetensors.index.json", *shards])
    x = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        assert torch.equal(M.Transformer.from_pretrained(tmp_path)(x), m(x))
        assert (Qwen2ForCausalLM.from_pretrained(tmp_path).eval()(x).logits - m(x)).abs().max().item() <= 1e-4
        (tmp_path / "model.safetensors.index.json").write_text(index)  # stale, left by another tool
        assert torch.equal(M.Transformer.from_pretrained(tmp_path)(x), m(x))


def test_ragged_batch_equals_rows_alone(tmp_path):
    hf_model(tmp_path)
    m = M.Transformer.from_pretrained(tmp_path)
    rows = [torch.randint(0, VOCAB, (n,)) for n in (12, 5, 9)]
    T = 12
    x = torch.zeros(3, T, dtype=torch.long)
    pad = torch.zeros(3, T, dtype=torch.bool)
    for i, r in enumerate(rows):
        x[i, T - len(r):], pad[i, T - len(r):] = r, True
    with torch.no_grad():
        batched = m(x, pad)
        for i, r in enumerate(rows):
            alone = m(r[None])
            assert (batched[i, T - len(r):] - alone[0]).abs().max().item() <= 1e-5
    assert torch.isfinite(batched).all()  # pad rows must not be NaN
    # HF's 0/1 attention_mask (long or float) means the same; an additive mask or another shape is refused
    with torch.no_grad():
        assert torch.equal(m(x, pad.long()), batched) and torch.equal(m(x, pad.float()), batched)
    with pytest.raises(ValueError, match="pad_mask must be bool or 0/1"):
        m(x, torch.zeros(3, T).masked_fill(~pad, float("-inf")))
    with pytest.raises(ValueError, match=r"pad_mask must have the tokens' shape \(3, 12\)"):
        m(x, pad[:, 1:])


# -----------------------------------------------------------------------------
# The sampler


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    hf = hf_model(d, n_heads=4, n_kv=2, tied=True, theta=10000.0, layers=2)
    return hf, M.Transformer.from_pretrained(d)


PROMPTS = [[5, 17, 33, 2, 9, 41, 7], [11, 60], [90, 4, 4, 8, 15, 16, 23, 42, 1, 13, 72], [30]]


def test_greedy_equals_full_recomputation(pair):
    _, m = pair
    out = M.generate(m, PROMPTS, 12, temperature=0)
    for p, toks, lps in zip(PROMPTS, out.tokens, out.logprobs):
        assert len(toks) == 12
        seq = list(p)
        for tok, lp in zip(toks, lps):
            with torch.no_grad():
                logits = m(torch.tensor([seq]))[0, -1]
            assert tok == int(logits.argmax())
            assert abs(lp - float(torch.log_softmax(logits, -1)[tok])) <= 1e-4
            seq.append(tok)


def test_prefill_attends_over_its_own_keys(pair, monkeypatch):
    """The prefill attends over the prompt's keys only (one-token prompts included), and no call reads what a
    reused cache held before."""
    _, m = pair
    keys = []
    real = M.attend
    monkeypatch.setattr(M, "attend", lambda q, k, v, mask: keys.append(k.shape[2]) or real(q, k, v, mask))
    for prompts in ([[30], [7]], [[5, 17, 33], [11, 60, 2]], PROMPTS):
        keys.clear()
        fresh = M.generate(m, prompts, 6, temperature=0)
        P = max(map(len, prompts))
        assert keys[:len(m.model.layers)] == [P] * len(m.model.layers)  # then the decode steps: the whole cache
        assert keys[len(m.model.layers)] == P + 6
        g = torch.Generator().manual_seed(0)
        for layer in m.model.layers:  # same batch and length: the next call reuses this cache
            layer.self_attn.cache.k.copy_(1e3 * torch.randn(layer.self_attn.cache.k.shape, generator=g))
            layer.self_attn.cache.v.copy_(1e3 * torch.randn(layer.self_attn.cache.v.shape, generator=g))
        again = M.generate(m, prompts, 6, temperature=0)
        assert again.tokens == fresh.tokens and again.logprobs == fresh.logprobs


def test_greedy_ragged_matches_transformers_generate(pair):
    hf, m = pair
    out = M.generate(m, PROMPTS, 16, temperature=0)
    for p, toks, lps in zip(PROMPTS, out.tokens, out.logprobs):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0,
                          output_logits=True, return_dict_in_generate=True)
        assert ref.sequences[0, len(p):].tolist() == toks
        ref_lp = [float(torch.log_softmax(l[0].float(), -1)[t]) for l, t in zip(ref.logits, toks)]
        assert max(abs(a - b) for a, b in zip(ref_lp, lps)) <= 1e-4


def test_sampled_logprobs_are_untruncated_tempered(pair):
    _, m = pair
    out = M.generate(m, PROMPTS, 8, temperature=0.7, top_k=5, top_p=0.9, seed=3)
    for p, toks, lps in zip(PROMPTS, out.tokens, out.logprobs):
        seq = list(p)
        for tok, lp in zip(toks, lps):
            with torch.no_grad():
                logits = m(torch.tensor([seq]))[0, -1]
            assert abs(lp - float(torch.log_softmax(logits / 0.7, -1)[tok])) <= 1e-4
            assert tok in logits.topk(5).indices.tolist()  # top-k respected
            seq.append(tok)


@pytest.mark.parametrize("temperature", [1e-40, 1e-46])  # 1e-46: 0 in fp32, as 1 / 1e-40 is inf (CUDA's division)
def test_tiny_temperature_samples_the_greedy_tokens(pair, temperature):
    _, m = pair
    greedy = M.generate(m, PROMPTS, 8, temperature=0)
    out = M.generate(m, PROMPTS, 8, temperature=temperature, seed=0)
    assert out.tokens == greedy.tokens
    assert all(abs(lp) <= 1e-6 for row in out.logprobs for lp in row)  # all the mass on the top token


def test_eos_stops_rows_independently_and_early(pair):
    _, m = pair
    free = M.generate(m, PROMPTS, 20, temperature=0)
    eos = free.tokens[0][4]  # row 0 produces this token at step 4
    out = M.generate(m, PROMPTS, 20, temperature=0, eos_id=eos)
    for full, toks in zip(free.tokens, out.tokens):
        end = full.index(eos) + 1 if eos in full else len(full)
        assert toks == full[:end]  # EOS kept as last token; others run to max length
    assert out.tokens[0][-1] == eos and len(out.tokens[0]) <= 5


def test_several_eos_ids(pair):
    """eos_id may list several ids (as instruct models' generation configs do): a row stops at whichever comes first."""
    _, m = pair
    free = M.generate(m, PROMPTS, 20, temperature=0)
    a, b = free.tokens[0][3], free.tokens[1][5]
    out = M.generate(m, PROMPTS, 20, temperature=0, eos_id=[a, b])
    for full, toks in zip(free.tokens, out.tokens):
        end = next((i + 1 for i, t in enumerate(full) if t in (a, b)), len(full))
        assert toks == full[:end]
    assert len(out.tokens[0]) <= 4 and len(out.tokens[1]) <= 6


def test_early_stop_when_all_rows_done(pair, monkeypatch):
    _, m = pair
    calls = []
    real = M.decode_logits
    monkeypatch.setattr(M, "decode_logits", lambda *a: calls.append(1) or real(*a))
    first = M.generate(m, [[5, 6]], 1, temperature=0).tokens[0][0]
    calls.clear()
    out = M.generate(m, [[5, 6], [5, 6]], 200, temperature=0, eos_id=first)
    assert out.tokens == [[first], [first]]
    assert len(calls) < M.EOS_CHECK_EVERY + 1  # stopped within one check interval, not after 200 steps


def contains(pattern):
    """A stop predicate: the reply contains `pattern` (a token sequence), which stays true as the reply grows."""
    return lambda toks: any(toks[j:j + len(pattern)] == pattern for j in range(len(toks) - len(pattern) + 1))


def test_stop_cuts_each_row_at_the_shortest_prefix(pair, monkeypatch):
    """`stop` ends a row where the predicate first holds, checked every EOS_CHECK_EVERY steps but cut exactly; the
    other rows' sampled tokens are those of the run without it (same seed), EOS still ends rows first."""
    _, m = pair
    prompts = PROMPTS * 3
    free = M.generate(m, prompts, 40, temperature=1.0, seed=3)
    row = free.tokens[2]
    pattern = row[20:22]  # past the first check; it may occur earlier in this row or in others
    eos = free.tokens[5][30]
    calls = []
    real = M.decode_logits
    monkeypatch.setattr(M, "decode_logits", lambda *a: calls.append(1) or real(*a))
    out = M.generate(m, prompts, 40, temperature=1.0, seed=3, eos_id=eos, stop=contains(pattern))
    hit = contains(pattern)
    n_stopped = 0
    for full, lps, toks, got_lps in zip(free.tokens, free.logprobs, out.tokens, out.logprobs):
        by_eos = next((j + 1 for j, tok in enumerate(full) if tok == eos), len(full))
        by_stop = next((j for j in range(1, len(full) + 1) if hit(full[:j])), None)
        end = min(by_eos, by_stop or by_eos)
        n_stopped += by_stop is not None and by_stop < by_eos
        assert toks == full[:end] and got_lps == lps[:end]
    assert n_stopped >= 1 and len(out.tokens[2]) <= 22
    # a predicate that holds at once ends every row at its first token, after one check interval
    calls.clear()
    out = M.generate(m, prompts, 200, temperature=1.0, seed=3, stop=lambda toks: len(toks) > 0)
    assert [len(t) for t in out.tokens] == [1] * len(prompts)
    assert len(calls) < M.EOS_CHECK_EVERY
    with pytest.raises(TypeError, match="stop must be a function of a row's new tokens"):
        M.generate(m, prompts, 4, stop="</answer>")


def test_stop_after_the_last_check(pair):
    """A predicate that first holds after the last check interval (19 tokens: one check at 16) still cuts there."""
    _, m = pair
    free = M.generate(m, PROMPTS, 19, temperature=1.0, seed=5)
    r, j = next((r, j) for r, row in enumerate(free.tokens) for j in (16, 17) if row[j] not in row[:j])
    out = M.generate(m, PROMPTS, 19, temperature=1.0, seed=5, stop=contains([free.tokens[r][j]]))
    assert out.tokens[r] == free.tokens[r][:j + 1]


def test_seed_reproducible_and_no_global_rng_side_effect(pair):
    _, m = pair
    state = torch.get_rng_state()
    a = M.generate(m, PROMPTS, 10, temperature=1.0, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    b = M.generate(m, PROMPTS, 10, temperature=1.0, seed=7)
    c = M.generate(m, PROMPTS, 10, temperature=1.0, seed=8)
    assert a.tokens == b.tokens and a.logprobs == b.logprobs
    assert a.tokens != c.tokens
    M.generate(m, PROMPTS, 10, temperature=0)  # greedy without a seed draws nothing
    assert torch.equal(state, torch.get_rng_state())


def test_sampling_follows_the_distribution():
    """Empirical frequencies of `sample` over many rows match softmax(logits / T) (and the truncated versions)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 200_000
    g = torch.Generator().manual_seed(0)
    for T, k, p in [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8)]:
        tok, lp = M.sample(logits.expand(n, -1), T, k, p, g)
        probs = torch.softmax(logits / T, -1)
        target = M.filter_probs(probs[None], k, p)[0]
        target = target / target.sum()
        freq = torch.bincount(tok, minlength=6).float() / n
        assert (freq - target).abs().max() < 0.006, (T, k, p, freq, target)
        assert torch.allclose(lp, torch.log(probs[tok]), atol=1e-5)


def test_inverse_cdf_gives_every_token_its_interval(monkeypatch):
    """At Qwen's vocabulary size, every token, however unlikely, can be drawn: a uniform draw in the middle of token
    j's interval (from the sampler's own weights, summed exactly) returns j. The draw keeps the precision the sampler
    asks torch.rand for: on an fp32 grid (or with an fp32 CDF), tens of thousands of tail tokens get no slice."""
    V, B = 151_936, 64
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(V, generator=g) * 3).expand(B, V).contiguous()
    w = (logits[0] - logits[0].max()).exp().double()  # the sampler's own weights, summed exactly below
    targets = w.argsort()[torch.randint(0, V // 3, (B,), generator=g)]  # among the least likely third
    upper = w.cumsum(-1)
    mid = (upper[targets] - w[targets] / 2) / upper[-1]
    monkeypatch.setattr(torch, "rand", lambda *a, dtype=torch.float32, **k: mid[:, None].to(dtype))
    token, _ = M.sample(logits, 1.0, 0, 1.0, None)
    assert torch.equal(token, targets)


def test_filter_probs_by_hand():
    p = torch.tensor([[0.1, 0.4, 0.2, 0.3]])

    def kept(**kw):
        out = M.filter_probs(p, **kw)
        assert torch.equal(out[out > 0], p[out > 0])  # kept entries are untouched
        return (out > 0).int().tolist()[0]

    assert kept(top_k=2) == [0, 1, 0, 1]
    # sorted 0.4, 0.3, 0.2, 0.1: mass before each 0, .4, .7, .9; top_p .7 keeps the first two
    assert kept(top_p=0.7) == [0, 1, 0, 1]
    assert kept(top_p=0.71) == [0, 1, 1, 1]
    assert kept(top_p=0.01) == [0, 1, 0, 0]  # the top token always stays
    assert kept(top_k=3, top_p=0.5) == [0, 1, 0, 1]
    assert kept(top_k=1) == [0, 1, 0, 0]
    assert kept() == [1, 1, 1, 1]


# -----------------------------------------------------------------------------
# Bad input


def test_bad_input_errors(tmp_path, pair):
    _, m = pair
    with pytest.raises(FileNotFoundError, match="config.json"):
        M.Transformer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        M.generate(m, [[1], []], 4)
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        M.generate(m, [[1] * 250], 10)
    with pytest.raises(ValueError, match="no prompts"):
        M.generate(m, [], 4)
    with pytest.raises(ValueError, match=f"prompt 1: token id {VOCAB} is outside the vocabulary"):
        M.generate(m, [[1], [2, VOCAB]], 4)
    with pytest.raises(ValueError, match="prompt 0: token id -1 is outside"):
        M.generate(m, [[-1, 2]], 4)
    with pytest.raises(ValueError, match="prompt 0: token ids must be integers"):
        M.generate(m, [[1.9, 2.9]], 4)
    for bad in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ValueError, match="bad sampling settings"):
            M.generate(m, [[1, 2]], 4, temperature=bad)
    with pytest.raises(ValueError, match="dtype must be torch.float32, torch.bfloat16"):
        M.Transformer.from_pretrained(tmp_path, dtype=torch.int8)
    with pytest.raises(ValueError, match="got 'bf16'"):
        M.Transformer.from_pretrained(tmp_path, dtype="bf16")
    with pytest.raises(ValueError, match="eos_id must be a token id or a list of them"):
        M.generate(m, [[1, 2]], 4, eos_id=2.0)
    import numpy as np
    ref = M.generate(m, [[1, 2]], 4, temperature=0, eos_id=5).tokens
    for eos in (np.int64(5), torch.tensor(5), (5,), [np.int32(5)]):
        assert M.generate(m, [[1, 2]], 4, temperature=0, eos_id=eos).tokens == ref
    free = M.generate(m, [[1, 2]], 4, temperature=0).tokens
    assert M.generate(m, [[1, 2]], 4, temperature=0, eos_id=[]).tokens == free  # an empty list: no EOS id
    # token ids stored as uint32 (Qwen's vocabulary does not fit uint16), seeds as numpy or torch integers
    for dtype in (np.uint32, np.uint64, np.int16):
        assert M.generate(m, [np.array([1, 2], dtype=dtype)], 4, temperature=0).tokens == free
    sampled = M.generate(m, [[1, 2]], 4, seed=3).tokens
    for seed in (np.int64(3), torch.tensor(3)):
        assert M.generate(m, [[1, 2]], 4, seed=seed).tokens == sampled
    for seed, pad_id in (("x", 0), (True, 0), (None, 1.5), (None, None)):
        with pytest.raises(ValueError, match="seed and pad_id must be integers"):
            M.generate(m, [[1, 2]], 4, seed=seed, pad_id=pad_id)
    for eos in (VOCAB + 5, -1, [3, VOCAB]):  # fed back as the input of finished rows: must be a token
        with pytest.raises(ValueError, match=f"is outside the vocabulary \\(0..{VOCAB - 1}\\)"):
            M.generate(m, [[1, 2]], 4, eos_id=eos)
    with pytest.raises(ValueError, match="bad sampling settings"):
        M.generate(m, [[1, 2]], 4, top_k=True)
    with pytest.raises(ValueError, match=f"pad_id -1 is outside the vocabulary \\(0..{VOCAB - 1}\\)"):
        M.generate(m, [[1, 2], [3]], 4, pad_id=-1)
    with pytest.raises(ValueError, match="eos_id must be a token id or a list of them"):
        M.generate(m, [[1, 2]], 4, eos_id={3, 4})
    with pytest.raises(ValueError, match="dtype must be torch.float32"):
        M.Transformer.from_pretrained(tmp_path, dtype=torch.float8_e4m3fn)


def test_quantized_checkpoint_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    hf_model(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["model.layers.0.mlp.up_proj.weight"] = sd["model.layers.0.mlp.up_proj.weight"].to(torch.int8)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="tensor model.layers.0.mlp.up_proj.weight has dtype I8"):
        M.Transformer.from_pretrained(tmp_path)
    hf_model(tmp_path)
    assert M.Transformer.from_pretrained(tmp_path, dtype="bfloat16").model.norm.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("patch,message", [
    ({"model_type": "llama"}, "model_type 'llama' is not supported"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ({"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 1, "layer_types": None},
     "use_sliding_window"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
    ({"rope_parameters": {"rope_theta": 1e4, "rope_type": "linear", "factor": 2.0}}, "rope_type 'linear'"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": "yarn"}, "rope_scaling: expected an object or null"),
    ({"rope_theta": "1e6", "rope_parameters": None}, "rope_theta: expected a positive number"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": None}}, "rope_theta: expected a positive number"),
    ({"architectures": ["Qwen2ForSequenceClassification"]}, "architectures"),
    ({"max_position_embeddings": None}, "max_position_embeddings: expected a positive integer, got None"),
    ({"max_position_embeddings": 2048.5}, "max_position_embeddings: expected a positive integer, got 2048.5"),
    ({"num_hidden_layers": True}, "num_hidden_layers: expected a positive integer, got True"),
    ({"num_key_value_heads": 2.0}, "num_key_value_heads: expected a positive integer, got 2.0"),
    ({"num_key_value_heads": 0}, "num_key_value_heads: expected a positive integer, got 0"),
    ({"rms_norm_eps": "1e-6"}, "rms_norm_eps: expected a positive number, got '1e-6'"),
    ({"layer_types": ["full_attention"]}, r"layer_types: expected a list of one type per layer \(2\)"),
])
def test_unsupported_config(tmp_path, patch, message):
    hf_model(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(patch)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message):
        M.Transformer.from_pretrained(tmp_path)


def test_missing_unexpected_misshaped_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    hf_model(tmp_path)
    f = tmp_path / "model.safetensors"
    sd = load_file(f)
    del sd["model.layers.1.mlp.up_proj.weight"]
    sd["model.layers.0.self_attn.k_proj.bias"] = torch.zeros(7)
    sd["model.extra.weight"] = torch.zeros(2)
    save_file(sd, f)
    with pytest.raises(ValueError) as e:
        M.Transformer.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing 2: model.layers.0.self_attn.k_proj.bias, model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected 1: model.extra.weight" in msg
    assert "model.layers.0.self_attn.k_proj.bias: (7,)" in msg and "expected (32,)" in msg


@pytest.mark.parametrize("shard,file,text,message", [
    (True, "model.safetensors.index.json", '{"metadata": {}}', r"index.json: weight_map: expected an object"),
    (True, "model.safetensors.index.json", '{"weight_map": ["model.safetensors"]}', r"index.json: weight_map"),
    (True, "model.safetensors.index.json", "{oops", r"index.json: not valid JSON"),
    (False, "config.json", "[]", r"config.json: expected a JSON object at the top level, got list"),
    (False, "generation_config.json", "[151643]", r"generation_config.json: expected a JSON object at the top level"),
])
def test_malformed_json_files(tmp_path, shard, file, text, message):
    hf_model(tmp_path, shard=shard)
    (tmp_path / file).write_text(text)
    with pytest.raises(ValueError, match=message):
        M.Transformer.from_pretrained(tmp_path)


def test_tensor_bytes_must_match_its_shape(tmp_path):
    hf_model(tmp_path)
    f = tmp_path / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["model.norm.weight"]["data_offsets"][1] -= 4  # one float short
    hb = json.dumps(header).encode()
    f.write_bytes(len(hb).to_bytes(8, "little") + hb + raw[8 + n:])
    with pytest.raises(ValueError, match=r"model.safetensors: tensor model.norm.weight spans .* \(252 bytes\), "
                                         r"but its shape \[64\] of F32 takes 256 bytes"):
        M.Transformer.from_pretrained(tmp_path)


def rewrite_header(f, change):
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    hb = json.dumps(change(json.loads(raw[8:8 + n]))).encode()
    f.write_bytes(len(hb).to_bytes(8, "little") + hb + raw[8 + n:])


@pytest.mark.parametrize("change,message", [
    (lambda h: list(h), r"its header is a JSON list, not an object"),
    (lambda h: {**h, "model.norm.weight": {k: v for k, v in h["model.norm.weight"].items() if k != "dtype"}},
     r"tensor model.norm.weight: expected dtype, shape and data_offsets"),
    (lambda h: {**h, "model.norm.weight": "F32"}, r"tensor model.norm.weight: expected dtype, shape and data_offsets"),
    (lambda h: {**h, "model.norm.weight": {**h["model.norm.weight"], "data_offsets": [8, 4]}},
     r"tensor model.norm.weight: expected dtype, shape and data_offsets"),
])
def test_malformed_safetensors_header(tmp_path, change, message):
    hf_model(tmp_path)
    rewrite_header(tmp_path / "model.safetensors", change)
    with pytest.raises(ValueError, match=r"model.safetensors: not a safetensors file \(" + message):
        M.Transformer.from_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes((10**12).to_bytes(8, "little") + f.read_bytes()[8:])
    with pytest.raises(ValueError, match=r"header would be 1000000000000 bytes, past the end of the file"):
        M.Transformer.from_pretrained(tmp_path)


def test_a_tensor_stored_twice_and_a_tied_output_layer_that_differs(tmp_path):
    from safetensors.torch import load_file, save_file

    hf_model(tmp_path, shard=True)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    first, second = sorted(set(index["weight_map"].values()))[:2]
    a, b = load_file(tmp_path / first), load_file(tmp_path / second)
    name = next(iter(a))
    save_file({**b, name: a[name]}, tmp_path / second)
    with pytest.raises(ValueError, match=f"tensor {name} is stored twice, in {first} and in {second}"):
        M.Transformer.from_pretrained(tmp_path)

    hf = hf_model(tmp_path := tmp_path / "tied", tied=True)
    f = tmp_path / "model.safetensors"
    sd = load_file(f)
    save_file({**sd, "lm_head.weight": sd["model.embed_tokens.weight"].clone()}, f)  # the same matrix: fine
    x = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        assert (M.Transformer.from_pretrained(tmp_path)(x) - hf(x).logits).abs().max() <= 1e-4
    save_file({**sd, "lm_head.weight": sd["model.embed_tokens.weight"] + 1}, f)
    with pytest.raises(ValueError, match="lm_head.weight differs from model.embed_tokens.weight"):
        M.Transformer.from_pretrained(tmp_path)


def test_missing_shard_and_weights(tmp_path):
    hf_model(tmp_path, shard=True)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / victim).unlink()
    with pytest.raises(FileNotFoundError, match=victim):
        M.Transformer.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        M.Transformer.from_pretrained(tmp_path)


def test_load_tokenizer(tmp_path):
    from pathlib import Path

    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "qwen2-tokenizer"
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        M.load_tokenizer(tmp_path)
    if not shared.exists():
        pytest.skip("../shared is absent")
    tok = M.load_tokenizer(shared)
    assert tok.encode("<|im_start|>hello<|im_end|>").ids == [151644, 14990, 151645]
    assert tok.token_to_id("<|endoftext|>") == 151643


def test_compiled_path_traces_one_graph_and_matches_eager(pair, monkeypatch):
    """The compiled sampler path, on CPU: the decode step traces with fullgraph=True (a graph break fails here, before
    GPU time is spent on it), the cache is rounded to CACHE_ROUND, and batches of other prompt lengths reuse the one
    traced step (no recompile, so one CUDA graph serves them), all giving eager's tokens and logprobs."""
    _, m = pair
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    step = torch.compile(M.decode_logits, backend=backend, fullgraph=True, dynamic=False)
    monkeypatch.setattr(M, "compiled_decode", lambda device_type: step)
    for prompts in (PROMPTS, [p[::-1] + [3, 3] for p in PROMPTS], [[7] * 9, [8], [9, 9], [10] * 4]):
        a = M.generate(m, prompts, 20, temperature=0, compile=False)
        b = M.generate(m, prompts, 20, temperature=0, compile=True)
        assert m.cache_shape()[1] == min(M.CACHE_ROUND, m.args.max_seq_len)
        assert a.tokens == b.tokens
        assert max(abs(x - y) for ra, rb in zip(a.logprobs, b.logprobs) for x, y in zip(ra, rb)) < 1e-4
    assert len(graphs) == 1


def test_compiled_step_survives_many_batch_shapes(monkeypatch):
    """M.compiled_decode's own settings (fullgraph, static shapes), traced on CPU: every new batch size or cache
    length is one more compile, and a run meets more than torch's default limit of 8. At that limit fullgraph=True
    raises (FailOnRecompileLimitHit), so a long run would die at its ninth shape; compiled_decode raises the limit."""
    torch.manual_seed(0)
    m = M.Transformer(M.ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, intermediate_size=64, vocab_size=100,
                                  max_seq_len=512, eos_id=0)).eval()
    real_compile, traced = torch.compile, []

    def counting_compile(fn, mode=None, **kw):  # CUDA graphs aside, the same torch.compile call
        def backend(gm, example_inputs):
            traced.append(gm)
            return gm.forward
        return real_compile(fn, backend=backend, **kw)

    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "cache_size_limit", 8)  # torch's default, restored afterwards
    monkeypatch.setattr(torch, "compile", counting_compile)
    monkeypatch.setattr(M, "_compiled", {})
    step = M.compiled_decode("cuda")
    monkeypatch.setattr(M, "compiled_decode", lambda device_type: step)
    shapes = set()
    for n_rows in (1, 2, 3):
        for length in (3, 200, 330):  # cache lengths of 128, 256 and 384 slots (rounded to CACHE_ROUND)
            prompts = [[(7 * i + j) % 90 + 1 for j in range(length - i)] for i in range(n_rows)]
            a = M.generate(m, prompts, 4, temperature=0, compile=False)
            b = M.generate(m, prompts, 4, temperature=0, compile=True)
            assert a.tokens == b.tokens
            shapes.add(m.cache_shape()[:2])
    torch._dynamo.reset()
    assert len(shapes) == 9 and len(traced) == 9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_cuda_sampler_matches_eager(pair):
    _, m = pair
    m = m.to("cuda")
    a = M.generate(m, PROMPTS, 24, temperature=0, compile=False)
    b = M.generate(m, PROMPTS, 24, temperature=0, compile=True)
    assert a.tokens == b.tokens
    assert max(abs(x - y) for ra, rb in zip(a.logprobs, b.logprobs) for x, y in zip(ra, rb)) < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_attention_never_needs_the_math_kernel(pair):
    """Masked GQA attention (ragged training batches, prefill, decode) runs on fused kernels: with SDPA's math
    fallback disabled, nothing raises."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = copy.deepcopy(pair[1]).to("cuda", torch.bfloat16)
    x = torch.randint(0, VOCAB, (2, 24), device="cuda")
    pad = torch.ones_like(x, dtype=torch.bool)
    pad[0, :5] = False
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        m(x, pad).float().sum().backward()
        M.generate(m, PROMPTS, 8, temperature=0, compile=False)  # ragged: masked prefill
        M.generate(m, [PROMPTS[0]] * 2, 8, temperature=0, compile=False)  # even: causal prefill, no mask
        M.generate(m, [[30], [7]], 8, temperature=0, compile=False)  # one-token prompts


LOAD_PEAK = """
import resource, sys, torch
import model as M
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m = M.Transformer.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


def test_bf16_load_holds_one_copy(tmp_path):
    """Loading fp32 weights as bf16 peaks near the bf16 weights plus one fp32 tensor, not at file + weights."""
    import subprocess
    import sys
    from pathlib import Path

    args = M.ModelArgs(dim=1024, n_layers=6, n_heads=16, n_kv_heads=4, intermediate_size=4096, vocab_size=8192,
                       tie_embeddings=False)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in M.Transformer(args).state_dict().items()}
    from safetensors.torch import save_file
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(args.to_hf_config()))
    bf16_bytes = sum(math.prod(s) for s in shapes.values()) * 2
    largest_fp32 = max(math.prod(s) for s in shapes.values()) * 4
    p = subprocess.run([sys.executable, "-c", LOAD_PEAK, str(tmp_path)], capture_output=True, text=True,
                       cwd=Path(M.__file__).parent, timeout=300)
    assert p.returncode == 0, p.stderr
    growth = int(p.stdout.split()[-1])
    assert growth < bf16_bytes + 2 * largest_fp32 + 64 * 2**20, (growth / 2**20, bf16_bytes / 2**20)

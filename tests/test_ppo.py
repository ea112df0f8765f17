"""
Tests for ppo.py. Every expected value comes from an independent reference: plain Python loops
over lists of floats, or numbers worked out by hand in the comments. Run:
    .venv/bin/python -m pytest -q tests/test_ppo.py
"""

import math

import pytest
import torch

import ppo

GAMMA_LAMS = [(1.0, 1.0), (0.99, 0.95), (1.0, 0.0), (0.5, 0.5)]


def ragged_batch(lengths, T, seed):
    """Random rewards and values with GARBAGE at padding (which must be ignored), and the mask."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    mask = torch.zeros(B, T, dtype=torch.float64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1.0
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    return rewards, values, mask


def gae_reference(rewards, values, n, gamma, lam):
    """GAE for one row of n real tokens as the explicit sum A_t = sum_l (gamma*lam)^l delta_{t+l}."""
    deltas = []
    for k in range(n):
        v_next = values[k + 1] if k + 1 < n else 0.0
        deltas.append(rewards[k] + gamma * v_next - values[k])
    return [sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t)) for t in range(n)]


# -----------------------------------------------------------------------------
# masked reductions


def test_masked_mean_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert ppo.masked_mean(x, mask).item() == pytest.approx(10 / 4)
    assert ppo.masked_mean(x, mask, dim=1).tolist() == pytest.approx([2.0, 4.0])
    # an all-padding row gives 0, not nan
    assert ppo.masked_mean(x, torch.zeros(2, 3), dim=1).tolist() == [0.0, 0.0]


def test_masked_whiten_hand_numbers():
    x = torch.tensor([[1.0, 2.0, 3.0, 50.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    # real entries 1, 2, 3: mean 2, population var 2/3
    s = math.sqrt(2 / 3 + 1e-8)
    assert ppo.masked_whiten(x, mask)[0].tolist() == pytest.approx([-1 / s, 0.0, 1 / s, 0.0])
    assert ppo.masked_whiten(x, mask, shift_mean=False)[0].tolist() == pytest.approx([1 / s, 2 / s, 3 / s, 0.0])


def test_aggregate_token_vs_seq_mean():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # token-mean: (1+2+3+4)/4 = 2.5; seq-mean: (mean(1,2,3) + mean(4)) / 2 = (2+4)/2 = 3
    assert ppo.aggregate(loss, mask, "token-mean").item() == pytest.approx(2.5)
    assert ppo.aggregate(loss, mask, "seq-mean").item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="token-mean"):
        ppo.aggregate(loss, mask, "sum")


# -----------------------------------------------------------------------------
# GAE


@pytest.mark.parametrize("gamma,lam", GAMMA_LAMS)
def test_gae_matches_loop_reference(gamma, lam):
    lengths = [7, 1, 4, 3, 7, 5]
    rewards, values, mask = ragged_batch(lengths, T=7, seed=0)
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    for b, n in enumerate(lengths):
        want = gae_reference(rewards[b].tolist(), values[b].tolist(), n, gamma, lam)
        assert adv[b, :n].tolist() == pytest.approx(want, abs=1e-12)
        assert adv[b, n:].tolist() == [0.0] * (7 - n)
        assert ret[b, n:].tolist() == [0.0] * (7 - n)
        assert ret[b, :n].tolist() == pytest.approx([a + v for a, v in zip(want, values[b, :n].tolist())], abs=1e-12)


def test_gae_gamma_lam_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 0.5, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = ppo.gae(rewards, values, mask, 1.0, 1.0)
    # returns are the undiscounted rewards-to-go 6, 5, 3; the padded value 7 is never bootstrapped
    assert ret[0].tolist() == pytest.approx([6.0, 5.0, 3.0, 0.0])
    assert adv[0].tolist() == pytest.approx([5.5, 4.5, 2.5, 0.0])


def test_padding_may_hold_anything():
    """Whatever padding holds (NaN, inf: e.g. log-probs of pad tokens), gae and token_rewards read only real tokens."""
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = ppo.gae(torch.tensor([[1.0, 2.0, float("nan")]]), torch.tensor([[0.5, 0.5, float("inf")]]), mask, 1.0, 1.0)
    assert adv.tolist() == [[2.5, 1.5, 0.0]] and ret.tolist() == [[3.0, 2.0, 0.0]]
    r = ppo.token_rewards(torch.tensor([1.0]), torch.tensor([[-1.0, -1.0, float("nan")]]),
                          torch.tensor([[-1.0, -1.0, float("-inf")]]), mask, kl_coef=0.1)
    assert r.tolist() == [[0.0, 1.0, 0.0]]


# -----------------------------------------------------------------------------
# KL and token rewards


def test_kl_kinds_match_formulas():
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(50, generator=g, dtype=torch.float64) * 5
    ref = -torch.rand(50, generator=g, dtype=torch.float64) * 5
    k1, k2, k3 = (ppo.kl(logp, ref, k).tolist() for k in ("k1", "k2", "k3"))
    for i, (a, r) in enumerate(zip(logp.tolist(), ref.tolist())):
        assert k1[i] == pytest.approx(a - r)
        assert k2[i] == pytest.approx(0.5 * (a - r) ** 2)
        assert k3[i] == pytest.approx(math.exp(r - a) - (r - a) - 1)
    assert min(k2) >= 0 and min(k3) >= 0
    assert min(k1) < 0  # k1 is not a per-token bound; the data above does have negative entries
    for kind in ("k1", "k2", "k3"):
        assert ppo.kl(logp, logp, kind).abs().max().item() == 0.0
    with pytest.raises(ValueError, match="k1.*k2.*k3"):
        ppo.kl(logp, ref, "k4")


def test_token_rewards_score_on_last_real_token():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    logp = torch.tensor([[-1.0, -2.0, -3.0, -9.0], [-1.0, -9.0, -9.0, -9.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-2.0, -2.0, -1.0, -5.0], [-0.5, -5.0, -5.0, -5.0], [-1.0, -1.0, -1.0, -1.0]])
    scores = torch.tensor([1.0, -1.0, 0.0])
    r = ppo.token_rewards(scores, logp, ref, mask, kl_coef=0.1, kl_kind="k1")
    # k1 = logp - ref: row 0 -> 1, 0, -2; row 1 -> -0.5; row 2 -> 0
    want = [
        [-0.1, 0.0, 0.2 + 1.0, 0.0],
        [0.05 - 1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ]
    assert r.tolist() == [pytest.approx(row) for row in want]
    with pytest.raises(ValueError, match="row 1 has no real token"):
        ppo.token_rewards(scores, logp, ref, torch.tensor([[1.0] * 4, [0.0] * 4, [1.0] * 4]), 0.1)
    with pytest.raises(ValueError, match="scores must have shape"):
        ppo.token_rewards(scores[:2], logp, ref, mask, 0.1)


# -----------------------------------------------------------------------------
# clipped losses and their gradients


def test_policy_loss_gradients_around_clip_boundaries():
    eps = 0.2
    # (advantage, ratio) per token; the right column is d(loss)/d(logp) times n, worked out by hand:
    # the clipped branch is constant in logp, so where min() picks it the gradient is 0, else -A*r.
    cases = [
        (1.0, 1.5, 0.0),  # A > 0, r > 1+eps: clipped
        (1.0, 1.2 * 1.001, 0.0),  # just past the upper boundary
        (1.0, 1.2 * 0.999, -1.2 * 0.999),  # just inside it
        (1.0, 0.5, -0.5),  # A > 0, r < 1-eps: min picks r*A, gradient flows
        (-2.0, 0.5, 0.0),  # A < 0, r < 1-eps: clipped
        (-2.0, 0.8 * 0.999, 0.0),  # just past the lower boundary
        (-2.0, 0.8 * 1.001, 2.0 * 0.8 * 1.001),  # just inside it
        (-2.0, 1.5, 3.0),  # A < 0, r > 1+eps: min picks r*A, gradient flows
        (0.5, 1.1, -0.55),  # inside the trust region
    ]
    n = len(cases)
    adv = torch.tensor([[a for a, _, _ in cases] + [5.0]], dtype=torch.float64)
    old_logp = torch.full((1, n + 1), -1.0, dtype=torch.float64)
    logp = (old_logp + torch.tensor([[math.log(r) for _, r, _ in cases] + [0.7]], dtype=torch.float64)).requires_grad_()
    mask = torch.tensor([[1.0] * n + [0.0]], dtype=torch.float64)  # last token is padding
    loss, stats = ppo.policy_loss(logp, old_logp, adv, mask, clip=eps)
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([g / n for _, _, g in cases] + [0.0], abs=1e-12)
    want_loss = sum(-min(r * a, min(max(r, 1 - eps), 1 + eps) * a) for a, r, _ in cases) / n
    assert loss.item() == pytest.approx(want_loss)
    assert stats["clipfrac"].item() == pytest.approx(4 / n)
    # approx_kl is k3 of KL(old || new): r - 1 - log r, averaged over real tokens
    assert stats["approx_kl"].item() == pytest.approx(sum(r - 1 - math.log(r) for _, r, _ in cases) / n)
    assert not stats["clipfrac"].requires_grad and not stats["approx_kl"].requires_grad


def test_policy_loss_seq_mean_weights_rows_equally():
    logp = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, _ = ppo.policy_loss(logp, torch.zeros(2, 3), adv, mask, agg="seq-mean")
    loss.backward()
    # r = 1 everywhere, gradient -A * r / (len_row * B)
    assert logp.grad.tolist() == [pytest.approx([-1 / 6] * 3), pytest.approx([-1 / 2, 0.0, 0.0])]


def test_value_loss_gradients_and_clipfrac():
    c = 0.2
    # (v, old_v, R) per token; d(loss)/dv times n by hand: v - R unless the clipped term wins (then 0)
    cases = [
        (1.1, 1.0, 3.0, 1.1 - 3.0),  # |v - old| < c: both terms equal, gradient v - R
        (1.5, 1.0, 3.0, 0.0),  # moved up past the clip, toward R: clipped term (1.2-3)^2 is larger
        (1.5, 1.0, 0.0, 1.5),  # moved up past the clip, away from R: unclipped (1.5)^2 is larger
        (0.5, 1.0, 3.0, 0.5 - 3.0),  # moved down past the clip, away from R: unclipped larger
        (0.5, 1.0, -2.0, 0.0),  # moved down past the clip, toward R: clipped (0.8+2)^2 larger
    ]
    n = len(cases)
    v = torch.tensor([[x[0] for x in cases] + [9.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[x[1] for x in cases] + [0.0]], dtype=torch.float64)
    R = torch.tensor([[x[2] for x in cases] + [0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0] * n + [0.0]], dtype=torch.float64)
    loss, stats = ppo.value_loss(v, old, R, mask, clip=c)
    loss.backward()
    assert v.grad[0].tolist() == pytest.approx([x[3] / n for x in cases] + [0.0], abs=1e-12)
    want = [0.0] * n
    for i, (vi, oi, ri, _) in enumerate(cases):
        vc = oi + min(max(vi - oi, -c), c)
        want[i] = 0.5 * max((vi - ri) ** 2, (vc - ri) ** 2)
    assert loss.item() == pytest.approx(sum(want) / n)
    assert stats["vf_clipfrac"].item() == pytest.approx(2 / n)


# -----------------------------------------------------------------------------
# diagnostics


def test_entropy_matches_float64_by_hand():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 4, 11, generator=g) * 3
    H = ppo.entropy(logits)
    assert H.shape == (3, 4)
    for idx in [(0, 0), (1, 2), (2, 3)]:
        z = logits[idx].double().tolist()
        m = max(z)
        Z = sum(math.exp(x - m) for x in z)
        p = [math.exp(x - m) / Z for x in z]
        want = -sum(q * math.log(q) for q in p)
        assert H[idx].item() == pytest.approx(want, rel=1e-5)


def test_entropy_finite_for_huge_logits():
    logits = torch.tensor([[1e30, 0.0, -1e30], [1e4, 1e4, -1e4], [3e38, 3e38, 3e38]])
    H = ppo.entropy(logits)
    assert torch.isfinite(H).all()
    assert H.tolist() == pytest.approx([0.0, math.log(2), math.log(3)], abs=1e-6)


def test_explained_variance():
    g = torch.Generator().manual_seed(3)
    R = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.float64)
    mask[1, 3:] = 0
    garbage = torch.where(mask.bool(), R, torch.full_like(R, 1e3))
    assert ppo.explained_variance(garbage, R, mask) == pytest.approx(1.0)
    # predicting the mean of the real returns explains nothing
    mean = sum(R[mask.bool()].tolist()) / int(mask.sum())
    assert ppo.explained_variance(torch.full_like(R, mean), R, mask) == pytest.approx(0.0, abs=1e-12)
    # by hand: R = 1, 2, 3 and V = 1, 2, 2 -> R - V = 0, 0, 1; var 2/9 over var 2/3 -> 1 - 1/3
    ev = ppo.explained_variance(torch.tensor([[1.0, 2.0, 2.0]]), torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3))
    assert ev == pytest.approx(2 / 3)


# -----------------------------------------------------------------------------
# estimators


def group_batch(scores, lengths, T):
    """Token rewards whose row sums are `scores`: small per-token terms plus the rest on the last token."""
    B = len(scores)
    mask = torch.zeros(B, T, dtype=torch.float64)
    r = torch.zeros(B, T, dtype=torch.float64)
    for b, (s, n) in enumerate(zip(scores, lengths)):
        mask[b, :n] = 1.0
        r[b, : n - 1] = 0.01
        r[b, n - 1] = s - 0.01 * (n - 1)
        r[b, n:] = 42.0  # padding garbage must not leak into the row sum
    return r, mask


def test_grpo_hand_numbers():
    # group 0: [1, 0, 0, 1] -> mean 1/2, population std 1/2 -> adv +-(1/2) / (1/2 + 1e-6)
    # group 1: [1, 1, 1, 1] -> std 0 -> adv 0
    scores = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    lengths = [3, 5, 1, 5, 2, 4, 5, 1]
    r, mask = group_batch(scores, lengths, T=5)
    values = torch.randn(8, 5, dtype=torch.float64)
    adv, ret = ppo.advantages("grpo", r, values, mask, group_size=4, gamma=1.0, lam=1.0)
    a = 0.5 / (0.5 + 1e-6)
    per_row = [a, -a, -a, a, 0.0, 0.0, 0.0, 0.0]
    for b, (x, n) in enumerate(zip(per_row, lengths)):
        assert adv[b].tolist() == pytest.approx([x] * n + [0.0] * (5 - n))
    assert torch.equal(adv, ret)
    # group of [2, 0, -1]: mean 1/3, population std sqrt(((5/3)^2 + (1/3)^2 + (4/3)^2) / 3) = sqrt(14)/3
    r, mask = group_batch([2.0, 0.0, -1.0], [1, 1, 1], T=1)
    adv, _ = ppo.grpo(r, torch.zeros_like(r), mask, 3, 1.0, 1.0)
    s = math.sqrt(14) / 3 + 1e-6
    assert adv[:, 0].tolist() == pytest.approx([(5 / 3) / s, (-1 / 3) / s, (-4 / 3) / s])


def test_rloo_hand_numbers():
    scores = [1.0, 0.0, 0.0, 1.0, -1.0, 1.0]
    lengths = [2, 3, 1, 3, 3, 2]
    r, mask = group_batch(scores, lengths, T=3)
    adv, ret = ppo.advantages("rloo", r, torch.zeros_like(r), mask, group_size=2, gamma=1.0, lam=1.0)
    # group_size 2: baseline is the other sample -> [1-0, 0-1, 0-1, 1-0, -1-1, 1+1]
    per_row = [1.0, -1.0, -1.0, 1.0, -2.0, 2.0]
    for b, (x, n) in enumerate(zip(per_row, lengths)):
        assert adv[b].tolist() == pytest.approx([x] * n + [0.0] * (3 - n))
    assert torch.equal(adv, ret)
    # group_size 4 on [1, 0, 0, 1]: 1 - 1/3, 0 - 2/3, 0 - 2/3, 1 - 1/3
    r, mask = group_batch([1.0, 0.0, 0.0, 1.0], [1, 1, 1, 1], T=1)
    adv, _ = ppo.rloo(r, torch.zeros_like(r), mask, 4, 1.0, 1.0)
    assert adv[:, 0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        ppo.rloo(r, torch.zeros_like(r), mask, 1, 1.0, 1.0)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_matches_loop_reference(gamma):
    lengths = [4, 1, 3, 2]
    rewards, values, mask = ragged_batch(lengths, T=4, seed=4)
    adv, ret = ppo.advantages("reinforce++", rewards, values, mask, group_size=2, gamma=gamma, lam=0.3)
    G = []
    for b, n in enumerate(lengths):
        row = rewards[b].tolist()
        G.append([sum(gamma ** (s - t) * row[s] for s in range(t, n)) for t in range(n)])
    flat = [x for row in G for x in row]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / len(flat) + 1e-8)
    for b, n in enumerate(lengths):
        assert adv[b].tolist() == pytest.approx([(x - mean) / std for x in G[b]] + [0.0] * (4 - n))
    assert torch.equal(adv, ret)


def test_gae_estimator_in_table_is_gae():
    rewards, values, mask = ragged_batch([3, 2], T=3, seed=5)
    adv, ret = ppo.advantages("gae", rewards, values, mask, group_size=2, gamma=0.9, lam=0.8)
    for b, n in enumerate([3, 2]):
        want = gae_reference(rewards[b].tolist(), values[b].tolist(), n, 0.9, 0.8)
        assert adv[b, :n].tolist() == pytest.approx(want)
    assert set(ppo.ESTIMATORS) == {"gae", "grpo", "rloo", "reinforce++"}


# -----------------------------------------------------------------------------
# bad input


def test_bad_input_errors():
    r, v, mask = ragged_batch([3, 2, 1, 3], T=3, seed=6)
    with pytest.raises(ValueError, match="unknown algo 'ppo'.*'gae', 'grpo', 'rloo', 'reinforce\\+\\+'"):
        ppo.advantages("ppo", r, v, mask, 2, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"gae: values has shape \(4, 2\) but mask has shape \(4, 3\)"):
        ppo.gae(r, v[:, :2], mask, 1.0, 1.0)
    with pytest.raises(ValueError, match="only 0.0 and 1.0"):
        ppo.gae(r, v, mask * 0.5, 1.0, 1.0)
    left_padded = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="right-padded.*row 1"):
        ppo.policy_loss(r, r, v, left_padded)
    with pytest.raises(ValueError, match="batch size 4 is not divisible by group_size 3"):
        ppo.advantages("grpo", r, v, mask, 3, 1.0, 1.0)
    with pytest.raises(ValueError, match="mask must be"):
        ppo.value_loss(r[0], v[0], v[0], mask[0])

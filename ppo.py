"""
The RL core of med-rlvr: PPO losses, GAE, the KL-shaped reward and the advantage estimators.
Plain functions on plain tensors; no model, no optimizer, no project imports. train.py calls
them; tests/test_ppo.py checks them against hand-written references. There is nothing to run
here: `python -m pytest -q tests/test_ppo.py`.

Every tensor is [B, T] over response tokens only. `mask` is 1.0 on real tokens and 0.0 on
padding; rows are right-padded, so each row's real tokens are a prefix and its last real token
sits at index mask.sum(1) - 1.

PPO here, as in the Med-RLVR paper. A rollout scores each reply with the verifier (-1 bad format,
0 wrong, 1 right). token_rewards turns that into a per-token reward: minus kl_coef times the KL
to a frozen reference model on every token, plus the score on the last token. A value head
predicts V_t; GAE turns rewards and values into advantages A_t (how much better token t did than
V expected) and returns A_t + V_t (the value head's regression target). Then a few epochs of
minibatch updates minimise policy_loss (the clipped surrogate, which stops the new policy from
moving far from the one that sampled the data) and value_loss (clipped the same way).

How to add an advantage estimator:
  1. Write `def my_estimator(token_rewards, values, mask, group_size, gamma, lam, whiten=masked_whiten)`
     returning (advantages, returns), both [B, T] and exactly 0 where mask == 0. Take every argument
     even if unused; the signature is shared so train.py can swap estimators with one flag. Normalise
     over the batch with `whiten`, not masked_whiten: under torchrun train.py passes one whose mean
     and variance span every rank's tokens.
  2. Call _check_batch first (shapes, binary right-padded mask), and _sequence_scores with
     _check_groups if you work per prompt: rows g*n .. g*n+n-1 are the n samples of prompt g.
  3. If it reads `values` (a learned critic), also add its name to NEEDS_VALUES: train.py then gives
     the policy a value head, fits it to `returns` with the clipped value loss and logs
     explained_variance. The others get values of zeros; return returns = advantages (unread).
  4. Give it a docstring with its formula, and add it to ESTIMATORS below:
         ESTIMATORS = {..., "my-estimator": my_estimator}
  5. Add a test in tests/test_ppo.py that compares it to numbers you worked out by hand.
  `advantages(algo, ...)` and train.py's --algo flag pick it up from the table; nothing else changes.
"""

import math

import torch
from torch import Tensor

# -----------------------------------------------------------------------------
# input checks (raised early, named after the caller, so a bad batch fails loudly)


def _check_batch(where: str, mask: Tensor, **tensors: Tensor) -> None:
    """Raise ValueError unless mask is a binary, right-padded [B, T] and every tensor matches it."""
    if mask.dim() != 2:
        raise ValueError(f"{where}: mask must be [B, T], got shape {tuple(mask.shape)}")
    for name, x in tensors.items():
        if x.shape != mask.shape:
            raise ValueError(f"{where}: {name} has shape {tuple(x.shape)} but mask has shape {tuple(mask.shape)}")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{where}: mask must contain only 0.0 and 1.0")
    gaps = mask[:, 1:] > mask[:, :-1]
    if gaps.any():
        row = int(gaps.any(dim=1).nonzero()[0])
        raise ValueError(f"{where}: mask must be right-padded (real tokens a prefix), row {row} has a real token after padding")


def _check_groups(where: str, batch_size: int, group_size: int, min_size: int = 1) -> None:
    """Raise ValueError unless the batch splits into whole groups of at least min_size samples."""
    if group_size < min_size:
        raise ValueError(f"{where}: group_size must be >= {min_size}, got {group_size}")
    if batch_size % group_size != 0:
        raise ValueError(f"{where}: batch size {batch_size} is not divisible by group_size {group_size}")


# -----------------------------------------------------------------------------
# masked reductions


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(x * mask) / sum(mask), over everything or along dim. An all-padding slice gives 0."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """
    (x - mean) / sqrt(var + eps) over the masked entries, 0 where mask == 0.
    var is the population variance (divide by the count). shift_mean=False only rescales:
    x / sqrt(var + eps), which keeps each entry's sign.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    centred = x - mean if shift_mean else x
    return centred * torch.rsqrt(var + eps) * mask


def aggregate(loss_per_token: Tensor, mask: Tensor, agg: str) -> Tensor:
    """
    Reduce a per-token loss to a scalar.
      "token-mean": sum(loss * mask) / sum(mask) over the whole batch (every token weighs the same).
      "seq-mean":   mean over rows of each row's token mean (every reply weighs the same).
    """
    if agg == "token-mean":
        return masked_mean(loss_per_token, mask)
    if agg == "seq-mean":
        return masked_mean(loss_per_token, mask, dim=1).mean()
    raise ValueError(f"aggregate: unknown agg {agg!r}, expected one of 'token-mean', 'seq-mean'")


# -----------------------------------------------------------------------------
# KL and the per-token reward


def kl(logp: Tensor, ref_logp: Tensor, kind: str = "k1") -> Tensor:
    """
    Elementwise estimate of KL(policy || ref) from log-probs of tokens sampled by the policy.
    With d = ref_logp - logp:
      "k1": -d                      (unbiased, can be negative)
      "k2": 0.5 * d^2               (biased, >= 0)
      "k3": exp(d) - d - 1          (unbiased, >= 0)
    """
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    if kind == "k3":
        d = ref_logp - logp
        return torch.exp(d) - d - 1
    raise ValueError(f"kl: unknown kind {kind!r}, expected one of 'k1', 'k2', 'k3'")


def token_rewards(scores: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, kl_coef: float, kl_kind: str = "k1") -> Tensor:
    """
    r_t = -kl_coef * kl(logp_t, ref_logp_t) on every real token, plus scores[b] on row b's last
    real token; 0 on padding. scores is the verifier's outcome reward, shape [B].
    """
    _check_batch("token_rewards", mask, logp=logp, ref_logp=ref_logp)
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"token_rewards: scores must have shape ({mask.shape[0]},), got {tuple(scores.shape)}")
    lengths = mask.sum(dim=1).long()
    if (lengths == 0).any():
        row = int((lengths == 0).nonzero()[0])
        raise ValueError(f"token_rewards: row {row} has no real token to carry its score")
    rewards = torch.where(mask.bool(), -kl_coef * kl(logp, ref_logp, kl_kind), 0.0)  # (NaN * 0 is NaN)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, lengths - 1] += scores.to(rewards.dtype)
    return rewards


# -----------------------------------------------------------------------------
# advantage estimators: fn(token_rewards, values, mask, group_size, gamma, lam) -> (adv, returns)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """
    Generalised advantage estimation, per row, backwards from the last real token:
      delta_t = r_t + gamma * V_{t+1} - V_t,   V after the last real token = 0 (no bootstrap)
      A_t     = delta_t + gamma * lam * A_{t+1}
      returns = A + V
    Both are exactly 0 where mask == 0. No whitening here; the caller may masked_whiten A.
    """
    _check_batch("gae", mask, rewards=rewards, values=values)
    # Zeroing padding makes "V after the last real token" 0 and keeps A at padding at 0, so the
    # same recursion serves every row whatever its length. (where, not * mask: NaN * 0 is NaN.)
    rewards = torch.where(mask.bool(), rewards, 0.0)
    values = torch.where(mask.bool(), values, 0.0)
    B, T = mask.shape
    adv = torch.zeros_like(values)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = delta + gamma * lam * next_adv
        next_value = values[:, t]
        adv[:, t] = next_adv
    return adv, adv + values


def _gae_estimator(token_rewards, values, mask, group_size, gamma, lam, whiten=masked_whiten):
    """gae in the estimator signature (group_size unused)."""
    return gae(token_rewards, values, mask, gamma, lam)


def _sequence_scores(token_rewards: Tensor, mask: Tensor) -> Tensor:
    """R_i = sum of row i's token rewards over its real tokens, shape [B]."""
    return (token_rewards * mask).sum(dim=1)


def grpo(token_rewards, values, mask, group_size, gamma, lam, whiten=masked_whiten):
    """
    GRPO: R_i = sum_t r_{i,t}; A_i = (R_i - mean_group(R)) / (std_group(R) + 1e-6), on each of
    row i's real tokens. std is the POPULATION std (divide by n), so a group of identical scores,
    or a group of one, gets advantage 0. returns = A (no critic; values, gamma, lam unused).
    """
    _check_batch("grpo", mask, token_rewards=token_rewards, values=values)
    _check_groups("grpo", mask.shape[0], group_size)
    R = _sequence_scores(token_rewards, mask).view(-1, group_size)
    mean = R.mean(dim=1, keepdim=True)
    std = R.std(dim=1, keepdim=True, correction=0)
    adv = ((R - mean) / (std + 1e-6)).view(-1, 1) * mask
    return adv, adv


def rloo(token_rewards, values, mask, group_size, gamma, lam, whiten=masked_whiten):
    """
    REINFORCE leave-one-out: A_i = R_i - mean_{j != i in group} R_j
                                 = R_i - (sum_group(R) - R_i) / (n - 1),
    on each of row i's real tokens; needs group_size >= 2. returns = A (no critic).
    """
    _check_batch("rloo", mask, token_rewards=token_rewards, values=values)
    _check_groups("rloo", mask.shape[0], group_size, min_size=2)
    R = _sequence_scores(token_rewards, mask).view(-1, group_size)
    baseline = (R.sum(dim=1, keepdim=True) - R) / (group_size - 1)
    adv = (R - baseline).view(-1, 1) * mask
    return adv, adv


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """G_t = sum_{s >= t} gamma^(s-t) r_s within each row, over its real tokens; 0 on padding."""
    rewards = token_rewards * mask
    G = torch.zeros_like(rewards)
    running = torch.zeros(mask.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(mask.shape[1])):
        running = rewards[:, t] + gamma * running
        G[:, t] = running
    return G


def reinforce_pp(token_rewards, values, mask, group_size, gamma, lam, whiten=masked_whiten):
    """
    REINFORCE++: G = discounted_returns(r, mask, gamma), then A = whiten(G) across the whole
    batch (mean and population std of all real tokens). returns = A (no critic; values,
    group_size, lam unused).
    """
    _check_batch("reinforce++", mask, token_rewards=token_rewards, values=values)
    adv = whiten(discounted_returns(token_rewards, mask, gamma), mask)
    return adv, adv


ESTIMATORS = {
    "gae": _gae_estimator,
    "grpo": grpo,
    "rloo": rloo,
    "reinforce++": reinforce_pp,
}
NEEDS_VALUES = {"gae"}  # estimators that read the value head's estimates (the others get zeros and train none)


def advantages(algo: str, token_rewards: Tensor, values: Tensor, mask: Tensor, group_size: int, gamma: float, lam: float,
               whiten=masked_whiten) -> tuple[Tensor, Tensor]:
    """Run the estimator ESTIMATORS[algo]; returns (advantages, returns), both [B, T]."""
    if algo not in ESTIMATORS:
        raise ValueError(f"advantages: unknown algo {algo!r}, expected one of {', '.join(map(repr, ESTIMATORS))}")
    return ESTIMATORS[algo](token_rewards, values, mask, group_size, gamma, lam, whiten=whiten)


# -----------------------------------------------------------------------------
# losses and diagnostics


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2, agg: str = "token-mean") -> tuple[Tensor, dict]:
    """
    PPO clipped surrogate, per token:  -min(r * A, clip(r, 1 - clip, 1 + clip) * A),
    r = exp(logp - old_logp), reduced with aggregate(agg). Stats (detached 0-d tensors, so
    logging does not force a device sync):
      "clipfrac":  fraction of real tokens where the min picks the clipped branch (no gradient)
      "approx_kl": mean over real tokens of k3 for KL(old || new): r - 1 - log r
    """
    _check_batch("policy_loss", mask, logp=logp, old_logp=old_logp, advantages=advantages)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    loss = aggregate(-torch.minimum(unclipped, clipped), mask, agg)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped < unclipped).to(logp.dtype), mask),
            "approx_kl": masked_mean(kl(old_logp, logp, "k3"), mask),
        }
    return loss, stats


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float = 0.2, agg: str = "token-mean") -> tuple[Tensor, dict]:
    """
    Clipped value loss, per token:  0.5 * max((v - R)^2, (old_v + clip(v - old_v, -c, c) - R)^2),
    reduced with aggregate(agg). Stats: "vf_clipfrac", the fraction of real tokens where the
    clipped term is the larger one (no gradient).
    """
    _check_batch("value_loss", mask, values=values, old_values=old_values, returns=returns)
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (v_clipped - returns) ** 2
    loss = aggregate(0.5 * torch.maximum(unclipped, clipped), mask, agg)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((clipped > unclipped).to(values.dtype), mask)}
    return loss, stats


def entropy(logits: Tensor) -> Tensor:
    """
    H = -sum_v p_v log p_v with p = softmax(logits) over the last dim; shape logits.shape[:-1].
    log_softmax subtracts the max first, so huge logits stay finite. Computed in logits' dtype:
    upcast bf16 logits yourself if you want fp32 accuracy.
    """
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """
    1 - Var[R - V] / Var[R] over the real tokens (population variances). 1 means the value head
    predicts the returns perfectly, 0 means no better than their mean, < 0 worse. nan if Var[R] == 0.
    """
    _check_batch("explained_variance", mask, values=values, returns=returns)
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    err = returns - values
    var_err = masked_mean((err - masked_mean(err, mask)) ** 2, mask)
    if var_r == 0:
        return math.nan
    return float(1 - var_err / var_r)

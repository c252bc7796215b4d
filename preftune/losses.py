"""Every loss in preftune, as pure functions on tensors.

Convention: ``logits[:, t]`` scores ``labels[:, t]`` (callers shift once: ``logits[:, :-1]`` against
``input_ids[:, 1:]``); ``mask`` is 1 on response tokens. Each function cites its paper and equation.
Diagnostics are returned beside the loss where a user would want them (accuracy, margins, KL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from preftune.feedback import inverse_preference_link

# ----------------------------------------------------------------------------------------------
# Log-probabilities


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[label] per position, ``[B, T]``; computed in fp32 for stability."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    # gather then subtract logsumexp: avoids materialising a second [B, T, V] tensor.
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence sum of response-token log-probs, ``[B]``. ``logits[:, t]`` scores ``labels[:, t]``."""
    return (token_logprobs(logits, labels) * mask).sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Maximum likelihood: mean negative log-likelihood over response tokens."""
    return response_nll(token_logprobs(logits, labels), mask)


def response_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`sft_loss` from the response tokens' log-probs (`rollout.label_scores`, which runs the head there only)."""
    return -masked_mean(logprobs, mask)


# ----------------------------------------------------------------------------------------------
# Preference models


def bt_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry negative log-likelihood: mean of −log σ(r_c − r_r) (Ouyang et al. 2022, Eq. 1)."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (Rafailov et al. 2023, Eq. 7) with conservative label smoothing ε (cDPO, Mitchell 2023), and its
    diagnostics.

    h = β[(log π_c − log π_ref,c) − (log π_r − log π_ref,r)];
    loss = −(1−ε)·log σ(h) − ε·log σ(−h), mean over the batch. ε = 0 is plain DPO.
    Diagnostics (detached, batch means, as TRL and OpenRLHF log them): the implicit rewards
    ``chosen_rewards`` = β(log π_c − log π_ref,c) and ``rejected_rewards``, their ``margins`` h, and ``accuracy``,
    the share of pairs with h > 0.
    """
    logits = beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    with torch.no_grad():
        stats = {"chosen_rewards": (beta * (policy_chosen_logps - ref_chosen_logps)).mean(),
                 "rejected_rewards": (beta * (policy_rejected_logps - ref_rejected_logps)).mean(),
                 "margins": logits.mean(), "accuracy": (logits > 0).float().mean()}
    return losses.mean(), stats


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    policy_kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", Eq. 8), as TRL's
    ``KTOTrainer`` computes it, and its diagnostics.

    r = log π(y|x) − log π_ref(y|x) for each row; the reference point z₀ = max(0, mean of log π − log π_ref over
    mismatched pairs (x, y′) of the batch), detached (the paper's KL(π‖π_ref) estimate);
    desirable rows lose λ_D·(1 − σ(β(r − z₀))), undesirable ones λ_U·(1 − σ(β(z₀ − r))); the loss is the mean over
    the batch. Diagnostics: ``kl`` = z₀, the implicit rewards β·r of the desirable (``chosen_rewards``) and
    undesirable (``rejected_rewards``) rows and their log-probs (``chosen_logps``, ``rejected_logps``), each a mean
    over its rows and absent when the batch has none.
    """
    desirable = desirable.bool()
    logratios = policy_logps - ref_logps
    kl = (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios))))
    stats = {"kl": kl}
    with torch.no_grad():
        for name, rows in (("chosen", desirable), ("rejected", ~desirable)):
            if rows.any():
                stats[f"{name}_rewards"] = (beta * logratios[rows]).mean()
                stats[f"{name}_logps"] = policy_logps[rows].mean()
    return losses.mean(), stats


# ----------------------------------------------------------------------------------------------
# Online RL: advantages, the clipped surrogate, value loss, KL estimators, entropy.
# Token tensors are ``[B, T]`` aligned with ``labels = input_ids[:, 1:]``; ``mask`` is 1 on response tokens.


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, the RLOO estimator): ``[P, k] -> [P, k]``.

    A_i = r_i − 1/(k−1) Σ_{j≠i} r_j: each sample is baselined by the mean of its prompt's *other* samples,
    which keeps the gradient estimate unbiased (the baseline does not depend on the sample itself).
    """
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got rewards of shape {tuple(rewards.shape)}")
    others_mean = (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)
    return rewards - others_mean


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages (Shao et al. 2024, DeepSeekMath §4.1.2, outcome supervision): ``[P, k]``.

    A_i = (r_i − mean(r)) / (std(r) + eps) per prompt (row). The paper writes std({r_1..r_G}) without saying
    which; we use the *sample* standard deviation (Bessel-corrected, divisor k−1), as TRL's GRPOTrainer and
    the DeepSeekMath-style open implementations do. A group whose rewards are all equal gets advantage 0.
    """
    if rewards.shape[-1] < 2:
        raise ValueError(f"GRPO needs at least 2 samples per prompt, got rewards of shape {tuple(rewards.shape)}")
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True, correction=1)
    return (rewards - mean) / (std + eps)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise to zero mean and unit variance over masked entries (PPO advantage whitening,
    Schulman et al. 2017 baselines; Ziegler et al. 2019 lm-human-preferences ``whiten``)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    out = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(values.dtype)


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, Eq. 16) on token tensors ``[B, T]``.

    δ_t = r_t + γ·V_{t+1} − V_t and A_t = Σ_l (γλ)^l δ_{t+l}, computed backwards; the state after the last
    response token is terminal (V = 0). Returns ``(advantages, returns)`` with returns = A + V, the value
    targets (TD(λ) returns). Both are zero off the mask. The response must be one contiguous run per row.
    """
    mask = mask.to(rewards.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        # outside the response (left prompt, right padding) nothing is carried across
        next_value = values[:, t] * mask[:, t]
        next_advantage = advantages[:, t]
    return advantages, (advantages + values) * mask


def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, clip_range: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, Eq. 7) as a loss, with ``clip_frac`` and ``approx_kl``.

    ratio = exp(log π − log π_old); loss = mean over masked tokens of max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε)).
    ``advantages`` is per token ``[B, T]`` or per sequence ``[B]`` (broadcast over the sequence's tokens).
    clip fraction: share of tokens where the clipped term is the active one (its gradient is zero).
    approx KL: the k3 estimate of KL(π_old ‖ π) on the old samples, mean of (ratio − 1) − log ratio
    (Schulman 2020, "Approximating KL divergence"), a health check that a minibatch did not move too far.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, {"clip_frac": clip_frac, "approx_kl": approx_kl}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float | None = 0.2) -> torch.Tensor:
    """Clipped value loss of PPO2 (OpenAI baselines; Ziegler et al. 2019 lm-human-preferences):

    ½ · mean over masked tokens of max((V − R)², (clip(V, V_old − ε, V_old + ε) − R)²), which keeps the
    value head from moving further than ε per rollout batch. ``clip_range`` None or 0: plain ½ (V − R)².
    """
    unclipped = (values - returns) ** 2
    if not clip_range:
        return 0.5 * masked_mean(unclipped, mask)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * masked_mean(torch.maximum(unclipped, (clipped_values - returns) ** 2), mask)


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate log π − log π_ref on samples from π (Schulman 2020, k1; unbiased, can be
    negative per token). Summed over a response it is the sequence KL penalty of Ziegler et al. 2019, Eq. 2."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate exp(ref − logp) − (ref − logp) − 1 (Schulman 2020, k3; Shao et al. 2024,
    DeepSeekMath Eq. 4): unbiased for KL(π ‖ π_ref) on samples from π, and never negative."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / T) at every position, ``[B, T]`` (a diagnostic of mode collapse)."""
    logp = (logits.float() / temperature).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


# --- IQLearn (Wulfmeier et al. 2024, "Imitating Language via Scalable Inverse RL", arXiv 2409.01369)
# The LM's logits are soft Q-values: Q(s_t, a) = logits_t[a], V(s_t) = logsumexp_a Q(s_t, a), so
# log π(a|s_t) = Q(s_t, a) − V(s_t). Inverse soft-Q-learning (Garg et al. 2021, IQ-Learn) with a χ² regulariser
# and the expert-only value term becomes MLE plus a TD penalty on the implied reward r_t = Q(s_t, a_t) − γV(s_{t+1})
# of the demonstrated transitions (Wulfmeier et al., Eq. 14; derivation in docs/methods.md).


def iq_soft_values(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                   gamma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Q(s_t, a_t), V(s_t), γ·V(s_{t+1}))``, each ``[B, T]`` in fp32, for ``logits[:, t]`` scoring ``labels[:, t]``.

    s_{t+1} is the state after a_t = labels[:, t], whose values are ``logits[:, t+1]``. After the last response
    token (the eos, or the cut of a truncated response) the episode ends: V(s_{t+1}) = 0. The response must be one
    contiguous run of mask = 1 per row (prompt left of it, padding right of it), as every collator here makes it.
    ``logits`` may also be the pair ``(Q(s_t, a_t), V(s_t))`` ``[B, T]`` already taken at the response positions
    (`rollout.label_scores`: ``(picked, logsumexp)``, the head run there only); the IQLearn losses below pass it on.
    """
    if isinstance(logits, tuple):
        q, v = logits
    else:
        logits = logits.float()
        q = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
        v = torch.logsumexp(logits, dim=-1)
    mask = mask.to(v.dtype)
    next_mask = F.pad(mask[:, 1:], (0, 1))  # 0 past the end: the terminal state's value is 0
    next_v = F.pad(v[:, 1:], (0, 1)) * next_mask
    return q, v, gamma * next_v


def iq_token_rewards(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                     gamma: float = 1.0) -> torch.Tensor:
    """The reward IQLearn's Q implies for each response token, r_t = Q(s_t, a_t) − γ·V(s_{t+1}) (the inverse soft
    Bellman operator of Garg et al. 2021), ``[B, T]``, zero off the mask."""
    q, _, next_v = iq_soft_values(logits, labels, mask, gamma)
    return (q - next_v) * mask.to(q.dtype)


def iq_sequence_rewards(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                        gamma: float = 1.0) -> torch.Tensor:
    """The extracted return of each response, Σ_t r_t over response tokens, ``[B]`` (Wulfmeier et al. §5.4: the
    accumulated IRL reward of a complete trajectory). With γ = 1 it telescopes to log π(y|x) + V(s_0): the
    sequence log-likelihood plus the value of the prompt state."""
    return iq_token_rewards(logits, labels, mask, gamma).sum(-1)


def iq_td_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
               lam: float = 0.01) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Offline IQLearn (Wulfmeier et al. 2024, Eq. 14) with diagnostics.

    loss = mean_t[−log π(a_t|s_t)] + λ · mean_t[(Q(s_t, a_t) − γ·V(s_{t+1}))²], both means over response tokens,
    gradients through Q and both V's (no target network). λ = 0 is exactly `sft_loss`. Stats (detached): ``nll``,
    ``td`` (the mean squared implied reward), ``reward`` (its mean) and ``value`` (mean V on response states).
    """
    q, v, next_v = iq_soft_values(logits, labels, mask, gamma)
    reward = q - next_v
    nll = -masked_mean(q - v, mask)  # the same operations as sft_loss, so λ = 0 is bit-identical to it
    td = masked_mean(reward.square(), mask)
    loss = nll + lam * td
    stats = {"nll": nll.detach(), "td": td.detach(), "reward": masked_mean(reward.detach(), mask),
             "value": masked_mean(v.detach(), mask)}
    return loss, stats


def iq_online_loss(expert_logits: torch.Tensor, expert_labels: torch.Tensor, expert_mask: torch.Tensor,
                              policy_logits: torch.Tensor, policy_labels: torch.Tensor, policy_mask: torch.Tensor,
                              alpha: float, gamma: float = 1.0, lam: float = 0.01
                              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Online IQLearn: IQ-Learn's objective with the value term and the χ² term taken over the mixture
    ρ = (1−α)·expert + α·policy (Garg et al. 2021, IQ-Learn, with the ``value`` loss and the χ² regulariser on ρ,
    as `Div99/IQ-Learn` does online; Wulfmeier et al. 2024 mix policy samples in at a ratio α).

    Minimised: E_E[−log π] + α·(E_P[V(s) − γV(s')] − E_E[V(s) − γV(s')]) + λ·((1−α)·E_E[r²] + α·E_P[r²]),
    every E a mean over response tokens, r = Q(s, a) − γV(s'). The NLL is on demonstrations only (the linear
    reward term of IQ-Learn collapses to it exactly as offline); policy samples enter the value and χ² terms.
    α = 0 is the offline loss. Stats add ``td_policy`` and ``value_gap`` (E_E[V − γV'] − E_P[V − γV']).
    """
    q_e, v_e, next_e = iq_soft_values(expert_logits, expert_labels, expert_mask, gamma)
    q_p, v_p, next_p = iq_soft_values(policy_logits, policy_labels, policy_mask, gamma)
    r_e, r_p = q_e - next_e, q_p - next_p
    nll = -masked_mean(q_e - v_e, expert_mask)
    td_e, td_p = masked_mean(r_e.square(), expert_mask), masked_mean(r_p.square(), policy_mask)
    value_gap = masked_mean(v_e - next_e, expert_mask) - masked_mean(v_p - next_p, policy_mask)
    loss = nll - alpha * value_gap + lam * ((1 - alpha) * td_e + alpha * td_p)
    stats = {"nll": nll.detach(), "td": td_e.detach(), "td_policy": td_p.detach(), "value_gap": value_gap.detach(),
             "reward": masked_mean(r_e.detach(), expert_mask), "value": masked_mean(v_e.detach(), expert_mask)}
    return loss, stats


# --- ZPG / ZBCPG (Zhang & Ying, Zeroth-Order Policy Gradient for RLHF without Reward Inference, arXiv 2409.17401)


def preference_value_difference(p_hat: torch.Tensor, link: str = "bradley-terry", eps: float = 0.05,
                                shape: float = 2.0) -> torch.Tensor:
    """Δ̂ = mean_i σ⁻¹(clip(p̂_i, eps, 1 − eps)): the value difference the preference shares imply
    (Zhang & Ying 2025, the value-difference estimate of Alg. 1, step "estimate the local value difference").

    ``p_hat[i]`` is the share of M annotators who preferred the second (perturbed) trajectory of pair i; σ is
    the known link. Shares are clipped because σ⁻¹(0) and σ⁻¹(1) are infinite (a finite M gives 0 and 1 often),
    and inverted *per pair* before averaging: σ⁻¹ is non-linear, so inverting a share pooled over different
    pairs would be biased. The clip bound is preftune's choice (the paper's truncation rule was not available).
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    p_hat = torch.as_tensor(p_hat, dtype=torch.float64)
    return inverse_preference_link(p_hat.clamp(eps, 1.0 - eps), link, shape).mean()


def zpg_gradient(p_hat: torch.Tensor, direction: torch.Tensor, mu: float, link: str = "bradley-terry",
                 eps: float = 0.05, shape: float = 2.0) -> torch.Tensor:
    """The zeroth-order policy-gradient estimate from human preferences (Zhang & Ying 2025, Alg. 1 (ZPG) and
    Alg. 2 (ZBCPG); the two-point unit-sphere estimator of Flaxman et al. 2005 / Nesterov & Spokoiny 2017):

    ĝ = (d/μ) · Δ̂ · v,  Δ̂ = mean_i σ⁻¹(clip(p̂_i, eps, 1 − eps))  (`preference_value_difference`),

    with v = ``direction`` (unit norm) and d = ``direction.numel()``, the dimension of the perturbed space (all
    parameters for ZPG, one block for ZBCPG). Δ̂ estimates V(θ + μv) − V(θ), and for v uniform on the unit
    sphere (d/μ)·E_v[(V(θ + μv) − V(θ))·v] is the gradient of the ball-smoothed value V_μ.
    """
    if not mu > 0:
        raise ValueError(f"mu must be > 0, got {mu}")
    value_difference = preference_value_difference(p_hat, link, eps, shape)
    return (direction.numel() / mu) * value_difference.to(direction.dtype) * direction


# --- Joint learning from choices (Xu, Dong, Arumugam, Van Roy, arXiv 2305.11455)


def choice_loss(logprobs: torch.Tensor, chosen: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative log-likelihood of observed choices under a Luce choice on the LM's own probabilities.

    A person shown K candidates y_1..y_K for prompt x picks y_i with probability
    π(y_i|x)^(1/τ) / Σ_k π(y_k|x)^(1/τ) = softmax(log π(y|x) / τ)_i — the LM *is* the reward model, its
    sequence log-probability the utility (arXiv 2305.11455; preftune writes the choice model out as Luce's
    axiom, docs/methods.md). ``logprobs`` ``[B, K]`` are sequence log-probs (or any utilities, e.g. an
    epistemic sample of them), ``chosen`` ``[B]`` the picked column; returns the mean of
    −log softmax(logprobs / τ)[chosen]. For K = 2 it is `bt_loss` on (log π_c − log π_r) / τ.
    """
    if logprobs.dim() != 2 or logprobs.shape[1] < 2:
        raise ValueError(f"choice_loss needs logprobs of shape [B, K] with K >= 2, got {tuple(logprobs.shape)}")
    if chosen.shape != logprobs.shape[:1]:
        raise ValueError(f"chosen must have shape [B] = {tuple(logprobs.shape[:1])}, got {tuple(chosen.shape)}")
    if not temperature > 0:
        raise ValueError(f"choice temperature must be > 0, got {temperature}")
    log_choice = (logprobs.float() / temperature).log_softmax(-1)
    return -log_choice.gather(-1, chosen.long()[:, None]).mean()


# --- RLP-UML (Lang et al. 2024, arXiv 2403.19279): the multi-view information bottleneck of Federici et al. 2020
# (arXiv 2002.07017) on two policy responses to one instruction. Equation tags (R1)–(R4) are docs/methods.md's.


def diagonal_gaussian_kl(mean_p: torch.Tensor, logvar_p: torch.Tensor, mean_q: torch.Tensor,
                         logvar_q: torch.Tensor) -> torch.Tensor:
    """KL(N(μ_p, diag σ_p²) ‖ N(μ_q, diag σ_q²)) per row, ``[B, D] -> [B]`` (closed form, docs (R2)):

    ½ Σ_d [log σ_q² − log σ_p² + (σ_p² + (μ_p − μ_q)²) / σ_q² − 1].
    """
    var_ratio = torch.exp(logvar_p - logvar_q)
    return 0.5 * (logvar_q - logvar_p + var_ratio + (mean_p - mean_q) ** 2 * torch.exp(-logvar_q) - 1).sum(-1)


def symmetric_gaussian_kl(mean_1: torch.Tensor, logvar_1: torch.Tensor, mean_2: torch.Tensor,
                          logvar_2: torch.Tensor) -> torch.Tensor:
    """D_SKL = ½ [KL(p(z1|v1) ‖ p(z2|v2)) + KL(p(z2|v2) ‖ p(z1|v1))] per row, ``[B]`` (Federici et al. 2020, §3.1;
    docs (R2)). Their code estimates each KL from one reparametrised sample; for diagonal Gaussians the exact value
    is as cheap and has no sampling noise, so preftune uses it."""
    return 0.5 * (diagonal_gaussian_kl(mean_1, logvar_1, mean_2, logvar_2)
                  + diagonal_gaussian_kl(mean_2, logvar_2, mean_1, logvar_1))


def jensen_shannon_mi_bound(joint_scores: torch.Tensor, marginal_scores: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon lower bound on I(z1; z2) from critic scores T (Hjelm et al. 2019, Eq. 4; Nowozin et al. 2016;
    the estimator of Federici et al.'s code; docs (R3)):

    Î_JS = E_{p(z1,z2)}[−softplus(−T(z1, z2))] − E_{p(z1)p(z2)}[softplus(T(z1', z2))].

    ``joint_scores``: T on matched pairs (two views of one instruction); ``marginal_scores``: T on mismatched ones.
    Always ≤ 0 (a shifted JS divergence, 2·JSD − 2 log 2); it rises towards 0 as the critic separates joint from
    marginal pairs, i.e. as z1 and z2 share information. Returns a scalar.
    """
    return -F.softplus(-joint_scores).mean() - F.softplus(marginal_scores).mean()


def mib_loss(joint_scores: torch.Tensor, marginal_scores: torch.Tensor, mean_1: torch.Tensor,
             logvar_1: torch.Tensor, mean_2: torch.Tensor, logvar_2: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The multi-view information bottleneck loss (Federici et al. 2020, §3.1; RLP-UML's auxiliary loss; docs (R4)):

    L_MIB = −Î_JS(z1; z2) + β · mean D_SKL(p(z1|v1) ‖ p(z2|v2)).

    Maximising the shared information keeps what two responses to one instruction have in common; the symmetric
    KL discards what only one view carries. Returns (loss, {"mi_js", "skl"}).
    """
    mi = jensen_shannon_mi_bound(joint_scores, marginal_scores)
    skl = symmetric_gaussian_kl(mean_1, logvar_1, mean_2, logvar_2).mean()
    return -mi + beta * skl, {"mi_js": mi.item(), "skl": skl.item()}

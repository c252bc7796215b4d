"""Every loss in preftune, as pure functions on tensors.

Convention: ``logits[:, t]`` scores ``labels[:, t]`` (callers shift once: ``logits[:, :-1]`` against
``input_ids[:, 1:]``); ``mask`` is 1 on response tokens. Each function cites its paper and equation.
Diagnostics are returned beside the loss where a user would want them (accuracy, margins, KL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
    return -masked_mean(token_logprobs(logits, labels), mask)


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
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, Eq. 7) with conservative label smoothing ε (cDPO, Mitchell 2023).

    h = β[(log π_c − log π_ref,c) − (log π_r − log π_ref,r)];
    loss = −(1−ε)·log σ(h) − ε·log σ(−h), mean over the batch. ε = 0 is plain DPO.
    """
    logits = beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses.mean()


# ----------------------------------------------------------------------------------------------
# Preference links σ: value difference -> probability of preferring the first option.
# All are strictly increasing with σ(0) = 1/2 and σ(−x) = 1 − σ(x), so σ⁻¹ exists on (0, 1).

LINKS = ("logistic", "probit", "weibull")


def _check_link(link: str) -> None:
    if link not in LINKS:
        raise ValueError(f"link must be one of {LINKS}, got {link!r}")


def preference_link(x: torch.Tensor, link: str = "logistic", shape: float = 2.0) -> torch.Tensor:
    """σ(x) for the Bradley–Terry (logistic), Thurstone (probit) and symmetric Weibull links.

    - logistic: 1 / (1 + e^{−x}) — Bradley–Terry.
    - probit:   Φ(x / √2) — Thurstone with unit-variance Gaussian noise on each utility.
    - weibull:  1/2 + sign(x)/2 · (1 − exp(−|x|^k)), k = ``shape`` — a symmetric link whose tails are
      lighter than the logistic for k > 1 (preftune's choice; see docs/methods.md).
    """
    _check_link(link)
    x = torch.as_tensor(x, dtype=torch.float64 if not torch.is_tensor(x) else None)
    if link == "logistic":
        return torch.sigmoid(x)
    if link == "probit":
        return 0.5 * (1 + torch.erf(x / 2.0))  # Φ(x/√2) = ½(1 + erf(x/2))
    return 0.5 + 0.5 * torch.sign(x) * (1 - torch.exp(-x.abs() ** shape))


def inverse_preference_link(p: torch.Tensor, link: str = "logistic", shape: float = 2.0) -> torch.Tensor:
    """σ⁻¹(p): the value difference that makes the first option preferred with probability p."""
    _check_link(link)
    p = torch.as_tensor(p, dtype=torch.float64 if not torch.is_tensor(p) else None)
    if link == "logistic":
        return torch.log(p) - torch.log1p(-p)
    if link == "probit":
        return 2.0 * torch.erfinv(2 * p - 1)
    q = (2 * p - 1).abs()
    return torch.sign(p - 0.5) * (-torch.log1p(-q)) ** (1.0 / shape)


def link_name(annotator_link: str) -> str:
    """Map feedback-model names (bradley-terry, thurstone, weibull) to link names."""
    names = {"bradley-terry": "logistic", "thurstone": "probit", "weibull": "weibull"}
    return names.get(annotator_link, annotator_link)


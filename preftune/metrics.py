"""Evaluation metrics as pure functions of texts, rewards and scores (no models here).

Oracle metrics use the task's exact reward; annotator metrics ask simulated annotators (and count the queries);
diversity metrics (Self-BLEU, distinct-n) measure what pure reward maximisation tends to lose.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import stats

if TYPE_CHECKING:
    from preftune.feedback import FeedbackSource, QueryLedger
    from preftune.tasks.base import Task


def _check_aligned(**sequences: Sequence) -> int:
    """Common length of the named sequences; metrics over zero items or mismatched lists are caller bugs."""
    lengths = {name: len(seq) for name, seq in sequences.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs must have equal lengths, got {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"inputs are empty: {sorted(lengths)}")
    return n


def _as_float_array(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor: metrics never need its graph
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def mean_oracle_reward(task: Task, prompts: Sequence[str], responses: Sequence[str]) -> float:
    _check_aligned(prompts=prompts, responses=responses)
    return float(np.mean([task.reward(p, r) for p, r in zip(prompts, responses)]))


def reward_model_accuracy(chosen_scores, rejected_scores) -> float:
    """Fraction of pairs scored chosen > rejected; ties count 0.5, so a constant scorer gets exactly 0.5."""
    chosen, rejected = _as_float_array(chosen_scores), _as_float_array(rejected_scores)
    _check_aligned(chosen_scores=chosen, rejected_scores=rejected)
    return float(np.mean(np.where(chosen > rejected, 1.0, np.where(chosen == rejected, 0.5, 0.0))))


def win_rate(task: Task, prompts: Sequence[str], responses: Sequence[str], reference_responses: Sequence[str]) -> float:
    """Oracle win rate against a reference (e.g. the SFT model's responses): win 1, tie 0.5, loss 0."""
    _check_aligned(prompts=prompts, responses=responses, reference_responses=reference_responses)
    ours = [task.reward(p, r) for p, r in zip(prompts, responses)]
    theirs = [task.reward(p, r) for p, r in zip(prompts, reference_responses)]
    return reward_model_accuracy(ours, theirs)


def annotator_win_rate(
    annotator: FeedbackSource,
    prompts: Sequence[str],
    responses: Sequence[str],
    reference_responses: Sequence[str],
    rng: random.Random,
    ledger: QueryLedger | None = None,
) -> float:
    """Win rate as a feedback source judges it (AlpacaFarm-style: simulated annotators, or any `FeedbackSource`);
    each comparison is counted as "eval"."""
    _check_aligned(prompts=prompts, responses=responses, reference_responses=reference_responses)
    wins = 0
    for prompt, response, reference in zip(prompts, responses, reference_responses):
        if ledger is not None:
            ledger.record("eval")
        wins += annotator.compare(prompt, response, reference, rng)
    return wins / len(prompts)


def accuracy(task: Task, prompts: Sequence[str], responses: Sequence[str]) -> float:
    _check_aligned(prompts=prompts, responses=responses)
    return float(np.mean([task.is_correct(p, r) for p, r in zip(prompts, responses)]))


def self_bleu(groups: Sequence[Sequence[str]], tokenize: str = "char") -> float:
    """Mean Self-BLEU (0..100; higher = less diverse) over all responses in groups of >= 2.

    Each response is the hypothesis and the other responses of its group (e.g. samples for one prompt) are the
    references. Settings: sacrebleu sentence-level BLEU, max n-gram order 4 with ``effective_order=True`` (so
    responses shorter than 4 tokens are not zeroed), default ``exp`` smoothing, the given sacrebleu tokenizer
    (``"char"`` for the character-level tasks, ``"13a"`` for words). Groups of fewer than 2 are skipped.
    """
    from sacrebleu.metrics import BLEU

    bleu = BLEU(tokenize=tokenize, effective_order=True)
    scores = []
    for group in groups:
        if len(group) < 2:
            continue
        for i, hypothesis in enumerate(group):
            references = [r for j, r in enumerate(group) if j != i]
            scores.append(min(bleu.sentence_score(hypothesis, references).score, 100.0))  # 100 + 4e-14 -> 100
    if not scores:
        raise ValueError("self_bleu needs at least one group of two or more responses")
    return float(np.mean(scores))


def distinct_n(texts: Sequence[str], n: int, unit: str = "char") -> float:
    """Unique n-grams / total n-grams over all texts (n-grams never span two texts); 0.0 if there are none."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if unit not in ("char", "word"):
        raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")
    ngrams = []
    for text in texts:
        units = list(text) if unit == "char" else text.split()
        ngrams.extend(tuple(units[i : i + n]) for i in range(len(units) - n + 1))
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def spearman(x, y) -> float:
    """Spearman rank correlation (scipy).

    A constant input has no ranking, so it neither agrees nor disagrees: we return 0.0 with a RuntimeWarning
    instead of scipy's nan, which would poison averages over runs. Non-finite inputs raise ValueError.
    """
    x, y = _as_float_array(x), _as_float_array(y)
    n = _check_aligned(x=x, y=y)
    if n < 2:
        raise ValueError("spearman needs at least two points")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("spearman inputs must be finite")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        warnings.warn("spearman: constant input has no ranking; returning 0.0", RuntimeWarning, stacklevel=2)
        return 0.0
    return float(stats.spearmanr(x, y).statistic)


def kl_from_logprobs(policy_logps, ref_logps) -> float:
    """Monte-Carlo KL(π || π_ref): the mean of log π(y) − log π_ref(y) over samples y drawn from π.

    Unbiased for samples from π (single samples may be negative); pass per-sequence log-probs.
    """
    policy, ref = _as_float_array(policy_logps), _as_float_array(ref_logps)
    if policy.shape != ref.shape:
        raise ValueError(f"policy and reference log-probs differ in shape: {policy.shape} vs {ref.shape}")
    if policy.size == 0:
        raise ValueError("kl_from_logprobs needs at least one sample")
    return float(np.mean(policy - ref))


def kl_divergence(p, q) -> float:
    """Exact KL(p ‖ q) = Σ p log(p / q) of two distributions over the same finite outcomes (0 log 0 = 0).

    Infinite when q is 0 where p is not. Rows of 2-D inputs are separate distributions: the mean over rows.
    """
    p, q = _as_float_array(p), _as_float_array(q)
    if p.shape != q.shape:
        raise ValueError(f"distributions differ in shape: {p.shape} vs {q.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return float(np.mean(terms.sum(-1)))


def total_variation(p, q) -> float:
    """Exact total variation ½ Σ |p − q| of two distributions over the same finite outcomes (mean over rows)."""
    p, q = _as_float_array(p), _as_float_array(q)
    if p.shape != q.shape:
        raise ValueError(f"distributions differ in shape: {p.shape} vs {q.shape}")
    return float(np.mean(0.5 * np.abs(p - q).sum(-1)))


def annotator_agreement_with_oracle(pairs: list, oracle: Callable[[str, str], float]) -> float:
    """Fraction of labels the oracle's strict ordering agrees with (oracle ties count 0.5).

    Even the true reward scores only this on noisy labels, so it is the ceiling for a reward model's accuracy
    on held-out annotator labels.
    """
    if not pairs:
        raise ValueError("annotator_agreement_with_oracle needs at least one pair")
    chosen = [oracle(pair.prompt, pair.chosen) for pair in pairs]
    rejected = [oracle(pair.prompt, pair.rejected) for pair in pairs]
    return reward_model_accuracy(chosen, rejected)


def distribution_metrics(policy_probs: torch.Tensor, target_probs: torch.Tensor,
                         favourites: Sequence[Sequence[int]]) -> dict:
    """KL(p* ‖ π), KL(π ‖ p*), total variation (means over prompts) and the mass π and p* put on each type's
    favourite (type 0 is the majority)."""
    out = {"kl": kl_divergence(target_probs, policy_probs), "reverse_kl": kl_divergence(policy_probs, target_probs),
           "tv": total_variation(policy_probs, target_probs)}
    for j in range(len(favourites[0])):
        rows = torch.arange(len(favourites))
        cols = torch.tensor([f[j] for f in favourites])
        out[f"mass_type{j}"] = float(policy_probs[rows, cols].mean())
        out[f"target_mass_type{j}"] = float(target_probs[rows, cols].mean())
    return out

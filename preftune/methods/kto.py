"""Kahneman–Tversky Optimization (Ethayarajh et al. 2024) on unpaired preferences: each completion is labelled
desirable or not, no pair needed.

As in TRL's ``KTOTrainer``: the reference point is the KL between policy and reference estimated on mismatched
pairs, row i's prompt with row i−1's completion (a fixed pairing of the dataset, so its reference log-probs, like
the matched ones, are computed once before the first update and no second model stays in memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from preftune.config import TrainConfig, doc, override
from preftune.data import DataError, Demo, Unpaired, as_records, check_fits, collate_demos
from preftune.losses import kto_loss
from preftune.models import load_policy
from preftune.rollout import response_token_logprobs, score_logprobs
from preftune.trainer import GradientStep, Trainer, TrainResult


@dataclass
class KTOConfig(TrainConfig):
    method_name = "kto"
    lr: float = override(TrainConfig, "lr", 2e-4)
    beta: float = field(default=0.1, metadata=doc("KTO temperature β: strength of the implicit KL to the reference.",
                                                  gt=0))
    desirable_weight: float = field(default=1.0, metadata=doc(
        "λ_D, the weight of desirable rows' losses (raise it when they are fewer than the undesirable ones).", gt=0))
    undesirable_weight: float = field(default=1.0, metadata=doc(
        "λ_U, the weight of undesirable rows' losses.", gt=0))


def kto_sequences(rows: Sequence[Unpaired], mismatched: Sequence[Unpaired]) -> list[Demo]:
    """Each row as a demonstration, then each row's prompt with its mismatched row's completion (the KL pairs)."""
    return [Demo(r.prompt, r.completion) for r in rows] + [Demo(r.prompt, m.completion)
                                                           for r, m in zip(rows, mismatched)]


def train_kto(config: KTOConfig, rows: Sequence[Unpaired], model=None, tokenizer=None) -> TrainResult:
    """KTO on `Unpaired` records or TRL unpaired-preference rows ``{"prompt", "completion", "label"}`` (standard or
    conversational; a ``datasets.Dataset`` or dicts)."""
    model, tokenizer = load_policy(config, model, tokenizer)
    rows = as_records(rows, Unpaired, tokenizer)
    if len(rows) < 2:
        raise DataError("kto needs at least 2 rows: its KL term pairs each prompt with another row's completion")
    check_fits(tokenizer, [r.prompt for r in rows], config.max_length, model)
    mismatched = [len(rows) - 1, *range(len(rows) - 1)]  # row i's KL completion is row i−1's, as TRL pairs them
    labels = torch.tensor([r.label for r in rows])

    def batch(indices: list[int]):
        return collate_demos(tokenizer, kto_sequences([rows[i] for i in indices],
                                                      [rows[mismatched[i]] for i in indices]), config.max_length)

    ref = []  # [N, 2]: matched and KL sequence log-probs under the starting policy, computed once
    for s in range(0, len(rows), 128):
        indices = list(range(s, min(s + 128, len(rows))))
        b = batch(indices)
        seq = score_logprobs(model, b.input_ids, b.attention_mask, b.response_mask).sum(-1)
        ref.append(torch.stack([seq[: len(indices)], seq[len(indices):]], dim=1))
    ref = torch.cat(ref)
    trainer = Trainer(config, model, name="kto")
    step = GradientStep(trainer)

    def loss_fn(indices: list[int]):
        b = batch(indices).to(trainer.device)
        n, device = len(indices), trainer.device
        logps = response_token_logprobs(trainer.model, b.input_ids[:n], b.attention_mask[:n],
                                        b.response_mask[:n]).sum(-1)
        with torch.no_grad():  # the reference point is detached: no gradient through the KL pairs
            kl_logps = response_token_logprobs(trainer.model, b.input_ids[n:], b.attention_mask[n:],
                                               b.response_mask[n:]).sum(-1)
        loss, stats = kto_loss(logps, ref[indices, 0].to(device), labels[indices].to(device), kl_logps,
                               ref[indices, 1].to(device), config.beta, config.desirable_weight,
                               config.undesirable_weight)
        metrics = {"kl": stats["kl"].item()}  # TRL's names
        for name in ("chosen", "rejected"):
            if f"{name}_rewards" in stats:
                metrics[f"rewards/{name}"] = stats[f"{name}_rewards"].item()
                metrics[f"logps/{name}"] = stats[f"{name}_logps"].item()
        if "rewards/chosen" in metrics and "rewards/rejected" in metrics:
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return loss, metrics

    trainer.fit_dataset(len(rows), step, loss_fn, description="kto")
    return trainer.finish(tokenizer)

"""Kahneman–Tversky Optimization (Ethayarajh et al. 2024) on unpaired preferences: each completion is labelled
desirable or not, no pair needed.

As in TRL's ``KTOTrainer``: the reference point is the KL between policy and reference estimated on mismatched
pairs, row i's prompt with row i−1's completion (a fixed pairing of the dataset, so its reference log-probs, like
the matched ones, are computed once before the first update and no second model stays in memory).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from preftune.data import DataError, Demo, Unpaired, as_records, check_fits, collate_demos
from preftune.losses import kto_loss
from preftune.methods.configs import KTOConfig
from preftune.models import load_policy
from preftune.rollout import response_token_logprobs, score_logprobs
from preftune.trainer import GradientStep, Trainer, TrainResult


def kto_sequences(rows: Sequence[Unpaired]) -> list[Demo]:
    """Each row as a demonstration, then the KL pairs: each row's prompt with its mismatched row's completion, row
    i−1's (cyclically), as TRL pairs them."""
    return [Demo(r.prompt, r.completion) for r in rows] + [Demo(r.prompt, rows[i - 1].completion)
                                                           for i, r in enumerate(rows)]


def kto_reference_logprobs(model, tokenizer, rows: Sequence[Unpaired], max_length: int,
                           chunk: int = 128) -> torch.Tensor:
    """Sequence log-probs ``[N, 2]`` (the row, its KL pair) of every row under ``model``, computed once."""
    sequences = kto_sequences(rows)
    matched, kl = sequences[: len(rows)], sequences[len(rows):]
    out = []
    for s in range(0, len(rows), chunk):
        b = collate_demos(tokenizer, matched[s:s + chunk] + kl[s:s + chunk], max_length)
        seq = score_logprobs(model, b.input_ids, b.attention_mask, b.response_mask).sum(-1)
        n = len(matched[s:s + chunk])
        out.append(torch.stack([seq[:n], seq[n:]], dim=1))
    return torch.cat(out)


def train_kto(config: KTOConfig, rows: Sequence[Unpaired], model=None, tokenizer=None,
              eval_data: Sequence[Unpaired] | None = None) -> TrainResult:
    """KTO on `Unpaired` records or TRL unpaired-preference rows ``{"prompt", "completion", "label"}`` (standard or
    conversational; a ``datasets.Dataset`` or dicts); ``eval_data`` (the same kinds) is scored every ``eval_every``
    steps (``eval_loss``, ``eval_kl``, …)."""
    model, tokenizer = load_policy(config, model, tokenizer)
    rows, eval_rows = as_records(rows, Unpaired, tokenizer), as_records(eval_data or [], Unpaired, tokenizer)
    for name, part in (("training", rows), ("eval", eval_rows)):
        if len(part) == 1:
            raise DataError(f"kto needs at least 2 {name} rows: its KL term pairs each prompt with another row's "
                            f"completion")
    check_fits(tokenizer, [r.prompt for r in rows + eval_rows], config.max_length, model)
    ref = kto_reference_logprobs(model, tokenizer, rows, config.max_length)
    eval_ref = kto_reference_logprobs(model, tokenizer, eval_rows, config.max_length) if eval_rows else None
    trainer = Trainer(config, model, name="kto", num_examples=len(rows))
    step = GradientStep(trainer)

    def loss_on(part: Sequence[Unpaired], ref: torch.Tensor):
        sequences, labels = kto_sequences(part), torch.tensor([r.label for r in part])

        def loss_fn(indices: list[int]):
            n, device = len(indices), trainer.device
            demos = [sequences[i] for i in indices] + [sequences[len(part) + i] for i in indices]
            b = collate_demos(tokenizer, demos, config.max_length).to(device)
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
        return loss_fn

    trainer.fit_dataset(len(rows), step, loss_on(rows, ref), description="kto", eval_examples=len(eval_rows),
                        eval_loss_fn=loss_on(eval_rows, eval_ref))
    return trainer.finish(tokenizer)

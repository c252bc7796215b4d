"""Direct Preference Optimization (Rafailov et al. 2023), with conservative label smoothing.

The reference log-probs are computed once, before the first update, from the starting policy, so no
second model stays in memory during training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from preftune.data import Pair, as_records, check_fits, collate_pairs
from preftune.losses import dpo_loss
from preftune.methods.configs import DPOConfig
from preftune.models import load_policy
from preftune.rollout import response_token_logprobs, score_logprobs
from preftune.trainer import GradientStep, Trainer, TrainResult


def reference_logprobs(model, tokenizer, pairs: Sequence[Pair], max_length: int, chunk: int = 256) -> torch.Tensor:
    """Sequence log-probs ``[N, 2]`` (chosen, rejected) of every pair under ``model``, computed once."""
    out = []
    for s in range(0, len(pairs), chunk):
        part = pairs[s:s + chunk]
        b = collate_pairs(tokenizer, part, max_length)
        seq = score_logprobs(model, b.input_ids, b.attention_mask, b.response_mask).sum(-1)
        out.append(torch.stack([seq[: len(part)], seq[len(part):]], dim=1))
    return torch.cat(out)


def train_dpo(config: DPOConfig, pairs: Sequence[Pair], model=None, tokenizer=None,
              eval_data: Sequence[Pair] | None = None) -> TrainResult:
    """DPO on `Pair` records or TRL preference rows (a ``datasets.Dataset`` or dicts, standard or conversational);
    ``eval_data`` (the same kinds) is scored every ``eval_every`` steps (``eval_loss``, ``eval_rewards/accuracies``,
    …)."""
    pairs = as_records(pairs, Pair, allow_degenerate=config.allow_degenerate)  # checked before the model loads
    eval_pairs = as_records(eval_data or [], Pair, allow_degenerate=config.allow_degenerate)
    model, tokenizer = load_policy(config, model, tokenizer)
    pairs, eval_pairs = as_records(pairs, Pair, tokenizer), as_records(eval_pairs, Pair, tokenizer)
    check_fits(tokenizer, [p.prompt for p in pairs + eval_pairs], config.max_length, model)
    ref = reference_logprobs(model, tokenizer, pairs, config.max_length)
    eval_ref = reference_logprobs(model, tokenizer, eval_pairs, config.max_length) if eval_pairs else None
    trainer = Trainer(config, model, name="dpo", num_examples=len(pairs))
    step = GradientStep(trainer)

    def loss_on(rows: Sequence[Pair], ref: torch.Tensor):
        def loss_fn(indices: list[int]):
            b = collate_pairs(tokenizer, [rows[i] for i in indices], config.max_length).to(trainer.device)
            logps = response_token_logprobs(trainer.model, b.input_ids, b.attention_mask, b.response_mask).sum(-1)
            chosen, rejected = logps[: len(indices)], logps[len(indices):]
            ref_c, ref_r = ref[indices, 0].to(trainer.device), ref[indices, 1].to(trainer.device)
            loss, stats = dpo_loss(chosen, rejected, ref_c, ref_r, config.beta, config.label_smoothing)
            accuracy, margin = stats["accuracy"].item(), stats["margins"].item()
            return loss, {"reward_accuracy": accuracy, "reward_margin": margin,
                          # the names every TRL dashboard reads
                          "rewards/chosen": stats["chosen_rewards"].item(),
                          "rewards/rejected": stats["rejected_rewards"].item(),
                          "rewards/accuracies": accuracy, "rewards/margins": margin,
                          "logps/chosen": chosen.detach().mean().item(),
                          "logps/rejected": rejected.detach().mean().item()}
        return loss_fn

    trainer.fit_dataset(len(pairs), step, loss_on(pairs, ref), description="dpo", eval_examples=len(eval_pairs),
                        eval_loss_fn=loss_on(eval_pairs, eval_ref))
    return trainer.finish(tokenizer)

"""Reward model: a causal-LM body with a scalar head, fitted by the Bradley–Terry likelihood."""

from __future__ import annotations

import random
from collections.abc import Sequence

from preftune.data import Pair, as_records, check_fits, collate_pairs
from preftune.feedback import Annotator, label_pairs
from preftune.losses import bt_loss
from preftune.methods.configs import RewardConfig
from preftune.metrics import annotator_agreement_with_oracle, reward_model_accuracy
from preftune.models import RewardModel, load_policy
from preftune.rollout import score_rewards
from preftune.trainer import GradientStep, Trainer, TrainResult


def pair_rewards(reward_model, tokenizer, pairs: Sequence[Pair], max_length: int, batch_size: int = 128):
    """(chosen, rejected) rewards of pairs, without gradients; ensembles are averaged over heads."""
    batch = collate_pairs(tokenizer, pairs, max_length)
    rewards = score_rewards(reward_model, batch.input_ids, batch.attention_mask, batch_size)
    if rewards.dim() == 2:
        rewards = rewards.mean(-1)
    return rewards[: len(pairs)], rewards[len(pairs):]


def heldout_accuracy(reward_model, tokenizer, pairs: Sequence[Pair], max_length: int) -> float:
    chosen, rejected = pair_rewards(reward_model, tokenizer, pairs, max_length)
    return reward_model_accuracy(chosen.tolist(), rejected.tolist())


def heldout_labels(task, n: int, seed: int = 0) -> list[Pair]:
    """The task's held-out pairs (eval prompts), labelled by the Bradley–Terry annotator at temperature 1, as
    `preftune run` draws them: the label stream is ``seed + 1``, apart from the training labels' ``seed``."""
    return label_pairs(task.candidate_pairs("eval", n, seed), Annotator(task.reward), random.Random(seed + 1))


def heldout_report(reward_model, tokenizer, task, pairs: Sequence[Pair], max_length: int) -> dict:
    """Held-out accuracy next to its ceiling: the annotator's own agreement with the oracle on the same labels."""
    return {"heldout_accuracy": heldout_accuracy(reward_model, tokenizer, pairs, max_length),
            "ceiling": annotator_agreement_with_oracle(list(pairs), task.reward), "pairs": len(pairs)}


def train_reward(config: RewardConfig, pairs: Sequence[Pair], model=None, tokenizer=None,
                 eval_data: Sequence[Pair] | None = None) -> TrainResult:
    """Start from a causal LM (usually the SFT policy) and fit a new head and the body on ``pairs`` (`Pair` records or
    TRL preference rows, standard or conversational); ``eval_data`` (the same kinds) is scored every ``eval_every``
    steps (``eval_accuracy``)."""
    pairs = as_records(pairs, Pair, allow_degenerate=config.allow_degenerate)  # checked before the model loads
    eval_pairs = as_records(eval_data or [], Pair, allow_degenerate=config.allow_degenerate)
    base, tokenizer = load_policy(config, model, tokenizer)
    pairs, eval_pairs = as_records(pairs, Pair, tokenizer), as_records(eval_pairs, Pair, tokenizer)
    check_fits(tokenizer, [p.prompt for p in pairs + eval_pairs], config.max_length, base)
    reward_model = RewardModel.from_causal_lm(base, num_heads=config.num_heads, seed=config.seed,
                                               pooling=config.pooling)
    trainer = Trainer(config, reward_model, name="reward", num_examples=len(pairs))
    step = GradientStep(trainer)

    def loss_on(rows: Sequence[Pair]):
        def loss_fn(indices: list[int]):
            batch = collate_pairs(tokenizer, [rows[i] for i in indices], config.max_length).to(trainer.device)
            rewards = trainer.model(batch.input_ids, batch.attention_mask)
            chosen, rejected = rewards[: len(indices)], rewards[len(indices):]
            # every head of an ensemble is fitted on the same pairs; their disagreement comes from the init
            loss = bt_loss(chosen, rejected)
            accuracy = (chosen > rejected).float().mean()
            return loss, {"accuracy": accuracy.item(), "margin": (chosen - rejected).mean().item()}
        return loss_fn

    trainer.fit_dataset(len(pairs), step, loss_on(pairs), description="reward model", eval_examples=len(eval_pairs),
                        eval_loss_fn=loss_on(eval_pairs))
    return trainer.finish(tokenizer, save=lambda rm, tok, directory: rm.save_pretrained(directory, tok))

"""Best-of-N: sample N responses per prompt and keep the one a scorer (reward model or oracle) likes best."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from preftune.rollout import generate

Scorer = Callable[[list[str], list[str]], Sequence[float]]  # (prompts, responses) -> scores


def best_of_n(model, tokenizer, prompts: Sequence[str], n: int, scorer: Scorer, max_new_tokens: int,
              temperature: float = 1.0, batch_size: int = 256) -> list[str]:
    """For each prompt, the highest-scoring of ``n`` samples (ties go to the first sampled)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rollout = generate(model, tokenizer, prompts, max_new_tokens, samples_per_prompt=n,
                       temperature=temperature, batch_size=batch_size)
    scores = torch.as_tensor(list(scorer(rollout.row_prompts(), rollout.texts)), dtype=torch.float64)
    best = scores.view(len(prompts), n).argmax(dim=1)
    return [rollout.texts[i * n + int(b)] for i, b in enumerate(best)]


def reward_model_scorer(reward_model, tokenizer, max_length: int) -> Scorer:
    """Score (prompt, response) texts with a `RewardModel` (ensembles: mean over heads)."""
    from preftune.data import Demo, collate_demos
    from preftune.rollout import score_rewards

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        batch = collate_demos(tokenizer, [Demo(p, r) for p, r in zip(prompts, responses)], max_length)
        rewards = score_rewards(reward_model, batch.input_ids, batch.attention_mask)
        return (rewards.mean(-1) if rewards.dim() == 2 else rewards).tolist()

    return score


def oracle_scorer(task) -> Scorer:
    return lambda prompts, responses: [task.reward(p, r) for p, r in zip(prompts, responses)]

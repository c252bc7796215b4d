"""Best-of-N: sample N responses per prompt and keep the one a reward (reward model, oracle, function) likes best.

Nothing is trained; `run_bon` writes the chosen responses (``responses.jsonl``) and their mean score
(``metrics.json``) to ``output_dir`` and returns them in the `TrainResult` every method returns.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from preftune.data import Demo, as_prompts, write_jsonl
from preftune.methods.configs import BoNConfig
from preftune.models import load_policy
from preftune.rewards import RewardFn
from preftune.rollout import generate
from preftune.trainer import TrainResult


def best_of_n(model, tokenizer, prompts: Sequence[str], n: int, reward: RewardFn, max_new_tokens: int,
              temperature: float = 1.0, batch_size: int = 256) -> tuple[list[str], list[float]]:
    """For each prompt, the highest-scoring of ``n`` samples (ties go to the first sampled), and its score."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rollout = generate(model, tokenizer, prompts, max_new_tokens, samples_per_prompt=n,
                       temperature=temperature, batch_size=batch_size)
    scores = torch.as_tensor(list(reward(rollout.row_prompts(), rollout.texts)), dtype=torch.float64)
    best, best_index = scores.view(len(prompts), n).max(dim=1)
    return [rollout.texts[i * n + int(b)] for i, b in enumerate(best_index)], best.tolist()


def run_bon(config: BoNConfig, prompts: Sequence[str], reward: RewardFn, model=None, tokenizer=None,
            oracle: RewardFn | None = None) -> TrainResult:
    """Best-of-``config.n`` for every prompt, written to ``output_dir``; with a task's ``oracle`` the chosen
    responses' mean oracle reward is reported beside their mean ``score`` under ``reward``."""
    policy, tokenizer = load_policy(config, model, tokenizer)
    prompts = as_prompts(prompts, tokenizer)  # strings, or TRL prompt-only rows (conversational: templated)
    torch.manual_seed(config.seed)
    responses, scores = best_of_n(policy, tokenizer, prompts, config.n, reward, config.max_new_tokens,
                                  config.temperature, config.generation_batch_size)
    out = Path(config.output_dir)
    metrics = {"n": config.n, "num_prompts": len(prompts), "score": sum(scores) / len(scores)}
    if oracle is not None:
        metrics["oracle_reward"] = sum(oracle(list(prompts), responses)) / len(responses)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process answers; one writes
        write_jsonl(out / "responses.jsonl", [Demo(p, r) for p, r in zip(prompts, responses)])
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return TrainResult(policy, tokenizer, [metrics], out, {"responses": responses, "scores": scores})

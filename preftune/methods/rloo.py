"""RLOO (Ahmadian et al. 2024) and GRPO (Shao et al. 2024, DeepSeekMath): k samples per prompt, no value model.

Both sample ``samples_per_prompt`` = k responses per prompt and baseline each by its siblings; they differ in the
advantage and in where the KL to the reference goes:

- RLOO: sequence reward r − β·KL_seq (KL folded into the reward, KL_seq = Σ_t log π_old − log π_ref on the
  sample), advantage = reward minus the mean of the prompt's other k−1 rewards (`rloo_advantages`).
- GRPO: advantage = (r − mean) / (std + 1e-4) over the prompt's group (§4.1.2, `grpo_advantages`); the KL is a
  separate loss term, β × the mean per-token k3 estimate exp(ref − logp) − (ref − logp) − 1 (Eq. 4, `kl_k3`)
  under the *current* policy, so it has a gradient.

Both optimise PPO's clipped surrogate with the ratio against the behaviour log-probs (Eq. 7 of Schulman et al.
2017); with ``ppo_epochs`` = 1 and one minibatch every step is on-policy and the clip never binds. Sequence
advantages are broadcast over their tokens and the loss is a mean over all response tokens of the minibatch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from preftune.config import ConfigError, override
from preftune.losses import (
    grpo_advantages,
    kl_k3,
    masked_mean,
    ppo_clip_loss,
    rloo_advantages,
    token_entropy,
    token_logprobs,
)
from preftune.methods.online import OnlineConfig, OnlineRun, RewardFn
from preftune.models import load_policy
from preftune.rollout import model_logits
from preftune.trainer import TrainResult


@dataclass
class RLOOConfig(OnlineConfig):
    """RLOO: leave-one-out baseline, the KL folded into the reward. `GRPOConfig` selects GRPO."""

    method_name = "rloo"
    samples_per_prompt: int = override(OnlineConfig, "samples_per_prompt", 4)

    def check(self) -> None:
        super().check()
        if self.samples_per_prompt < 2:
            raise ConfigError(f"config field 'samples_per_prompt' must be >= 2 for {self.method_name} "
                              f"(the baseline comes from a prompt's other samples), got {self.samples_per_prompt}")


@dataclass
class GRPOConfig(RLOOConfig):
    """GRPO: group-normalised advantage, the KL as a k3 loss term (DeepSeekMath uses β = 0.04)."""

    method_name = "grpo"
    kl_coef: float = override(OnlineConfig, "kl_coef", 0.04)


def train_rloo(config: RLOOConfig, prompts: Sequence[str], reward: RewardFn | nn.Module, model=None,
               tokenizer=None, eval_data: Sequence[str] | None = None) -> TrainResult:
    """RLOO, or GRPO when ``config`` is a `GRPOConfig`; ``reward``: (prompts, responses) -> scores, or a
    `RewardModel`; ``eval_data``: prompts scored every ``eval_every`` iterations (``eval_score``)."""
    policy, tokenizer = load_policy(config, model, tokenizer)
    run = OnlineRun(config.method_name, config, prompts, reward, policy, tokenizer, eval_prompts=eval_data)
    k, temperature, grpo = config.samples_per_prompt, config.temperature, isinstance(config, GRPOConfig)

    def iteration(it: int) -> dict:
        started = time.perf_counter()
        batch = run.collect(it)
        beta = run.kl_coef
        if grpo:  # DeepSeekMath §4.1.2: normalised within the group; the KL is a loss term below (Eq. 3)
            advantages = grpo_advantages(batch.scores.view(-1, k)).flatten()
        else:  # Ahmadian et al. 2024: r − β·KL_seq, baselined by the other k−1 samples' mean
            advantages = rloo_advantages((batch.scores - beta * batch.kl_sequences()).view(-1, k)).flatten()

        def loss_fn(rows: list[int]):
            b = batch.rows(rows, run.trainer.device, advantages=advantages)
            logits = model_logits(run.trainer.model, b["input_ids"], b["attention_mask"])[:, :-1]
            logprobs = token_logprobs(logits, b["input_ids"][:, 1:], temperature)
            loss, stats = ppo_clip_loss(logprobs, b["old_logprobs"], b["advantages"], b["mask"], config.clip_range)
            metrics = {"policy_loss": loss.item(), **{k: v.item() for k, v in stats.items()},
                       "entropy": masked_mean(token_entropy(logits.detach(), temperature), b["mask"]).item()}
            if grpo:  # DeepSeekMath Eq. 4: + β · mean_t k3(π_θ, π_ref)
                kl = masked_mean(kl_k3(logprobs, b["ref_logprobs"]), b["mask"])
                loss = loss + beta * kl
                metrics["kl_k3"] = kl.item()
            return loss, metrics

        updates = run.optimise(len(batch), loss_fn, it)
        return run.finish_iteration(batch, updates, started)

    return run.fit(iteration)


def train_grpo(config: GRPOConfig, prompts: Sequence[str], reward: RewardFn | nn.Module, model=None,
               tokenizer=None, eval_data: Sequence[str] | None = None) -> TrainResult:
    """GRPO: `train_rloo` with a `GRPOConfig`."""
    if not isinstance(config, GRPOConfig):
        raise ConfigError(f"train_grpo takes a GRPOConfig, got {type(config).__name__}")
    return train_rloo(config, prompts, reward, model, tokenizer, eval_data)

"""PPO for language models (Schulman et al. 2017), as used for RLHF by Ziegler et al. 2019 and Ouyang et al. 2022.

Each iteration samples responses (behaviour log-probs come with them), then:

- per-token reward: −β·(log π_old − log π_ref) on every response token, plus the sequence score on the last
  one — the KL penalty folded into the reward (Ziegler et al. 2019, Eq. 2; Stiennon et al. 2020, Eq. 1), with β
  fixed or adaptive (`KLController`);
- advantages by GAE with γ = 1 and λ = ``lam`` (Schulman et al. 2016) from the value head's values on the
  samples, returns = advantages + values; advantages whitened over the batch;
- ``ppo_epochs`` passes in ``num_minibatches`` steps of the clipped surrogate (Schulman et al. 2017, Eq. 7) plus
  ``vf_coef`` × the clipped value loss.

Value head — preftune's choice: a linear layer on the policy's last hidden state (after the final norm) at every
token, on the *shared* body. One forward pass gives logits and values, and there is no second model in memory,
which is what keeps PPO affordable beside a frozen reference. The cost is that value-loss gradients also move the
policy's body; ``vf_coef`` (0.1, as in TRL) keeps that small, and the head starts at zero, so at the first step
it does not perturb the policy at all. (Ouyang et al. 2022 use a separate value model started from the reward
model; with a shared body the value head starts from the policy's features instead.)
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from preftune.losses import (
    gae_advantages,
    masked_mean,
    masked_whiten,
    ppo_clip_loss,
    value_loss,
)
from preftune.methods.configs import PPOConfig
from preftune.methods.online import OnlineBatch, OnlineRun, RewardFn
from preftune.models import load_policy, position_ids_from_mask, save_loadable_files, save_state_dict_as
from preftune.rollout import LabelScores, lm_body_and_head, scores_at
from preftune.trainer import TrainResult


class PolicyWithValueHead(nn.Module):
    """The policy and a linear value head on its last hidden state; ``forward`` returns (logits, values)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.hidden_size, 1)
        # a checkpoint holds the policy under its own names (value_head.* beside them), so it loads as the policy
        save_state_dict_as(self, {"policy.": "", "value_head.": "value_head."})
        nn.init.zeros_(self.value_head.weight)  # V ≡ 0 at the start: no value-loss gradient into the body yet
        nn.init.zeros_(self.value_head.bias)

    def checkpoint_files(self, directory) -> None:
        save_loadable_files(self.policy, directory)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, label_mask: torch.Tensor | None = None,
                temperature: float = 1.0) -> tuple[LabelScores | None, torch.Tensor]:
        """The scores of the labels where ``label_mask`` ``[B, T-1]`` is set (the LM head runs there only; None
        without a mask) and the values ``[B, T]`` at every position."""
        positions = position_ids_from_mask(attention_mask)
        parts = lm_body_and_head(self.policy)
        if parts is None:  # a model the head cannot be split from: its logits at every position
            out = self.policy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                              position_ids=positions, output_hidden_states=True)
            hidden, states, head = out.hidden_states[-1], out.logits, nn.Identity()
        else:
            body, head = parts
            hidden = states = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                   position_ids=positions).last_hidden_state
        values = self.value_head(hidden).squeeze(-1).float()
        if label_mask is None:
            return None, values
        return scores_at(head, states, input_ids, label_mask, temperature, entropy=True), values


@torch.no_grad()
def rollout_values(model: PolicyWithValueHead, batch: OnlineBatch, device, batch_size: int = 64) -> torch.Tensor:
    """Values ``[N, T-1]`` aligned with the log-probs (V at the state *before* each response token), zero
    off-response; computed once per iteration, before any update (V_old of the clipped value loss)."""
    was_training = model.training
    model.eval()
    r = batch.rollout
    out = []
    for s in range(0, len(batch), batch_size):
        values = model(r.input_ids[s:s + batch_size].to(device), r.attention_mask[s:s + batch_size].to(device))[1]
        out.append(values[:, :-1].cpu() * batch.mask[s:s + batch_size])
    model.train(was_training)
    return torch.cat(out)


def train_ppo(config: PPOConfig, prompts: Sequence[str], reward: RewardFn | nn.Module, model=None,
              tokenizer=None, eval_data: Sequence[str] | None = None) -> TrainResult:
    """PPO on ``prompts``; ``reward`` is a (prompts, responses) -> scores callable or a `RewardModel`; ``eval_data``:
    prompts scored every ``eval_every`` iterations (``eval_score``)."""
    policy, tokenizer = load_policy(config, model, tokenizer)
    actor_critic = PolicyWithValueHead(policy)
    run = OnlineRun("ppo", config, prompts, reward, policy, tokenizer, trained=actor_critic, eval_prompts=eval_data)
    device, temperature = run.trainer.device, config.temperature

    def iteration(it: int) -> dict:
        started = time.perf_counter()
        batch = run.collect(it)
        mask = batch.mask.float()
        old_values = rollout_values(actor_critic, batch, device, config.generation_batch_size)
        # Ziegler et al. 2019, Eq. 2: r_t = −β·KL_t on every token, + the score on the last response token
        rewards = -run.kl_coef * batch.kl_tokens()
        last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
        rewards[torch.arange(len(batch)), last] += batch.scores
        advantages, returns = gae_advantages(rewards, old_values, mask, gamma=1.0, lam=config.lam)
        if config.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        def loss_fn(rows: list[int]):
            b = batch.rows(rows, device, advantages=advantages, returns=returns, old_values=old_values)
            scores, values = run.trainer.model(b["input_ids"], b["attention_mask"], b["mask"].bool(), temperature)
            logprobs, values = scores.logprobs, values[:, :-1]
            policy_loss, stats = ppo_clip_loss(logprobs, b["old_logprobs"], b["advantages"], b["mask"],
                                               config.clip_range)
            v_loss = value_loss(values, b["old_values"], b["returns"], b["mask"], config.value_clip_range)
            entropy = masked_mean(scores.entropy, b["mask"])
            return policy_loss + config.vf_coef * v_loss, {
                "policy_loss": policy_loss.item(), "value_loss": v_loss.item(), "entropy": entropy.item(),
                **{k: v.item() for k, v in stats.items()}}

        updates = run.optimise(len(batch), loss_fn, it)
        return run.finish_iteration(batch, updates, started)

    return run.fit(iteration)

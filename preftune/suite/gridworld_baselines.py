"""The two baselines of the zeroth-order paper (Zhang & Ying, arXiv 2409.17401), tabular, in the GridWorld, paid in
the same currency as ZPG: human comparisons of two trajectories, counted by a `QueryLedger`.

Both collect data online, in rounds: sample ``batch_size`` trajectory pairs from the current policy, ask one
annotator about each pair (one query per pair), add the pairs to everything collected so far, then take
``updates_per_round`` Adam steps on minibatches drawn from all pairs so far.

- DPO on trajectories (Rafailov et al. 2023, Eq. 7, `losses.dpo_loss`) with log π(τ) = Σ_h log π(a_h|s_h) and the
  uniform starting policy as π_ref. DPO's derivation needs log π(τ) − log π_ref(τ) to be the whole log-ratio of
  the trajectory distributions; with slippery moves the transition probabilities are part of P(τ) and the policy
  cannot move them, so DPO is misspecified: it credits the agent's actions for lucky slips.
- Reward model + PPO, the classic pipeline of the paper's Fig. 1: a tabular reward r_φ(s, a) (or r_φ(s, a, s'))
  fitted by Bradley–Terry maximum likelihood on Σ_h r_φ over the compared trajectories (`losses.bt_loss`), then
  PPO's clipped surrogate (`losses.ppo_clip_loss`) on fresh environment rollouts rewarded by r_φ. Environment
  samples are free; only human labels are counted. The advantage is the whitened reward-to-go (no critic), which
  is enough for a 64-parameter policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from preftune.config import TrainConfig, doc
from preftune.feedback import Annotator, QueryLedger, repeated_preference_shares
from preftune.losses import bt_loss, dpo_loss, masked_whiten, ppo_clip_loss
from preftune.methods.zpg import TabularPolicy
from preftune.tasks.gridworld import GridWorld, Trajectories, return_utility, trajectory_logprobs
from preftune.trainer import TrainResult


@dataclass
class GridWorldBaselineConfig(TrainConfig):
    """Fields shared by trajectory DPO and RM + PPO in the GridWorld (the LM fields of TrainConfig are unused)."""

    steps: int = field(default=100, metadata=doc("Rounds: each collects batch_size labelled pairs, then updates.",
                                                 ge=1))
    batch_size: int = field(default=256, metadata=doc("Trajectory pairs (= human queries) per round.", ge=1))
    lr: float = field(default=0.05, metadata=doc("Adam learning rate of the policy logits.", gt=0))
    updates_per_round: int = field(default=10, metadata=doc("Adam steps per round on all pairs collected so far.",
                                                            ge=1))
    minibatch: int = field(default=1024, metadata=doc("Pairs per Adam step, drawn from all pairs so far.", ge=1))
    annotator_link: Literal["bradley-terry", "thurstone", "weibull"] = field(default="bradley-terry", metadata=doc(
        "The simulated annotators' link."))
    annotator_temperature: float = field(default=1.0, metadata=doc("Annotator temperature T.", gt=0))
    gridworld_slip: float = field(default=0.2, metadata=doc("GridWorld: probability a move slips sideways.",
                                                            ge=0, le=1))
    gridworld_horizon: int = field(default=20, metadata=doc("GridWorld: moves per episode.", ge=1))


@dataclass
class TrajectoryDPOConfig(GridWorldBaselineConfig):
    beta: float = field(default=0.5, metadata=doc("DPO β: strength of the implicit KL to the uniform policy.", gt=0))


@dataclass
class RewardPPOConfig(GridWorldBaselineConfig):
    reward_features: Literal["state-action", "transition"] = field(default="state-action", metadata=doc(
        "r_φ(s, a) — the usual RLHF reward model — or r_φ(s, a, s'), which can represent the true reward exactly."))
    reward_lr: float = field(default=0.05, metadata=doc("Adam learning rate of the reward table.", gt=0))
    ppo_iterations: int = field(default=5, metadata=doc("PPO rollout batches per round.", ge=1))
    ppo_rollouts: int = field(default=256, metadata=doc("Episodes per PPO rollout batch (free: no queries).", ge=1))
    ppo_epochs: int = field(default=4, metadata=doc("Optimizer steps per PPO rollout batch.", ge=1))
    clip_range: float = field(default=0.2, metadata=doc("PPO ratio clip ε.", gt=0))


def _select(first: Trajectories, second: Trajectories, take_first: torch.Tensor) -> Trajectories:
    pick = take_first[:, None]
    return Trajectories(*(torch.where(pick, a, b) for a, b in zip(
        (first.states, first.actions, first.next_states, first.rewards, first.live),
        (second.states, second.actions, second.next_states, second.rewards, second.live))))


def _index(traj: Trajectories, rows: torch.Tensor) -> Trajectories:
    return Trajectories(traj.states[rows], traj.actions[rows], traj.next_states[rows], traj.rewards[rows],
                        traj.live[rows])


def _cat(parts: list[Trajectories]) -> Trajectories:
    return Trajectories(*(torch.cat([getattr(p, f) for p in parts]) for f in
                          ("states", "actions", "next_states", "rewards", "live")))


class PreferenceCollector:
    """Online pairs from the current policy, one annotator label each, accumulated as (chosen, rejected)."""

    def __init__(self, env: GridWorld, config: GridWorldBaselineConfig, generator: torch.Generator, tag: str):
        self.env, self.config, self.generator, self.tag = env, config, generator, tag
        self.annotator = Annotator(return_utility, link=config.annotator_link,
                                   temperature=config.annotator_temperature)
        self.ledger = QueryLedger()
        self.chosen: Trajectories | None = None
        self.rejected: Trajectories | None = None

    def collect(self, logits: torch.Tensor) -> None:
        n = self.config.batch_size
        a, b = self.env.sample(logits, n, self.generator), self.env.sample(logits, n, self.generator)
        probs = self.annotator.prob_from_margins(a.returns - b.returns)
        a_wins = repeated_preference_shares(probs, 1, self.generator, self.ledger, self.tag) > 0.5
        new_chosen, new_rejected = _select(a, b, a_wins), _select(b, a, a_wins)
        self.chosen = new_chosen if self.chosen is None else _cat([self.chosen, new_chosen])
        self.rejected = new_rejected if self.rejected is None else _cat([self.rejected, new_rejected])

    def minibatch(self) -> tuple[Trajectories, Trajectories]:
        """A uniform draw (with replacement) of ``minibatch`` pairs from everything collected so far."""
        rows = torch.randint(self.chosen.returns.shape[0], (self.config.minibatch,), generator=self.generator)
        return _index(self.chosen, rows), _index(self.rejected, rows)


def _log(history: list[dict], env: GridWorld, logits: torch.Tensor, ledger: QueryLedger, it: int, **extra) -> None:
    value, gradient = env.value_and_gradient(logits)
    history.append({"iteration": it + 1, "queries": ledger.total, "true_return": value,
                    "grad_norm": float(gradient.norm()), **extra})


def train_dpo_gridworld(config: TrajectoryDPOConfig, env: GridWorld | None = None) -> TrainResult:
    env = env or GridWorld(slip=config.gridworld_slip, horizon=config.gridworld_horizon)
    generator = torch.Generator().manual_seed(config.seed)
    logits = torch.zeros(env.num_states, env.num_actions, dtype=torch.float64, requires_grad=True)
    reference = torch.zeros_like(logits)
    optimizer = torch.optim.Adam([logits], lr=config.lr)
    data = PreferenceCollector(env, config, generator, "dpo")
    history: list[dict] = []
    for it in range(config.steps):
        data.collect(logits)
        for _ in range(config.updates_per_round):
            chosen, rejected = data.minibatch()
            ref_chosen, ref_rejected = trajectory_logprobs(reference, chosen), trajectory_logprobs(reference, rejected)
            loss, _ = dpo_loss(trajectory_logprobs(logits, chosen), trajectory_logprobs(logits, rejected),
                               ref_chosen, ref_rejected, config.beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _log(history, env, logits, data.ledger, it, loss=float(loss.detach()))
    return TrainResult(TabularPolicy(*logits.shape, logits.detach()), None, history, None, {"ledger": data.ledger})


def _trajectory_reward(reward: torch.Tensor, traj: Trajectories) -> torch.Tensor:
    """Per-move learnt rewards [B, H] (zero after absorption)."""
    if reward.dim() == 3:
        per_move = reward[traj.states, traj.actions, traj.next_states]
    else:
        per_move = reward[traj.states, traj.actions]
    return per_move * traj.live


def train_reward_ppo_gridworld(config: RewardPPOConfig, env: GridWorld | None = None) -> TrainResult:
    env = env or GridWorld(slip=config.gridworld_slip, horizon=config.gridworld_horizon)
    generator = torch.Generator().manual_seed(config.seed)
    S, A = env.num_states, env.num_actions
    logits = torch.zeros(S, A, dtype=torch.float64, requires_grad=True)
    shape = (S, A, S) if config.reward_features == "transition" else (S, A)
    reward = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    policy_opt = torch.optim.Adam([logits], lr=config.lr)
    reward_opt = torch.optim.Adam([reward], lr=config.reward_lr)
    data = PreferenceCollector(env, config, generator, "rm")
    history: list[dict] = []
    for it in range(config.steps):
        data.collect(logits)
        for _ in range(config.updates_per_round):  # Bradley–Terry MLE on all comparisons so far
            chosen, rejected = data.minibatch()
            rm_loss = bt_loss(_trajectory_reward(reward, chosen).sum(-1), _trajectory_reward(reward, rejected).sum(-1))
            reward_opt.zero_grad()
            rm_loss.backward()
            reward_opt.step()
        learnt = reward.detach()
        for _ in range(config.ppo_iterations):
            traj = env.sample(logits, config.ppo_rollouts, generator)
            step_rewards = _trajectory_reward(learnt, traj)
            reward_to_go = step_rewards.flip(-1).cumsum(-1).flip(-1)
            advantages = masked_whiten(reward_to_go, traj.live)
            with torch.no_grad():
                old = logits.log_softmax(-1)[traj.states, traj.actions]
            for _ in range(config.ppo_epochs):
                new = logits.log_softmax(-1)[traj.states, traj.actions]
                loss, _ = ppo_clip_loss(new, old, advantages, traj.live, config.clip_range)
                policy_opt.zero_grad()
                loss.backward()
                policy_opt.step()
        _log(history, env, logits, data.ledger, it, reward_loss=float(rm_loss.detach()))
    return TrainResult(TabularPolicy(*logits.shape, logits.detach()), None, history, None, {"ledger": data.ledger})

"""The stochastic GridWorld: dynamics, exact DP evaluation against Monte Carlo, the exact gradient against finite
differences, trajectory log-probabilities, and the two tabular baselines (trajectory DPO, reward model + PPO)."""

import math

import pytest
import torch

from preftune.suite.gridworld_baselines import (
    RewardPPOConfig,
    TrajectoryDPOConfig,
    train_dpo_gridworld,
    train_reward_ppo_gridworld,
)
from preftune.tasks.gridworld import GridWorld, return_utility, trajectory_logprobs


def _logits(seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_dynamics_are_distributions_and_goal_and_hazards_absorb():
    env = GridWorld()
    assert torch.allclose(env.transitions.sum(-1), torch.ones(16, 4, dtype=torch.float64))
    for cell in (env.cell(*env.goal), *(env.cell(*h) for h in env.hazards)):
        assert env.absorbing[cell]
        assert torch.all(env.transitions[cell, :, cell] == 1.0)
        assert torch.all(env.transition_rewards[cell] == 0.0)
    # from the start, "right" moves right with 1 − slip, slips down with slip/2, and into the wall (stays) with slip/2
    start = env.cell(0, 0)
    assert env.transitions[start, 1, env.cell(0, 1)] == pytest.approx(0.8)
    assert env.transitions[start, 1, env.cell(1, 0)] == pytest.approx(0.1)
    assert env.transitions[start, 1, start] == pytest.approx(0.1)


def test_deterministic_optimum_is_the_shortest_path():
    env = GridWorld(slip=0.0)
    assert env.optimal_value() == pytest.approx(env.goal_reward + 6 * env.step_reward)
    assert GridWorld(slip=0.2).optimal_value() < env.optimal_value()


def test_bad_gridworld_settings_name_the_field():
    with pytest.raises(ValueError, match="slip"):
        GridWorld(slip=1.5)
    with pytest.raises(ValueError, match="horizon"):
        GridWorld(horizon=0)
    with pytest.raises(ValueError, match="grid"):
        GridWorld(hazards=((7, 7),))


@pytest.mark.parametrize("seed", [0, 1])
def test_dp_value_matches_monte_carlo(seed):
    env = GridWorld()
    logits = _logits(seed)
    returns = env.sample(logits, 40_000, torch.Generator().manual_seed(seed)).returns
    standard_error = returns.std() / math.sqrt(returns.numel())
    assert abs(float(returns.mean()) - float(env.value(logits))) < 4 * standard_error


def test_batched_policies_sample_and_evaluate_like_single_ones():
    env = GridWorld()
    both = torch.stack([_logits(0), torch.zeros(16, 4, dtype=torch.float64)])
    traj = env.sample(both, 20_000, torch.Generator().manual_seed(0))
    assert traj.returns.shape == (2, 20_000)
    values = env.value(both)
    assert values[1] == pytest.approx(env.value(torch.zeros(16, 4)))
    assert torch.all((traj.returns.mean(-1) - values).abs() < 4 * traj.returns.std(-1) / math.sqrt(20_000))


def test_exact_gradient_matches_finite_differences():
    env = GridWorld()
    logits = _logits(3, scale=0.5)
    _, gradient = env.value_and_gradient(logits)
    h = 1e-5
    for s, a in [(0, 1), (0, 2), (4, 1), (7, 2), (14, 1)]:
        e = torch.zeros_like(logits)
        e[s, a] = h
        numeric = (env.value(logits + e) - env.value(logits - e)) / (2 * h)
        assert float(gradient[s, a]) == pytest.approx(float(numeric), abs=1e-8)
    # a whole random direction, and the goal/hazard rows that no action can change
    v = _logits(4)
    numeric = (env.value(logits + h * v) - env.value(logits - h * v)) / (2 * h)
    assert float((gradient * v).sum()) == pytest.approx(float(numeric), abs=1e-8)
    assert torch.all(gradient[env.absorbing] == 0)


def test_trajectory_logprobs_sum_live_moves_only():
    env = GridWorld()
    logits = _logits(5)
    traj = env.sample(logits, 64, torch.Generator().manual_seed(0))
    logp = logits.log_softmax(-1)
    for b in range(5):
        expected = sum(float(logp[traj.states[b, h], traj.actions[b, h]]) for h in range(env.horizon)
                       if not env.absorbing[traj.states[b, h]])
        assert float(trajectory_logprobs(logits, traj)[b]) == pytest.approx(expected)
    assert return_utility("", 1.5) == 1.5


def test_trajectory_dpo_and_reward_ppo_learn_and_count_one_query_per_pair():
    env = GridWorld()
    start = env.value(torch.zeros(16, 4))
    dpo = train_dpo_gridworld(TrajectoryDPOConfig(steps=15, batch_size=128, seed=0), env)
    rm = train_reward_ppo_gridworld(RewardPPOConfig(steps=15, batch_size=128, seed=0), env)
    for run in (dpo, rm):
        assert [h["queries"] for h in run.history] == [128 * (i + 1) for i in range(15)]
        assert run.extra["ledger"].total == 15 * 128
        assert run.history[-1]["true_return"] > float(start) + 0.3

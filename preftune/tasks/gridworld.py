"""The stochastic GridWorld of the zeroth-order paper (Zhang & Ying, arXiv 2409.17401, §experiments), with a
tabular softmax policy and exact dynamic-programming evaluation, so the true return of any policy is known.

Layout (preftune's choice; the paper's grid was not available), 4×4, row-major cells, start S, goal G, hazards H::

    S . . .
    . . . .
    . H H .
    . . . G

Actions: up, right, down, left. With probability ``1 − slip`` the agent moves as chosen; otherwise it slips to one
of the two perpendicular moves, each with probability ``slip/2`` (moving into a wall leaves it in place). Every move
from a live cell costs ``step_reward``; entering the goal pays ``goal_reward`` and entering a hazard
``hazard_reward``; both are absorbing (no further reward, actions ignored). An episode lasts ``horizon`` moves. The
shortest paths take 6 moves and pass the hazards through one of the two side columns, where a slip can be fatal.
Uniform policy: return −0.85; best policy: 1.54 at slip 0.2, 1.90 at slip 0. The reward sizes make the goal worth
the risk: with a smaller goal reward or a shorter horizon, gradient ascent from the uniform policy (even with the
exact gradient) settles on "never go near the hazards" and never finds the goal.

The annotator's utility of a trajectory is its return (the sum of its rewards), as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ACTIONS = ("up", "right", "down", "left")
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))


@dataclass
class Trajectories:
    """A batch of B episodes of ``horizon`` moves. ``live[b, h]`` is 1 where move h was taken from a non-absorbing
    cell (only those moves have consequences, so only they enter a trajectory's log-probability)."""

    states: torch.Tensor  # [B, H] long: the cell before each move
    actions: torch.Tensor  # [B, H] long
    next_states: torch.Tensor  # [B, H] long: the cell after each move
    rewards: torch.Tensor  # [B, H] float64
    live: torch.Tensor  # [B, H] float64, 1 on moves from non-absorbing cells

    @property
    def returns(self) -> torch.Tensor:
        return self.rewards.sum(-1)


@dataclass(frozen=True)
class GridWorld:
    name = "gridworld"
    description = "the zeroth-order paper's stochastic GridWorld: slippery moves, a goal, hazards; exact returns by DP"
    inputs = ("comparisons",)
    size: int = 4
    horizon: int = 20
    slip: float = 0.2
    step_reward: float = -0.02
    goal_reward: float = 2.0
    hazard_reward: float = -1.0
    start: tuple[int, int] = (0, 0)
    goal: tuple[int, int] = (3, 3)
    hazards: tuple[tuple[int, int], ...] = ((2, 1), (2, 2))

    def __post_init__(self) -> None:
        if not 0.0 <= self.slip <= 1.0:
            raise ValueError(f"gridworld slip must be in [0, 1], got {self.slip}")
        if self.horizon < 1:
            raise ValueError(f"gridworld horizon must be >= 1, got {self.horizon}")
        cells = [self.start, self.goal, *self.hazards]
        if any(not (0 <= r < self.size and 0 <= c < self.size) for r, c in cells):
            raise ValueError(f"start, goal and hazards must lie on the {self.size}x{self.size} grid, got {cells}")
        P, R = self._dynamics()
        object.__setattr__(self, "transitions", P)  # [S, A, S'] probabilities
        object.__setattr__(self, "transition_rewards", R)  # [S, A, S'] reward of each transition

    @property
    def num_states(self) -> int:
        return self.size * self.size

    @property
    def num_actions(self) -> int:
        return len(ACTIONS)

    def cell(self, row: int, col: int) -> int:
        return row * self.size + col

    @property
    def absorbing(self) -> torch.Tensor:
        """[S] bool: goal and hazard cells."""
        out = torch.zeros(self.num_states, dtype=torch.bool)
        for r, c in (self.goal, *self.hazards):
            out[self.cell(r, c)] = True
        return out

    def _dynamics(self) -> tuple[torch.Tensor, torch.Tensor]:
        S, A = self.size * self.size, len(ACTIONS)
        P = torch.zeros(S, A, S, dtype=torch.float64)
        R = torch.zeros(S, A, S, dtype=torch.float64)
        terminal_reward = {(r * self.size + c): self.hazard_reward for r, c in self.hazards}
        terminal_reward[self.goal[0] * self.size + self.goal[1]] = self.goal_reward
        for s in range(S):
            row, col = divmod(s, self.size)
            if s in terminal_reward:  # absorbing: stay, no reward
                P[s, :, s] = 1.0
                continue
            for a in range(A):
                perpendicular = ((a + 1) % 4, (a + 3) % 4)
                for move, prob in ((a, 1.0 - self.slip), (perpendicular[0], self.slip / 2),
                                   (perpendicular[1], self.slip / 2)):
                    r = min(max(row + MOVES[move][0], 0), self.size - 1)
                    c = min(max(col + MOVES[move][1], 0), self.size - 1)
                    P[s, a, r * self.size + c] += prob
                for s2 in range(S):
                    R[s, a, s2] = self.step_reward + terminal_reward.get(s2, 0.0)
        return P, R

    # ------------------------------------------------------------------ exact evaluation
    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """The true expected return J(θ) from the start cell of the softmax policy π(a|s) = softmax(θ[s])_a, by
        backward dynamic programming over the horizon: V_H = 0, V_h(s) = Σ_a π(a|s) Σ_s' P(s'|s,a)(R(s,a,s') +
        V_{h+1}(s')). Differentiable in ``logits`` ([..., S, A], any batch shape), so autograd gives ∇J exactly."""
        policy = logits.to(torch.float64).softmax(-1)
        expected_reward = (self.transitions * self.transition_rewards).sum(-1)  # [S, A]
        values = torch.zeros(policy.shape[:-1], dtype=torch.float64)
        for _ in range(self.horizon):
            q = expected_reward + torch.einsum("sat,...t->...sa", self.transitions, values)
            values = (policy * q).sum(-1)
        return values[..., self.cell(*self.start)]

    def value_and_gradient(self, logits: torch.Tensor) -> tuple[float, torch.Tensor]:
        """J(θ) and its exact gradient ∇_θ J ([S, A]) through the dynamic program."""
        theta = logits.detach().to(torch.float64).requires_grad_(True)
        value = self.value(theta)
        (gradient,) = torch.autograd.grad(value, theta)
        return float(value.detach()), gradient

    def optimal_value(self) -> float:
        """The best return any (non-stationary) policy can reach, by value iteration; a stationary softmax
        policy can approach it but need not reach it."""
        expected_reward = (self.transitions * self.transition_rewards).sum(-1)
        values = torch.zeros(self.num_states, dtype=torch.float64)
        for _ in range(self.horizon):
            values = (expected_reward + self.transitions @ values).max(-1).values
        return float(values[self.cell(*self.start)])

    # ------------------------------------------------------------------ sampling
    def sample(self, logits: torch.Tensor, num: int, generator: torch.Generator | None = None) -> Trajectories:
        """``num`` independent episodes of the softmax policy ``logits`` [S, A], all stepped together. A batch of
        policies [K, S, A] gives ``num`` episodes of each, as tensors [K, num, H]."""
        policy = logits.detach().to(torch.float64).softmax(-1)
        batch_shape = policy.shape[:-2]
        policy = policy.reshape(-1, self.num_states, self.num_actions)  # [K, S, A]
        which = torch.arange(policy.shape[0]).repeat_interleave(num)  # the policy of each episode
        absorbing = self.absorbing
        state = torch.full((which.numel(),), self.cell(*self.start), dtype=torch.long)
        states, actions, next_states, rewards, live = [], [], [], [], []
        policy_cdf, transition_cdf = policy.cumsum(-1), self.transitions.cumsum(-1)
        for _ in range(self.horizon):
            action = _draw(policy_cdf[which, state], generator)
            nxt = _draw(transition_cdf[state, action], generator)
            states.append(state)
            actions.append(action)
            next_states.append(nxt)
            rewards.append(self.transition_rewards[state, action, nxt])
            live.append((~absorbing[state]).to(torch.float64))
            state = nxt
        return Trajectories(*(torch.stack(x, 1).reshape(*batch_shape, num, self.horizon)
                              for x in (states, actions, next_states, rewards, live)))

def _draw(cdf: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One categorical draw per row by inverting its CDF with one uniform (cheaper than `torch.multinomial`)."""
    u = torch.rand((cdf.shape[0], 1), dtype=cdf.dtype, generator=generator) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def trajectory_logprobs(logits: torch.Tensor, trajectories: Trajectories) -> torch.Tensor:
    """Σ_h log π(a_h|s_h) over the live moves of each trajectory, [B], differentiable in ``logits``. The transition
    probabilities are left out — which is what makes DPO on trajectories misspecified when moves slip."""
    logp = logits.log_softmax(-1)[trajectories.states, trajectories.actions]
    return (logp * trajectories.live.to(logp.dtype)).sum(-1)


def return_utility(prompt: str, trajectory_return: float) -> float:
    """The annotator's utility of a trajectory: its return (``prompt`` is unused; GridWorld has no prompts)."""
    return float(trajectory_return)

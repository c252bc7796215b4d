"""ZPG and ZBCPG (Zhang & Ying, Zeroth-Order Policy Gradient for RLHF without Reward Inference, arXiv 2409.17401):
policy gradient straight from human comparisons, with no reward model.

One iteration, for a tabular GridWorld policy or a language model alike (`zeroth_order_step`):

1. draw a direction v uniformly on the unit sphere of the perturbed coordinates — all of them (ZPG), or one random
   block of ``block_size`` coordinates of a fixed partition (ZBCPG);
2. sample N trajectories τ_i from π_θ and N trajectories τ'_i from π_{θ+μv} (for an LM: one response to each of N
   prompts from each policy, so pair i shares prompt i);
3. ask M annotators about each pair (N·M queries, all through the ledger); p̂_i = share preferring τ'_i. On an LM the
   annotators are any `FeedbackSource`: the simulated ones of a task, a reward model, an LLM judge, a user's function;
4. ĝ = (d/μ)·mean_i σ⁻¹(clip(p̂_i))·v with the learner's link σ (`losses.zpg_gradient`), d = dim of v;
5. θ ← θ + α·ĝ (plain gradient ascent, as in the paper; for ZBCPG only the block moves).

The perturbed coordinates of an LM are all trainable weights (``perturb="all"``), fresh LoRA adapters
(``perturb="lora"``), or the weights whose names match ``param_filter`` (a fixed block).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from preftune.config import ConfigError
from preftune.data import as_prompts, check_prompts_fit
from preftune.feedback import FeedbackSource, QueryLedger, ask_preference_shares, repeated_preference_shares
from preftune.losses import preference_value_difference, zpg_gradient
from preftune.methods.configs import ZPGConfig
from preftune.models import load_policy
from preftune.rollout import generate
from preftune.tasks.gridworld import GridWorld, return_utility
from preftune.trainer import Trainer, TrainResult, batch_indices

# ----------------------------------------------------------------------------------------------
# The perturbed coordinates and one iteration, shared by the tabular and the LM policy


class FlatParameters:
    """Tensors seen as one vector of their d coordinates, so a direction or a step is one flat tensor."""

    def __init__(self, tensors: Sequence[torch.Tensor]):
        if not tensors:
            raise ConfigError("no parameters to perturb (check perturb / param_filter)")
        self.tensors = list(tensors)
        self.sizes = [t.numel() for t in self.tensors]
        self.dim = sum(self.sizes)

    @torch.no_grad()
    def add_(self, vector: torch.Tensor, alpha: float) -> None:
        for t, chunk in zip(self.tensors, vector.split(self.sizes)):
            t.add_(chunk.view_as(t).to(t.dtype), alpha=alpha)


def draw_direction(dim: int, config: ZPGConfig, generator: torch.Generator) -> tuple[torch.Tensor, slice]:
    """A unit direction on all ``dim`` coordinates (ZPG) or on one block of a fixed partition into blocks of
    ``block_size`` (ZBCPG, block drawn uniformly); returns the block-sized direction and where it sits."""
    block = slice(0, dim)
    if config.algorithm == "zbcpg":
        num_blocks = math.ceil(dim / config.block_size)
        k = int(torch.randint(num_blocks, (1,), generator=generator))
        block = slice(k * config.block_size, min((k + 1) * config.block_size, dim))
    v = torch.randn(block.stop - block.start, generator=generator, dtype=torch.float64)
    return v / v.norm(), block


def zeroth_order_step(params: FlatParameters, config: ZPGConfig, sample: Callable[[], object],
                      preference_shares: Callable[[object, object], torch.Tensor], generator: torch.Generator,
                      utilities: Callable[[object], torch.Tensor] | None = None) -> dict:
    """One ZPG/ZBCPG iteration (module docstring). ``sample()`` draws N trajectories of the *current* parameters;
    ``preference_shares(base, perturbed)`` asks M labels per pair and returns each pair's share preferring the
    perturbed one. ``utilities(trajectories)``, when known (returns, a task's oracle reward), adds the true value
    difference and the score to the stats; the annotators never show them."""
    direction, block = draw_direction(params.dim, config, generator)
    embedded = torch.zeros(params.dim, dtype=torch.float64)
    embedded[block] = direction
    base = sample()
    params.add_(embedded, config.mu)  # in place: no second model; removing it again costs only float rounding
    try:
        perturbed = sample()
    finally:
        params.add_(embedded, -config.mu)
    p_hat = preference_shares(base, perturbed)  # shares preferring τ' to τ
    gradient = zpg_gradient(p_hat, direction, config.mu, config.link, config.clip_eps, config.link_shape)
    step = torch.zeros_like(embedded)
    step[block] = gradient
    params.add_(step, config.lr)
    eps = config.clip_eps
    stats = {"value_difference": float(preference_value_difference(p_hat, config.link, eps, config.link_shape)),
             "clipped_fraction": float(((p_hat <= eps) | (p_hat >= 1 - eps)).double().mean())}
    if utilities is not None:
        base_utility, perturbed_utility = utilities(base), utilities(perturbed)
        stats.update(true_difference=float((perturbed_utility - base_utility).mean()),  # what Δ̂ estimates
                     score=float(base_utility.mean()))
    return stats


# ----------------------------------------------------------------------------------------------
# Tabular softmax policy in the GridWorld


class TabularPolicy(nn.Module):
    """A softmax policy over a finite state and action space: ``logits[s, a]``, a buffer (no parameters: ZPG moves
    it by hand). It is its own checkpoint state (`Trainer` saves its ``state_dict``)."""

    def __init__(self, num_states: int, num_actions: int, logits: torch.Tensor | None = None):
        super().__init__()
        start = torch.zeros(num_states, num_actions, dtype=torch.float64) if logits is None else logits.clone()
        self.register_buffer("logits", start)


class GeneratorState:
    """A `torch.Generator` as a checkpoint state object."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])


def save_tabular_policy(policy: TabularPolicy, tokenizer, directory: str | Path) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"logits": policy.logits.contiguous()}, str(directory / "policy.safetensors"))
    return directory


def train_zpg_gridworld(config: ZPGConfig, env: GridWorld | None = None, policy: TabularPolicy | None = None,
                        ) -> TrainResult:
    """ZPG/ZBCPG on a tabular softmax policy (uniform start); logs the exact return and ‖∇J‖ every iteration.
    ``extra["ledger"]`` counts the queries."""
    env = env or GridWorld(slip=config.gridworld_slip, horizon=config.gridworld_horizon)
    policy = policy or TabularPolicy(env.num_states, env.num_actions)
    generator = torch.Generator().manual_seed(config.seed)
    ledger = QueryLedger(config.query_budget)
    annotator = config.annotator(return_utility)
    params = FlatParameters([policy.logits])
    trainer = Trainer(config, policy, name=config.algorithm,
                      state_objects=[ledger, policy, GeneratorState(generator)])

    def shares(base: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:  # P(τ' ≻ τ) from the returns
        probs = annotator.prob_from_margins(perturbed - base)
        return repeated_preference_shares(probs, config.annotators_per_pair, generator, ledger, "zpg")

    def iteration(it: int) -> dict:
        stats = zeroth_order_step(params, config,
                                  lambda: env.sample(policy.logits, config.batch_size, generator).returns,
                                  shares, generator, utilities=lambda returns: returns)
        value, gradient = env.value_and_gradient(policy.logits)
        return {**stats, "queries": ledger.total, "true_return": value, "grad_norm": float(gradient.norm())}

    trainer.fit(iteration, config.steps, description=f"{config.algorithm} (gridworld)")
    return trainer.finish(save=save_tabular_policy, ledger=ledger)


# ----------------------------------------------------------------------------------------------
# Language model


def perturbed_parameters(model, config: ZPGConfig) -> list[torch.Tensor]:
    """The LM weights ZPG perturbs: every trainable one (LoRA adapters only when the model has them), optionally
    restricted to names matching ``param_filter``."""
    pattern = re.compile(config.param_filter) if config.param_filter else None
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and (pattern is None or pattern.search(n))]
    if not named:
        raise ConfigError(f"config field 'param_filter' ({config.param_filter!r}) matches no trainable parameter; "
                          f"names look like {[n for n, _ in model.named_parameters()][:4]}")
    return [p for _, p in named]


def train_zpg_lm(config: ZPGConfig, prompts: Sequence[str], feedback: FeedbackSource | Callable[[str, str], float],
                 model=None, tokenizer=None, oracle: Callable[[str, str], float] | None = None) -> TrainResult:
    """ZPG/ZBCPG on a causal LM: N prompts per iteration, one response from π_θ and one from π_{θ+μv} to each,
    each pair judged M times by ``feedback``: a `FeedbackSource`, or a utility ``u(prompt, response)`` (a task's
    oracle reward) judged by the config's simulated annotators. ``oracle`` (the utility itself when one is given)
    adds the true score to the metrics. ``extra["ledger"]`` counts the queries."""
    if config.perturb == "lora" and not config.lora:
        config = dataclasses.replace(config, lora=True)
    if not isinstance(feedback, FeedbackSource):
        feedback, oracle = config.annotator(feedback), oracle or feedback
    policy, tokenizer = load_policy(config, model, tokenizer)
    prompts = as_prompts(prompts, tokenizer)  # strings, or TRL prompt-only rows (conversational: templated)
    check_prompts_fit(tokenizer, prompts, config.max_new_tokens, policy)
    ledger = QueryLedger(config.query_budget)
    generator = torch.Generator().manual_seed(config.seed)
    trainer = Trainer(config, policy, name=config.algorithm, state_objects=[ledger])
    params = FlatParameters(perturbed_parameters(trainer.unwrapped_model(), config))

    def iteration(it: int) -> dict:
        started = time.perf_counter()
        batch = [prompts[i] for i in batch_indices(len(prompts), config.batch_size, config.seed, it)]

        def sample() -> list[str]:
            return generate(trainer.model, tokenizer, batch, config.max_new_tokens,
                            temperature=config.temperature).texts

        def shares(base: list[str], perturbed: list[str]) -> torch.Tensor:
            return ask_preference_shares(feedback, batch, perturbed, base, config.annotators_per_pair, generator,
                                         ledger, "zpg")

        def utilities(texts: list[str]) -> torch.Tensor:
            return torch.tensor([oracle(p, t) for p, t in zip(batch, texts)], dtype=torch.float64)

        generator.manual_seed(config.seed * 1_000_003 + it)  # direction and labels: a pure function of (seed, it)
        torch.manual_seed(config.seed * 1_000_033 + it)  # sampling, likewise
        stats = zeroth_order_step(params, config, sample, shares, generator, utilities if oracle else None)
        return {**stats, "queries": ledger.total, "perturbed_dim": params.dim,
                "seconds_per_iteration": time.perf_counter() - started}

    trainer.fit(iteration, config.steps, description=config.algorithm)
    return trainer.finish(tokenizer, ledger=ledger)

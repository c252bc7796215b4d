"""Reward Learning on Policy (RLP; Lang, Huang, Li, NAACL 2024, arXiv 2403.19279).

A reward model fitted to the SFT model's outputs grows inaccurate on the RL policy's outputs, and PPO exploits it.
RLP retrains the reward model on samples *from the policy*, without new human labels:

    SFT → reward model on human pairs D → PPO → n samples per instruction from the PPO policy
        → retrain the reward model (UML or SPG) → PPO again, from the SFT policy, on the retrained reward model

- **RLP-UML**: two policy responses to one instruction are two views; Gaussian encoders on the reward model's last
  hidden state give z1, z2; the multi-view information bottleneck (`losses.mib_loss`) is added to the Bradley–Terry
  loss on D with weight λ (docs/methods.md, (R1)–(R5)).
- **RLP-SPG**: cluster each instruction's n samples by semantic equivalence; keep the instruction if the largest
  cluster holds at least half of them; chosen = the largest cluster's response the current reward model scores
  highest, rejected = a random response of another cluster; retrain on D ∪ D̂ (R6).
- Baselines at the same samples and labels: **Select-All** (every largest-cluster × other-cluster pair, no filter)
  and **RLAIF** (the current reward model labels a random pair of samples).

`preftune.methods.rlp_pipeline.train_rlp` runs the whole pipeline on these pieces.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from preftune.config import ConfigError, TrainConfig, doc
from preftune.data import Demo, Pair, collate_demos, collate_pairs
from preftune.losses import bt_loss, mib_loss
from preftune.models import RewardModel
from preftune.trainer import GradientStep, Trainer, TrainResult

METHODS = ("uml", "spg", "select-all", "rlaif")
Equivalence = Callable[[str, str, str], bool]  # (prompt, response_a, response_b) -> do they mean the same?


@dataclass
class RLPConfig(TrainConfig):
    """The whole pipeline. The inherited optimiser fields (steps, lr, batch_size, ...) are RLP's own stage, the
    reward-model retraining; the other stages have their own ``<stage>_`` fields, defaulting to `preftune run`'s."""

    method_name = "rlp"
    method: Literal["uml", "spg", "select-all", "rlaif"] = field(default="spg", metadata=doc(
        "How the reward model learns from policy samples: uml (multi-view information bottleneck), spg (synthetic "
        "preferences), select-all or rlaif (the baselines)."))
    task: str = field(default="preference-language", metadata=doc("Built-in task (see `preftune tasks`)."))
    # --- the stages before RLP (defaults: `preftune run`'s sizes)
    demos: int = field(default=4000, metadata=doc("Teacher demonstrations for SFT.", ge=1))
    sft_steps: int = field(default=800, metadata=doc("SFT optimizer steps.", ge=1))
    human_pairs: int = field(default=40000, metadata=doc("Annotator-labelled pairs D for the reward model.", ge=1))
    feedback: str = field(default="annotator", metadata=doc(
        "Who labels the pairs D: 'annotator' (the task's simulated annotator) or a feedback source, module:function, "
        "rm:DIR or judge:DIR[:TEMPLATE.txt] (docs/your-data.md)."))
    reward_steps: int = field(default=350, metadata=doc("Optimizer steps of the first reward model.", ge=1))
    ppo_steps: int = field(default=100, metadata=doc("PPO iterations (both PPO stages).", ge=1))
    ppo_kl_coef: float = field(default=0.2, metadata=doc(
        "PPO's KL coefficient against a learned reward model (`preftune run`'s RM_KL_COEF).", ge=0))
    # --- policy samples
    policy_instructions: int = field(default=2000, metadata=doc(
        "Training instructions drawn (with repeats) to sample the PPO policy on.", ge=1))
    samples_per_instruction: int = field(default=10, metadata=doc("n: policy samples per instruction.", ge=2))
    sample_temperature: float = field(default=1.0, metadata=doc("Temperature of the policy samples.", gt=0))
    # --- RLP's own stage: retraining the reward model (continues from the first one)
    steps: int = field(default=100, metadata=doc("Optimizer steps of the reward-model retraining.", ge=1))
    batch_size: int = field(default=128, metadata=doc("Pairs per retraining step (also the first RM's).", ge=1))
    lr: float = field(default=3e-4, metadata=doc("Peak learning rate of the retraining.", gt=0))
    confidence_threshold: float = field(default=0.5, metadata=doc(
        "SPG keeps an instruction when its largest cluster holds at least this share of the n samples.", ge=0, le=1))
    synthetic_share: float | None = field(default=None, metadata=doc(
        "spg/select-all/rlaif: share of every batch drawn from the synthetic pairs D̂; none = sample D ∪ D̂ "
        "uniformly (the paper's union).", ge=0, le=0.95))
    uml_weight: float = field(default=1.0, metadata=doc("λ: weight of the UML loss beside the BT loss.", ge=0))
    uml_lr: float = field(default=1e-3, metadata=doc(
        "Peak learning rate of the UML encoder and critic (trained from scratch; the reward model uses lr).", gt=0))
    uml_beta: float = field(default=1e-3, metadata=doc(
        "β: weight of the symmetric KL inside the UML loss (Federici et al.'s starting value).", ge=0))
    latent_dim: int = field(default=64, metadata=doc("Dimension of the UML encoders' z.", ge=1))
    match_reward_scale: bool = field(default=True, metadata=doc(
        "Rescale the retrained reward model to the first one's spread on the policy samples, so the second PPO's "
        "KL coefficient means what it meant for the first (a Bradley–Terry reward's scale is arbitrary)."))
    # --- evaluation
    eval_prompts: int = field(default=400, metadata=doc("Held-out prompts for win rates.", ge=1))
    best_of: int = field(default=16, metadata=doc("N of the Best-of-N baseline (reward model).", ge=1))
    judge_flip_prob: float = field(default=0.25, metadata=doc(
        "Label-flip probability of the simulated win-rate judge (AlpacaFarm's 0.25).", ge=0, le=0.5))
    policy_eval_pairs: int = field(default=400, metadata=doc(
        "Prompts whose two PPO-policy samples, labelled by the oracle, measure reward models on policy outputs.",
        ge=1))

    def check(self) -> None:
        super().check()
        from preftune.tasks import TASKS

        if self.task not in TASKS:
            raise ConfigError(f"config field 'task' must be one of {sorted(TASKS)}, got {self.task!r}")


# ----------------------------------------------------------------------------------------------
# Semantic clusters and synthetic preferences (RLP-SPG and its baselines)


def key_equivalence(key: Callable[[str, str], Hashable]) -> Equivalence:
    """Exact equivalence from a canonical key: responses are equivalent iff their keys are equal."""
    return lambda prompt, a, b: key(prompt, a) == key(prompt, b)


def task_equivalence(task) -> Equivalence:
    """The built-in tasks' exact equivalence: ``task.canonical_form`` (final answer for arithmetic, the multiset of
    words for preference-language, normalised text otherwise). An NLI model's bidirectional entailment (the paper's)
    or an embedding similarity plugs in as any other `Equivalence`."""
    return key_equivalence(task.canonical_form)


def cluster_responses(prompt: str, responses: Sequence[str], equivalent: Equivalence) -> list[list[int]]:
    """Greedy semantic clustering (Kuhn et al. 2023, Alg. 1): each response joins the first cluster whose first
    member it is equivalent to, else starts a new one. Returns clusters of indices, in order of first appearance."""
    clusters: list[list[int]] = []
    for i, response in enumerate(responses):
        for cluster in clusters:
            if equivalent(prompt, responses[cluster[0]], response):
                cluster.append(i)
                break
        else:
            clusters.append([i])
    return clusters


def largest_cluster(clusters: list[list[int]], scores: Sequence[float]) -> int:
    """Index of the largest cluster; a tie goes to the cluster holding the highest-scored response."""
    return max(range(len(clusters)), key=lambda c: (len(clusters[c]), max(scores[i] for i in clusters[c])))


def spg_pairs(prompt: str, responses: Sequence[str], scores: Sequence[float], equivalent: Equivalence,
              threshold: float, rng: random.Random) -> tuple[Pair | None, float]:
    """RLP-SPG for one instruction (docs (R6)): (the synthetic pair or None, confidence).

    confidence = |largest cluster| / n; below ``threshold`` (or with a single cluster: nothing to reject) no pair.
    chosen = the largest cluster's response with the highest reward-model score; rejected = a uniformly random
    response of another cluster.
    """
    clusters = cluster_responses(prompt, responses, equivalent)
    top = largest_cluster(clusters, scores)
    confidence = len(clusters[top]) / len(responses)
    others = [i for c, members in enumerate(clusters) if c != top for i in members]
    if confidence < threshold or not others:
        return None, confidence
    chosen = max(clusters[top], key=lambda i: scores[i])
    return Pair(prompt, responses[chosen], responses[rng.choice(others)]), confidence


def select_all_pairs(prompt: str, responses: Sequence[str], scores: Sequence[float],
                     equivalent: Equivalence) -> list[Pair]:
    """Select-All baseline: every (largest-cluster, other-cluster) response pair, no confidence filter."""
    clusters = cluster_responses(prompt, responses, equivalent)
    top = largest_cluster(clusters, scores)
    others = [i for c, members in enumerate(clusters) if c != top for i in members]
    return [Pair(prompt, responses[i], responses[j]) for i in clusters[top] for j in others]


def rlaif_pair(prompt: str, responses: Sequence[str], scores: Sequence[float], rng: random.Random) -> Pair | None:
    """RLAIF-style self-labelling: two random responses with different texts, labelled by the current reward model
    (higher score = chosen). None if all responses are the same text."""
    order = list(range(len(responses)))
    rng.shuffle(order)
    first = order[0]
    second = next((j for j in order[1:] if responses[j] != responses[first]), None)
    if second is None:
        return None
    if scores[second] > scores[first]:
        first, second = second, first
    return Pair(prompt, responses[first], responses[second])


def synthetic_pairs(method: str, groups: Sequence[tuple[str, list[str], list[float]]], equivalent: Equivalence,
                    threshold: float, seed: int) -> tuple[list[Pair], dict]:
    """D̂ for spg, select-all or rlaif from (prompt, n responses, their reward-model scores) groups, with stats."""
    rng = random.Random(seed)
    pairs: list[Pair] = []
    confidences = []
    for prompt, responses, scores in groups:
        if method == "spg":
            pair, confidence = spg_pairs(prompt, responses, scores, equivalent, threshold, rng)
            confidences.append(confidence)
            pairs += [pair] if pair else []
        elif method == "select-all":
            pairs += select_all_pairs(prompt, responses, scores, equivalent)
        elif method == "rlaif":
            pair = rlaif_pair(prompt, responses, scores, rng)
            pairs += [pair] if pair else []
        else:
            raise ValueError(f"synthetic pairs: method must be spg, select-all or rlaif, got {method!r}")
    stats = {"pairs": len(pairs), "instructions": len(groups)}
    if confidences:
        stats["mean_confidence"] = sum(confidences) / len(confidences)
    return pairs, stats


# ----------------------------------------------------------------------------------------------
# RLP-UML: Gaussian encoders and a critic on the reward model's last hidden state


class GaussianEncoder(nn.Module):
    """p(z | v) = N(μ(h), diag σ²(h)) from a small MLP on the reward model's last hidden state h."""

    def __init__(self, hidden_size: int, latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 2 * latent_dim))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw_scale = self.net(h).chunk(2, dim=-1)
        scale = nn.functional.softplus(raw_scale) + 1e-4  # σ > 0 (Federici et al. use softplus too)
        return mean, 2 * torch.log(scale)


class UMLModel(nn.Module):
    """The reward model plus what only the UML loss needs: one encoder shared by both views (the two responses are
    exchangeable draws of one policy) and the critic T(z1, z2) of the Jensen–Shannon estimator."""

    def __init__(self, reward_model: RewardModel, latent_dim: int, seed: int = 0):
        super().__init__()
        self.reward_model = reward_model
        hidden = reward_model.config.hidden_size
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.encoder = GaussianEncoder(hidden, latent_dim)
            self.critic = nn.Sequential(nn.Linear(2 * latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, views: tuple | None = None,
                beta: float = 0.0):
        """Rewards of the pairs; with ``views`` = (ids_1, mask_1, ids_2, mask_2) also (L_MIB, diagnostics), so that a
        training step runs every parameter through one forward (DDP sees them all)."""
        rewards = self.reward_model(input_ids, attention_mask)
        return rewards if views is None else (rewards, *self.uml_loss(*views, beta))

    def uml_loss(self, views_1: torch.Tensor, mask_1: torch.Tensor, views_2: torch.Tensor, mask_2: torch.Tensor,
                 beta: float) -> tuple[torch.Tensor, dict]:
        """L_MIB on a batch of view pairs; negatives pair z1 with the next row's z2 (Federici et al.'s roll)."""
        mean_1, logvar_1 = self.encoder(self.reward_model.hidden_states(views_1, mask_1))
        mean_2, logvar_2 = self.encoder(self.reward_model.hidden_states(views_2, mask_2))
        z1 = mean_1 + torch.exp(0.5 * logvar_1) * torch.randn_like(mean_1)  # reparametrised samples
        z2 = mean_2 + torch.exp(0.5 * logvar_2) * torch.randn_like(mean_2)
        joint = self.critic(torch.cat([z1, z2], -1))
        marginal = self.critic(torch.cat([torch.roll(z1, 1, 0), z2], -1))
        return mib_loss(joint, marginal, mean_1, logvar_1, mean_2, logvar_2, beta)


def view_pairs(groups: Sequence[tuple[str, list[str]]], count: int, generator: torch.Generator
               ) -> tuple[list[Demo], list[Demo]]:
    """``count`` view pairs: a random instruction and two of its samples at distinct positions."""
    first, second = [], []
    for g in torch.randint(len(groups), (count,), generator=generator).tolist():
        prompt, responses = groups[g]
        i, j = torch.randperm(len(responses), generator=generator)[:2].tolist()
        first.append(Demo(prompt, responses[i]))
        second.append(Demo(prompt, responses[j]))
    return first, second


def retrain_reward_model(config: RLPConfig, reward_model: RewardModel, tokenizer, pairs: Sequence[Pair],
                         view_groups: Sequence[tuple[str, list[str]]] | None = None) -> TrainResult:
    """Continue training ``reward_model`` with the Bradley–Terry loss on ``pairs`` (D, or D ∪ D̂), plus
    λ · L_MIB on policy-sample views when ``view_groups`` is given (RLP-UML, docs (R5))."""
    model = UMLModel(reward_model, config.latent_dim, config.seed) if view_groups else reward_model
    # the encoder and critic start from scratch, so they get their own (larger) step: at the reward model's 3e-4
    # the Jensen–Shannon estimate stayed at its uninformed −2 log 2 for all 100 steps (docs/benchmarks.md)
    lr_overrides = {model.encoder: config.uml_lr, model.critic: config.uml_lr} if view_groups else None
    trainer = Trainer(config, model, name="rlp-reward")
    step = GradientStep(trainer, lr_overrides=lr_overrides)

    def loss_fn(indices: list[int]):
        batch = collate_pairs(tokenizer, [pairs[i] for i in indices], config.max_length).to(trainer.device)
        views = None
        if view_groups:
            # the views of a step are a pure function of (seed, step, batch), so a resumed run draws the same ones
            g = torch.Generator().manual_seed((config.seed * 1_000_003 + trainer.iteration) * 1_009 + indices[0])
            first, second = view_pairs(view_groups, len(indices), g)
            v1 = collate_demos(tokenizer, first, config.max_length).to(trainer.device)
            v2 = collate_demos(tokenizer, second, config.max_length).to(trainer.device)
            views = (v1.input_ids, v1.attention_mask, v2.input_ids, v2.attention_mask)
        out = trainer.model(batch.input_ids, batch.attention_mask, views, config.uml_beta) if views \
            else trainer.model(batch.input_ids, batch.attention_mask)
        rewards = out[0] if views else out
        chosen, rejected = rewards[: len(indices)], rewards[len(indices):]
        loss = bt_loss(chosen, rejected)
        metrics = {"accuracy": (chosen > rejected).float().mean().item(), "bt_loss": loss.item()}
        if views:
            uml, diagnostics = out[1], out[2]
            loss = loss + config.uml_weight * uml
            metrics.update(uml_loss=uml.item(), **diagnostics)
        return loss, metrics

    trainer.fit_dataset(len(pairs), step, loss_fn, description=f"rlp-{config.method} reward model")
    trained = trainer.unwrapped_model()
    trained = trained.reward_model if isinstance(trained, UMLModel) else trained
    return trainer.finish(tokenizer, model=trained, save=lambda rm, tok, directory: rm.save_pretrained(directory, tok))


def match_reward_scale(reward_model: RewardModel, target: RewardModel, tokenizer, prompts: Sequence[str],
                       responses: Sequence[str], max_length: int) -> float:
    """Scale ``reward_model``'s head in place so its rewards have ``target``'s standard deviation on ``responses``
    (the policy samples); returns the factor. A Bradley–Terry reward's scale is arbitrary — only differences are
    fitted — but PPO's KL penalty is in reward units: a retrained model whose spread on policy outputs grew would in
    effect give the second PPO a weaker KL coefficient than the first."""
    from preftune.rewards import reward_model_reward

    spread = [torch.tensor(reward_model_reward(m, tokenizer, max_length)(list(prompts), list(responses))).std()
              for m in (reward_model, target)]
    factor = float(spread[1] / spread[0])
    with torch.no_grad():
        reward_model.head.weight.mul_(factor)
        reward_model.head.bias.mul_(factor)
    return factor


def mixed_pairs(human: Sequence[Pair], synthetic: Sequence[Pair], share: float | None) -> list[Pair]:
    """D ∪ D̂ (``share`` None), or D with D̂ repeated so about ``share`` of uniformly drawn pairs are synthetic."""
    if share is None or not synthetic:
        return list(human) + list(synthetic)
    repeats = max(1, round(share / (1 - share) * len(human) / len(synthetic)))
    return list(human) + list(synthetic) * repeats

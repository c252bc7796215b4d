"""IQLearn for language (Wulfmeier et al. 2024, arXiv 2409.01369): inverse RL as TD-regularised MLE.

The LM's logits are soft Q-values, V = logsumexp(logits), π = softmax(logits). Offline IQLearn minimises

    mean_t[−log π(a_t|s_t)] + λ · mean_t[(Q(s_t, a_t) − γ·V(s_{t+1}))²]

over the demonstrations' response tokens (`iq_td_loss`, Eq. 14); λ = 0 is SFT. Online (``alpha`` > 0) a fraction
α of every batch is replaced by fresh samples of the current policy for the same kind of prompts (demonstration
prompts, one sample each, drawn with `rollout.generate` before each step: on-policy, no replay buffer). They enter
IQ-Learn's value term and χ² term, both taken over the mixture (1−α)·expert + α·policy; the likelihood stays on
the demonstrations (`iq_online_loss`, derivation in docs/methods.md).

The reward the trained Q implies, r_t = Q(s_t, a_t) − γ·V(s_{t+1}), summed over a response
(`iq_sequence_rewards`), scores any response: `score_sequence_rewards`, `preftune eval --reward-from`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from preftune.data import DataError, Demo, as_records, check_fits, collate_demos
from preftune.losses import iq_online_loss, iq_sequence_rewards, iq_td_loss
from preftune.methods.configs import IQLearnConfig, mixture_problem
from preftune.metrics import reward_model_accuracy, spearman
from preftune.models import load_policy, save_causal_lm
from preftune.rollout import generate, label_scores
from preftune.trainer import GradientStep, Trainer, TrainingError, TrainResult, batch_indices

IQ_SETTINGS_FILE = "iqlearn.json"  # beside the saved model: the γ its extracted reward needs


def _demo_labels(tokenizer, demos: Sequence[Demo], max_length: int, device):
    batch = collate_demos(tokenizer, demos, max_length).to(device)
    return batch.input_ids, batch.attention_mask, batch.response_mask


def train_iqlearn(config: IQLearnConfig, demos: Sequence[Demo], model=None, tokenizer=None,
                  callback: Callable[[int, torch.nn.Module], None] | None = None,
                  eval_data: Sequence[Demo] | None = None) -> TrainResult:
    """Offline (``alpha`` = 0) or online IQLearn on demonstrations. ``callback(step, model)`` runs after every
    step (e.g. a held-out evaluation); it must leave the model's weights alone. ``demos``: `Demo` records or TRL
    prompt-completion rows (standard or conversational); ``eval_data`` (the same kinds) gets the offline loss
    (MLE + λ·TD²) every ``eval_every`` steps."""
    demos = as_records(demos, Demo, allow_degenerate=config.allow_degenerate)  # checked before the model loads
    eval_demos = as_records(eval_data or [], Demo, allow_degenerate=config.allow_degenerate)
    model, tokenizer = load_policy(config, model, tokenizer)
    demos, eval_demos = as_records(demos, Demo, tokenizer), as_records(eval_demos, Demo, tokenizer)
    if any(d.turns for d in demos + eval_demos):
        raise DataError("iqlearn learns from single-turn demonstrations (prompt, completion); a multi-turn "
                        "'messages' row is for sft")
    check_fits(tokenizer, [d.prompt for d in demos + eval_demos], config.max_length, model)
    trainer = Trainer(config, model, name="iqlearn", num_examples=len(demos))
    step = GradientStep(trainer)
    cfg = trainer.config  # `epochs` turned into steps

    def forward(ids, attn, resp):  # (Q(s_t, a_t), V(s_t)) at the response tokens: V(s_{t+1}) is the next one's
        scores = label_scores(trainer.model, ids, attn, resp[:, 1:].bool())
        return (scores.picked, scores.logsumexp), ids[:, 1:], resp[:, 1:]

    def loss_fn(micro: list[tuple[str, int]]):
        expert = [demos[i] for kind, i in micro if kind == "demo"]
        expert_out = forward(*_demo_labels(tokenizer, expert, cfg.max_length, trainer.device))
        if cfg.alpha == 0:
            loss, stats = iq_td_loss(*expert_out, gamma=cfg.gamma, lam=cfg.lam)
        else:
            rows = [i for kind, i in micro if kind == "sample"]
            policy_out = forward(*(t[rows].to(trainer.device) for t in (samples.input_ids, samples.attention_mask,
                                                                        samples.response_mask)))
            loss, stats = iq_online_loss(*expert_out, *policy_out, alpha=cfg.alpha, gamma=cfg.gamma,
                                                    lam=cfg.lam)
        return loss, stats

    def eval_loss(indices: list[int]):
        out = forward(*_demo_labels(tokenizer, [eval_demos[i] for i in indices], cfg.max_length, trainer.device))
        return iq_td_loss(*out, gamma=cfg.gamma, lam=cfg.lam)

    samples = None

    def iteration(it: int) -> dict:
        nonlocal samples
        mine = trainer.shard(batch_indices(len(demos), cfg.batch_size, cfg.seed, it))
        if cfg.alpha > 0:  # the config check saw the global batch; under several processes each has a share
            mixture_problem(cfg.alpha, len(mine), cfg.grad_accum, raise_as=TrainingError)
        n_policy = round(cfg.alpha * len(mine))
        demo_items = [("demo", i) for i in mine[n_policy:]]
        sample_items = [("sample", r) for r in range(n_policy)]
        if n_policy:  # the first α·B drawn demonstrations give their prompts; the policy answers them afresh
            samples = generate(trainer.unwrapped_model(), tokenizer, [demos[i].prompt for i in mine[:n_policy]],
                               cfg.max_new_tokens, temperature=cfg.temperature)
        # every micro-batch gets its share of both kinds, so each one is a mixture at ratio α
        micro = [demo_items[k::cfg.grad_accum] + sample_items[k::cfg.grad_accum] for k in range(cfg.grad_accum)]
        metrics = step([m for m in micro if m], loss_fn)
        if callback is not None:
            callback(it + 1, trainer.unwrapped_model())
        return {**metrics, **trainer.maybe_evaluate(it, len(eval_demos), eval_loss)}

    trainer.fit(iteration, cfg.steps, description="iqlearn")
    return trainer.finish(tokenizer, save=lambda m, tok, directory: save_iqlearn(m, tok, directory, cfg))


def save_iqlearn(model, tokenizer, directory: str | Path, config: IQLearnConfig) -> Path:
    """The policy, and beside it the γ its extracted reward needs (`saved_gamma`)."""
    path = save_causal_lm(model, tokenizer, directory)
    settings = {"gamma": config.gamma, "lam": config.lam, "alpha": config.alpha}
    (path / IQ_SETTINGS_FILE).write_text(json.dumps(settings))
    return path


# ----------------------------------------------------------------------------------------------
# Reward extraction


def saved_gamma(directory: str | Path) -> float:
    """The γ an IQLearn checkpoint was trained with; 1.0 for any other causal LM (e.g. an SFT model, λ = 0)."""
    settings = Path(directory) / IQ_SETTINGS_FILE
    return float(json.loads(settings.read_text())["gamma"]) if settings.exists() else 1.0


@torch.no_grad()
def score_sequence_rewards(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], gamma: float = 1.0,
                           max_length: int = 96, batch_size: int = 64) -> torch.Tensor:
    """The extracted return Σ_t [Q(s_t, a_t) − γ·V(s_{t+1})] of each (prompt, response), ``[N]``."""
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses differ in number: {len(prompts)} vs {len(responses)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(prompts), batch_size):
        demos = [Demo(p, r) for p, r in zip(prompts[s:s + batch_size], responses[s:s + batch_size])]
        ids, attn, resp = _demo_labels(tokenizer, demos, max_length, device)
        scores = label_scores(model, ids, attn, resp[:, 1:].bool())
        out.append(iq_sequence_rewards((scores.picked, scores.logsumexp), ids[:, 1:], resp[:, 1:], gamma).cpu())
    model.train(was_training)
    return torch.cat(out)


def reward_correlation(task, model, tokenizer, gamma: float = 1.0, num_prompts: int = 200, seed: int = 0,
                       max_length: int = 96) -> dict:
    """How well the extracted reward ranks responses as the task oracle does, on the task's held-out candidate
    pairs (right and wrong responses; both responses of each pair are scored).

    ``spearman``: rank correlation of extracted return and oracle reward over all ``n`` scored responses (across
    prompts, so the prompt value V(s_0) is part of each score). ``pair_accuracy``: within a pair whose oracle
    rewards differ, how often the extracted return orders them the same way (ties ½), over ``pairs`` such pairs.
    """
    candidates = task.candidate_pairs("eval", num_prompts, seed)
    prompts = [p for p, _, _ in candidates for _ in range(2)]
    responses = [r for _, a, b in candidates for r in (a, b)]
    rewards = score_sequence_rewards(model, tokenizer, prompts, responses, gamma, max_length)
    oracle = torch.tensor([task.reward(p, r) for p, r in zip(prompts, responses)])
    first, second = slice(0, None, 2), slice(1, None, 2)
    decided = oracle[first] != oracle[second]
    sign = torch.where(oracle[first] > oracle[second], 1.0, -1.0)[decided]
    better = torch.where(sign > 0, rewards[first][decided], rewards[second][decided])
    worse = torch.where(sign > 0, rewards[second][decided], rewards[first][decided])
    return {"spearman": spearman(rewards, oracle), "n": len(responses),
            "pair_accuracy": reward_model_accuracy(better, worse) if len(better) else float("nan"),
            "pairs": int(decided.sum()), "gamma": gamma}

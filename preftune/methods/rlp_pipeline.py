"""The RLP pipeline (Lang, Huang, Li, NAACL 2024, arXiv 2403.19279) from the pieces in `preftune.methods.rlp`:

    SFT → reward model on human pairs D → PPO → n samples per instruction from the PPO policy
        → retrain the reward model (UML or SPG, or the baselines) → PPO again, from the SFT policy, on it

Every stage is written under ``output_dir`` and, with ``resume``, a finished stage is loaded instead of retrained
(an interrupted one continues from its last checkpoint). The stages up to the policy samples do not depend on
``method``, so several methods share them in one ``output_dir``. Measuring the result against the task's oracle is
`preftune.suite.rlp_eval.evaluate_rlp`.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from preftune.feedback import Annotator, QueryLedger, label_pairs
from preftune.judges import feedback_from_spec
from preftune.methods.ppo import PPOConfig, train_ppo
from preftune.methods.reward import RewardConfig, train_reward
from preftune.methods.rlp import (
    RLPConfig,
    match_reward_scale,
    mixed_pairs,
    retrain_reward_model,
    synthetic_pairs,
    task_equivalence,
)
from preftune.methods.sft import SFTConfig, train_sft
from preftune.models import RewardModel, load_policy, load_trained_causal_lm
from preftune.tasks import get_task
from preftune.trainer import TrainResult


def sample_groups(policy, reward_model, tokenizer, prompts: Sequence[str], config: RLPConfig, path: Path) -> list:
    """n samples per instruction from ``policy``, with the current reward model's scores, saved to ``path`` (whole
    or not at all): ``[[prompt, responses, scores], ...]``."""
    from preftune.rewards import reward_model_reward
    from preftune.rollout import generate
    from preftune.tasks import get_task

    torch.manual_seed(config.seed + 3)
    n = config.samples_per_instruction
    rollout = generate(policy, tokenizer, prompts, get_task(config.task).max_response_chars + 1, samples_per_prompt=n,
                       temperature=config.sample_temperature)
    scores = reward_model_reward(reward_model, tokenizer, config.max_length)(rollout.row_prompts(), rollout.texts)
    groups = [[p, rollout.texts[i * n:(i + 1) * n], list(scores[i * n:(i + 1) * n])] for i, p in enumerate(prompts)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups))
    tmp.rename(path)
    return groups


def every_synthetic_pair_set(task, groups, threshold: float, seed: int) -> tuple[dict, dict]:
    """The pairs of SPG, Select-All and RLAIF from the same samples, and how often the oracle agrees with each
    (cheap: no training, so every run reports all three)."""
    from preftune.metrics import reward_model_accuracy

    synthetic, stats = {}, {}
    for name in ("spg", "select-all", "rlaif"):
        synthetic[name], stats[name] = synthetic_pairs(name, groups, task_equivalence(task), threshold, seed)
        chosen = [task.reward(p.prompt, p.chosen) for p in synthetic[name]]
        rejected = [task.reward(p.prompt, p.rejected) for p in synthetic[name]]
        stats[name]["oracle_accuracy"] = reward_model_accuracy(chosen, rejected) if chosen else None
        ranked = [(c, r) for c, r in zip(chosen, rejected) if c != r]  # pairs the oracle strictly orders
        stats[name]["oracle_ranked_pairs"] = len(ranked)
        stats[name]["oracle_ranked_accuracy"] = sum(c > r for c, r in ranked) / len(ranked) if ranked else None
    return synthetic, stats


def stage(name: str, final: Path, resume: bool, load: Callable, train: Callable, log: dict):
    """Load a finished stage when resuming, else train it (continuing from its checkpoints when resuming)."""
    t0 = time.perf_counter()
    if resume and final.exists():
        out, status = load(final), "loaded"
    else:
        out, status = train(), "trained"
    log[name] = {"status": status, "seconds": time.perf_counter() - t0}
    return out


def stage_fields(cfg: RLPConfig, name: str, steps: int) -> dict:
    return dict(output_dir=str(Path(cfg.output_dir) / name), seed=cfg.seed, resume=cfg.resume,
                overwrite=cfg.overwrite, steps=steps, save_every=max(20, steps // 4), progress=cfg.progress,
                max_length=cfg.max_length, mixed_precision=cfg.mixed_precision)


def train_rlp(config: RLPConfig, model=None, tokenizer=None) -> TrainResult:
    """The pipeline of the module docstring. The result's model is the second PPO policy (saved in
    ``ppo-<method>/final``); ``extra`` holds the other stages' models (``sft``, ``ppo``, ``reward_model``,
    ``retrained_reward_model``), the policy samples (``groups``), the human pairs, the synthetic pairs' stats,
    the reward scale factor, each stage's status (``stages``) and the ``ledger`` of the labels of D (asked of
    ``config.feedback``; on every run, also a resumed one)."""
    cfg, out_dir, log = config, Path(config.output_dir), {}
    out_dir.mkdir(parents=True, exist_ok=True)
    task = get_task(cfg.task)
    base, tokenizer = load_policy(cfg, model, tokenizer)
    labeller = feedback_from_spec(cfg.feedback, annotator=Annotator(task.reward), max_length=cfg.max_length)
    ledger = QueryLedger()
    human = label_pairs(task.candidate_pairs("train", cfg.human_pairs, cfg.seed), labeller, random.Random(cfg.seed),
                        ledger, "labels")
    train_prompts = task.prompts("train", 10_000, cfg.seed)
    max_new = task.max_response_chars + 1
    load_policy_dir = lambda d: load_trained_causal_lm(d)[0]  # noqa: E731

    # 1. SFT, 2. reward model on D, 3. PPO against it — shared by every method
    sft = stage("sft", out_dir / "sft" / "final", cfg.resume, load_policy_dir, lambda: train_sft(
        SFTConfig(**stage_fields(cfg, "sft", cfg.sft_steps)), task.demonstrations("train", cfg.demos, cfg.seed),
        model=base, tokenizer=tokenizer).model, log)
    rm = stage("reward", out_dir / "reward" / "final", cfg.resume, RewardModel.from_pretrained, lambda: train_reward(
        RewardConfig(**stage_fields(cfg, "reward", cfg.reward_steps), batch_size=cfg.batch_size), human,
        model=copy.deepcopy(sft), tokenizer=tokenizer).model, log)
    ppo_config = lambda name: PPOConfig(**stage_fields(cfg, name, cfg.ppo_steps), kl_coef=cfg.ppo_kl_coef,  # noqa: E731
                                        max_new_tokens=max_new, log_every=5)
    ppo = stage("ppo", out_dir / "ppo" / "final", cfg.resume, load_policy_dir, lambda: train_ppo(
        ppo_config("ppo"), train_prompts, rm, model=copy.deepcopy(sft), tokenizer=tokenizer).model, log)

    # 4. n samples per instruction from the PPO policy, scored by the current reward model
    samples_path = out_dir / "policy_samples.json"

    groups = stage("samples", samples_path, cfg.resume, lambda p: json.loads(p.read_text()), lambda: sample_groups(
        ppo, rm, tokenizer, task.prompts("train", cfg.policy_instructions, cfg.seed + 3), cfg, samples_path), log)
    synthetic, synthetic_stats = every_synthetic_pair_set(task, groups, cfg.confidence_threshold, cfg.seed)

    # 5. retrain the reward model on policy samples, 6. PPO again from SFT against it
    retrain_stage = f"reward-{cfg.method}"
    retrain_config = RLPConfig(**{**asdict(cfg), **stage_fields(cfg, retrain_stage, cfg.steps)})
    if cfg.method == "uml":
        retrain = lambda: retrain_reward_model(retrain_config, copy.deepcopy(rm), tokenizer, human,  # noqa: E731
                                               [(p, r) for p, r, _ in groups]).model
    else:
        train_pairs = mixed_pairs(human, synthetic[cfg.method], cfg.synthetic_share)
        retrain = lambda: retrain_reward_model(retrain_config, copy.deepcopy(rm), tokenizer,  # noqa: E731
                                               train_pairs).model
    rm_rlp = stage(retrain_stage, out_dir / retrain_stage / "final", cfg.resume, RewardModel.from_pretrained, retrain,
                   log)
    scale = 1.0
    if cfg.match_reward_scale:
        reference = [(p, r) for p, responses, _ in groups[:200] for r in responses]
        scale = match_reward_scale(rm_rlp, rm, tokenizer, *zip(*reference), cfg.max_length)
    ppo_rlp = stage(f"ppo-{cfg.method}", out_dir / f"ppo-{cfg.method}" / "final", cfg.resume, load_policy_dir,
                     lambda: train_ppo(ppo_config(f"ppo-{cfg.method}"), train_prompts, rm_rlp,
                                       model=copy.deepcopy(sft), tokenizer=tokenizer).model, log)
    summary = {"method": cfg.method, "stages": log, "synthetic_pairs": synthetic_stats, "scale_factor": scale}
    (out_dir / f"stages-{cfg.method}.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(ppo_rlp, tokenizer, [], out_dir / f"ppo-{cfg.method}" / "final", {
        "sft": sft, "ppo": ppo, "reward_model": rm, "retrained_reward_model": rm_rlp, "groups": groups,
        "human_pairs": human, "ledger": ledger, "synthetic_pairs": synthetic_stats, "scale_factor": scale,
        "stages": log})

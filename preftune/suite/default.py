"""`preftune run`: the embedded default benchmark, end to end on the built-in tasks, offline.

preference-language: SFT on teacher demonstrations -> Bradley–Terry reward model on annotator-labelled
pairs (held-out accuracy against the annotator's own ceiling) -> DPO, Best-of-16 (reward model and
oracle), PPO and RLOO against the reward model, RLP-SPG (the reward model retrained on synthetic pairs
from the PPO policy, then PPO again), all judged against the SFT policy by the oracle and by a noisy
simulated annotator.
arithmetic: SFT, then GRPO with the exact oracle as reward (RL from verifiable rewards).
summarise: SFT accuracy and diversity, the baselines the imitation methods build on.
arithmetic and summarise: IQLearn (TD-regularised MLE) against that SFT at equal steps, with the Spearman
correlation of its extracted reward with the oracle.

Every stage writes its model and metrics under ``runs/<name>/<stage>/``; with ``--resume`` a finished
stage is loaded instead of retrained and an interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from preftune.evaluate import evaluate_policy, sample_policy
from preftune.feedback import Annotator, label_pairs
from preftune.methods.bon import best_of_n
from preftune.methods.dpo import DPOConfig, train_dpo
from preftune.methods.iqlearn import IQLearnConfig, reward_correlation, train_iqlearn
from preftune.methods.ppo import PPOConfig, train_ppo
from preftune.methods.reward import RewardConfig, heldout_accuracy, heldout_labels, heldout_report, train_reward
from preftune.methods.rloo import GRPOConfig, RLOOConfig, train_grpo, train_rloo
from preftune.methods.rlp import RLPConfig, match_reward_scale, mixed_pairs, retrain_reward_model
from preftune.methods.rlp_pipeline import every_synthetic_pair_set, sample_groups
from preftune.methods.sft import SFTConfig, train_sft
from preftune.metrics import annotator_win_rate, mean_oracle_reward, win_rate
from preftune.models import RewardModel, load_trained_causal_lm
from preftune.rewards import oracle_reward, reward_model_reward
from preftune.suite.report import write_report
from preftune.suite.rlp_eval import policy_pair_accuracy
from preftune.suite.settings import CONFIGS, load_settings
from preftune.suite.stages import stage_dir, stage_fields, stage_history
from preftune.tasks import get_task
from preftune.tiny import build_tiny_tokenizer


@dataclass
class SuiteSize:
    """How big each stage is: `configs/default.yaml`, and `configs/quick.yaml` for a run that checks a setup."""

    sft_steps: int
    reward_steps: int
    reward_batch_size: int
    dpo_steps: int
    demos: int
    pairs: int
    heldout_pairs: int
    eval_prompts: int
    best_of: int
    imitation_steps: int
    online_steps: int
    grpo_steps: int
    gridworld_queries: int
    joint_rounds: int
    joint_updates_per_round: int
    joint_baseline_steps: int
    rlp_instructions: int
    rlp_retrain_steps: int


@dataclass
class SuiteTuning:
    """Where the suite departs from the methods' defaults; why, in `configs/default.yaml`."""

    rm_kl_coef: float
    dpo_beta: float
    iqlearn_lam: float
    reward_pooling: Literal["last", "sum"]
    arithmetic_grpo_lr: float


def load_suite(quick: bool = False, config: Path | None = None) -> tuple[SuiteSize, SuiteTuning]:
    """The sizes and tuned settings of `configs/default.yaml`, with `configs/quick.yaml` over them for ``quick`` and
    a user's suite file ``config`` over both."""
    files = [CONFIGS / "default.yaml", *([CONFIGS / "quick.yaml"] if quick else []), *([config] if config else [])]
    size, tuning = load_settings((SuiteSize, SuiteTuning), files)
    return size, tuning


def _policy_stage(run_dir: Path, name: str, resume: bool, train):
    """Train a policy stage, or load it when ``resume`` and it already finished."""
    final = stage_dir(run_dir, name) / "final"
    if resume and final.exists():
        model, tokenizer = load_trained_causal_lm(final)
        return model, tokenizer, 0.0
    t0 = time.perf_counter()
    result = train()
    return result.model, result.tokenizer, time.perf_counter() - t0


def _online(run_dir: Path, name: str, seed: int, resume: bool, steps: int, task) -> dict:
    """Config fields of an online stage: `stage_fields` plus a generation length that fits the task."""
    return dict(**stage_fields(run_dir, name, seed, resume, steps, log_every=5),
                max_new_tokens=task.max_response_chars + 1)


def run_suite(run_dir: Path, quick: bool = False, seed: int = 0, resume: bool = False, size: SuiteSize | None = None,
              tuning: SuiteTuning | None = None) -> Path:
    """Run every stage into ``run_dir`` and write the report; ``size`` and ``tuning`` override the suite files'."""
    if size is None or tuning is None:
        loaded_size, loaded_tuning = load_suite(quick)
        size, tuning = size or loaded_size, tuning or loaded_tuning
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    started = time.perf_counter()
    results: dict = {"meta": {"quick": quick, "seed": seed, "size": asdict(size), "torch": torch.__version__,
                              "python": platform.python_version(), "threads": torch.get_num_threads()},
                     "tasks": {}, "timings": {}, "histories": {}}
    tokenizer = build_tiny_tokenizer()
    results["tasks"]["preference-language"] = _preference_language(run_dir, size, tuning, seed, resume, tokenizer,
                                                                    results)
    for task_name in ("arithmetic", "summarise"):
        results["tasks"][task_name] = _imitation(run_dir, task_name, size, tuning, seed, resume, tokenizer, results)
    _iqlearn(run_dir, size, tuning, seed, resume, tokenizer, results)
    results["tasks"]["gridworld"] = _gridworld(size, seed, results)
    results["tasks"]["population"] = _population(run_dir, size, seed, results)
    results["timings"]["total"] = time.perf_counter() - started
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    write_report(run_dir)
    return run_dir


def _preference_language(run_dir, size: SuiteSize, tuning: SuiteTuning, seed: int, resume: bool, tokenizer,
                         results: dict) -> dict:
    task = get_task("preference-language")
    annotator = Annotator(task.reward)  # Bradley–Terry, temperature 1: the labels every method learns from
    judge = Annotator(task.reward, flip_prob=0.25)  # AlpacaFarm-style noisy judge for win rates
    rng = random.Random(seed)
    pairs = label_pairs(task.candidate_pairs("train", size.pairs, seed), annotator, rng)
    # the held-out labels have their own stream, so they do not change with the number of training labels
    heldout = heldout_labels(task, size.heldout_pairs, seed)
    out: dict = {"labels": len(pairs), "heldout_labels": len(heldout), "methods": {}}

    sft_model, _, t = _policy_stage(run_dir, "pl-sft", resume, lambda: train_sft(
        SFTConfig(**stage_fields(run_dir, "pl-sft", seed, resume, size.sft_steps)),
        task.demonstrations("train", size.demos, seed), tokenizer=tokenizer,
        model=_fresh("tiny", tokenizer, seed)))
    results["timings"]["pl-sft"] = t

    t0 = time.perf_counter()
    rm_dir = stage_dir(run_dir, "pl-reward") / "final"
    if resume and rm_dir.exists():
        reward_model = RewardModel.from_pretrained(rm_dir)
    else:
        config = RewardConfig(**stage_fields(run_dir, "pl-reward", seed, resume, size.reward_steps),
                              batch_size=size.reward_batch_size, pooling=tuning.reward_pooling)
        reward_model = train_reward(config, pairs, model=copy.deepcopy(sft_model), tokenizer=tokenizer).model
    results["timings"]["pl-reward"] = time.perf_counter() - t0
    out["reward_model"] = {
        **heldout_report(reward_model, tokenizer, task, heldout, 96),
        "train_accuracy": heldout_accuracy(reward_model, tokenizer, pairs[: size.heldout_pairs], 96),
        "pooling": tuning.reward_pooling,
    }

    # DPO sees steps × batch pairs; giving it exactly those (one epoch) spares reference log-probs of the rest
    dpo_config = DPOConfig(**stage_fields(run_dir, "pl-dpo", seed, resume, size.dpo_steps), beta=tuning.dpo_beta)
    dpo_pairs = pairs[: dpo_config.steps * dpo_config.batch_size]
    out["dpo_labels"] = len(dpo_pairs)
    dpo_model, _, t = _policy_stage(run_dir, "pl-dpo", resume, lambda: train_dpo(
        dpo_config, dpo_pairs, model=copy.deepcopy(sft_model), tokenizer=tokenizer))
    results["timings"]["pl-dpo"] = t

    # online RL against the learned reward model, from the SFT policy, KL-regularised towards it
    train_prompts = task.prompts("train", 10_000, seed)
    online = {}
    for stage, config_cls, train_fn in (("pl-ppo", PPOConfig, train_ppo), ("pl-rloo", RLOOConfig, train_rloo)):
        online[stage], _, t = _policy_stage(run_dir, stage, resume, lambda s=stage, c=config_cls, f=train_fn: f(
            c(**_online(run_dir, s, seed, resume, size.online_steps, task), kl_coef=tuning.rm_kl_coef), train_prompts,
            reward_model,
            model=copy.deepcopy(sft_model), tokenizer=tokenizer))
        results["timings"][stage] = t

    t0 = time.perf_counter()
    prompts = task.prompts("eval", size.eval_prompts, seed)
    torch.manual_seed(seed + 1)
    reference = sample_policy(task, sft_model, tokenizer, prompts)  # one SFT sample per prompt: the opponent
    kwargs = dict(reference=sft_model, num_prompts=size.eval_prompts, seed=seed, annotator=judge,
                  reference_rollout=reference)
    out["methods"]["sft"] = evaluate_policy(task, sft_model, tokenizer, **kwargs)
    out["methods"]["dpo"] = evaluate_policy(task, dpo_model, tokenizer, **kwargs)
    out["methods"]["ppo (reward model)"] = evaluate_policy(task, online["pl-ppo"], tokenizer, **kwargs)
    out["methods"]["rloo (reward model)"] = evaluate_policy(task, online["pl-rloo"], tokenizer, **kwargs)
    for label, scorer in (("rm", reward_model_reward(reward_model, tokenizer, 96)), ("oracle", oracle_reward(task))):
        torch.manual_seed(seed + 2)
        chosen, _ = best_of_n(sft_model, tokenizer, prompts, size.best_of, scorer, task.max_response_chars + 1)
        n = size.best_of
        out["methods"][f"best-of-{n} ({label})"] = {
            "oracle_reward": mean_oracle_reward(task, prompts, chosen),
            "win_rate": win_rate(task, prompts, chosen, reference.texts),
            "annotator_win_rate": annotator_win_rate(judge, prompts, chosen, reference.texts, random.Random(seed)),
            # Best-of-n's KL to its base policy is at most log n − (n−1)/n (Beirami et al. 2024)
            "kl_to_reference": math.log(n) - (n - 1) / n,
        }
    results["timings"]["pl-eval"] = time.perf_counter() - t0
    out["rlp"] = _rlp_spg(run_dir, size, tuning, seed, resume, tokenizer, task, sft_model, reward_model,
                          online["pl-ppo"], pairs, train_prompts, kwargs, out, results)
    for stage in ("pl-sft", "pl-reward", "pl-dpo", "pl-ppo", "pl-rloo", "pl-rlp-ppo"):
        results["histories"][stage] = stage_history(stage_dir(run_dir, stage))
    return out


def _rlp_spg(run_dir, size: SuiteSize, tuning: SuiteTuning, seed: int, resume: bool, tokenizer, task, sft_model,
             reward_model, ppo_model, pairs, train_prompts, eval_kwargs: dict, out: dict, results: dict) -> dict:
    """RLP-SPG on the stages above: 10 samples per instruction from the PPO policy, synthetic pairs, the
    reward model retrained on D ∪ D̂, PPO again from SFT. γ = 0.2 as in `preftune bench rlp`, the paper's plain union
    (oversampling a D̂ of a few dozen pairs overfits them); RLP-UML and the seeds are in that bench."""
    t0 = time.perf_counter()
    rlp_dir = stage_dir(run_dir, "pl-rlp-reward")
    config = RLPConfig(**stage_fields(run_dir, "pl-rlp-reward", seed, resume, size.rlp_retrain_steps), method="spg",
                       confidence_threshold=0.2, synthetic_share=None, batch_size=size.reward_batch_size)
    samples_path = stage_dir(run_dir, "pl-rlp-samples.json")
    if resume and samples_path.exists():
        groups = json.loads(samples_path.read_text())
    else:
        instructions = task.prompts("train", size.rlp_instructions, seed + 3)
        groups = sample_groups(ppo_model, reward_model, tokenizer, instructions, config, samples_path)
    synthetic, stats = every_synthetic_pair_set(task, groups, config.confidence_threshold, seed)
    if resume and (rlp_dir / "final").exists():
        retrained = RewardModel.from_pretrained(rlp_dir / "final")
    else:
        retrained = retrain_reward_model(config, copy.deepcopy(reward_model), tokenizer,
                                         mixed_pairs(pairs, synthetic["spg"], config.synthetic_share)).model
    reference = [(p, r) for p, responses, _ in groups[:200] for r in responses]
    match_reward_scale(retrained, reward_model, tokenizer, *zip(*reference), 96)
    results["timings"]["pl-rlp-reward"] = time.perf_counter() - t0
    policy, _, t = _policy_stage(run_dir, "pl-rlp-ppo", resume, lambda: train_ppo(
        PPOConfig(**_online(run_dir, "pl-rlp-ppo", seed, resume, size.online_steps, task), kl_coef=tuning.rm_kl_coef),
        train_prompts, retrained, model=copy.deepcopy(sft_model), tokenizer=tokenizer))
    results["timings"]["pl-rlp-ppo"] = t
    t0 = time.perf_counter()
    out["methods"]["rlp-spg (reward model)"] = evaluate_policy(task, policy, tokenizer, **eval_kwargs)
    prompts = task.prompts("eval", size.eval_prompts, seed + 4)
    torch.manual_seed(seed + 4)
    rollout = sample_policy(task, ppo_model, tokenizer, prompts, samples_per_prompt=2)
    on_policy = policy_pair_accuracy({"before": reward_model, "after": retrained}, tokenizer, task,
                                     rollout.row_prompts(), rollout.texts, 96)
    results["timings"]["pl-rlp-eval"] = time.perf_counter() - t0
    return {"synthetic_pairs": stats, "reward_model_on_ppo_samples": on_policy}


def _imitation(run_dir, task_name: str, size: SuiteSize, tuning: SuiteTuning, seed: int, resume: bool, tokenizer,
               results: dict) -> dict:
    task = get_task(task_name)
    stage = f"{task_name[:5]}-sft"
    model, _, t = _policy_stage(run_dir, stage, resume, lambda: train_sft(
        SFTConfig(**stage_fields(run_dir, stage, seed, resume, size.imitation_steps)),
        task.demonstrations("train", size.demos, seed), model=_fresh("tiny", tokenizer, seed), tokenizer=tokenizer))
    results["timings"][stage] = t
    results["histories"][stage] = stage_history(stage_dir(run_dir, stage))
    methods = {"sft": evaluate_policy(task, model, tokenizer, num_prompts=size.eval_prompts, samples_per_prompt=4,
                                      seed=seed),
               "sft (greedy)": evaluate_policy(task, model, tokenizer, num_prompts=size.eval_prompts,
                                               samples_per_prompt=1, temperature=0.0, seed=seed)}
    if task_name == "arithmetic":  # RL from verifiable rewards: GRPO with the exact oracle as the reward
        stage = "arith-grpo"
        grpo, _, t = _policy_stage(run_dir, stage, resume, lambda: train_grpo(
            GRPOConfig(**_online(run_dir, stage, seed, resume, size.grpo_steps, task), lr=tuning.arithmetic_grpo_lr),
            task.prompts("train", 10_000, seed), oracle_reward(task), model=copy.deepcopy(model),
            tokenizer=tokenizer))
        results["timings"][stage] = t
        results["histories"][stage] = stage_history(stage_dir(run_dir, stage))
        methods["grpo (oracle reward)"] = evaluate_policy(task, grpo, tokenizer, reference=model,
                                                          num_prompts=size.eval_prompts, samples_per_prompt=4,
                                                          seed=seed)
    return {"methods": methods}


def _iqlearn(run_dir, size: SuiteSize, tuning: SuiteTuning, seed: int, resume: bool, tokenizer, results: dict) -> None:
    """IQLearn against the suite's SFT on arithmetic and summarise: same demonstrations, steps, schedule and
    initialisation, only the TD term added; accuracy, diversity, and the extracted reward's Spearman correlation
    with the oracle for both (SFT's logits read as Q, i.e. λ = 0, is the paper's MLE baseline)."""
    for task_name in ("arithmetic", "summarise"):
        task, stage = get_task(task_name), f"{task_name[:5]}-iqlearn"
        model, _, t = _policy_stage(run_dir, stage, resume, lambda task=task, stage=stage: train_iqlearn(
            IQLearnConfig(**stage_fields(run_dir, stage, seed, resume, size.imitation_steps), lam=tuning.iqlearn_lam),
            task.demonstrations("train", size.demos, seed), model=_fresh("tiny", tokenizer, seed),
            tokenizer=tokenizer))
        results["timings"][stage] = t
        results["histories"][stage] = stage_history(stage_dir(run_dir, stage))
        out = results["tasks"][task_name]
        name = f"iqlearn (λ = {tuning.iqlearn_lam:g})"
        out["methods"][name] = evaluate_policy(task, model, tokenizer, num_prompts=size.eval_prompts,
                                               samples_per_prompt=4, seed=seed)
        out["methods"][f"{name} (greedy)"] = evaluate_policy(task, model, tokenizer, num_prompts=size.eval_prompts,
                                                             samples_per_prompt=1, temperature=0.0, seed=seed)
        sft_model, _ = load_trained_causal_lm(stage_dir(run_dir, f"{task_name[:5]}-sft") / "final")
        out["extracted_reward"] = {
            "sft": reward_correlation(task, sft_model, tokenizer, num_prompts=size.eval_prompts, seed=seed),
            name: reward_correlation(task, model, tokenizer, num_prompts=size.eval_prompts, seed=seed)}


def _gridworld(size: SuiteSize, seed: int, results: dict) -> dict:
    """ZPG and ZBCPG against trajectory DPO and RM+PPO at the same number of human queries (exact returns by DP);
    the full study with several seeds is `preftune bench zpg`."""
    from preftune.suite.gridworld import gridworld_comparison

    t0 = time.perf_counter()
    out = gridworld_comparison(size.gridworld_queries, seeds=1, slip=0.2, points=8)
    results["timings"]["gridworld"] = time.perf_counter() - t0
    return out


def _fresh(name: str, tokenizer, seed: int):
    from preftune.tiny import build_tiny_model

    return build_tiny_model(name, tokenizer, seed=seed)


def _population(run_dir: Path, size: SuiteSize, seed: int, results: dict) -> dict:
    """Joint learning from choices: passive vs double Thompson sampling (sampling variant), DPO and the
    reward model's KL-regularised optimum on the passive queries; `preftune bench joint` is the full comparison."""
    from preftune.suite.joint_comparison import JointComparisonSize, run_joint_comparison

    t0 = time.perf_counter()
    bench = JointComparisonSize(seeds=1, rounds=size.joint_rounds, queries_per_round=64,
                           updates_per_round=size.joint_updates_per_round, baseline_steps=size.joint_baseline_steps,
                           ppo_iterations=0, schemes=("passive", "double-ts (sample)"))
    out = run_joint_comparison(run_dir / "population", bench, seed)
    results["timings"]["population"] = time.perf_counter() - t0
    return out

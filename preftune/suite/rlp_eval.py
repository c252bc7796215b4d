"""What an RLP run achieved, measured against the task's oracle (the evaluation `preftune bench rlp` reports): the
reward models before and after retraining on held-out human pairs and on pairs of PPO-policy samples, and SFT,
Best-of-N, PPO and the RLP policy against the SFT reference (oracle and noisy-judge win rates, KL)."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from preftune.data import Pair
from preftune.evaluate import evaluate_policy, sample_policy
from preftune.feedback import Annotator
from preftune.methods.bon import best_of_n
from preftune.methods.reward import heldout_accuracy, heldout_labels
from preftune.methods.rlp import RLPConfig
from preftune.metrics import annotator_win_rate, mean_oracle_reward, win_rate
from preftune.rewards import reward_model_reward
from preftune.rollout import generate
from preftune.tasks import get_task
from preftune.trainer import TrainResult


def policy_pair_accuracy(reward_models: dict, tokenizer, task, prompts: Sequence[str], responses: Sequence[str],
                         max_length: int) -> dict:
    """Accuracy of reward models on pairs of policy samples (consecutive responses of one prompt) that the oracle
    strictly ranks; oracle ties are left out. Returns {name: accuracy} and the number of pairs."""
    pairs = []
    for k in range(0, len(responses) - 1, 2):
        prompt, a, b = prompts[k], responses[k], responses[k + 1]
        ra, rb = task.reward(prompt, a), task.reward(prompt, b)
        if ra != rb:
            pairs.append(Pair(prompt, a, b) if ra > rb else Pair(prompt, b, a))
    out = {name: heldout_accuracy(rm, tokenizer, pairs, max_length) for name, rm in reward_models.items()}
    return {"pairs": len(pairs), **out}


def evaluate_rlp(cfg: RLPConfig, result: TrainResult) -> dict:
    """The results of a `train_rlp` run, also written to ``results-<method>.json`` in its ``output_dir``."""
    task, tokenizer, extra = get_task(cfg.task), result.tokenizer, result.extra
    sft, ppo, ppo_rlp = extra["sft"], extra["ppo"], result.model
    rm, rm_rlp, log = extra["reward_model"], extra["retrained_reward_model"], dict(extra["stages"])
    heldout = heldout_labels(task, 2000, cfg.seed)
    max_new = task.max_response_chars + 1
    out_dir = Path(cfg.output_dir)
    synthetic_stats, scale = extra["synthetic_pairs"], extra["scale_factor"]
    t0 = time.perf_counter()
    reward_models = {"before": rm, "after": rm_rlp}
    results: dict = {"method": cfg.method, "config": asdict(cfg), "stages": log, "synthetic_pairs": synthetic_stats,
                     "reward_model": {"human_heldout": {k: heldout_accuracy(m, tokenizer, heldout, cfg.max_length)
                                                        for k, m in reward_models.items()}, "scale_factor": scale}}
    for split in ("train", "eval"):  # fresh PPO-policy samples: instructions seen in training, and held-out ones
        prompts = task.prompts(split, cfg.policy_eval_pairs, cfg.seed + 4)
        torch.manual_seed(cfg.seed + 4)
        rollout = generate(ppo, tokenizer, prompts, max_new, samples_per_prompt=2, temperature=1.0)
        results["reward_model"][f"ppo_samples_{split}"] = policy_pair_accuracy(
            reward_models, tokenizer, task, rollout.row_prompts(), rollout.texts, cfg.max_length)
    judge = Annotator(task.reward, flip_prob=cfg.judge_flip_prob)
    prompts = task.prompts("eval", cfg.eval_prompts, cfg.seed)
    torch.manual_seed(cfg.seed + 1)
    reference = sample_policy(task, sft, tokenizer, prompts)
    kwargs = dict(reference=sft, num_prompts=cfg.eval_prompts, seed=cfg.seed, annotator=judge,
                  reference_rollout=reference)
    methods = {"sft": evaluate_policy(task, sft, tokenizer, **kwargs)}
    torch.manual_seed(cfg.seed + 2)
    chosen, _ = best_of_n(sft, tokenizer, prompts, cfg.best_of, reward_model_reward(rm, tokenizer, cfg.max_length),
                       max_new)
    methods[f"best-of-{cfg.best_of} (rm)"] = {
        "oracle_reward": mean_oracle_reward(task, prompts, chosen),
        "win_rate": win_rate(task, prompts, chosen, reference.texts),
        "annotator_win_rate": annotator_win_rate(judge, prompts, chosen, reference.texts, random.Random(cfg.seed)),
        "kl_to_reference": math.log(cfg.best_of) - (cfg.best_of - 1) / cfg.best_of,  # Beirami et al. 2024 bound
    }
    methods["ppo"] = evaluate_policy(task, ppo, tokenizer, **kwargs)
    methods[f"rlp-{cfg.method}"] = evaluate_policy(task, ppo_rlp, tokenizer, **kwargs)
    results["methods"] = methods
    # how each reward model scores its own PPO policy vs the oracle: over-optimisation shows as a gap
    results["policy_scores"] = {}
    for name, policy, scorer_rm in (("ppo", ppo, rm), (f"rlp-{cfg.method}", ppo_rlp, rm_rlp)):
        torch.manual_seed(cfg.seed + 5)
        texts = sample_policy(task, policy, tokenizer, prompts).texts
        scores = reward_model_reward(scorer_rm, tokenizer, cfg.max_length)(prompts, texts)
        results["policy_scores"][name] = {"reward_model": sum(scores) / len(scores),
                                          "oracle": mean_oracle_reward(task, prompts, texts)}
    log["eval"] = {"status": "run", "seconds": time.perf_counter() - t0}
    (out_dir / f"results-{cfg.method}.json").write_text(json.dumps(results, indent=2))
    return results

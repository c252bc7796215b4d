"""Joint learning from choices against RLHF on the same queries: the population section of `preftune run`.

For each seed: joint learning (`methods/joint.py`) with each chosen exploration scheme (and variants: posterior draws
instead of argmaxes, a pool of policy samples to choose among), logging the exact distance of
π_θ(·|x) to the population's choice distribution after every round; then, on the *passive* run's queries, a
Bradley–Terry reward model (`train_reward`) followed by (a) PPO against it (`train_ppo`) and (b) the exact
KL-regularised optimum π ∝ π_ref · exp(r / β) over the 64 responses (what PPO converges to), and DPO
(`train_dpo`); finally the epinet's posterior spread on responses that were shown against those never shown.
Writes ``results.json`` and two plots (`joint_report.py`). `benchmarks/joint.py` runs every scheme over several seeds.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from preftune.data import Pair
from preftune.epistemic import set_feature_scaling
from preftune.methods.joint import EXPLORATION_SCHEMES, JointConfig, build_joint_model, train_joint
from preftune.metrics import distribution_metrics
from preftune.rollout import policy_distribution
from preftune.suite.joint_report import mean_and_sd, write_joint_plots
from preftune.tasks.population import PopulationTask, response_space_ids
from preftune.tiny import build_population_policy, build_population_tokenizer
from preftune.trainer import TrainResult


@dataclass
class JointComparisonSize:
    """How much of the comparison runs: `preftune run` sets every field, `benchmarks/config/joint.yaml` the study's."""

    seeds: int
    rounds: int
    queries_per_round: int
    updates_per_round: int
    baseline_steps: int  # reward model and DPO optimizer steps
    ppo_iterations: int  # 0: no PPO run (the exact KL-regularised optimum of the reward model is still shown)
    schemes: tuple[str, ...]  # names of `SCHEME_VARIANTS`


PPO_KL_COEF = 0.05  # the usual RLHF β (and preftune's PPO default)
DPO_BETA = 0.1  # the usual DPO β (and preftune's DPO default)


def _rlhf_baselines(run_dir: Path, task: PopulationTask, tokenizer, ids, records, seed: int,
                    size: JointComparisonSize) -> dict:
    """RM + PPO, RM + exact KL-regularised optimum, and DPO, all on the given pairwise queries."""
    from preftune.methods.dpo import DPOConfig, train_dpo
    from preftune.methods.ppo import PPOConfig, train_ppo
    from preftune.methods.reward import RewardConfig, train_reward
    from preftune.rollout import score_rewards

    prompts = task.split_prompts("train")
    pairs = [Pair(prompts[p], task.responses[shown[c]], task.responses[shown[1 - c]]) for p, shown, c in records]
    start = build_population_policy(tokenizer, seed=seed)  # the same starting policy as joint learning
    train_ids = ids[: len(prompts)]
    targets, favourites = task.targets(prompts), [task.favourites(p) for p in prompts]
    common = dict(seed=seed, overwrite=True, progress=False, save_every=0, max_length=16)
    out = {}
    reward_model = train_reward(RewardConfig(output_dir=str(run_dir / "reward"), steps=size.baseline_steps,
                                             batch_size=64, **common), pairs, model=copy.deepcopy(start),
                                tokenizer=tokenizer).model
    flat = train_ids.flatten(0, 1)
    rewards = score_rewards(reward_model, flat, torch.ones_like(flat)).view(len(prompts), -1).double()
    reference = policy_distribution(start, train_ids)
    optimum = (reference.log() + rewards / PPO_KL_COEF).softmax(-1)
    out[f"RM + exact KL-optimum (β={PPO_KL_COEF})"] = distribution_metrics(optimum, targets, favourites)
    if size.ppo_iterations:
        ppo = train_ppo(PPOConfig(output_dir=str(run_dir / "ppo"), steps=size.ppo_iterations, batch_size=32,
                                  max_new_tokens=4, kl_coef=PPO_KL_COEF, lr=1e-3, **common),
                        prompts * 8, reward_model, model=copy.deepcopy(start), tokenizer=tokenizer).model
        out[f"RM + PPO (β={PPO_KL_COEF})"] = distribution_metrics(policy_distribution(ppo, train_ids), targets,
                                                                favourites)
    dpo = train_dpo(DPOConfig(output_dir=str(run_dir / "dpo"), steps=size.baseline_steps, batch_size=64,
                              beta=DPO_BETA, lr=1e-3, **common), pairs, model=copy.deepcopy(start),
                    tokenizer=tokenizer).model
    out[f"DPO (β={DPO_BETA})"] = distribution_metrics(policy_distribution(dpo, train_ids), targets, favourites)
    return out


# scheme name in the benchmark -> (explore, posterior_pick, candidate_pool)
POOL = 8  # policy samples the pooled schemes choose among
SCHEME_VARIANTS = {name: (name, "argmax", 0) for name in EXPLORATION_SCHEMES} | {
    "ts (sample)": ("ts", "sample", 0), "double-ts (sample)": ("double-ts", "sample", 0),
    f"infomax (pool {POOL})": ("infomax", "argmax", POOL),
    f"double-ts (sample, pool {POOL})": ("double-ts", "sample", POOL)}


def _run_one(run_dir: Path, size: JointComparisonSize, scheme: str, seed: int) -> dict:
    """One joint-learning run (and, for passive, the RLHF baselines on its queries): a job of the benchmark."""
    from transformers.utils import logging

    torch.set_num_threads(1)
    logging.set_verbosity_error()  # a worker process does not inherit the CLI's quieting
    logging.disable_progress_bar()
    task, tokenizer = PopulationTask(), build_population_tokenizer()
    ids = response_space_ids(tokenizer, task.all_prompts(), task.responses)
    explore, pick, pool = SCHEME_VARIANTS[scheme]
    t0 = time.perf_counter()
    config = JointConfig(output_dir=str(run_dir / f"joint-{explore}-{pick}-{pool}-{seed}"), seed=seed, overwrite=True,
                         progress=False, explore=explore, posterior_pick=pick, candidate_pool=pool, steps=size.rounds,
                         queries_per_round=size.queries_per_round, updates_per_round=size.updates_per_round)
    model = build_joint_model(config, tokenizer)
    with torch.no_grad():  # the prior's spread, before any query: the reference for "shrinks where asked"
        features = model(ids.flatten(0, 1))[1]
    set_feature_scaling(model.head, features)
    prior_spread = float(posterior_spread(model.head, features.view(ids.shape[0], ids.shape[1], -1)).mean())
    result = train_joint(config, task, model=model, tokenizer=tokenizer)
    out = {"scheme": scheme, "seed": seed, "seconds": time.perf_counter() - t0,
           "curve": [{k: h[k] for k in ("queries", "kl", "tv", "mass_type0", "mass_type1", "mass_type2")}
                     for h in result.history],
           "spread": _spread_by_exposure(result, ids, len(task.split_prompts("train"))) | {"prior": prior_spread}}
    if scheme == "passive":
        t0 = time.perf_counter()
        records = result.extra["records"].rows
        out["baselines"] = _rlhf_baselines(run_dir / f"baselines-{seed}", task, tokenizer, ids, records, seed, size)
        out["baseline_seconds"] = time.perf_counter() - t0
    return out


def run_joint_comparison(run_dir: Path, size: JointComparisonSize, seed: int = 0, workers: int = 1) -> dict:
    """Every (seed, scheme) run, on ``workers`` processes; results.json and the plots in ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    unknown = [s for s in size.schemes if s not in SCHEME_VARIANTS]
    if unknown:
        raise ValueError(f"unknown scheme(s) {unknown}; choose from {list(SCHEME_VARIANTS)}")
    task = PopulationTask()
    prompts = task.split_prompts("train")
    floor = distribution_metrics(torch.stack([luce_projection(task, p) for p in prompts]), task.targets(prompts),
                                 [task.favourites(p) for p in prompts])
    jobs = [(scheme, s) for s in range(seed, seed + size.seeds) for scheme in size.schemes]
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = list(pool.map(_run_one, *zip(*[(run_dir, size, scheme, s) for scheme, s in jobs])))
    else:
        runs = [_run_one(run_dir, size, scheme, s) for scheme, s in jobs]
    results: dict = {"size": size.__dict__ | {"schemes": list(size.schemes)}, "floor": floor, "curves": {},
                     "baselines": {}, "spread": {}, "timings": {}}
    for run in runs:
        scheme, s = run["scheme"], run["seed"]
        results["curves"].setdefault(scheme, []).append(run["curve"])
        results["spread"].setdefault(scheme, []).append(run["spread"])
        results["timings"][f"joint {scheme}, seed {s}"] = run["seconds"]
        for name, metrics in run.get("baselines", {}).items():
            results["baselines"].setdefault(name, []).append(metrics)
        if "baseline_seconds" in run:
            results["timings"][f"baselines, seed {s}"] = run["baseline_seconds"]
    results["final"] = {scheme: _final(curves) for scheme, curves in results["curves"].items()}
    results["queries_to_match_passive"] = _queries_to_match(results["curves"])
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    write_joint_plots(results, run_dir)
    return results


def _spread_by_exposure(result, ids: torch.Tensor, num_train: int) -> dict:
    """Posterior std of each response's utility, by how often it was shown; eval prompts were never queried."""
    spread = posterior_spread(result.model.head, head_features_of(result, ids))
    shown = torch.zeros(spread.shape, dtype=torch.long)
    for p, candidates, _ in result.extra["records"].rows:
        shown[p, candidates] += 1
    shown[num_train:] = -1  # eval prompts
    rows = []
    for label, mask in (("never shown (train prompts)", shown == 0), ("shown 1-4 times", (shown >= 1) & (shown <= 4)),
                        ("shown 5+ times", shown >= 5), ("eval prompts (never queried)", shown == -1)):
        values = spread[mask]
        rows.append({"group": label, "n": int(mask.sum()), "mean_std": float(values.mean()) if len(values) else None})
    return {"groups": rows, "shown": shown.flatten().tolist(), "std": spread.flatten().tolist()}


def _final(curves: list[list[dict]]) -> dict:
    return {key: mean_and_sd([c[-1][key] for c in curves]) for key in ("kl", "tv", "mass_type0", "mass_type1",
                                                                         "mass_type2")}


def _queries_to_match(curves: dict) -> dict:
    """Per scheme: the first query count whose seed-mean KL is at or below passive's final seed-mean KL."""
    if "passive" not in curves:
        return {}

    def mean_curve(runs):
        return [(runs[0][i]["queries"], statistics.fmean(r[i]["kl"] for r in runs)) for i in range(len(runs[0]))]

    goal = mean_curve(curves["passive"])[-1][1]
    out = {"passive_final_kl": goal, "passive_queries": mean_curve(curves["passive"])[-1][0]}
    for scheme, runs in curves.items():
        out[scheme] = next((q for q, kl in mean_curve(runs) if kl <= goal), None)
    return out


@torch.no_grad()
def posterior_spread(head: nn.Module, features: torch.Tensor, samples: int = 64, seed: int = 0) -> torch.Tensor:
    """Standard deviation over epistemic indices of each response's utility relative to its prompt's mean
    utility, ``[P, Y]`` for features ``[P, Y, H]``: the posterior's width. Centred, because a choice depends only
    on utility differences (an offset shared by all responses of a prompt is unidentifiable and never trained)."""
    generator = torch.Generator().manual_seed(seed)
    offsets = head(features.flatten(0, 1), head.sample_index(samples, generator))  # [S, P·Y]
    offsets = offsets.view(samples, features.shape[0], features.shape[1])
    return (offsets - offsets.mean(-1, keepdim=True)).std(0)


@torch.no_grad()
def head_features_of(result: TrainResult, ids: torch.Tensor) -> torch.Tensor:
    """The features ``[P, Y, H]`` the result's head reads: the starting LM's or the trained LM's."""
    if result.extra["head_features"] is not None:
        return result.extra["head_features"]
    return result.model(ids.flatten(0, 1))[1].view(ids.shape[0], ids.shape[1], -1)


def luce_projection(task: PopulationTask, prompt: str, steps: int = 300) -> torch.Tensor:
    """The Luce model closest to the population's *pairwise* choices under uniform pairs, ``[|Y|]``.

    argmin_π Σ_{i≠j} P_pop(i ≻ j) · −log(π_i / (π_i + π_j)): where choice MLE on uniform pairwise queries
    converges, so its distance to p* is the floor of any Luce model learning from such pairs.
    """
    u = task.utilities(prompt)  # [types, Y]
    weights = torch.tensor(task.weights, dtype=torch.float64)[:, None, None]
    prefer = (weights * torch.sigmoid(u[:, :, None] - u[:, None, :])).sum(0)  # P(i ≻ j), [Y, Y]
    logits = task.target(prompt).log().clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([logits], max_iter=steps, line_search_fn="strong_wolfe")
    off_diagonal = 1 - torch.eye(len(task.responses), dtype=torch.float64)

    def closure():
        optimiser.zero_grad()
        loss = -(prefer * torch.nn.functional.logsigmoid(logits[:, None] - logits[None, :]) * off_diagonal).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return logits.detach().softmax(-1)

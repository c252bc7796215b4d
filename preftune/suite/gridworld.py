"""ZPG and ZBCPG against trajectory DPO and RM + PPO in the GridWorld, at equal numbers of human queries.

`preftune run` runs one seed of this comparison; `benchmarks/zpg.py` runs several seeds, slips and budgets.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from preftune.config import ConfigError, apply_overrides, load_yaml
from preftune.methods.zpg import ZPGConfig, train_zpg_gridworld
from preftune.suite.gridworld_baselines import (
    RewardPPOConfig,
    TrajectoryDPOConfig,
    train_dpo_gridworld,
    train_reward_ppo_gridworld,
)
from preftune.suite.settings import CONFIGS
from preftune.tasks.gridworld import GridWorld

CONFIG_CLASSES = {"zpg": ZPGConfig, "zbcpg": ZPGConfig, "dpo": TrajectoryDPOConfig, "rm+ppo": RewardPPOConfig}


def load_gridworld_settings(path: Path = CONFIGS / "gridworld.yaml") -> dict[str, dict]:
    """Each method's settings (`configs/gridworld.yaml`), checked against its config class; an error names the file,
    the method and the field."""
    settings = load_yaml(path)
    if set(settings) != set(CONFIG_CLASSES):
        raise ConfigError(f"{path}: needs the methods {', '.join(CONFIG_CLASSES)}, has {', '.join(settings)}")
    for method, config_cls in CONFIG_CLASSES.items():
        try:
            apply_overrides(config_cls(), settings[method])
        except ConfigError as e:
            raise ConfigError(f"{path}: {method}: {e}") from None
    return settings


def _run_method(name: str, settings: dict, queries: int, seed: int, slip: float) -> list[dict]:
    """One method's history (rows with ``queries`` and ``true_return``) at a query budget."""
    env = GridWorld(slip=slip)
    per_iteration = settings["batch_size"] * settings.get("annotators_per_pair", 1)  # human queries per iteration
    if queries < per_iteration:  # not one iteration fits the budget: the method never updates (configs need >= 1)
        return []
    if name in ("zpg", "zbcpg"):
        with tempfile.TemporaryDirectory() as scratch:  # a run of the shared loop writes a folder; keep none
            cfg = ZPGConfig(**settings, steps=queries // per_iteration, seed=seed, gridworld_slip=slip,
                            output_dir=scratch, progress=False)
            return train_zpg_gridworld(cfg, env).history
    if name == "dpo":
        cfg = TrajectoryDPOConfig(**settings, steps=queries // settings["batch_size"], seed=seed)
        return train_dpo_gridworld(cfg, env).history
    cfg = RewardPPOConfig(**settings, steps=queries // settings["batch_size"], seed=seed)
    return train_reward_ppo_gridworld(cfg, env).history


def _at(history: list[dict], budget: int) -> float:
    """The true return after the last update that had used at most ``budget`` queries (the start if none)."""
    done = [h for h in history if h["queries"] <= budget]
    return done[-1]["true_return"] if done else float(GridWorld().value(torch.zeros(16, 4)))


def mean_sd(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value) and the values themselves."""
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def gridworld_comparison(queries: int, seeds: int, slip: float, methods=("zpg", "zbcpg", "dpo", "rm+ppo"),
                         points: int = 16) -> dict:
    """Each method's true return (exact DP) after ``points`` evenly spaced query budgets up to ``queries``, mean
    and sd over seeds ``0..seeds-1``; for ZPG also the exact gradient norm over its iterations."""
    settings = load_gridworld_settings()
    budgets = [round(queries * (i + 1) / points) for i in range(points)]
    out: dict = {"queries": queries, "seeds": seeds, "slip": slip, "budgets": budgets,
                 "optimal_return": GridWorld(slip=slip).optimal_value(),
                 "uniform_return": float(GridWorld(slip=slip).value(torch.zeros(16, 4))), "methods": {},
                 "settings": {**settings, "rm+ppo": {**asdict(RewardPPOConfig()), **settings["rm+ppo"]}}}
    for name in methods:
        started = time.perf_counter()
        histories = [_run_method(name, settings[name], queries, seed, slip) for seed in range(seeds)]
        curve = [mean_sd([_at(h, b) for h in histories]) for b in budgets]
        entry = {"curve": curve, "final": curve[-1], "seconds": time.perf_counter() - started}
        if name == "zpg" and histories[0]:  # convergence: the exact gradient norm over iterations, mean over seeds
            steps = len(histories[0])
            marks = sorted({0, *range(max(0, steps // 8 - 1), steps, max(1, steps // 8))})
            entry["grad_norm"] = {"iterations": [m + 1 for m in marks],
                                  "mean": [statistics.mean(h[m]["grad_norm"] for h in histories) for m in marks],
                                  "min_so_far": [statistics.mean(min(r["grad_norm"] for r in h[:m + 1])
                                                                 for h in histories) for m in marks]}
        out["methods"][name] = entry
        spread = f" ± {curve[-1]['sd']:.3f}" if seeds > 1 else ""  # one seed has no spread to show
        print(f"  {name:7s} slip {slip}: return {curve[-1]['mean']:.3f}{spread} at {queries} "
              f"queries ({entry['seconds']:.0f}s)", flush=True)
    return out

"""`preftune bench rlp`: the RLP pipeline (Lang et al. 2024) for several seeds and methods, summarised in tables.

For each seed, ``train_rlp`` runs SFT → reward model → PPO → policy samples once (into ``<output>/seed<k>/``) and then,
for each method, the retraining and the second PPO; finished stages are reused, so an interrupted bench resumes
where it stopped. The summary (``rlp-bench.json``, ``rlp-bench.md``) holds:

1. win rate against the SFT reference (noisy judge, label flips 0.25; and the oracle) for SFT, Best-of-N, PPO and
   each RLP method — the paper's Table;
2. accuracy of the synthetic pairs against the oracle: SPG vs Select-All vs RLAIF;
3. reward-model accuracy on pairs of PPO-policy samples (oracle-labelled), before and after retraining.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from benchmarks import study_settings
from preftune.config import apply_overrides
from preftune.methods.rlp import RLPConfig
from preftune.methods.rlp_pipeline import train_rlp
from preftune.suite.rlp_eval import evaluate_rlp

WIN_RATE_COLUMNS = (("annotator_win_rate", "win rate vs SFT (judge, p = 0.25)"), ("win_rate", "win rate (oracle)"),
                    ("oracle_reward", "oracle reward"), ("kl_to_reference", "KL to SFT"))


def _mean_std(values: Sequence[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


THRESHOLDS = tuple(study_settings("rlp")["confidence_thresholds"])  # config/rlp.yaml


def confidence_sweep(task_name: str, groups_by_seed: dict[int, list], thresholds=THRESHOLDS) -> dict:
    """SPG's pairs and their oracle accuracy at several confidence thresholds γ, from each seed's policy samples
    (no training): does a larger largest cluster mean a more reliable pair?"""
    from preftune.methods.rlp_pipeline import every_synthetic_pair_set
    from preftune.tasks import get_task

    task = get_task(task_name)
    return {str(g): {seed: every_synthetic_pair_set(task, groups, g, seed)[1]["spg"]
                     for seed, groups in groups_by_seed.items()} for g in thresholds}


def summarise(runs: dict[int, dict[str, dict]], sweep: dict | None = None) -> str:
    """Markdown tables from ``{seed: {method: results}}`` (mean ± sample std over seeds)."""
    seeds = sorted(runs)
    methods = [m for m in runs[seeds[0]]]
    first = runs[seeds[0]][methods[0]]
    rows = [name for name in first["methods"] if not name.startswith("rlp-")] + [f"rlp-{m}" for m in methods]

    def method_metrics(row: str) -> list[dict]:
        method = row[4:] if row.startswith("rlp-") else methods[0]
        return [runs[s][method]["methods"][row] for s in seeds]

    lines = [f"Seeds {seeds}; mean ± std over seeds.", "", "| method | " + " | ".join(t for _, t in WIN_RATE_COLUMNS)
             + " |", "|---" * (len(WIN_RATE_COLUMNS) + 1) + "|"]
    for row in rows:
        ms = method_metrics(row)
        lines.append(f"| {row} | " + " | ".join(_mean_std([m.get(k) for m in ms]) for k, _ in WIN_RATE_COLUMNS) + " |")
    lines += ["", "| synthetic pairs | pairs per run | accuracy vs oracle |", "|---|---|---|"]
    for name in ("spg", "select-all", "rlaif"):
        stats = [runs[s][methods[0]]["synthetic_pairs"][name] for s in seeds]
        lines.append(f"| {name} | {_mean_std([float(x['pairs']) for x in stats])} | "
                     f"{_mean_std([x['oracle_accuracy'] for x in stats])} |")
    lines += ["", "| reward model | held-out human pairs | PPO samples, train prompts | PPO samples, eval prompts |",
              "|---|---|---|---|"]
    keys = ("human_heldout", "ppo_samples_train", "ppo_samples_eval")
    lines.append("| before (D only) | " + " | ".join(
        _mean_std([runs[s][methods[0]]["reward_model"][k]["before"] for s in seeds]) for k in keys) + " |")
    for method in methods:
        lines.append(f"| after rlp-{method} | " + " | ".join(
            _mean_std([runs[s][method]["reward_model"][k]["after"] for s in seeds]) for k in keys) + " |")
    pairs = [runs[s][methods[0]]["reward_model"]["ppo_samples_eval"]["pairs"] for s in seeds]
    lines += ["", f"Policy-sample pairs per run (eval prompts, oracle ties dropped): {pairs}.", "",
              "| policy | its reward model's score | oracle reward |", "|---|---|---|"]
    names = ["ppo"] + [f"rlp-{m}" for m in methods]
    for name in names:
        method = name[4:] if name.startswith("rlp-") else methods[0]
        scores = [runs[s][method]["policy_scores"][name] for s in seeds]
        lines.append(f"| {name} | {_mean_std([x['reward_model'] for x in scores])} | "
                     f"{_mean_std([x['oracle'] for x in scores])} |")
    if sweep:
        lines += ["", "| SPG confidence threshold γ | pairs per run | accuracy vs oracle |", "|---|---|---|"]
        for g, per_seed in sweep.items():
            lines.append(f"| {g} | {_mean_std([float(x['pairs']) for x in per_seed.values()])} | "
                         f"{_mean_std([x['oracle_accuracy'] for x in per_seed.values()])} |")
    return "\n".join(lines) + "\n"


def _cached(cfg: RLPConfig) -> dict | None:
    """The results of an earlier run of exactly this configuration (run flags aside), if there is one."""
    path = Path(cfg.output_dir) / f"results-{cfg.method}.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    stored, current, defaults = results["config"], asdict(cfg), asdict(RLPConfig())
    ignore = ("resume", "progress", "overwrite")
    # a field added since that run counts as unchanged when the run asks for its default
    same = all(stored.get(k, defaults[k]) == v for k, v in current.items() if k not in ignore)
    return results if same else None


def run_rlp_bench(output_dir: Path, seeds: Sequence[int], methods: Sequence[str] = ("spg", "uml"),
                  overrides: dict | None = None, progress: bool = True) -> dict:
    """Run every (seed, method), reusing the results of an identical earlier run, and write ``rlp-bench.json``
    and ``rlp-bench.md`` into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[int, dict[str, dict]] = {}
    for seed in seeds:
        for method in methods:
            cfg = apply_overrides(RLPConfig(), {**(overrides or {}), "output_dir": str(output_dir / f"seed{seed}"),
                                                "method": method, "seed": seed, "resume": True,
                                                "progress": progress})
            runs.setdefault(seed, {})[method] = _cached(cfg) or evaluate_rlp(cfg, train_rlp(cfg))
    groups = {seed: json.loads((output_dir / f"seed{seed}" / "policy_samples.json").read_text()) for seed in seeds}
    task_name = runs[seeds[0]][methods[0]]["config"]["task"]
    sweep = confidence_sweep(task_name, groups)
    (output_dir / "rlp-bench.json").write_text(json.dumps({"runs": runs, "confidence_sweep": sweep}, indent=2))
    (output_dir / "rlp-bench.md").write_text(summarise(runs, sweep))
    return runs

"""`preftune bench zpg`: the zeroth-order experiments of docs/benchmarks.md, one reproducible command.

- ``gridworld``: true return against human queries for ZPG, ZBCPG, trajectory DPO and RM + PPO (several seeds);
  ‖∇J‖ over ZPG's iterations; the same at slip 0 (deterministic moves, where DPO is well specified).
- ``cosine``: the estimator against the exact DP gradient as N (pairs) and M (labels per pair) grow.
- ``lm``: ZPG on preference-language from a small SFT model, next to DPO at the same number of labels.

Results go to ``<output>/results.json`` and PNG plots beside it.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks import study_settings
from preftune.feedback import Annotator, preference_link, repeated_preference_shares
from preftune.losses import zpg_gradient
from preftune.methods.zpg import ZPGConfig
from preftune.suite.gridworld import gridworld_comparison, mean_sd
from preftune.tasks.gridworld import GridWorld, return_utility

STUDY = study_settings("zpg")  # config/zpg.yaml: the estimator grid and the LM run


def estimator_cosine(pairs: list[int], labels: list[int], mu: float, seeds: int) -> dict:
    """Cosine of the ZPG estimate with the exact gradient at the uniform policy (where training starts), each
    estimate averaged over an orthonormal basis of d = 64 directions (each uniform on the sphere; the basis makes
    the average over v exact up to the sampling noise, which is what this measures). Row "exact": the value
    differences from the DP instead of preferences (N, M = ∞), which leaves only the smoothing bias of μ."""
    env = GridWorld()
    theta = torch.zeros(16, 4, dtype=torch.float64)
    _, exact = env.value_and_gradient(theta)
    exact = exact.flatten()
    annotator = Annotator(return_utility)
    table: dict = {"mu": mu, "pairs": list(pairs), "labels": list(labels), "seeds": seeds, "cosine": {}}
    noise_free = []
    cos = {(n, m): [] for n in pairs for m in labels}
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64, generator=g))
        perturbed = theta + mu * basis.T.reshape(64, 16, 4)
        difference = env.value(perturbed) - env.value(theta)
        estimate = sum(zpg_gradient(preference_link(difference[k]), basis[:, k], mu) for k in range(64)) / 64
        noise_free.append(float(torch.nn.functional.cosine_similarity(estimate, exact, dim=0)))
        for n in pairs:
            returns = env.sample(torch.stack([theta.expand(64, 16, 4), perturbed]), n, g).returns
            probs = annotator.prob_from_margins(returns[1] - returns[0])
            for m in labels:
                shares = repeated_preference_shares(probs, m, g)
                estimate = sum(zpg_gradient(shares[k], basis[:, k], mu) for k in range(64)) / 64
                cos[(n, m)].append(float(torch.nn.functional.cosine_similarity(estimate, exact, dim=0)))
    table["exact"] = mean_sd(noise_free)
    for (n, m), values in cos.items():
        table["cosine"][f"N={n},M={m}"] = mean_sd(values)
    return table


def lm_comparison(iterations: int, seed: int, output_dir: Path, pairs_per_iteration: int, annotators_per_pair: int,
                  sft_steps: int, sft_demos: int, param_filter: str, mu: float, lr: float, dpo_beta: float,
                  eval_prompts: int) -> dict:
    """SFT on teacher demonstrations, then ZPG on the oracle-judged annotators' comparisons, and DPO on as many
    annotator labels of teacher pairs; mean oracle reward on eval prompts. The settings: config/zpg.yaml's ``lm``."""
    import random

    from preftune.evaluate import evaluate_policy
    from preftune.feedback import label_pairs
    from preftune.methods.dpo import DPOConfig, train_dpo
    from preftune.methods.sft import SFTConfig, train_sft
    from preftune.methods.zpg import train_zpg_lm
    from preftune.tasks import get_task
    from preftune.tiny import build_tiny_model, build_tiny_tokenizer

    task = get_task("preference-language")
    tokenizer = build_tiny_tokenizer()
    common = dict(seed=seed, progress=False, save_every=0, overwrite=True, mixed_precision="no")
    started = time.perf_counter()
    sft = train_sft(SFTConfig(output_dir=str(output_dir / "lm-sft"), steps=sft_steps, **common),
                    task.demonstrations("train", sft_demos, seed), model=build_tiny_model("tiny", tokenizer, seed=seed),
                    tokenizer=tokenizer).model
    zpg_cfg = ZPGConfig(output_dir=str(output_dir / "lm-zpg"), steps=iterations, batch_size=pairs_per_iteration,
                        annotators_per_pair=annotators_per_pair, mu=mu, lr=lr, param_filter=param_filter,
                        max_new_tokens=task.max_response_chars + 1, **common)
    zpg = train_zpg_lm(zpg_cfg, task.prompts("train", 10_000, seed), task.reward, model=copy.deepcopy(sft),
                       tokenizer=tokenizer)
    budget = int(zpg.history[-1]["queries"])
    pairs = label_pairs(task.candidate_pairs("train", budget, seed), Annotator(task.reward), random.Random(seed))
    dpo_cfg = DPOConfig(output_dir=str(output_dir / "lm-dpo"), steps=max(1, budget // 32), beta=dpo_beta, **common)
    dpo = train_dpo(dpo_cfg, pairs, model=copy.deepcopy(sft), tokenizer=tokenizer).model
    out = {"queries": budget, "labels_dpo": len(pairs), "zpg": asdict(zpg_cfg), "sft_steps": sft_steps,
           "perturbed_dim": zpg.history[-1]["perturbed_dim"], "methods": {}}
    for name, model in (("sft", sft), ("zpg", zpg.model), ("dpo", dpo)):
        metrics = evaluate_policy(task, model, tokenizer, reference=sft, num_prompts=eval_prompts, seed=seed)
        out["methods"][name] = {k: metrics[k] for k in ("oracle_reward", "win_rate", "kl_to_reference")}
    out["zpg_score_curve"] = [h["score"] for h in zpg.history]
    out["seconds"] = time.perf_counter() - started
    return out


def plot(results: dict, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"zpg": "#1f77b4", "zbcpg": "#2ca02c", "dpo": "#d62728", "rm+ppo": "#9467bd"}
    comparisons = [k for k in ("gridworld", "gridworld_deterministic") if k in results]
    if comparisons:
        fig, axes = plt.subplots(1, len(comparisons), figsize=(6 * len(comparisons), 4), squeeze=False)
        for ax, key in zip(axes[0], comparisons):
            res = results[key]
            for name, entry in res["methods"].items():
                mean = [c["mean"] for c in entry["curve"]]
                sd = [c["sd"] for c in entry["curve"]]
                ax.plot(res["budgets"], mean, label=name, color=colors.get(name))
                ax.fill_between(res["budgets"], [a - b for a, b in zip(mean, sd)], [a + b for a, b in zip(mean, sd)],
                                color=colors.get(name), alpha=0.15)
            ax.axhline(res["optimal_return"], color="k", ls="--", lw=0.8, label="optimal")
            ax.axhline(res["uniform_return"], color="gray", ls=":", lw=0.8, label="uniform (start)")
            ax.set_xlabel("human queries")
            ax.set_ylabel("true return (exact DP)")
            ax.set_title(f"GridWorld, slip {res['slip']} ({res['seeds']} seeds, mean ± sd)")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(output / "zpg_return_vs_queries.png", dpi=110)
        plt.close(fig)
    if "cosine" in results:
        res = results["cosine"]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for m in res["labels"]:
            ax.plot(res["pairs"], [res["cosine"][f"N={n},M={m}"]["mean"] for n in res["pairs"]], marker="o",
                    label=f"M = {m}")
        ax.axhline(res["exact"]["mean"], color="k", ls="--", lw=0.8, label="exact value differences")
        ax.set_xscale("log")
        ax.set_xlabel("N (trajectory pairs per direction)")
        ax.set_ylabel("cosine with the exact gradient")
        ax.set_title(f"ZPG estimator at the uniform policy (μ = {res['mu']})")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(output / "zpg_estimator_cosine.png", dpi=110)
        plt.close(fig)
    if "gridworld" in results and "grad_norm" in results["gridworld"]["methods"].get("zpg", {}):
        gn = results["gridworld"]["methods"]["zpg"]["grad_norm"]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot(gn["iterations"], gn["mean"], marker="o", label="‖∇J(θ_t)‖ (mean over seeds)")
        ax.plot(gn["iterations"], gn["min_so_far"], marker=".", label="min over iterates so far")
        ax.set_xlabel("ZPG iteration")
        ax.set_ylabel("exact gradient norm")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(output / "zpg_grad_norm.png", dpi=110)
        plt.close(fig)


def run_zpg_bench(parts: tuple[str, ...], output: Path, queries: int = 51_200, seeds: int = 5,
                  lm_iterations: int = 600, methods: tuple[str, ...] = ("zpg", "zbcpg", "dpo", "rm+ppo"),
                  lm_seed: int = 0) -> dict:
    torch.set_num_threads(1)
    output.mkdir(parents=True, exist_ok=True)
    path = output / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if "gridworld" in parts:
        results["gridworld"] = gridworld_comparison(queries, seeds, slip=0.2, methods=methods)
        results["gridworld_deterministic"] = gridworld_comparison(queries // 2, max(2, seeds // 2 + 1), slip=0.0,
                                                                  methods=methods)
    if "cosine" in parts:
        results["cosine"] = estimator_cosine(**STUDY["cosine"])
        print("  cosine " + ", ".join(f"{k} {v['mean']:.2f}" for k, v in results["cosine"]["cosine"].items())
              + f"; exact differences {results['cosine']['exact']['mean']:.3f}", flush=True)
    if "lm" in parts:  # one seed per call; the summary is over every seed stored so far
        runs = results.setdefault("lm_runs", {})
        if "lm" in results and "0" not in runs:  # a single-seed result of an earlier version
            runs["0"] = results["lm"]
        runs[str(lm_seed)] = lm_comparison(lm_iterations, lm_seed, output / f"lm-seed{lm_seed}", **STUDY["lm"])
        results["lm"] = {name: mean_sd([r["methods"][name]["oracle_reward"] for r in runs.values()])
                         for name in ("sft", "zpg", "dpo")}
        print("  lm " + json.dumps(runs[str(lm_seed)]["methods"]), flush=True)
    path.write_text(json.dumps(results, indent=2))
    plot(results, output)
    return results


if __name__ == "__main__":  # python -m benchmarks.zpg
    run_zpg_bench(("gridworld", "cosine", "lm"), Path("runs/bench-zpg"))

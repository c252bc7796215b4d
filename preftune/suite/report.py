"""Turn a run's results.json into report.md and PNG plots (`preftune report RUN_DIR`)."""

from __future__ import annotations

import json
from pathlib import Path

METRIC_COLUMNS = [("oracle_reward", "oracle reward"), ("win_rate", "win rate vs SFT (oracle)"),
                  ("annotator_win_rate", "win rate vs SFT (noisy judge)"), ("kl_to_reference", "KL to SFT"),
                  ("accuracy", "accuracy"), ("self_bleu", "Self-BLEU"), ("distinct_2", "distinct-2")]


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{0.0 if abs(value) < 5e-4 else value:.3f}"  # no "-0.000"
    return str(value)


def method_table(methods: dict) -> str:
    cols = [(k, title) for k, title in METRIC_COLUMNS if any(k in m for m in methods.values())]
    lines = ["| method | " + " | ".join(t for _, t in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in methods.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def _plot_losses(histories: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s, h in histories.items() if h]
    cols = min(4, len(stages))
    rows = -(-len(stages) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(stages):]:
        ax.set_visible(False)
    for ax, stage in zip(axes.flat, stages):
        h = histories[stage]
        key = "score" if "score" in h[0] else "loss"  # online RL: the reward it climbs says more than its loss
        ax.plot([r["iteration"] for r in h], [r[key] for r in h])
        if "kl" in h[0]:  # and how far it moved from the reference to get there
            twin = ax.twinx()
            twin.plot([r["iteration"] for r in h], [r["kl"] for r in h], color="#d8763b", lw=0.9)
            twin.set_ylabel("KL to reference", color="#d8763b", fontsize=8)
        ax.set_title(stage)
        ax.set_xlabel("iteration" if key == "score" else "step")
        ax.set_ylabel("reward (score)" if key == "score" else "training loss", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_methods(methods: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(methods)
    panels = [("oracle_reward", "oracle reward"), ("win_rate", "win rate vs SFT (oracle)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.4))
    for ax, (key, label) in zip(axes, panels):
        values = [methods[n].get(key, float("nan")) for n in names]
        bars = ax.bar(range(len(names)), values, color=["#888"] + ["#3b7dd8"] * (len(names) - 1))
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(label)
        if key == "win_rate":
            ax.axhline(0.5, color="k", lw=0.8, ls="--")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    meta = results["meta"]
    lines = [f"# preftune run: {run_dir.name}", "",
             f"{'Quick' if meta['quick'] else 'Full'} suite, seed {meta['seed']}, torch {meta['torch']}, "
             f"{meta['threads']} threads, {results['timings'].get('total', 0):.0f} s in all.", ""]
    if meta["quick"]:
        lines += ["*A quick run checks the setup: its models are too small and too briefly trained to rank methods; "
                  "`preftune run` gives the numbers to compare.*", ""]
    pl = results["tasks"].get("preference-language")
    if pl:
        rm = pl["reward_model"]
        _plot_methods(pl["methods"], run_dir / "preference_language.png", "preference-language (eval prompts)")
        lines += ["## preference-language", "",
                  f"Annotator labels (Bradley–Terry, temperature 1): {pl['labels']} for the reward model (which "
                  f"scores Best-of-N, PPO and RLOO), the first {pl.get('dpo_labels', pl['labels'])} of them for DPO "
                  "(one epoch of its steps). Win rates "
                  "against one SFT sample per prompt, by the oracle (ties count ½) and by a judge that flips 25% of "
                  "its labels (AlpacaFarm-style).", "", method_table(pl["methods"]), "",
                  "![methods](preference_language.png)", "",
                  "### Reward model", "",
                  f"Held-out accuracy {rm['heldout_accuracy']:.3f} on {pl['heldout_labels']} labels of unseen prompts; "
                  f"the best any model can reach there (the annotator's own agreement with the oracle) is "
                  f"{rm['ceiling']:.3f}, a gap of {100 * (rm['ceiling'] - rm['heldout_accuracy']):.1f} points "
                  f"(training-set accuracy {rm['train_accuracy']:.3f}; the head reads the "
                  f"{'sum of every token' if rm.get('pooling') == 'sum' else 'last token'}).", ""]
    if pl and pl.get("rlp"):
        rlp, acc = pl["rlp"], pl["rlp"]["reward_model_on_ppo_samples"]
        lines += ["### RLP-SPG (reward learning on policy)", "",
                  "Ten samples per instruction from the PPO policy; synthetic pairs from them, and how often the "
                  "oracle agrees (`preftune bench rlp` has the seeds and RLP-UML):", "",
                  "| synthetic pairs | pairs | accuracy vs oracle |", "|---|---|---|"]
        lines += [f"| {name} | {st['pairs']} | {_fmt(st['oracle_accuracy'])} |"
                  for name, st in rlp["synthetic_pairs"].items()]
        lines += ["", f"Reward model on {acc['pairs']} oracle-labelled pairs of PPO-policy samples: "
                  f"{acc['before']:.3f} before retraining, {acc['after']:.3f} after.", ""]
    nl = results["tasks"].get("arithmetic-nl")
    if nl:
        lines += [f"## arithmetic-nl ({meta.get('model', '')})", "",
                  "Held-out questions ('What is A plus B? Reply with just the number.', operands 10..99) after each "
                  f"LoRA stage, {meta['size']['eval_prompts']} questions; accuracy ± binomial standard error. DPO "
                  f"trained on {nl['dpo_pairs']} oracle-labelled pairs, GRPO with the oracle as its reward.", "",
                  "| stage | greedy accuracy | sampled accuracy (T=1) | greedy response chars |", "|---|---|---|---|"]
        lines += [f"| {stage} | {m['accuracy_greedy']:.3f} ± {m['stderr_greedy']:.3f} | "
                  f"{m['accuracy_sampled']:.3f} ± {m['stderr_sampled']:.3f} | {m['response_chars_greedy']:.1f} |"
                  for stage, m in nl["stages"].items()]
        lines += [""]
    for task_name in ("arithmetic", "summarise"):
        t = results["tasks"].get(task_name)
        if t:
            lines += [f"## {task_name}", "", method_table(t["methods"]), ""]
            if t.get("extracted_reward"):  # IQLearn's reward extraction (Wulfmeier et al. 2024, §5.4)
                lines += ["Extracted reward Σ_t Q(s_t, a_t) − γV(s_{t+1}) on held-out candidate responses, against the "
                          "oracle:", "", "| model | Spearman | n | pair accuracy | pairs |", "|---|---|---|---|---|"]
                lines += [f"| {m} | {c['spearman']:.3f} | {c['n']} | {_fmt(c['pair_accuracy'])} | {c['pairs']} |"
                          for m, c in t["extracted_reward"].items()]
                lines += [""]
    gw = results["tasks"].get("gridworld")
    if gw:
        lines += ["## gridworld (ZPG, ZBCPG and baselines at equal human queries)", "",
                  f"Stochastic GridWorld (slip {gw['slip']}), true return by dynamic programming: uniform start "
                  f"{gw['uniform_return']:.3f}, optimum {gw['optimal_return']:.3f}; seed {results['meta']['seed']}.",
                  "", "| method | " + " | ".join(f"{b} queries" for b in gw["budgets"][1::2]) + " |",
                  "|---" * (len(gw["budgets"][1::2]) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{c['mean']:.3f}" for c in entry["curve"][1::2]) + " |"
                  for name, entry in gw["methods"].items()]
        lines += [""]
    population = results["tasks"].get("population")
    if population:
        from preftune.suite.joint_report import joint_tables

        lines += ["## population: joint learning from choices", "",
                  "Distance of π(·|x) to the population's choice distribution p* (exact, over the 64 responses of "
                  "each training prompt); RLHF baselines on the passive run's queries. `preftune bench joint` runs "
                  "every exploration scheme over several seeds.", "", *joint_tables(population), "",
                  "![exploration](population/joint_exploration.png)", ""]
    if results.get("histories"):
        _plot_losses(results["histories"], run_dir / "losses.png")
        lines += ["## Training curves", "", "Offline stages: training loss. Online stages (PPO, RLOO, GRPO): the "
                  "reward of each iteration's samples (blue) and their KL to the reference policy (orange).", "",
                  "![losses](losses.png)", ""]
        online = {stage: h for stage, h in results["histories"].items() if h and "generate_fraction" in h[0]}
        if online:
            lines += ["| online stage | final reward | final KL | time generating |", "|---|---|---|---|"]
            lines += [f"| {stage} | {h[-1]['score']:.3f} | {h[-1]['kl']:.2f} | "
                      f"{sum(r['generate_fraction'] for r in h) / len(h):.0%} |" for stage, h in online.items()]
            lines += [""]
    cpu = results.get("cpu_seconds", {})
    lines += ["## Time", "", "| stage | seconds |" + (" CPU seconds |" if cpu else ""),
              "|---|---|" + ("---|" if cpu else "")]
    lines += [f"| {k} | {v:.1f} |" + (f" {cpu[k]:.1f} |" if k in cpu else (" – |" if cpu else ""))
              for k, v in results["timings"].items()]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

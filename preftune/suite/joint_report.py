"""The joint-learning comparison's plots and tables (`joint_comparison.py`): shared by `preftune run`'s report and
`benchmarks/joint.py`."""

from __future__ import annotations

import statistics
from pathlib import Path

import torch


def mean_and_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_joint_plots(results: dict, run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for scheme, runs in results["curves"].items():
        queries = [h["queries"] for h in runs[0]]
        for ax, key in zip(axes, ("kl", "tv")):
            values = torch.tensor([[h[key] for h in run] for run in runs])
            mean, spread = values.mean(0), values.std(0) if len(runs) > 1 else torch.zeros(len(queries))
            ax.plot(queries, mean, label=scheme)
            ax.fill_between(queries, mean - spread, mean + spread, alpha=0.15)
    for ax, label, key in zip(axes, ("KL(p* ‖ π)", "total variation"), ("kl", "tv")):
        ax.axhline(results["floor"][key], color="k", ls="--", lw=0.8, label="Luce floor (uniform pairs)")
        ax.set_xlabel("queries")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("joint learning: distance to the population's choice distribution (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(run_dir / "joint_exploration.png", dpi=110)
    plt.close(fig)

    spread = {k: v for k, v in results.get("spread", {}).items() if k in ("passive", "double-ts (sample)")}
    if spread:
        fig, axes = plt.subplots(1, len(spread), figsize=(5.5 * len(spread), 3.6), squeeze=False)
        for ax, (scheme, runs) in zip(axes[0], spread.items()):
            shown = torch.tensor(sum((r["shown"] for r in runs), []))
            std = torch.tensor(sum((r["std"] for r in runs), []))
            jitter = torch.rand(len(shown), generator=torch.Generator().manual_seed(0)) * 0.6 - 0.3
            x = torch.where(shown < 0, torch.full_like(shown, -3), shown.clamp(max=30)) + jitter
            for mask, colour, label in ((shown < 0, "#d8763b", "eval prompts (never queried)"),
                                        (shown >= 0, "#3b7dd8", "training prompts")):
                ax.scatter(x[mask].tolist(), std[mask].tolist(), s=6, alpha=0.4, color=colour, label=label)
            prior = statistics.fmean(r.get("prior", float("nan")) for r in runs)
            ax.axhline(prior, color="k", ls="--", lw=0.8, label="prior, before any query")
            ax.set_xlabel("times shown (capped at 30)")
            ax.set_ylabel("posterior std of the utility")
            ax.set_title(f"epinet after {scheme}")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(run_dir / "joint_uncertainty.png", dpi=110)
        plt.close(fig)


def _pm(pair, single_seed: bool = False) -> str:
    mean, spread = pair
    return f"{mean:.3f}" if single_seed else f"{mean:.3f} ± {spread:.3f}"  # no spread to show from one seed


def joint_tables(results: dict) -> list[str]:
    """Markdown lines: final distances per scheme, queries to match passive, baselines, spread by exposure."""
    one = len(next(iter(results["baselines"].values()), [None, None])) == 1  # the baselines have one run per seed
    lines = ["| scheme | KL(p*‖π) | TV | mass on majority favourite | minority 1 | minority 2 |",
             "|---|---|---|---|---|---|"]
    for scheme, final in results["final"].items():
        lines.append(f"| joint, {scheme} | " + " | ".join(_pm(final[k], one) for k in (
            "kl", "tv", "mass_type0", "mass_type1", "mass_type2")) + " |")
    for name, runs in results["baselines"].items():
        row = {k: mean_and_sd([r[k] for r in runs]) for k in ("kl", "tv", "mass_type0", "mass_type1", "mass_type2")}
        lines.append(f"| {name}, passive queries | " + " | ".join(_pm(row[k], one) for k in row) + " |")
    floor, target = results["floor"], results["floor"]
    lines.append(f"| Luce floor (uniform pairs) | {floor['kl']:.3f} | {floor['tv']:.3f} | {floor['mass_type0']:.3f} | "
                 f"{floor['mass_type1']:.3f} | {floor['mass_type2']:.3f} |")
    lines.append(f"| target p* | 0 | 0 | {target['target_mass_type0']:.3f} | {target['target_mass_type1']:.3f} | "
                 f"{target['target_mass_type2']:.3f} |")
    match = results.get("queries_to_match_passive", {})
    if match:
        lines += ["", f"Queries until the seed-mean KL first reaches passive's final {match['passive_final_kl']:.3f} "
                  f"(passive: {match['passive_queries']:g} queries): "
                  + ", ".join(f"{s} {f'{match[s]:g}' if match[s] is not None else 'never'}" for s in results["curves"])
                  + "."]
    spread = results.get("spread", {})
    if spread:
        groups = [g["group"] for g in next(iter(spread.values()))[0]["groups"]]
        lines += ["", "Epinet posterior spread after training (std over indices of a response's centred utility; mean "
                  "over responses and seeds; n = responses over all seeds), and of the untrained prior:", "",
                  "| scheme | prior (before any query) | " + " | ".join(groups) + " |",
                  "|---" * (len(groups) + 2) + "|"]
        for scheme, runs in spread.items():
            cells = []
            for i in range(len(groups)):
                values = [r["groups"][i]["mean_std"] for r in runs if r["groups"][i]["mean_std"] is not None]
                n = sum(r["groups"][i]["n"] for r in runs)
                cells.append(f"{statistics.fmean(values):.3f} (n={n})" if values else "– (n=0)")
            prior = statistics.fmean(r.get("prior", float("nan")) for r in runs)
            lines.append(f"| {scheme} | {prior:.3f} | " + " | ".join(cells) + " |")
    return lines

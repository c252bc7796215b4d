"""`preftune bench iqlearn`: IQLearn against MLE on arithmetic and summarise (Wulfmeier et al. 2024).

Parts (``--parts``, comma-separated):
- ``cost``: one optimizer step of MLE and of IQLearn on the same batch and model, timed side by side in
  interleaved blocks; the median step time of each and their ratio.
- ``sweep``: for each task, λ ∈ ``--lams`` (λ = 0 is MLE, bit-identical to `sft_loss`) × ``--seeds`` at the main
  dataset size, λ ∈ {0, ``--best-lam``} at the small size, and online IQLearn (α = ``--alpha``) at the best λ;
  each model: sampled accuracy/oracle reward, greedy oracle reward, Self-BLEU, distinct-2 and the extracted
  reward's Spearman correlation with the oracle. Plot: accuracy against Self-BLEU as λ varies.
- ``temperature``: MLE's own trade-off, the main-setting MLE model sampled at T ∈ {1, 1.25, 1.5, 2} (the
  baseline "IQLearn is more diverse at equal accuracy" must beat; drawn as a dashed line in the trade-off plot).
- ``fewdemo``: few demonstrations, many steps; the held-out oracle reward (greedy and sampled) and the held-out
  NLL every ``--eval-every`` steps, MLE against IQLearn at ``--best-lam`` (or the λ values of ``--fewdemo-lams``).
  ``--fewdemo-demos``, ``--fewdemo-steps`` and ``--fewdemo-lr-schedule`` override the per-task defaults (e.g. 30
  demonstrations, 1500 steps, constant LR: the regime where MLE overfits). Plot: the curves.

Every model is a freshly initialised tiny Llama trained with the same seed, data order and schedule; only the loss
differs. Results go to ``<output-dir>/results.json`` and PNGs beside it.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks import study_settings
from preftune.data import collate_demos
from preftune.evaluate import evaluate_policy
from preftune.losses import iq_td_loss, sft_loss
from preftune.methods.iqlearn import IQLearnConfig, reward_correlation, train_iqlearn
from preftune.rollout import model_logits
from preftune.tasks import get_task
from preftune.tiny import build_tiny_model, build_tiny_tokenizer

STUDY = study_settings("iqlearn")  # config/iqlearn.yaml
SETTINGS = STUDY["tasks"]  # per task: [steps, demonstrations] of the main, small-data and few-demo settings
TEMPERATURES = STUDY["temperatures"]  # the temperature part: MLE sampled at each


def measure_cost(task_name: str = "arithmetic", batch_size: int = 32, blocks: int = 10, steps_per_block: int = 20,
                 lam: float = 0.1, seed: int = 0) -> dict:
    """Step time (forward, loss, backward, AdamW) of MLE and IQLearn on one fixed batch, in alternating blocks."""
    tokenizer = build_tiny_tokenizer()
    batch = collate_demos(tokenizer, get_task(task_name).demonstrations("train", batch_size, seed), 96)
    labels, mask = batch.input_ids[:, 1:], batch.response_mask[:, 1:]
    losses = {"mle": lambda lg: sft_loss(lg, labels, mask),
              "iqlearn": lambda lg: iq_td_loss(lg, labels, mask, 1.0, lam)[0]}
    models = {name: build_tiny_model("tiny", tokenizer, seed=seed) for name in losses}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in models.items()}

    def step(name):
        logits = model_logits(models[name], batch.input_ids, batch.attention_mask)[:, :-1]
        losses[name](logits).backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    for name in losses:  # warm-up: allocator, optimizer state
        for _ in range(3):
            step(name)
    times = {name: [] for name in losses}
    for block in range(blocks):
        order = list(losses) if block % 2 == 0 else list(reversed(losses))
        for name in order:
            t0 = time.perf_counter()
            for _ in range(steps_per_block):
                step(name)
            times[name].append((time.perf_counter() - t0) / steps_per_block * 1000)
    mle, iq = statistics.median(times["mle"]), statistics.median(times["iqlearn"])
    return {"task": task_name, "batch_size": batch_size, "tokens_per_batch": int(batch.attention_mask.sum()),
            "blocks": blocks, "steps_per_block": steps_per_block, "threads": torch.get_num_threads(),
            "mle_ms": mle, "iqlearn_ms": iq, "ratio": iq / mle, "block_ms": times}


def _train(task, steps: int, num_demos: int, lam: float, seed: int, out: Path, alpha: float = 0.0, callback=None,
           lr_schedule: str = "cosine", gamma: float = 1.0):
    tokenizer = build_tiny_tokenizer()
    config = IQLearnConfig(output_dir=str(out), overwrite=True, steps=steps, seed=seed, lam=lam, alpha=alpha,
                           lr_schedule=lr_schedule, gamma=gamma,
                           max_new_tokens=task.max_response_chars + 1, save_every=0, progress=False)
    t0 = time.perf_counter()
    result = train_iqlearn(config, task.demonstrations("train", num_demos, seed),
                           model=build_tiny_model("tiny", tokenizer, seed=seed), tokenizer=tokenizer,
                           callback=callback)
    return result, time.perf_counter() - t0


def evaluate_model(task, model, tokenizer, eval_prompts: int, seed: int, gamma: float = 1.0) -> dict:
    """Sampled (T = 1, 4 per prompt) and greedy oracle metrics, diversity, and the extracted reward's fit."""
    sampled = evaluate_policy(task, model, tokenizer, num_prompts=eval_prompts, samples_per_prompt=4, seed=seed)
    greedy = evaluate_policy(task, model, tokenizer, num_prompts=eval_prompts, samples_per_prompt=1,
                             temperature=0.0, seed=seed)
    reward = reward_correlation(task, model, tokenizer, gamma=gamma, num_prompts=eval_prompts, seed=seed)
    return {"accuracy": sampled["accuracy"], "oracle_reward": sampled["oracle_reward"],
            "greedy_oracle_reward": greedy["oracle_reward"], "self_bleu": sampled["self_bleu"],
            "distinct_2": sampled["distinct_2"], "reward_spearman": reward["spearman"], "reward_n": reward["n"],
            "reward_pair_accuracy": reward["pair_accuracy"], "reward_pairs": reward["pairs"]}


def run_sweep(task_name: str, lams: list[float], seeds: list[int], best_lam: float, alpha: float,
              eval_prompts: int, work_dir: Path, log=print, small: bool = True, gamma: float = 1.0) -> list[dict]:
    task = get_task(task_name)
    (main_steps, main_demos), (small_steps, small_demos) = SETTINGS[task_name]["main"], SETTINGS[task_name]["small"]
    plan = [("main", main_steps, main_demos, lam, 0.0) for lam in lams]
    if small:
        plan += [("small", small_steps, small_demos, lam, 0.0) for lam in dict.fromkeys([0.0, best_lam])]
    if alpha > 0:
        plan += [("main", main_steps, main_demos, best_lam, alpha)]
    rows = []
    for setting, steps, demos, lam, a in plan:
        for seed in seeds:
            result, seconds = _train(task, steps, demos, lam, seed, work_dir / "model", alpha=a, gamma=gamma)
            last = result.history[-1]
            row = {"task": task_name, "setting": setting, "steps": steps, "demos": demos, "lam": lam, "alpha": a,
                   "gamma": gamma, "seed": seed, "train_seconds": seconds, "final_nll": last["nll"],
                   "final_td": last["td"],
                   **evaluate_model(task, result.model, result.tokenizer, eval_prompts, seed, gamma)}
            rows.append(row)
            log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    return rows


def run_temperature(task_name: str, temperatures: list[float], seeds: list[int], eval_prompts: int, work_dir: Path,
                    log=print) -> list[dict]:
    """MLE's own accuracy–diversity trade-off: the main-setting MLE model sampled at several temperatures (the
    baseline IQLearn's λ curve has to beat at equal accuracy; the paper's is MLE + entropy regularisation)."""
    task = get_task(task_name)
    steps, demos = SETTINGS[task_name]["main"]
    rows = []
    for seed in seeds:
        result, _ = _train(task, steps, demos, 0.0, seed, work_dir / "model")
        for temperature in temperatures:
            m = evaluate_policy(task, result.model, result.tokenizer, num_prompts=eval_prompts, samples_per_prompt=4,
                                temperature=temperature, seed=seed)
            rows.append({"task": task_name, "demos": demos, "steps": steps, "seed": seed, "temperature": temperature,
                         **{k: m[k] for k in ("accuracy", "oracle_reward", "self_bleu", "distinct_2")}})
            log(json.dumps(rows[-1]))
    return rows


def heldout_nll(task, model, tokenizer, num_demos: int, seed: int, max_length: int = 96) -> float:
    """Mean NLL per response token of held-out (eval split) demonstrations: the MLE objective off the training set."""
    batch = collate_demos(tokenizer, task.demonstrations("eval", num_demos, seed), max_length)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model_logits(model, batch.input_ids, batch.attention_mask)[:, :-1]
        nll = sft_loss(logits, batch.input_ids[:, 1:], batch.response_mask[:, 1:]).item()
    model.train(was_training)
    return nll


def run_fewdemo(task_name: str, lams: list[float], seeds: list[int], eval_every: int, eval_prompts: int,
                work_dir: Path, log=print, demos: int | None = None, steps: int | None = None,
                lr_schedule: str = "cosine") -> list[dict]:
    task = get_task(task_name)
    default_steps, default_demos = SETTINGS[task_name]["fewdemo"]
    steps, demos = steps or default_steps, demos or default_demos
    rows = []
    for lam in lams:
        for seed in seeds:
            curve = []

            def callback(step, model, lam=lam, seed=seed, curve=curve):
                if step % eval_every:
                    return
                with torch.random.fork_rng():  # evaluation must not move the training's RNG
                    tokenizer = build_tiny_tokenizer()
                    greedy = evaluate_policy(task, model, tokenizer, num_prompts=eval_prompts, samples_per_prompt=1,
                                             temperature=0.0, seed=seed)
                    sampled = evaluate_policy(task, model, tokenizer, num_prompts=eval_prompts,
                                              samples_per_prompt=2, seed=seed)
                    nll = heldout_nll(task, model, tokenizer, eval_prompts, seed)
                curve.append({"step": step, "greedy_oracle_reward": greedy["oracle_reward"],
                              "oracle_reward": sampled["oracle_reward"], "self_bleu": sampled["self_bleu"],
                              "heldout_nll": nll})

            # one folder per λ, so the λ values can run as parallel commands
            result, seconds = _train(task, steps, demos, lam, seed, work_dir / f"fewdemo-lam{lam:g}",
                                     callback=callback, lr_schedule=lr_schedule)
            train_nll = [r["nll"] for r in result.history]
            rows.append({"task": task_name, "steps": steps, "demos": demos, "lam": lam, "seed": seed,
                         "lr_schedule": lr_schedule, "curve": curve, "train_nll": train_nll[eval_every - 1::eval_every],
                         "train_seconds": seconds})
            best = max(curve, key=lambda c: c["greedy_oracle_reward"])
            log(json.dumps({"task": task_name, "demos": demos, "lam": lam, "seed": seed, "final": curve[-1],
                            "best_step": best["step"], "best": best["greedy_oracle_reward"]}))
    return rows


def fewdemo_table(rows: list[dict]) -> str:
    """Per (task, demos, steps, schedule, λ): the peak and final held-out greedy oracle reward, the drop between
    them (overfitting), the final sampled oracle reward and Self-BLEU, and the held-out NLL's minimum and final
    value; mean ± SE over seeds ("–": not recorded by that run)."""
    lines = ["| task | demos × steps (LR) | method | seeds | peak greedy oracle | final greedy oracle | drop "
             "peak → final | final sampled oracle | final Self-BLEU | min held-out NLL | final held-out NLL |",
             "|---" * 11 + "|"]
    keys = dict.fromkeys((r["task"], r["demos"], r["steps"], r.get("lr_schedule", "cosine"), r["lam"]) for r in rows)
    for task, demos, steps, schedule, lam in keys:
        g = [r for r in rows if (r["task"], r["demos"], r["steps"], r.get("lr_schedule", "cosine"), r["lam"]) ==
             (task, demos, steps, schedule, lam)]
        peak = [max(c["greedy_oracle_reward"] for c in r["curve"]) for r in g]
        final = [r["curve"][-1]["greedy_oracle_reward"] for r in g]
        cells = [f"{m:.3f} ± {se:.3f}" for m, se in map(_mean_se, [peak, final, [p - f for p, f in zip(peak, final)],
                                                                   [r["curve"][-1]["oracle_reward"] for r in g]])]
        recorded = {key: all(key in r["curve"][0] for r in g) for key in ("self_bleu", "heldout_nll")}
        cells.append("{:.1f} ± {:.1f}".format(*_mean_se([r["curve"][-1]["self_bleu"] for r in g]))
                     if recorded["self_bleu"] else "–")
        cells += ["{:.3f} ± {:.3f}".format(*_mean_se(v)) for v in
                  ([min(c["heldout_nll"] for c in r["curve"]) for r in g], [r["curve"][-1]["heldout_nll"] for r in g])
                  ] if recorded["heldout_nll"] else ["–", "–"]
        method = "MLE" if lam == 0 else f"IQLearn λ = {lam:g}"
        lines.append(f"| {task} | {demos} × {steps} ({schedule}) | {method} | {len(g)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Tables and plots


def _mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return mean, se


def sweep_table(rows: list[dict]) -> str:
    """Mean ± standard error over seeds of each (task, setting, λ, α)."""
    keys = list(dict.fromkeys((r["task"], r["setting"], r["demos"], r["steps"], r["lam"], r["alpha"],
                               r.get("gamma", 1.0)) for r in rows))
    cols = [("accuracy", "sampled acc."), ("oracle_reward", "sampled oracle"), ("greedy_oracle_reward",
            "greedy oracle"), ("self_bleu", "Self-BLEU"), ("distinct_2", "distinct-2"),
            ("reward_spearman", "reward Spearman"), ("reward_pair_accuracy", "reward pair acc.")]
    lines = ["| task | demos × steps | method | seeds | " + " | ".join(t for _, t in cols) + " |",
             "|---" * (len(cols) + 4) + "|"]
    for task, _, demos, steps, lam, alpha, gamma in keys:
        group = [r for r in rows if (r["task"], r["demos"], r["lam"], r["alpha"], r.get("gamma", 1.0)) ==
                 (task, demos, lam, alpha, gamma)]
        method = "MLE (λ = 0)" if lam == 0 else f"IQLearn λ = {lam:g}" + (f", online α = {alpha:g}" if alpha else "")
        method += f", γ = {gamma:g}" if gamma != 1.0 and lam else ""
        cells = []
        for key, _ in cols:
            mean, se = _mean_se([r[key] for r in group])
            cells.append(f"{mean:.3f} ± {se:.3f}" if key not in ("self_bleu",) else f"{mean:.1f} ± {se:.1f}")
        lines.append(f"| {task} | {demos} × {steps} | {method} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def temperature_table(rows: list[dict]) -> str:
    lines = ["| task | MLE sampled at T | seeds | sampled acc. | sampled oracle | Self-BLEU | distinct-2 |",
             "|---|---|---|---|---|---|---|"]
    for task, temperature in dict.fromkeys((r["task"], r["temperature"]) for r in rows):
        g = [r for r in rows if (r["task"], r["temperature"]) == (task, temperature)]
        cells = [f"{m:.3f} ± {se:.3f}" for m, se in (_mean_se([r[k] for r in g]) for k in
                                                      ("accuracy", "oracle_reward"))]
        cells += [f"{m:.1f} ± {se:.1f}" for m, se in [_mean_se([r["self_bleu"] for r in g])]]
        cells += [f"{m:.3f} ± {se:.3f}" for m, se in [_mean_se([r["distinct_2"] for r in g])]]
        lines.append(f"| {task} | {temperature:g} | {len(g)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if rows else ""


def plot_tradeoff(rows: list[dict], path: Path, temperature_rows: list[dict] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.0), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for setting, marker in (("main", "o"), ("small", "s")):
            lams = sorted({r["lam"] for r in rows if r["task"] == task and r["setting"] == setting and not r["alpha"]
                           and r.get("gamma", 1.0) == 1.0})
            xs, ys, xe, ye = [], [], [], []
            for lam in lams:  # the λ curve is γ = 1; other γ are single points below
                g = [r for r in rows if (r["task"], r["setting"], r["lam"], r["alpha"], r.get("gamma", 1.0)) ==
                     (task, setting, lam, 0.0, 1.0)]
                (x, xse), (y, yse) = _mean_se([r["self_bleu"] for r in g]), _mean_se([r["oracle_reward"] for r in g])
                xs.append(x), ys.append(y), xe.append(xse), ye.append(yse)
                ax.annotate(f"λ={lam:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            if xs:
                demos = next(r["demos"] for r in rows if r["task"] == task and r["setting"] == setting)
                ax.errorbar(xs, ys, xerr=xe, yerr=ye, marker=marker, capsize=2, label=f"{demos} demos (λ=0: MLE)")
        mle_t = [r for r in temperature_rows if r["task"] == task]
        if mle_t:
            temps = sorted({r["temperature"] for r in mle_t})
            pts = [(_mean_se([r["self_bleu"] for r in mle_t if r["temperature"] == t])[0],
                    _mean_se([r["oracle_reward"] for r in mle_t if r["temperature"] == t])[0]) for t in temps]
            ax.plot(*zip(*pts), ls="--", marker="x", color="0.4", label="MLE sampled at T = " +
                    ", ".join(f"{t:g}" for t in temps))
        for lam, gamma in dict.fromkeys((r["lam"], r["gamma"]) for r in rows if r["task"] == task and
                                        r.get("gamma", 1.0) != 1.0 and not r["alpha"]):
            g = [r for r in rows if r["task"] == task and (r["lam"], r.get("gamma", 1.0)) == (lam, gamma)]
            (x, xse), (y, yse) = _mean_se([r["self_bleu"] for r in g]), _mean_se([r["oracle_reward"] for r in g])
            ax.errorbar([x], [y], xerr=[xse], yerr=[yse], marker="D", ls="", capsize=2, label=f"λ={lam:g}, γ={gamma:g}")
        online = [r for r in rows if r["task"] == task and r["alpha"]]
        if online:
            (x, xse) = _mean_se([r["self_bleu"] for r in online])
            (y, yse) = _mean_se([r["oracle_reward"] for r in online])
            ax.errorbar([x], [y], xerr=[xse], yerr=[yse], marker="*", ms=10, ls="", capsize=2,
                        label=f"online α={online[0]['alpha']:g}, λ={online[0]['lam']:g}")
        ax.set_xlabel("Self-BLEU (lower = more diverse)")
        ax.set_ylabel("oracle reward (sampled, T = 1)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fewdemo(rows: list[dict], path: Path) -> None:
    """One column per (task, demos, steps, LR schedule): held-out greedy oracle reward (top) and held-out NLL
    (bottom, where recorded) against the step, mean over seeds with a ± SE band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["task"], r["demos"], r["steps"], r.get("lr_schedule", "cosine")) for r in rows))
    fig, axes = plt.subplots(2, len(panels), figsize=(5.0 * len(panels), 6.6), squeeze=False)
    for col, panel in enumerate(panels):
        task, demos, steps_total, schedule = panel
        in_panel = [r for r in rows if (r["task"], r["demos"], r["steps"], r.get("lr_schedule", "cosine")) == panel]
        for lam in sorted({r["lam"] for r in in_panel}):
            group = [r for r in in_panel if r["lam"] == lam]
            steps = [c["step"] for c in group[0]["curve"]]
            label = ("MLE" if lam == 0 else f"IQLearn λ={lam:g}") + f" ({len(group)} seeds)"
            for ax, key in ((axes[0, col], "greedy_oracle_reward"), (axes[1, col], "heldout_nll")):
                if not all(key in r["curve"][0] for r in group):
                    continue
                stats = [_mean_se([r["curve"][i][key] for r in group]) for i in range(len(steps))]
                mean = [m for m, _ in stats]
                line, = ax.plot(steps, mean, marker=".", label=label)
                ax.fill_between(steps, [m - se for m, se in stats], [m + se for m, se in stats],
                                color=line.get_color(), alpha=0.2)
        axes[0, col].set_title(f"{task}: {demos} demos, {steps_total} steps, {schedule} LR", fontsize=9)
        axes[0, col].set_ylabel("held-out oracle reward (greedy)")
        axes[1, col].set_ylabel("held-out NLL per token")
        for ax in axes[:, col]:
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
        if not axes[1, col].lines:
            axes[1, col].text(0.5, 0.5, "held-out NLL not recorded in this run", ha="center", va="center",
                              transform=axes[1, col].transAxes, fontsize=8, color="0.4")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(output_dir: Path, parts: list[str], tasks: list[str], lams: list[float], seeds: list[int],
              best_lam: float, alpha: float, eval_prompts: int, eval_every: int, log=print,
              fewdemo_lams: list[float] | None = None, fewdemo_demos: int | None = None,
              fewdemo_steps: int | None = None, fewdemo_lr_schedule: str = "cosine", sweep_small: bool = True,
              sweep_gamma: float = 1.0) -> dict:
    """Run ``parts`` for ``tasks``; rows of other configurations already in ``results.json`` are kept, so parts,
    tasks and extra λ values can run as separate commands (the file is re-read just before each write)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "results.json"

    def save(part: str, value) -> dict:
        results = json.loads(path.read_text()) if path.exists() else {}
        if part == "cost":
            results[part] = value
        else:  # upsert: a new row replaces the old row of the same configuration
            def key(row):
                return tuple(row.get(k) for k in ("task", "demos", "steps", "lam", "alpha", "seed", "temperature",
                                                   "lr_schedule")) + (row.get("gamma", 1.0),)

            new_keys = {key(r) for r in value}
            results[part] = [r for r in results.get(part, []) if key(r) not in new_keys] + value
        path.write_text(json.dumps(results, indent=1))
        return results

    results = save("cost", measure_cost(lam=best_lam)) if "cost" in parts else {}
    if "cost" in parts:
        c = results["cost"]
        log(f"cost: MLE {c['mle_ms']:.1f} ms, IQLearn {c['iqlearn_ms']:.1f} ms per step, ratio {c['ratio']:.3f}")
    for part, fn, kwargs in (("sweep", run_sweep, dict(lams=lams, best_lam=best_lam, alpha=alpha, small=sweep_small,
                                                       gamma=sweep_gamma)),
                             ("temperature", run_temperature, dict(temperatures=TEMPERATURES)),
                             ("fewdemo", run_fewdemo, dict(lams=fewdemo_lams or list(dict.fromkeys([0.0, best_lam])),
                                                           eval_every=eval_every, demos=fewdemo_demos,
                                                           steps=fewdemo_steps, lr_schedule=fewdemo_lr_schedule))):
        if part in parts:
            rows = [r for task in tasks for r in fn(task, seeds=seeds, eval_prompts=eval_prompts,
                                                    work_dir=output_dir / f"work-{task}", log=log, **kwargs)]
            results = save(part, rows)
    results = json.loads(path.read_text()) if path.exists() else {}
    if results.get("sweep"):
        plot_tradeoff(results["sweep"], output_dir / "iqlearn_tradeoff.png", results.get("temperature", []))
        (output_dir / "sweep.md").write_text(sweep_table(results["sweep"]) + "\n\n" +
                                             temperature_table(results.get("temperature", [])) + "\n")
        log(sweep_table(results["sweep"]))
    if results.get("fewdemo"):
        plot_fewdemo(results["fewdemo"], output_dir / "iqlearn_fewdemo.png")
        (output_dir / "fewdemo.md").write_text(fewdemo_table(results["fewdemo"]) + "\n")
        log(fewdemo_table(results["fewdemo"]))
    return results


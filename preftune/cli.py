"""The `preftune` command line: run, train <method>, eval, report, tasks, bench."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from preftune.config import ConfigError, apply_overrides, describe_fields, load_yaml, save_yaml

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune language models from human feedback, measured against exact oracles.")
train_app = typer.Typer(no_args_is_help=True, help="Train one method. `preftune train METHOD --help` lists its fields.")
bench_app = typer.Typer(no_args_is_help=True, help="Speed and memory benchmarks, side by side in one run.")
app.add_typer(train_app, name="train")
app.add_typer(bench_app, name="bench")
console = Console()
err = Console(stderr=True)


def _quiet_libraries() -> None:
    """Keep the terminal for preftune's own progress bars: silence HF's per-file bars and info logs."""
    import logging

    import transformers

    logging.getLogger("accelerate").setLevel(logging.ERROR)  # "removed shared tensor" on tied embeddings
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def parse_extra_flags(args: list[str]) -> dict[str, object]:
    """``--name value``, ``--name=value`` and bare ``--flag`` (= true) into a dict of overrides."""
    out: dict[str, object] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; config fields are given as --field value")
        name = arg[2:]
        if "=" in name:
            name, value = name.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        out[name] = value
    return out


def build_config(config_cls, config_file: Path | None, extra: list[str], defaults: dict | None = None, **fixed):
    """The class defaults, then ``defaults`` (e.g. a task's), the YAML file, ``fixed``, and ``--field value``
    flags, each layer winning over the ones before; every value validated."""
    overrides: dict[str, object] = dict(defaults or {})
    if config_file is not None:
        overrides.update(load_yaml(config_file))
    overrides.update({k: v for k, v in fixed.items() if v is not None})
    overrides.update(parse_extra_flags(extra))
    return apply_overrides(config_cls(), overrides)


def config_command(name: str, config_cls, help: str):
    """A `preftune train` command whose unknown ``--field value`` flags are config fields, listed in its help."""
    return train_app.command(name, help=help, epilog="Config fields (YAML keys or flags):\n\n"
                             + describe_fields(config_cls).replace("\n", "\n\n"),
                             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})


def comma_list(text: str, cast=str) -> list:
    """``"a, b,,c"`` -> ``[cast("a"), cast("b"), cast("c")]``: the comma-separated options of the bench commands."""
    return [cast(x.strip()) for x in text.split(",") if x.strip()]


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


# ----------------------------------------------------------------------------------------------
# train


def _training_data(kind: str, task_name: str | None, data: Path | None, num_examples: int, seed: int,
                   label_noise: float, link: str):
    """Records for a method: from a JSONL file / saved dataset, or generated from a built-in task."""
    from preftune.data import Demo, Pair, load_records

    record_type = Demo if kind == "demos" else Pair
    if data is not None:
        return load_records(data, record_type)
    if task_name is None:
        raise ConfigError("give --task NAME (see `preftune tasks`) or --data FILE.jsonl")
    from preftune.feedback import Annotator, label_pairs
    from preftune.tasks import get_task

    task = get_task(task_name)
    if kind == "demos":
        return task.demonstrations("train", num_examples, seed)
    annotator = Annotator(task.reward, link=link, flip_prob=label_noise)
    return label_pairs(task.candidate_pairs("train", num_examples, seed), annotator, random.Random(seed))


def _register_train_command(name: str, config_cls, kind: str, train_fn, summary: str, task_defaults=None) -> None:
    """``task_defaults(task) -> {field: value}``: config defaults that depend on --task (flags and YAML win)."""
    @config_command(name, config_cls, help=summary)
    def command(
        ctx: typer.Context,
        task: str = typer.Option(None, help="Built-in task to generate data from (see `preftune tasks`)."),
        data: Path = typer.Option(None, help="JSONL file or saved HF dataset instead of a task."),
        config: Path = typer.Option(None, help="YAML file of config fields."),
        num_examples: int = typer.Option(2000, help="Examples to generate from --task."),
        label_noise: float = typer.Option(0.0, help="Annotator label-flip probability for generated pairs."),
        link: str = typer.Option("bradley-terry", help="Annotator link: bradley-terry, thurstone or weibull."),
    ):
        _quiet_libraries()
        try:
            defaults = task_defaults(_task_or_none(task)) if task_defaults and task else None
            cfg = build_config(config_cls, config, ctx.args, defaults=defaults)
            records = _training_data(kind, task, data, num_examples, cfg.seed, label_noise, link)
            save_yaml(cfg, Path(cfg.output_dir) / "config.yaml")
            result = train_fn(cfg, records)
        except (ConfigError, ValueError) as e:
            _fail(str(e))
        console.print(f"[green]done[/]: {name} on {len(records)} examples -> {result.path}")


def _task_or_none(name: str | None):
    from preftune.tasks import get_task

    return get_task(name) if name else None


def _register_methods() -> None:
    from preftune.methods.dpo import DPOConfig, train_dpo
    from preftune.methods.reward import RewardConfig, train_reward
    from preftune.methods.sft import SFTConfig, train_sft

    _register_train_command("sft", SFTConfig, "demos", train_sft,
                            "Supervised fine-tuning on demonstrations {prompt, response}.")
    _register_train_command("reward", RewardConfig, "pairs", train_reward,
                            "Bradley–Terry reward model on pairs {prompt, chosen, rejected}.")
    _register_train_command("dpo", DPOConfig, "pairs", train_dpo,
                            "Direct Preference Optimization on pairs {prompt, chosen, rejected}.")
    # --- IQLearn (issue 5): the same demonstrations as sft
    from preftune.methods.iqlearn import IQLearnConfig, train_iqlearn

    _register_train_command("iqlearn", IQLearnConfig, "demos", train_iqlearn,
                            "IQLearn (inverse RL as TD-regularised MLE) on demonstrations {prompt, response}; "
                            "--alpha > 0 mixes fresh policy samples into each batch (online IQLearn).",
                            task_defaults=lambda t: {"max_new_tokens": t.max_response_chars + 1})


def _register_online_command(name: str, config_cls, train_fn, summary: str) -> None:
    @config_command(name, config_cls, help=summary)
    def command(
        ctx: typer.Context,
        task: str = typer.Option(None, help="Built-in task whose training prompts to use (see `preftune tasks`)."),
        data: Path = typer.Option(None, help="JSONL/saved dataset of {prompt, response}: the prompts, and the "
                                             "reference responses of --reward annotator."),
        config: Path = typer.Option(None, help="YAML file of config fields."),
        reward: str = typer.Option("oracle", help="'oracle' (the task's exact reward), 'annotator' (a simulated "
                                                  "annotator's 0/1 preference over the reference response), or a "
                                                  "reward-model directory from `preftune train reward`."),
        num_prompts: int = typer.Option(2000, help="Training prompts to draw from --task."),
        label_noise: float = typer.Option(0.0, help="Label-flip probability of --reward annotator."),
        link: str = typer.Option("bradley-terry", help="Link of --reward annotator: bradley-terry, thurstone, "
                                                       "weibull."),
    ):
        _quiet_libraries()
        from preftune.data import Demo, load_records
        from preftune.methods.online import make_reward
        from preftune.tasks import get_task

        try:
            task_obj = get_task(task) if task else None
            # a token is at least one character, so the task's longest response fits in max_response_chars + 1
            task_defaults = {"max_new_tokens": task_obj.max_response_chars + 1} if task_obj is not None else None
            cfg = build_config(config_cls, config, ctx.args, defaults=task_defaults)
            if data is not None:
                references = load_records(data, Demo)
            elif task_obj is not None:
                references = task_obj.demonstrations("train", num_prompts, cfg.seed)
            else:
                raise ConfigError("give --task NAME (see `preftune tasks`) or --data FILE.jsonl of prompts")
            prompts = list(dict.fromkeys(r.prompt for r in references))  # unique, in order
            reward_fn = make_reward(reward, task_obj, references, seed=cfg.seed, link=link, flip_prob=label_noise,
                                    max_length=cfg.max_length)
            save_yaml(cfg, Path(cfg.output_dir) / "config.yaml")
            result = train_fn(cfg, prompts, reward_fn)
        except (ConfigError, ValueError) as e:
            _fail(str(e))
        console.print(f"[green]done[/]: {name} on {len(prompts)} prompts -> {result.path}")


def _register_online_methods() -> None:
    from preftune.methods.ppo import PPOConfig, train_ppo
    from preftune.methods.rloo import GRPOConfig, RLOOConfig, train_grpo, train_rloo

    _register_online_command("ppo", PPOConfig, train_ppo, "PPO with a value head, GAE and a KL penalty to the "
                             "starting policy (--model), rewarded by --reward.")
    _register_online_command("rloo", RLOOConfig, train_rloo, "RLOO: k samples per prompt, leave-one-out baseline, "
                             "KL penalty in the reward.")
    _register_online_command("grpo", GRPOConfig, train_grpo, "GRPO: k samples per prompt, group-normalised "
                             "advantages, k3 KL loss term; with --reward oracle on arithmetic, RL from verifiable "
                             "rewards.")


_register_methods()
_register_online_methods()


# ZPG / ZBCPG (Zhang & Ying, arXiv 2409.17401): policy gradient from human comparisons, GridWorld or an LM task
# LM defaults of bench/zpg.py's LM section: perturb only the final norm's 128 gains (d = 128); all weights (d ≈ 4e5)
# need far more queries than a CPU run can ask (the estimator's variance grows like d²)
ZPG_LM_DEFAULTS = {"lr": 0.05, "mu": 4.0, "batch_size": 32, "annotators_per_pair": 2,
                   "param_filter": r"(^|\.)(norm|ln_f)\.weight$"}


def zpg_lm_defaults(max_new_tokens: int, chosen: set[str]) -> dict:
    """The LM defaults under the user's YAML and flags; the final-norm block is only a default when the user picked
    neither ``perturb`` nor ``param_filter`` (``--perturb lora`` or ``all`` must not inherit it)."""
    defaults = {**ZPG_LM_DEFAULTS, "max_new_tokens": max_new_tokens}
    if chosen & {"perturb", "param_filter"}:
        defaults.pop("param_filter")
    return defaults


def _register_zpg_command(name: str) -> None:
    from preftune.methods.zpg import ZPGConfig

    @config_command(name, ZPGConfig,
                    help=f"{name.upper()}: zeroth-order policy gradient straight from human comparisons "
                         "of trajectory pairs (no reward model); --task gridworld (tabular policy, exact return) or a "
                         "text task such as preference-language (an LM).")
    def command(
        ctx: typer.Context,
        task: str = typer.Option(..., help="gridworld, or a text task (see `preftune tasks`)."),
        config: Path = typer.Option(None, help="YAML file of config fields."),
        num_prompts: int = typer.Option(2000, help="Text tasks: training prompts to draw."),
    ):
        _quiet_libraries()
        from preftune.feedback import BudgetExceeded
        from preftune.methods.zpg import train_zpg_gridworld, train_zpg_lm
        from preftune.tasks import get_task

        try:
            if task == "gridworld":
                cfg = build_config(ZPGConfig, config, ctx.args, algorithm=name)
                save_yaml(cfg, Path(cfg.output_dir) / "config.yaml")
                run = train_zpg_gridworld(cfg)
                _write_tabular_run(run, Path(cfg.output_dir))
                console.print(f"[green]done[/]: {name} on gridworld, {run.ledger.total} queries, true return "
                              f"{run.history[-1]['true_return']:.3f} -> {cfg.output_dir}")
                return
            task_obj = get_task(task)
            chosen = {k.replace("-", "_") for k in parse_extra_flags(ctx.args)} | set(load_yaml(config) if config
                                                                                      else {})
            defaults = zpg_lm_defaults(task_obj.max_response_chars + 1, chosen)
            cfg = build_config(ZPGConfig, config, ctx.args, defaults=defaults, algorithm=name)
            save_yaml(cfg, Path(cfg.output_dir) / "config.yaml")
            result = train_zpg_lm(cfg, task_obj.prompts("train", num_prompts, cfg.seed), task_obj.reward)
        except (ConfigError, ValueError, BudgetExceeded) as e:
            _fail(str(e))
        console.print(f"[green]done[/]: {name} on {task} -> {result.path}")


def _write_tabular_run(run, output_dir: Path) -> None:
    from safetensors.torch import save_file

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in run.history))
    save_file({"logits": run.logits.contiguous()}, str(output_dir / "policy.safetensors"))


for _name in ("zpg", "zbcpg"):
    _register_zpg_command(_name)


def _register_joint_command() -> None:
    from preftune.methods.joint import JointConfig

    @config_command("joint", JointConfig,
                    help="Joint learning from choices on the population task: the LM is the choice model "
                         "(Luce on its own probabilities), an epinet or ensemble gives its posterior, "
                         "--explore picks which candidates to show.")
    def command(
        ctx: typer.Context,
        task: str = typer.Option("population", help="The task: 'population' (the enumerable didactic process)."),
        config: Path = typer.Option(None, help="YAML file of config fields."),
    ):
        _quiet_libraries()
        from preftune.feedback import BudgetExceeded
        from preftune.methods.joint import train_joint

        try:
            if task != "population":
                raise ConfigError(f"train joint needs --task population (its responses are enumerable), got {task!r}")
            cfg = build_config(JointConfig, config, ctx.args)
            save_yaml(cfg, Path(cfg.output_dir) / "config.yaml")
            result = train_joint(cfg)
        except (ConfigError, ValueError, BudgetExceeded) as e:
            _fail(str(e))
        last = result.history[-1]
        console.print(f"[green]done[/]: joint ({cfg.explore}) after {result.ledger.total} queries: "
                      f"KL(p*‖π) {last['kl']:.3f}, TV {last['tv']:.3f} -> {result.path}")


_register_joint_command()


# --- RLP (Lang et al. 2024): the whole retrain-on-policy pipeline in one command
def _register_rlp() -> None:
    from preftune.methods.rlp import RLPConfig

    @config_command("rlp", RLPConfig,
                    help="Reward Learning on Policy: SFT -> reward model -> PPO -> n policy samples per "
                         "instruction -> retrain the reward model (--method uml|spg, or the baselines "
                         "select-all|rlaif) -> PPO again -> evaluate. Every stage is saved under "
                         "--output-dir; --resume reuses finished stages (also another method's).")
    def command(ctx: typer.Context, config: Path = typer.Option(None, help="YAML file of config fields.")):
        _quiet_libraries()
        from preftune.methods.rlp import run_rlp

        try:
            cfg = build_config(RLPConfig, config, ctx.args)
            save_yaml(cfg, Path(cfg.output_dir) / f"config-{cfg.method}.yaml")
            results = run_rlp(cfg)
        except (ConfigError, ValueError) as e:
            _fail(str(e))
        table = Table("method", "win rate vs SFT (judge)", "win rate (oracle)", "oracle reward", "KL to SFT")
        for name, m in results["methods"].items():
            table.add_row(name, *(f"{m[k]:.3f}" for k in ("annotator_win_rate", "win_rate", "oracle_reward",
                                                          "kl_to_reference")))
        console.print(table)
        console.print(f"[green]done[/]: {Path(cfg.output_dir) / f'results-{cfg.method}.json'}")


_register_rlp()


@train_app.command("bon", help="Best-of-N: sample N responses per prompt, keep the best by a reward model or "
                               "the task oracle; writes the chosen responses and their oracle scores.")
def train_bon(
    task: str = typer.Option(..., help="Built-in task whose eval prompts to answer."),
    model: str = typer.Option("tiny", help="Policy: a trained model directory, 'tiny', or a hub id."),
    reward_model: Path = typer.Option(None, help="Reward model directory; default: the task oracle."),
    n: int = typer.Option(16, min=1, help="Samples per prompt."),
    num_prompts: int = typer.Option(200, min=1, help="Eval prompts to answer."),
    temperature: float = typer.Option(1.0, min=0.0, help="Sampling temperature."),
    output_dir: Path = typer.Option(Path("runs/bon"), help="Where responses.jsonl and metrics.json go."),
    seed: int = typer.Option(0),
):
    _quiet_libraries()
    import torch

    from preftune.data import Demo, write_jsonl
    from preftune.methods.bon import best_of_n, oracle_scorer, reward_model_scorer
    from preftune.metrics import mean_oracle_reward
    from preftune.models import RewardModel, load_trained_causal_lm
    from preftune.tasks import get_task

    try:
        task_obj = get_task(task)
        torch.manual_seed(seed)
        policy, tokenizer = load_trained_causal_lm(model) if Path(model).is_dir() else _load_named(model, seed)
        scorer = (reward_model_scorer(RewardModel.from_pretrained(reward_model), tokenizer, 128)
                  if reward_model else oracle_scorer(task_obj))
    except ValueError as e:
        _fail(str(e))
    prompts = task_obj.prompts("eval", num_prompts, seed)
    responses = best_of_n(policy, tokenizer, prompts, n, scorer, task_obj.max_response_chars + 1, temperature)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(output_dir / "responses.jsonl", [Demo(p, r) for p, r in zip(prompts, responses)])
    metrics = {"n": n, "num_prompts": num_prompts, "oracle_reward": mean_oracle_reward(task_obj, prompts, responses)}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    console.print_json(json.dumps(metrics))


def _load_named(name: str, seed: int):
    from preftune.models import load_causal_lm

    return load_causal_lm(name, seed=seed)


# ----------------------------------------------------------------------------------------------
# eval, run, report, tasks


@app.command("eval", help="Measure a policy on a task: oracle reward, accuracy, win rate and KL against a "
                          "reference, diversity.")
def eval_command(
    task: str = typer.Option(..., help="Built-in task (see `preftune tasks`)."),
    model: Path = typer.Option(None, help="Trained policy directory (needed unless --reward-from is given)."),
    reference: Path = typer.Option(None, help="Reference policy directory for win rate and KL (e.g. the SFT model)."),
    num_prompts: int = typer.Option(200, min=1),
    samples_per_prompt: int = typer.Option(4, min=1, help="Samples per prompt (diversity needs >= 2)."),
    temperature: float = typer.Option(1.0, min=0.0),
    seed: int = typer.Option(0),
    output: Path = typer.Option(None, help="Write the metrics as JSON here too."),
    reward_from: Path = typer.Option(None, help="An IQLearn (or any causal LM) directory: score the task's held-out "
                                                "candidate responses with its extracted reward Σ_t Q − γV' and "
                                                "report the Spearman correlation with the oracle (with n)."),
    reward_model: Path = typer.Option(None, help="A reward model directory (`train reward`): its accuracy on "
                                                 "the task's held-out annotator labels, next to the ceiling (the "
                                                 "annotator's own agreement with the oracle on them)."),
    num_pairs: int = typer.Option(2000, min=1, help="Held-out labelled pairs for --reward-model."),
):
    _quiet_libraries()
    from preftune.evaluate import evaluate_policy
    from preftune.models import load_trained_causal_lm
    from preftune.tasks import get_task

    if model is None and reward_from is None and reward_model is None:
        _fail("give --model DIR (a policy to evaluate), --reward-from DIR (an IQLearn reward to correlate) or "
              "--reward-model DIR (a reward model to score on held-out labels)")
    try:
        task_obj = get_task(task)
        policy, tokenizer = load_trained_causal_lm(model) if model else (None, None)
        ref = load_trained_causal_lm(reference)[0] if reference else None
        irl = load_trained_causal_lm(reward_from) if reward_from else None
        if reward_model is not None:
            from preftune.methods.reward import heldout_labels, heldout_report
            from preftune.models import RewardModel, load_tokenizer

            rm = (RewardModel.from_pretrained(reward_model).eval(), load_tokenizer(str(reward_model)))
            rm_pairs = heldout_labels(task_obj, num_pairs, seed)
    except ValueError as e:
        _fail(str(e))
    metrics = {}
    if policy is not None:
        metrics = evaluate_policy(task_obj, policy, tokenizer, reference=ref, num_prompts=num_prompts,
                                  samples_per_prompt=samples_per_prompt, temperature=temperature, seed=seed)
    if irl is not None:  # IQLearn's reward extraction (Wulfmeier et al. 2024, §5.4)
        from preftune.methods.iqlearn import reward_correlation, saved_gamma

        metrics["extracted_reward"] = reward_correlation(task_obj, *irl, gamma=saved_gamma(reward_from),
                                                         num_prompts=num_prompts, seed=seed)
    if reward_model is not None:
        # batches pad to their longest example, so the model's own limit costs nothing and cuts nothing it can read
        max_length = getattr(rm[0].config, "max_position_embeddings", 2048)
        metrics["reward_model"] = heldout_report(*rm, task_obj, rm_pairs, max_length)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(metrics, indent=2))
    console.print_json(json.dumps(metrics))


@app.command("run", help="The embedded default benchmark: every method on the built-in tasks, offline, with a "
                         "report (report.md, results.json, PNG plots) in runs/<name>/. The smollm2 suite takes its "
                         "sizes as flags too, e.g. --sft-steps 10 --eval-prompts 64 (fields of SmolSuiteSize).",
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_command(
    ctx: typer.Context,
    quick: bool = typer.Option(False, "--quick", help="A smaller run (about 2 minutes) to check the setup."),
    name: str = typer.Option(None, help="Run name; default 'default' or 'quick' ('smollm2' or 'smollm2-quick')."),
    runs_dir: Path = typer.Option(Path("runs"), help="Parent folder of runs."),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(False, help="Reuse finished stages of an earlier run with the same name."),
    suite: str = typer.Option("default", help="'default': every method on tiny models trained from scratch; "
                                              "'smollm2': LoRA SFT -> DPO -> GRPO on a pretrained model (SmolLM2-135M-"
                                              "Instruct unless --model) on natural-language arithmetic."),
    model: str = typer.Option(None, help="The pretrained model of the smollm2 suite: 'smollm2', a .gguf file, a "
                                         "model directory or a hub id. Giving it selects that suite."),
    config: Path = typer.Option(None, help="A suite file (YAML) read over the suite's own sizes and settings "
                                           "(preftune/suite/configs/); it needs only the fields it changes."),
):
    _quiet_libraries()
    if suite not in ("default", "smollm2"):
        _fail(f"--suite must be one of ['default', 'smollm2'], got {suite!r}")
    if model is not None or suite == "smollm2":
        if resume:
            _fail("--resume is not supported by the smollm2 suite (its stages are short); run it again")
        from preftune.models import ModelError
        from preftune.suite.smollm2 import load_smollm2_size, run_smollm2_suite

        try:
            size = load_smollm2_size(quick, config, parse_extra_flags(ctx.args))
            out = run_smollm2_suite(runs_dir / (name or ("smollm2-quick" if quick else "smollm2")), quick=quick,
                                    seed=seed, model=model or "smollm2", size=size)
        except (ModelError, ConfigError) as e:
            _fail(str(e))
        console.print(f"[green]report[/]: {out / 'report.md'}")
        return
    if ctx.args:
        _fail(f"unexpected arguments {ctx.args}: size flags belong to --suite smollm2")
    from preftune.suite.default import load_suite, run_suite

    try:
        size, tuning = load_suite(quick, config)
    except ConfigError as e:
        _fail(str(e))
    out = run_suite(runs_dir / (name or ("quick" if quick else "default")), quick=quick, seed=seed, resume=resume,
                    size=size, tuning=tuning)
    console.print(f"[green]report[/]: {out / 'report.md'}")


@app.command("report", help="Rebuild report.md and the PNG plots of a run from its results.json.")
def report_command(run_dir: Path = typer.Argument(..., help="A run folder, e.g. runs/default.")):
    from preftune.suite.report import write_report

    if not (run_dir / "results.json").exists():
        _fail(f"{run_dir} has no results.json; run `preftune run` first")
    path = write_report(run_dir)
    console.print(f"[green]report[/]: {path}")


@app.command("tasks", help="List the built-in tasks.")
def tasks_command():
    from preftune.tasks import TASKS

    table = Table("task", "description")
    for name, task in TASKS.items():
        table.add_row(name, task.description)
    console.print(table)


@bench_app.command("trl", help="Train SFT, reward model, DPO and RLOO with preftune and with TRL on the same tiny "
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
    _quiet_libraries()
    from preftune.bench.trl_compare import check_methods, run_trl_comparison

    chosen = tuple(comma_list(methods))
    try:
        check_methods(chosen)
    except ValueError as e:
        _fail(str(e))
    run_trl_comparison(steps=steps, batch_size=batch_size, output=output, profile=profile, repeats=repeats,
                       methods=chosen, threads=threads or None)


@bench_app.command("iqlearn", help="IQLearn against MLE (issue 5): step cost side by side, a λ sweep (accuracy, "
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
    _quiet_libraries()
    import torch

    from preftune.bench.iqlearn import SETTINGS, run_bench

    chosen_parts, chosen_tasks = comma_list(parts), comma_list(tasks)
    bad = [p for p in chosen_parts if p not in ("cost", "sweep", "temperature", "fewdemo")] + \
        [t for t in chosen_tasks if t not in SETTINGS]
    if bad:
        _fail(f"unknown part or task {bad}; parts: cost, sweep, temperature, fewdemo; tasks: {', '.join(SETTINGS)}")
    if fewdemo_lr_schedule not in ("cosine", "linear", "constant"):
        _fail(f"--fewdemo-lr-schedule must be one of cosine, linear, constant (got {fewdemo_lr_schedule!r})")
    torch.set_num_threads(threads)
    run_bench(output_dir, chosen_parts, chosen_tasks, comma_list(lams, float), comma_list(seeds, int), best_lam, alpha,
              eval_prompts, eval_every, log=console.print, fewdemo_lams=comma_list(fewdemo_lams, float) or None,
              fewdemo_demos=fewdemo_demos or None, fewdemo_steps=fewdemo_steps or None,
              fewdemo_lr_schedule=fewdemo_lr_schedule, sweep_small=sweep_small,
              sweep_gamma=sweep_gamma)


@bench_app.command("zpg", help="ZPG/ZBCPG experiments: GridWorld return vs human queries against trajectory DPO "
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
    _quiet_libraries()
    from preftune.bench.zpg import run_zpg_bench

    chosen = tuple(comma_list(parts))
    unknown = set(chosen) - {"gridworld", "cosine", "lm"}
    if unknown:
        _fail(f"--parts must be among gridworld, cosine, lm; got {sorted(unknown)}")
    gridworld_methods = tuple(comma_list(methods))
    if set(gridworld_methods) - {"zpg", "zbcpg", "dpo", "rm+ppo"}:
        _fail(f"--methods must be among zpg, zbcpg, dpo, rm+ppo; got {gridworld_methods}")
    run_zpg_bench(chosen, output, queries=queries, seeds=seeds, lm_iterations=lm_iterations,
                  methods=gridworld_methods, lm_seed=lm_seed)
    console.print(f"[green]results[/]: {output / 'results.json'}")


@bench_app.command("joint", help="Joint learning from choices: every exploration scheme over several seeds (distance "
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
    _quiet_libraries()
    import torch

    from preftune.bench.joint import write_joint_report
    from preftune.suite.joint_comparison import JointComparisonSize, run_joint_comparison

    torch.set_num_threads(1)
    size = JointComparisonSize.quick() if quick else JointComparisonSize(seeds=seeds, rounds=rounds,
                                                                         queries_per_round=queries_per_round)
    if schemes is not None:
        size.schemes = tuple(comma_list(schemes))
    try:
        results = run_joint_comparison(output_dir, size, seed, workers)
    except ValueError as e:
        _fail(str(e))
    console.print(f"[green]report[/]: {write_joint_report(results, output_dir)}")


@bench_app.command("rlp", help="RLP on preference-language for several seeds: win rates of SFT, Best-of-N, PPO and "
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
    _quiet_libraries()
    from preftune.bench.rlp import run_rlp_bench
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
        _fail(str(e))
    console.print((output_dir / "rlp-bench.md").read_text())


@bench_app.command("smollm2", help="Generation tokens/s (batched) and LoRA-training tokens/s on SmolLM2-135M-Instruct "
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
    _quiet_libraries()
    from preftune.bench.smollm2_throughput import run_smollm2_throughput
    from preftune.models import ModelError

    try:
        run_smollm2_throughput(model=model, batch_size=batch_size, steps=steps, generation_batch=generation_batch,
                               generation_batches=steps, max_new_tokens=max_new_tokens, repeats=repeats,
                               threads=threads, output=output)
    except (ModelError, ImportError) as e:
        _fail(str(e))


def main() -> None:  # pragma: no cover
    sys.exit(app())

"""The `preftune` command line: run, train <method>, eval, report, tasks, and bench (in a source checkout)."""

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
app.add_typer(train_app, name="train")
console = Console()
err = Console(stderr=True)


def _mount_benchmarks() -> None:
    """`preftune bench STUDY`: the studies of a source checkout's benchmarks/ folder, beside the preftune package
    (not installed with it; `python -m benchmarks` from the repository root runs the same app)."""
    import preftune

    root = Path(preftune.__file__).resolve().parent.parent
    if (root / "benchmarks" / "cli.py").is_file():
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        from benchmarks.cli import app as benchmarks_app

        app.add_typer(benchmarks_app, name="bench")
        return

    @app.command("bench", help="The studies behind docs/benchmarks.md (a source checkout's benchmarks/ folder).",
                 add_help_option=False, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def bench_missing():
        _fail("the benchmark studies live in the source repository's benchmarks/ folder "
              "(`python -m benchmarks STUDY` there); this installation does not include them")


_mount_benchmarks()


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


def main() -> None:  # pragma: no cover
    sys.exit(app())

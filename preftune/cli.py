"""The `preftune` command line: a thin layer over the library. `train <method>` commands are generated from
`preftune.methods.METHODS`; what each method's input is made of lives in `preftune.inputs`; `preftune bench` mounts
the studies of a source checkout's benchmarks/ folder."""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from preftune.config import ConfigError, build_config, describe_fields, load_yaml, parse_extra_flags

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune language models from human feedback, measured against exact oracles.")
train_app = typer.Typer(no_args_is_help=True, help="Train one method. `preftune train METHOD --help` lists its fields.")
app.add_typer(train_app, name="train")
console = Console()
err = Console(stderr=True, soft_wrap=True)  # an error line is not cut inside a path


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
    import datasets

    datasets.disable_progress_bars()  # "Generating train split" for every CSV/Parquet file read


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def _unexpected(error: Exception) -> None:
    """A failure preftune did not foresee: one line, and the traceback in a file (for a bug report)."""
    import tempfile
    import traceback

    path = Path(tempfile.gettempdir()) / f"preftune-error-{os.getpid()}.txt"
    path.write_text("".join(traceback.format_exception(error)))
    err.print(f"[bold red]error:[/] unexpected {type(error).__name__}: {error}\n(the full traceback is in {path})")
    raise typer.Exit(1)


def _expected_errors() -> tuple[type[Exception], ...]:
    """Failures that are the user's input or the run's state, reported in one line (no traceback)."""
    from preftune.feedback import BudgetExceeded
    from preftune.trainer import TrainingError

    return ConfigError, ValueError, BudgetExceeded, TrainingError


# ----------------------------------------------------------------------------------------------
# train: one command per method, with the options its kind of input needs


def _option(name: str, default, help: str) -> inspect.Parameter:
    kind = type(default) if default is not None else str
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=typer.Option(default, help=help),
                             annotation=Path if name in ("data", "config", "eval_data") else kind)


TASK = _option("task", None, "Built-in task to draw data from (see `preftune tasks`).")
DATA = _option("data", None, "A data file in TRL's formats (JSONL, JSON, CSV, Parquet) or a saved dataset folder, "
                             "instead of a task (docs/your-data.md).")
SPLIT = _option("split", "train", "The split of a saved DatasetDict given as --data.")
EVAL_DATA = _option("eval_data", None, "Held-out data in the same formats as --data, scored every --eval-every "
                                       "steps and at the end (eval_loss, eval_<metric> in metrics.jsonl).")
EVAL_SPLIT = _option("eval_split", "test", "The split of a saved DatasetDict given as --eval-data.")
CONFIG = _option("config", None, "YAML file of config fields.")
NUM_EXAMPLES = _option("num_examples", 2000, "Examples to generate from --task.")
NUM_PROMPTS = _option("num_prompts", 2000, "Prompts to draw from --task.")
LABEL_NOISE = _option("label_noise", 0.0, "Label-flip probability of the simulated annotator.")
LINK = _option("link", "bradley-terry", "Simulated annotator's link: bradley-terry, thurstone or weibull.")
REWARD = _option("reward", None, "'oracle' (the task's exact reward; the default without --reward-fn), "
                                 "'annotator' (a simulated annotator's 0/1 preference over the reference response), "
                                 "or a reward-model directory from `preftune train reward`.")
REWARD_FN = inspect.Parameter("reward_fn", inspect.Parameter.KEYWORD_ONLY, annotation=list[str], default=typer.Option(
    None, help="Your reward function as module:function or file.py:function, with TRL's signature "
               "fn(prompts, completions, **kwargs) -> list[float | None]; repeat for several (summed)."))
REWARD_WEIGHTS = _option("reward_weights", None, "Comma-separated weights of --reward (first, when given) and each "
                                                 "--reward-fn; default 1 each.")
FEEDBACK = _option("feedback", None, "Who judges, instead of the task's simulated annotators ('annotator'): your "
                                     "function module:function or file.py:function, fn(prompt, candidates) -> index "
                                     "or probabilities; rm:DIR, a reward model; judge:DIR[:TEMPLATE.txt], a causal "
                                     "LM as judge (docs/your-data.md).")
OPTIONS = {"demos": [TASK, DATA, SPLIT, EVAL_DATA, EVAL_SPLIT, CONFIG, NUM_EXAMPLES],
           "pairs": [TASK, DATA, SPLIT, EVAL_DATA, EVAL_SPLIT, CONFIG, NUM_EXAMPLES, LABEL_NOISE, LINK],
           "unpaired": [TASK, DATA, SPLIT, EVAL_DATA, EVAL_SPLIT, CONFIG, NUM_EXAMPLES, LABEL_NOISE, LINK],
           "prompts": [TASK, DATA, SPLIT, EVAL_DATA, EVAL_SPLIT, CONFIG, NUM_PROMPTS, REWARD, REWARD_FN, REWARD_WEIGHTS,
                       LABEL_NOISE, LINK,
                       FEEDBACK.replace(default=typer.Option(None, help="Who compares each sample with its prompt's "
                                                             "reference response (--reward annotator, implied): "
                                                             "module:function, rm:DIR or judge:DIR[:TEMPLATE.txt] "
                                                             "(docs/your-data.md)."))],
           "comparisons": [TASK, DATA, SPLIT, CONFIG, NUM_PROMPTS, FEEDBACK],
           "choices": [TASK.replace(default=typer.Option("population", help="The task: 'population' (unless --data).")),
                       DATA, SPLIT, CONFIG, FEEDBACK],
           "pipeline": [CONFIG]}


def _register(method) -> None:
    def command(ctx: typer.Context, **options):
        _quiet_libraries()
        from preftune.inputs import get_task_or_none, task_defaults, train_from_inputs

        try:
            task = get_task_or_none(options.pop("task", None))
            config_file = options.pop("config", None)
            chosen = set(parse_extra_flags(ctx.args)) | set(load_yaml(config_file) if config_file else {})
            cfg = build_config(method.config, config_file, ctx.args, defaults=task_defaults(method, task, chosen),
                               **method.fixed)
            result = train_from_inputs(method, cfg, task, **options)
        except _expected_errors() as e:
            _fail(str(e))
        except Exception as e:  # noqa: BLE001 - the one boundary for what nothing above expected
            _unexpected(e)
        if result.path is None:  # not the main process of a multi-process run: it saved nothing to report
            return
        last = result.history[-1] if result.history else {}
        shown = ", ".join(f"{k} {last[k]:.4g}" for k in method.shows if k in last)
        console.print(f"[green]done[/]: {method.name}{' (' + shown + ')' if shown else ''} -> {result.path}")

    options = [p.replace(default=typer.Option(method.option_defaults[p.name], help=p.default.help))
               if p.name in method.option_defaults else p for p in OPTIONS[method.inputs]]
    command.__signature__ = inspect.Signature([
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context), *options])
    train_app.command(method.name, help=method.summary,
                      epilog="Config fields (YAML keys or flags):\n\n" + describe_fields(method.config).replace(
                          "\n", "\n\n"),
                      context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(command)


def _register_methods() -> None:
    from preftune.methods import METHODS

    for method in METHODS.values():
        _register(method)


_register_methods()


# ----------------------------------------------------------------------------------------------
# eval, run, report, tasks


@app.command("eval", help="Measure a policy: on a built-in task against its oracle (oracle reward, accuracy, win "
                          "rate and KL against a reference, diversity), or on your own --data with your reward.")
def eval_command(
    task: str = typer.Option(None, help="Built-in task (see `preftune tasks`); or --data for your own."),
    data: Path = typer.Option(None, help="Your data in TRL's formats instead of a task: prompts for --model (scored "
                                         "by --reward-fn / --reward), preference pairs for --reward-model."),
    split: str = typer.Option("train", help="The split of a saved DatasetDict given as --data."),
    model: Path = typer.Option(None, help="Trained policy directory (needed unless --reward-from is given)."),
    reference: Path = typer.Option(None, help="Reference policy directory for win rate and KL (e.g. the SFT model)."),
    reward: str = typer.Option(None, help="With --data: a reward-model directory that scores the samples."),
    reward_fn: list[str] = typer.Option(None, help="With --data: your reward function(s) as module:function (TRL's "
                                                   "signature), summed with --reward-weights."),
    reward_weights: str = typer.Option(None, help="Comma-separated weights of --reward and each --reward-fn."),
    num_prompts: int = typer.Option(200, min=1),
    samples_per_prompt: int = typer.Option(4, min=1, help="Samples per prompt (diversity needs >= 2)."),
    temperature: float = typer.Option(1.0, min=0.0),
    max_new_tokens: int = typer.Option(64, min=1, help="With --data: longest sampled completion in tokens."),
    seed: int = typer.Option(0),
    output: Path = typer.Option(None, help="Write the metrics as JSON here too."),
    reward_from: Path = typer.Option(None, help="An IQLearn (or any causal LM) directory: score the task's held-out "
                                                "candidate responses with its extracted reward Σ_t Q − γV' and "
                                                "report the Spearman correlation with the oracle (with n)."),
    reward_model: Path = typer.Option(None, help="A reward model directory (`train reward`, or any sequence "
                                                 "classifier): its accuracy on the task's held-out annotator labels, "
                                                 "next to the ceiling, or on your --data pairs."),
    num_pairs: int = typer.Option(2000, min=1, help="Held-out labelled pairs for --reward-model."),
    feedback: str = typer.Option(None, help="With --reference: who judges annotator_win_rate ('annotator', "
                                            "module:function, rm:DIR, judge:DIR[:TEMPLATE.txt]; docs/your-data.md)."),
):
    _quiet_libraries()
    from preftune.evaluate import evaluate_data, evaluate_saved

    if (task is None) == (data is None):
        _fail("give --task NAME (a built-in task and its oracle) or --data FILE (your prompts or pairs), not both")
    if model is None and reward_from is None and reward_model is None:
        _fail("give --model DIR (a policy to evaluate), --reward-from DIR (an IQLearn reward to correlate) or "
              "--reward-model DIR (a reward model to score on held-out labels)")
    if data is not None and reward_from is not None:
        _fail("--reward-from correlates with a task's oracle: give --task, not --data")
    try:
        if data is not None:
            metrics = evaluate_data(data, split, model, reference, reward, reward_fn, reward_weights, reward_model,
                                    num_prompts=num_prompts, samples_per_prompt=samples_per_prompt,
                                    temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                                    feedback=feedback)
        else:
            metrics = evaluate_saved(task, model, reference, reward_from, reward_model, num_prompts=num_prompts,
                                     samples_per_prompt=samples_per_prompt, temperature=temperature, seed=seed,
                                     num_pairs=num_pairs, feedback=feedback)
    except _expected_errors() as e:
        _fail(str(e))
    except Exception as e:  # noqa: BLE001
        _unexpected(e)
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
        from preftune.suite.smollm2 import load_smollm2_size, run_smollm2_suite

        try:
            size = load_smollm2_size(quick, config, parse_extra_flags(ctx.args))
            out = run_smollm2_suite(runs_dir / (name or ("smollm2-quick" if quick else "smollm2")), quick=quick,
                                    seed=seed, model=model or "smollm2", size=size)
        except _expected_errors() as e:
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
    from preftune.tasks import task_descriptions

    table = Table("task", "description")
    for name, description in task_descriptions().items():
        table.add_row(name, description)
    console.print(table)

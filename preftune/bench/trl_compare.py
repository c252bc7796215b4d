"""`preftune bench trl`: SFT, reward model and DPO trained by preftune and by TRL, side by side in one run.

Equal for both libraries: the tiny Llama (`build_tiny_model("tiny", build_tiny_tokenizer())`, saved once and loaded
by every run), the `preference-language` data, batch size, optimizer steps, AdamW (`torch.optim.AdamW`, TRL's
`optim="adamw_torch"`), lr (preftune's per-method default), cosine schedule with the same integer warmup, clipping at
1.0, fp32, max_length, no eval, no checkpoints. TRL's own defaults that differ are switched off where preftune has no
counterpart: gradient checkpointing, bf16, tqdm, reporting. TRL keeps its per-step metrics (entropy, token accuracy,
rewards, FLOPs) — that is its default logging overhead; `logging_steps` is set past the end, so it never prints.
DPO uses precomputed reference log-probs in both (preftune always does; TRL with `precompute_ref_log_probs=True`).

There are exactly `steps × batch_size` examples, so each library sees every example once whatever its shuffling,
and both count the same tokens: the non-pad token ids entering the embedding during training forwards (a hook on
the embedding; the no-grad reference pass of DPO is not counted). Sequences are prompt + response + eos in both.

Each (method, library) runs in its own subprocess, interleaved (preftune, trl, preftune, trl, ...), `repeats` times;
the summary is the median. Per run:
- `loop_seconds`: the training loop (preftune: the sum of its per-iteration times; TRL: `on_train_begin` to
  `on_train_end`). `tokens_per_s` = tokens / loop_seconds.
- `seconds`: end to end from trainer construction to the final model on disk (tokenising, reference log-probs).
- `peak_mb`: the child's `VmHWM`; `peak_above_baseline_mb`: the peak minus the RSS after imports, model and data
  (the kernel's peak counter is reset there), so TRL's heavier imports do not dominate.
Every run uses the same number of torch threads (`threads`); the load average before and after goes in the JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

METHODS = ("sft", "reward", "dpo")
LIBRARIES = ("preftune", "trl")
MAX_LENGTH = 64  # examples are at most 20 + 29 characters + eos, so nothing is cut in either library
WARMUP_RATIO = 0.05
BETA = 0.1
SEED = 0


# ----------------------------------------------------------------------------------------------
# One run (in a child process)


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> tuple[float, bool]:
    """RSS in MB now, after resetting the kernel's peak-RSS counter to it (False if the reset is not allowed)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_kb("VmRSS") / 1024, True
    except OSError:  # without the reset, the peak so far is the honest baseline
        return _proc_status_kb("VmHWM") / 1024, False


def _preftune_config(method: str, steps: int, batch_size: int, output_dir: str):
    from preftune.methods.dpo import DPOConfig
    from preftune.methods.reward import RewardConfig
    from preftune.methods.sft import SFTConfig

    config_cls = {"sft": SFTConfig, "reward": RewardConfig, "dpo": DPOConfig}[method]
    extra = {"beta": BETA} if method == "dpo" else {}
    return config_cls(output_dir=output_dir, seed=SEED, steps=steps, batch_size=batch_size, max_length=MAX_LENGTH,
                      warmup_ratio=WARMUP_RATIO, lr_schedule="cosine", mixed_precision="no", progress=False,
                      save_every=0, log_every=steps, **extra)


def _setup(method: str, library: str, steps: int, batch_size: int, model_dir: str):
    """(model, tokenizer, data in the library's own format) — everything the baseline RSS should include."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from preftune.feedback import Annotator, label_pairs
    from preftune.tasks import get_task

    if library == "trl":  # imported before the baseline, so import overhead is not counted as training memory
        import datasets
        import trl  # noqa: F401
        from trl import DPOTrainer, RewardTrainer, SFTTrainer  # noqa: F401
    else:  # preftune imports accelerate and rich lazily, on its first training run: import them here as well
        import accelerate  # noqa: F401
        import rich.progress  # noqa: F401
        from transformers import get_scheduler  # noqa: F401

        import preftune.methods.dpo  # noqa: F401
        import preftune.methods.reward  # noqa: F401
        import preftune.methods.sft  # noqa: F401
    task, n = get_task("preference-language"), steps * batch_size
    if method == "sft":
        records = task.demonstrations("train", n, SEED)
    else:
        records = label_pairs(task.candidate_pairs("train", n, SEED), Annotator(task.reward), random.Random(SEED))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if library == "trl" and method == "reward":  # TRL's reward model is a sequence classifier on the same body
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    if library == "trl":
        rows = ([{"prompt": d.prompt, "completion": d.response} for d in records] if method == "sft" else
                [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in records])
        records = datasets.Dataset.from_list(rows)
    return model, tokenizer, records


def _train_preftune(method, model, tokenizer, data, steps: int, batch_size: int, work_dir: str) -> float:
    """Train with preftune; returns the training-loop seconds."""
    from preftune.methods.dpo import train_dpo
    from preftune.methods.reward import train_reward
    from preftune.methods.sft import train_sft

    train = {"sft": train_sft, "reward": train_reward, "dpo": train_dpo}[method]
    result = train(_preftune_config(method, steps, batch_size, work_dir), data, model, tokenizer)
    return sum(row["seconds"] for row in result.history)


def _train_trl(method, model, tokenizer, data, steps: int, batch_size: int, work_dir: str) -> float:
    """Train with TRL; returns the training-loop seconds."""
    import trl
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.start

    timer = LoopTimer()
    lr = _preftune_config(method, steps, batch_size, work_dir).lr
    common = dict(output_dir=work_dir, seed=SEED, max_steps=steps, per_device_train_batch_size=batch_size,
                  gradient_accumulation_steps=1, learning_rate=lr, lr_scheduler_type="cosine",
                  warmup_steps=int(WARMUP_RATIO * steps), weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
                  max_length=MAX_LENGTH, use_cpu=True, bf16=False, gradient_checkpointing=False,
                  eval_strategy="no", save_strategy="no", report_to="none", logging_steps=steps + 1,
                  disable_tqdm=True, dataloader_num_workers=0)
    if method == "sft":
        trainer = trl.SFTTrainer(model, args=trl.SFTConfig(completion_only_loss=True, **common), train_dataset=data,
                                 processing_class=tokenizer, callbacks=[timer])
    elif method == "reward":
        trainer = trl.RewardTrainer(model, args=trl.RewardConfig(**common), train_dataset=data,
                                    processing_class=tokenizer, callbacks=[timer])
    else:
        trainer = trl.DPOTrainer(model, args=trl.DPOConfig(beta=BETA, precompute_ref_log_probs=True, **common),
                                 train_dataset=data, processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    trainer.save_model(str(Path(work_dir) / "final"))  # preftune always writes its final model; so does this
    return timer.seconds


TRAIN = {"preftune": _train_preftune, "trl": _train_trl}


def run_one(method: str, library: str, steps: int, batch_size: int, model_dir: str) -> dict:
    """One (method, library) training run, measured; meant to run alone in its own process."""
    import torch

    model, tokenizer, data = _setup(method, library, steps, batch_size, model_dir)
    tokens = [0]

    def count_tokens(module, args):  # training forwards only: DPO's no-grad reference pass is not training
        if torch.is_grad_enabled():
            tokens[0] += int((args[0] != tokenizer.pad_token_id).sum())

    model.get_input_embeddings().register_forward_pre_hook(count_tokens)  # survives preftune's deepcopy of the body
    with tempfile.TemporaryDirectory() as work_dir:
        baseline_mb, peak_reset = _reset_peak_rss()
        start = time.perf_counter()
        loop_seconds = TRAIN[library](method, model, tokenizer, data, steps, batch_size, work_dir)
        seconds = time.perf_counter() - start
        peak_mb = _proc_status_kb("VmHWM") / 1024
    return {"method": method, "library": library, "tokens": tokens[0], "loop_seconds": loop_seconds,
            "seconds": seconds, "tokens_per_s": tokens[0] / loop_seconds, "peak_mb": peak_mb,
            "baseline_mb": baseline_mb, "peak_above_baseline_mb": peak_mb - baseline_mb, "peak_reset": peak_reset}


# ----------------------------------------------------------------------------------------------
# The comparison (in the parent process)


def _require_trl() -> None:
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        raise ImportError("`preftune bench trl` compares against TRL, which is not installed: "
                          "pip install preftune[dev]")


def _child_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def _run_child(method: str, library: str, steps: int, batch_size: int, model_dir: str, threads: int) -> dict:
    cmd = [sys.executable, "-m", "preftune.bench.trl_compare", "--one", method, library, "--steps", str(steps),
           "--batch-size", str(batch_size), "--model-dir", model_dir, "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{method}/{library} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])  # libraries may print above; the measurement is the last line


def _save_tiny_model(directory: Path) -> str:
    from preftune.models import build_tiny_model, build_tiny_tokenizer, save_causal_lm

    tokenizer = build_tiny_tokenizer()
    return str(save_causal_lm(build_tiny_model("tiny", tokenizer, seed=SEED), tokenizer, directory))


def _profile_preftune(method: str, steps: int, batch_size: int, model_dir: str, top: int = 15) -> dict[str, str]:
    """cProfile of one preftune run in this process: top functions by cumulative time and by own time."""
    import cProfile
    import io
    import pstats

    model, tokenizer, data = _setup(method, "preftune", steps, batch_size, model_dir)
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory() as work_dir:
        profiler.runcall(_train_preftune, method, model, tokenizer, data, steps, batch_size, work_dir)
    tables = {}
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(top)
        tables[order] = out.getvalue().strip("\n")
    return tables


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _summarise(runs: list[dict], methods: Sequence[str]) -> dict:
    keys = ("tokens", "loop_seconds", "seconds", "tokens_per_s", "peak_mb", "peak_above_baseline_mb")
    summary = {}
    for method in methods:
        summary[method] = {lib: {k: statistics.median(r[k] for r in runs if r["method"] == method
                                                      and r["library"] == lib) for k in keys} for lib in LIBRARIES}
        pf, tr = summary[method]["preftune"], summary[method]["trl"]
        summary[method]["speed_ratio"] = pf["tokens_per_s"] / tr["tokens_per_s"]
        summary[method]["memory_ratio"] = pf["peak_mb"] / tr["peak_mb"]
        # a peak that never rose above the baseline (only without the kernel's reset) has no meaningful ratio
        above = tr["peak_above_baseline_mb"]
        summary[method]["memory_above_baseline_ratio"] = pf["peak_above_baseline_mb"] / above if above > 0 else None
    return summary


def _print_table(summary: dict, steps: int, batch_size: int, threads: int) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0),  # fits 80 columns
                  title=f"preftune vs TRL — {steps} steps × batch {batch_size}, {threads} torch thread(s), medians",
                  caption="tok/s over the training loop; MB = peak RSS, Δ = above the RSS after imports, model and "
                          "data; seconds = end to end, preftune / TRL")
    for header in ("method", "preftune\ntok/s", "TRL\ntok/s", "speed\n×", "preftune\nMB (Δ)", "TRL\nMB (Δ)",
                   "memory\n× (Δ ×)", "seconds"):
        table.add_column(header, no_wrap=True)
    for method, s in summary.items():
        pf, tr = s["preftune"], s["trl"]
        table.add_row(method, f"{pf['tokens_per_s']:,.0f}", f"{tr['tokens_per_s']:,.0f}", f"{s['speed_ratio']:.2f}",
                      f"{pf['peak_mb']:.0f} (+{pf['peak_above_baseline_mb']:.0f})",
                      f"{tr['peak_mb']:.0f} (+{tr['peak_above_baseline_mb']:.0f})",
                      f"{s['memory_ratio']:.2f} ({s['memory_above_baseline_ratio'] or float('nan'):.2f})",
                      f"{pf['seconds']:.1f} / {tr['seconds']:.1f}")
    Console().print(table)


def run_trl_comparison(steps: int = 30, batch_size: int = 16, output: Path | str = Path("runs/bench-trl.json"),
                       profile: bool = False, repeats: int = 2, methods: Sequence[str] = METHODS,
                       threads: int | None = None) -> dict:
    """Train each method with preftune and TRL (interleaved, ``repeats`` times), print and save the comparison.

    ``threads``: torch threads per run (default: torch's, one per core). On a machine shared with other jobs use 1:
    two OpenMP threads on two cores of which one is busy wait at every barrier for a time slice, which slows small
    kernels tens of times and drowns any difference between the libraries.
    """
    _require_trl()
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; choose from {METHODS}")
    import torch
    import transformers
    import trl

    output = Path(output)
    threads = threads or torch.get_num_threads()
    runs, profiles, load_before = [], {}, os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _save_tiny_model(Path(tmp) / "tiny")
        for method in methods:
            for _ in range(repeats):
                runs += [_run_child(method, library, steps, batch_size, model_dir, threads) for library in LIBRARIES]
        if profile:
            with _torch_threads(threads):
                profiles = {m: _profile_preftune(m, steps, batch_size, model_dir) for m in methods}
    summary = _summarise(runs, methods)
    result = {"command": shlex.join([sys.executable, *sys.argv]), "steps": steps, "batch_size": batch_size,
              "repeats": repeats, "max_length": MAX_LENGTH, "warmup_ratio": WARMUP_RATIO, "beta": BETA, "seed": SEED,
              "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                           "transformers": transformers.__version__, "trl": trl.__version__},
              "torch_threads": threads, "cpu_count": os.cpu_count(),
              "load_average": {"before": load_before, "after": os.getloadavg()},  # others' jobs skew the numbers
              "summary": summary, "runs": runs}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    _print_table(summary, steps, batch_size, threads)
    if profiles:
        profile_path = output.with_suffix(".profile.txt")
        profile_path.write_text("".join(f"===== preftune {m}, by {order} time =====\n{text}\n\n"
                                        for m, tables in profiles.items() for order, text in tables.items()))
        for method, tables in profiles.items():  # the cumulative table only; the own-time one is in the file
            print(f"===== preftune {method}: top functions by cumulative time =====\n{tables['cumulative']}\n")
        print(f"profiles: {profile_path}")
    print(f"measurements: {output}")
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="One measured (method, library) run; prints JSON last.")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "LIBRARY"), required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--threads", type=int, required=True)
    cli = parser.parse_args()
    import logging

    import torch
    import transformers

    torch.set_num_threads(cli.threads)
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    print(json.dumps(run_one(*cli.one, cli.steps, cli.batch_size, cli.model_dir)))

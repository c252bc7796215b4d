"""`preftune bench trl`: SFT, reward model, DPO and RLOO trained by preftune and by TRL, side by side in one run.

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
- `loop_seconds`: the training loop (preftune: `Trainer.fit` from entry to exit; TRL: `on_train_begin` to
  `on_train_end`). `tokens_per_s` = tokens / loop_seconds. `loop_cpu_seconds`: the process's CPU time over the same
  span, and `tokens_per_cpu_s` — much less skewed than wall time when other jobs share the machine.
- `seconds`: end to end from trainer construction to the final model on disk (tokenising, reference log-probs).
- `peak_mb`: the child's `VmHWM`; `peak_above_baseline_mb`: the peak minus the RSS after imports, model and data
  (the kernel's peak counter is reset there), so TRL's heavier imports do not dominate.
Every run uses the same number of torch threads (`threads`); the load average before and after goes in the JSON.

Online rows (RLOO; TRL 1.16 has no PPOTrainer, neither in `trl` nor in `trl.experimental`, so there is no PPO row):
`steps` iterations, each sampling k = `SAMPLES_PER_PROMPT` completions for each of `batch_size` prompts of the task
(`steps × batch_size` prompts, each drawn once), at most `max_new_tokens()` new tokens (the task's max_response_chars
+ 1), temperature 1, no top-k/top-p, then one optimizer step on all B·k completions (preftune: `ppo_epochs=1`,
`num_minibatches=1`; TRL: `per_device_train_batch_size=B·k`, `num_generations=k`, `num_iterations=1`, one generation
batch per step). Equal as well: the reward (the task oracle as a Python function), KL coefficient (preftune's
`kl_coef`, TRL's `beta`), clip ε, lr with a constant schedule, no warmup, clipping at 1.0, fp32, plain `generate`
(no vLLM), no logging of completions. The algorithms are the same estimator (leave-one-out baseline, sequence k1 KL in
the reward) but not the same loss: TRL clips a sequence-level ratio, preftune a token-level one, and TRL computes the
old policy's log-probs with an extra no-grad forward that preftune takes from the sampler — that pass is part of
TRL's cost. Extra per run: `samples` (completions trained on), `samples_per_s` = samples / loop_seconds (end to end),
`generated_tokens` (each completion up to and including its eos), `generate_seconds` (wall time inside preftune's
decoding loop `rollout._sample_batch` or TRL's `model.generate`), `generation_tokens_per_s`, `generate_fraction`.
Sampling draws differ between the libraries, so generated lengths differ slightly (`mean_response_tokens`).

`profile`: a cProfile of each preftune run in the parent process, with the seconds per phase (`PHASES`: generation,
reference log-probs, forward + loss, backward, clipping, AdamW, final save).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import study_settings
from benchmarks.measure import (
    LoopClock,
    proc_status_kb,
    require_trl,
    run_measured_child,
    timing_trainer_fit,
    trl_loop_timer,
)

OFFLINE_METHODS = ("sft", "reward", "dpo")
ONLINE_METHODS = ("rloo",)  # TRL 1.16 has no PPOTrainer (neither in trl nor in trl.experimental): no PPO row
METHODS = OFFLINE_METHODS + ONLINE_METHODS
LIBRARIES = ("preftune", "trl")
SETTINGS = study_settings("trl")  # what both libraries share: config/trl.yaml
TASK = SETTINGS["task"]
MAX_LENGTH = SETTINGS["max_length"]
WARMUP_RATIO = SETTINGS["warmup_ratio"]
BETA = SETTINGS["beta"]
SEED = SETTINGS["seed"]
SAMPLES_PER_PROMPT = SETTINGS["samples_per_prompt"]


def max_new_tokens() -> int:
    """Online methods' generation length: the task's max_response_chars + 1 (the CLI's default for the task)."""
    from preftune.tasks import get_task

    return get_task(TASK).max_response_chars + 1


# ----------------------------------------------------------------------------------------------
# One run (in a child process)


def _reset_peak_rss() -> tuple[float, bool]:
    """RSS in MB now, after resetting the kernel's peak-RSS counter to it (False if the reset is not allowed)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return proc_status_kb("VmRSS") / 1024, True
    except OSError:  # without the reset, the peak so far is the honest baseline
        return proc_status_kb("VmHWM") / 1024, False


def _preftune_config(method: str, steps: int, batch_size: int, output_dir: str):
    if method == "rloo":
        from preftune.methods.rloo import RLOOConfig

        # one optimisation pass of one minibatch per rollout batch (TRL: num_iterations=1, one step per generation)
        return RLOOConfig(output_dir=output_dir, seed=SEED, steps=steps, batch_size=batch_size,
                          samples_per_prompt=SAMPLES_PER_PROMPT, max_new_tokens=max_new_tokens(), temperature=1.0,
                          ppo_epochs=1, num_minibatches=1, mixed_precision="no", progress=False, save_every=0,
                          log_every=steps)
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
        from trl import DPOTrainer, RewardTrainer, RLOOTrainer, SFTTrainer  # noqa: F401
    else:  # preftune imports accelerate and rich lazily, on its first training run: import them here as well
        import accelerate  # noqa: F401
        import rich.progress  # noqa: F401
        from transformers import get_scheduler  # noqa: F401

        import preftune.methods.dpo  # noqa: F401
        import preftune.methods.reward  # noqa: F401
        import preftune.methods.rloo  # noqa: F401
        import preftune.methods.sft  # noqa: F401
    task, n = get_task(TASK), steps * batch_size
    if method in ONLINE_METHODS:  # steps × batch_size prompts: each library draws every prompt once
        records = task.prompts("train", n, SEED)
    elif method == "sft":
        records = task.demonstrations("train", n, SEED)
    else:
        records = label_pairs(task.candidate_pairs("train", n, SEED), Annotator(task.reward), random.Random(SEED))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if library == "trl" and method == "reward":  # TRL's reward model is a sequence classifier on the same body
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    if library == "trl":
        if method in ONLINE_METHODS:
            rows = [{"prompt": prompt} for prompt in records]
        elif method == "sft":
            rows = [{"prompt": d.prompt, "completion": d.response} for d in records]
        else:
            rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in records]
        records = datasets.Dataset.from_list(rows)
    return model, tokenizer, records


def _train_preftune(method, model, tokenizer, data, steps: int, batch_size: int, work_dir: str) -> LoopClock:
    """Train with preftune; returns the training loop's clock: `Trainer.fit` from entry to exit (like TRL's
    `on_train_begin` to `on_train_end`, it includes what happens between iterations: logging, progress)."""
    from preftune.methods.dpo import train_dpo
    from preftune.methods.reward import train_reward
    from preftune.methods.sft import train_sft

    clock = LoopClock()
    config = _preftune_config(method, steps, batch_size, work_dir)
    with timing_trainer_fit(clock):
        if method == "rloo":
            from preftune.methods.rloo import train_rloo
            from preftune.rewards import oracle_reward
            from preftune.tasks import get_task

            train_rloo(config, data, oracle_reward(get_task(TASK)), model, tokenizer)
        else:
            train = {"sft": train_sft, "reward": train_reward, "dpo": train_dpo}[method]
            train(config, data, model, tokenizer)
    return clock


def _trl_oracle_reward():
    """The task oracle as a TRL reward function: (prompts, completions, **kwargs) -> scores."""
    from preftune.tasks import get_task

    task = get_task(TASK)

    def oracle(prompts, completions, **kwargs):
        return [task.reward(p, c) for p, c in zip(prompts, completions)]

    return oracle


def _train_trl(method, model, tokenizer, data, steps: int, batch_size: int, work_dir: str) -> LoopClock:
    """Train with TRL; returns the training loop's clock (`on_train_begin` to `on_train_end`)."""
    import trl

    clock = LoopClock()
    timer = trl_loop_timer(clock)
    if method == "rloo":
        pf = _preftune_config(method, steps, batch_size, work_dir)
        # TRL's batch counts completions: B prompts × k samples in one generation batch and one optimizer step
        args = trl.RLOOConfig(
            output_dir=work_dir, seed=SEED, max_steps=steps,
            per_device_train_batch_size=batch_size * pf.samples_per_prompt, gradient_accumulation_steps=1,
            num_generations=pf.samples_per_prompt, num_iterations=1,
            max_completion_length=pf.max_new_tokens, temperature=pf.temperature, top_k=0, top_p=1.0,
            beta=pf.kl_coef, epsilon=pf.clip_range, learning_rate=pf.lr, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=pf.weight_decay, max_grad_norm=pf.max_grad_norm, optim="adamw_torch", use_cpu=True,
            bf16=False, gradient_checkpointing=False, use_vllm=False, log_completions=False, eval_strategy="no",
            save_strategy="no", report_to="none", logging_steps=steps + 1, disable_tqdm=True,
            dataloader_num_workers=0)
        trainer = trl.RLOOTrainer(model, reward_funcs=_trl_oracle_reward(), args=args, train_dataset=data,
                                  processing_class=tokenizer, callbacks=[timer])
        trainer.train()
        trainer.save_model(str(Path(work_dir) / "final"))
        return clock
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
    return clock


TRAIN = {"preftune": _train_preftune, "trl": _train_trl}


class GenerationMeter:
    """Wall time, completions and generated tokens of the sampler: preftune's decoding loop
    (`rollout._sample_batch`) or TRL's `model.generate`. A completion's tokens run up to and including its eos
    (or to max_new_tokens), which is what both libraries train on; padding after it is not counted."""

    def __init__(self):
        self.seconds, self.samples, self.tokens = 0.0, 0, 0

    def install(self, library: str, model, tokenizer) -> None:
        if library == "preftune":
            import preftune.rollout as rollout

            inner = rollout._sample_batch

            def sample_batch(*args, **kwargs):
                start = time.perf_counter()
                tokens, logprobs, alive = inner(*args, **kwargs)
                self.seconds += time.perf_counter() - start
                self.samples += tokens.shape[0]
                self.tokens += int(alive.sum())
                return tokens, logprobs, alive

            rollout._sample_batch = sample_batch
        else:
            inner, eos_id = model.generate, tokenizer.eos_token_id

            def generate(*args, **kwargs):
                start = time.perf_counter()
                out = inner(*args, **kwargs)
                self.seconds += time.perf_counter() - start
                completion = out[:, kwargs["input_ids"].shape[1]:]
                is_eos = (completion == eos_id).int()
                self.samples += completion.shape[0]
                self.tokens += int((is_eos.cumsum(1) - is_eos == 0).sum())  # up to and including the first eos
                return out

            model.generate = generate  # TRL generates with the unwrapped model, this very object (CPU, one process)


def run_one(method: str, library: str, steps: int, batch_size: int, model_dir: str) -> dict:
    """One (method, library) training run, measured; meant to run alone in its own process."""
    import torch

    model, tokenizer, data = _setup(method, library, steps, batch_size, model_dir)
    tokens = [0]

    def count_tokens(module, args):  # training forwards only: no-grad reference, old-policy and sampling passes
        if torch.is_grad_enabled():  # are not counted
            tokens[0] += int((args[0] != tokenizer.pad_token_id).sum())

    model.get_input_embeddings().register_forward_pre_hook(count_tokens)  # survives preftune's deepcopy of the body
    meter = GenerationMeter()
    if method in ONLINE_METHODS:
        meter.install(library, model, tokenizer)
    with tempfile.TemporaryDirectory() as work_dir:
        baseline_mb, peak_reset = _reset_peak_rss()
        start = time.perf_counter()
        clock = TRAIN[library](method, model, tokenizer, data, steps, batch_size, work_dir)
        seconds = time.perf_counter() - start
        peak_mb = proc_status_kb("VmHWM") / 1024
    loop_seconds = clock.wall
    run = {"method": method, "library": library, "tokens": tokens[0], "loop_seconds": loop_seconds,
           "loop_cpu_seconds": clock.cpu, "seconds": seconds, "tokens_per_s": tokens[0] / loop_seconds,
           "tokens_per_cpu_s": tokens[0] / clock.cpu, "peak_mb": peak_mb,
           "baseline_mb": baseline_mb, "peak_above_baseline_mb": peak_mb - baseline_mb, "peak_reset": peak_reset}
    if method in ONLINE_METHODS:
        run.update(samples=meter.samples, samples_per_s=meter.samples / loop_seconds,
                   samples_per_cpu_s=meter.samples / clock.cpu,
                   generated_tokens=meter.tokens, generate_seconds=meter.seconds,
                   generation_tokens_per_s=meter.tokens / meter.seconds if meter.seconds else 0.0,
                   generate_fraction=meter.seconds / loop_seconds,
                   mean_response_tokens=meter.tokens / meter.samples if meter.samples else 0.0)
    return run


# ----------------------------------------------------------------------------------------------
# The comparison (in the parent process)


def _run_child(method: str, library: str, steps: int, batch_size: int, model_dir: str, threads: int) -> dict:
    return run_measured_child("benchmarks.trl_compare", ["--one", method, library, "--steps", str(steps),
                                                         "--batch-size", str(batch_size), "--model-dir", model_dir,
                                                         "--threads", str(threads)], f"{method}/{library} run")


def _save_tiny_model(directory: Path) -> str:
    from preftune.models import save_causal_lm
    from preftune.tiny import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    return str(save_causal_lm(build_tiny_model("tiny", tokenizer, seed=SEED), tokenizer, directory))


# Where a preftune run's time goes: (phase, function name, file name) of cProfile entries whose cumulative time is
# the phase's. Phases nest (the reference pass calls the model's forward), so each is measured by its own entry point.
PHASES = (
    ("generation (sampling loop)", "_sample_batch", "rollout.py"),
    ("reference log-probs (no grad)", "score_logprobs", "rollout.py"),
    ("forward + loss", "loss_fn", ""),
    ("backward", "backward", "accelerator.py"),
    ("gradient clipping", "clip_grad_norm_", "accelerator.py"),
    ("optimizer step (AdamW)", "step", "adam.py"),  # torch's AdamW inherits Adam.step
    ("final model save", "save_causal_lm", "models.py"),
    ("final model save", "save_pretrained", "models.py"),
)


def _phase_seconds(stats) -> dict[str, float]:
    """Cumulative seconds per phase (`PHASES`) from a `pstats.Stats`, plus the run's total."""
    phases = {phase: 0.0 for phase, _, _ in PHASES}
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():
        for phase, name, file in PHASES:
            if function == name and filename.endswith(file):
                phases[phase] += cumulative
    phases["total"] = max(entry[3] for entry in stats.stats.values())
    return phases


def _profile_preftune(method: str, steps: int, batch_size: int, model_dir: str, top: int = 15) -> dict:
    """cProfile of one preftune run in this process: top functions by cumulative and by own time, and the
    seconds per phase (`PHASES`)."""
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
    return {"tables": tables, "phase_seconds": _phase_seconds(pstats.Stats(profiler))}


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


OFFLINE_KEYS = ("tokens", "loop_seconds", "loop_cpu_seconds", "seconds", "tokens_per_s", "tokens_per_cpu_s",
                "peak_mb", "peak_above_baseline_mb")
ONLINE_KEYS = OFFLINE_KEYS + ("samples", "samples_per_s", "samples_per_cpu_s", "generated_tokens", "generate_seconds",
                              "generation_tokens_per_s", "generate_fraction", "mean_response_tokens")


def _summarise(runs: list[dict], methods: Sequence[str]) -> dict:
    """Medians per (method, library) and preftune/TRL ratios. ``speed_ratio`` is tokens/s for offline methods
    and end-to-end samples/s for online ones (their generated lengths differ from run to run)."""
    summary = {}
    for method in methods:
        keys = ONLINE_KEYS if method in ONLINE_METHODS else OFFLINE_KEYS
        summary[method] = {lib: {k: statistics.median(r[k] for r in runs if r["method"] == method
                                                      and r["library"] == lib) for k in keys} for lib in LIBRARIES}
        pf, tr = summary[method]["preftune"], summary[method]["trl"]
        if method in ONLINE_METHODS:
            summary[method]["speed_ratio"] = pf["samples_per_s"] / tr["samples_per_s"]
            summary[method]["cpu_speed_ratio"] = pf["samples_per_cpu_s"] / tr["samples_per_cpu_s"]
            summary[method]["generation_speed_ratio"] = pf["generation_tokens_per_s"] / tr["generation_tokens_per_s"]
        else:
            summary[method]["speed_ratio"] = pf["tokens_per_s"] / tr["tokens_per_s"]
            summary[method]["cpu_speed_ratio"] = pf["tokens_per_cpu_s"] / tr["tokens_per_cpu_s"]
        summary[method]["memory_ratio"] = pf["peak_mb"] / tr["peak_mb"]
        # a peak that never rose above the baseline (only without the kernel's reset) has no meaningful ratio
        above = tr["peak_above_baseline_mb"]
        summary[method]["memory_above_baseline_ratio"] = pf["peak_above_baseline_mb"] / above if above > 0 else None
    return summary


def _print_table(summary: dict, steps: int, batch_size: int, threads: int) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    offline = {m: s for m, s in summary.items() if m not in ONLINE_METHODS}
    online = {m: s for m, s in summary.items() if m in ONLINE_METHODS}

    def memory(s, pf, tr):
        return (f"{pf['peak_mb']:.0f} (+{pf['peak_above_baseline_mb']:.0f})",
                f"{tr['peak_mb']:.0f} (+{tr['peak_above_baseline_mb']:.0f})",
                f"{s['memory_ratio']:.2f} ({s['memory_above_baseline_ratio'] or float('nan'):.2f})")

    if offline:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0),  # fits 80 columns
                      title=f"preftune vs TRL — {steps} steps × batch {batch_size}, {threads} torch thread(s), "
                            f"medians",
                      caption="tok/s over the training loop; CPU × = the speed ratio per CPU second; MB = peak RSS, "
                              "Δ = above the RSS after imports, model and data")
        for header in ("method", "preftune\ntok/s", "TRL\ntok/s", "speed\n×", "CPU\n×", "preftune\nMB (Δ)",
                       "TRL\nMB (Δ)", "memory\n× (Δ ×)"):
            table.add_column(header, no_wrap=True)
        for method, s in offline.items():
            pf, tr = s["preftune"], s["trl"]
            table.add_row(method, f"{pf['tokens_per_s']:,.0f}", f"{tr['tokens_per_s']:,.0f}",
                          f"{s['speed_ratio']:.2f}", f"{s['cpu_speed_ratio']:.2f}", *memory(s, pf, tr))
        console.print(table)
    if online:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0),
                      title=f"online — {steps} iterations × {batch_size} prompts × {SAMPLES_PER_PROMPT} samples, "
                            f"≤ {max_new_tokens()} new tokens, {threads} torch thread(s), medians",
                      caption="samples/s = completions per second of the training loop; gen tok/s = generated tokens "
                              "per second inside the sampler; gen % = the sampler's share of the loop")
        for header in ("method", "", "samples\n/s", "samples\n/CPU s", "gen\ntok/s", "gen\n%", "resp\ntok",
                       "MB (Δ)"):
            table.add_column(header, no_wrap=True)
        for method, s in online.items():
            pf, tr = s["preftune"], s["trl"]
            for name, r in (("preftune", pf), ("TRL", tr)):
                table.add_row(method if name == "preftune" else "", name, f"{r['samples_per_s']:,.0f}",
                              f"{r['samples_per_cpu_s']:,.0f}", f"{r['generation_tokens_per_s']:,.0f}",
                              f"{r['generate_fraction']:.0%}", f"{r['mean_response_tokens']:.1f}",
                              f"{r['peak_mb']:.0f} (+{r['peak_above_baseline_mb']:.0f})")
            table.add_row("", "ratio ×", f"{s['speed_ratio']:.2f}", f"{s['cpu_speed_ratio']:.2f}",
                          f"{s['generation_speed_ratio']:.2f}", "", "",
                          f"{s['memory_ratio']:.2f} ({s['memory_above_baseline_ratio'] or float('nan'):.2f})",
                          end_section=True)
        console.print(table)


def _format_phases(phases: dict[str, float]) -> str:
    total = phases["total"]
    rows = [f"  {name:<32} {seconds:7.2f} s  {seconds / total:6.1%}" for name, seconds in phases.items()
            if name != "total" and seconds > 0]
    covered = sum(v for k, v in phases.items() if k != "total")
    return "\n".join([*rows, f"  {'other (data, metrics, glue)':<32} {total - covered:7.2f} s  "
                              f"{(total - covered) / total:6.1%}", f"  {'total (under cProfile)':<32} {total:7.2f} s"])


def check_methods(methods: Sequence[str]) -> None:
    """ValueError unless ``methods`` is a non-empty selection of `METHODS`."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")


def run_trl_comparison(steps: int = 30, batch_size: int = 16, output: Path | str = Path("runs/bench-trl.json"),
                       profile: bool = False, repeats: int = 2, methods: Sequence[str] = METHODS,
                       threads: int | None = None) -> dict:
    """Train each method with preftune and TRL (interleaved, ``repeats`` times), print and save the comparison.

    ``threads``: torch threads per run (default: torch's, one per core). On a machine shared with other jobs use 1:
    two OpenMP threads on two cores of which one is busy wait at every barrier for a time slice, which slows small
    kernels tens of times and drowns any difference between the libraries.
    """
    require_trl()
    check_methods(methods)
    import torch
    import transformers
    import trl

    output = Path(output)
    threads = threads or torch.get_num_threads()
    runs, profiles, load_before = [], {}, os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _save_tiny_model(Path(tmp) / "tiny")
        plan = [(method, library) for method in methods for _ in range(repeats) for library in LIBRARIES]
        from rich.progress import Progress

        with Progress(transient=True) as progress:  # each child run takes seconds to a minute
            bar = progress.add_task("bench trl", total=len(plan))
            for method, library in plan:
                progress.update(bar, description=f"bench trl: {method} with {library}")
                runs.append(_run_child(method, library, steps, batch_size, model_dir, threads))
                progress.advance(bar)
        if profile:
            with _torch_threads(threads):
                profiles = {m: _profile_preftune(m, steps, batch_size, model_dir) for m in methods}
    summary = _summarise(runs, methods)
    result = {"command": shlex.join([sys.executable, *sys.argv]), "steps": steps, "batch_size": batch_size,
              "repeats": repeats, "max_length": MAX_LENGTH, "warmup_ratio": WARMUP_RATIO, "beta": BETA, "seed": SEED,
              "task": TASK, "samples_per_prompt": SAMPLES_PER_PROMPT, "max_new_tokens": max_new_tokens(),
              "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                           "transformers": transformers.__version__, "trl": trl.__version__},
              "torch_threads": threads, "cpu_count": os.cpu_count(),
              "load_average": {"before": load_before, "after": os.getloadavg()},  # others' jobs skew the numbers
              "summary": summary, "runs": runs,
              "profile_phase_seconds": {m: p["phase_seconds"] for m, p in profiles.items()}}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    _print_table(summary, steps, batch_size, threads)
    if profiles:
        profile_path = output.with_suffix(".profile.txt")
        profile_path.write_text("".join(
            f"===== preftune {m}: where the time goes =====\n{_format_phases(p['phase_seconds'])}\n\n"
            + "".join(f"===== preftune {m}, by {order} time =====\n{text}\n\n" for order, text in p["tables"].items())
            for m, p in profiles.items()))
        for method, p in profiles.items():  # the cumulative table only; the own-time one is in the file
            print(f"===== preftune {method}: where the time goes =====\n{_format_phases(p['phase_seconds'])}\n")
            print(f"===== preftune {method}: top functions by cumulative time =====\n{p['tables']['cumulative']}\n")
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

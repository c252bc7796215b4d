"""`preftune bench smollm2`: throughput on SmolLM2-135M-Instruct, preftune next to TRL, in one run.

Equal for both: the model (the cached safetensors copy of the GGUF, fp32), the prompts (``arithmetic-nl`` training
questions, wrapped in SmolLM2's chat template), the batch, the lengths, the torch threads.

- generation: ``batch_size`` prompts, at most ``max_new_tokens`` new tokens, temperature 1, no top-k/top-p, KV
  cache. preftune: `rollout.generate`. TRL: ``model.generate`` on the same left-padded token ids — the sampler TRL's
  GRPO/RLOO trainers call when vLLM is off (TRL 1.16), so its speed is TRL's generation speed on CPU. Generated
  tokens are counted up to and including each completion's first eos. The first batch warms up and is not timed.
- LoRA training: SFT for ``steps`` steps of ``batch_size`` demonstrations, LoRA r=16, alpha=32 on all linear layers,
  AdamW at a constant lr, clipping at 1.0, fp32, no gradient checkpointing, no checkpoints. preftune: `train_sft`.
  TRL: ``SFTTrainer`` with the same peft ``LoraConfig`` and conversational prompt/completion records, so TRL applies
  the same chat template; completion-only loss in both. Tokens are the non-pad ids entering the embedding in
  gradient-enabled forwards; the loop is ``Trainer.fit`` (preftune) or ``on_train_begin``..``on_train_end`` (TRL).

Each (measurement, library) runs in its own process, interleaved preftune, TRL, preftune, TRL, ... (``repeats``
times; medians reported). Wall-clock rates and rates per CPU second are both recorded: on a machine shared with
other jobs the CPU-second rate is the steadier one.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
import tempfile
import time
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

LIBRARIES = ("preftune", "trl")
KINDS = ("generation", "lora-sft")
SETTINGS = study_settings("smollm2")  # what both libraries share: config/smollm2.yaml
TASK = SETTINGS["task"]
LORA_R, LORA_ALPHA, LR, SEED = SETTINGS["lora_r"], SETTINGS["lora_alpha"], SETTINGS["lr"], SETTINGS["seed"]


def _generation(library: str, model, tokenizer, batch_size: int, max_new_tokens: int, batches: int) -> dict:
    import torch

    from preftune.data import prompt_token_ids
    from preftune.rollout import generate, left_pad
    from preftune.tasks import get_task

    prompts = get_task(TASK).prompts("train", batch_size * (batches + 1), SEED)
    eos = tokenizer.eos_token_id
    tokens = seconds = cpu = 0.0
    for b in range(batches + 1):  # batch 0 warms up
        chunk = prompts[b * batch_size:(b + 1) * batch_size]
        torch.manual_seed(SEED + b)
        clock = LoopClock()
        clock.start()
        if library == "preftune":
            rollout = generate(model, tokenizer, chunk, max_new_tokens, temperature=1.0, batch_size=batch_size)
            clock.stop()
            n = int(rollout.response_mask.sum())
        else:
            ids, mask = left_pad(prompt_token_ids(tokenizer, chunk), tokenizer.pad_token_id)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
            clock.stop()
            is_eos = (out[:, ids.shape[1]:] == eos).int()
            n = int((is_eos.cumsum(1) - is_eos == 0).sum())  # up to and including the first eos
        if b > 0:
            tokens, seconds, cpu = tokens + n, seconds + clock.wall, cpu + clock.cpu
    return {"tokens": tokens, "seconds": seconds, "cpu_seconds": cpu, "tokens_per_s": tokens / seconds,
            "tokens_per_cpu_s": tokens / cpu}


def _lora_sft(library: str, model, tokenizer, batch_size: int, steps: int, work_dir: str) -> dict:
    import torch

    from preftune.tasks import get_task

    demos = get_task(TASK).demonstrations("train", batch_size * steps, SEED)
    counted = [0]

    def count_tokens(module, args):  # training forwards only (gradients on)
        if torch.is_grad_enabled():
            counted[0] += int((args[0] != tokenizer.pad_token_id).sum())

    model.get_input_embeddings().register_forward_pre_hook(count_tokens)
    clock = LoopClock()
    if library == "preftune":
        from preftune.methods.sft import SFTConfig, train_sft

        with timing_trainer_fit(clock):
            train_sft(SFTConfig(output_dir=work_dir, seed=SEED, steps=steps, batch_size=batch_size, lr=LR,
                                lr_schedule="constant", warmup_ratio=0.0, lora=True, lora_r=LORA_R,
                                lora_alpha=LORA_ALPHA, mixed_precision="no", progress=False, save_every=0,
                                log_every=steps), demos, model=model, tokenizer=tokenizer)
    else:
        import datasets
        import trl
        from peft import LoraConfig

        if tokenizer.chat_template:  # conversational records: TRL applies the chat template as preftune does
            rows = [{"prompt": [{"role": "user", "content": d.prompt}],
                     "completion": [{"role": "assistant", "content": d.response}]} for d in demos]
        else:
            rows = [{"prompt": d.prompt, "completion": d.response} for d in demos]
        args = trl.SFTConfig(output_dir=work_dir, seed=SEED, max_steps=steps, per_device_train_batch_size=batch_size,
                             gradient_accumulation_steps=1, learning_rate=LR, lr_scheduler_type="constant",
                             warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", max_length=96,
                             completion_only_loss=True, use_cpu=True, bf16=False, gradient_checkpointing=False,
                             eval_strategy="no", save_strategy="no", report_to="none", logging_steps=steps + 1,
                             disable_tqdm=True, dataloader_num_workers=0)
        peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
        trl.SFTTrainer(model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer,
                       peft_config=peft_config, callbacks=[trl_loop_timer(clock)]).train()
    return {"tokens": counted[0], "seconds": clock.wall, "cpu_seconds": clock.cpu,
            "tokens_per_s": counted[0] / clock.wall, "tokens_per_cpu_s": counted[0] / clock.cpu}


def run_one(kind: str, library: str, model_dir: str, batch_size: int, steps: int, max_new_tokens: int) -> dict:
    """One measurement in this process (a child of `run_smollm2_throughput`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if library == "trl":  # imported before timing starts, so import time is not counted
        import trl  # noqa: F401
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as work_dir:
        if kind == "generation":
            out = _generation(library, model, tokenizer, batch_size, max_new_tokens, batches=steps)
        else:
            out = _lora_sft(library, model, tokenizer, batch_size, steps, work_dir)
    return {"kind": kind, "library": library, "peak_mb": proc_status_kb("VmHWM") / 1024, **out}


def run_smollm2_throughput(model: str = "smollm2", batch_size: int = 8, steps: int = 4, generation_batch: int = 32,
                           generation_batches: int = 2, max_new_tokens: int = 17, repeats: int = 1,
                           threads: int = 1, output: Path | str = Path("runs/bench-smollm2.json")) -> dict:
    """Generation and LoRA-training throughput of preftune and TRL on one model; prints and saves the table."""
    require_trl()
    from preftune.models import resolve_model_path

    model_dir = resolve_model_path(model)  # converts a GGUF model once, before any timing
    plan = [(kind, lib) for kind in KINDS for _ in range(repeats) for lib in LIBRARIES]
    runs, load_before = [], os.getloadavg()
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        bar = progress.add_task("bench smollm2", total=len(plan))
        for kind, library in plan:
            progress.update(bar, description=f"bench smollm2: {kind} with {library}")
            batch, count = (generation_batch, generation_batches) if kind == "generation" else (batch_size, steps)
            args = [kind, library, model_dir, str(batch), str(count), str(max_new_tokens), str(threads)]
            runs.append(run_measured_child("benchmarks.smollm2_throughput", args, f"{kind}/{library}"))
            progress.advance(bar)
    summary = {}
    for kind in KINDS:
        med = {lib: {k: statistics.median(r[k] for r in runs if r["kind"] == kind and r["library"] == lib)
                     for k in ("tokens_per_s", "tokens_per_cpu_s", "peak_mb")} for lib in LIBRARIES}
        summary[kind] = {**med, "speed_ratio": med["preftune"]["tokens_per_s"] / med["trl"]["tokens_per_s"],
                         "cpu_speed_ratio": med["preftune"]["tokens_per_cpu_s"] / med["trl"]["tokens_per_cpu_s"]}
    result = {"command": shlex.join(["preftune", *sys.argv[1:]]), "model": model, "model_dir": model_dir,
              "batch_size": batch_size, "steps": steps, "generation_batch": generation_batch,
              "generation_batches": generation_batches, "max_new_tokens": max_new_tokens, "repeats": repeats,
              "threads": threads, "lora_r": LORA_R, "load_average": {"before": load_before, "after": os.getloadavg()},
              "summary": summary, "runs": runs}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    for kind, s in summary.items():
        unit = "generated tokens" if kind == "generation" else "training tokens (LoRA)"
        print(f"{kind:<11} {unit}: preftune {s['preftune']['tokens_per_s']:.1f}/s "
              f"({s['preftune']['tokens_per_cpu_s']:.1f}/CPU s), TRL {s['trl']['tokens_per_s']:.1f}/s "
              f"({s['trl']['tokens_per_cpu_s']:.1f}/CPU s); preftune/TRL {s['speed_ratio']:.2f}× "
              f"({s['cpu_speed_ratio']:.2f}× per CPU s)")
    print(f"measurements: {output}")
    return result


if __name__ == "__main__":
    kind, library, model_dir, batch, count, new_tokens, threads = sys.argv[1:8]
    import logging

    import torch
    import transformers

    torch.set_num_threads(int(threads))
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    started = time.perf_counter()
    result = run_one(kind, library, model_dir, int(batch), int(count), int(new_tokens))
    print(json.dumps({**result, "process_seconds": time.perf_counter() - started}))

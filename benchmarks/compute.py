"""`preftune bench compute` (issue 18): the work preftune stopped doing, measured side by side in one run.

- scoring: the log-probs of a rollout's responses with the LM head at every position (``token_logprobs`` of
  `rollout.model_logits`, the path before issue 18) and at the response tokens only (`rollout.label_scores`);
  without gradients (reference scoring) and forward + backward (a training step's forward).
- generation: `rollout.generate` with k samples per prompt, every row prefilled (``share_prefill=False``) and one
  prefill per prompt (the default), with the prefill's share of each (a generate of one new token).
- decoding: finished rows kept in the decode batch (``drop_finished=False``) and dropped (the default).
- optimizer: one AdamW step on the trainable weights, ``adamw_torch`` and ``adamw_torch_fused``.

Same process, same model, same batch; each pair runs interleaved A, B, A, B, ... ``repeats`` times after one warm-up
each; CPU seconds (`time.process_time`, the load-robust figure) and wall seconds, medians, and the ratio old / new.
The run also checks the pairs agree: equal samples, log-probs within float rounding.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import study_settings

SETTINGS = study_settings("compute")  # the task of each model, the LoRA shape, the seed: config/compute.yaml


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def _pair(old: Callable[[], object], new: Callable[[], object], repeats: int) -> dict:
    """Interleaved medians of ``old`` and ``new`` (one warm-up each) and their ratio old / new."""
    old(), new()
    times: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    for _ in range(repeats):
        times["old"].append(_timed(old))
        times["new"].append(_timed(new))
    out = {}
    for name, runs in times.items():
        out[f"{name}_cpu_s"] = statistics.median(c for c, _ in runs)
        out[f"{name}_wall_s"] = statistics.median(w for _, w in runs)
    out["cpu_ratio"] = out["old_cpu_s"] / max(out["new_cpu_s"], 1e-12)
    out["wall_ratio"] = out["old_wall_s"] / max(out["new_wall_s"], 1e-12)
    return out


def run_compute_bench(model: str = "tiny", lora: bool = False, num_prompts: int = 16, samples_per_prompt: int = 4,
                      max_new_tokens: int = 32, repeats: int = 3, threads: int = 1,
                      output: Path = Path("runs/bench-compute.json"), log: Callable[[str], None] = print) -> dict:
    import torch

    from preftune.losses import token_logprobs
    from preftune.models import LoraSettings, apply_lora, load_causal_lm
    from preftune.rollout import generate, label_scores, lm_body_and_head, model_logits
    from preftune.tasks import get_task

    torch.set_num_threads(threads)
    seed = SETTINGS["seed"]
    policy, tokenizer = load_causal_lm(model, seed=seed)
    if lora:
        policy = apply_lora(policy, LoraSettings(r=SETTINGS["lora_r"], alpha=SETTINGS["lora_alpha"]))
    policy.eval()  # no dropout: both paths compute the same function
    task = SETTINGS["tasks"].get(model, SETTINGS["tasks"]["default"])
    prompts = get_task(task).prompts("train", num_prompts, seed)
    k = samples_per_prompt

    def sample(share: bool, new_tokens: int = max_new_tokens, drop: bool = True):
        torch.manual_seed(seed)
        return generate(policy, tokenizer, prompts, new_tokens, k, batch_size=len(prompts) * k, share_prefill=share,
                        drop_finished=drop)

    rollout = sample(True)
    ids, attn, mask = rollout.input_ids, rollout.attention_mask, rollout.labels_mask
    weights = [p for p in policy.parameters() if p.requires_grad]

    def full_head(grad: bool):
        with torch.set_grad_enabled(grad):
            logprobs = token_logprobs(model_logits(policy, ids, attn)[:, :-1], ids[:, 1:]) * mask
            if grad:
                logprobs.sum().backward()
                policy.zero_grad(set_to_none=True)
            return logprobs.detach()

    def used_head(grad: bool):
        with torch.set_grad_enabled(grad):
            logprobs = label_scores(policy, ids, attn, mask.bool()).logprobs
            if grad:
                logprobs.sum().backward()
                policy.zero_grad(set_to_none=True)
            return logprobs.detach()

    config = policy.config
    results: dict = {
        "model": model, "lora": lora, "task": task, "threads": threads, "repeats": repeats,
        "rows": int(ids.shape[0]), "prompts": num_prompts, "samples_per_prompt": k,
        "sequence_length": int(ids.shape[1]),
        "vocab_size": int(config.vocab_size), "hidden_size": int(config.hidden_size),
        "head_only_path": lm_body_and_head(policy) is not None,
        "scored_position_share": float(mask.sum() / mask.numel()),
        "scoring_max_abs_diff": float((full_head(False) - used_head(False)).abs().max()),
    }
    unshared, shared = sample(False), sample(True)
    kept = sample(True, drop=False)
    results["same_samples"] = bool(torch.equal(unshared.input_ids, shared.input_ids)
                                   and torch.equal(kept.input_ids, shared.input_ids))
    results["mean_response_share"] = float(shared.response_lengths.float().mean() / max_new_tokens)
    results["generation_logprob_max_abs_diff"] = float(max((unshared.logprobs - shared.logprobs).abs().max(),
                                                           (kept.logprobs - shared.logprobs).abs().max()))

    log(f"compute: {model}{' (LoRA)' if lora else ''}, {ids.shape[0]} rows × {ids.shape[1]} tokens, "
        f"{results['scored_position_share']:.0%} of positions scored, vocabulary {config.vocab_size}, "
        f"{threads} thread(s), {repeats} repeats")
    pairs = {
        "scoring (no grad): full head -> head at the response": (lambda: full_head(False), lambda: used_head(False)),
        "scoring (forward + backward): full head -> head at the response": (lambda: full_head(True),
                                                                            lambda: used_head(True)),
        f"generate, k = {k}: every row prefilled -> one prefill per prompt": (lambda: sample(False),
                                                                              lambda: sample(True)),
        f"prefill alone (1 new token), k = {k}: every row -> one per prompt": (lambda: sample(False, 1),
                                                                              lambda: sample(True, 1)),
        "decode: finished rows kept -> dropped": (lambda: sample(True, drop=False), lambda: sample(True)),
    }
    for p in weights:
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = {fused: torch.optim.AdamW(weights, lr=1e-6, fused=fused or None) for fused in (False, True)}
    pairs["AdamW step: adamw_torch -> adamw_torch_fused"] = (optimizers[False].step, optimizers[True].step)
    results["pairs"] = {}
    for name, (old, new) in pairs.items():
        measured = _pair(old, new, repeats)
        results["pairs"][name] = measured
        log(f"  {name}: {measured['old_cpu_s'] * 1e3:.1f} -> {measured['new_cpu_s'] * 1e3:.1f} ms CPU "
            f"({measured['cpu_ratio']:.2f}×; wall {measured['wall_ratio']:.2f}×)")
    gen = results["pairs"]
    full_gen = next(v for n, v in gen.items() if n.startswith("generate"))
    prefill = next(v for n, v in gen.items() if n.startswith("prefill"))
    results["prefill_share"] = {"unshared": prefill["old_cpu_s"] / full_gen["old_cpu_s"],
                                "shared": prefill["new_cpu_s"] / full_gen["new_cpu_s"]}
    log(f"  prefill's share of generation CPU time: {results['prefill_share']['unshared']:.0%} unshared, "
        f"{results['prefill_share']['shared']:.0%} shared; same samples: {results['same_samples']}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    return results

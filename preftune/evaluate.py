"""Measure a policy on a task against its exact oracle: one function every report and command uses."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from preftune import metrics as M
from preftune.rollout import Rollout, generate, score_logprobs


def sample_policy(task, policy, tokenizer, prompts: list[str], samples_per_prompt: int = 1,
                  temperature: float = 1.0, batch_size: int = 256) -> Rollout:
    return generate(policy, tokenizer, prompts, task.max_response_chars + 1, samples_per_prompt=samples_per_prompt,
                    temperature=temperature, batch_size=batch_size)


def evaluate_policy(task, policy, tokenizer, reference=None, num_prompts: int = 200, samples_per_prompt: int = 4,
                    temperature: float = 1.0, seed: int = 0, annotator=None, reference_rollout=None) -> dict:
    """Oracle reward, accuracy, diversity; with a reference: oracle (and annotator) win rate and KL.

    Win rate compares the first sample per prompt with a reference sample for the same prompt; ``annotator`` is
    any `FeedbackSource` (its comparisons are counted in ``annotator_queries``). KL is the Monte-Carlo estimate
    E_π[log π − log π_ref] over the policy's own samples (per sequence).
    """
    prompts = task.prompts("eval", num_prompts, seed)
    torch.manual_seed(seed)
    rollout = sample_policy(task, policy, tokenizer, prompts, samples_per_prompt, temperature)
    rows = rollout.row_prompts()
    first = [rollout.texts[i * samples_per_prompt] for i in range(len(prompts))]
    groups = [rollout.texts[i * samples_per_prompt:(i + 1) * samples_per_prompt] for i in range(len(prompts))]
    out = {
        "num_prompts": len(prompts),
        "samples_per_prompt": samples_per_prompt,
        "temperature": temperature,
        "oracle_reward": M.mean_oracle_reward(task, rows, rollout.texts),
        "accuracy": M.accuracy(task, rows, rollout.texts),
        "response_chars": sum(len(t) for t in rollout.texts) / len(rollout.texts),
        "distinct_1": M.distinct_n(rollout.texts, 1),
        "distinct_2": M.distinct_n(rollout.texts, 2),
    }
    if samples_per_prompt > 1:
        out["self_bleu"] = M.self_bleu(groups)
    if reference is not None:
        if reference_rollout is None:
            torch.manual_seed(seed + 1)
            reference_rollout = sample_policy(task, reference, tokenizer, prompts, 1, temperature)
        ref_texts = reference_rollout.texts
        out["win_rate"] = M.win_rate(task, prompts, first, ref_texts)
        if annotator is not None:
            from preftune.feedback import QueryLedger

            ledger = QueryLedger()
            out["annotator_win_rate"] = M.annotator_win_rate(annotator, prompts, first, ref_texts,
                                                             random.Random(seed), ledger)
            out["annotator_queries"] = ledger.total
        if temperature == 1.0:  # the estimator needs samples from π itself
            ref_logps = score_logprobs(reference, rollout.input_ids, rollout.attention_mask,
                                       rollout.response_mask).sum(-1)
            out["kl_to_reference"] = M.kl_from_logprobs(rollout.logprobs.sum(-1).tolist(), ref_logps.tolist())
    return out


def evaluate_saved(task_name: str, model: Path | None = None, reference: Path | None = None,
                   reward_from: Path | None = None, reward_model: Path | None = None, num_prompts: int = 200,
                   samples_per_prompt: int = 4, temperature: float = 1.0, seed: int = 0,
                   num_pairs: int = 2000, feedback: str | None = None) -> dict:
    """What `preftune eval` prints, from saved folders: a policy's metrics (against ``reference`` when given; with
    ``feedback``, a `preftune.judges.feedback_from_spec` string, also the win rate that source judges), an
    IQLearn checkpoint's extracted reward against the oracle (``reward_from``), a reward model's held-out accuracy
    next to the annotator's ceiling (``reward_model``)."""
    from preftune.models import RewardModel, load_tokenizer, load_trained_causal_lm
    from preftune.tasks import get_task

    task = get_task(task_name)
    if feedback is not None and (model is None or reference is None):
        raise ValueError("--feedback judges the win rate of --model against --reference: give both")
    judge = None
    if feedback is not None:
        from preftune.feedback import Annotator
        from preftune.judges import feedback_from_spec

        judge = feedback_from_spec(feedback, annotator=Annotator(task.reward))
    policy, tokenizer = load_trained_causal_lm(model) if model else (None, None)
    ref = load_trained_causal_lm(reference)[0] if reference else None
    metrics: dict = {}
    if policy is not None:
        metrics = evaluate_policy(task, policy, tokenizer, reference=ref, num_prompts=num_prompts,
                                  samples_per_prompt=samples_per_prompt, temperature=temperature, seed=seed,
                                  annotator=judge)
    if reward_from is not None:  # IQLearn's reward extraction (Wulfmeier et al. 2024, §5.4)
        from preftune.methods.iqlearn import reward_correlation, saved_gamma

        metrics["extracted_reward"] = reward_correlation(task, *load_trained_causal_lm(reward_from),
                                                         gamma=saved_gamma(reward_from), num_prompts=num_prompts,
                                                         seed=seed)
    if reward_model is not None:
        from preftune.methods.reward import heldout_labels, heldout_report

        rm = RewardModel.from_pretrained(reward_model).eval()
        # batches pad to their longest example, so the model's own limit costs nothing and cuts nothing it can read
        max_length = getattr(rm.config, "max_position_embeddings", 2048)
        metrics["reward_model"] = heldout_report(rm, load_tokenizer(str(reward_model)), task,
                                                 heldout_labels(task, num_pairs, seed), max_length)
    return metrics

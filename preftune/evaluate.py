"""Measure a policy: on a built-in task against its exact oracle (`evaluate_policy`, what every report uses), or on
your own prompts and reward (`evaluate_on_prompts`)."""

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
        out.update(_judged_and_kl(reference, rollout, prompts, first, ref_texts, annotator, temperature, seed))
    return out


def _judged_and_kl(reference, rollout: Rollout, prompts: list[str], first: list[str], ref_texts: list[str], judge,
                   temperature: float, seed: int) -> dict:
    """Against a reference: the win rate a judge (any `FeedbackSource`, or None) gives each prompt's first sample, with
    its query count, and the Monte-Carlo KL E_π[log π − log π_ref] (it needs samples from π itself: temperature 1)."""
    out = {}
    if judge is not None:
        from preftune.feedback import QueryLedger

        ledger = QueryLedger()
        out["annotator_win_rate"] = M.annotator_win_rate(judge, list(prompts), first, ref_texts, random.Random(seed),
                                                         ledger)
        out["annotator_queries"] = ledger.total
    if temperature == 1.0:
        ref_logps = score_logprobs(reference, rollout.input_ids, rollout.attention_mask, rollout.response_mask).sum(-1)
        out["kl_to_reference"] = M.kl_from_logprobs(rollout.logprobs.sum(-1).tolist(), ref_logps.tolist())
    return out


def evaluate_on_prompts(policy, tokenizer, prompts: list[str], reward=None, reference=None,
                        samples_per_prompt: int = 4, temperature: float = 1.0, max_new_tokens: int = 64,
                        seed: int = 0, judge=None) -> dict:
    """A policy on your prompts and reward (a ``(prompts, completions) -> scores`` function; no oracle): the reward's
    mean and spread (and each function's, for a combined reward), length and diversity; with a ``reference`` policy,
    the reward win rate of each prompt's first sample over the reference's (ties ½), the KL estimate, and with a
    ``judge`` (any `FeedbackSource`) the win rate it judges (``annotator_win_rate``, its ``annotator_queries``)."""
    from preftune.data import as_prompts

    prompts = as_prompts(prompts, tokenizer)  # strings, or TRL prompt-only rows (conversational: templated)
    torch.manual_seed(seed)
    rollout = generate(policy, tokenizer, prompts, max_new_tokens, samples_per_prompt=samples_per_prompt,
                       temperature=temperature)
    first = [rollout.texts[i * samples_per_prompt] for i in range(len(prompts))]
    groups = [rollout.texts[i * samples_per_prompt:(i + 1) * samples_per_prompt] for i in range(len(prompts))]
    out = {"num_prompts": len(prompts), "samples_per_prompt": samples_per_prompt, "temperature": temperature,
           "completions/mean_length": float(rollout.response_lengths.float().mean()),
           "distinct_1": M.distinct_n(rollout.texts, 1), "distinct_2": M.distinct_n(rollout.texts, 2)}
    if reward is not None:
        scores = _scores(reward, rollout.row_prompts(), rollout.texts)
        given = [x for x in scores if x is not None]
        mean = sum(given) / len(given) if given else float("nan")
        out.update(reward=mean, reward_std=(sum((x - mean) ** 2 for x in given) / len(given)) ** 0.5 if given else 0.0,
                   **getattr(reward, "last_metrics", {}))
    if samples_per_prompt > 1:
        out["self_bleu"] = M.self_bleu(groups)
    if reference is not None:
        torch.manual_seed(seed + 1)
        ref_rollout = generate(reference, tokenizer, prompts, max_new_tokens, temperature=temperature)
        if reward is not None:
            ours = [scores[i * samples_per_prompt] for i in range(len(prompts))]
            theirs = _scores(reward, list(prompts), ref_rollout.texts)
            both = [(a, b) for a, b in zip(ours, theirs) if a is not None and b is not None]
            out["win_rate"] = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in both) / len(both) if both \
                else float("nan")
        out.update(_judged_and_kl(reference, rollout, prompts, first, ref_rollout.texts, judge, temperature, seed))
    return out


def _scores(reward, prompts: list[str], completions: list[str]) -> list[float | None]:
    scores = list(reward(prompts, completions))
    if len(scores) != len(completions):
        raise ValueError(f"the reward returned {len(scores)} scores for {len(completions)} completions")
    return [None if x is None else float(x) for x in scores]


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


def evaluate_data(data: Path, split: str = "train", model: Path | None = None, reference: Path | None = None,
                  reward: str | None = None, reward_fn: list[str] | None = None, reward_weights: str | None = None,
                  reward_model: Path | None = None, num_prompts: int = 200, samples_per_prompt: int = 4,
                  temperature: float = 1.0, max_new_tokens: int = 64, seed: int = 0,
                  feedback: str | None = None) -> dict:
    """What `preftune eval --data` prints: a saved policy on your prompts, scored by your reward (``reward``, a reward
    model folder, and/or ``reward_fn`` functions, as `preftune train grpo` takes them) and judged against
    ``reference`` by your ``feedback`` source, and a reward model's accuracy on your labelled pairs
    (``reward_model``)."""
    from preftune.data import Pair, as_records, load_prompts, load_records
    from preftune.inputs import rewards_from_inputs, unique_prompts
    from preftune.models import RewardModel, load_tokenizer, load_trained_causal_lm

    metrics: dict = {}
    if model is not None:
        if reward is None and not reward_fn and feedback is None:
            raise ValueError("eval --data --model needs what scores the samples: --reward-fn module:function, "
                             "--reward DIR (a reward model), or --feedback SPEC with --reference")
        if feedback is not None and reference is None:
            raise ValueError("--feedback judges the win rate of --model against --reference: give both")
        policy, tokenizer = load_trained_causal_lm(model)
        ref = load_trained_causal_lm(reference)[0] if reference else None
        prompts = unique_prompts(load_prompts(data, split))[:num_prompts]
        max_length = getattr(policy.config, "max_position_embeddings", 2048)
        scorer = rewards_from_inputs(reward, reward_fn, reward_weights, None, [], seed, "bradley-terry", 0.0,
                                     max_length) if reward is not None or reward_fn else None
        judge = None
        if feedback is not None:
            from preftune.judges import feedback_from_spec

            judge = feedback_from_spec(feedback, max_length=max_length)
        metrics = evaluate_on_prompts(policy, tokenizer, prompts, scorer, ref, samples_per_prompt, temperature,
                                      max_new_tokens, seed, judge=judge)
    if reward_model is not None:
        from preftune.methods.reward import heldout_accuracy

        rm = RewardModel.from_pretrained(reward_model).eval()
        rm_tokenizer = load_tokenizer(str(reward_model))
        pairs = as_records(load_records(data, Pair, split), Pair, rm_tokenizer)  # conversational: templated
        max_length = getattr(rm.config, "max_position_embeddings", 2048)
        metrics["reward_model"] = {"accuracy": heldout_accuracy(rm, rm_tokenizer, pairs, max_length),
                                   "pairs": len(pairs)}
    return metrics

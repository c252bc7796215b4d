"""Feedback sources that need a model, and the one place a ``--feedback`` string becomes a source.

- `RewardModelFeedback`: choices by a reward model's scores r, P(choose i) = softmax(r / T) (Luce; for two
  candidates σ((r_a − r_b)/T) with any link of `preftune.feedback`).
- `LLMJudgeFeedback`: a local causal LM asked "which response is better, A or B?"; the answer is read from its
  log-probs of the two answer texts, not sampled.
- `feedback_from_spec`: ``annotator``, ``module:function``, ``rm:PATH`` (or a reward-model folder), ``judge:PATH``.

Every source here has exact choice probabilities, so a method may draw several labels from one call; the method
records every query in its `QueryLedger` before it asks (`preftune.feedback.ask_preference_shares`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from preftune.feedback import Annotator, FeedbackSource, FunctionFeedback, ProbabilisticFeedback, check_candidates
from preftune.rewards import RewardFn, load_function, load_reward_model

FEEDBACK_SPECS = ("annotator (the task's simulated annotators)", "module:function or file.py:function (your judge "
                  "fn(prompt, candidates) -> index | probabilities)", "rm:DIR or a reward-model folder",
                  "judge:DIR or judge:DIR:TEMPLATE.txt (a causal LM as judge)")


class RewardModelFeedback(ProbabilisticFeedback):
    """Choices by a reward ``(prompts, responses) -> scores``: an `Annotator` whose utility is the score, so
    P(choose i) = softmax(r_i / T) (Luce), and for two candidates σ((r_a − r_b)/T) with ``link``. The candidates of
    one query are scored in one call."""

    def __init__(self, reward: RewardFn, temperature: float = 1.0, link: str = "bradley-terry"):
        self.reward = reward
        self.choice_model = Annotator(lambda prompt, response: reward([prompt], [response])[0], link=link,
                                      temperature=temperature)

    def choice_probs(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        check_candidates(candidates)
        scores = [float(s) for s in self.reward([prompt] * len(candidates), list(candidates))]
        return self.choice_model.probs_from_utilities(scores)


DEFAULT_JUDGE_TEMPLATE = ("Which response answers the prompt better?\n\nPrompt: {prompt}\n\nResponse A: {a}\n\n"
                          "Response B: {b}\n\nThe better response is")
JUDGE_ANSWERS = (" A", " B")


class LLMJudgeFeedback(ProbabilisticFeedback):
    """A causal LM as judge. ``template`` (with ``{prompt}``, ``{a}``, ``{b}``) is read as the prompt (through the
    tokenizer's chat template when it has one); P(A) is its probability of answering ``" A"`` rather than ``" B"``
    next (the answer texts' summed token log-probs, renormalised over the two).

    Position bias is averaged out: P(a ≻ b) = ½·(P(A | a first) + P(B | b first)), so P(a ≻ b) = 1 − P(b ≻ a).
    For K > 2 candidates every ordered pair is judged, u_i = (1/K)·Σ_{j≠i} logit P(i ≻ j), and P(choose i) =
    softmax(u)_i: Luce's rule, exactly, when the pairwise judgements are Bradley–Terry (and P at K = 2)."""

    def __init__(self, model, tokenizer, template: str = DEFAULT_JUDGE_TEMPLATE,
                 answers: tuple[str, str] = JUDGE_ANSWERS):
        missing = [f"{{{name}}}" for name in ("prompt", "a", "b") if f"{{{name}}}" not in template]
        if missing:
            raise ValueError(f"the judge's template lacks {', '.join(missing)}: it needs {{prompt}}, {{a}} and {{b}}")
        self.model, self.tokenizer, self.template, self.answers = model, tokenizer, template, answers

    def first_answer_probs(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """P(the judge answers A) for each (a, b) shown in that order, in one batch."""
        from preftune.data import pad_batch, prompt_token_ids
        from preftune.rollout import score_logprobs

        texts = [self.template.format(prompt=prompt, a=a, b=b).rstrip() for a, b in pairs]
        answer_ids = [self.tokenizer(answer, add_special_tokens=False)["input_ids"] for answer in self.answers]
        rows, prompt_lengths = [], []
        for ids in prompt_token_ids(self.tokenizer, texts):
            for answer in answer_ids:
                rows.append(ids + answer)
                prompt_lengths.append(len(ids))
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions is not None and max(map(len, rows)) > positions:
            raise ValueError(f"the judge's prompt of {max(map(len, rows))} tokens is beyond its model's {positions} "
                             f"positions (shorten the template or the responses)")
        batch = pad_batch(rows, prompt_lengths, self.tokenizer.pad_token_id)
        logps = score_logprobs(self.model, batch.input_ids, batch.attention_mask, batch.response_mask).sum(-1)
        return logps.double().view(-1, 2).softmax(-1)[:, 0].tolist()

    def choice_probs(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        check_candidates(candidates)
        k = len(candidates)
        ordered = [(i, j) for i in range(k) for j in range(k) if i != j]
        p_first = dict(zip(ordered, self.first_answer_probs(prompt, [(candidates[i], candidates[j])
                                                                     for i, j in ordered])))
        beats = {(i, j): 0.5 * (p_first[i, j] + 1.0 - p_first[j, i]) for i, j in ordered}  # P(i ≻ j), debiased
        if k == 2:
            return [beats[0, 1], beats[1, 0]]

        def logit(p: float) -> float:
            p = min(max(p, 1e-9), 1 - 1e-9)
            return math.log(p) - math.log1p(-p)

        utilities = torch.tensor([sum(logit(beats[i, j]) for j in range(k) if j != i) / k for i in range(k)],
                                 dtype=torch.float64)
        return utilities.softmax(-1).tolist()


def load_judge(model_path: str, template_path: str | None = None) -> LLMJudgeFeedback:
    """An `LLMJudgeFeedback` from a saved causal LM (a LoRA adapter folder too) and an optional template file."""
    from preftune.models import load_trained_causal_lm

    template = DEFAULT_JUDGE_TEMPLATE
    if template_path is not None:
        if not Path(template_path).is_file():
            raise ValueError(f"--feedback judge: no template file {template_path}")
        template = Path(template_path).read_text(encoding="utf-8")
    model, tokenizer = load_trained_causal_lm(model_path)
    return LLMJudgeFeedback(model.eval(), tokenizer, template)


def feedback_from_spec(spec: str, annotator: FeedbackSource | None = None, max_length: int = 512,
                       temperature: float = 1.0, link: str = "bradley-terry") -> FeedbackSource:
    """The feedback source a ``--feedback`` string names (`FEEDBACK_SPECS`):

    - ``annotator``: ``annotator``, the task's simulated annotators (an error when there is no task);
    - ``module:function`` or ``file.py:function``: a user's judge, imported from the working directory
      (`FunctionFeedback`);
    - ``rm:DIR``, or a folder holding a reward model: `RewardModelFeedback` at ``temperature`` with ``link``;
    - ``judge:DIR`` or ``judge:DIR:TEMPLATE.txt``: `LLMJudgeFeedback` on a local causal LM.
    """
    accepted = "; ".join(FEEDBACK_SPECS)
    if spec == "annotator":
        if annotator is None:
            raise ValueError("--feedback annotator needs --task (the simulated annotators judge by its oracle); "
                             f"without a task give one of: {accepted}")
        return annotator
    kind, _, rest = spec.partition(":")
    if kind == "rm" or (not rest and Path(spec).is_dir()):
        path = rest if kind == "rm" else spec
        if not Path(path).is_dir():
            raise ValueError(f"--feedback {spec}: no reward-model folder {path}")
        return RewardModelFeedback(load_reward_model(path, max_length), temperature=temperature, link=link)
    if kind == "judge":
        model_path, _, template_path = rest.partition(":")
        if not model_path:
            raise ValueError(f"--feedback {spec}: give the judge's model folder, judge:DIR")
        return load_judge(model_path, template_path or None)
    if rest:
        return FunctionFeedback(load_function(spec), name=spec)
    raise ValueError(f"--feedback {spec!r} is not a feedback source; give one of: {accepted}")

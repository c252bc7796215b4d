"""Rewards: functions ``(prompts, responses) -> scores`` that online methods and Best-of-N maximise.

A reward is any callable with that signature. Built here: a task's exact oracle, a reward model (scoring with its
own tokenizer and length), and a simulated annotator's 0/1 preference over a reference response, whose queries go
through a ledger. A reward with ``state_dict``/``load_state_dict`` is checkpointed with the run.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

RewardFn = Callable[[list[str], list[str]], Sequence[float]]  # (prompts, responses) -> scores


def oracle_reward(task) -> RewardFn:
    """A built-in task's exact reward."""
    return lambda prompts, responses: [task.reward(p, r) for p, r in zip(prompts, responses)]


def reward_model_reward(reward_model, tokenizer, max_length: int) -> RewardFn:
    """Score (prompt, response) texts with a `RewardModel` (ensembles: mean over heads). ``tokenizer`` and
    ``max_length`` are the reward model's own: it reads the texts as it was trained to."""
    from preftune.data import Demo, collate_demos
    from preftune.rollout import score_rewards

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        batch = collate_demos(tokenizer, [Demo(p, r) for p, r in zip(prompts, responses)], max_length)
        rewards = score_rewards(reward_model, batch.input_ids, batch.attention_mask)
        return (rewards.mean(-1) if rewards.dim() == 2 else rewards).tolist()

    return score


class AnnotatorReward:
    """Reward from a simulated annotator: 1 if it prefers the sample to the prompt's reference response, else 0.

    Every comparison is recorded in ``ledger`` (tag ``tag``), so online methods are compared with offline ones
    at equal query budgets. Ledger and the annotator's random stream are checkpointed with the run.
    """

    def __init__(self, annotator, references: Mapping[str, str], seed: int = 0, ledger=None, tag: str = "online"):
        from preftune.feedback import QueryLedger

        self.annotator, self.references, self.tag = annotator, dict(references), tag
        self.ledger = ledger if ledger is not None else QueryLedger()
        self.rng = random.Random(seed)

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        missing = sorted({p for p in prompts if p not in self.references})
        if missing:
            raise ValueError(f"no reference response for {len(missing)} prompt(s), e.g. {missing[0]!r}")
        scores = []
        for prompt, response in zip(prompts, responses):
            self.ledger.record(self.tag)
            preferred = self.annotator.compare(prompt, response, self.references[prompt], self.rng)
            scores.append(1.0 if preferred else 0.0)
        return scores

    def state_dict(self) -> dict:
        return {"ledger": self.ledger.state_dict(), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.ledger.load_state_dict(state["ledger"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

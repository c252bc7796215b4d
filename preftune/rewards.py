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


def load_reward_model(directory: str, max_length: int) -> RewardFn:
    """The reward a saved reward model gives, scoring with its own tokenizer: preftune's folder or any
    ``AutoModelForSequenceClassification`` folder (`RewardModel.from_pretrained`). A folder that is neither (a plain
    causal LM would load with a fresh random head) is refused."""
    import json
    from pathlib import Path

    from preftune.models import RewardModel, load_tokenizer

    path = Path(directory)
    config_path = path / "config.json"
    architectures = (json.loads(config_path.read_text()).get("architectures") or []) if config_path.is_file() else []
    if not (path / "preftune_reward.json").is_file() and \
            not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ValueError(f"{directory} is not a reward model: it has neither preftune_reward.json (`preftune train "
                         f"reward`) nor a config.json of a ...ForSequenceClassification model")
    return reward_model_reward(RewardModel.from_pretrained(path), load_tokenizer(str(path)), max_length)


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


def load_function(spec: str) -> Callable:
    """``module:function`` (a module importable from the working directory, as ``python -c`` would find it) or
    ``path/to/file.py:function``: the user's reward function or feedback source."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    module_name, sep, function_name = spec.rpartition(":")
    if not sep or not module_name or not function_name:
        raise ValueError(f"{spec!r} is not module:function (e.g. my_rewards:length_penalty)")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ValueError(f"{spec!r}: no such file {module_name}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{spec!r}: cannot import {module_name} ({e})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"{spec!r}: {module_name} has no function {function_name!r}")
    return function


class CombinedReward:
    """A weighted sum of reward functions with TRL's signature ``fn(prompts=..., completions=..., **kwargs) ->
    list[float | None]`` (the built-in rewards are called the same way). A ``None`` score means "this function does
    not apply to this sample" and is left out of the sum, as TRL does; a sample no function scores is an error.
    ``last_metrics`` holds each function's mean and standard deviation on the last batch (TRL's
    ``rewards/<name>/mean``, ``/std``), which online methods log."""

    def __init__(self, functions: dict[str, Callable], weights: Sequence[float] | None = None):
        if not functions:
            raise ValueError("no reward function given")
        weights = list(weights) if weights else [1.0] * len(functions)
        if len(weights) != len(functions):
            raise ValueError(f"--reward-weights has {len(weights)} value(s) for {len(functions)} reward function(s)")
        self.functions, self.weights = dict(functions), weights
        self.last_metrics: dict[str, float] = {}

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        import math

        totals = [0.0] * len(responses)
        scored = [False] * len(responses)
        self.last_metrics = {}
        for (name, function), weight in zip(self.functions.items(), self.weights):
            try:
                scores = list(function(prompts=list(prompts), completions=list(responses)))
            except Exception as e:  # the user's code: say whose it is; the traceback keeps the rest
                raise RuntimeError(f"reward function {name} failed: {type(e).__name__}: {e}") from e
            if len(scores) != len(responses):
                raise ValueError(f"reward function {name} returned {len(scores)} scores for {len(responses)} "
                                 f"completions")
            given = []
            for i, score in enumerate(scores):
                if score is None:
                    continue
                if not isinstance(score, int | float) or not math.isfinite(score):
                    raise ValueError(f"reward function {name} returned {score!r} for completion {i}; scores must be "
                                     f"finite numbers or None")
                totals[i] += weight * float(score)
                scored[i] = True
                given.append(float(score))
            if given:
                mean = sum(given) / len(given)
                self.last_metrics[f"rewards/{name}/mean"] = mean
                self.last_metrics[f"rewards/{name}/std"] = (sum((g - mean) ** 2 for g in given) / len(given)) ** 0.5
        missing = [i for i, ok in enumerate(scored) if not ok]
        if missing:
            raise ValueError(f"no reward function scored completion {missing[0]} (every one returned None), e.g. "
                             f"prompt {prompts[missing[0]]!r}")
        return totals

    def state_dict(self) -> dict:  # a built-in annotator among the functions keeps its ledger across resumes
        return {name: f.state_dict() for name, f in self.functions.items() if hasattr(f, "state_dict")}

    def load_state_dict(self, state: dict) -> None:
        for name, s in state.items():
            self.functions[name].load_state_dict(s)


def trl_style(reward: RewardFn) -> Callable:
    """A preftune reward ``(prompts, responses)`` called with TRL's keywords ``(prompts=..., completions=...)``."""
    return lambda prompts, completions, **kwargs: reward(prompts, completions)


def as_reward(reward) -> RewardFn:
    """What the Python API accepts as a reward, as one ``(prompts, responses) -> scores``: a preftune reward, a
    TRL-style function ``fn(prompts=..., completions=..., **kwargs)`` (called with keywords, as TRL calls it, so
    ``def f(completions, **kwargs)`` works), or a list of such functions (summed, `CombinedReward`)."""
    import inspect

    if isinstance(reward, list | tuple):
        return CombinedReward({getattr(f, "__name__", f"reward_{i}"): f for i, f in enumerate(reward)})
    if not callable(reward) or isinstance(reward, CombinedReward | AnnotatorReward):
        return reward
    try:
        parameters = inspect.signature(reward).parameters
    except (TypeError, ValueError):
        return reward
    if "completions" in parameters:
        return CombinedReward({getattr(reward, "__name__", "reward"): reward})
    return reward

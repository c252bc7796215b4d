"""What a method trains on, built from the words a user gives the CLI: ``--task``/``--data`` become records or
prompts, ``--reward`` becomes a reward function, and a task supplies the defaults that fit it (response lengths).

The CLI only parses; everything that knows about tasks, files and rewards is here, callable from Python too.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path

from preftune.config import ConfigError
from preftune.data import Demo, Pair, Unpaired, load_prompts, load_records
from preftune.rewards import RewardFn


def get_task_or_none(name: str | None):
    from preftune.tasks import get_task

    return get_task(name) if name else None


def response_length_default(task) -> dict:
    """A sampled response that fits the task: a token is at least one character, so its longest response fits in
    ``max_response_chars + 1`` tokens (with eos)."""
    return {} if task is None else {"max_new_tokens": task.max_response_chars + 1}


def demonstrations(task, data: Path | None, num_examples: int, seed: int, split: str = "train",
                   allow_degenerate: bool = False) -> list[Demo]:
    """Demonstrations from a data file / saved dataset, or drawn from a built-in task."""
    if data is not None:
        return load_records(data, Demo, split, allow_degenerate)
    if task is None:
        raise ConfigError("give --task NAME (see `preftune tasks`) or --data FILE.jsonl")
    return task.demonstrations("train", num_examples, seed)


def preference_pairs(task, data: Path | None, num_examples: int, seed: int, label_noise: float = 0.0,
                     link: str = "bradley-terry", split: str = "train", allow_degenerate: bool = False) -> list[Pair]:
    """Preference pairs from a file, or a task's candidate pairs labelled by a simulated annotator."""
    if data is not None:
        return load_records(data, Pair, split, allow_degenerate)
    if task is None:
        raise ConfigError("give --task NAME (see `preftune tasks`) or --data FILE.jsonl")
    from preftune.feedback import Annotator, label_pairs

    annotator = Annotator(task.reward, link=link, flip_prob=label_noise)
    return label_pairs(task.candidate_pairs("train", num_examples, seed), annotator, random.Random(seed))


def unpaired_examples(task, data: Path | None, num_examples: int, seed: int, label_noise: float = 0.0,
                      link: str = "bradley-terry", split: str = "train") -> list[Unpaired]:
    """Unpaired preferences from a file, or a task's labelled pairs unpaired as TRL's ``unpair_preference_dataset``
    does: each pair's chosen completion desirable, its rejected one not."""
    if data is not None:
        return load_records(data, Unpaired, split)
    pairs = preference_pairs(task, None, num_examples, seed, label_noise, link)
    return [Unpaired(p.prompt, c, label) for p in pairs for c, label in ((p.chosen, True), (p.rejected, False))]


def unique_prompts(prompts: Sequence) -> list:
    """Prompts in order without repeats; the same prompt with other columns (another answer for the reward
    functions) is another row and is kept."""
    seen, out = set(), []
    for p in prompts:
        key = (type(p).__name__, p, json.dumps(getattr(p, "columns", {}), sort_keys=True, default=str))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def prompts_with_references(task, data: Path | None, num_prompts: int, seed: int, need_references: bool = True,
                            split: str = "train") -> tuple[list[str], list[Demo]]:
    """Training prompts (unique, in order) and the demonstrations they came from (the reference responses of
    ``--reward annotator``). A data file may be prompt-only (TRL's format for online methods) unless references
    are needed."""
    if data is not None:
        prompts = unique_prompts(load_prompts(data, split))
        return prompts, load_records(data, Demo, split) if need_references else []
    if task is None:
        raise ConfigError("give --task NAME (see `preftune tasks`) or --data FILE.jsonl of prompts")
    references = task.demonstrations("train", num_prompts, seed)
    return list(dict.fromkeys(r.prompt for r in references)), references


def make_reward(spec: str, task=None, references: Sequence[Demo] | None = None, seed: int = 0,
                link: str = "bradley-terry", flip_prob: float = 0.0, max_length: int = 96,
                feedback: str | None = None) -> RewardFn:
    """The reward ``--reward`` names: ``oracle`` (``task.reward``), ``annotator`` (1 when a simulated `Annotator`
    of the task's reward, or the source ``feedback`` names, prefers the sample to the reference response of its
    prompt), or a reward-model folder (preftune's or any ``AutoModelForSequenceClassification`` with one label),
    which scores with its own tokenizer."""
    from preftune.rewards import AnnotatorReward, load_reward_model, oracle_reward

    if task is None and (spec == "oracle" or (spec == "annotator" and feedback is None)):
        raise ConfigError(f"--reward {spec} needs --task (its oracle is the reward)" +
                          (" or --feedback (who compares)" if spec == "annotator" else ""))
    if spec == "oracle":
        return oracle_reward(task)
    if spec == "annotator":
        from preftune.feedback import Annotator
        from preftune.judges import feedback_from_spec

        if not references:
            raise ConfigError("--reward annotator needs reference responses (a task's demonstrations or --data)")
        simulated = Annotator(task.reward, link=link, flip_prob=flip_prob) if task is not None else None
        judge = feedback_from_spec(feedback, simulated, max_length) if feedback is not None else simulated
        return AnnotatorReward(judge, {r.prompt: r.response for r in references}, seed=seed)
    if not Path(spec).is_dir():
        raise ConfigError(f"--reward must be 'oracle', 'annotator' or a reward-model directory; {spec!r} is none")
    return load_reward_model(spec, max_length)


def task_defaults(method, task, chosen: set[str]) -> dict:
    """Config defaults that depend on the task (under the user's YAML and flags): a response length that fits it,
    and for ZPG on an LM the settings of docs/benchmarks.md's LM study. ZPG without a task runs on a user's prompts
    and judge (`--data`, `--feedback`): the LM settings with one label per pair, as a user's judge is asked once per
    label."""
    if method.inputs == "comparisons" and task is None:
        return {**zpg_lm_defaults(None, chosen), "annotators_per_pair": 1}
    if task is None:
        return {}
    if method.inputs == "comparisons":
        return {} if task.name == "gridworld" else zpg_lm_defaults(task.max_response_chars + 1, chosen)
    if "max_new_tokens" in {f.name for f in dataclasses.fields(method.config)}:
        return response_length_default(task)
    return {}


# ZPG on an LM perturbs only the final norm's 128 gains (d = 128) by default: all weights (d ≈ 4e5) need far more
# queries than a CPU run can ask (the estimator's variance grows like d²); docs/benchmarks.md, "ZPG on an LM"
ZPG_LM_DEFAULTS = {"lr": 0.05, "mu": 4.0, "batch_size": 32, "annotators_per_pair": 2,
                   "param_filter": r"(^|\.)(norm|ln_f)\.weight$"}


def zpg_lm_defaults(max_new_tokens: int | None, chosen: set[str]) -> dict:
    """The LM defaults (with a response length when the task gives one); the final-norm block is only a default
    when the user picked neither ``perturb`` nor ``param_filter`` (``--perturb lora`` or ``all`` must not inherit
    it)."""
    defaults = {**ZPG_LM_DEFAULTS, **({"max_new_tokens": max_new_tokens} if max_new_tokens else {})}
    if chosen & {"perturb", "param_filter"}:
        defaults.pop("param_filter")
    return defaults


def rewards_from_inputs(reward: str | None, reward_fn: Sequence[str] | None, reward_weights: str | None, task,
                        references, seed: int, link: str, label_noise: float, max_length: int,
                        feedback: str | None = None) -> RewardFn:
    """The reward ``--reward`` (a built-in or a reward-model folder; ``oracle`` when nothing is given) and the user's
    ``--reward-fn module:function`` (TRL's signature), summed with ``--reward-weights``. ``--reward annotator`` asks
    ``feedback`` when given."""
    from preftune.rewards import CombinedReward, load_function, trl_style

    if not reward_fn:
        if reward is None and task is None:
            raise ConfigError("nothing to reward the samples: give --reward-fn module:function, --reward DIR (a "
                              "reward model), --feedback SPEC (a judge against the reference responses), or --task "
                              "NAME for its oracle")
        return make_reward(reward or "oracle", task, references, seed, link, label_noise, max_length, feedback)
    functions = {}
    if reward is not None:
        functions[reward] = trl_style(make_reward(reward, task, references, seed, link, label_noise, max_length,
                                                  feedback))
    for spec in reward_fn:
        functions[spec.rpartition(":")[2]] = load_function(spec)
    weights = None
    if reward_weights:
        try:
            weights = [float(w) for w in reward_weights.split(",")]
        except ValueError:
            raise ConfigError(f"--reward-weights must be comma-separated numbers, got {reward_weights!r}") from None
    return CombinedReward(functions, weights)


def user_feedback(spec: str | None, method_name: str, max_length: int, **choice_model):
    """The source ``--feedback`` names (`preftune.judges.feedback_from_spec`), required when there is no task."""
    from preftune.judges import FEEDBACK_SPECS, feedback_from_spec

    if spec in (None, "annotator"):
        raise ConfigError(f"train {method_name} on --data prompts needs --feedback, who judges: "
                          f"{'; '.join(FEEDBACK_SPECS[1:])}")
    return feedback_from_spec(spec, max_length=max_length, **choice_model)


def comparison_feedback(spec: str | None, task, method_name: str, config):
    """Who judges ZPG's comparisons: a task's simulated annotators (``None`` or ``annotator``: its oracle reward,
    which `train_zpg_lm` turns into annotators) or the source ``--feedback`` names (a reward model's choice model
    takes the config's annotator temperature and link)."""
    if spec in (None, "annotator") and task is not None:
        return task.reward
    return user_feedback(spec, method_name, config.max_length, temperature=config.annotator_temperature,
                         link=config.annotator_link)


def train_from_inputs(method, config, task=None, data: Path | None = None, num_examples: int = 2000,
                      num_prompts: int = 2000, reward: str | None = None, label_noise: float = 0.0,
                      link: str = "bradley-terry", reward_fn: Sequence[str] | None = None,
                      reward_weights: str | None = None, split: str = "train", eval_data: Path | None = None,
                      eval_split: str = "test", feedback: str | None = None):
    """Build ``method``'s input from a built-in task or a data file and train it: what `preftune train` runs.
    ``feedback`` (a `preftune.judges.feedback_from_spec` string) judges ZPG's comparisons, joint learning's choices
    and ``--reward annotator``'s comparisons instead of the task's simulated annotators."""
    kind, seed = method.inputs, config.seed
    if task is not None and kind not in task.inputs:
        from preftune.methods import METHODS
        from preftune.tasks import get_task, task_descriptions

        tasks = [name for name in task_descriptions() if kind in get_task(name).inputs]
        methods = [m.name for m in METHODS.values() if m.inputs in task.inputs]
        raise ConfigError(f"train {method.name} cannot use --task {task.name}; its tasks: {', '.join(tasks)} "
                          f"(--task {task.name} is for {', '.join(methods)})")
    if kind == "demos":
        allow = getattr(config, "allow_degenerate", False)
        held_out = load_records(eval_data, Demo, eval_split, allow) if eval_data is not None else None
        return method.train(config, demonstrations(task, data, num_examples, seed, split, allow), eval_data=held_out)
    if kind == "pairs":
        allow = getattr(config, "allow_degenerate", False)
        held_out = load_records(eval_data, Pair, eval_split, allow) if eval_data is not None else None
        pairs = preference_pairs(task, data, num_examples, seed, label_noise, link, split, allow)
        return method.train(config, pairs, eval_data=held_out)
    if kind == "unpaired":
        held_out = load_records(eval_data, Unpaired, eval_split) if eval_data is not None else None
        return method.train(config, unpaired_examples(task, data, num_examples, seed, label_noise, link, split),
                            eval_data=held_out)
    if kind == "prompts":
        if feedback is not None and reward not in (None, "annotator"):
            raise ConfigError(f"--feedback judges --reward annotator's comparisons with the reference responses, not "
                              f"--reward {reward}")
        reward = "annotator" if feedback is not None else reward
        need_references = reward == "annotator"
        if method.name == "bon":  # answers held-out prompts
            if eval_data is not None:
                raise ConfigError("bon answers the prompts it is given (--data or the task's eval prompts); it "
                                  "takes no --eval-data")
            if data is None and task is not None:
                prompts, references = task.prompts("eval", num_prompts, seed), task.demonstrations("eval", num_prompts,
                                                                                                     seed)
            else:
                prompts, references = prompts_with_references(task, data, num_prompts, seed, need_references, split)
            scorer = rewards_from_inputs(reward, reward_fn, reward_weights, task, references, seed, link, label_noise,
                                         config.max_length, feedback)
            from preftune.rewards import oracle_reward

            return method.train(config, prompts, scorer, oracle=oracle_reward(task) if task is not None else None)
        prompts, references = prompts_with_references(task, data, num_prompts, seed, need_references, split)
        held_out = unique_prompts(load_prompts(eval_data, eval_split)) if eval_data is not None else None
        return method.train(config, prompts, rewards_from_inputs(reward, reward_fn, reward_weights, task, references,
                                                                 seed, link, label_noise, config.max_length, feedback),
                            eval_data=held_out)
    if kind == "comparisons":
        if task is not None and task.name == "gridworld":
            if feedback not in (None, "annotator"):
                raise ConfigError("--task gridworld is judged by its simulated annotators (its trajectories are not "
                                  "text); --feedback is for an LM on prompts")
            from preftune.methods.zpg import train_zpg_gridworld

            return train_zpg_gridworld(config)
        if task is None and data is None:
            raise ConfigError(f"train {method.name} needs --task (gridworld, or a text task: see `preftune tasks`) or "
                              f"--data prompts.jsonl with --feedback (your judge)")
        prompts = prompts_with_references(task, data, num_prompts, seed, False, split)[0] if data is not None \
            else task.prompts("train", num_prompts, seed)
        judge = comparison_feedback(feedback, task, method.name, config)
        oracle = task.reward if task is not None and feedback not in (None, "annotator") else None
        return method.train(config, prompts, judge, oracle=oracle)
    if kind == "choices":
        if data is not None:  # your prompts and model: choices among the policy's own samples
            from preftune.methods.joint_lm import train_joint_lm

            chooser = user_feedback(feedback, method.name, config.max_length)
            return train_joint_lm(config, prompts_with_references(None, data, num_prompts, seed, False, split)[0],
                                  chooser)
        if task is None or task.name != "population":
            raise ConfigError(f"train {method.name} needs --task population (its responses are enumerable), got "
                              f"{getattr(task, 'name', None)!r}")
        if feedback in (None, "annotator"):
            return method.train(config, task)
        from preftune.judges import feedback_from_spec

        return method.train(config, task, feedback=feedback_from_spec(feedback))
    if kind == "pipeline":
        return method.train(config)
    raise ValueError(f"unknown input kind {kind!r}")

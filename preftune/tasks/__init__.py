"""Built-in tasks, each with an exact oracle; look one up by name with `get_task`."""

from __future__ import annotations

from preftune.tasks.arithmetic import ArithmeticTask
from preftune.tasks.base import Task
from preftune.tasks.natural_language import ArithmeticNLTask, OneSentenceTask
from preftune.tasks.preference_language import PreferenceLanguageTask
from preftune.tasks.summarise import SummariseTask

TASKS: dict[str, Task] = {task.name: task for task in (ArithmeticTask(), SummariseTask(), PreferenceLanguageTask(),
                                                        ArithmeticNLTask(), OneSentenceTask())}
# The tasks whose text the tiny models' tokenizer is trained on. The natural-language tasks are for pretrained
# models with their own tokenizers (tiny models still read them, character by character where words are unknown),
# and leaving them out keeps the tiny tokenizer — and every tiny-model result — as it was.
TINY_TOKENIZER_TASKS = ("arithmetic", "summarise", "preference-language")


# Not text-to-text, so not in TASKS: a tabular environment (ZPG, ZBCPG) and a task whose responses are enumerable
# (joint learning from choices). Built on first use.
OTHER_TASKS = ("gridworld", "population")


def get_task(name: str):
    """The built-in task called ``name`` (a `Task`, the `GridWorld` or the `PopulationTask`); unknown names list the
    allowed ones."""
    if name in TASKS:
        return TASKS[name]
    if name == "gridworld":
        from preftune.tasks.gridworld import GridWorld

        return GridWorld()
    if name == "population":
        from preftune.tasks.population import PopulationTask

        return PopulationTask()
    raise ValueError(f"unknown task {name!r}; choose one of {sorted([*TASKS, *OTHER_TASKS])}")


def task_descriptions() -> dict[str, str]:
    """Every built-in task's one-line description, for `preftune tasks`."""
    return {name: get_task(name).description for name in [*TASKS, *OTHER_TASKS]}


__all__ = ["TASKS", "Task", "get_task", "ArithmeticTask", "SummariseTask", "PreferenceLanguageTask",
           "ArithmeticNLTask", "OneSentenceTask"]


def tokenizer_corpus(per_split: int = 1000, seed: int = 0):
    """Text of every built-in task (prompts, demonstrations, candidates), for the tiny models' tokenizer."""
    for task in (TASKS[name] for name in TINY_TOKENIZER_TASKS):
        for split in ("train", "eval"):
            for demo in task.demonstrations(split, per_split, seed):
                yield demo.prompt
                yield demo.response
            for _, a, b in task.candidate_pairs(split, per_split, seed):
                yield a
                yield b

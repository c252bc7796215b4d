"""Built-in tasks, each with an exact oracle; look one up by name with `get_task`."""

from __future__ import annotations

from preftune.tasks.arithmetic import ArithmeticTask
from preftune.tasks.base import Task
from preftune.tasks.preference_language import PreferenceLanguageTask
from preftune.tasks.summarise import SummariseTask

TASKS: dict[str, Task] = {task.name: task for task in (ArithmeticTask(), SummariseTask(), PreferenceLanguageTask())}


def get_task(name: str) -> Task:
    """The built-in task called ``name``; unknown names list the allowed ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Task", "get_task", "ArithmeticTask", "SummariseTask", "PreferenceLanguageTask"]


def tokenizer_corpus(per_split: int = 1000, seed: int = 0):
    """Text of every built-in task (prompts, demonstrations, candidates), for the tiny models' tokenizer."""
    for task in TASKS.values():
        for split in ("train", "eval"):
            for demo in task.demonstrations(split, per_split, seed):
                yield demo.prompt
                yield demo.response
            for _, a, b in task.candidate_pairs(split, per_split, seed):
                yield a
                yield b

"""The interface every built-in task implements.

A task is a seeded, deterministic source of prompts, demonstrations and unlabelled candidate pairs,
with an *exact* oracle: `reward(prompt, response)` is the ground truth that simulated annotators
prefer and that every method is measured by. Text is printable ASCII (the tiny models' tokenizer is
a BPE whose alphabet is printable ASCII).
"""

from __future__ import annotations

import random
import zlib
from abc import ABC, abstractmethod

from preftune.data import Demo

SPLITS = ("train", "eval")


class Task(ABC):
    name: str = ""
    description: str = ""  # one line, shown by `preftune tasks`
    # what the task can give a method (`preftune.methods.InputKind`): a text task gives them all
    inputs: tuple[str, ...] = ("demos", "pairs", "unpaired", "prompts", "comparisons", "pipeline")
    max_prompt_chars: int = 32
    max_response_chars: int = 32

    def rng(self, split: str, seed: int) -> random.Random:
        """A generator private to (task, split, seed): train and eval prompts never share a stream."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return random.Random(zlib.crc32(f"{self.name}/{split}/{seed}".encode()))

    @abstractmethod
    def prompts(self, split: str, n: int, seed: int = 0) -> list[str]:
        """n prompts of a split; the train and eval prompt sets are disjoint."""

    @abstractmethod
    def demonstrations(self, split: str, n: int, seed: int = 0) -> list[Demo]:
        """n demonstrations (the expert/teacher's responses) for SFT and imitation."""

    @abstractmethod
    def reward(self, prompt: str, response: str) -> float:
        """The exact oracle reward of a response."""

    @abstractmethod
    def candidate_pairs(self, split: str, n: int, seed: int = 0) -> list[tuple[str, str, str]]:
        """n unlabelled (prompt, response_a, response_b) pairs for annotators to compare."""

    def is_correct(self, prompt: str, response: str) -> bool:
        """Whether a response is fully right; tasks with a graded oracle define their own threshold."""
        return self.reward(prompt, response) >= 1.0

    def canonical_form(self, prompt: str, response: str) -> str:
        """A key that two responses share exactly when they mean the same (RLP-SPG's clusters): by default the
        whitespace-normalised text; tasks with a coarser exact equivalence override it."""
        return " ".join(response.split())

"""Two-number addition, a GSM8k stand-in with several distinct correct answers.

Prompt: ``"17+25="`` with operands in ``0..MAX_OPERAND``.

Demonstrations use one of three correct forms, drawn uniformly, so diversity is measurable:
- direct:      ``"42"``
- worked step: ``"30+12=42"`` (tens of both operands, then ones of both operands, then the sum)
- commuted:    ``"25+17=42"``

Oracle (exact, 0 or 1): the stripped response must be a chain ``e0=e1=...=ek`` where each ``ei`` is a sum of
non-negative integers (``\\d+(\\+\\d+)*``); every equality in the chain must be true, and the last expression
must be a single integer equal to a+b. So ``"42"``, ``"30+12=42"``, ``"25+17=42"``, ``"40+2=42"`` are right;
``"30+11=42"`` (false step), ``"43"`` (wrong answer) and ``"42!"`` (not a chain) are wrong.

Split: an unordered operand pair {a, b} is in eval iff ``crc32("a,b") % 5 == 0`` (a <= b), so "17+25=" and
"25+17=" (whose commuted answers mention each other) are always in the same split.
"""

from __future__ import annotations

import random
import re
import zlib

from preftune.data import Demo
from preftune.tasks.base import Task

MAX_OPERAND = 49
_EXPRESSION = re.compile(r"\d+(?:\+\d+)*")
_PROMPT = re.compile(r"(\d+)\+(\d+)=")


def _split_of(a: int, b: int) -> str:
    low, high = min(a, b), max(a, b)
    return "eval" if zlib.crc32(f"{low},{high}".encode()) % 5 == 0 else "train"


def parse_prompt(prompt: str) -> tuple[int, int]:
    """The operands of an ``"a+b="`` prompt; a clear error for anything else."""
    match = _PROMPT.fullmatch(prompt)
    if match is None:
        raise ValueError(f"not an arithmetic prompt (expected 'a+b='): {prompt!r}")
    return int(match.group(1)), int(match.group(2))


def correct_forms(a: int, b: int) -> list[str]:
    """The three demonstrated correct answers: direct, worked via tens and ones, commuted."""
    total = a + b
    tens = 10 * (a // 10) + 10 * (b // 10)
    ones = a % 10 + b % 10
    return [str(total), f"{tens}+{ones}={total}", f"{b}+{a}={total}"]


def wrong_forms(a: int, b: int, offset: int) -> list[str]:
    """Plausible wrong answers off by ``offset`` (non-zero; flipped if it would go negative): each scores 0."""
    if a + b + offset < 0:
        offset = -offset
    total, wrong = a + b, a + b + offset
    tens = 10 * (a // 10) + 10 * (b // 10)
    ones = a % 10 + b % 10
    forms = [
        str(wrong),  # wrong answer
        f"{tens}+{ones}={wrong}",  # false step, wrong answer
        f"{b}+{a}={wrong}",  # false step, wrong answer
    ]
    if ones + offset >= 0:
        forms.append(f"{tens}+{ones + offset}={wrong}")  # true step, wrong answer
        forms.append(f"{tens}+{ones + offset}={total}")  # right answer reached by a false step
    return forms


class ArithmeticTask(Task):
    name = "arithmetic"
    description = "a+b= with operands 0..49; answers direct, worked via tens and ones, or commuted (GSM8k stand-in)"
    max_prompt_chars = 6  # "49+49="
    max_response_chars = 9  # "80+21=101" (the longest wrong candidate; correct answers are <= 8)

    def __init__(self) -> None:
        operands = range(MAX_OPERAND + 1)
        self._pools = {split: [] for split in ("train", "eval")}
        for a in operands:
            for b in operands:
                self._pools[_split_of(a, b)].append(f"{a}+{b}=")

    def prompts(self, split: str, n: int, seed: int = 0) -> list[str]:
        return self._draw_prompts(self.rng(split, seed), split, n)

    def _draw_prompts(self, rng: random.Random, split: str, n: int) -> list[str]:
        pool = self._pools[split]
        return [rng.choice(pool) for _ in range(n)]

    def demonstrations(self, split: str, n: int, seed: int = 0) -> list[Demo]:
        rng = self.rng(split, seed)
        prompts = self._draw_prompts(rng, split, n)  # drawn first: demos share prompts(split, n, seed)
        return [Demo(p, rng.choice(correct_forms(*parse_prompt(p)))) for p in prompts]

    def reward(self, prompt: str, response: str) -> float:
        a, b = parse_prompt(prompt)
        expressions = response.strip().split("=")
        if not all(_EXPRESSION.fullmatch(e) for e in expressions):
            return 0.0
        values = [sum(int(term) for term in e.split("+")) for e in expressions]
        if any(v != values[-1] for v in values) or "+" in expressions[-1]:
            return 0.0
        return 1.0 if values[-1] == a + b else 0.0

    def canonical_form(self, prompt: str, response: str) -> str:
        """The final answer: the text after the last ``=`` (``"30+12=42"`` and ``"42"`` are equivalent)."""
        return " ".join(response.split("=")[-1].split())

    def candidate_pairs(self, split: str, n: int, seed: int = 0) -> list[tuple[str, str, str]]:
        """70% one right and one wrong (order random), 15% both right, 15% both wrong; never identical."""
        rng = self.rng(split, seed)
        prompts = self._draw_prompts(rng, split, n)
        pairs = []
        for prompt in prompts:
            a, b = parse_prompt(prompt)
            right = correct_forms(a, b)
            wrong = wrong_forms(a, b, rng.choice([-3, -2, -1, 1, 2, 3]))
            kind = rng.random()
            if kind < 0.15 and len(set(right)) >= 2:
                first, second = rng.sample(sorted(set(right)), 2)
            elif kind < 0.30 and len(set(wrong)) >= 2:
                first, second = rng.sample(sorted(set(wrong)), 2)
            else:
                first, second = rng.choice(right), rng.choice(wrong)
                if rng.random() < 0.5:
                    first, second = second, first
            pairs.append((prompt, first, second))
        return pairs

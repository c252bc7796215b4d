"""Natural-language tasks for instruction-tuned models (SmolLM2), with exact oracles like the built-in ones.

The prompts are plain questions; a tokenizer with a chat template wraps them as a user turn when they are
tokenised (`preftune.data.prompt_token_ids`), so the tasks themselves know nothing about templates.

arithmetic-nl — ``"What is 17 plus 25? Reply with just the number."`` with operands 10..99 (two-digit sums, where
SmolLM2-135M-Instruct is right about one time in five greedily).
  Oracle (exact, 0 or 1): the *final number* in the response must equal a+b, and every equality the response
  states must be true. Numbers are maximal digit runs (a thousands comma would split one, but no answer here
  reaches 1000); an equality is ``x + y (+ ...) = z`` (spaces optional, chains allowed). So ``"42"``,
  ``"The answer is 42."``, ``"17 + 25 = 42"`` and ``"30 + 12 = 42"`` are right; ``"43"``, ``"17 + 25 = 42, so 43"``
  (final number wrong) and ``"17 + 26 = 42"`` (false equality) are wrong. Why the final number: an instruction
  model answers in several forms ("59 + 63 = 122" is SmolLM2's favourite) and the *last* number is where every
  one of them puts its result; requiring true equalities keeps a right number reached by a false step wrong, as
  the symbolic `arithmetic` task does.
  Demonstrations: ``"42"`` (the instructed form) or ``"17 + 25 = 42"``, drawn uniformly.
  Split: an unordered operand pair is held out iff ``crc32("a,b") % 5 == 0`` (as in `arithmetic`).

one-sentence — ``"Describe the cat in one sentence."`` over `TOPICS`: a length/format preference judged by a rule.
  Oracle (graded, in [0, 1]): the mean of three checks: exactly one sentence (ends with ``.``, ``!`` or ``?``
  and has no other sentence end followed by more text, no line break); on topic (the topic word appears); and
  concise (`MIN_WORDS`..`MAX_WORDS` words). Correct iff all three hold (reward 1).
  Demonstrations: one templated sentence about the topic. Candidate pairs mix such sentences with two- and
  three-sentence answers, off-topic sentences, fragments without an end mark, and rambling run-ons.
  Split: a topic is held out iff ``crc32(topic) % 4 == 0``.
"""

from __future__ import annotations

import random
import re
import zlib

from preftune.data import Demo
from preftune.tasks.base import Task

LOW, HIGH = 10, 99
_NL_PROMPT = re.compile(r"What is (\d+) plus (\d+)\? Reply with just the number\.")
_NUMBER = re.compile(r"\d+")
_EQUALITY = re.compile(r"\d+(?:\s*\+\s*\d+)*(?:\s*=\s*\d+(?:\s*\+\s*\d+)*)+")


def _pair_split(a: int, b: int) -> str:
    low, high = min(a, b), max(a, b)
    return "eval" if zlib.crc32(f"{low},{high}".encode()) % 5 == 0 else "train"


def nl_arithmetic_prompt(a: int, b: int) -> str:
    return f"What is {a} plus {b}? Reply with just the number."


def parse_nl_prompt(prompt: str) -> tuple[int, int]:
    match = _NL_PROMPT.fullmatch(prompt)
    if match is None:
        raise ValueError(f"not an arithmetic-nl prompt (expected 'What is A plus B? Reply with just the number.'): "
                         f"{prompt!r}")
    return int(match.group(1)), int(match.group(2))


def equalities_hold(text: str) -> bool:
    """Every stated chain ``x + y = z (= ...)`` in the text is true."""
    for chain in _EQUALITY.findall(text):
        values = [sum(int(term) for term in side.split("+")) for side in chain.split("=")]
        if any(v != values[0] for v in values):
            return False
    return True


class ArithmeticNLTask(Task):
    name = "arithmetic-nl"
    description = "'What is 17 plus 25? Reply with just the number.' (operands 10..99); final number must be a+b"
    max_prompt_chars = 50
    max_response_chars = 16  # "99 + 99 = 198" plus slack; generation gets max_response_chars + 1 tokens

    def __init__(self) -> None:
        self._pools: dict[str, list[str]] = {"train": [], "eval": []}
        for a in range(LOW, HIGH + 1):
            for b in range(LOW, HIGH + 1):
                self._pools[_pair_split(a, b)].append(nl_arithmetic_prompt(a, b))

    def _draw_prompts(self, rng: random.Random, split: str, n: int) -> list[str]:
        pool = self._pools[split]
        return [rng.choice(pool) for _ in range(n)]

    def prompts(self, split: str, n: int, seed: int = 0) -> list[str]:
        return self._draw_prompts(self.rng(split, seed), split, n)

    @staticmethod
    def correct_forms(a: int, b: int) -> list[str]:
        return [str(a + b), f"{a} + {b} = {a + b}"]

    @staticmethod
    def wrong_forms(a: int, b: int, offset: int) -> list[str]:
        """Wrong by ``offset``: the bare number, or a false equality."""
        wrong = a + b + offset
        return [str(wrong), f"{a} + {b} = {wrong}"]

    def demonstrations(self, split: str, n: int, seed: int = 0) -> list[Demo]:
        rng = self.rng(split, seed)
        prompts = self._draw_prompts(rng, split, n)  # drawn first: demos share prompts(split, n, seed)
        return [Demo(p, rng.choice(self.correct_forms(*parse_nl_prompt(p)))) for p in prompts]

    def reward(self, prompt: str, response: str) -> float:
        a, b = parse_nl_prompt(prompt)
        numbers = _NUMBER.findall(response)
        return 1.0 if numbers and int(numbers[-1]) == a + b and equalities_hold(response) else 0.0

    def candidate_pairs(self, split: str, n: int, seed: int = 0) -> list[tuple[str, str, str]]:
        """One right and one wrong answer per prompt, in random order (off by 1..10: plausible slips)."""
        rng = self.rng(split, seed)
        prompts = self._draw_prompts(rng, split, n)
        pairs = []
        for prompt in prompts:
            a, b = parse_nl_prompt(prompt)
            right = rng.choice(self.correct_forms(a, b))
            wrong = rng.choice(self.wrong_forms(a, b, rng.choice([-10, -2, -1, 1, 2, 10])))
            pairs.append((prompt, right, wrong) if rng.random() < 0.5 else (prompt, wrong, right))
        return pairs


TOPICS = ("cat", "dog", "sun", "moon", "sea", "tree", "rain", "bird", "river", "city", "book", "train",
          "garden", "winter", "bread", "music", "horse", "forest", "bridge", "island", "lamp", "clock", "mountain",
          "snow", "apple", "school", "ship", "flower", "desert", "market", "road", "kitchen", "storm", "piano",
          "village", "candle", "library", "beach", "cloud", "wolf")  # fmt: skip
ADJECTIVES = ("bright", "quiet", "old", "warm", "busy", "gentle", "large", "small", "calm", "lively")
ENDINGS = ("that many people enjoy", "that changes with the seasons", "found in many places",
           "that children like to draw", "with a long history")  # fmt: skip
MIN_WORDS, MAX_WORDS = 4, 25
_SENTENCE_END = re.compile(r"[.!?](\s+|$)")


def _topic_split(topic: str) -> str:
    return "eval" if zlib.crc32(topic.encode()) % 4 == 0 else "train"


def parse_topic_prompt(prompt: str) -> str:
    match = re.fullmatch(r"Describe the ([a-z]+) in one sentence\.", prompt)
    if match is None or match.group(1) not in TOPICS:
        raise ValueError(f"not a one-sentence prompt (expected 'Describe the TOPIC in one sentence.' with TOPIC in "
                         f"{TOPICS}): {prompt!r}")
    return match.group(1)


def sentence_checks(topic: str, response: str) -> tuple[bool, bool, bool]:
    """(exactly one sentence, on topic, concise) — the three rules of the one-sentence oracle."""
    text = response.strip()
    ends = list(_SENTENCE_END.finditer(text))
    one_sentence = bool(text) and "\n" not in text and len(ends) == 1 and ends[0].end() == len(text)
    words = re.findall(r"[A-Za-z']+", text.lower())
    return one_sentence, topic in words, MIN_WORDS <= len(words) <= MAX_WORDS


class OneSentenceTask(Task):
    name = "one-sentence"
    description = "'Describe the cat in one sentence.'; a rule checks one sentence, on topic, 4-25 words"
    max_prompt_chars = 40
    max_response_chars = 200  # the longest flawed candidate (three sentences, or a run-on); good answers are shorter

    def _draw_prompts(self, rng: random.Random, split: str, n: int) -> list[str]:
        pool = [t for t in TOPICS if _topic_split(t) == split]
        return [f"Describe the {rng.choice(pool)} in one sentence." for _ in range(n)]

    def prompts(self, split: str, n: int, seed: int = 0) -> list[str]:
        return self._draw_prompts(self.rng(split, seed), split, n)

    @staticmethod
    def _sentence(topic: str, rng: random.Random) -> str:
        return f"The {topic} is {rng.choice(ADJECTIVES)} and {rng.choice(ADJECTIVES)}, {rng.choice(ENDINGS)}."

    def demonstrations(self, split: str, n: int, seed: int = 0) -> list[Demo]:
        rng = self.rng(split, seed)
        prompts = self._draw_prompts(rng, split, n)
        return [Demo(p, self._sentence(parse_topic_prompt(p), rng)) for p in prompts]

    def reward(self, prompt: str, response: str) -> float:
        return sum(sentence_checks(parse_topic_prompt(prompt), response)) / 3

    def _flawed(self, topic: str, rng: random.Random) -> str:
        other = rng.choice([t for t in TOPICS if t != topic])
        kind = rng.randrange(4)
        if kind == 0:  # two or three sentences
            return " ".join(self._sentence(topic, rng) for _ in range(rng.randint(2, 3)))
        if kind == 1:  # off topic
            return self._sentence(other, rng)
        if kind == 2:  # a fragment with no end mark
            return f"{rng.choice(ADJECTIVES)} {topic}"
        words = " and ".join(f"it is {rng.choice(ADJECTIVES)}" for _ in range(10))  # one rambling run-on
        return f"The {topic} is {rng.choice(ADJECTIVES)} and {words}."

    def candidate_pairs(self, split: str, n: int, seed: int = 0) -> list[tuple[str, str, str]]:
        """A good sentence against a flawed answer (random order) 80% of the time, else two flawed answers."""
        rng = self.rng(split, seed)
        prompts = self._draw_prompts(rng, split, n)
        pairs = []
        for prompt in prompts:
            topic = parse_topic_prompt(prompt)
            first = self._sentence(topic, rng) if rng.random() < 0.8 else self._flawed(topic, rng)
            second = self._flawed(topic, rng)
            pairs.append((prompt, first, second) if rng.random() < 0.5 else (prompt, second, first))
        return pairs

"""Open-ended text judged by a hidden reward, an AlpacaFarm stand-in.

Prompt: ``"about sun:"`` or ``"about sun and sea:"`` (one or two distinct topics from `TOPICS`).

Teacher (the hidden "teacher LM" whose samples are the demonstrations): a topic-conditioned bigram Markov chain
over `VOCABULARY` (27 words of <= 4 letters). It draws a length L uniform in 3..6, then each next word from
``softmax(bigram[prev, :] + sum_t affinity[t, :] + TOPIC_BOOST * [word is a prompt topic])`` with ``prev`` the
previous word (``<s>`` at the start); the logit tables are Gaussian, drawn once from a fixed seed. Responses are
the words joined by single spaces, e.g. ``"warm sun is calm"``.

Hidden reward (what annotators prefer), for the response's whitespace-separated words:
- the first occurrence of each word scores its value: `WORD_VALUES` for ordinary words, +1 for a prompt topic,
  -0.5 for any other topic, -1 for a word outside the vocabulary;
- every repeated occurrence of a word scores -1;
- each word short of 3 or beyond 6 scores -1.
Teacher samples of one prompt typically differ by 1-2 in reward (standard deviation about 1.3), so under the
Bradley-Terry link at temperature 1 annotators prefer the better one with probability 0.7-0.9; the best of 16
samples beats the mean sample by about 2, and the maximum (6 distinct words of value 1) is far above both, yet it
uses only words the teacher already writes, so a fine-tuned model can be steered there by re-weighting them.

Split: a prompt's topic set is in eval iff ``crc32(sorted topics) % 4 == 0``.
"""

from __future__ import annotations

import math
import random
import zlib
from itertools import permutations

from preftune.data import Demo
from preftune.tasks.base import Task

TOPICS = ("sun", "sea", "cat", "tree", "rain", "road", "moon", "bird")
WORD_VALUES = {
    "warm": 1.0, "calm": 1.0, "glad": 1.0, "love": 1.0, "soft": 0.5, "new": 0.5, "see": 0.5,
    "is": 0.0, "the": 0.0, "and": 0.0, "my": 0.0, "we": 0.0, "big": 0.0,
    "cold": -0.5, "old": -0.5, "wet": -0.5, "dark": -1.0, "sad": -1.0, "dull": -1.0,
}  # fmt: skip
VOCABULARY = TOPICS + tuple(WORD_VALUES)
MIN_WORDS, MAX_WORDS = 3, 6
TOPIC_BOOST = 1.0
GOOD_REWARD = 2.0  # is_correct threshold: about the best tenth of teacher samples (mean sample ~0)
_TEACHER_SEED = "preference-language/teacher"


def _split_of(topics: tuple[str, ...]) -> str:
    return "eval" if zlib.crc32(",".join(sorted(topics)).encode()) % 4 == 0 else "train"


def parse_prompt(prompt: str) -> tuple[str, ...]:
    """The topics of an ``"about X:"`` / ``"about X and Y:"`` prompt."""
    if not (prompt.startswith("about ") and prompt.endswith(":")):
        raise ValueError(f"not a preference-language prompt (expected 'about X:' or 'about X and Y:'): {prompt!r}")
    topics = tuple(prompt[len("about ") : -1].split(" and "))
    if not all(t in TOPICS for t in topics) or len(set(topics)) != len(topics):
        raise ValueError(f"prompt topics must be distinct words of {TOPICS}: {prompt!r}")
    return topics


def hidden_reward(topics: tuple[str, ...], response: str) -> float:
    """The reward defined in the module docstring."""
    words = response.split()
    seen: set[str] = set()
    total = 0.0
    for word in words:
        if word in seen:
            total -= 1.0
            continue
        seen.add(word)
        if word in topics:
            total += 1.0
        elif word in TOPICS:
            total -= 0.5
        else:
            total += WORD_VALUES.get(word, -1.0)
    total -= max(0, MIN_WORDS - len(words)) + max(0, len(words) - MAX_WORDS)
    return total


class TeacherLM:
    """The hidden teacher: a topic-conditioned bigram chain (see the module docstring)."""

    def __init__(self, seed: str = _TEACHER_SEED) -> None:
        rng = random.Random(zlib.crc32(seed.encode()))
        contexts = ("<s>",) + VOCABULARY
        self.bigram = {prev: [rng.gauss(0.0, 1.0) for _ in VOCABULARY] for prev in contexts}
        self.affinity = {topic: [rng.gauss(0.0, 0.5) for _ in VOCABULARY] for topic in TOPICS}

    def next_word_probs(self, topics: tuple[str, ...], prev: str) -> list[float]:
        logits = list(self.bigram[prev])
        for topic in topics:
            logits = [x + a for x, a in zip(logits, self.affinity[topic])]
        logits = [x + (TOPIC_BOOST if w in topics else 0.0) for x, w in zip(logits, VOCABULARY)]
        top = max(logits)
        weights = [math.exp(x - top) for x in logits]
        norm = sum(weights)
        return [w / norm for w in weights]

    def sample(self, topics: tuple[str, ...], rng: random.Random) -> str:
        length = rng.randint(MIN_WORDS, MAX_WORDS)
        words, prev = [], "<s>"
        for _ in range(length):
            prev = rng.choices(VOCABULARY, weights=self.next_word_probs(topics, prev))[0]
            words.append(prev)
        return " ".join(words)


class PreferenceLanguageTask(Task):
    name = "preference-language"
    description = "texts 'about X and Y:' from a hidden teacher LM, judged by a hidden reward (AlpacaFarm stand-in)"
    max_prompt_chars = 20  # "about tree and rain:"
    max_response_chars = 29  # 6 words of <= 4 letters and 5 spaces

    def __init__(self) -> None:
        self.teacher = TeacherLM()
        self._pools: dict[str, list[str]] = {"train": [], "eval": []}
        for topics in [(t,) for t in TOPICS] + list(permutations(TOPICS, 2)):
            self._pools[_split_of(topics)].append("about " + " and ".join(topics) + ":")

    def _draw_prompts(self, rng: random.Random, split: str, n: int) -> list[str]:
        pool = self._pools[split]
        return [rng.choice(pool) for _ in range(n)]

    def prompts(self, split: str, n: int, seed: int = 0) -> list[str]:
        return self._draw_prompts(self.rng(split, seed), split, n)

    def teacher_sample(self, prompt: str, rng: random.Random) -> str:
        """One response of the hidden teacher LM."""
        return self.teacher.sample(parse_prompt(prompt), rng)

    def demonstrations(self, split: str, n: int, seed: int = 0) -> list[Demo]:
        rng = self.rng(split, seed)
        prompts = self._draw_prompts(rng, split, n)  # drawn first: demos share prompts(split, n, seed)
        return [Demo(p, self.teacher_sample(p, rng)) for p in prompts]

    def reward(self, prompt: str, response: str) -> float:
        return hidden_reward(parse_prompt(prompt), response)

    def is_correct(self, prompt: str, response: str) -> bool:
        return self.reward(prompt, response) >= GOOD_REWARD

    def canonical_form(self, prompt: str, response: str) -> str:
        """The multiset of words, as sorted text: the same words in any order. The hidden reward is a function of
        exactly this (first occurrences, repeats, length), so equivalent responses always score the same."""
        return " ".join(sorted(response.split()))

    def candidate_pairs(self, split: str, n: int, seed: int = 0) -> list[tuple[str, str, str]]:
        """Two independent teacher samples per prompt, as AlpacaFarm pairs two model outputs."""
        rng = self.rng(split, seed)
        prompts = self._draw_prompts(rng, split, n)
        return [(p, self.teacher_sample(p, rng), self.teacher_sample(p, rng)) for p in prompts]

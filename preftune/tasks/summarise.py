"""Pick the salient words of a short text, an XSUM stand-in scored by ROUGE-1-like overlap.

Source: 5..7 words, 2..3 distinct *content* words (`CONTENT_WORDS`) among *filler* words (`FILLER_WORDS`),
in random order. Prompt: the source followed by ``":"``, e.g. ``"the cat of a ship so:"``.

Oracle summary: the content words in source order, e.g. ``cat ship``. Demonstrations join them with a separator
drawn uniformly from ``SEPARATORS`` (``"cat ship"``, ``"cat, ship"``, ``"cat; ship"``), so diversity exists.

Reward: unigram F1 between the response's words and the oracle summary's words, with clipped (multiset) counts
as in ROUGE-1. Words are the maximal runs of ASCII letters, lower-cased, so separators and punctuation never
count; an empty response scores 0. It is in [0, 1] and is 1 exactly when the response's words are the oracle's
words as a multiset (order does not matter, as in ROUGE-1).

Split: a source is in eval iff ``crc32(source) % 5 == 0``; generation rejects sources of the other split.
"""

from __future__ import annotations

import random
import re
import zlib
from collections import Counter

from preftune.data import Demo
from preftune.tasks.base import Task

CONTENT_WORDS = (
    "cat", "dog", "sun", "moon", "ship", "king", "tree", "fish",
    "bird", "rain", "star", "boat", "lamp", "road", "hill", "cake",
)  # fmt: skip
FILLER_WORDS = ("the", "a", "of", "and", "so", "to", "in", "is")
SEPARATORS = (" ", ", ", "; ")
_WORD = re.compile(r"[a-z]+")


def words_of(text: str) -> list[str]:
    """The words the reward sees: lower-cased runs of letters (punctuation and separators are ignored)."""
    return _WORD.findall(text.lower())


def oracle_summary_words(prompt: str) -> list[str]:
    """The content words of the prompt's source, in source order."""
    if not prompt.endswith(":"):
        raise ValueError(f"not a summarise prompt (expected '<source>:'): {prompt!r}")
    return [w for w in words_of(prompt[:-1]) if w in CONTENT_WORDS]


def unigram_f1(response_words: list[str], reference_words: list[str]) -> float:
    """ROUGE-1 F1 with clipped counts; 0 when either side is empty."""
    overlap = sum((Counter(response_words) & Counter(reference_words)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(response_words), overlap / len(reference_words)
    return 2 * precision * recall / (precision + recall)


def _split_of(source: str) -> str:
    return "eval" if zlib.crc32(source.encode()) % 5 == 0 else "train"


class SummariseTask(Task):
    name = "summarise"
    description = "list the content words of a 5-7 word text; ROUGE-1 F1 against the oracle (XSUM stand-in)"
    max_prompt_chars = 31  # 3 four-letter content words + 4 three-letter fillers + 6 spaces + ":" = 31
    max_response_chars = 22  # a degraded candidate: 4 words of <= 4 letters joined by "; " = 22

    def _draw_source(self, rng: random.Random, split: str) -> str:
        while True:
            n_words = rng.randint(5, 7)
            n_content = rng.randint(2, 3)
            fillers = [rng.choice(FILLER_WORDS) for _ in range(n_words - n_content)]
            words = rng.sample(CONTENT_WORDS, n_content) + fillers
            rng.shuffle(words)
            source = " ".join(words)
            if _split_of(source) == split:
                return source

    def _draw_prompts(self, rng: random.Random, split: str, n: int) -> list[str]:
        return [self._draw_source(rng, split) + ":" for _ in range(n)]

    def prompts(self, split: str, n: int, seed: int = 0) -> list[str]:
        return self._draw_prompts(self.rng(split, seed), split, n)

    def demonstrations(self, split: str, n: int, seed: int = 0) -> list[Demo]:
        rng = self.rng(split, seed)
        prompts = self._draw_prompts(rng, split, n)  # drawn first: demos share prompts(split, n, seed)
        return [Demo(p, rng.choice(SEPARATORS).join(oracle_summary_words(p))) for p in prompts]

    def reward(self, prompt: str, response: str) -> float:
        return unigram_f1(words_of(response), oracle_summary_words(prompt))

    def degraded_summaries(self, prompt: str, rng: random.Random) -> list[list[str]]:
        """Word lists a careless summariser might write: each misses, adds or misorders something."""
        oracle = oracle_summary_words(prompt)
        absent = [w for w in CONTENT_WORDS if w not in oracle]
        dropped = list(oracle)
        del dropped[rng.randrange(len(dropped))]
        with_filler = list(oracle)
        with_filler.insert(rng.randint(0, len(oracle)), rng.choice(FILLER_WORDS))
        replaced = list(oracle)
        replaced[rng.randrange(len(replaced))] = rng.choice(absent)
        repeated = oracle + [rng.choice(oracle)]
        return [dropped, with_filler, replaced, repeated, list(reversed(oracle))]

    def candidate_pairs(self, split: str, n: int, seed: int = 0) -> list[tuple[str, str, str]]:
        """Two distinct summaries from {oracle, degraded variants}; reversed order ties with the oracle."""
        rng = self.rng(split, seed)
        prompts = self._draw_prompts(rng, split, n)
        pairs = []
        for prompt in prompts:
            options = [oracle_summary_words(prompt)] + self.degraded_summaries(prompt, rng)
            first, second = rng.sample(options, 2)
            pairs.append((prompt, rng.choice(SEPARATORS).join(first), rng.choice(SEPARATORS).join(second)))
        return pairs

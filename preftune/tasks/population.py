"""A population that disagrees, small enough to enumerate: the didactic process of Xu et al. (arXiv 2305.11455).

Prompt: ``"about rain"`` — ``about`` and one topic (train topics are queried, eval topics never are).
Response: exactly `RESPONSE_LENGTH` = 3 words from `RESPONSE_WORDS` (4 colours), e.g. ``"red gold red"``: 64
responses per prompt, so a policy's whole distribution π(·|x) is a vector of 64 numbers, computed exactly.

Population: `TYPE_WEIGHTS` = (0.6, 0.3, 0.1) — a majority and two minorities. For each prompt, type j has a
favourite response f_j(x) (utility `FAVOURITE_UTILITY` = 2) and a runner-up g_j(x) (utility 1); the other types'
liked responses have utility 0 for it and every response no type likes has utility −6 (everyone agrees it is
bad; the types disagree only about the good ones). The six liked responses are distinct and drawn once per
prompt from a fixed seed. A person of type j shown K candidates picks by Luce's rule softmax(u_j / T) over them
(Bradley–Terry at K = 2, T = 1); a query is answered by one person, whose type is drawn by weight
(`feedback.Population`).

Inclusive target (preftune's definition, docs/methods.md): the population's *choice distribution* —

    p*(y | x) = Σ_j w_j · softmax_{y' ∈ Y}(u_j(x, y') / T)(y),

the probability that a randomly drawn person picks y when shown every response. It is the mixture of the types'
preferred-response distributions, and a Luce model whose choices among *all* responses reproduce the
population's equals p*, so maximum-likelihood on full-set choices recovers it exactly. With K < |Y| a mixture
of Luce models is not a Luce model (IIA fails), so choice MLE converges to p*'s Luce projection instead;
`preftune.suite.joint_comparison.luce_projection` computes that floor for uniform pairs (KL 0.025, TV 0.105
under the defaults; stronger disagreement, e.g. utilities 3 / 1.5, raises it to TV 0.2). Under the defaults p*
puts 0.34 on the majority's favourite, 0.21 and 0.12 on the two minorities' favourites and 1% on the 58 responses
no type likes.

Oracle reward: log p*(y | x), the reward whose KL-regularised optimum at β = 1 from a uniform reference is p*.

The response space is enforced by the policy itself: `ResponseSpaceLM` wraps any causal LM and gives every
token outside the response vocabulary (and anything but <eos> after the last word) a logit of −1e9, so
Σ_{y ∈ Y} π(y|x) = 1 up to float rounding and sampling, scoring and training all see the same distribution.
The task uses its own word-level tokenizer (one token per word): the tiny models' BPE would split words into
variable pieces and leave most of its 400 tokens as probability mass outside Y.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from itertools import product

import torch

from preftune.data import Demo, encode_prompt_responses
from preftune.feedback import Annotator, Population
from preftune.tasks.base import Task

TRAIN_TOPICS = ("rain", "sun", "sea", "tree")
EVAL_TOPICS = ("moon", "bird")
RESPONSE_WORDS = ("red", "green", "blue", "gold")
RESPONSE_LENGTH = 3
TYPE_WEIGHTS = (0.6, 0.3, 0.1)
FAVOURITE_UTILITY = 2.0
RUNNER_UP_UTILITY = 1.0
OTHER_UTILITY = -6.0  # a response no type likes: everyone agrees it is bad


class PopulationTask(Task):
    name = "population"
    inputs = ("choices",)
    description = "a 3-type population with disagreeing favourites over 64 enumerable responses (inclusive target)"
    max_prompt_chars = 10  # "about rain"
    max_response_chars = 17  # "green green green"

    def __init__(self, weights: Sequence[float] = TYPE_WEIGHTS, favourite_utility: float = FAVOURITE_UTILITY,
                 runner_up_utility: float = RUNNER_UP_UTILITY, other_utility: float = OTHER_UTILITY,
                 temperature: float = 1.0) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.favourite_utility, self.runner_up_utility = favourite_utility, runner_up_utility
        self.other_utility = other_utility
        self.responses = [" ".join(words) for words in product(RESPONSE_WORDS, repeat=RESPONSE_LENGTH)]
        self._pools = {"train": [f"about {t}" for t in TRAIN_TOPICS], "eval": [f"about {t}" for t in EVAL_TOPICS]}
        self._liked: dict[str, list[tuple[int, int]]] = {}  # prompt -> per type (favourite, runner-up) index
        for prompt in self._pools["train"] + self._pools["eval"]:
            rng = random.Random(zlib.crc32(f"population/{prompt}".encode()))
            picks = rng.sample(range(len(self.responses)), 2 * len(self.weights))
            self._liked[prompt] = [(picks[2 * j], picks[2 * j + 1]) for j in range(len(self.weights))]
        self._liked_by_anyone = {prompt: {i for pair in liked for i in pair} for prompt, liked in self._liked.items()}
        self.population = Population(
            [Annotator(self._type_utility(j), temperature=temperature) for j in range(len(self.weights))],
            list(self.weights))

    # ------------------------------------------------------------------ the data-generating process
    def _type_utility(self, j: int):
        def utility(prompt: str, response: str) -> float:
            favourite, runner_up = self._liked[self._check_prompt(prompt)][j]
            index = self.response_index(response)
            if index == favourite:
                return self.favourite_utility
            if index == runner_up:
                return self.runner_up_utility
            return 0.0 if index in self._liked_by_anyone[prompt] else self.other_utility
        return utility

    def _check_prompt(self, prompt: str) -> str:
        if prompt not in self._liked:
            raise ValueError(f"not a population prompt: {prompt!r}; prompts are {self.all_prompts()}")
        return prompt

    def response_index(self, response: str) -> int:
        try:
            return self._index[response]
        except AttributeError:
            self._index = {r: i for i, r in enumerate(self.responses)}
            return self.response_index(response)
        except KeyError:
            raise ValueError(f"not a population response (3 words of {RESPONSE_WORDS}): {response!r}") from None

    def all_prompts(self) -> list[str]:
        return self._pools["train"] + self._pools["eval"]

    def split_prompts(self, split: str) -> list[str]:
        self.rng(split, 0)  # validates the split name
        return list(self._pools[split])

    def favourites(self, prompt: str) -> list[int]:
        """Index (into `responses`) of each type's favourite, majority first."""
        return [fav for fav, _ in self._liked[self._check_prompt(prompt)]]

    def utilities(self, prompt: str) -> torch.Tensor:
        """``[types, |Y|]`` utilities of every response for every type."""
        return torch.tensor([[self._type_utility(j)(prompt, r) for r in self.responses]
                             for j in range(len(self.weights))], dtype=torch.float64)

    def target(self, prompt: str) -> torch.Tensor:
        """p*(·|x), ``[|Y|]``: the population's choice distribution when shown every response."""
        return torch.tensor(self.population.choice_probs(prompt, self.responses), dtype=torch.float64)

    def targets(self, prompts: Sequence[str]) -> torch.Tensor:
        return torch.stack([self.target(p) for p in prompts])

    # ------------------------------------------------------------------ the Task interface
    def prompts(self, split: str, n: int, seed: int = 0) -> list[str]:
        rng = self.rng(split, seed)
        return [rng.choice(self._pools[split]) for _ in range(n)]

    def demonstrations(self, split: str, n: int, seed: int = 0) -> list[Demo]:
        """Each demonstration is what one random person picks from all responses: a draw from p*."""
        rng = self.rng(split, seed)
        prompts = [rng.choice(self._pools[split]) for _ in range(n)]
        return [Demo(p, rng.choices(self.responses, weights=self.target(p).tolist())[0]) for p in prompts]

    def reward(self, prompt: str, response: str) -> float:
        return float(self.target(prompt)[self.response_index(response)].log())

    def is_correct(self, prompt: str, response: str) -> bool:
        """Some type's favourite."""
        return self.response_index(response) in self.favourites(prompt)

    def candidate_pairs(self, split: str, n: int, seed: int = 0) -> list[tuple[str, str, str]]:
        """Uniformly random pairs of distinct responses (passive queries)."""
        rng = self.rng(split, seed)
        out = []
        for _ in range(n):
            prompt = rng.choice(self._pools[split])
            a, b = rng.sample(self.responses, 2)
            out.append((prompt, a, b))
        return out


# ----------------------------------------------------------------------------------------------
# Tokenizer and the response-space policy


# ----------------------------------------------------------------------------------------------
# Exact enumeration and the distances to the target


def response_space_ids(tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
    """Token ids ``[P, |Y|, T]`` of every prompt + response + <eos> (all the same length: no padding)."""
    flat_prompts = [p for p in prompts for _ in responses]
    encoded = encode_prompt_responses(tokenizer, flat_prompts, list(responses) * len(prompts), max_length=64)
    lengths = {len(ids) for ids, _ in encoded}
    if len(lengths) != 1:
        raise ValueError(f"population sequences must all have one length, got lengths {sorted(lengths)}")
    return torch.tensor([ids for ids, _ in encoded]).view(len(prompts), len(responses), -1)


def response_mask_of(ids: torch.Tensor, prompt_length: int = 2) -> torch.Tensor:
    """1 on response tokens (and <eos>), 0 on the prompt: the same shape as ``ids``."""
    mask = torch.zeros_like(ids)
    mask[..., prompt_length:] = 1
    return mask

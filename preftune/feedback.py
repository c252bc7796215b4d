"""Feedback sources: who answers a method's comparisons and choices, and the query ledger that counts them.

A `FeedbackSource` is anything with ``choice_probs(prompt, candidates)``, ``choose(prompt, candidates, rng)`` and
``compare(prompt, a, b, rng)``. Built here: simulated annotators with a known choice model (an `Annotator` compares
responses by a utility, usually the task's oracle reward, through a preference link, so the probability of every
label is known exactly and methods can be scored against it), populations of them, and a user's own function
(`FunctionFeedback`). Sources that need a model (a reward model, an LLM judge) are in `preftune.judges`.

Every query asked goes through a `QueryLedger` whatever the source, so methods are compared at equal query budgets
(`ask_preference_shares`, `label_pairs` and the methods record before they ask). Real human labels (JSONL pairs)
skip this module and enter as `Pair` records directly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from preftune.data import Pair

# ----------------------------------------------------------------------------------------------
# Preference links σ: value difference -> probability of preferring the first option.
# All are strictly increasing with σ(0) = 1/2 and σ(−x) = 1 − σ(x), so σ⁻¹ exists on (0, 1).

LINKS = ("bradley-terry", "thurstone", "weibull")


def check_link(link: str) -> None:
    if link not in LINKS:
        raise ValueError(f"link must be one of {LINKS}, got {link!r}")


def preference_link(x: torch.Tensor, link: str = "bradley-terry", shape: float = 2.0) -> torch.Tensor:
    """σ(x) for the Bradley–Terry (logistic), Thurstone (probit) and symmetric Weibull links.

    - bradley-terry: 1 / (1 + e^{−x}), the logistic link.
    - thurstone:     Φ(x / √2), the probit link of unit-variance Gaussian noise on each utility.
    - weibull:       1/2 + sign(x)/2 · (1 − exp(−|x|^k)), k = ``shape`` — a symmetric link whose tails are
      lighter than the logistic for k > 1 (preftune's choice; see docs/methods.md).
    """
    check_link(link)
    x = torch.as_tensor(x, dtype=torch.float64 if not torch.is_tensor(x) else None)
    if link == "bradley-terry":
        return torch.sigmoid(x)
    if link == "thurstone":
        return 0.5 * (1 + torch.erf(x / 2.0))  # Φ(x/√2) = ½(1 + erf(x/2))
    return 0.5 + 0.5 * torch.sign(x) * (1 - torch.exp(-x.abs() ** shape))


def inverse_preference_link(p: torch.Tensor, link: str = "bradley-terry", shape: float = 2.0) -> torch.Tensor:
    """σ⁻¹(p): the value difference that makes the first option preferred with probability p."""
    check_link(link)
    p = torch.as_tensor(p, dtype=torch.float64 if not torch.is_tensor(p) else None)
    if link == "bradley-terry":
        return torch.log(p) - torch.log1p(-p)
    if link == "thurstone":
        return 2.0 * torch.erfinv(2 * p - 1)
    q = (2 * p - 1).abs()
    return torch.sign(p - 0.5) * (-torch.log1p(-q)) ** (1.0 / shape)


# ----------------------------------------------------------------------------------------------
# The interface every method asks through


@runtime_checkable
class FeedbackSource(Protocol):
    """Who answers comparisons and choices: simulated annotators, a reward model, an LLM judge, a user's function.

    - ``choice_probs(prompt, candidates)``: the probability of picking each candidate (sums to 1);
    - ``choose(prompt, candidates, rng)``: one choice, the index of the picked candidate;
    - ``compare(prompt, a, b, rng)``: one comparison, True if ``a`` is preferred.

    A source whose ``choice_probs`` is its exact answer distribution says so with ``exact_probabilities = True``;
    a method may then draw many labels from one call (`ask_preference_shares`). The caller records every query in
    its `QueryLedger` before asking.
    """

    def choice_probs(self, prompt: str, candidates: Sequence[str]) -> list[float]: ...

    def choose(self, prompt: str, candidates: Sequence[str], rng: random.Random) -> int: ...

    def compare(self, prompt: str, a: str, b: str, rng: random.Random) -> bool: ...


class ProbabilisticFeedback:
    """A source defined by its choice probabilities: ``choose`` and ``compare`` draw from them (one uniform each)."""

    exact_probabilities = True

    def choice_probs(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        raise NotImplementedError

    def choose(self, prompt: str, candidates: Sequence[str], rng: random.Random) -> int:
        return _draw(self.choice_probs(prompt, candidates), rng)

    def compare(self, prompt: str, a: str, b: str, rng: random.Random) -> bool:
        return rng.random() < self.choice_probs(prompt, [a, b])[0]


def check_candidates(candidates: Sequence[str]) -> None:
    if len(candidates) < 2:
        raise ValueError(f"a choice needs at least 2 candidates, got {len(candidates)}")


@dataclass
class Annotator:
    """Prefers a over b with probability (1−f)·σ(Δ/T) + f·(1−σ(Δ/T)), Δ = u(a) − u(b).

    σ is the chosen link (Bradley–Terry = logistic, Thurstone = probit, symmetric Weibull); T scales how
    decisive the annotator is; f is label-flip noise (AlpacaFarm uses f = 0.25), which caps agreement at 1 − f.
    """

    utility: Callable[[str, str], float]
    link: str = "bradley-terry"
    temperature: float = 1.0
    flip_prob: float = 0.0
    weibull_shape: float = 2.0
    exact_probabilities = True  # a class attribute: its choice_probs are its answer distribution

    def __post_init__(self) -> None:
        if self.link not in LINKS:
            raise ValueError(f"annotator link must be one of {LINKS}, got {self.link!r}")
        if not self.temperature > 0:
            raise ValueError(f"annotator temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.flip_prob <= 0.5:
            raise ValueError(f"annotator flip_prob must be in [0, 0.5], got {self.flip_prob}")
        if not self.weibull_shape > 0:
            raise ValueError(f"annotator weibull_shape must be > 0, got {self.weibull_shape}")

    def prob_first_preferred(self, prompt: str, a: str, b: str) -> float:
        """The exact probability that this annotator labels ``a`` as preferred to ``b``."""
        return self.probs_from_utilities([self.utility(prompt, a), self.utility(prompt, b)])[0]

    def prob_from_margins(self, margins: torch.Tensor) -> torch.Tensor:
        """The same probability for a tensor of utility differences u(a) − u(b), e.g. trajectory returns."""
        p = preference_link(torch.as_tensor(margins, dtype=torch.float64) / self.temperature, self.link,
                            self.weibull_shape)
        return (1.0 - self.flip_prob) * p + self.flip_prob * (1.0 - p)

    def compare(self, prompt: str, a: str, b: str, rng: random.Random) -> bool:
        """One noisy label: True if ``a`` is preferred."""
        return rng.random() < self.prob_first_preferred(prompt, a, b)

    def choice_probs(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        """The exact probability of picking each of K candidates.

        K = 2 is `prob_first_preferred`. K > 2 needs the Bradley–Terry link, whose K-way form is Luce's choice
        rule softmax(u / T); label-flip noise f then moves mass f onto the other K − 1 candidates evenly
        (preftune's extension; it reduces to the pairwise flip at K = 2).
        """
        check_candidates(candidates)
        return self.probs_from_utilities([self.utility(prompt, c) for c in candidates])

    def probs_from_utilities(self, utilities: Sequence[float]) -> list[float]:
        """`choice_probs` given the candidates' utilities (a reward model scores them in one batch)."""
        if len(utilities) == 2:
            margin = torch.tensor(utilities[0] - utilities[1], dtype=torch.float64)
            p = float(self.prob_from_margins(margin))
            return [p, 1.0 - p]
        if self.link != "bradley-terry":
            raise ValueError(f"choices among {len(utilities)} candidates need link 'bradley-terry' (Luce), "
                             f"got {self.link!r}")
        luce = (torch.tensor(list(utilities), dtype=torch.float64) / self.temperature).softmax(-1)
        k = len(utilities)
        return ((1.0 - self.flip_prob) * luce + self.flip_prob * (1.0 - luce) / (k - 1)).tolist()

    def choose(self, prompt: str, candidates: Sequence[str], rng: random.Random) -> int:
        """One noisy choice among K candidates: the index of the picked one."""
        return _draw(self.choice_probs(prompt, candidates), rng)


@dataclass
class Population:
    """A mixture of annotator types: each query is answered by one type drawn by weight.

    Its choice probability is the weighted mixture of its members', which no single Bradley–Terry utility need
    reproduce when the types disagree.
    """

    exact_probabilities = True

    annotators: list[Annotator]
    weights: list[float]

    def __post_init__(self) -> None:
        if not self.annotators:
            raise ValueError("a population needs at least one annotator")
        if len(self.weights) != len(self.annotators):
            raise ValueError(f"population has {len(self.annotators)} annotators but {len(self.weights)} weights")
        if any(w < 0 for w in self.weights):
            raise ValueError(f"population weights must be non-negative, got {self.weights}")
        if abs(sum(self.weights) - 1.0) > 1e-6:
            raise ValueError(f"population weights must sum to 1, got sum {sum(self.weights)}")

    def sample_annotator(self, rng: random.Random) -> Annotator:
        return rng.choices(self.annotators, weights=self.weights)[0]

    def prob_first_preferred(self, prompt: str, a: str, b: str) -> float:
        return sum(w * ann.prob_first_preferred(prompt, a, b) for ann, w in zip(self.annotators, self.weights))

    def prob_from_margins(self, margins: torch.Tensor) -> torch.Tensor:
        """The mixture's probability for utility differences every member shares (members differ in link,
        temperature and noise only)."""
        return sum(w * ann.prob_from_margins(margins) for ann, w in zip(self.annotators, self.weights))

    def compare(self, prompt: str, a: str, b: str, rng: random.Random) -> bool:
        return self.sample_annotator(rng).compare(prompt, a, b, rng)

    def choice_probs(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        """The population's choice distribution over K candidates: the weighted mixture of its types'."""
        per_type = [ann.choice_probs(prompt, candidates) for ann in self.annotators]
        return [sum(w * probs[i] for w, probs in zip(self.weights, per_type)) for i in range(len(candidates))]

    def choose(self, prompt: str, candidates: Sequence[str], rng: random.Random) -> int:
        """One person, drawn by weight, picks among the candidates; returns the picked index."""
        return self.sample_annotator(rng).choose(prompt, candidates, rng)


class FunctionFeedback:
    """A user's judge ``fn(prompt, candidates) -> int | list[float]``: the index of the chosen candidate, or the
    probability of choosing each one (finite, non-negative, summing to 1 within 1e-6).

    An index is a certain choice: ``choice_probs`` gives it probability 1. A list of probabilities is the function's
    answer distribution, and ``choose``/``compare`` draw from it. The function is called once per query (never once
    for several labels: ``exact_probabilities`` is False), so the ledger counts the calls. ``name`` is what errors
    call it (``--feedback mymod:judge`` names it ``mymod:judge``).
    """

    exact_probabilities = False

    def __init__(self, function: Callable[[str, list[str]], object], name: str | None = None):
        if not callable(function):
            raise ValueError(f"feedback function {name or function!r} is not callable")
        self.function = function
        self.name = name or getattr(function, "__name__", "feedback function")

    def answer(self, prompt: str, candidates: Sequence[str]) -> int | list[float]:
        """The function's answer, checked: a valid index, or K probabilities."""
        check_candidates(candidates)
        k = len(candidates)
        try:
            out = self.function(prompt, list(candidates))
        except Exception as e:  # the user's code: say whose it is; the traceback keeps the rest
            raise RuntimeError(f"feedback function {self.name} failed: {type(e).__name__}: {e}") from e
        shape = f"an index in [0, {k}) or a list of {k} probabilities summing to 1"
        given = out.tolist() if hasattr(out, "tolist") else out  # numpy / torch scalars and arrays
        if isinstance(given, int) and not isinstance(given, bool):
            if not 0 <= given < k:
                raise ValueError(f"feedback function {self.name} returned index {given} for {k} candidates; it must "
                                 f"return {shape}")
            return given
        if not isinstance(given, list | tuple):
            raise ValueError(f"feedback function {self.name} returned {out!r} ({type(out).__name__}); it must return "
                             f"{shape}")
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in given):
            raise ValueError(f"feedback function {self.name} returned {out!r}; it must return {shape}")
        probs = [float(x) for x in given]
        if len(probs) != k or not all(math.isfinite(x) and x >= 0 for x in probs) or abs(sum(probs) - 1) > 1e-6:
            raise ValueError(f"feedback function {self.name} returned {probs} for {k} candidates; it must return "
                             f"{shape}")
        return probs

    def choice_probs(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        out = self.answer(prompt, candidates)
        return out if isinstance(out, list) else [float(i == out) for i in range(len(candidates))]

    def choose(self, prompt: str, candidates: Sequence[str], rng: random.Random) -> int:
        out = self.answer(prompt, candidates)
        return out if isinstance(out, int) else _draw(out, rng)

    def compare(self, prompt: str, a: str, b: str, rng: random.Random) -> bool:
        return self.choose(prompt, [a, b], rng) == 0


def _draw(probs: Sequence[float], rng: random.Random) -> int:
    """An index drawn with the given probabilities by one uniform (the last index absorbs rounding)."""
    u, total = rng.random(), 0.0
    for i, p in enumerate(probs):
        total += p
        if u < total:
            return i
    return len(probs) - 1


class BudgetExceeded(RuntimeError):
    """More comparisons were asked than the ledger's budget allows."""


@dataclass
class QueryLedger:
    """Counts every comparison asked, by tag (e.g. "labels", "eval"), against an optional budget.

    The budget covers all tags together; a query that would exceed it raises `BudgetExceeded` and is not counted.
    """

    budget: int | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def record(self, tag: str, n: int = 1) -> None:
        if n < 0:
            raise ValueError(f"cannot record a negative number of queries ({n})")
        if self.budget is not None and self.total + n > self.budget:
            raise BudgetExceeded(
                f"query budget of {self.budget} exceeded: {self.total} asked so far, {n} more requested (tag {tag!r})"
            )
        self.counts[tag] = self.counts.get(tag, 0) + n

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.total

    def by_tag(self) -> dict[str, int]:
        return dict(self.counts)

    def state_dict(self) -> dict:
        return {"budget": self.budget, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.budget = state["budget"]
        self.counts = {str(tag): int(n) for tag, n in state["counts"].items()}


def label_pairs(
    candidates: list[tuple[str, str, str]],
    annotator: FeedbackSource,
    rng: random.Random,
    ledger: QueryLedger | None = None,
    tag: str = "labels",
) -> list[Pair]:
    """One comparison by the source per (prompt, a, b), each counted before it is asked, as chosen/rejected
    pairs."""
    pairs = []
    for prompt, a, b in candidates:
        if ledger is not None:
            ledger.record(tag)
        first_preferred = annotator.compare(prompt, a, b, rng)
        pairs.append(Pair(prompt, a, b) if first_preferred else Pair(prompt, b, a))
    return pairs


def repeated_preference_shares(probs: torch.Tensor, num_labels: int, generator: torch.Generator | None = None,
                               ledger: QueryLedger | None = None, tag: str = "labels") -> torch.Tensor:
    """Ask ``num_labels`` independent annotators about each pair; return each pair's share preferring its
    first item. ``probs[i]`` is the exact probability that one annotator (or a population's random member)
    prefers the first item of pair i, so the count is Binomial(num_labels, probs[i]). All len(probs) ×
    num_labels queries are recorded in the ledger before any is answered."""
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    probs = torch.as_tensor(probs, dtype=torch.float64)
    if ledger is not None:
        ledger.record(tag, probs.numel() * num_labels)
    counts = torch.binomial(torch.full_like(probs, float(num_labels)), probs, generator=generator)
    return counts / num_labels


def ask_preference_shares(source: FeedbackSource, prompts: Sequence[str], firsts: Sequence[str],
                          seconds: Sequence[str], num_labels: int, generator: torch.Generator,
                          ledger: QueryLedger | None = None, tag: str = "labels") -> torch.Tensor:
    """Each pair's share of ``num_labels`` labels preferring its first response, all len × num_labels queries
    recorded before any is asked. A source with exact probabilities is asked P(first ≻ second) once per pair and
    its labels drawn as Binomial(num_labels, p) (`repeated_preference_shares`); any other source (a user's
    function) is asked once per label."""
    if not len(prompts) == len(firsts) == len(seconds):
        raise ValueError(f"{len(prompts)} prompts for {len(firsts)} and {len(seconds)} responses")
    if getattr(source, "exact_probabilities", False):
        probs = [source.choice_probs(p, [a, b])[0] for p, a, b in zip(prompts, firsts, seconds)]
        return repeated_preference_shares(torch.tensor(probs, dtype=torch.float64), num_labels, generator, ledger,
                                          tag)
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    if ledger is not None:
        ledger.record(tag, len(prompts) * num_labels)
    rng = random.Random(int(torch.randint(2**62, (1,), generator=generator)))
    wins = [sum(source.compare(p, a, b, rng) for _ in range(num_labels)) for p, a, b in zip(prompts, firsts, seconds)]
    return torch.tensor(wins, dtype=torch.float64) / num_labels

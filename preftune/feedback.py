"""Simulated human feedback: annotators with a known choice model, populations of them, and a query ledger.

An annotator compares two responses by a utility (usually the task's oracle reward) through a preference link,
so the probability of every label is known exactly and methods can be scored against it. Every comparison asked
goes through a `QueryLedger`, so methods are compared at equal query budgets. Real human labels (JSONL pairs) skip
this module and enter as `Pair` records directly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
        margin = self.utility(prompt, a) - self.utility(prompt, b)
        return float(self.prob_from_margins(torch.tensor(margin, dtype=torch.float64)))

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
        if len(candidates) < 2:
            raise ValueError(f"a choice needs at least 2 candidates, got {len(candidates)}")
        if len(candidates) == 2:
            p = self.prob_first_preferred(prompt, candidates[0], candidates[1])
            return [p, 1.0 - p]
        if self.link != "bradley-terry":
            raise ValueError(f"choices among {len(candidates)} candidates need link 'bradley-terry' (Luce), "
                             f"got {self.link!r}")
        utilities = torch.tensor([self.utility(prompt, c) for c in candidates], dtype=torch.float64)
        luce = (utilities / self.temperature).softmax(-1)
        k = len(candidates)
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
    annotator: Annotator | Population,
    rng: random.Random,
    ledger: QueryLedger | None = None,
    tag: str = "labels",
) -> list[Pair]:
    """One annotator comparison per (prompt, a, b), each counted before it is asked, as chosen/rejected pairs."""
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

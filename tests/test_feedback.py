"""Simulated annotators, populations, the query ledger and labelling."""

from __future__ import annotations

import math
import random

import pytest

from preftune.data import Pair
from preftune.feedback import (
    Annotator,
    BudgetExceeded,
    Population,
    QueryLedger,
    label_pairs,
)
from preftune.metrics import annotator_agreement_with_oracle
from preftune.tasks import get_task

UTILITY = {"good": 1.0, "bad": 0.0, "great": 2.0}


def utility(prompt: str, response: str) -> float:
    return UTILITY[response]


@pytest.mark.parametrize(
    ("link", "temperature", "flip", "shape", "expected"),
    [
        ("bradley-terry", 1.0, 0.0, 2.0, 1 / (1 + math.exp(-1))),
        ("thurstone", 1.0, 0.0, 2.0, 0.5 * (1 + math.erf(0.5))),  # Φ(1/√2)
        ("weibull", 1.0, 0.0, 2.0, 1 - 0.5 * math.exp(-1)),
        ("bradley-terry", 2.0, 0.0, 2.0, 1 / (1 + math.exp(-0.5))),
        ("bradley-terry", 1.0, 0.25, 2.0, 0.75 / (1 + math.exp(-1)) + 0.25 * (1 - 1 / (1 + math.exp(-1)))),
        ("weibull", 0.5, 0.0, 1.0, 1 - 0.5 * math.exp(-2)),  # margin 2, shape 1
    ],
)
def test_annotator_probability_matches_hand_values(link, temperature, flip, shape, expected):
    annotator = Annotator(utility, link=link, temperature=temperature, flip_prob=flip, weibull_shape=shape)
    assert annotator.prob_first_preferred("q", "good", "bad") == pytest.approx(expected, abs=1e-12)
    assert annotator.prob_first_preferred("q", "bad", "good") == pytest.approx(1 - expected, abs=1e-12)
    assert annotator.prob_first_preferred("q", "good", "good") == pytest.approx(0.5)


def test_flip_half_makes_labels_coin_flips():
    annotator = Annotator(utility, flip_prob=0.5)
    assert annotator.prob_first_preferred("q", "great", "bad") == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"link": "logit"}, "bradley-terry.*thurstone.*weibull"),
        ({"temperature": 0.0}, "temperature"),
        ({"flip_prob": 0.6}, "flip_prob"),
        ({"flip_prob": -0.1}, "flip_prob"),
        ({"weibull_shape": 0.0}, "weibull_shape"),
    ],
)
def test_annotator_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Annotator(utility, **kwargs)


@pytest.mark.parametrize("link", ["bradley-terry", "thurstone", "weibull"])
def test_compare_frequency_matches_probability(link):
    annotator = Annotator(utility, link=link, flip_prob=0.1)
    rng = random.Random(0)
    n = 8000
    frequency = sum(annotator.compare("q", "good", "bad", rng) for _ in range(n)) / n
    p = annotator.prob_first_preferred("q", "good", "bad")
    assert abs(frequency - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_compare_is_seeded():
    annotator = Annotator(utility)

    def labels(seed: int) -> list[bool]:
        rng = random.Random(seed)
        return [annotator.compare("q", "good", "bad", rng) for _ in range(50)]

    assert labels(7) == labels(7) and labels(7) != labels(8)


def test_population_mixture_and_validation():
    greedy = Annotator(utility, link="weibull")
    contrarian = Annotator(lambda p, r: -utility(p, r))
    population = Population([greedy, contrarian], [0.75, 0.25])
    expected = 0.75 * greedy.prob_first_preferred("q", "good", "bad") + 0.25 * contrarian.prob_first_preferred(
        "q", "good", "bad"
    )
    assert population.prob_first_preferred("q", "good", "bad") == pytest.approx(expected)
    rng = random.Random(1)
    n = 8000
    frequency = sum(population.compare("q", "good", "bad", rng) for _ in range(n)) / n
    assert abs(frequency - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    drawn = [population.sample_annotator(rng) for _ in range(4000)]
    assert abs(sum(a is greedy for a in drawn) / 4000 - 0.75) < 0.03
    with pytest.raises(ValueError, match="sum to 1"):
        Population([greedy, contrarian], [0.5, 0.6])
    with pytest.raises(ValueError, match="non-negative"):
        Population([greedy, contrarian], [1.5, -0.5])
    with pytest.raises(ValueError, match="2 annotators but 1 weights"):
        Population([greedy, contrarian], [1.0])


def test_ledger_counts_budget_and_state_round_trip():
    ledger = QueryLedger(budget=10)
    ledger.record("labels", 4)
    ledger.record("eval")
    ledger.record("labels")
    assert ledger.total == 6 and ledger.remaining == 4
    assert ledger.by_tag() == {"labels": 5, "eval": 1}
    with pytest.raises(BudgetExceeded, match="budget of 10"):
        ledger.record("labels", 5)
    assert ledger.total == 6  # the refused query is not counted
    restored = QueryLedger()
    restored.load_state_dict(ledger.state_dict())
    assert restored.by_tag() == ledger.by_tag() and restored.budget == 10
    restored.record("eval", 4)
    with pytest.raises(BudgetExceeded):
        restored.record("eval")
    unlimited = QueryLedger()
    unlimited.record("x", 10**6)
    assert unlimited.remaining is None and unlimited.total == 10**6


def test_label_pairs_records_each_query_and_orders_by_preference():
    task = get_task("arithmetic")
    candidates = task.candidate_pairs("train", 300, seed=0)
    ledger = QueryLedger()
    perfect = Annotator(task.reward, temperature=1e-3)  # deterministic on strict differences
    pairs = label_pairs(candidates, perfect, random.Random(0), ledger=ledger)
    assert ledger.by_tag() == {"labels": 300}
    assert all(isinstance(p, Pair) for p in pairs)
    assert [p.prompt for p in pairs] == [c[0] for c in candidates]
    assert all({p.chosen, p.rejected} == {a, b} for p, (_, a, b) in zip(pairs, candidates))
    assert all(task.reward(p.prompt, p.chosen) >= task.reward(p.prompt, p.rejected) for p in pairs)
    with pytest.raises(BudgetExceeded):
        label_pairs(candidates, perfect, random.Random(0), ledger=QueryLedger(budget=299), tag="rm")


def test_agreement_with_oracle_hand_case_and_flip_ceiling():
    pairs = [Pair("q", "good", "bad"), Pair("q", "bad", "great"), Pair("q", "good", "good"), Pair("q", "great", "bad")]
    assert annotator_agreement_with_oracle(pairs, utility) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    candidates = [("q", "great", "bad")] * 4000
    noisy = Annotator(utility, temperature=1e-3, flip_prob=0.25)
    labels = label_pairs(candidates, noisy, random.Random(3))
    assert annotator_agreement_with_oracle(labels, utility) == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError):
        annotator_agreement_with_oracle([], utility)

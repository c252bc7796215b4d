"""Metrics on hand-computed cases."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from preftune.feedback import Annotator, QueryLedger
from preftune.metrics import (
    accuracy,
    annotator_win_rate,
    distinct_n,
    kl_from_logprobs,
    mean_oracle_reward,
    reward_model_accuracy,
    self_bleu,
    spearman,
    win_rate,
)
from preftune.tasks import get_task

PROMPTS = ["17+25=", "1+2=", "3+4="]


def test_oracle_reward_accuracy_and_win_rate_hand_case():
    task = get_task("arithmetic")
    responses = ["42", "4", "0+7=7"]  # right, wrong, right
    reference = ["43", "3", "7"]  # wrong, right, right
    assert mean_oracle_reward(task, PROMPTS, responses) == pytest.approx(2 / 3)
    assert accuracy(task, PROMPTS, responses) == pytest.approx(2 / 3)
    assert win_rate(task, PROMPTS, responses, reference) == pytest.approx((1 + 0 + 0.5) / 3)
    with pytest.raises(ValueError, match="equal lengths"):
        win_rate(task, PROMPTS, responses, reference[:2])
    with pytest.raises(ValueError, match="empty"):
        mean_oracle_reward(task, [], [])


def test_annotator_win_rate_counts_eval_queries():
    task = get_task("arithmetic")
    sure = Annotator(task.reward, temperature=1e-3)
    ledger = QueryLedger()
    rate = annotator_win_rate(sure, PROMPTS[:2], ["42", "3"], ["41", "2"], random.Random(0), ledger=ledger)
    assert rate == 1.0 and ledger.by_tag() == {"eval": 2}
    coin = Annotator(task.reward)  # equal rewards: each comparison is a fair coin
    rate = annotator_win_rate(coin, ["1+2="] * 4000, ["3"] * 4000, ["2+1=3"] * 4000, random.Random(1))
    assert rate == pytest.approx(0.5, abs=0.03)


def test_reward_model_accuracy_with_ties():
    assert reward_model_accuracy([1.0, 2.0, 0.0, 5.0], [0.0, 2.0, 1.0, 4.0]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert reward_model_accuracy(torch.tensor([1.0, 1.0]), np.array([0.0, 2.0])) == 0.5


def test_self_bleu():
    assert self_bleu([["30+12=42"] * 3]) == pytest.approx(100.0)
    assert self_bleu([["cat ship"] * 2, ["lone"]], tokenize="13a") == pytest.approx(100.0)  # singleton skipped
    assert self_bleu([["abcd", "wxyz"]]) == 0.0
    diverse = self_bleu([["42", "30+12=42", "25+17=42"]])
    assert 0.0 < diverse < 100.0
    with pytest.raises(ValueError, match="two or more"):
        self_bleu([["only"]])


def test_distinct_n_hand_cases():
    assert distinct_n(["abab"], 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert distinct_n(["ab", "ab"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["ab", "ba"], 2) == 1.0  # n-grams never span two texts
    assert distinct_n(["the cat the cat", "a cat"], 1, unit="word") == pytest.approx(3 / 6)
    assert distinct_n(["a"], 2) == 0.0
    with pytest.raises(ValueError, match="unit"):
        distinct_n(["a"], 1, unit="token")


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(1 - 6 * 4 / (5 * 24))  # Σd² = 4
    with pytest.warns(RuntimeWarning, match="constant"):
        assert spearman([1, 1, 1], [1, 2, 3]) == 0.0
    with pytest.raises(ValueError, match="finite"):
        spearman([1, math.nan], [1, 2])


def test_kl_from_logprobs():
    assert kl_from_logprobs([-1.0, -2.0, -3.0], [-1.5, -2.0, -4.0]) == pytest.approx((0.5 + 0 + 1) / 3)
    assert kl_from_logprobs(torch.tensor([-1.0], requires_grad=True), torch.tensor([-1.0])) == 0.0
    # samples from a Bernoulli(0.8) policy against a Bernoulli(0.5) reference: estimate ≈ exact KL
    p, q = 0.8, 0.5
    rng = np.random.default_rng(0)
    heads = rng.random(20000) < p
    estimate = kl_from_logprobs(np.where(heads, math.log(p), math.log(1 - p)), np.full(20000, math.log(q)))
    exact = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert estimate == pytest.approx(exact, abs=0.01)
    with pytest.raises(ValueError, match="shape"):
        kl_from_logprobs([0.0, 1.0], [0.0])

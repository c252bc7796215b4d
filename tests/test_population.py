"""The population task: K-way choices, the inclusive target, exact enumeration, the choice loss."""

from __future__ import annotations

import math
import random

import pytest
import torch

from preftune.feedback import Annotator, Population
from preftune.losses import bt_loss, choice_loss
from preftune.metrics import distribution_metrics, kl_divergence, total_variation
from preftune.rollout import policy_distribution
from preftune.suite.joint_comparison import luce_projection
from preftune.tasks.population import PopulationTask, response_space_ids
from preftune.tiny import build_population_policy, build_population_tokenizer


@pytest.fixture(scope="module")
def task():
    return PopulationTask()


@pytest.fixture(scope="module")
def word_tokenizer():
    return build_population_tokenizer()


def test_choice_loss_hand_values_and_temperature():
    logprobs = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)], [0.0, 0.0, 0.0]])
    chosen = torch.tensor([1, 2])
    # row 1: softmax(log p) = p, so −log 0.3; row 2: uniform, −log(1/3)
    assert float(choice_loss(logprobs, chosen)) == pytest.approx((-math.log(0.3) + math.log(3)) / 2, abs=1e-6)
    # τ = 0.5 squares the probabilities: 0.09 / (0.25 + 0.09 + 0.04)
    row = logprobs[:1]
    assert float(choice_loss(row, chosen[:1], temperature=0.5)) == pytest.approx(-math.log(0.09 / 0.38), abs=1e-6)
    with pytest.raises(ValueError, match="K >= 2"):
        choice_loss(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(ValueError, match="temperature"):
        choice_loss(logprobs, chosen, temperature=0.0)


def test_choice_loss_with_two_candidates_is_bradley_terry_on_logprobs():
    torch.manual_seed(0)
    logprobs = torch.randn(16, 2) * 3
    chosen = torch.randint(2, (16,))
    picked = logprobs.gather(1, chosen[:, None]).squeeze(1)
    other = logprobs.gather(1, 1 - chosen[:, None]).squeeze(1)
    for tau in (1.0, 0.7):
        assert float(choice_loss(logprobs, chosen, tau)) == pytest.approx(float(bt_loss(picked / tau, other / tau)),
                                                                          abs=1e-6)


def test_k_way_choice_is_luce_and_reduces_to_pairwise():
    utility = {"a": 2.0, "b": 1.0, "c": 0.0}.__getitem__
    annotator = Annotator(lambda p, r: utility(r))
    probs = annotator.choice_probs("q", ["a", "b", "c"])
    expected = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64).softmax(0).tolist()
    assert probs == pytest.approx(expected, abs=1e-12)
    assert annotator.choice_probs("q", ["a", "c"])[0] == pytest.approx(annotator.prob_first_preferred("q", "a", "c"))
    noisy = Annotator(lambda p, r: utility(r), flip_prob=0.2)
    assert sum(noisy.choice_probs("q", ["a", "b", "c"])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="bradley-terry"):
        Annotator(lambda p, r: utility(r), link="thurstone").choice_probs("q", ["a", "b", "c"])
    population = Population([annotator, Annotator(lambda p, r: -utility(r))], [0.75, 0.25])
    mixed = population.choice_probs("q", ["a", "b", "c"])
    reverse = torch.tensor([-2.0, -1.0, 0.0], dtype=torch.float64).softmax(0).tolist()
    assert mixed == pytest.approx([0.75 * e + 0.25 * r for e, r in zip(expected, reverse)])
    rng = random.Random(0)
    counts = [0, 0, 0]
    for _ in range(6000):
        counts[population.choose("q", ["a", "b", "c"], rng)] += 1
    for count, p in zip(counts, mixed):
        assert abs(count / 6000 - p) < 4 * math.sqrt(p * (1 - p) / 6000)


def test_target_is_the_mixture_of_type_choice_distributions(task):
    prompt = task.split_prompts("train")[0]
    target = task.target(prompt)
    assert target.shape == (64,) and float(target.sum()) == pytest.approx(1.0)
    u = task.utilities(prompt)
    by_hand = sum(w * u[j].softmax(0) for j, w in enumerate(task.weights))
    assert torch.allclose(target, by_hand)
    majority, minority, small = (float(target[f]) for f in task.favourites(prompt))
    assert majority > minority > small > 0.1  # every type's favourite keeps real mass
    assert task.reward(prompt, task.responses[task.favourites(prompt)[0]]) == pytest.approx(math.log(majority))
    assert task.is_correct(prompt, task.responses[task.favourites(prompt)[2]])
    with pytest.raises(ValueError, match="population prompt"):
        task.target("about cheese")
    with pytest.raises(ValueError, match="population response"):
        task.reward(prompt, "red red")


def test_luce_projection_is_exact_for_one_type_and_a_floor_for_a_mixture(task):
    prompt = task.split_prompts("train")[0]
    single = PopulationTask(weights=(1.0,))
    assert torch.allclose(luce_projection(single, prompt), single.target(prompt), atol=1e-5)
    floor = luce_projection(task, prompt)
    uniform = torch.full((64,), 1 / 64, dtype=torch.float64)
    assert 0 < kl_divergence(task.target(prompt), floor) < 0.1 < kl_divergence(task.target(prompt), uniform)


def test_kl_and_total_variation_hand_values():
    p, q = [0.5, 0.5, 0.0], [0.25, 0.25, 0.5]
    assert kl_divergence(p, q) == pytest.approx(math.log(2))
    assert kl_divergence(q, p) == math.inf
    assert total_variation(p, q) == pytest.approx(0.5)
    assert kl_divergence([p, q], [p, q]) == 0.0


def test_policy_enumeration_sums_to_one_and_sampling_stays_in_the_response_space(task, word_tokenizer):
    from preftune.rollout import generate

    policy = build_population_policy(word_tokenizer, seed=0)
    ids = response_space_ids(word_tokenizer, task.all_prompts(), task.responses)
    probs = policy_distribution(policy, ids)
    assert probs.shape == (6, 64)
    assert torch.allclose(probs.sum(-1), torch.ones(6, dtype=torch.float64), atol=1e-5)
    rollout = generate(policy, word_tokenizer, task.all_prompts(), max_new_tokens=6, samples_per_prompt=8)
    assert set(rollout.texts) <= set(task.responses)
    metrics = distribution_metrics(probs, task.targets(task.all_prompts()),
                                   [task.favourites(p) for p in task.all_prompts()])
    assert metrics["kl"] > 1.0 and 0 < metrics["tv"] < 1  # a fresh model is near uniform, far from p*
    assert metrics["target_mass_type1"] > 0.15


def test_task_interface(task):
    demos = task.demonstrations("train", 400, seed=0)
    assert all(d.prompt in task.split_prompts("train") and d.response in task.responses for d in demos)
    favourite_share = sum(task.response_index(d.response) in task.favourites(d.prompt) for d in demos) / 400
    assert 0.5 < favourite_share < 0.85  # demonstrations are draws from p*, whose favourites hold ~0.66
    assert set(task.prompts("eval", 20)) <= set(task.split_prompts("eval"))
    assert all(a != b for _, a, b in task.candidate_pairs("train", 50))

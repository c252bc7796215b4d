"""Built-in tasks: determinism, disjoint splits, hand-checked oracles, demonstrations and candidate pairs."""

from __future__ import annotations

import random
import statistics
import string

import pytest

from preftune.data import Demo
from preftune.tasks import TASKS, Task, get_task
from preftune.tasks.arithmetic import correct_forms
from preftune.tasks.preference_language import GOOD_REWARD, hidden_reward
from preftune.tasks.summarise import oracle_summary_words, unigram_f1

TASK_NAMES = ["arithmetic", "summarise", "preference-language", "arithmetic-nl", "one-sentence"]
PRINTABLE = set(string.printable) - set("\t\n\r\x0b\x0c")


def test_registry_and_unknown_name():
    assert sorted(TASKS) == sorted(TASK_NAMES)
    for name in TASK_NAMES:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name and task.description
    with pytest.raises(ValueError, match="arithmetic.*preference-language.*summarise"):
        get_task("gsm8k")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_seeded_and_deterministic(name):
    task = get_task(name)
    assert task.prompts("train", 50, seed=3) == task.prompts("train", 50, seed=3)
    assert task.prompts("train", 50, seed=3) != task.prompts("train", 50, seed=4)
    assert task.demonstrations("train", 50, seed=3) == task.demonstrations("train", 50, seed=3)
    assert task.demonstrations("train", 50, seed=3) != task.demonstrations("train", 50, seed=4)
    assert task.candidate_pairs("eval", 50, seed=3) == task.candidate_pairs("eval", 50, seed=3)
    assert task.candidate_pairs("eval", 50, seed=3) != task.candidate_pairs("eval", 50, seed=4)
    # demonstrations and candidate pairs are drawn for the same prompts as prompts(split, n, seed)
    assert [d.prompt for d in task.demonstrations("train", 20, 1)] == task.prompts("train", 20, 1)
    assert [c[0] for c in task.candidate_pairs("train", 20, 1)] == task.prompts("train", 20, 1)
    with pytest.raises(ValueError, match="split"):
        task.prompts("test", 5)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_train_and_eval_prompts_disjoint(name):
    task = get_task(name)
    train = set(task.prompts("train", 3000, seed=0)) | set(task.prompts("train", 3000, seed=1))
    evaluation = set(task.prompts("eval", 1000, seed=0)) | set(task.prompts("eval", 1000, seed=1))
    assert not train & evaluation
    assert len(evaluation) >= 10 and len(train) > len(evaluation)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_text_is_printable_ascii_and_within_length_bounds(name):
    task = get_task(name)
    for split in ("train", "eval"):
        demos = task.demonstrations(split, 500, seed=2)
        pairs = task.candidate_pairs(split, 500, seed=2)
        assert all(isinstance(d, Demo) for d in demos)
        prompts = [d.prompt for d in demos] + [p for p, _, _ in pairs]
        responses = [d.response for d in demos] + [r for _, a, b in pairs for r in (a, b)]
        assert all(set(t) <= PRINTABLE for t in prompts + responses)
        assert max(map(len, prompts)) <= task.max_prompt_chars
        assert max(map(len, responses)) <= task.max_response_chars
        assert all(responses)


# ---------------------------------------------------------------------------------------------- arithmetic


def test_arithmetic_oracle_hand_cases():
    task = get_task("arithmetic")
    right = ["42", "30+12=42", "25+17=42", "17+25=42", "40+2=42", " 42 "]
    wrong = ["30+11=42", "43", "30+12=43", "42=30+12", "42!", "the answer is 42", "", "4 2", "30+12==42"]
    for response in right:
        assert task.reward("17+25=", response) == 1.0, response
        assert task.is_correct("17+25=", response)
    for response in wrong:
        assert task.reward("17+25=", response) == 0.0, response
    assert correct_forms(17, 25) == ["42", "30+12=42", "25+17=42"]
    assert correct_forms(3, 4) == ["7", "0+7=7", "4+3=7"]
    with pytest.raises(ValueError, match="arithmetic prompt"):
        task.reward("17-25=", "-8")


def test_arithmetic_demonstrations_correct_and_use_every_form():
    task = get_task("arithmetic")
    demos = task.demonstrations("train", 600, seed=0)
    assert all(task.reward(d.prompt, d.response) == 1.0 for d in demos)
    direct = sum(d.response.isdigit() for d in demos)
    commuted = sum(d.response.startswith(d.prompt.split("=")[0].split("+")[1] + "+") for d in demos)
    assert 120 < direct < 280 and 120 < commuted < 280  # each form ~1/3 of 600


def test_arithmetic_split_keeps_commuted_prompts_together():
    task = get_task("arithmetic")
    train = set(task.prompts("train", 5000))
    for prompt in task.prompts("eval", 300):
        a, b = prompt[:-1].split("+")
        assert f"{b}+{a}=" not in train


def test_arithmetic_candidate_pairs_mostly_differ_in_quality_with_some_ties():
    task = get_task("arithmetic")
    pairs = task.candidate_pairs("train", 1000, seed=0)
    assert all(a != b for _, a, b in pairs)
    diffs = [task.reward(p, a) - task.reward(p, b) for p, a, b in pairs]
    decisive = sum(d != 0 for d in diffs) / len(diffs)
    assert 0.6 < decisive < 0.8
    assert 0.4 < sum(d > 0 for d in diffs) / sum(d != 0 for d in diffs) < 0.6  # order is random


# ---------------------------------------------------------------------------------------------- summarise


def test_summarise_oracle_hand_cases():
    task = get_task("summarise")
    prompt = "the cat of a ship so:"
    assert oracle_summary_words(prompt) == ["cat", "ship"]
    assert task.reward(prompt, "cat ship") == 1.0
    assert task.reward(prompt, "cat, ship") == 1.0
    assert task.reward(prompt, "ship; cat") == 1.0  # ROUGE-1 ignores order
    assert task.reward(prompt, "cat") == pytest.approx(2 / 3)  # P=1, R=1/2
    assert task.reward(prompt, "cat the ship") == pytest.approx(0.8)  # P=2/3, R=1
    assert task.reward(prompt, "cat cat") == pytest.approx(0.5)  # clipped overlap 1: P=1/2, R=1/2
    assert task.reward(prompt, "dog") == 0.0
    assert task.reward(prompt, "") == 0.0
    assert unigram_f1(["a", "b", "c"], ["a", "b", "d", "e"]) == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))


def test_summarise_demonstrations_are_perfect_and_varied():
    task = get_task("summarise")
    demos = task.demonstrations("train", 300, seed=0)
    assert all(task.reward(d.prompt, d.response) == 1.0 for d in demos)
    assert {"," in d.response for d in demos} == {True, False}
    assert {";" in d.response for d in demos} == {True, False}
    assert all(5 <= len(d.prompt[:-1].split()) <= 7 for d in demos)


def test_summarise_candidate_pairs_have_quality_differences():
    task = get_task("summarise")
    pairs = task.candidate_pairs("train", 500, seed=0)
    rewards = [(task.reward(p, a), task.reward(p, b)) for p, a, b in pairs]
    assert all(a != b for _, a, b in pairs)
    assert sum(ra != rb for ra, rb in rewards) / len(rewards) > 0.6
    assert any(ra == rb for ra, rb in rewards)
    assert any(ra == 1.0 or rb == 1.0 for ra, rb in rewards) and any(max(r) < 1.0 for r in rewards)


# ---------------------------------------------------------------------------------------------- preference language


def test_preference_language_reward_hand_cases():
    task = get_task("preference-language")
    assert task.reward("about sun:", "warm sun is calm") == 3.0  # 1 + 1 (topic) + 0 + 1
    assert task.reward("about sun and sea:", "sea sun love") == 3.0
    assert task.reward("about sun:", "warm sea is") == 0.5  # other topic -0.5
    assert task.reward("about sun:", "warm warm warm") == -1.0  # 1 - 1 - 1
    assert task.reward("about sun:", "sun zzz is") == 0.0  # unknown word -1
    assert task.reward("about sun:", "sun") == -1.0  # two words short of three
    assert task.reward("about sun:", "sun the is and my we big") == 0.0  # one word beyond six
    assert hidden_reward(("sun",), "") == -3.0
    assert task.is_correct("about sun:", "warm sun glad") and not task.is_correct("about sun:", "sun is the")
    with pytest.raises(ValueError, match="preference-language prompt"):
        task.reward("tell me about sun", "sun")


def test_preference_language_teacher_has_reward_spread():
    task = get_task("preference-language")
    rng = random.Random(0)
    means, bests = [], []
    for prompt in task.prompts("eval", 40, seed=0):
        rewards = [task.reward(prompt, task.teacher_sample(prompt, rng)) for _ in range(16)]
        means.append(statistics.mean(rewards))
        bests.append(max(rewards))
    assert statistics.mean(bests) > statistics.mean(means) + 1.5
    # the best reachable text uses only teacher words: far above the best of 16 samples
    assert task.reward("about sun and sea:", "sun sea warm calm glad love") == 6.0
    assert 6.0 > statistics.mean(bests) + 2


def test_preference_language_candidate_pairs_are_teacher_samples_with_margin_of_order_one():
    task = get_task("preference-language")
    pairs = task.candidate_pairs("train", 400, seed=0)
    gaps = [abs(task.reward(p, a) - task.reward(p, b)) for p, a, b in pairs]
    assert 0.8 < statistics.mean(gaps) < 2.5
    vocabulary_words = {w for d in task.demonstrations("train", 2000, seed=5) for w in d.response.split()}
    assert {w for _, a, b in pairs for w in (a + " " + b).split()} <= vocabulary_words
    demo_rewards = [task.reward(d.prompt, d.response) for d in task.demonstrations("train", 2000, seed=5)]
    assert 0.03 < sum(r >= GOOD_REWARD for r in demo_rewards) / len(demo_rewards) < 0.3

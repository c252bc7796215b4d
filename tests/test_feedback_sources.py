"""Feedback sources: a user's function, a reward model, an LLM judge and the simulated annotators answer through one
interface; their probabilities by hand; every query counted in the ledger whatever the source; bad answers named;
``--feedback`` specs; ZPG and joint learning judged by a user's function from a user's folder."""

import json
import math
import random
import sys

import numpy as np
import pytest
import torch

from preftune.feedback import (
    Annotator,
    FeedbackSource,
    FunctionFeedback,
    QueryLedger,
    ask_preference_shares,
    label_pairs,
)
from preftune.judges import LLMJudgeFeedback, RewardModelFeedback, feedback_from_spec
from preftune.metrics import annotator_win_rate
from preftune.rewards import AnnotatorReward


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _length(prompts, responses):
    return [float(len(r)) for r in responses]


@pytest.fixture()
def judge_model(tokenizer):
    from preftune.tiny import TinySpec, build_tiny_model

    return build_tiny_model("tiny", tokenizer, TinySpec(hidden_size=32, num_layers=1, num_heads=2), seed=3).eval()


def test_every_source_is_a_feedback_source(tokenizer, judge_model):
    sources = [Annotator(lambda p, r: 0.0), FunctionFeedback(lambda p, c: 0), RewardModelFeedback(_length),
               LLMJudgeFeedback(judge_model, tokenizer)]
    assert all(isinstance(s, FeedbackSource) for s in sources)
    assert not isinstance(lambda p, r: 0.0, FeedbackSource)  # a utility is not a source (train_zpg_lm tells them apart)


def test_a_function_returning_an_index_is_a_certain_choice():
    source = FunctionFeedback(lambda prompt, candidates: 2)
    rng = random.Random(0)
    assert source.choice_probs("x", ["a", "b", "c"]) == [0.0, 0.0, 1.0]
    assert {source.choose("x", ["a", "b", "c"], rng) for _ in range(20)} == {2}
    first = FunctionFeedback(lambda prompt, candidates: np.int64(0))  # numpy integers are indices too
    assert first.compare("x", "a", "b", rng) is True
    assert first.choice_probs("x", ["a", "b"]) == [1.0, 0.0]


def test_a_function_returning_probabilities_is_drawn_from():
    source = FunctionFeedback(lambda prompt, candidates: torch.tensor([0.25, 0.75]))
    assert source.choice_probs("x", ["a", "b"]) == [0.25, 0.75]
    rng = random.Random(0)
    share = sum(source.compare("x", "a", "b", rng) for _ in range(4000)) / 4000
    assert abs(share - 0.25) < 0.03
    assert FunctionFeedback(lambda p, c: (0, 1)).choose("x", ["a", "b"], rng) == 1


@pytest.mark.parametrize("answer,match", [
    (3, "index 3 for 3 candidates"), (-1, "index -1"), ([0.5, 0.5], r"\[0.5, 0.5\] for 3 candidates"),
    ([0.5, 0.6, -0.1], "probabilities summing to 1"), ([float("nan"), 0.5, 0.5], "nan"), ("b", "'b' \\(str\\)"),
    (1.0, "1.0 \\(float\\)"), (True, "True \\(bool\\)"), (None, "None"), ([0, "1", 0], "must return"),
])
def test_a_bad_answer_names_the_function_and_what_it_must_return(answer, match):
    source = FunctionFeedback(lambda prompt, candidates: answer, name="mymod:judge")
    with pytest.raises(ValueError, match=match) as error:
        source.choose("x", ["a", "b", "c"], random.Random(0))
    assert "feedback function mymod:judge" in str(error.value) and "an index in [0, 3)" in str(error.value)


def test_a_failing_function_is_named():
    def judge(prompt, candidates):
        raise KeyError("oops")

    with pytest.raises(RuntimeError, match="feedback function judge failed: KeyError"):
        FunctionFeedback(judge).choice_probs("x", ["a", "b"])


def test_reward_model_choices_are_the_softmax_of_its_scores():
    source = RewardModelFeedback(_length)  # scores 1 and 3
    assert source.choice_probs("x", ["a", "bbb"]) == pytest.approx([_sigmoid(-2), _sigmoid(2)])
    cooler = RewardModelFeedback(_length, temperature=2.0)
    assert cooler.choice_probs("x", ["a", "bbb"]) == pytest.approx([_sigmoid(-1), _sigmoid(1)])
    probs = source.choice_probs("x", ["a", "bb", "bbbb"])
    expected = torch.tensor([1.0, 2.0, 4.0]).softmax(-1).tolist()
    assert probs == pytest.approx(expected)
    thurstone = RewardModelFeedback(_length, link="thurstone")
    assert thurstone.choice_probs("x", ["a", "bbb"])[1] == pytest.approx(0.5 * (1 + math.erf(1.0)))  # Φ(2/√2)
    with pytest.raises(ValueError, match="bradley-terry"):
        thurstone.choice_probs("x", ["a", "b", "c"])


def test_reward_model_folders_of_both_kinds(tmp_path, tokenizer, tiny_model):
    """preftune's reward model and a Hugging Face sequence classifier load from their folders, and the choice
    probabilities are the softmax of the scores the models give."""
    from transformers import AutoModelForSequenceClassification

    from preftune.data import encode_prompt_responses
    from preftune.models import RewardModel
    from preftune.rewards import reward_model_reward

    rm = RewardModel.from_causal_lm(tiny_model)
    rm.save_pretrained(tmp_path / "preftune-rm", tokenizer)
    candidates = ["about the sun", "rain rain"]
    scores = reward_model_reward(rm, tokenizer, 64)(["say:"] * 2, candidates)
    probs = feedback_from_spec(f"rm:{tmp_path / 'preftune-rm'}", max_length=64).choice_probs("say:", candidates)
    assert probs == pytest.approx(torch.tensor(scores).softmax(-1).tolist(), abs=1e-6)

    config = tiny_model.config
    config.num_labels = 1
    classifier = AutoModelForSequenceClassification.from_config(config).eval()
    classifier.save_pretrained(tmp_path / "hf-rm")
    tokenizer.save_pretrained(tmp_path / "hf-rm")
    with torch.no_grad():
        hf_scores = [float(classifier(input_ids=torch.tensor([ids])).logits[0, 0])
                     for ids, _ in encode_prompt_responses(tokenizer, ["say:"] * 2, candidates, 64)]
    probs = feedback_from_spec(str(tmp_path / "hf-rm"), max_length=64).choice_probs("say:", candidates)
    assert probs == pytest.approx(torch.tensor(hf_scores).softmax(-1).tolist(), abs=1e-6)
    assert hf_scores[0] != hf_scores[1]

    tiny_model.save_pretrained(tmp_path / "causal-lm")
    with pytest.raises(ValueError, match="not a reward model"):
        feedback_from_spec(f"rm:{tmp_path / 'causal-lm'}")


def _answer_logprob(model, tokenizer, text: str, answer: str) -> float:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logps = model(input_ids=torch.tensor([ids + answer_ids])).logits[0].double().log_softmax(-1)
    return sum(float(logps[len(ids) - 1 + t, a]) for t, a in enumerate(answer_ids))


def test_llm_judge_reads_its_answer_probabilities_and_averages_both_orders(tokenizer, judge_model):
    judge = LLMJudgeFeedback(judge_model, tokenizer, template="{prompt} A: {a} B: {b} Better:")

    def p_first(a: str, b: str) -> float:  # P(answer " A") when a is shown first, by hand
        text = f"say: A: {a} B: {b} Better:"
        la, lb = (_answer_logprob(judge_model, tokenizer, text, ans) for ans in (" A", " B"))
        return math.exp(la) / (math.exp(la) + math.exp(lb))

    expected = 0.5 * (p_first("sun", "rain") + 1 - p_first("rain", "sun"))
    probs = judge.choice_probs("say:", ["sun", "rain"])
    assert probs[0] == pytest.approx(expected, abs=1e-6) and sum(probs) == pytest.approx(1.0)
    assert judge.choice_probs("say:", ["rain", "sun"])[0] == pytest.approx(probs[1], abs=1e-6)  # symmetric
    three = judge.choice_probs("say:", ["sun", "rain", "sea"])
    assert sum(three) == pytest.approx(1.0) and all(0 < p < 1 for p in three)
    with pytest.raises(ValueError, match=r"lacks \{b\}"):
        LLMJudgeFeedback(judge_model, tokenizer, template="{prompt} {a}")


def test_llm_judge_of_k_candidates_is_luce_when_its_pairwise_answers_are_bradley_terry(tokenizer, judge_model):
    utilities = {"a": 0.3, "b": -1.0, "c": 1.5, "d": 0.0}
    judge = LLMJudgeFeedback(judge_model, tokenizer)
    judge.first_answer_probs = lambda prompt, pairs: [_sigmoid(utilities[a] - utilities[b]) for a, b in pairs]
    probs = judge.choice_probs("x", list(utilities))
    assert probs == pytest.approx(torch.tensor(list(utilities.values())).softmax(-1).tolist())
    assert judge.choice_probs("x", ["a", "c"])[0] == pytest.approx(_sigmoid(0.3 - 1.5))


def _sources(tokenizer, judge_model):
    calls = []

    def judge(prompt, candidates):
        calls.append(prompt)
        return 0 if len(candidates[0]) >= len(candidates[1]) else 1

    return calls, {"annotator": Annotator(lambda p, r: float(len(r))), "function": FunctionFeedback(judge),
                   "reward-model": RewardModelFeedback(_length), "judge": LLMJudgeFeedback(judge_model, tokenizer)}


def test_the_ledger_counts_every_query_of_every_source(tokenizer, judge_model):
    calls, sources = _sources(tokenizer, judge_model)
    prompts, longer, shorter = ["p1", "p2", "p3"], ["sun sun", "sea sea", "rain rain"], ["sun", "sea", "rain"]
    for name, source in sources.items():
        ledger = QueryLedger()
        shares = ask_preference_shares(source, prompts, longer, shorter, 4, torch.Generator().manual_seed(0), ledger,
                                       "zpg")
        assert ledger.by_tag() == {"zpg": 12}, name
        assert shares.shape == (3,) and bool(((shares >= 0) & (shares <= 1)).all()), name
        label_pairs(list(zip(prompts, longer, shorter)), source, random.Random(0), ledger, "labels")
        annotator_win_rate(source, prompts, longer, shorter, random.Random(0), ledger)
        reward = AnnotatorReward(source, dict(zip(prompts, shorter)), ledger=ledger)
        reward(prompts, longer)
        assert ledger.by_tag() == {"zpg": 12, "labels": 3, "eval": 3, "online": 3}, name
    assert len(calls) == 12 + 3 + 3 + 3  # the function is asked once per label
    assert torch.equal(ask_preference_shares(sources["function"], prompts, longer, shorter, 2,
                                             torch.Generator()), torch.ones(3, dtype=torch.float64))
    with pytest.raises(Exception, match="budget"):
        ask_preference_shares(sources["function"], prompts, longer, shorter, 2, torch.Generator(),
                              QueryLedger(budget=5))


def test_specs_build_each_source_and_a_bad_one_lists_the_accepted_forms(tmp_path, monkeypatch, tokenizer,
                                                                         tiny_model):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "spec_judges.py").write_text("def pick_second(prompt, candidates):\n    return 1\n")
    for spec in ("spec_judges:pick_second", "spec_judges.py:pick_second"):
        source = feedback_from_spec(spec)
        assert isinstance(source, FunctionFeedback) and source.choice_probs("x", ["a", "b"]) == [0.0, 1.0]
        assert source.name == spec
    annotator = Annotator(lambda p, r: 0.0)
    assert feedback_from_spec("annotator", annotator=annotator) is annotator
    with pytest.raises(ValueError, match="needs --task"):
        feedback_from_spec("annotator")
    tiny_model.save_pretrained(tmp_path / "judge-lm")
    tokenizer.save_pretrained(tmp_path / "judge-lm")
    (tmp_path / "template.txt").write_text("Q: {prompt}\n1: {a}\n2: {b}\nBest:")
    judge = feedback_from_spec(f"judge:{tmp_path / 'judge-lm'}:{tmp_path / 'template.txt'}")
    assert isinstance(judge, LLMJudgeFeedback) and judge.template.startswith("Q: {prompt}")
    assert sum(judge.choice_probs("x", ["a", "b"])) == pytest.approx(1.0)
    for spec, match in (("nonsense", "rm:DIR"), ("spec_judges:missing", "no function 'missing'"),
                        ("no_such_module:f", "cannot import"), ("rm:nowhere", "no reward-model folder"),
                        (f"judge:{tmp_path / 'judge-lm'}:missing.txt", "no template file")):
        with pytest.raises(ValueError, match=match):
            feedback_from_spec(spec)


# ----------------------------------------------------------------------------------------------
# End to end from a user's folder: prompts.jsonl, a judge in mymod.py, a locally saved model


@pytest.fixture()
def user_folder(tmp_path, monkeypatch, tokenizer, tiny_model):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                                                    ("Tell me about the sea:", "Describe a tree:", "What is rain?")))
    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "user_judges.py").write_text(
        "CALLS = []\n\n\n"
        "def judge(prompt, candidates):\n"
        "    CALLS.append(prompt)\n"
        "    return max(range(len(candidates)), key=lambda i: len(candidates[i]))  # the longest\n\n\n"
        "def chooser(prompt, candidates):\n"
        "    CALLS.append(prompt)\n"
        "    return [1 / len(candidates)] * len(candidates)\n"
        "\n\ndef broken(prompt, candidates):\n    return 'A'\n")
    yield tmp_path
    sys.modules.pop("user_judges", None)


def test_cli_zpg_on_user_prompts_judged_by_a_user_function(user_folder):
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from preftune.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["train", "zpg", "--data", "prompts.jsonl", "--feedback", "user_judges:judge", "--model",
                            "model", "--steps", "3", "--batch-size", "2", "--max-new-tokens", "6", "--output-dir",
                            "out", "--progress", "false"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (user_folder / "out" / "metrics.jsonl").read_text().splitlines()]
    calls = sys.modules["user_judges"].CALLS
    assert [row["queries"] for row in rows] == [2, 4, 6] and len(calls) == 6  # one call per label (M = 1)
    assert set(calls) <= {"Tell me about the sea:", "Describe a tree:", "What is rain?"}
    assert "score" not in rows[-1]  # no oracle without a task
    assert AutoModelForCausalLM.from_pretrained(user_folder / "out" / "final").config.hidden_size == 32

    r = runner.invoke(app, ["train", "zbcpg", "--data", "prompts.jsonl", "--feedback", "user_judges:broken",
                            "--model", "model", "--steps", "1", "--batch-size", "2", "--max-new-tokens", "4",
                            "--output-dir", "out2", "--progress", "false"])
    assert r.exit_code == 2 and "feedback function user_judges:broken returned 'A'" in r.output, r.output
    r = runner.invoke(app, ["train", "zpg", "--data", "prompts.jsonl", "--model", "model", "--output-dir", "out3"])
    assert r.exit_code == 2 and "needs --feedback" in r.output, r.output
    r = runner.invoke(app, ["train", "zpg", "--task", "gridworld", "--feedback", "user_judges:judge",
                            "--output-dir", "out4"])
    assert r.exit_code == 2 and "gridworld" in r.output, r.output


def test_zpg_on_a_task_with_a_user_judge_still_logs_the_oracle(tmp_path, tokenizer, tiny_model):
    from preftune.methods.zpg import ZPGConfig, train_zpg_lm
    from preftune.tasks import get_task

    task = get_task("preference-language")
    calls = []
    cfg = ZPGConfig(output_dir=str(tmp_path), steps=2, batch_size=3, annotators_per_pair=2, max_new_tokens=5,
                    param_filter=r"norm\.weight$", progress=False, mixed_precision="no")
    result = train_zpg_lm(cfg, task.prompts("train", 10), FunctionFeedback(lambda p, c: calls.append(p) or 0),
                          model=tiny_model, tokenizer=tokenizer, oracle=task.reward)
    assert [h["queries"] for h in result.history] == [6, 12] and len(calls) == 12
    assert result.extra["ledger"].by_tag() == {"zpg": 12}
    assert all("score" in h and "true_difference" in h for h in result.history)
    assert all(h["clipped_fraction"] == 1.0 for h in result.history)  # a certain judge: every share is 0 or 1


def test_cli_joint_choices_by_a_user_function(user_folder):
    from typer.testing import CliRunner

    from preftune.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["train", "joint", "--feedback", "user_judges:chooser", "--steps", "2",
                            "--queries-per-round", "3", "--updates-per-round", "1", "--batch-size", "4",
                            "--output-dir", "joint", "--progress", "false"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (user_folder / "joint" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["queries"] == 6 and len(sys.modules["user_judges"].CALLS) == 6


def test_cli_joint_on_user_prompts_and_model_chooses_among_policy_samples(user_folder):
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from preftune.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["train", "joint", "--data", "prompts.jsonl", "--feedback", "user_judges:judge",
                            "--model", "model", "--steps", "2", "--queries-per-round", "3", "--candidates", "3",
                            "--updates-per-round", "2", "--batch-size", "4", "--max-new-tokens", "5", "--output-dir",
                            "joint", "--progress", "false"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (user_folder / "joint" / "metrics.jsonl").read_text().splitlines()]
    assert [row["queries"] for row in rows] == [3, 6] and len(sys.modules["user_judges"].CALLS) == 6
    assert "choice_nll" in rows[-1] and "kl" not in rows[-1]  # no population to measure against
    final = user_folder / "joint" / "final"
    assert AutoModelForCausalLM.from_pretrained(final).config.hidden_size == 32
    assert (final / "epistemic_head.safetensors").exists()
    r = runner.invoke(app, ["train", "joint", "--data", "prompts.jsonl", "--model", "model", "--output-dir", "j2"])
    assert r.exit_code == 2 and "needs --feedback" in r.output, r.output
    r = runner.invoke(app, ["train", "joint", "--model", "model", "--output-dir", "j3"])
    assert r.exit_code == 2 and "--data prompts.jsonl" in r.output, r.output
    # a prompt that leaves no room for the sampled responses is named before anything is asked
    r = runner.invoke(app, ["train", "joint", "--data", "prompts.jsonl", "--feedback", "user_judges:judge",
                            "--model", "model", "--max-new-tokens", "100000", "--output-dir", "j4"])
    assert r.exit_code == 2 and "'max_new_tokens'" in r.output, r.output


def _choice_nll(policy, tokenizer, choices) -> float:
    from preftune.data import Demo, collate_demos
    from preftune.losses import choice_loss
    from preftune.rollout import score_logprobs

    demos = [Demo(p, t) for p, texts, _ in choices.rows for t in texts]
    batch = collate_demos(tokenizer, demos, 96)
    logps = score_logprobs(policy, batch.input_ids, batch.attention_mask, batch.response_mask).sum(-1)
    return float(choice_loss(logps.view(len(choices.rows), -1), torch.tensor([c for _, _, c in choices.rows])))


@pytest.mark.parametrize("explore", ["double-ts", "infomax"])
def test_joint_on_user_prompts_fits_the_choices_and_resumes_to_the_same_weights(tmp_path, tokenizer, explore):
    import copy
    import shutil

    from preftune.methods.joint import JointConfig
    from preftune.methods.joint_lm import train_joint_lm
    from preftune.tiny import TinySpec, build_tiny_model

    start = build_tiny_model("tiny", tokenizer, TinySpec(hidden_size=32, num_layers=1, num_heads=2), seed=0)
    shortest = FunctionFeedback(lambda prompt, candidates: min(range(len(candidates)),
                                                               key=lambda i: len(candidates[i])))
    prompts = ["about sun:", "about rain:", "about sea:"]

    def run(out, **kw):
        cfg = JointConfig(output_dir=str(out), steps=3, queries_per_round=4, updates_per_round=5, batch_size=8,
                          max_new_tokens=6, candidate_pool=4, explore=explore, lr=3e-3, progress=False,
                          mixed_precision="no", **kw)
        return train_joint_lm(cfg, prompts, shortest, model=copy.deepcopy(start), tokenizer=tokenizer)

    full = run(tmp_path / "full", save_every=1, keep_checkpoints=5)
    choices = full.extra["choices"]
    assert full.extra["ledger"].by_tag() == {"joint": 12} and len(choices.rows) == 12
    assert choices.features.shape == (12, 2, 32)
    assert all(c == min(range(2), key=lambda i: len(texts[i])) for _, texts, c in choices.rows)
    assert _choice_nll(full.model.policy, tokenizer, choices) < _choice_nll(start, tokenizer, choices)
    (tmp_path / "cut").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "cut" / "checkpoint-2")
    resumed = run(tmp_path / "cut", save_every=1, resume=True)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.extra["choices"].rows == choices.rows


def test_reward_annotator_asks_a_user_function_against_the_references(user_folder):
    from preftune.data import Demo
    from preftune.inputs import make_reward

    references = [Demo("Describe a tree:", "a tree"), Demo("What is rain?", "water")]
    reward = make_reward("annotator", None, references, feedback="user_judges:judge")
    assert reward(["Describe a tree:", "What is rain?"], ["a tall green tree", "w"]) == [1.0, 0.0]  # the longer wins
    assert reward.ledger.by_tag() == {"online": 2} and len(sys.modules["user_judges"].CALLS) == 2
    with pytest.raises(Exception, match="--feedback"):
        make_reward("annotator", None, references)


def test_cli_bon_rewarded_by_a_user_judge_against_the_reference_responses(user_folder):
    from typer.testing import CliRunner

    from preftune.cli import app

    (user_folder / "demos.jsonl").write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in
                                                     (("Describe a tree:", "a tree"), ("What is rain?", "water"))))
    r = CliRunner().invoke(app, ["train", "bon", "--data", "demos.jsonl", "--feedback", "user_judges:judge",
                                 "--model", "model", "--n", "2", "--max-new-tokens", "4", "--output-dir", "bon"])
    assert r.exit_code == 0, r.output
    assert len(sys.modules["user_judges"].CALLS) == 2 * 2  # each of the N samples of each prompt, once
    r = CliRunner().invoke(app, ["train", "bon", "--data", "demos.jsonl", "--feedback", "user_judges:judge",
                                 "--reward", "oracle", "--model", "model", "--output-dir", "bon2"])
    assert r.exit_code == 2 and "--reward annotator" in r.output, r.output


def test_rlp_labels_its_pairs_with_the_configured_feedback(user_folder, monkeypatch, tiny_model, tokenizer):
    from preftune.methods import rlp_pipeline
    from preftune.methods.rlp import RLPConfig

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rlp_pipeline, "train_sft", stop)  # the labels are asked first; stop before training
    cfg = RLPConfig(output_dir="rlp", human_pairs=10, feedback="user_judges:judge", progress=False)
    with pytest.raises(KeyboardInterrupt):
        rlp_pipeline.train_rlp(cfg, model=tiny_model, tokenizer=tokenizer)
    assert len(sys.modules["user_judges"].CALLS) == 10
    with pytest.raises(ValueError, match="not a feedback source"):
        rlp_pipeline.train_rlp(RLPConfig(output_dir="rlp2", feedback="nonsense", progress=False), model=tiny_model,
                               tokenizer=tokenizer)


def test_cli_eval_win_rate_judged_by_a_user_function(user_folder):
    from typer.testing import CliRunner

    from preftune.cli import app

    r = CliRunner().invoke(app, ["eval", "--task", "arithmetic", "--model", "model", "--reference", "model",
                                 "--feedback", "user_judges:judge", "--num-prompts", "4", "--samples-per-prompt", "1",
                                 "--output", "eval.json"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((user_folder / "eval.json").read_text())
    assert metrics["annotator_queries"] == 4 and len(sys.modules["user_judges"].CALLS) == 4
    assert 0 <= metrics["annotator_win_rate"] <= 1
    r = CliRunner().invoke(app, ["eval", "--task", "arithmetic", "--model", "model", "--feedback", "user_judges:judge"])
    assert r.exit_code == 2 and "--reference" in r.output, r.output


@pytest.mark.slow
def test_zpg_from_a_user_folder_in_a_fresh_process(user_folder):
    """As a user runs it: `python -m preftune` in the folder that holds the prompts, the judge and the model."""
    import os
    import subprocess
    from pathlib import Path

    import preftune

    env = {**os.environ, "PYTHONPATH": str(Path(preftune.__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-m", "preftune", "train", "zpg", "--data", "prompts.jsonl", "--feedback",
                           "user_judges:judge", "--model", "model", "--steps", "2", "--batch-size", "2",
                           "--max-new-tokens", "4", "--output-dir", "out", "--progress", "false"],
                          cwd=user_folder, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (user_folder / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["queries"] == 4 and (user_folder / "out" / "final" / "model.safetensors").exists()

"""RLP (Lang et al. 2024): the UML loss pieces, the SPG / Select-All / RLAIF pair builders, and the pipeline end to end
with an interruption and a resume, from Python and from the CLI."""

import json
import math
import random

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence
from typer.testing import CliRunner

from benchmarks.rlp import THRESHOLDS, confidence_sweep, summarise
from preftune.cli import app
from preftune.config import ConfigError, apply_overrides
from preftune.losses import diagonal_gaussian_kl, jensen_shannon_mi_bound, mib_loss, symmetric_gaussian_kl
from preftune.methods import rlp, rlp_pipeline
from preftune.methods.rlp import (
    RLPConfig,
    UMLModel,
    cluster_responses,
    key_equivalence,
    mixed_pairs,
    rlaif_pair,
    select_all_pairs,
    spg_pairs,
    synthetic_pairs,
    task_equivalence,
)
from preftune.models import RewardModel
from preftune.suite.rlp_eval import evaluate_rlp
from preftune.tasks import get_task

# ----------------------------------------------------------------------------------------------------------------
# UML loss pieces


def _gaussian(mean, logvar):
    return Independent(Normal(mean, torch.exp(0.5 * logvar)), 1)


def test_diagonal_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    v1, v2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    expected = kl_divergence(_gaussian(m1, v1), _gaussian(m2, v2))
    assert diagonal_gaussian_kl(m1, v1, m2, v2).shape == (5,)
    torch.testing.assert_close(diagonal_gaussian_kl(m1, v1, m2, v2), expected)
    both = 0.5 * (expected + kl_divergence(_gaussian(m2, v2), _gaussian(m1, v1)))
    torch.testing.assert_close(symmetric_gaussian_kl(m1, v1, m2, v2), both)
    torch.testing.assert_close(symmetric_gaussian_kl(m1, v1, m2, v2), symmetric_gaussian_kl(m2, v2, m1, v1))
    assert symmetric_gaussian_kl(m1, v1, m1, v1).abs().max() < 1e-6


def test_jensen_shannon_bound_sign_shape_and_extremes():
    scores = torch.randn(32, 1) * 5
    for joint, marginal in ((scores, scores), (scores, -scores), (torch.zeros(8, 1), torch.zeros(8, 1))):
        bound = jensen_shannon_mi_bound(joint, marginal)
        assert bound.shape == () and bound <= 0
    # an uninformative critic (T = 0) sits at −2 log 2; a critic that separates the pairs approaches 0
    assert jensen_shannon_mi_bound(torch.zeros(8, 1), torch.zeros(8, 1)).item() == pytest.approx(-2 * math.log(2))
    assert jensen_shannon_mi_bound(torch.full((8, 1), 20.0), torch.full((8, 1), -20.0)).item() > -1e-6


def test_trained_critic_finds_more_information_in_dependent_views():
    """The estimator distinguishes dependent from independent views once its critic is fitted."""
    def fitted_bound(dependent: bool) -> float:
        torch.manual_seed(0)
        critic = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
        for _ in range(150):
            z1 = torch.randn(128, 2)
            z2 = z1 + 0.1 * torch.randn(128, 2) if dependent else torch.randn(128, 2)
            bound = jensen_shannon_mi_bound(critic(torch.cat([z1, z2], -1)),
                                            critic(torch.cat([torch.roll(z1, 1, 0), z2], -1)))
            opt.zero_grad()
            (-bound).backward()
            opt.step()
        return bound.item()

    assert fitted_bound(True) > fitted_bound(False) + 0.5


def test_mib_loss_combines_the_terms_and_passes_gradients():
    g = torch.Generator().manual_seed(1)
    tensors = [torch.randn(6, 3, generator=g).requires_grad_() for _ in range(4)]
    joint, marginal = torch.randn(6, 1, requires_grad=True), torch.randn(6, 1, requires_grad=True)
    loss, diag = mib_loss(joint, marginal, *tensors, beta=0.5)
    expected = -jensen_shannon_mi_bound(joint, marginal) + 0.5 * symmetric_gaussian_kl(*tensors).mean()
    torch.testing.assert_close(loss, expected)
    assert diag["skl"] > 0 and diag["mi_js"] <= 0
    loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in [joint, marginal, *tensors])


def test_uml_loss_reaches_the_reward_model_body_encoder_and_critic(tiny_model, tokenizer):
    model = UMLModel(RewardModel.from_causal_lm(tiny_model), latent_dim=4)
    a = tokenizer(["about sun: warm sun", "about sea: calm sea"], return_tensors="pt", padding=True)
    b = tokenizer(["about sun: glad sun is", "about sea: cold sea"], return_tensors="pt", padding=True)
    loss, _ = model.uml_loss(a.input_ids, a.attention_mask, b.input_ids, b.attention_mask, beta=1e-3)
    loss.backward()
    for part in (model.reward_model.body, model.encoder, model.critic):
        assert sum(p.grad.abs().sum() for p in part.parameters() if p.grad is not None) > 0


# ----------------------------------------------------------------------------------------------------------------
# SPG, Select-All, RLAIF

ARITH = get_task("arithmetic")
PROMPT = "17+25="
# clusters by final answer: 42 ×6 (indices 0, 1, 2, 5, 6, 8), 43 ×2 (3, 7), 41 ×1 (4), 40 ×1 (9)
RESPONSES = ["42", "30+12=42", "25+17=42", "43", "41", "42", "40+2=42", "43", "42", "40"]
SCORES = [0.1, 0.9, 0.3, 2.0, -1.0, 0.2, 0.5, 0.0, 0.4, 1.5]


def test_clusters_follow_the_tasks_exact_equivalence():
    clusters = cluster_responses(PROMPT, RESPONSES, task_equivalence(ARITH))
    assert clusters == [[0, 1, 2, 5, 6, 8], [3, 7], [4], [9]]
    pl = get_task("preference-language")
    assert pl.canonical_form("about sun:", "warm sun is") == pl.canonical_form("about sun:", "is  sun warm")
    assert pl.canonical_form("about sun:", "warm sun") != pl.canonical_form("about sun:", "warm sun sun")


def test_clustering_takes_any_pairwise_equivalence():
    same_length = lambda prompt, a, b: len(a) == len(b)  # noqa: E731 — a stand-in for an NLI model
    assert cluster_responses(PROMPT, ["ab", "cd", "abc", "xy", "xyz"], same_length) == [[0, 1, 3], [2, 4]]


def test_spg_chosen_is_the_best_scored_of_the_largest_cluster_and_rejected_another_cluster():
    eq = task_equivalence(ARITH)
    rejected_seen = set()
    for seed in range(30):
        pair, confidence = spg_pairs(PROMPT, RESPONSES, SCORES, eq, 0.5, random.Random(seed))
        assert confidence == pytest.approx(0.6)
        assert pair.chosen == "30+12=42"  # 0.9 is the highest score inside the "42" cluster (2.0 is a "43")
        assert ARITH.canonical_form(PROMPT, pair.rejected) != "42"
        rejected_seen.add(pair.rejected)
    assert rejected_seen == {"43", "41", "40"}  # uniformly from the other clusters


def test_spg_filters_low_confidence_and_single_cluster_instructions():
    eq = task_equivalence(ARITH)
    split = ["42", "43", "41", "42", "40", "44", "42", "45", "46", "47"]  # largest cluster 3 of 10
    assert spg_pairs(PROMPT, split, [0.0] * 10, eq, 0.5, random.Random(0)) == (None, pytest.approx(0.3))
    assert spg_pairs(PROMPT, split, [0.0] * 10, eq, 0.3, random.Random(0))[0] is not None
    assert spg_pairs(PROMPT, ["42"] * 4, [0.0] * 4, eq, 0.5, random.Random(0)) == (None, 1.0)


def test_select_all_pairs_every_largest_cluster_response_with_every_other():
    pairs = select_all_pairs(PROMPT, RESPONSES, SCORES, task_equivalence(ARITH))
    assert len(pairs) == 6 * 4
    assert all(ARITH.canonical_form(PROMPT, p.chosen) == "42" != ARITH.canonical_form(PROMPT, p.rejected)
               for p in pairs)


def test_rlaif_labels_two_distinct_samples_by_the_reward_model():
    score = {"warm": 0.3, "calm": -1.0, "glad": 2.0, "sad": 5.0}
    seen = set()
    for seed in range(30):
        pair = rlaif_pair(PROMPT, list(score), list(score.values()), random.Random(seed))
        assert score[pair.chosen] > score[pair.rejected]
        seen.add(frozenset((pair.chosen, pair.rejected)))
    assert len(seen) == 6  # every pair of the four can be drawn
    assert rlaif_pair(PROMPT, ["42"] * 3, [0.0, 1.0, 2.0], random.Random(0)) is None


def test_synthetic_pairs_counts_and_errors():
    groups = [(PROMPT, RESPONSES, SCORES), ("1+1=", ["2", "3"], [0.0, 1.0])]
    eq = task_equivalence(ARITH)
    spg, stats = synthetic_pairs("spg", groups, eq, 0.5, seed=0)
    assert len(spg) == 2 and stats["mean_confidence"] == pytest.approx((0.6 + 0.5) / 2)
    assert len(synthetic_pairs("select-all", groups, eq, 0.5, 0)[0]) == 24 + 1
    assert len(synthetic_pairs("rlaif", groups, eq, 0.5, 0)[0]) == 2
    with pytest.raises(ValueError, match="spg, select-all or rlaif"):
        synthetic_pairs("uml", groups, eq, 0.5, 0)
    by_key = key_equivalence(lambda prompt, r: r[-1])
    assert cluster_responses(PROMPT, ["12", "32", "13"], by_key) == [[0, 1], [2]]


def test_mixed_pairs_union_or_share():
    human, synthetic = list(range(90)), list(range(1000, 1010))
    assert mixed_pairs(human, synthetic, None) == human + synthetic
    mixed = mixed_pairs(human, synthetic, 0.5)
    assert sum(x >= 1000 for x in mixed) == 90


def test_match_reward_scale_equalises_the_spread_without_reordering(tiny_model, tokenizer):
    from preftune.rewards import reward_model_reward

    target, model = RewardModel.from_causal_lm(tiny_model, seed=0), RewardModel.from_causal_lm(tiny_model, seed=1)
    with torch.no_grad():
        model.head.weight.mul_(7.0)
    prompts, responses = ["about sun:"] * 6, ["warm sun", "sad", "calm sea is", "dark", "the sun", "glad"]
    before = reward_model_reward(model, tokenizer, 32)(prompts, responses)
    factor = rlp.match_reward_scale(model, target, tokenizer, prompts, responses, 32)
    after = reward_model_reward(model, tokenizer, 32)(prompts, responses)
    want = torch.tensor(reward_model_reward(target, tokenizer, 32)(prompts, responses)).std()
    assert torch.tensor(after).std().item() == pytest.approx(want.item(), rel=1e-4)
    assert factor > 0 and sorted(range(6), key=before.__getitem__) == sorted(range(6), key=after.__getitem__)


def test_config_names_bad_method_and_task():
    with pytest.raises(ConfigError, match="method"):
        apply_overrides(RLPConfig(), {"method": "ppo"})
    with pytest.raises(ConfigError, match="task"):
        apply_overrides(RLPConfig(), {"task": "chess"})


# ----------------------------------------------------------------------------------------------------------------
# The pipeline

TINY = dict(demos=32, sft_steps=2, human_pairs=64, reward_steps=2, ppo_steps=1, policy_instructions=6,
            samples_per_instruction=4, steps=2, batch_size=8, eval_prompts=4, best_of=2, policy_eval_pairs=6,
            progress=False, mixed_precision="no")


def test_pipeline_resumes_after_an_interruption_without_retraining_finished_stages(tmp_path, monkeypatch,
                                                                                    tiny_model, tokenizer):
    cfg = RLPConfig(output_dir=str(tmp_path), method="spg", seed=0, **TINY)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rlp_pipeline, "retrain_reward_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rlp_pipeline.train_rlp(cfg, model=tiny_model, tokenizer=tokenizer)
    monkeypatch.undo()
    finished = {s: (tmp_path / s / "final" / "config.json").stat().st_mtime_ns for s in ("sft", "ppo")}
    samples = (tmp_path / "policy_samples.json").read_text()

    resumed = apply_overrides(cfg, {"resume": True})
    result = rlp_pipeline.train_rlp(resumed, model=tiny_model, tokenizer=tokenizer)
    assert result.path == tmp_path / "ppo-spg" / "final" and (result.path / "model.safetensors").exists()
    results = evaluate_rlp(resumed, result)
    status = {stage: v["status"] for stage, v in results["stages"].items()}
    assert status == {"sft": "loaded", "reward": "loaded", "ppo": "loaded", "samples": "loaded",
                      "reward-spg": "trained", "ppo-spg": "trained", "eval": "run"}
    assert {s: (tmp_path / s / "final" / "config.json").stat().st_mtime_ns for s in finished} == finished
    assert (tmp_path / "policy_samples.json").read_text() == samples
    groups = json.loads(samples)
    assert len(groups) == 6 and all(len(r) == len(s) == 4 for _, r, s in groups)
    assert set(results["methods"]) == {"sft", "best-of-2 (rm)", "ppo", "rlp-spg"}
    for metrics in results["methods"].values():
        assert 0 <= metrics["annotator_win_rate"] <= 1
    assert set(results["synthetic_pairs"]) == {"spg", "select-all", "rlaif"}
    for split in ("train", "eval"):
        assert {"pairs", "before", "after"} <= set(results["reward_model"][f"ppo_samples_{split}"])
    assert json.loads((tmp_path / "results-spg.json").read_text())["method"] == "spg"

    # the CLI, a second method in the same folder: only its own stages train
    out = CliRunner().invoke(app, ["train", "rlp", "--method", "uml", "--output-dir", str(tmp_path), "--resume",
                                   *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]])
    assert out.exit_code == 0, out.output
    stages = json.loads((tmp_path / "stages-uml.json").read_text())["stages"]
    assert stages["ppo"]["status"] == "loaded" and stages["reward-uml"]["status"] == "trained"
    uml_config = apply_overrides(resumed, {"method": "uml"})
    uml = evaluate_rlp(uml_config, rlp_pipeline.train_rlp(uml_config, model=tiny_model, tokenizer=tokenizer))
    logged = json.loads((tmp_path / "reward-uml" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"bt_loss", "uml_loss", "mi_js", "skl"} <= set(logged)

    # the bench's tables from these two runs
    sweep = confidence_sweep("preference-language", {0: groups})
    assert set(sweep) == {str(g) for g in THRESHOLDS}
    table = summarise({0: {"spg": results, "uml": uml}}, sweep)
    for row in ("| sft |", "| ppo |", "| rlp-spg |", "| rlp-uml |", "| select-all |", "| after rlp-uml |"):
        assert row in table


def test_cli_help_and_bad_value():
    runner = CliRunner()
    out = runner.invoke(app, ["train", "rlp", "--help"], terminal_width=200).output
    for name in ("--method", "--samples-per-instruction", "--confidence-threshold", "--uml-weight", "--uml-beta"):
        assert name in out
    bad = runner.invoke(app, ["train", "rlp", "--method", "nope"])
    assert bad.exit_code == 2 and "method" in bad.output and "spg" in bad.output

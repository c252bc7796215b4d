"""`preftune run` end to end at a miniature size (default suite), and at --quick size (-m slow)."""

import json

import pytest

from preftune.suite.default import SuiteSize, load_suite, run_suite

TINY = SuiteSize(sft_steps=4, reward_steps=3, reward_batch_size=16, dpo_steps=3, demos=64, pairs=128,
                 heldout_pairs=32, eval_prompts=8, best_of=2, imitation_steps=4, online_steps=2, grpo_steps=2,
                 gridworld_queries=512, joint_rounds=1, joint_updates_per_round=1, joint_baseline_steps=2,
                 rlp_instructions=4, rlp_retrain_steps=2)
PL_METHODS = {"sft", "dpo", "ppo (reward model)", "rloo (reward model)", "best-of-2 (rm)", "best-of-2 (oracle)",
              "rlp-spg (reward model)"}


def _check_run(run_dir, best_of):
    results = json.loads((run_dir / "results.json").read_text())
    pl = results["tasks"]["preference-language"]
    expected = {m.replace("best-of-2", f"best-of-{best_of}") for m in PL_METHODS}
    assert set(pl["methods"]) == expected
    for metrics in pl["methods"].values():
        assert {"oracle_reward", "win_rate", "annotator_win_rate", "kl_to_reference"} <= set(metrics)
    assert 0.5 <= pl["reward_model"]["ceiling"] <= 1.0
    assert "grpo (oracle reward)" in results["tasks"]["arithmetic"]["methods"]
    assert "sft" in results["tasks"]["summarise"]["methods"]
    for task in ("arithmetic", "summarise"):  # IQLearn against the suite's SFT (issue 5)
        assert any(m.startswith("iqlearn") for m in results["tasks"][task]["methods"])
        assert {"sft", "iqlearn (λ = 0.01)"} == set(results["tasks"][task]["extracted_reward"])
    assert set(results["tasks"]["gridworld"]["methods"]) == {"zpg", "zbcpg", "dpo", "rm+ppo"}
    assert set(results["tasks"]["population"]["curves"]) == {"passive", "double-ts (sample)"}
    assert set(pl["rlp"]["synthetic_pairs"]) == {"spg", "select-all", "rlaif"}
    report = (run_dir / "report.md").read_text()
    for name in expected | {"Reward model", "arith-grpo", "time generating", "arith-iqlearn", "Spearman", "gridworld",
                            "joint learning from choices", "RLP-SPG"}:
        assert name in report
    for png in ("preference_language.png", "losses.png"):
        assert (run_dir / png).stat().st_size > 10_000
    return results


def test_miniature_suite_writes_report_and_resume_reuses_stages(tmp_path):
    run_dir = tmp_path / "mini"
    first = _check_run(run_suite(run_dir, seed=0, size=TINY), best_of=2)
    assert all(first["timings"][s] > 0 for s in ("pl-sft", "pl-ppo", "arith-grpo"))
    again = _check_run(run_suite(run_dir, seed=0, resume=True, size=TINY), best_of=2)
    assert all(again["timings"][s] == 0 for s in ("pl-sft", "pl-dpo", "pl-ppo", "pl-rloo", "pl-rlp-ppo", "arith-grpo"))
    # loaded stages give the same policies, so the same evaluation
    assert again["tasks"]["preference-language"]["methods"]["dpo"] == first["tasks"]["preference-language"][
        "methods"]["dpo"]


@pytest.mark.slow
def test_quick_suite(tmp_path):
    results = _check_run(run_suite(tmp_path / "quick", quick=True, seed=0), best_of=load_suite(quick=True)[0].best_of)
    # even the quick sizes learn: the reward model is better than chance and DPO beats SFT
    pl = results["tasks"]["preference-language"]
    assert pl["reward_model"]["heldout_accuracy"] > 0.6
    assert pl["methods"]["dpo"]["oracle_reward"] > pl["methods"]["sft"]["oracle_reward"]

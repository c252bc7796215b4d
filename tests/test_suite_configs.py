"""The suite files (preftune/suite/configs/*.yaml): they hold exactly the sizes and settings the suites ran with
before they were files, and a bad field or value names the file and the field."""

from dataclasses import asdict

import pytest
from typer.testing import CliRunner

from preftune.cli import app
from preftune.config import ConfigError
from preftune.suite.default import load_suite
from preftune.suite.gridworld import load_gridworld_settings
from preftune.suite.smollm2 import load_smollm2_size

DEFAULT_SIZE = dict(sft_steps=800, reward_steps=3000, reward_batch_size=128, dpo_steps=400, demos=4000, pairs=80000,
                    heldout_pairs=2000, eval_prompts=400, best_of=16, imitation_steps=800, online_steps=100,
                    grpo_steps=150, gridworld_queries=12_800, joint_rounds=8, joint_updates_per_round=10,
                    joint_baseline_steps=100, rlp_instructions=300, rlp_retrain_steps=50)
QUICK_SIZE = dict(DEFAULT_SIZE, sft_steps=150, reward_steps=120, dpo_steps=80, demos=1000, pairs=15000,
                  heldout_pairs=500, eval_prompts=100, best_of=8, imitation_steps=150, online_steps=30, grpo_steps=30,
                  gridworld_queries=3_200, joint_rounds=3, joint_updates_per_round=4, joint_baseline_steps=15,
                  rlp_instructions=100, rlp_retrain_steps=20)
TUNING = dict(rm_kl_coef=0.2, dpo_beta=0.3, iqlearn_lam=0.01, reward_pooling="sum", arithmetic_grpo_lr=3e-4)
SMOLLM2_SIZE = dict(sft_steps=30, dpo_steps=30, grpo_steps=20, batch_size=8, grpo_prompts=8, grpo_samples=4,
                    eval_prompts=128, lora_r=16, sft_lr=5e-4, dpo_lr=2e-4, dpo_beta=0.1, grpo_lr=5e-4,
                    grpo_temperature=1.0)


def _same(loaded, expected: dict) -> bool:
    """Equal values of equal types: an int read as 800.0 would change results.json."""
    values = asdict(loaded)
    return values == expected and all(type(values[k]) is type(v) for k, v in expected.items())


def test_suite_files_hold_the_sizes_and_tuned_settings_the_suites_ran_with():
    size, tuning = load_suite()
    assert _same(size, DEFAULT_SIZE) and _same(tuning, TUNING)
    size, tuning = load_suite(quick=True)
    assert _same(size, QUICK_SIZE) and _same(tuning, TUNING)
    assert _same(load_smollm2_size(), SMOLLM2_SIZE)
    assert _same(load_smollm2_size(quick=True), dict(SMOLLM2_SIZE, sft_steps=4, dpo_steps=4, grpo_steps=3,
                                                     eval_prompts=16))
    assert load_gridworld_settings() == {
        "zpg": dict(algorithm="zpg", mu=4.0, lr=0.1, batch_size=16, annotators_per_pair=4),
        "zbcpg": dict(algorithm="zbcpg", mu=4.0, lr=1.0, batch_size=32, annotators_per_pair=2, block_size=4),
        "dpo": dict(beta=0.1, batch_size=512), "rm+ppo": dict(batch_size=512)}


def test_a_users_suite_file_changes_only_its_fields(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("dpo_steps: 10\ndpo_beta: 0.5\n")
    size, tuning = load_suite(quick=True, config=path)
    assert _same(size, dict(QUICK_SIZE, dpo_steps=10)) and _same(tuning, dict(TUNING, dpo_beta=0.5))


@pytest.mark.parametrize("text, words", [
    ("dpo_stepz: 10\n", ["unknown field 'dpo_stepz'", "dpo_steps"]),
    ("sft_steps: 2.5\n", ["'sft_steps'", "an integer > 0"]),
    ("dpo_beta: -0.1\n", ["'dpo_beta'", "a number > 0"]),
    ("reward_pooling: mean\n", ["'reward_pooling'", "['last', 'sum']"]),
])
def test_a_bad_field_names_the_file_and_the_field(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_suite(config=path)
    assert str(path) in str(e.value) and all(w in str(e.value) for w in words)
    result = CliRunner().invoke(app, ["run", "--quick", "--config", str(path), "--runs-dir", str(tmp_path / "runs")],
                                terminal_width=400)
    assert result.exit_code == 2 and "bad.yaml" in result.output and words[0] in result.output
    assert not (tmp_path / "runs").exists()


def test_smollm2_flags_are_checked_like_file_fields():
    assert load_smollm2_size(flags={"sft-steps": "10", "dpo_lr": "1e-3"}).sft_steps == 10
    with pytest.raises(ConfigError, match="command line: unknown field 'sft-stepz'"):
        load_smollm2_size(flags={"sft-stepz": "10"})
    with pytest.raises(ConfigError, match="'eval_prompts' must be an integer > 0, got '0'"):
        load_smollm2_size(flags={"eval_prompts": "0"})


def test_a_bad_gridworld_setting_names_the_file_method_and_field(tmp_path):
    path = tmp_path / "gridworld.yaml"
    path.write_text("zpg: {mu: 4.0, lr: -1}\nzbcpg: {}\ndpo: {}\nrm+ppo: {}\n")
    with pytest.raises(ConfigError, match=r"gridworld.yaml: zpg: .*'lr'"):
        load_gridworld_settings(path)
    path.write_text("zpg: {}\n")
    with pytest.raises(ConfigError, match="gridworld.yaml: needs the methods"):
        load_gridworld_settings(path)

import json

import pytest
from typer.testing import CliRunner

from preftune.cli import app
from preftune.config import ConfigError, apply_overrides, parse_extra_flags
from preftune.methods.dpo import DPOConfig

runner = CliRunner()


def test_help_lists_every_config_field_with_default():
    out = runner.invoke(app, ["train", "dpo", "--help"], terminal_width=200).output
    for field in ("--beta", "--label-smoothing", "--lr-schedule", "--save-every", "--lora"):
        assert field in out
    assert "default 0.1" in out


def test_help_imports_no_torch():
    """`preftune --help` and `preftune train <method> --help` stay fast: the CLI, the method table and every config
    import without torch, transformers or scipy (the training code imports them when a command runs)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from preftune.cli import app\n"
            "from preftune.methods import METHODS\n"
            "for name in METHODS:\n"
            "    assert CliRunner().invoke(app, ['train', name, '--help']).exit_code == 0, name\n"
            "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
            "print(sorted(m for m in ('torch', 'transformers', 'scipy', 'numpy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bad_config_value_names_field_and_allowed_values(tmp_path):
    r = runner.invoke(app, ["train", "sft", "--task", "arithmetic", "--lr-schedule", "step",
                            "--output-dir", str(tmp_path)])
    assert r.exit_code == 2
    assert "lr_schedule" in r.output and "cosine" in r.output


def test_unknown_field_suggests_the_close_one():
    with pytest.raises(ConfigError, match="Did you mean 'beta'"):
        apply_overrides(DPOConfig(), {"betta": 0.2})


@pytest.mark.parametrize("field,value,words", [
    ("lr", "-1", "> 0"), ("steps", "2.5", "integer"), ("label_smoothing", "0.7", "<= 0.5"),
    ("lora", "maybe", "true or false")])
def test_values_are_checked(field, value, words):
    with pytest.raises(ConfigError, match=words):
        apply_overrides(DPOConfig(), {field: value})


def test_yaml_config_and_flags(tmp_path):
    from preftune.config import build_config

    path = tmp_path / "c.yaml"
    path.write_text("beta: 0.3\nsteps: 7\n")
    cfg = build_config(DPOConfig, path, ["--steps", "9", "--lora"])
    assert (cfg.beta, cfg.steps, cfg.lora) == (0.3, 9, True)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(DPOConfig, bad, [])


def test_parse_extra_flags_forms():
    assert parse_extra_flags(["--a", "1", "--b=2", "--c"]) == {"a": "1", "b": "2", "c": "true"}
    with pytest.raises(ConfigError):
        parse_extra_flags(["stray"])


def test_tasks_command_lists_the_tasks():
    out = runner.invoke(app, ["tasks"], terminal_width=200).output
    for name in ("arithmetic", "summarise", "preference-language"):
        assert name in out


def test_malformed_data_file_is_reported_with_line(tmp_path):
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    r = runner.invoke(app, ["train", "sft", "--data", str(bad), "--output-dir", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "d.jsonl:2" in r.output and "response" in r.output


def test_train_eval_bon_and_report_end_to_end(tmp_path):
    sft_dir = tmp_path / "sft"
    r = runner.invoke(app, ["train", "sft", "--task", "arithmetic", "--num-examples", "200", "--steps", "20",
                            "--output-dir", str(sft_dir), "--progress", "false"])
    assert r.exit_code == 0, r.output
    assert (sft_dir / "final" / "model.safetensors").exists() and (sft_dir / "config.yaml").exists()
    rm_dir = tmp_path / "rm"
    r = runner.invoke(app, ["train", "reward", "--task", "arithmetic", "--num-examples", "200", "--steps", "5",
                            "--model", str(sft_dir / "final"), "--output-dir", str(rm_dir), "--progress", "false",
                            "--pooling", "sum"])
    assert r.exit_code == 0, r.output
    # the reward model on held-out labels, next to the annotator's ceiling: the same numbers as the library's
    out = tmp_path / "rm_eval.json"
    r = runner.invoke(app, ["eval", "--task", "arithmetic", "--reward-model", str(rm_dir / "final"), "--num-pairs",
                            "40", "--output", str(out)])
    assert r.exit_code == 0, r.output
    from preftune.methods.reward import heldout_labels, heldout_report
    from preftune.models import RewardModel
    from preftune.tasks import get_task
    from preftune.tiny import build_tiny_tokenizer

    task = get_task("arithmetic")
    rm = RewardModel.from_pretrained(rm_dir / "final")
    assert rm.pooling == "sum"
    expected = heldout_report(rm, build_tiny_tokenizer(), task, heldout_labels(task, 40), 64)
    assert json.loads(out.read_text())["reward_model"] == expected and expected["pairs"] == 40
    out = tmp_path / "eval.json"
    r = runner.invoke(app, ["eval", "--task", "arithmetic", "--model", str(sft_dir / "final"), "--reference",
                            str(sft_dir / "final"), "--num-prompts", "8", "--output", str(out)])
    assert r.exit_code == 0, r.output
    metrics = json.loads(out.read_text())
    assert {"oracle_reward", "accuracy", "win_rate", "kl_to_reference", "self_bleu"} <= set(metrics)
    r = runner.invoke(app, ["train", "bon", "--task", "arithmetic", "--model", str(sft_dir / "final"), "--reward",
                            str(rm_dir / "final"), "--n", "4", "--num-prompts", "8", "--output-dir",
                            str(tmp_path / "bon")])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "bon" / "responses.jsonl").read_text().splitlines()) == 8
    bon = json.loads((tmp_path / "bon" / "metrics.json").read_text())
    assert {"score", "oracle_reward"} <= set(bon) and bon["n"] == 4
    # online RL from the SFT policy, with each kind of reward
    small = ["--steps", "2", "--batch-size", "4", "--progress", "false", "--model", str(sft_dir / "final")]
    for method, reward in (("ppo", str(rm_dir / "final")), ("grpo", "oracle"), ("rloo", "annotator")):
        r = runner.invoke(app, ["train", method, "--task", "arithmetic", "--reward", reward, "--num-prompts", "50",
                                *small, "--output-dir", str(tmp_path / method)])
        assert r.exit_code == 0, r.output
        history = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
        assert len(history) == 2 and {"score", "kl", "entropy", "generate_fraction"} <= set(history[-1])
        assert (tmp_path / method / "final" / "model.safetensors").exists()


def test_online_commands_explain_bad_input(tmp_path):
    r = runner.invoke(app, ["train", "rloo", "--output-dir", str(tmp_path)])
    assert r.exit_code == 2 and "--task" in r.output
    r = runner.invoke(app, ["train", "grpo", "--task", "arithmetic", "--reward", "nowhere", "--output-dir",
                            str(tmp_path)])
    assert r.exit_code == 2 and "'oracle', 'annotator' or a reward-model directory" in r.output
    r = runner.invoke(app, ["train", "rloo", "--task", "arithmetic", "--samples-per-prompt", "1", "--output-dir",
                            str(tmp_path)])
    assert r.exit_code == 2 and "samples_per_prompt" in r.output


def test_report_needs_results(tmp_path):
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "results.json" in r.output


def test_task_defaults_yield_to_yaml_and_flags(tmp_path):
    from preftune.config import build_config
    from preftune.methods.rloo import RLOOConfig

    task_defaults = {"max_new_tokens": 9}
    assert build_config(RLOOConfig, None, [], defaults=task_defaults).max_new_tokens == 9
    path = tmp_path / "c.yaml"
    path.write_text("max_new_tokens: 12\n")
    assert build_config(RLOOConfig, path, [], defaults=task_defaults).max_new_tokens == 12
    assert build_config(RLOOConfig, path, ["--max-new-tokens", "15"], defaults=task_defaults).max_new_tokens == 15


def test_tasks_lists_every_built_in_task_including_gridworld_and_population():
    r = CliRunner().invoke(app, ["tasks"], terminal_width=200)
    assert r.exit_code == 0
    for name in ("arithmetic", "summarise", "preference-language", "arithmetic-nl", "one-sentence", "gridworld",
                 "population"):
        assert name in r.output


def test_every_method_gets_a_train_command_with_the_options_of_its_input(tmp_path):
    from preftune.methods import METHODS

    runner = CliRunner()
    for name, method in METHODS.items():
        r = runner.invoke(app, ["train", name, "--help"], terminal_width=200)
        assert r.exit_code == 0, name
        assert ("--reward " in r.output) == (method.inputs == "prompts"), name
        assert ("--data" in r.output) == (method.inputs != "pipeline"), name
        assert ("--feedback" in r.output) == (method.inputs in ("prompts", "comparisons", "choices", "pipeline")), name
    r = runner.invoke(app, ["train", "sft", "--task", "gridworld", "--output-dir", str(tmp_path)])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "cannot use --task gridworld" in out and "is for zpg, zbcpg" in out


def test_a_run_that_cannot_start_is_one_line_not_a_traceback(tmp_path):
    runner = CliRunner()
    args = ["train", "sft", "--task", "arithmetic", "--steps", "4", "--save-every", "2", "--progress", "false",
            "--output-dir", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    r = runner.invoke(app, args)  # checkpoints are there: resume or overwrite, said in one line
    assert r.exit_code == 2 and "--resume" in r.output and "Traceback" not in r.output


def test_configs_are_validated_and_converted_when_built_from_python():
    from preftune.methods.sft import SFTConfig

    with pytest.raises(ConfigError, match="'lr' must be > 0"):
        SFTConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="'batch_size' .* divisible by 'grad_accum'"):
        SFTConfig(batch_size=6, grad_accum=4)
    assert SFTConfig(steps="3").steps == 3  # a value from a file or a flag becomes the field's type
    assert SFTConfig().output_dir == "runs/sft" and DPOConfig().output_dir == "runs/dpo"


def test_a_changed_default_keeps_the_shared_help_text():
    from preftune.config import TrainConfig, describe_fields

    dpo = [line for line in describe_fields(DPOConfig).splitlines() if line.startswith("--lr ")][0]
    base = [line for line in describe_fields(TrainConfig).splitlines() if line.startswith("--lr ")][0]
    assert "default 0.0002" in dpo and dpo.split(": ", 1)[1] == base.split(": ", 1)[1]


def test_yaml_keys_are_normalised_and_must_be_field_names(tmp_path):
    from preftune.config import build_config
    from preftune.methods.zpg import ZPGConfig

    path = tmp_path / "z.yaml"
    path.write_text("param-filter: norm\nannotators-per-pair: 3\n")
    cfg = build_config(ZPGConfig, path, [])
    assert (cfg.param_filter, cfg.annotators_per_pair) == ("norm", 3)
    path.write_text("1: 2\n")
    with pytest.raises(ConfigError, match="config keys must be field names"):
        build_config(ZPGConfig, path, [])


def test_non_finite_and_overflowing_values_name_the_field(tmp_path):
    from preftune.methods.online import OnlineConfig
    from preftune.methods.sft import SFTConfig

    with pytest.raises(ConfigError, match="'lr' must be a finite number"):
        SFTConfig(lr=float("inf"))
    assert OnlineConfig(kl_stop=float("inf")).kl_stop == float("inf")  # documented: inf = never
    path = tmp_path / "c.yaml"
    path.write_text("steps: .inf\n")
    r = runner.invoke(app, ["train", "sft", "--task", "arithmetic", "--config", str(path), "--output-dir",
                            str(tmp_path / "out")])
    assert r.exit_code == 2 and "'steps' must be an integer" in r.output
    r = runner.invoke(app, ["train", "sft", "--task", "arithmetic", "--config", str(tmp_path), "--output-dir",
                            str(tmp_path / "out")])
    assert r.exit_code == 2 and "not a file" in r.output


def test_an_unexpected_failure_is_one_line_and_a_traceback_file(tmp_path, monkeypatch):
    import preftune.inputs

    def broken(*args, **kwargs):
        raise KeyError("something nobody foresaw")

    monkeypatch.setattr(preftune.inputs, "train_from_inputs", broken)
    r = runner.invoke(app, ["train", "sft", "--task", "arithmetic", "--output-dir", str(tmp_path)])
    assert r.exit_code == 1 and "unexpected KeyError" in r.output and "Traceback" not in r.output
    written = r.output.split("traceback is in ")[1].split(")")[0].strip()
    assert "something nobody foresaw" in open(written).read()


def test_a_command_fixed_field_cannot_be_overridden(tmp_path):
    r = runner.invoke(app, ["train", "zbcpg", "--task", "gridworld", "--algorithm", "zpg", "--output-dir",
                            str(tmp_path)])
    assert r.exit_code == 2 and "'algorithm' is 'zbcpg' for this command" in " ".join(r.output.split())


def test_rlp_config_keeps_the_shared_checks():
    from preftune.methods.rlp import RLPConfig

    with pytest.raises(ConfigError, match="divisible by 'grad_accum'"):
        RLPConfig(batch_size=128, grad_accum=3)


def test_grpo_on_your_prompt_file_with_your_reward_function(tmp_path, monkeypatch, tokenizer):
    """issue 16's first path: `train grpo --data prompts.jsonl --reward-fn mymod:reward --model PATH` from a user's
    folder, TRL's prompt-only rows and TRL's reward signature, each function's mean logged under TRL's name."""
    from preftune.models import save_causal_lm
    from preftune.tiny import TinySpec, build_tiny_model

    model_dir = save_causal_lm(build_tiny_model("tiny", tokenizer, TinySpec(hidden_size=32, num_layers=1,
                                                                            num_heads=2)), tokenizer, tmp_path / "m")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"{a}+{a}="}) + "\n" for a in range(8)))
    (tmp_path / "user_rewards_grpo.py").write_text(
        "def short(prompts, completions, **kwargs):\n"
        "    return [-float(len(c)) for c in completions]\n"
        "def digits(prompts, completions, **kwargs):\n"
        "    return [None if not c else float(sum(ch.isdigit() for ch in c)) for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", "grpo", "--data", "prompts.jsonl", "--reward-fn", "user_rewards_grpo:short",
                            "--reward-fn", "user_rewards_grpo:digits", "--reward-weights", "0.1,1",
                            "--model", str(model_dir), "--steps", "2", "--batch-size", "4", "--max-new-tokens", "4",
                            "--progress", "false", "--output-dir", "out"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert {"rewards/short/mean", "rewards/short/std", "rewards/digits/mean", "reward_std"} <= set(rows[-1])
    assert rows[-1]["rewards/short/mean"] <= 0
    r = runner.invoke(app, ["train", "grpo", "--data", "prompts.jsonl", "--reward-fn", "user_rewards_grpo:nothing",
                            "--model", str(model_dir), "--output-dir", "out2"])
    assert r.exit_code == 2 and "has no function 'nothing'" in r.output


def test_combined_rewards_skip_none_and_refuse_a_sample_nobody_scores():
    from preftune.rewards import CombinedReward

    both = CombinedReward({"a": lambda prompts, completions: [1.0, None], "b": lambda prompts, completions: [2.0, 3.0]},
                          [1.0, 0.5])
    assert both(["p", "q"], ["x", "y"]) == [2.0, 1.5]
    assert both.last_metrics["rewards/a/mean"] == 1.0 and both.last_metrics["rewards/b/std"] == 0.5
    nobody = CombinedReward({"a": lambda prompts, completions: [None]})
    with pytest.raises(ValueError, match="no reward function scored completion 0"):
        nobody(["p"], ["x"])
    with pytest.raises(ValueError, match="2 value"):
        CombinedReward({"a": print}, [1.0, 2.0])


def test_a_trl_yaml_runs_with_hugging_face_argument_names(tmp_path, monkeypatch):
    from preftune.config import build_config

    path = tmp_path / "trl.yaml"
    path.write_text("model_name_or_path: tiny\nlearning_rate: 5.0e-5\nper_device_train_batch_size: 4\n"
                    "gradient_accumulation_steps: 2\nmax_steps: 7\nlogging_steps: 5\nsave_steps: 50\n"
                    "lr_scheduler_type: linear\nbf16: false\nbeta: 0.2\n")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = build_config(DPOConfig, path, [])
    assert (cfg.model, cfg.lr, cfg.batch_size, cfg.grad_accum, cfg.steps, cfg.log_every, cfg.save_every,
            cfg.lr_schedule, cfg.mixed_precision, cfg.beta) == ("tiny", 5e-5, 8, 2, 7, 5, 50, "linear", "auto", 0.2)
    assert build_config(DPOConfig, None, ["--bf16"]).mixed_precision == "bf16"
    path.write_text("num_train_epochs: 3\nwarmup_steps: 4\nreport_to: none\ngradient_checkpointing: true\n"
                    "eval_steps: 5\n")
    cfg = build_config(DPOConfig, path, [])
    assert (cfg.epochs, cfg.warmup_steps, cfg.report_to, cfg.gradient_checkpointing, cfg.eval_every) == \
        (3.0, 4, "none", True, 5)
    with pytest.raises(ConfigError, match="'report_to' must be one or more of"):
        build_config(DPOConfig, None, ["--report-to", "tensorboard,bogus"])


def test_dpo_logs_the_metric_names_trl_dashboards_read(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}+1=", "chosen": str(a + 1), "rejected": str(a + 2)}) + "\n"
                            for a in range(8)))
    r = runner.invoke(app, ["train", "dpo", "--data", str(data), "--steps", "2", "--batch-size", "4", "--log-every",
                            "1", "--progress", "false", "--output-dir", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    row = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected"} <= set(row)
    assert row["rewards/margins"] == pytest.approx(row["rewards/chosen"] - row["rewards/rejected"], abs=1e-6)


@pytest.mark.parametrize("text, outcome", [
    ("model: no\n", {"model": "no"}),  # YAML 1.1 would make it False
    ("lora: yes\n", {"lora": "yes"}),  # a bool field still reads it (as it reads --lora yes)
    ("steps: 1:30\n", {"steps": "1:30"}),  # YAML 1.1 sexagesimal would be 90; as a string the field refuses it
    ("steps: 010\n", {"steps": 10}),  # not octal 8
    ("lr: 1e-3\n", {"lr": 1e-3}),  # a number (YAML 1.1 reads a string)
    ("steps: 3\nsteps: 2\n", "key 'steps' is given twice"),
    ("param-filter: a\nparam_filter: b\n", "'param_filter' is given twice"),
    ("steps: " + "9" * 200 + "\n", "an integer of 200 digits"),
    ("[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
])
def test_yaml_reads_what_it_says(tmp_path, text, outcome):
    from preftune.config import load_yaml

    path = tmp_path / "c.yaml"
    path.write_text(text)
    if isinstance(outcome, dict):
        assert load_yaml(path) == outcome
    else:
        with pytest.raises(ConfigError, match=f"c.yaml.*{outcome}"):
            load_yaml(path)


@pytest.mark.parametrize("flags, words", [
    (["--steps", "2", "--steps", "3"], "'steps' is given twice"),
    (["--lr", "1", "--learning-rate", "2"], "'lr' is given twice \\(as '--lr' and '--learning-rate'\\)"),
    (["--seed", "-1"], "'seed' must be >= 0"),
    (["--seed", str(2**32)], "'seed' must be <= 4294967295"),
    (["--steps", str(10**20)], "'steps' must be at most 1e\\+09"),
    (["--model", ""], "'model' is empty"),
    (["--output-dir", " "], "'output_dir' is empty"),
    (["--steps", "1:30"], "'steps' must be an integer"),
    (["--model", "mo\x00del"], "'model' holds a NUL character"),
])
def test_flags_that_mean_nothing_are_refused_naming_the_field(flags, words):
    from preftune.config import build_config
    from preftune.methods.sft import SFTConfig

    with pytest.raises(ConfigError, match=words):
        build_config(SFTConfig, None, flags)


def test_a_later_layer_replaces_a_field_under_any_of_its_names(tmp_path):
    from preftune.config import build_config
    from preftune.methods.sft import SFTConfig

    (tmp_path / "c.yaml").write_text("learning_rate: 0.5\ngrad_accum: 2\nper_device_train_batch_size: 4\n")
    cfg = build_config(SFTConfig, tmp_path / "c.yaml", ["--lr", "0.25"])
    assert cfg.lr == 0.25 and cfg.batch_size == 8


def test_a_bad_param_filter_names_the_field():
    from preftune.methods.zpg import ZPGConfig

    with pytest.raises(ConfigError, match="'param_filter' must be a regular expression, got '\\('"):
        ZPGConfig(param_filter="(")


def test_an_output_dir_that_cannot_hold_a_run_is_refused_before_anything_is_written(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(8)))
    base = ["train", "sft", "--data", str(data), "--steps", "1", "--batch-size", "4", "--progress", "false"]
    (tmp_path / "file").write_text("x")
    for out, words in ((tmp_path / "file", "is a file, not a folder"),
                       (tmp_path / "file" / "sub", "cannot be written")):
        r = runner.invoke(app, base + ["--output-dir", str(out)])
        assert r.exit_code == 2 and words in " ".join(r.output.split()) and "Traceback" not in r.output
    finished = tmp_path / "finished"
    (finished / "final").mkdir(parents=True)
    r = runner.invoke(app, base + ["--output-dir", str(finished)])
    assert r.exit_code == 2 and "--overwrite" in r.output and not (finished / "config.yaml").exists()
    assert runner.invoke(app, base + ["--output-dir", str(finished), "--overwrite"]).exit_code == 0
    assert (finished / "final" / "model.safetensors").exists()


def test_a_broken_model_folder_is_named_in_one_line(tmp_path, tiny_model, tokenizer):
    import torch
    from safetensors.torch import load_file, save_file

    from preftune.models import ModelError, load_causal_lm, save_causal_lm

    folder = save_causal_lm(tiny_model, tokenizer, tmp_path / "m")
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    tensors = load_file(weights)
    name = next(iter(tensors))
    wrong_shape = {**tensors, name: torch.zeros(3, 3)}
    for content, words in ((b"", "is not a valid safetensors file"), (good[:100], "is not a valid safetensors file"),
                           (b"\xff" * 8 + good[8:], "is not a valid safetensors file"),
                           (wrong_shape, "do not have the shapes its config.json gives")):
        if isinstance(content, dict):
            save_file(content, weights, metadata={"format": "pt"})
        else:
            weights.write_bytes(content)
        with pytest.raises(ModelError, match=f"{folder}.*{words}"):
            load_causal_lm(str(folder))
    with pytest.raises(ModelError, match="no such model directory"):
        load_causal_lm(str(tmp_path / "missing" / "model"))
    r = runner.invoke(app, ["train", "sft", "--task", "arithmetic", "--model", str(folder), "--output-dir",
                            str(tmp_path / "out"), "--steps", "1"])
    assert r.exit_code == 2 and "shapes" in r.output and not (tmp_path / "out").exists()

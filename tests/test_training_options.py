"""The Hugging Face training options a TRL user expects: an eval set, epochs, warmup steps, gradient checkpointing and
report_to."""

import copy
import json

import pytest
import torch

from preftune.cli import app
from preftune.config import ConfigError
from preftune.data import Demo, Pair
from preftune.methods.dpo import DPOConfig, train_dpo
from preftune.methods.reward import RewardConfig, train_reward
from preftune.methods.sft import SFTConfig, train_sft
from preftune.trainer import GradientStep, Trainer

DEMOS = [Demo(f"{a}+{b}=", str(a + b)) for a in range(10, 20) for b in range(10, 14)]  # 40
PAIRS = [Pair(f"{a}+1=", str(a + 1), str(a + 2)) for a in range(10, 30)]


def _cfg(cls, tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), steps=4, batch_size=8, progress=False, save_every=0, log_every=100,
                report_to="none")
    return cls(**{**base, **kw})


def _rows(tmp_path):
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_sft_eval_set_is_scored_every_eval_every_steps_and_logged(tmp_path, tiny_model, tokenizer):
    import datasets

    held_out = datasets.Dataset.from_list([{"prompt": d.prompt, "completion": d.response} for d in DEMOS[:10]])
    result = train_sft(_cfg(SFTConfig, tmp_path, eval_every=2), DEMOS, tiny_model, tokenizer, eval_data=held_out)
    evaluated = [h["iteration"] for h in result.history if "eval_loss" in h]
    assert evaluated == [2, 4]
    # logged although log_every (100) would have skipped those iterations
    assert [r["iteration"] for r in _rows(tmp_path) if "eval_loss" in r] == [2, 4]
    # the eval loss is the SFT loss of the held-out rows under the final model, without gradients
    from preftune.data import collate_demos
    from preftune.losses import sft_loss

    model = result.model.eval()
    batch = collate_demos(tokenizer, DEMOS[:10], 96)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        expected = sft_loss(logits, batch.input_ids[:, 1:], batch.response_mask[:, 1:]).item()
    assert result.history[-1]["eval_loss"] == pytest.approx(expected, rel=1e-4)


def test_dpo_and_reward_eval_sets_log_trl_names(tmp_path, tiny_model, tokenizer):
    dpo = train_dpo(_cfg(DPOConfig, tmp_path / "dpo", steps=2), PAIRS, copy.deepcopy(tiny_model), tokenizer,
                    eval_data=PAIRS[:6])
    assert {"eval_loss", "eval_rewards/accuracies", "eval_rewards/margins"} <= set(dpo.history[-1])
    assert "eval_loss" not in dpo.history[0]  # eval_every 0: at the end only
    rm = train_reward(_cfg(RewardConfig, tmp_path / "rm", steps=2), PAIRS, copy.deepcopy(tiny_model), tokenizer,
                      eval_data=PAIRS[:6])
    assert 0.0 <= rm.history[-1]["eval_accuracy"] <= 1.0


def test_eval_data_from_the_cli(tmp_path):
    from typer.testing import CliRunner

    data, held_out = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"prompt": d.prompt, "completion": d.response}) + "\n" for d in DEMOS))
    held_out.write_text("".join(json.dumps({"prompt": d.prompt, "completion": d.response}) + "\n" for d in DEMOS[:4]))
    r = CliRunner().invoke(app, ["train", "sft", "--data", str(data), "--eval-data", str(held_out), "--steps", "2",
                                 "--batch-size", "4", "--progress", "false", "--report-to", "none",
                                 "--output-dir", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "eval_loss" in _rows(tmp_path / "out")[-1]


def test_epochs_set_the_steps_from_the_dataset_size(tmp_path, tiny_model, tokenizer):
    result = train_sft(_cfg(SFTConfig, tmp_path, epochs=0.5, steps=999), DEMOS, tiny_model, tokenizer)
    assert len(result.history) == 3  # ceil(0.5 × 40 / 8)
    with pytest.raises(ConfigError, match="'epochs' is for methods that train on a dataset"):
        Trainer(_cfg(SFTConfig, tmp_path / "x", epochs=1.0), tiny_model, name="grpo")


def test_warmup_steps_replace_the_warmup_ratio(tmp_path, tiny_model):
    trainer = Trainer(_cfg(SFTConfig, tmp_path, steps=10, warmup_steps=4, warmup_ratio=0.5, lr=1.0,
                           lr_schedule="constant"), tiny_model)
    step = GradientStep(trainer)
    lrs = []
    for _ in range(6):
        lrs.append(step.scheduler.get_last_lr()[0])
        step.optimizer.step()
        step.scheduler.step()
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_gradient_checkpointing_gives_the_same_training(tmp_path, tiny_model, tokenizer):
    plain = train_sft(_cfg(SFTConfig, tmp_path / "a"), DEMOS, copy.deepcopy(tiny_model), tokenizer).model
    checkpointed = train_sft(_cfg(SFTConfig, tmp_path / "b", gradient_checkpointing=True), DEMOS,
                             copy.deepcopy(tiny_model), tokenizer).model
    assert checkpointed.model.gradient_checkpointing
    for (name, x), y in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), name


def test_report_to_tensorboard_writes_event_files(tmp_path, tiny_model, tokenizer):
    pytest.importorskip("tensorboard")
    train_sft(_cfg(SFTConfig, tmp_path, steps=2, log_every=1, report_to="tensorboard"), DEMOS, tiny_model, tokenizer)
    assert list((tmp_path / "tensorboard" / "sft").glob("events.out.tfevents.*"))


def test_report_to_a_tracker_that_is_not_installed_is_a_config_error(tmp_path, tiny_model, monkeypatch):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ConfigError, match="'report_to' asks for wandb, which is not installed"):
        Trainer(_cfg(SFTConfig, tmp_path, report_to="wandb"), tiny_model)
    assert not tmp_path.joinpath("config.yaml").exists()


def test_eval_on_your_prompts_reward_function_and_pairs(tmp_path, monkeypatch, tiny_model, tokenizer):
    """`preftune eval --data` with a user's prompts and reward function (a policy against a reference) and a user's
    labelled pairs (a reward model), from a user's folder."""
    from typer.testing import CliRunner

    from preftune.models import RewardModel, save_causal_lm

    monkeypatch.chdir(tmp_path)
    (tmp_path / "myreward.py").write_text(
        "def length(prompts, completions, **kwargs):\n    return [float(len(c)) for c in completions]\n")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"{a}+1="}) + "\n" for a in range(6)))
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen,
                                                              "rejected": p.rejected}) + "\n" for p in PAIRS))
    save_causal_lm(tiny_model, tokenizer, tmp_path / "policy")
    RewardModel.from_causal_lm(tiny_model).save_pretrained(tmp_path / "rm", tokenizer)
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "--data", "prompts.jsonl", "--model", "policy", "--reference", "policy",
                            "--reward-fn", "myreward:length", "--samples-per-prompt", "2", "--max-new-tokens", "8",
                            "--output", "m.json"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["num_prompts"] == 6 and 0.0 <= metrics["win_rate"] <= 1.0
    assert metrics["reward"] >= 0 and "rewards/length/mean" in metrics and "kl_to_reference" in metrics
    r = runner.invoke(app, ["eval", "--data", "pairs.jsonl", "--reward-model", "rm", "--output", "rm.json"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "rm.json").read_text())["reward_model"]["pairs"] == len(PAIRS)
    # a user's judge decides the win rate: it always picks the first candidate (the policy's sample)
    (tmp_path / "myjudge.py").write_text("def first(prompt, candidates):\n    return 0\n")
    r = runner.invoke(app, ["eval", "--data", "prompts.jsonl", "--model", "policy", "--reference", "policy",
                            "--feedback", "myjudge:first", "--max-new-tokens", "4", "--output", "j.json"])
    assert r.exit_code == 0, r.output
    judged = json.loads((tmp_path / "j.json").read_text())
    assert judged["annotator_win_rate"] == 1.0 and judged["annotator_queries"] == 6 and "reward" not in judged
    r = runner.invoke(app, ["eval", "--data", "prompts.jsonl", "--model", "policy"])
    assert r.exit_code == 2 and "--reward-fn" in r.output
    r = runner.invoke(app, ["eval", "--data", "prompts.jsonl", "--task", "arithmetic", "--model", "policy"])
    assert r.exit_code == 2 and "not both" in r.output


def test_grpo_eval_prompts_and_logged_completions_change_nothing_of_the_run(tmp_path, tiny_model, tokenizer):
    from preftune.methods.rloo import GRPOConfig, train_grpo

    def reward(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    prompts = [f"{a}+1=" for a in range(8)]
    cfg = dict(steps=3, batch_size=4, samples_per_prompt=2, max_new_tokens=4, log_every=1)
    plain = train_grpo(_cfg(GRPOConfig, tmp_path / "a", **cfg), prompts, reward, copy.deepcopy(tiny_model), tokenizer)
    evaluated = train_grpo(_cfg(GRPOConfig, tmp_path / "b", eval_every=2, log_completions=True, **cfg), prompts,
                           reward, copy.deepcopy(tiny_model), tokenizer, eval_data=prompts[:3])
    assert [h["iteration"] for h in evaluated.history if "eval_score" in h] == [2, 3]
    for x, y in zip(plain.model.state_dict().values(), evaluated.model.state_dict().values()):
        assert torch.equal(x, y)  # the eval samples come from their own generator
    rows = [json.loads(line) for line in (tmp_path / "b" / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 4 * 2 and {"iteration", "prompt", "completion", "score"} <= set(rows[0])
    assert rows[0]["score"] == float(len(rows[0]["completion"]))


def test_every_checkpoint_folder_loads_with_from_pretrained(tmp_path, tiny_model, tokenizer):
    """A reward model's checkpoint is a sequence classifier, PPO's (policy + value head) the policy, a LoRA run's an
    adapter on the model it was loaded from; each checkpoint still resumes its run."""
    from peft import AutoPeftModelForCausalLM
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from preftune.methods.ppo import PPOConfig, train_ppo
    from preftune.models import save_causal_lm

    rm = train_reward(_cfg(RewardConfig, tmp_path / "rm", save_every=2), PAIRS, copy.deepcopy(tiny_model), tokenizer)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "checkpoint-2")
    saved = load_file(tmp_path / "rm" / "checkpoint-2" / "model.safetensors")
    assert torch.equal(classifier.score.weight, saved["score.weight"])
    assert not torch.equal(classifier.score.weight, rm.model.head.weight)  # step 2's head, not the final one
    resumed = train_reward(_cfg(RewardConfig, tmp_path / "rm", save_every=2, resume=True), PAIRS,
                           copy.deepcopy(tiny_model), tokenizer)
    assert torch.equal(resumed.model.head.weight, rm.model.head.weight)  # resumed from those names to the same end

    def reward(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    prompts = [f"{a}+1=" for a in range(8)]
    ppo_cfg = dict(steps=2, batch_size=4, max_new_tokens=4, save_every=1)
    train_ppo(_cfg(PPOConfig, tmp_path / "ppo", **ppo_cfg), prompts, reward, copy.deepcopy(tiny_model), tokenizer)
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "ppo" / "checkpoint-1")
    saved = load_file(tmp_path / "ppo" / "checkpoint-1" / "model.safetensors")
    assert "value_head.weight" in saved
    assert all(torch.equal(policy.state_dict()[k], v) for k, v in saved.items() if not k.startswith("value_head"))

    save_causal_lm(tiny_model, tokenizer, tmp_path / "base")  # LoRA on a model from a folder
    train_sft(_cfg(SFTConfig, tmp_path / "lora", save_every=2, model=str(tmp_path / "base"), lora=True, lora_r=4),
              DEMOS)
    adapter = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "lora" / "checkpoint-2")
    assert adapter.peft_config["default"].r == 4

import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from preftune.config import TrainConfig
from preftune.data import Demo, write_jsonl
from preftune.methods.sft import SFTConfig, train_sft
from preftune.trainer import GradientStep, Trainer, TrainingError, batch_indices

DEMOS = [Demo(f"{a}+{b}=", str(a + b)) for a in range(10, 30) for b in range(10, 20)]  # equal lengths


def _small(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), steps=6, batch_size=8, lr=1e-3, progress=False, save_every=0,
                warmup_ratio=0.0)
    base.update(kw)
    return SFTConfig(**base)


def test_batches_are_a_pure_function_of_seed_and_step():
    assert batch_indices(10, 4, 0, 3) == batch_indices(10, 4, 0, 3)
    assert batch_indices(10, 4, 0, 3) != batch_indices(10, 4, 1, 3)
    seen = batch_indices(10, 5, 0, 0) + batch_indices(10, 5, 0, 1)  # one epoch covers every example once
    assert sorted(seen) == list(range(10))


def test_gradient_accumulation_matches_the_full_batch(tmp_path, tiny_model, tokenizer):
    import copy

    a = train_sft(_small(tmp_path / "a"), DEMOS, copy.deepcopy(tiny_model), tokenizer).model
    b = train_sft(_small(tmp_path / "b", grad_accum=4), DEMOS, copy.deepcopy(tiny_model), tokenizer).model
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5), name


def test_fused_adamw_trains_to_the_same_weights_within_rounding(tmp_path, tiny_model, tokenizer):
    import copy

    a = train_sft(_small(tmp_path / "a", weight_decay=0.01), DEMOS, copy.deepcopy(tiny_model), tokenizer)
    b = train_sft(_small(tmp_path / "b", weight_decay=0.01, optim="adamw_torch_fused"), DEMOS,
                  copy.deepcopy(tiny_model), tokenizer)
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5), name
    assert any(not torch.equal(x, y) for x, y in zip(a.model.parameters(), tiny_model.parameters()))
    step = GradientStep(Trainer(_small(tmp_path / "c", optim="adamw_torch_fused"), tiny_model, name="sft"))
    assert step.optimizer.optimizer.defaults["fused"] is True


def test_sft_loss_falls_and_metrics_are_logged(tmp_path, tiny_model, tokenizer):
    result = train_sft(_small(tmp_path, steps=30, log_every=5), DEMOS, tiny_model, tokenizer)
    assert result.history[-1]["loss"] < result.history[0]["loss"] - 0.5
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert {"loss", "grad_norm", "lr"} <= set(rows[0])
    assert (tmp_path / "final" / "model.safetensors").exists()


def test_nan_steps_are_skipped_counted_and_then_stop(tmp_path, tiny_model):
    cfg = TrainConfig(output_dir=str(tmp_path), steps=20, progress=False, save_every=0, max_bad_steps=3)
    trainer = Trainer(cfg, tiny_model)
    step = GradientStep(trainer)
    before = {k: v.clone() for k, v in trainer.unwrapped_model().state_dict().items()}
    x = torch.tensor([[5, 6, 7]])

    def nan_loss(_):
        return trainer.model(input_ids=x).logits.sum() * float("nan"), {}

    out = step([[0]], nan_loss)
    assert step.skipped_steps == 1 and out["loss"] != out["loss"]
    after = trainer.unwrapped_model().state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(TrainingError, match="NaN/inf on 4 steps in a row"):
        for _ in range(5):
            step([[0]], nan_loss)


def test_existing_checkpoints_need_resume_or_overwrite(tmp_path, tiny_model, tokenizer):
    import copy

    train_sft(_small(tmp_path, save_every=2), DEMOS, copy.deepcopy(tiny_model), tokenizer)
    with pytest.raises(TrainingError, match="--resume"):
        train_sft(_small(tmp_path, save_every=2), DEMOS, copy.deepcopy(tiny_model), tokenizer)
    train_sft(_small(tmp_path, save_every=2, overwrite=True), DEMOS, copy.deepcopy(tiny_model), tokenizer)


def _train_cmd(data, out, *extra):
    return [sys.executable, "-m", "preftune", "train", "sft", "--data", str(data), "--output-dir", str(out),
            "--steps", "240", "--batch-size", "16", "--save-every", "40", "--log-every", "1",
            ] + list(extra)


def test_killed_run_resumes_to_bitwise_identical_weights(tmp_path):
    data = write_jsonl(tmp_path / "demos.jsonl", DEMOS)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    full = subprocess.run(_train_cmd(data, tmp_path / "full"), env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]

    proc = subprocess.Popen(_train_cmd(data, tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and sum(1 for _ in metrics.open()) >= 130:
            break
        time.sleep(0.02)
    proc.kill()  # SIGKILL mid-run: nothing gets to clean up
    proc.wait()
    assert proc.returncode != 0, "the run finished before it could be killed; the test proves nothing"
    assert not (tmp_path / "killed" / "final").exists()

    resumed = subprocess.run(_train_cmd(data, tmp_path / "killed", "--resume"), env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    rows = [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()]
    assert rows == list(range(1, 241)), "the metrics log should read as one uninterrupted run"


def test_save_every_zero_writes_no_checkpoint_but_always_the_final_model(tmp_path, tiny_model, tokenizer):
    result = train_sft(_small(tmp_path, save_every=0), DEMOS, tiny_model, tokenizer)
    assert not list(tmp_path.glob("checkpoint-*"))
    assert result.path == tmp_path / "final" and (result.path / "model.safetensors").exists()
    assert (tmp_path / "config.yaml").exists()  # written once the run is known to start


def test_checkpoint_state_objects_are_json_and_safetensors_not_pickle(tmp_path, tiny_model, tokenizer):
    train_sft(_small(tmp_path, save_every=2, steps=4), DEMOS, tiny_model, tokenizer)
    checkpoint = tmp_path / "checkpoint-2"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["iteration"] == 2 and state["state_objects"]["gradient_step"]["updates"] == 2
    assert not list(checkpoint.glob("custom_checkpoint_*"))  # no pickled state objects


def test_a_checkpoint_of_another_kind_of_run_is_refused(tmp_path, tiny_model, tokenizer):
    import copy

    from preftune.feedback import QueryLedger

    train_sft(_small(tmp_path, save_every=2, steps=4), DEMOS, copy.deepcopy(tiny_model), tokenizer)
    trainer = Trainer(_small(tmp_path, steps=4, resume=True), copy.deepcopy(tiny_model), state_objects=[QueryLedger()])
    GradientStep(trainer)
    with pytest.raises(TrainingError, match="other state"):
        trainer.fit(lambda it: {}, 4)


def _nan_run(tmp_path, model, **kw) -> Trainer:
    """A run whose every loss is NaN (each step is skipped)."""
    trainer = Trainer(TrainConfig(output_dir=str(tmp_path), progress=False, save_every=0, **kw), model)
    step = GradientStep(trainer)
    x = torch.tensor([[5, 6, 7]])
    trainer.fit_dataset(4, step, lambda _: (trainer.model(input_ids=x).logits.sum() * float("nan"), {}))
    return trainer


def test_a_run_whose_every_step_was_skipped_fails_instead_of_saving(tmp_path, tiny_model):
    trainer = _nan_run(tmp_path, tiny_model, steps=3, max_bad_steps=10)
    with pytest.raises(TrainingError, match="every one of the 3 steps"):
        trainer.finish()
    assert not (tmp_path / "final").exists()


def test_metrics_jsonl_is_strict_json_even_with_non_finite_values(tmp_path, tiny_model):
    _nan_run(tmp_path, tiny_model, steps=2, log_every=1)

    def refuse(constant):
        raise ValueError(f"bare {constant} in metrics.jsonl")

    rows = [json.loads(line, parse_constant=refuse) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == ["nan", "nan"] and rows[-1]["skipped_steps"] == 2


def test_resume_with_other_settings_is_refused_and_leaves_the_run_alone(tmp_path, tiny_model, tokenizer):
    import copy

    train_sft(_small(tmp_path, save_every=2, steps=4), DEMOS, copy.deepcopy(tiny_model), tokenizer)
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(TrainingError, match=r"lr \(checkpoint 0.001, now 0.5\)"):
        train_sft(_small(tmp_path, save_every=2, steps=4, lr=0.5, resume=True), DEMOS, copy.deepcopy(tiny_model),
                  tokenizer)
    assert (tmp_path / "config.yaml").read_text() == before
    # what does not change the result may change
    train_sft(_small(tmp_path, save_every=2, steps=4, log_every=1, resume=True), DEMOS, copy.deepcopy(tiny_model),
              tokenizer)


def test_a_checkpoint_from_an_older_preftune_is_refused_with_what_to_do(tmp_path, tiny_model, tokenizer):
    (tmp_path / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"iteration": 2, "updates": 2}))
    with pytest.raises(TrainingError, match="older preftune.*--overwrite"):
        train_sft(_small(tmp_path, resume=True), DEMOS, tiny_model, tokenizer)


def test_a_checkpoint_folder_loads_with_from_pretrained(tmp_path, tiny_model, tokenizer):
    from transformers import AutoModelForCausalLM

    result = train_sft(_small(tmp_path, save_every=2, steps=4), DEMOS, tiny_model, tokenizer)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-2")
    assert loaded.config.hidden_size == result.model.config.hidden_size
    saved, state = load_file(tmp_path / "checkpoint-2" / "model.safetensors"), loaded.state_dict()
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())  # the step-2 weights, not fresh ones


def _adam_state(step):
    return [{k: v.clone() for k, v in step.optimizer.state[p].items()} for p in step.params]


def test_an_update_that_makes_the_weights_non_finite_is_undone_exactly(tmp_path, tiny_model):
    trainer = Trainer(TrainConfig(output_dir=str(tmp_path), progress=False, save_every=0, warmup_ratio=0.0,
                                  lr_schedule="constant"), tiny_model)
    step = GradientStep(trainer)
    x = torch.tensor([[5, 6, 7, 8]])

    def loss(_):
        return trainer.model(input_ids=x, labels=x).loss, {}

    step([[0]], loss)  # a good step: AdamW has state now
    weights = [p.detach().clone() for p in step.params]
    state, lr = _adam_state(step), step.scheduler.get_last_lr()
    adam_step = step._raw_optimizer.step

    def step_then_break():  # a real AdamW step (its state moves), whose result is NaN in one weight
        adam_step()
        with torch.no_grad():
            step.params[-1].view(-1)[0] = float("nan")

    step._raw_optimizer.step = step_then_break
    out = step([[0]], loss)
    assert step.skipped_steps == 1 and step.bad_steps_in_a_row == 1 and math.isfinite(out["loss"])
    assert all(torch.equal(a, b) for a, b in zip(weights, step.params))
    assert all(torch.equal(s[k], step.optimizer.state[p][k]) for s, p in zip(state, step.params) for k in s)
    assert step.scheduler.get_last_lr() == lr  # the schedule did not advance either
    step._raw_optimizer.step = adam_step
    for group in step.optimizer.param_groups:
        group["lr"] = 1e38  # AdamW's step size overflows float32 part-way through the weights: undone too
    step([[0]], loss)
    assert step.skipped_steps == 2 and all(torch.equal(a, b) for a, b in zip(weights, step.params))
    assert all(torch.equal(s[k], step.optimizer.state[p][k]) for s, p in zip(state, step.params) for k in s)


def test_the_first_update_undone_leaves_no_optimizer_state(tmp_path, tiny_model):
    trainer = Trainer(TrainConfig(output_dir=str(tmp_path), progress=False, save_every=0, lr=1e38, warmup_ratio=0.0,
                                  lr_schedule="constant"), tiny_model)
    step = GradientStep(trainer)
    before = [p.detach().clone() for p in step.params]
    x = torch.tensor([[5, 6, 7, 8]])
    step([[0]], lambda _: (trainer.model(input_ids=x, labels=x).loss, {}))
    assert step.skipped_steps == 1 and not step._raw_optimizer.state
    assert all(torch.equal(a, b) for a, b in zip(before, step.params))


def test_a_huge_learning_rate_never_leaves_non_finite_weights_and_fails_naming_the_knobs(tmp_path, tiny_model,
                                                                                          tokenizer):
    cfg = _small(tmp_path, lr=1e38, steps=12, save_every=2, max_grad_norm=0.0, lr_schedule="constant")
    with pytest.raises(TrainingError, match=r"lr=1e\+38.*max_skipped_fraction|max_bad_steps") as caught:
        train_sft(cfg, DEMOS, tiny_model, tokenizer)
    assert "lr" in str(caught.value)
    assert not (tmp_path / "final").exists()
    checkpoints = sorted(tmp_path.glob("checkpoint-*"))
    assert checkpoints  # the early (good) ones survive, and every one written is finite
    for checkpoint in checkpoints:
        assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "model.safetensors").values())


def test_a_run_with_too_many_skipped_steps_fails_naming_max_skipped_fraction(tmp_path, tiny_model):
    trainer = Trainer(TrainConfig(output_dir=str(tmp_path), progress=False, save_every=0, steps=4,
                                  max_skipped_fraction=0.25), tiny_model)
    step = GradientStep(trainer)
    x = torch.tensor([[5, 6, 7]])
    trainer.fit_dataset(4, step, lambda _: (trainer.model(input_ids=x, labels=x).loss
                                            * (float("nan") if trainer.iteration % 2 else 1.0), {}))
    assert step.skipped_steps == 2
    with pytest.raises(TrainingError, match="2 of 4 steps.*max_skipped_fraction=0.25"):
        trainer.finish()
    assert not (tmp_path / "final").exists()


def test_non_finite_weights_are_never_saved(tmp_path, tiny_model):
    trainer = Trainer(TrainConfig(output_dir=str(tmp_path), progress=False, save_every=1, steps=3), tiny_model)

    def poison(it):  # a method that moves the weights itself (as ZPG does) and breaks them at iteration 2
        if it == 1:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))
        return {}

    with pytest.raises(TrainingError, match="NaN/inf at iteration 2.*checkpoint-2 was not written"):
        trainer.fit(poison, 3)
    assert [p.name for p in trainer.checkpoints()] == ["checkpoint-1"]
    with pytest.raises(TrainingError, match="final was not written"):
        trainer.finish()

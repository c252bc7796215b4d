"""Online RL (PPO, RLOO, GRPO): the shared machinery in `preftune.methods.online` and the three methods end to end.

The learning tests use a synthetic reward with a clear signal on a freshly initialised tiny model: the share of
digits in the response. A random model writes about 2% digits; a few dozen policy-gradient iterations push it
far above that.
"""

import copy
import io
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from preftune.config import ConfigError, apply_overrides
from preftune.feedback import Annotator, QueryLedger
from preftune.inputs import make_reward
from preftune.losses import token_logprobs
from preftune.methods.online import KLController, OnlineConfig, ReferencePolicy, collect
from preftune.methods.ppo import PolicyWithValueHead, PPOConfig, rollout_values, train_ppo
from preftune.methods.rloo import GRPOConfig, RLOOConfig, train_grpo, train_rloo
from preftune.models import load_policy
from preftune.rewards import AnnotatorReward
from preftune.rollout import generate, score_logprobs
from preftune.tasks import get_task
from preftune.trainer import TrainingError

PROMPTS = [f"{a}+{b}=" for a in range(10, 20) for b in range(3)]
LOGGED = {"score", "kl", "reward", "kl_coef", "response_length", "generate_fraction", "entropy", "clip_frac",
          "approx_kl", "loss", "grad_norm", "lr", "iteration"}


def digit_share(response: str) -> float:
    return sum(c.isdigit() for c in response) / max(len(response), 1)


def digits_reward(prompts, responses):
    return [digit_share(r) for r in responses]


def _online(cls, tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), steps=20, batch_size=8, samples_per_prompt=4, lr=1e-2, max_new_tokens=6,
                kl_coef=0.0, progress=False, save_every=0, mixed_precision="no")
    base.update(kw)
    return cls(**base)


def _metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------
# Configuration


def test_online_config_rejects_steps_that_would_be_empty():
    with pytest.raises(ConfigError, match=r"batch_size × samples_per_prompt \(2\).*num_minibatches × grad_accum"):
        OnlineConfig(batch_size=2, samples_per_prompt=1, num_minibatches=2, grad_accum=2)  # checked when built
    ok = OnlineConfig(batch_size=2, samples_per_prompt=2, num_minibatches=2, grad_accum=2)  # 4 rows: fine
    with pytest.raises(ConfigError, match="num_minibatches"):
        apply_overrides(ok, {"num_minibatches": 4})
    assert OnlineConfig(steps=5, ppo_epochs=3, num_minibatches=2).total_updates() == 30


def test_rloo_and_grpo_need_two_samples_per_prompt():
    for cls in (RLOOConfig, GRPOConfig):
        with pytest.raises(ConfigError, match="'samples_per_prompt'.*>= 2"):
            cls(samples_per_prompt=1)
    # the config class is the method: RLOO has no switch to GRPO that would keep RLOO's KL coefficient and folder
    assert (GRPOConfig().method_name, GRPOConfig().kl_coef, GRPOConfig().output_dir) == ("grpo", 0.04, "runs/grpo")
    assert (RLOOConfig().method_name, RLOOConfig().kl_coef, RLOOConfig().output_dir) == ("rloo", 0.05, "runs/rloo")
    with pytest.raises(ConfigError, match="unknown config field 'advantage'"):
        apply_overrides(RLOOConfig(), {"advantage": "grpo"})


# ----------------------------------------------------------------------------------------------
# KL controller


def test_fixed_kl_coefficient_never_moves():
    c = KLController(0.1)
    for kl in (0.0, 5.0, 1e6):
        c.update(kl, 1000)
    assert c.value == 0.1


def test_adaptive_kl_coefficient_steers_towards_the_target():
    c = KLController(0.1, target=2.0, horizon=100)
    c.update(2.4, 10)  # 20% above target: β grows by 0.2 × 10/100
    assert c.value == pytest.approx(0.1 * 1.02)
    c = KLController(0.1, target=2.0, horizon=100)
    c.update(1.8, 10)  # 10% below: shrinks by 0.1 × 10/100
    assert c.value == pytest.approx(0.1 * 0.99)
    c = KLController(0.1, target=2.0, horizon=100)
    c.update(2.0, 10)
    assert c.value == pytest.approx(0.1)


@pytest.mark.parametrize("kl, factor", [(1e6, 1 + 0.2 * 16 / 64), (0.0, 1 - 0.2 * 16 / 64)])
def test_adaptive_kl_step_is_bounded_by_20_percent_of_samples_over_horizon(kl, factor):
    c = KLController(0.5, target=1.0, horizon=64)
    c.update(kl, 16)
    assert c.value == pytest.approx(0.5 * factor)


def test_kl_controller_state_round_trip():
    c = KLController(0.1, target=2.0, horizon=100)
    for kl in (3.0, 0.5, 2.5):
        c.update(kl, 8)
    buffer = io.BytesIO()
    torch.save(c.state_dict(), buffer)  # as Accelerate checkpoints a registered object
    buffer.seek(0)
    d = KLController(7.0)
    d.load_state_dict(torch.load(buffer, weights_only=False))
    assert (d.value, d.target, d.horizon) == (c.value, c.target, c.horizon)
    c.update(4.0, 8)
    d.update(4.0, 8)
    assert d.value == c.value


# ----------------------------------------------------------------------------------------------
# Rewards


def _coin_annotator():
    # equal utilities: every label is a fair coin flip, so labels depend entirely on the random stream
    return Annotator(lambda prompt, response: 0.0)


def test_annotator_reward_labels_and_records_every_comparison():
    ledger = QueryLedger()
    better = Annotator(lambda prompt, response: 50.0 * digit_share(response))  # near-deterministic labels
    reward = AnnotatorReward(better, {"p": "ab1", "q": "1"}, ledger=ledger, tag="rl")
    scores = reward(["p", "p", "q", "q", "q"], ["12", "xyz", "a1", "a", "1a"])
    assert scores == [1.0, 0.0, 0.0, 0.0, 0.0]  # 2/2 > 1/3 > 0; anything below 1/1 loses to "1"
    assert ledger.by_tag() == {"rl": 5}
    reward(["q"], ["7"])
    assert ledger.total == 6


def test_annotator_reward_names_a_prompt_without_reference():
    reward = AnnotatorReward(_coin_annotator(), {"p": "x"})
    with pytest.raises(ValueError, match="no reference response for 2 prompt.*'about moon:'"):
        reward(["p", "about sun:", "about moon:"], ["a", "b", "c"])
    assert reward.ledger.total == 0, "nothing is asked when the batch cannot be labelled"


def test_annotator_reward_state_round_trip_reproduces_labels():
    refs = {"p": "x"}
    prompts, responses = ["p"] * 40, ["y"] * 40
    a = AnnotatorReward(_coin_annotator(), refs, seed=3)
    a(prompts[:7], responses[:7])
    saved = json.loads(json.dumps(a.state_dict()))  # checkpoints hold state objects as JSON
    b = AnnotatorReward(_coin_annotator(), refs, seed=99)
    b.load_state_dict(saved)
    assert b.ledger.total == 7
    expected = a(prompts, responses)
    assert 5 < sum(expected) < 35  # genuinely random labels, so agreement is not luck
    assert b(prompts, responses) == expected
    assert b.ledger.by_tag() == a.ledger.by_tag() == {"online": 47}


def test_make_reward_oracle_and_annotator():
    task = get_task("preference-language")
    oracle = make_reward("oracle", task)
    prompts, responses = ["about sun:", "about sun:"], ["warm sun is calm", "dark dark"]
    assert list(oracle(prompts, responses)) == [task.reward(p, r) for p, r in zip(prompts, responses)]
    demos = task.demonstrations("train", 4)
    annotator = make_reward("annotator", task, references=demos, seed=0)
    assert isinstance(annotator, AnnotatorReward)
    assert set(annotator.references) == {d.prompt for d in demos}
    assert set(annotator([demos[0].prompt], ["warm calm glad love"])) <= {0.0, 1.0}


def test_make_reward_errors_name_what_is_missing():
    for spec in ("oracle", "annotator"):
        with pytest.raises(ValueError, match="needs --task"):
            make_reward(spec)
    with pytest.raises(ValueError, match="reference responses"):
        make_reward("annotator", get_task("arithmetic"))
    with pytest.raises(ValueError, match="'oracle', 'annotator' or a reward-model directory.*'orcale'"):
        make_reward("orcale", get_task("arithmetic"))


# ----------------------------------------------------------------------------------------------
# Reference policy and one iteration's data


def test_collect_scores_every_sample_and_starts_at_zero_kl(tiny_model, tokenizer):
    seen = {}

    def reward_fn(prompts, responses):
        seen["prompts"], seen["responses"] = list(prompts), list(responses)
        return [float(len(r)) for r in responses]

    reference = ReferencePolicy(tiny_model)
    assert not reference.uses_adapters and reference.model is not tiny_model
    assert not any(p.requires_grad for p in reference.model.parameters())
    cfg = OnlineConfig(samples_per_prompt=3, max_new_tokens=5)
    torch.manual_seed(0)
    batch = collect(tiny_model, reference, tokenizer, ["1+2=", "33+4="], reward_fn, cfg)
    assert len(batch) == 6
    assert seen["prompts"] == ["1+2="] * 3 + ["33+4="] * 3  # a prompt's k samples are consecutive rows
    assert batch.scores.tolist() == [float(len(r)) for r in seen["responses"]]
    # behaviour and reference log-probs are data, not part of any autograd graph
    assert not batch.rollout.logprobs.requires_grad and not batch.ref_logprobs.requires_grad
    # the policy is the reference at the start: per-token KL is zero (up to cached-vs-full forward rounding)
    assert batch.kl_tokens().abs().max().item() < 1e-4
    assert torch.equal(batch.kl_tokens()[batch.mask == 0], torch.zeros(int((batch.mask == 0).sum())))
    assert torch.allclose(batch.kl_sequences(), batch.kl_tokens().sum(-1))
    # rows(): the chosen rows, trimmed to their used columns, with per-token tensors sliced alike
    rows = batch.rows([3, 5], "cpu", advantages=torch.arange(6.0))
    assert rows["advantages"].tolist() == [3.0, 5.0]
    assert rows["input_ids"].shape[1] - 1 == rows["mask"].shape[1] == rows["old_logprobs"].shape[1]
    assert torch.equal(rows["mask"].sum(-1), batch.mask[[3, 5]].sum(-1))
    assert torch.allclose(rows["old_logprobs"].sum(-1), batch.rollout.logprobs[[3, 5]].sum(-1))


def test_lora_reference_uses_the_adapters_and_scores_like_the_starting_policy(tiny_model, tokenizer):
    start = copy.deepcopy(tiny_model)
    cfg = RLOOConfig(lora=True, lora_r=4)
    policy, _ = load_policy(cfg, tiny_model, tokenizer)
    reference = ReferencePolicy(policy)
    assert reference.uses_adapters and reference.model is None, "LoRA must not deep-copy the policy"
    torch.manual_seed(0)
    r = generate(policy, tokenizer, ["1+2=", "45+6="], max_new_tokens=5, samples_per_prompt=2)
    args = (r.input_ids, r.attention_mask, r.response_mask)
    start_lp = score_logprobs(start, *args)
    assert torch.allclose(reference.logprobs(policy, r), start_lp, atol=1e-5)
    # train the adapters away from zero: the policy moves, the reference stays the starting policy
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    moved = score_logprobs(policy, *args)
    assert (moved - start_lp).abs().max() > 0.1
    assert torch.allclose(reference.logprobs(policy, r), start_lp, atol=1e-5)
    assert torch.allclose(score_logprobs(policy, *args), moved), "adapters must be re-enabled afterwards"


def test_lora_rloo_run_trains_only_adapters(tmp_path, tiny_model, tokenizer):
    base = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    result = train_rloo(_online(RLOOConfig, tmp_path, steps=2, lora=True, lora_r=4), PROMPTS, digits_reward,
                        tiny_model, tokenizer)
    assert hasattr(result.model, "peft_config")
    assert result.history[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert result.history[1]["kl"] != 0.0  # the adapters moved the policy away from the reference
    trained = result.model.get_base_model().state_dict()
    for k, v in base.items():
        key = k if k in trained else k.replace(".weight", ".base_layer.weight")
        assert torch.equal(trained[key], v), f"base weight {k} changed"


# ----------------------------------------------------------------------------------------------
# Learning


@pytest.mark.parametrize("method", ["rloo", "grpo", "ppo"])
def test_online_methods_raise_the_reward_and_log_their_metrics(method, tmp_path, tiny_model, tokenizer):
    if method == "ppo":
        cfg = _online(PPOConfig, tmp_path, ppo_epochs=2, num_minibatches=2)
        result = train_ppo(cfg, PROMPTS, digits_reward, tiny_model, tokenizer)
    else:
        cfg = _online(RLOOConfig if method == "rloo" else GRPOConfig, tmp_path)
        train = train_rloo if method == "rloo" else train_grpo
        result = train(cfg, PROMPTS, digits_reward, tiny_model, tokenizer)
    scores = [h["score"] for h in result.history]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert first < 0.1 and last > first + 0.2, f"{method} did not learn: {[round(s, 3) for s in scores]}"
    rows = _metrics(tmp_path)
    assert [r["iteration"] for r in rows] == list(range(1, 21))
    expected = LOGGED | ({"value_loss", "policy_loss"} if method == "ppo" else {"policy_loss"}) \
        | ({"kl_k3"} if method == "grpo" else set())
    assert expected <= set(rows[-1]), expected - set(rows[-1])
    assert all(0 < r["generate_fraction"] < 1 and 1 <= r["response_length"] <= 6 for r in rows)
    assert rows[-1]["entropy"] < rows[0]["entropy"]  # the policy sharpens onto digit tokens
    assert (tmp_path / "final" / "model.safetensors").exists()


def test_kl_guard_stops_a_drifting_run(tmp_path, tiny_model, tokenizer):
    cfg = _online(RLOOConfig, tmp_path, steps=5, lr=0.1, kl_stop=1e-6)
    with pytest.raises(TrainingError, match=r"kl_stop=1e-06.*Raise kl_coef"):
        train_rloo(cfg, PROMPTS, digits_reward, tiny_model, tokenizer)


def test_an_online_run_samples_through_its_generation_backend(tmp_path, tiny_model, tokenizer):
    """The seam an inference engine plugs into: a run's samples come from ``run.sampler``, synced before each
    rollout batch with the trained policy, asked for k samples per prompt and the config's sampling."""
    from preftune.methods.online import OnlineRun
    from preftune.rollout import InHouseSampler, Sampling

    class Recording(InHouseSampler):
        calls, syncs = [], []

        def generate(self, prompts, k, sampling):
            self.calls.append((len(prompts), k, sampling))
            return super().generate(prompts, k, sampling)

        def sync(self, policy):
            self.syncs.append(policy)

    cfg = _online(RLOOConfig, tmp_path, steps=2, temperature=0.8)
    run = OnlineRun("rloo", cfg, PROMPTS, digits_reward, tiny_model, tokenizer)
    run.sampler = Recording(tiny_model, tokenizer)
    batch = run.collect(0)
    assert Recording.calls == [(8, 4, Sampling(max_new_tokens=6, temperature=0.8))]
    assert Recording.syncs == [tiny_model] and len(batch) == 32


def test_ppo_value_head_starts_at_zero(tiny_model, tokenizer):
    model = PolicyWithValueHead(tiny_model)
    ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    attn, label_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]), torch.tensor([[0, 1, 1], [0, 0, 1]]).bool()
    scores, values = model(ids, attn, label_mask)
    assert torch.equal(values, torch.zeros(2, 4))
    positions = torch.tensor([[0, 0, 1, 2], [0, 1, 2, 3]])
    logits = tiny_model(input_ids=ids, attention_mask=attn, position_ids=positions).logits
    assert torch.allclose(scores.logprobs, token_logprobs(logits[:, :-1], ids[:, 1:]) * label_mask, atol=1e-5)
    torch.manual_seed(0)
    batch = collect(tiny_model, ReferencePolicy(tiny_model), tokenizer, ["1+2="], digits_reward,
                    OnlineConfig(samples_per_prompt=2, max_new_tokens=4))
    assert torch.equal(rollout_values(model, batch, "cpu"), torch.zeros_like(batch.rollout.logprobs))


def test_ppo_value_loss_falls_as_the_value_head_learns_the_return(tmp_path, tiny_model, tokenizer):
    # every response scores 1 and β = 0, so the return is 1 at every token; V starts at 0
    cfg = _online(PPOConfig, tmp_path, steps=8, ppo_epochs=2, num_minibatches=2)
    result = train_ppo(cfg, PROMPTS, lambda p, r: [1.0] * len(r), tiny_model, tokenizer)
    losses = [h["value_loss"] for h in result.history]
    assert 0.2 < losses[0] <= 0.5  # ½·(0 − 1)² at the first step, falling within the first iteration
    assert losses[-1] < losses[0] / 5, losses


# ----------------------------------------------------------------------------------------------
# Kill and resume

RESUME_SCRIPT = r'''
import os, signal, sys

import torch

torch.set_num_threads(1)
from transformers import PreTrainedTokenizerFast

from preftune.feedback import Annotator
from preftune.rewards import AnnotatorReward
from preftune.methods.rloo import RLOOConfig, train_rloo
from preftune.tiny import TinySpec, build_tiny_model

tok_dir, out, resume, kill_at = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
model = build_tiny_model("tiny", tokenizer, TinySpec(hidden_size=32, num_layers=1, num_heads=2), seed=0)
prompts = [f"{a}+{b}=" for a in range(10, 16) for b in range(2)]


class KillingReward(AnnotatorReward):
    calls = 0

    def __call__(self, prompts, responses):
        self.calls += 1
        if self.calls == kill_at:  # SIGKILL mid-iteration: nothing gets to clean up
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(prompts, responses)


def utility(prompt, response):
    return 4.0 * sum(c.isdigit() for c in response) / max(len(response), 1)


# a noisy annotator (its random stream is checkpointed), an adaptive KL controller (its β is checkpointed),
# several optimizer steps per iteration, and sampling from the global torch RNG (checkpointed)
reward = KillingReward(Annotator(utility), {p: "a7" for p in prompts}, seed=1)
cfg = RLOOConfig(output_dir=out, resume=resume, steps=8, save_every=3, batch_size=4, samples_per_prompt=4, lr=1e-2,
                 max_new_tokens=6, kl_coef=0.05, kl_target=0.5, kl_horizon=100, ppo_epochs=2, num_minibatches=2,
                 progress=False, log_every=1, mixed_precision="no")
train_rloo(cfg, prompts, reward, model, tokenizer)
'''


def test_killed_rloo_run_resumes_to_bitwise_identical_weights(tmp_path, tokenizer):
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    tokenizer.save_pretrained(tmp_path / "tok")  # saves the subprocesses training the BPE again
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}

    def cmd(out, resume, kill_at):
        return [sys.executable, str(script), str(tmp_path / "tok"), str(tmp_path / out), str(int(resume)),
                str(kill_at)]

    # the uninterrupted run and the one to be killed run side by side (one thread each)
    full = subprocess.Popen(cmd("full", False, 0), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = subprocess.run(cmd("killed", False, 6), env=env, capture_output=True, text=True)
    full_out, full_err = full.communicate()
    assert full.returncode == 0, full_err[-2000:]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / "killed"
    assert not (run_dir / "final").exists()
    assert [p.name for p in sorted(run_dir.glob("checkpoint-*"))] == ["checkpoint-3"]
    assert [r["iteration"] for r in _metrics(run_dir)] == [1, 2, 3, 4, 5]  # 4 and 5 are lost with the kill

    resumed = subprocess.run(cmd("killed", True, 0), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(run_dir / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    full_rows, resumed_rows = _metrics(tmp_path / "full"), _metrics(run_dir)
    assert [r["iteration"] for r in resumed_rows] == list(range(1, 9))
    for key in ("score", "kl", "kl_coef", "loss"):  # same samples, same labels, same β at every iteration
        assert [r[key] for r in resumed_rows] == [r[key] for r in full_rows], key
    assert full_rows[-1]["kl_coef"] != 0.05, "the adaptive controller should have moved β"


def test_python_api_takes_datasets_and_trl_style_reward_functions(tmp_path, tiny_model, tokenizer):
    """train_* take a `datasets.Dataset` (or dicts) in TRL's formats and TRL's reward functions, alone or a list."""
    import datasets

    from preftune.methods.dpo import DPOConfig, train_dpo
    from preftune.methods.sft import SFTConfig, train_sft

    common = dict(steps=2, batch_size=4, progress=False, save_every=0)
    sft_rows = datasets.Dataset.from_list([{"prompt": f"{a}+1=", "completion": str(a + 1)} for a in range(8)])
    sft = train_sft(SFTConfig(output_dir=str(tmp_path / "sft"), **common), sft_rows, copy.deepcopy(tiny_model),
                    tokenizer)
    assert len(sft.history) == 2
    pairs = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}] * 4
    assert len(train_dpo(DPOConfig(output_dir=str(tmp_path / "dpo"), **common), pairs, copy.deepcopy(tiny_model),
                         tokenizer).history) == 2

    def length(completions, **kwargs):  # TRL's documented shape: no prompts argument
        return [float(len(c)) for c in completions]

    def has_one(prompts, completions, **kwargs):
        return [1.0 if "1" in c else None for c in completions]

    prompts = datasets.Dataset.from_list([{"prompt": f"{a}+1="} for a in range(4)])
    cfg = GRPOConfig(output_dir=str(tmp_path / "grpo"), steps=1, batch_size=2, max_new_tokens=3, progress=False,
                     save_every=0)
    result = train_grpo(cfg, prompts, [length, has_one], copy.deepcopy(tiny_model), tokenizer)
    assert "rewards/length/mean" in result.history[0] and result.history[0]["score"] >= 0
    alone = train_grpo(apply_overrides(cfg, {"output_dir": str(tmp_path / "grpo2")}), prompts, length,
                       copy.deepcopy(tiny_model), tokenizer)
    assert alone.history[0]["score"] == alone.history[0]["rewards/length/mean"]

"""IQLearn (Wulfmeier et al. 2024): the TD-regularised MLE loss, its online variant, reward extraction, training
and the CLI."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from preftune.cli import app
from preftune.config import ConfigError
from preftune.losses import (
    iq_online_loss,
    iq_sequence_rewards,
    iq_td_loss,
    iq_token_rewards,
    sft_loss,
)
from preftune.methods.iqlearn import (
    IQLearnConfig,
    reward_correlation,
    saved_gamma,
    score_sequence_rewards,
    train_iqlearn,
)
from preftune.tasks import get_task


def _batch(seed=0, B=3, T=7, V=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    # row 0: prompt 2, response 4, pad 1; row 1: prompt 1, response 6; row 2: prompt 3, response 2, pad 2
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0]])
    return logits, labels, mask


def _td_by_hand(logits, labels, mask, gamma, lam):
    """Loop over rows and response tokens, nothing vectorised."""
    nll_terms, td_terms = [], []
    for b in range(logits.shape[0]):
        positions = [t for t in range(logits.shape[1]) if mask[b, t]]
        for t in positions:
            q = logits[b, t, labels[b, t]]
            v = torch.logsumexp(logits[b, t], 0)
            next_v = torch.logsumexp(logits[b, t + 1], 0) if t + 1 in positions else torch.tensor(0.0)
            nll_terms.append(v - q)
            td_terms.append((q - gamma * next_v) ** 2)
    return torch.stack(nll_terms).mean() + lam * torch.stack(td_terms).mean()


def test_lambda_zero_is_exactly_mle():
    logits, labels, mask = _batch()
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    iq, mle = iq_td_loss(a, labels, mask, gamma=1.0, lam=0.0)[0], sft_loss(b, labels, mask)
    assert torch.equal(iq, mle)
    iq.backward()
    mle.backward()
    assert torch.equal(a.grad, b.grad)
    assert not torch.equal(iq_td_loss(logits, labels, mask, lam=0.5)[0], mle)  # the TD term is not zero here


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.3), (0.9, 2.0)])
def test_loss_matches_hand_loop_terminal_value_zero(gamma, lam):
    logits, labels, mask = _batch(1)
    loss, _ = iq_td_loss(logits, labels, mask, gamma, lam)
    assert torch.allclose(loss, _td_by_hand(logits, labels, mask, gamma, lam), atol=1e-5)


def test_terminal_value_is_zero_even_without_padding():
    # row 1 of _batch runs to the last column: there is no logits[:, t+1] to read, V(terminal) must be 0
    logits, labels, mask = _batch(2)
    r = iq_token_rewards(logits, labels, mask)
    last = logits.shape[1] - 1
    assert torch.allclose(r[1, last], logits[1, last, labels[1, last]])  # r = Q − γ·0
    # and the state after row 0's last response token (t = 5) is terminal although column 6 holds padding logits
    assert torch.allclose(r[0, 5], logits[0, 5, labels[0, 5]])


def test_prompt_and_padding_do_not_matter():
    logits, labels, mask = _batch(3)
    base, _ = iq_td_loss(logits, labels, mask, lam=0.7)
    noisy = logits.clone()
    noisy[mask == 0] = torch.randn_like(noisy[mask == 0]) * 50  # prompt and padding positions
    labels2 = torch.where(mask.bool(), labels, torch.zeros_like(labels))
    assert torch.allclose(iq_td_loss(noisy, labels2, mask, lam=0.7)[0], base, atol=1e-6)


def test_gradient_flows_through_the_next_state_value():
    logits, labels, mask = _batch(4)
    x = logits.clone().requires_grad_(True)
    # a logit offset at a state changes no log-prob; only V(s) (in the TD term) sees it
    loss, stats = iq_td_loss(x, labels, mask, lam=1.0)
    loss.backward()
    offset_grad = x.grad.sum(-1)  # d loss / d (a constant added to every logit of a state)
    # the state after row 1's first response token is s_{t+1} for t = 1: its V appears in r_1 and in r_2's Q
    assert offset_grad[1, 2].abs() > 1e-4
    # pure MLE: an offset never matters
    y = logits.clone().requires_grad_(True)
    iq_td_loss(y, labels, mask, lam=0.0)[0].backward()
    assert y.grad.sum(-1).abs().max() < 1e-5
    assert set(stats) == {"nll", "td", "reward", "value"}


def test_rewards_sum_and_hand_computed_example():
    # vocabulary of 2, one row: a prompt position then 2 response tokens
    logits = torch.tensor([[[9.0, 9.0], [math.log(3.0), 0.0], [0.0, math.log(2.0)]]])
    labels = torch.tensor([[1, 0, 1]])
    mask = torch.tensor([[0, 1, 1]])
    # t=1: Q = log 3, V(s_2) = log(1 + 2) = log 3 -> r = 0 (γ=1) ; t=2: Q = log 2, terminal -> r = log 2
    r = iq_token_rewards(logits, labels, mask)
    assert torch.allclose(r, torch.tensor([[0.0, 0.0, math.log(2.0)]]), atol=1e-6)
    assert torch.allclose(iq_sequence_rewards(logits, labels, mask), torch.tensor([math.log(2.0)]), atol=1e-6)
    # γ = 0.5: r_1 = log 3 − 0.5·log 3
    assert torch.allclose(iq_sequence_rewards(logits, labels, mask, 0.5),
                          torch.tensor([0.5 * math.log(3.0) + math.log(2.0)]), atol=1e-6)
    # with γ = 1 the return telescopes to log π(y|x) + V(s_0)
    logits, labels, mask = _batch(5)
    logp = (torch.gather(logits, -1, labels[..., None]).squeeze(-1) - logits.logsumexp(-1)) * mask
    first = mask.float().argmax(-1)
    v0 = logits.logsumexp(-1)[torch.arange(3), first]
    assert torch.allclose(iq_sequence_rewards(logits, labels, mask), logp.sum(-1) + v0, atol=1e-5)
    assert torch.allclose(iq_sequence_rewards(logits, labels, mask, 0.8),
                          iq_token_rewards(logits, labels, mask, 0.8).sum(-1))


def test_online_loss_reduces_to_offline_at_alpha_zero_and_uses_policy_terms():
    e, p = _batch(6), _batch(7)
    offline, _ = iq_td_loss(*e, gamma=1.0, lam=0.4)
    online0, _ = iq_online_loss(*e, *p, alpha=0.0, gamma=1.0, lam=0.4)
    assert torch.allclose(online0, offline)
    x = p[0].clone().requires_grad_(True)
    loss, stats = iq_online_loss(*e, x, p[1], p[2], alpha=0.3, gamma=1.0, lam=0.4)
    loss.backward()
    assert x.grad[p[2].bool()].abs().sum() > 0  # policy samples shape the loss
    assert x.grad[~p[2].bool()].abs().sum() == 0  # but not through their prompt or padding
    assert {"td_policy", "value_gap"} <= set(stats)


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), steps=30, batch_size=16, lr=3e-3, progress=False, save_every=0,
                mixed_precision="no", warmup_ratio=0.0, lam=0.5, max_length=32)
    base.update(kw)
    return IQLearnConfig(**base)


def test_train_iqlearn_loss_falls_and_saves_gamma(tmp_path, tokenizer, tiny_model):
    demos = get_task("arithmetic").demonstrations("train", 64, 0)
    seen = []
    result = train_iqlearn(_config(tmp_path, gamma=0.95), demos, model=tiny_model, tokenizer=tokenizer,
                           callback=lambda step, model: seen.append(step))
    h = result.history
    assert h[-1]["loss"] < 0.7 * h[0]["loss"]
    assert {"nll", "td", "reward", "value"} <= set(h[-1])
    assert seen == list(range(1, 31))
    assert saved_gamma(result.path) == 0.95
    scores = score_sequence_rewards(result.model, tokenizer, [d.prompt for d in demos[:5]],
                                    [d.response for d in demos[:5]], gamma=0.95)
    assert scores.shape == (5,) and torch.isfinite(scores).all()
    corr = reward_correlation(get_task("arithmetic"), result.model, tokenizer, num_prompts=20)
    assert corr["n"] == 40 and -1 <= corr["spearman"] <= 1 and 0 <= corr["pair_accuracy"] <= 1


def test_online_iqlearn_runs(tmp_path, tokenizer, tiny_model):
    demos = get_task("arithmetic").demonstrations("train", 64, 0)
    result = train_iqlearn(_config(tmp_path, steps=4, alpha=0.25, max_new_tokens=6, grad_accum=2), demos,
                           model=tiny_model, tokenizer=tokenizer)
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert {"td_policy", "value_gap"} <= set(result.history[-1])


def test_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="lam"):
        (_config(tmp_path, alpha=0.2, lam=0.0))
    with pytest.raises(ConfigError, match="alpha"):
        (_config(tmp_path, alpha=0.95))
    with pytest.raises(ConfigError, match="alpha"):
        (_config(tmp_path, alpha=0.01, batch_size=16))
    with pytest.raises(ConfigError, match="grad_accum"):  # 6 samples + 2 demos cannot fill 4 mixed micro-batches
        (_config(tmp_path, alpha=0.75, batch_size=8, grad_accum=4))
    with pytest.raises(ConfigError, match="grad_accum"):  # 3 samples for 4 micro-batches: one would have none
        (_config(tmp_path, alpha=0.1, batch_size=30, grad_accum=4))
    (_config(tmp_path, alpha=0.25, batch_size=16, grad_accum=4))


def test_cli_train_iqlearn_and_eval_reward_from(tmp_path):
    runner = CliRunner()
    data = tmp_path / "demos.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}+1=", "response": str(a + 1)}) + "\n" for a in range(20)))
    out = tmp_path / "iq"
    r = runner.invoke(app, ["train", "iqlearn", "--data", str(data), "--steps", "3", "--batch-size", "4",
                            "--lam", "0.2", "--output-dir", str(out), "--progress", "false"])
    assert r.exit_code == 0, r.output
    assert (out / "final" / "iqlearn.json").exists()
    r = runner.invoke(app, ["eval", "--task", "arithmetic", "--reward-from", str(out / "final"), "--num-prompts", "10",
                            "--output", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["extracted_reward"]["n"] == 20 and "spearman" in metrics["extracted_reward"]
    r = runner.invoke(app, ["train", "iqlearn", "--data", str(data), "--lam", "-1", "--output-dir", str(out)])
    assert r.exit_code == 2 and "lam" in r.output
    r = runner.invoke(app, ["eval", "--task", "arithmetic"])
    assert r.exit_code == 2 and "--model" in r.output



@pytest.mark.slow
def test_bench_parts_run_at_toy_size(tmp_path, monkeypatch):
    import benchmarks.iqlearn as bench

    cost = bench.measure_cost(batch_size=4, blocks=2, steps_per_block=1)
    assert cost["mle_ms"] > 0 and cost["iqlearn_ms"] > 0 and len(cost["block_ms"]["mle"]) == 2
    monkeypatch.setattr(bench, "SETTINGS", {"arithmetic": {"main": (2, 16), "small": (2, 8), "fewdemo": (2, 8)}})
    results = bench.run_bench(tmp_path, ["sweep", "temperature", "fewdemo"], ["arithmetic"], [0.0, 0.1], [0],
                              best_lam=0.1, alpha=0.25, eval_prompts=10, eval_every=1, log=lambda *a: None)
    assert len(results["sweep"]) == 5  # 2 λ main, 2 λ small, 1 online
    assert [c["step"] for c in results["fewdemo"][0]["curve"]] == [1, 2]
    assert len(results["temperature"]) == 4
    assert "IQLearn λ = 0.1, online α = 0.25" in (tmp_path / "sweep.md").read_text()
    assert (tmp_path / "iqlearn_tradeoff.png").exists() and (tmp_path / "iqlearn_fewdemo.png").exists()
    results = bench.run_bench(tmp_path, ["sweep"], ["arithmetic"], [0.05], [0], best_lam=0.1, alpha=0.0,
                              eval_prompts=10, eval_every=1, log=lambda *a: None, sweep_small=False,
                              sweep_gamma=0.9)
    assert len(results["sweep"]) == 6  # one main-setting row added, no small-data rows re-run
    assert [(r["setting"], r["gamma"]) for r in results["sweep"] if r["lam"] == 0.05] == [("main", 0.9)]
    assert "IQLearn λ = 0.05, γ = 0.9" in (tmp_path / "sweep.md").read_text()


def test_bench_rejects_unknown_fewdemo_lr_schedule(tmp_path):
    r = CliRunner().invoke(app, ["bench", "iqlearn", "--parts", "fewdemo", "--fewdemo-lr-schedule", "step",
                                 "--output-dir", str(tmp_path)])
    assert r.exit_code == 2 and "--fewdemo-lr-schedule" in r.output and "constant" in r.output
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_bench_fewdemo_flags_reach_the_run(tmp_path):
    """--fewdemo-demos/-steps/-lr-schedule set the few-demo run; each curve point carries a held-out NLL."""
    runner = CliRunner()
    r = runner.invoke(app, ["bench", "iqlearn", "--parts", "fewdemo", "--tasks", "arithmetic", "--seeds", "0",
                            "--fewdemo-lams", "0", "--fewdemo-demos", "8", "--fewdemo-steps", "2",
                            "--fewdemo-lr-schedule", "constant", "--eval-every", "1", "--eval-prompts", "10",
                            "--output-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    (row,) = json.loads((tmp_path / "results.json").read_text())["fewdemo"]
    assert (row["demos"], row["steps"], row["lr_schedule"], row["lam"]) == (8, 2, "constant", 0.0)
    assert [c["step"] for c in row["curve"]] == [1, 2] and len(row["train_nll"]) == 2
    assert all(math.isfinite(c["heldout_nll"]) and c["heldout_nll"] > 0 for c in row["curve"])
    table = (tmp_path / "fewdemo.md").read_text()
    assert "8 × 2 (constant)" in table and "MLE" in table


def test_heldout_nll_is_the_mle_loss_on_eval_demonstrations(tokenizer, tiny_model):
    from benchmarks.iqlearn import heldout_nll
    from preftune.data import collate_demos
    from preftune.rollout import model_logits

    task = get_task("arithmetic")
    batch = collate_demos(tokenizer, task.demonstrations("eval", 6, 3), 96)
    tiny_model.train()
    with torch.no_grad():
        logits = model_logits(tiny_model, batch.input_ids, batch.attention_mask)[:, :-1]
    expected = sft_loss(logits, batch.input_ids[:, 1:], batch.response_mask[:, 1:]).item()
    assert heldout_nll(task, tiny_model, tokenizer, 6, 3) == pytest.approx(expected, rel=1e-5)
    assert tiny_model.training  # the mode is restored

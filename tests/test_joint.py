"""Joint learning from choices: epistemic heads, exploration schemes, training, CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from preftune.cli import app
from preftune.config import ConfigError, apply_overrides
from preftune.epistemic import EnsembleHeads, Epinet, learnable_l2, set_feature_scaling
from preftune.losses import choice_loss
from preftune.methods.joint import (
    EXPLORATION_SCHEMES,
    JointConfig,
    JointModel,
    information_gain,
    select_candidates,
    train_joint,
)
from preftune.suite.joint_comparison import posterior_spread
from preftune.tasks.population import PopulationTask, response_space_ids
from preftune.tiny import build_population_policy, build_population_tokenizer


@pytest.fixture(scope="module")
def setup():
    task, tokenizer = PopulationTask(), build_population_tokenizer()
    return task, tokenizer, response_space_ids(tokenizer, task.all_prompts(), task.responses)


def _config(tmp_path, **kw) -> JointConfig:
    base = dict(output_dir=str(tmp_path / "joint"), progress=False, steps=1, queries_per_round=6, updates_per_round=1,
                batch_size=8)
    return JointConfig(**(base | kw))


@pytest.mark.parametrize("head_cls", [Epinet, EnsembleHeads])
def test_prior_is_fixed_and_the_index_changes_the_output(head_cls):
    head = head_cls(16, prior_scale=1.0, seed=0)
    assert all(not p.requires_grad for p in head.prior.parameters())
    prior_before = [p.clone() for p in head.prior.parameters()]
    features = torch.randn(5, 16)
    set_feature_scaling(head, features)
    z = head.sample_index(2, torch.Generator().manual_seed(0))
    out = head(features, z)
    assert out.shape == (2, 5)
    assert not torch.allclose(out[0], out[1])  # a different index is a different posterior sample
    # a training step moves the learnable part only
    optimizer = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=0.1)
    loss = choice_loss(head(features, z).view(-1, 5), torch.zeros(2, dtype=torch.long)) + learnable_l2(head)
    loss.backward()
    assert all(p.grad is None for p in head.prior.parameters())
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(prior_before, head.prior.parameters()))
    assert not torch.allclose(head(features, z), out)
    # prior scale 0 and an untrained (zero-initialised) learnable part: no uncertainty at all
    assert torch.count_nonzero(head_cls(16, prior_scale=0.0)(features, z)) == 0


def test_information_gain_hand_cases():
    agree = torch.zeros(8, 2)  # every posterior sample says 50/50: nothing to learn from the answer
    assert float(information_gain(agree)) == pytest.approx(0.0, abs=1e-6)
    split = torch.tensor([[10.0, -10.0], [-10.0, 10.0]])  # samples sure but opposite: one bit (ln 2)
    assert float(information_gain(split)) == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-4)


@pytest.mark.parametrize("scheme", EXPLORATION_SCHEMES)
@pytest.mark.parametrize("k", [2, 3])
def test_each_scheme_returns_distinct_valid_candidates(scheme, k):
    generator = torch.Generator().manual_seed(0)
    utilities = torch.linspace(-5, 0, 64)

    def sample(n):
        return utilities + torch.randn(n, 64, generator=generator)

    for _ in range(5):
        picked = select_candidates(scheme, utilities, sample, k, generator)
        assert len(picked) == k == len(set(picked)) and all(0 <= i < 64 for i in picked)
    # double-ts resamples when its samples agree, then falls back to a new candidate
    assert len(set(select_candidates("double-ts", utilities, lambda n: utilities.expand(n, -1), 2, generator))) == 2
    with pytest.raises(ConfigError, match="passive"):
        select_candidates("greedy", utilities, sample, 2, generator)


@pytest.mark.parametrize("scheme", ["infomax", "ts", "double-ts"])
def test_pooled_schemes_pick_among_the_policy_samples(scheme):
    generator = torch.Generator().manual_seed(0)
    utilities = torch.full((64,), -50.0)
    utilities[[3, 17, 40, 41, 60]] = 0.0  # the policy only ever proposes these five

    junk = utilities < -1

    def sample(n):  # the posterior favours, and is most unsure about, responses the policy never proposes
        return utilities + 100.0 * junk + torch.randn(n, 64, generator=generator) * (3.0 * junk + 0.1)

    for k in (2, 3):
        picked = select_candidates(scheme, utilities, sample, k, generator, posterior_pick="sample", pool=5)
        assert len(picked) == k == len(set(picked)) and set(picked) <= {3, 17, 40, 41, 60}
    assert not set(select_candidates(scheme, utilities, sample, 2, generator)) <= {3, 17, 40, 41, 60}


@pytest.mark.parametrize("scheme,pool", [(s, 0) for s in EXPLORATION_SCHEMES] + [("infomax", 4), ("double-ts", 4)])
def test_each_scheme_charges_the_ledger_for_every_query(scheme, pool, tmp_path, setup):
    task, tokenizer, _ = setup
    result = train_joint(_config(tmp_path, explore=scheme, steps=2, queries_per_round=3, candidate_pool=pool), task,
                         tokenizer=tokenizer)
    assert result.extra["ledger"].by_tag() == {"joint": 6} and len(result.extra["records"].rows) == 6
    for prompt, shown, chosen in result.extra["records"].rows:
        assert prompt < 4 and len(set(shown)) == 2 and chosen in (0, 1)
    assert [h["queries"] for h in result.history] == [3, 6]


def test_training_runs_with_the_ensemble_head(tmp_path, setup):  # its offsets were once a non-contiguous view
    task, tokenizer, _ = setup
    result = train_joint(_config(tmp_path, explore="double-ts", uncertainty="ensemble", steps=1, queries_per_round=4),
                         task, tokenizer=tokenizer)
    assert result.extra["ledger"].total == 4 and result.history[-1]["head_nll"] > 0


def test_resume_continues_the_ledger_and_the_records(tmp_path, setup):
    task, tokenizer, _ = setup
    straight = train_joint(_config(tmp_path / "a", steps=3, queries_per_round=2), task, tokenizer=tokenizer)
    train_joint(_config(tmp_path / "b", steps=2, queries_per_round=2, save_every=1), task, tokenizer=tokenizer)
    resumed = train_joint(_config(tmp_path / "b", steps=3, queries_per_round=2, resume=True), task,
                          tokenizer=tokenizer)
    assert resumed.extra["ledger"].total == 6 and resumed.extra["records"].rows == straight.extra["records"].rows
    assert resumed.history[-1]["kl"] == pytest.approx(straight.history[-1]["kl"], abs=1e-5)


def test_query_budget_is_enforced(tmp_path, setup):
    from preftune.feedback import BudgetExceeded

    task, tokenizer, _ = setup
    with pytest.raises(BudgetExceeded):
        train_joint(_config(tmp_path, steps=2, query_budget=8), task, tokenizer=tokenizer)


def test_uncertainty_shrinks_on_the_queried_prompt(setup):
    task, tokenizer, ids = setup
    policy = build_population_policy(tokenizer, seed=0)
    model = JointModel(policy, Epinet(policy.config.hidden_size, index_dim=8, seed=1))
    with torch.no_grad():
        features = model(ids.flatten(0, 1))[1]
    set_feature_scaling(model.head, features)
    features = features.view(6, 64, -1)
    before = posterior_spread(model.head, features)
    rng, generator = random.Random(0), torch.Generator().manual_seed(0)
    prompt = task.split_prompts("train")[0]
    rows = []
    for _ in range(400):  # many answered queries about prompt 0 only
        shown = rng.sample(range(64), 2)
        rows.append((shown, task.population.choose(prompt, [task.responses[i] for i in shown], rng)))
    optimizer = torch.optim.Adam([p for p in model.head.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(150):
        batch = [rows[i] for i in torch.randint(len(rows), (64,), generator=generator).tolist()]
        logps, _ = model(torch.stack([ids[0, shown] for shown, _ in batch]).flatten(0, 1))
        offsets = model.head(torch.cat([features[0, shown] for shown, _ in batch]),
                             model.head.sample_index(4, generator))
        loss = choice_loss((logps.detach()[None] + offsets).view(-1, 2), torch.tensor([c for _, c in batch]).repeat(4))
        optimizer.zero_grad()
        (loss + 1e-3 * learnable_l2(model.head)).backward()
        optimizer.step()
    after = posterior_spread(model.head, features)
    queried, never = after[0].mean() / before[0].mean(), after[4:].mean() / before[4:].mean()
    assert queried < 0.8 and queried < never  # narrower where asked, wider on the never-queried prompts


def test_joint_training_moves_the_policy_towards_the_population(tmp_path, setup):
    task, tokenizer, _ = setup
    config = _config(tmp_path, explore="passive", steps=8, queries_per_round=64, updates_per_round=10,
                     batch_size=64, lr=3e-3)
    result = train_joint(config, task, tokenizer=tokenizer)
    first, last = result.history[0], result.history[-1]
    assert last["kl"] < first["kl"] - 0.3
    assert last["reverse_kl"] < first["reverse_kl"]
    assert (tmp_path / "joint" / "final" / "epistemic_head.safetensors").exists()


def test_config_checks():
    with pytest.raises(ConfigError, match="double-ts"):
        apply_overrides(JointConfig(), {"explore": "greedy"})
    with pytest.raises(ConfigError, match="'model' must be 'tiny' for joint on the population task"):
        train_joint(apply_overrides(JointConfig(), {"model": "gpt2"}))  # another model learns on your prompts
    with pytest.raises(ConfigError, match="candidates"):
        apply_overrides(JointConfig(), {"candidates": 1})
    with pytest.raises(ConfigError, match="candidate_pool"):
        apply_overrides(JointConfig(), {"candidates": 3, "candidate_pool": 2})


def test_cli_train_joint_smoke(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    r = runner.invoke(app, ["train", "joint", "--task", "population", "--explore", "ts", "--steps", "2",
                            "--queries-per-round", "4", "--updates-per-round", "1", "--batch-size", "8",
                            "--output-dir", str(out), "--progress", "false"])
    assert r.exit_code == 0, r.output
    assert "queries 8" in r.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"kl", "tv", "mass_type1", "queries", "choice_nll"} <= set(rows[-1])
    r = runner.invoke(app, ["train", "joint", "--task", "arithmetic", "--output-dir", str(out)])
    assert r.exit_code == 2 and "population" in r.output
    r = runner.invoke(app, ["train", "joint", "--explore", "greedy", "--output-dir", str(out)])
    assert r.exit_code == 2 and "infomax" in r.output


def test_cli_bench_joint_runs_the_chosen_schemes_and_names_unknown_ones(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["bench", "joint", "--quick", "--schemes", "passive,boltzmann", "--output-dir",
                            str(tmp_path)])
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["curves"]) == {"passive", "boltzmann"}
    assert "boltzmann" in results["queries_to_match_passive"]
    r = runner.invoke(app, ["bench", "joint", "--quick", "--schemes", "passive,greedy", "--output-dir",
                            str(tmp_path / "bad")])
    assert r.exit_code == 2 and "greedy" in r.output and "double-ts (sample)" in r.output


def test_grad_accum_splits_each_step_into_micro_batches(monkeypatch, tmp_path):
    """Each optimizer step's batch of choices is split into grad_accum micro-batches (it was always one)."""
    from preftune.methods import joint as joint_module

    seen: list[int] = []
    forward = joint_module.JointModel.forward

    def counting(self, input_ids, index=None, head_inputs=None):
        if index is not None:
            seen.append(input_ids.shape[0])
        return forward(self, input_ids, index, head_inputs)

    monkeypatch.setattr(joint_module.JointModel, "forward", counting)
    cfg = JointConfig(steps=1, queries_per_round=4, updates_per_round=1, batch_size=8, grad_accum=2,
                      progress=False, output_dir=str(tmp_path))
    train_joint(cfg)
    assert seen == [4 * cfg.candidates, 4 * cfg.candidates]  # two micro-batches of 4 choice sets

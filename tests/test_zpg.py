"""ZPG and ZBCPG: the links and their inverses, the estimator's formula, that the preference-based value difference
estimates the true one (the place bugs hide), query counts, learning in the GridWorld, block perturbations, the LM
version and the CLI."""

import json
import math
import subprocess
import sys

import pytest
import torch

from preftune.config import ConfigError
from preftune.feedback import (
    LINKS,
    Annotator,
    Population,
    QueryLedger,
    inverse_preference_link,
    preference_link,
    repeated_preference_shares,
)
from preftune.losses import preference_value_difference, zpg_gradient
from preftune.methods.zpg import (
    FlatParameters,
    ZPGConfig,
    draw_direction,
    train_zpg_gridworld,
    train_zpg_lm,
    zeroth_order_step,
)
from preftune.tasks.gridworld import GridWorld, return_utility


@pytest.mark.parametrize("link", LINKS)
def test_every_link_inverts(link):
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    p = preference_link(x, link)
    assert torch.all(p[1:] > p[:-1])  # strictly increasing
    assert float(preference_link(torch.tensor(0.0), link)) == pytest.approx(0.5)
    assert torch.allclose(preference_link(-x, link), 1 - p)
    assert torch.allclose(inverse_preference_link(p, link), x, atol=1e-6)
    q = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    assert torch.allclose(preference_link(inverse_preference_link(q, link), link), q, atol=1e-9)


def test_zpg_gradient_by_hand():
    direction = torch.tensor([0.6, 0.0, -0.8, 0.0], dtype=torch.float64)  # unit norm, d = 4
    p_hat = torch.tensor([0.5, 1 / (1 + math.exp(-1.0))])  # σ⁻¹: 0 and 1, mean 0.5
    g = zpg_gradient(p_hat, direction, mu=0.5)
    assert torch.allclose(g, (4 / 0.5) * 0.5 * direction)
    # clipping: shares of 0 and 1 become σ⁻¹(eps) and σ⁻¹(1 − eps), finite and opposite
    assert float(preference_value_difference(torch.tensor([1.0, 1.0]), eps=0.1)) == pytest.approx(math.log(9))
    assert float(preference_value_difference(torch.tensor([0.0, 1.0]), eps=0.1)) == pytest.approx(0.0)
    # Weibull link: σ⁻¹(p) = sign(p − ½)(−log(1 − |2p − 1|))^{1/k}
    p = torch.tensor([0.8])
    assert float(zpg_gradient(p, direction[:1] / 0.6, mu=2.0, link="weibull")) == pytest.approx(
        0.5 * (-math.log(1 - 0.6)) ** 0.5)
    with pytest.raises(ValueError, match="eps"):
        zpg_gradient(p, direction, mu=1.0, eps=0.6)
    with pytest.raises(ValueError, match="mu"):
        zpg_gradient(p, direction, mu=0.0)


def test_repeated_shares_count_every_query_and_follow_the_annotator():
    ledger = QueryLedger()
    probs = torch.tensor([0.1, 0.5, 0.9])
    shares = repeated_preference_shares(probs, 20_000, torch.Generator().manual_seed(0), ledger, "zpg")
    assert ledger.by_tag() == {"zpg": 60_000}
    assert torch.allclose(shares, probs.double(), atol=0.015)
    with pytest.raises(Exception, match="budget"):
        repeated_preference_shares(probs, 2, ledger=QueryLedger(budget=5))
    annotator = Annotator(return_utility, temperature=2.0, flip_prob=0.1)
    margins = torch.tensor([-1.0, 0.0, 3.0])
    expected = [annotator.prob_first_preferred("", float(m), 0.0) for m in margins]
    assert torch.allclose(annotator.prob_from_margins(margins), torch.tensor(expected, dtype=torch.float64))
    crowd = Population([annotator, Annotator(return_utility, link="weibull")], [0.25, 0.75])
    assert float(crowd.prob_from_margins(torch.tensor(1.0))) == pytest.approx(crowd.prob_first_preferred("", 1.0, 0.0))


def test_preference_value_difference_estimates_the_true_value_difference():
    """With many labels per pair, mean σ⁻¹(p̂) over many pairs is V(θ + μv) − V(θ): sign, link and scale right."""
    env = GridWorld()
    g = torch.Generator().manual_seed(0)
    theta = torch.zeros(16, 4, dtype=torch.float64)
    annotator = Annotator(return_utility, temperature=1.0)
    for _ in range(2):
        v = torch.randn(16, 4, dtype=torch.float64, generator=g)
        v /= v.norm()
        both = env.sample(torch.stack([theta, theta + 3.0 * v]), 20_000, g).returns
        p_hat = repeated_preference_shares(annotator.prob_from_margins(both[1] - both[0]), 2000, g)
        estimate = float(preference_value_difference(p_hat, eps=1e-3))
        true = float(env.value(theta + 3.0 * v) - env.value(theta))
        standard_error = float((both[1] - both[0]).std()) / math.sqrt(20_000)
        assert abs(estimate - true) < 4 * standard_error + 0.01


def _basis_estimates(num_pairs: int, num_labels: int, mu: float, seed: int = 3):
    """ZPG estimates at a fixed θ averaged over an orthonormal basis of 64 directions (each one uniform on the
    sphere, and Σ_k v_k v_kᵀ = I, so the average is an unbiased, low-variance E_v): with exact value differences
    from the DP, and with N sampled trajectory pairs per direction judged by M annotators."""
    env = GridWorld()
    theta = 0.3 * torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, exact = env.value_and_gradient(theta)
    basis, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    perturbed = theta + mu * basis.T.reshape(64, 16, 4)
    exact_difference = env.value(perturbed) - env.value(theta)
    noise_free = sum(zpg_gradient(preference_link(exact_difference[k]), basis[:, k], mu) for k in range(64)) / 64
    g = torch.Generator().manual_seed(seed)
    returns = env.sample(torch.stack([theta.expand(64, 16, 4), perturbed]), num_pairs, g).returns
    shares = repeated_preference_shares(Annotator(return_utility).prob_from_margins(returns[1] - returns[0]),
                                        num_labels, g)
    sampled = sum(zpg_gradient(shares[k], basis[:, k], mu, eps=1e-3) for k in range(64)) / 64
    return exact.flatten(), noise_free, sampled


def _cos(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_expected_estimate_is_the_exact_gradient():
    """E_v[(d/μ)·(V(θ+μv) − V(θ))·v] → ∇V as μ → 0; from sampled preferences (N = 1000 pairs per direction,
    M = 100 labels per pair) the estimate still points along the DP gradient."""
    exact, noise_free, _ = _basis_estimates(1, 1, mu=0.01)
    assert _cos(noise_free, exact) > 0.999
    exact, noise_free, sampled = _basis_estimates(1000, 100, mu=2.0)
    assert _cos(noise_free, exact) > 0.95  # the smoothing bias of μ = 2 is small
    assert _cos(sampled, exact) > 0.7


@pytest.mark.slow
def test_expected_estimate_aligns_closely_with_many_pairs():
    exact, noise_free, sampled = _basis_estimates(8000, 200, mu=2.0)
    assert _cos(sampled, noise_free) > 0.95
    assert _cos(sampled, exact) > 0.9


def test_directions_are_unit_and_zbcpg_touches_one_block():
    g = torch.Generator().manual_seed(0)
    v, block = draw_direction(64, ZPGConfig(), g)
    assert block == slice(0, 64) and float(v.norm()) == pytest.approx(1.0)
    cfg = ZPGConfig(algorithm="zbcpg", block_size=4, lr=1.0, mu=0.5)
    blocks = set()
    for _ in range(30):
        v, block = draw_direction(64, cfg, g)
        assert v.numel() == 4 and float(v.norm()) == pytest.approx(1.0) and block.start % 4 == 0
        blocks.add(block.start)
    assert len(blocks) > 5
    # one ZBCPG step changes exactly one state's four logits
    env = GridWorld()
    theta = torch.zeros(16, 4, dtype=torch.float64)
    before = theta.clone()
    annotator = Annotator(return_utility)
    zeroth_order_step(FlatParameters([theta]), cfg, lambda: env.sample(theta, 16, g).returns,
                      lambda base, perturbed: repeated_preference_shares(annotator.prob_from_margins(perturbed - base),
                                                                         4, g), g)
    changed = (theta != before).flatten().nonzero().flatten()
    assert 0 < changed.numel() <= 4 and len(set((changed // 4).tolist())) == 1


def test_gridworld_zpg_counts_n_m_queries_per_iteration_and_improves_the_true_return(tmp_path):
    cfg = ZPGConfig(steps=300, batch_size=16, annotators_per_pair=4, mu=4.0, lr=0.1, seed=0, output_dir=str(tmp_path),
                    progress=False)
    run = train_zpg_gridworld(cfg)
    assert [h["queries"] for h in run.history] == [16 * 4 * (i + 1) for i in range(300)]
    assert run.extra["ledger"].by_tag() == {"zpg": 300 * 64}
    start = GridWorld().value(torch.zeros(16, 4))
    # from the uniform policy (−0.85) either to the goal (~1.3) or, on unlucky seeds, to the safe local optimum of
    # never approaching the hazards (−0.4): both are real gains of the exact return
    assert run.history[-1]["true_return"] > float(start) + 0.3
    assert run.history[-1]["grad_norm"] < run.history[0]["grad_norm"]


def test_query_budget_stops_the_run(tmp_path):
    with pytest.raises(Exception, match="budget"):
        train_zpg_gridworld(ZPGConfig(steps=10, batch_size=8, annotators_per_pair=2, query_budget=40,
                                      output_dir=str(tmp_path), progress=False))


def _sft_like_model(tokenizer):
    from preftune.tiny import TinySpec, build_tiny_model

    return build_tiny_model("tiny", tokenizer, TinySpec(hidden_size=32, num_layers=1, num_heads=2), seed=0)


@pytest.mark.parametrize("perturb,param_filter", [("all", r"layers\.0\.mlp\.down_proj"), ("lora", "")])
def test_lm_zpg_step_changes_only_the_chosen_parameters(tmp_path, tokenizer, perturb, param_filter):
    from preftune.tasks import get_task

    task = get_task("preference-language")
    model = _sft_like_model(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = ZPGConfig(output_dir=str(tmp_path), steps=2, batch_size=4, annotators_per_pair=3, max_new_tokens=6,
                    perturb=perturb, param_filter=param_filter, lr=1e-3, mu=0.1, progress=False,
                    mixed_precision="no")
    result = train_zpg_lm(cfg, task.prompts("train", 20), task.reward, model=model, tokenizer=tokenizer)
    assert [h["queries"] for h in result.history] == [12, 24]
    changed = {n for n, p in result.model.named_parameters() if n in before and not torch.equal(p, before[n])}
    if perturb == "all":
        assert changed == {"model.layers.0.mlp.down_proj.weight"}
    else:  # the base weights never move (peft renames them, so compare their values); the new adapters do
        lora = {n: p for n, p in result.model.named_parameters() if "lora_" in n}
        base = sorted((tuple(p.shape), float(p.detach().sum())) for n, p in result.model.named_parameters()
                      if "lora_" not in n)
        assert base == sorted((tuple(p.shape), float(p.sum())) for p in before.values())
        assert any(float(p.detach().abs().sum()) > 0 for n, p in lora.items() if "lora_B" in n)  # lora_B starts at zero
        assert result.history[0]["perturbed_dim"] == sum(p.numel() for p in lora.values())


def test_lm_config_errors_name_the_field(tmp_path, tokenizer):
    cfg = ZPGConfig(output_dir=str(tmp_path), steps=1, batch_size=2, param_filter="no_such_weight",
                    progress=False)
    with pytest.raises(ConfigError, match="param_filter"):
        train_zpg_lm(cfg, ["about sun:"], lambda p, r: 0.0, model=_sft_like_model(tokenizer), tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="perturb"):

        ZPGConfig(perturb="lora", param_filter="x")


def test_cli_train_zpg_and_zbcpg_on_gridworld(tmp_path):
    from typer.testing import CliRunner

    from preftune.cli import app

    runner = CliRunner()
    for method in ("zpg", "zbcpg"):
        out = tmp_path / method
        r = runner.invoke(app, ["train", method, "--task", "gridworld", "--steps", "5", "--batch-size", "4",
                                "--annotators-per-pair", "2", "--output-dir", str(out)])
        assert r.exit_code == 0, r.output
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 5 and rows[-1]["queries"] == 40 and "true_return" in rows[-1]
        assert (out / "final" / "policy.safetensors").exists() and (out / "config.yaml").exists()
    r = runner.invoke(app, ["train", "zpg", "--task", "gridworld", "--mu", "-1", "--output-dir", str(tmp_path / "x")])
    assert r.exit_code != 0 and "mu" in r.output
    r = runner.invoke(app, ["train", "zpg", "--task", "gridworld", "--steps", "5", "--batch-size", "4",
                            "--query-budget", "20", "--output-dir", str(tmp_path / "z")])
    assert r.exit_code == 2 and "budget" in r.output.lower() and "Traceback" not in r.output


def test_gridworld_run_resumes_from_a_checkpoint_to_the_same_policy(tmp_path):
    """The tabular run is on the shared loop now: a run stopped after a checkpoint resumes to the same policy,
    ledger and exact returns (the policy and the sampling generator are checkpoint state)."""
    import shutil

    from safetensors.torch import load_file

    full = train_zpg_gridworld(ZPGConfig(output_dir=str(tmp_path / "full"), steps=6, save_every=2, keep_checkpoints=5,
                                         batch_size=4, annotators_per_pair=2, progress=False))
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-4", cut / "checkpoint-4")  # as if killed after iteration 4
    resumed = train_zpg_gridworld(ZPGConfig(output_dir=str(cut), steps=6, save_every=2, batch_size=4,
                                            annotators_per_pair=2, progress=False, resume=True))
    a, b = (load_file(d / "final" / "policy.safetensors")["logits"] for d in (tmp_path / "full", cut))
    assert torch.equal(a, b)
    assert resumed.extra["ledger"].total == full.extra["ledger"].total == 6 * 8
    assert [h["true_return"] for h in resumed.history] == [h["true_return"] for h in full.history[4:]]


def test_lm_defaults_keep_the_final_norm_block_only_when_the_user_chose_no_perturbation():
    from preftune.config import apply_overrides
    from preftune.inputs import zpg_lm_defaults

    assert zpg_lm_defaults(8, set())["param_filter"]
    for chosen in ({"perturb"}, {"param_filter"}):
        defaults = zpg_lm_defaults(8, chosen)
        assert "param_filter" not in defaults
        cfg = apply_overrides(ZPGConfig(), {**defaults, "perturb": "lora"})  # no longer a field conflict
        assert cfg.param_filter == "" and cfg.perturb == "lora"


@pytest.mark.slow
def test_cli_train_zpg_on_preference_language_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "preftune", "train", "zpg", "--task", "preference-language",
                           "--steps", "2", "--batch-size", "4", "--output-dir", str(tmp_path), "--progress", "false"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "final").exists()


def test_gridworld_comparison_runs_at_a_budget_of_fewer_than_eight_iterations():
    from preftune.suite.gridworld import gridworld_comparison

    out = gridworld_comparison(256, seeds=1, slip=0.2, points=2)  # ZPG: 4 iterations of 64 queries
    assert set(out["methods"]) == {"zpg", "zbcpg", "dpo", "rm+ppo"}
    assert out["methods"]["zpg"]["grad_norm"]["iterations"][0] == 1


def test_lm_zpg_resumes_from_a_checkpoint_to_the_same_weights(tmp_path, tokenizer):
    """ZPG has no optimizer, so its checkpoint holds the LM's weights as a state object; a resumed run ends where an
    uninterrupted one does."""
    import shutil

    from preftune.tasks import get_task

    task = get_task("preference-language")
    prompts = task.prompts("train", 20)

    def run(out, **kw):
        cfg = ZPGConfig(output_dir=str(out), steps=4, save_every=2, batch_size=4, annotators_per_pair=2,
                        max_new_tokens=6, param_filter=r"layers\.0\.mlp\.down_proj", lr=1e-2, mu=0.5,
                        progress=False, mixed_precision="no", **kw)
        return train_zpg_lm(cfg, prompts, task.reward, model=_sft_like_model(tokenizer), tokenizer=tokenizer)

    full = run(tmp_path / "full", keep_checkpoints=3)
    (tmp_path / "cut").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "cut" / "checkpoint-2")
    resumed = run(tmp_path / "cut", resume=True)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.extra["ledger"].total == full.extra["ledger"].total == 4 * 8

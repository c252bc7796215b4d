import math

import pytest
import torch

from preftune.feedback import inverse_preference_link, preference_link
from preftune.losses import (
    bt_loss,
    dpo_loss,
    gae_advantages,
    grpo_advantages,
    kl_k1,
    kl_k3,
    kto_loss,
    masked_whiten,
    ppo_clip_loss,
    rloo_advantages,
    sequence_logprobs,
    sft_loss,
    token_entropy,
    token_logprobs,
    value_loss,
)


def test_sequence_logprobs_hand_case():
    # two tokens of vocabulary 2; logits[:, t] scores labels[:, t]
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # p = [.5,.5], [.75,.25]
    labels = torch.tensor([[1, 0]])
    full = sequence_logprobs(logits, labels, torch.tensor([[1, 1]]))
    assert full.item() == pytest.approx(math.log(0.5) + math.log(0.75))
    only_second = sequence_logprobs(logits, labels, torch.tensor([[0, 1]]))
    assert only_second.item() == pytest.approx(math.log(0.75))


def test_token_logprobs_temperature_matches_scaled_softmax():
    logits = torch.randn(2, 3, 5)
    labels = torch.randint(0, 5, (2, 3))
    expected = (logits / 2.0).log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, labels, temperature=2.0), expected, atol=1e-6)


def test_sft_loss_is_mean_nll_over_masked_tokens():
    logits = torch.randn(2, 4, 7)
    labels = torch.randint(0, 7, (2, 4))
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    lp = logits.log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1)
    assert sft_loss(logits, labels, mask).item() == pytest.approx(-(lp[mask.bool()]).mean().item(), rel=1e-5)


def test_bt_loss_hand_case():
    loss = bt_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    expected = (-math.log(1 / (1 + math.exp(-1))) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected)


def test_dpo_loss_hand_case_and_label_smoothing():
    args = [torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])]
    h = 0.5 * ((-1 + 2) - (-3 + 2))  # beta * margin = 1.0
    assert dpo_loss(*args, beta=0.5)[0].item() == pytest.approx(math.log(1 + math.exp(-h)))
    eps = 0.2
    expected = (1 - eps) * math.log(1 + math.exp(-h)) + eps * math.log(1 + math.exp(h))
    assert dpo_loss(*args, beta=0.5, label_smoothing=eps)[0].item() == pytest.approx(expected)


def test_dpo_loss_at_reference_is_log2():
    z = torch.zeros(3)
    assert dpo_loss(z, z, z, z)[0].item() == pytest.approx(math.log(2))


def test_kto_loss_hand_case_weights_and_clamped_reference_point():
    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    policy, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.5])  # r = [0.5, -0.5]
    desirable = torch.tensor([True, False])
    kl_policy, kl_ref = torch.tensor([-3.0, -2.0]), torch.tensor([-3.2, -2.4])  # z0 = mean(0.2, 0.4) = 0.3
    loss, stats = kto_loss(policy, ref, desirable, kl_policy, kl_ref, beta=0.5, desirable_weight=2.0,
                           undesirable_weight=1.0)
    expected = (2.0 * (1 - sigmoid(0.5 * (0.5 - 0.3))) + 1.0 * (1 - sigmoid(0.5 * (0.3 + 0.5)))) / 2
    assert loss.item() == pytest.approx(expected)
    assert stats["kl"].item() == pytest.approx(0.3)
    assert stats["chosen_rewards"].item() == pytest.approx(0.25) and stats["rejected_rewards"].item() == (
        pytest.approx(-0.25))
    assert stats["chosen_logps"].item() == pytest.approx(-1.0)
    # a negative KL estimate is clamped to 0 (TRL's clamp(min=0)), and no gradient flows through it
    kl_policy = torch.tensor([-4.0, -4.0], requires_grad=True)
    loss, stats = kto_loss(policy, ref, desirable, kl_policy, kl_ref, beta=0.5)
    assert stats["kl"].item() == 0.0
    assert loss.item() == pytest.approx(((1 - sigmoid(0.25)) + (1 - sigmoid(0.25))) / 2)
    assert not loss.requires_grad or torch.autograd.grad(loss, kl_policy, allow_unused=True)[0] is None
    # a batch of desirable rows only has no rejected diagnostics
    assert "rejected_rewards" not in kto_loss(policy, ref, torch.tensor([True, True]), kl_policy, kl_ref)[1]


@pytest.mark.parametrize("link", ["bradley-terry", "thurstone", "weibull"])
def test_links_are_symmetric_and_invertible(link):
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    p = preference_link(x, link)
    assert torch.allclose(preference_link(torch.zeros(1, dtype=torch.float64), link), torch.tensor([0.5],
                                                                                                 dtype=torch.float64))
    assert torch.allclose(p + preference_link(-x, link), torch.ones_like(x))
    assert torch.all(p[1:] > p[:-1])
    assert torch.allclose(inverse_preference_link(p, link), x, atol=1e-8)


def test_link_hand_values():
    one = torch.tensor(1.0, dtype=torch.float64)
    assert preference_link(one, "bradley-terry").item() == pytest.approx(1 / (1 + math.exp(-1)))
    assert preference_link(one, "thurstone").item() == pytest.approx(0.5 * (1 + math.erf(0.5)))
    assert preference_link(one, "weibull", shape=2.0).item() == pytest.approx(0.5 + 0.5 * (1 - math.exp(-1)))


def test_unknown_link_names_allowed_values():
    with pytest.raises(ValueError, match="bradley-terry"):
        preference_link(torch.zeros(1), "gumbel")


# ----------------------------------------------------------------------------------------------
# Online RL: advantages, clipped surrogate, GAE, value loss, KL estimators


def test_rloo_advantages_are_reward_minus_mean_of_the_others():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 5.0]])
    expected = torch.tensor([[1 - 9 / 3, 2 - 8 / 3, 3 - 7 / 3, 4 - 6 / 3],
                             [0 - 6 / 3, 0 - 6 / 3, 1 - 5 / 3, 5 - 1 / 3]])
    a = rloo_advantages(r)
    assert torch.allclose(a, expected, atol=1e-6)
    assert torch.allclose(a.sum(-1), torch.zeros(2), atol=1e-6)
    # equivalently k/(k−1)·(r − mean): the leave-one-out baseline is not the group mean
    assert torch.allclose(a, 4 / 3 * (r - r.mean(-1, keepdim=True)), atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.ones(3, 1))


def test_grpo_advantages_normalise_each_group_by_its_sample_std():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
    std = math.sqrt((1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 3)  # Bessel-corrected, as documented
    expected = torch.tensor([[-1.5, -0.5, 0.5, 1.5]]) / (std + 1e-4)
    a = grpo_advantages(r)
    assert torch.allclose(a[0], expected[0], atol=1e-6)
    assert torch.equal(a[1], torch.zeros(4)), "a group with equal rewards carries no signal"
    # rows are independent, and the advantage does not depend on the reward's scale or offset
    assert torch.allclose(grpo_advantages(10 * r + 3)[0], a[0], atol=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        grpo_advantages(torch.ones(3, 1))


def test_masked_whiten_over_the_mask_only():
    values = torch.tensor([[100.0, 1.0, 2.0, 3.0], [-50.0, 4.0, 5.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]])
    w = masked_whiten(values, mask)
    on = w[mask.bool()]
    assert on.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert (on**2).mean().item() == pytest.approx(1.0, abs=1e-4)  # population variance over masked entries
    assert torch.equal(w[~mask.bool()], torch.zeros(3))
    kept = masked_whiten(values, mask, shift_mean=False)[mask.bool()]
    assert kept.mean().item() == pytest.approx(3.0, abs=1e-5)  # mean of 1..5


def test_ppo_clip_loss_at_ratio_one_is_minus_mean_advantage_over_the_mask():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    logp = torch.randn(2, 4)
    adv = torch.tensor([[9.0, 1.0, 2.0, 9.0], [-1.0, 0.5, 0.5, 3.0]])
    loss, stats = ppo_clip_loss(logp, logp.clone(), adv, mask)
    clip_frac, approx_kl = stats["clip_frac"], stats["approx_kl"]
    assert loss.item() == pytest.approx(-(1 + 2 - 1 + 0.5 + 0.5 + 3) / 6)
    assert clip_frac.item() == 0.0 and approx_kl.item() == pytest.approx(0.0, abs=1e-7)
    # per-sequence advantages broadcast over the sequence's tokens
    seq, _ = ppo_clip_loss(logp, logp.clone(), torch.tensor([2.0, -1.0]), mask)
    assert seq.item() == pytest.approx(-(2 * 2 - 1 * 4) / 6)


@pytest.mark.parametrize("ratio, adv, clipped", [
    (1.5, 1.0, True),    # above 1+ε with A > 0: no incentive to push further, zero gradient
    (1.5, -1.0, False),  # above 1+ε with A < 0: the pessimistic (unclipped) term keeps the gradient
    (0.5, -1.0, True),   # below 1−ε with A < 0: clipped
    (0.5, 1.0, False),   # below 1−ε with A > 0: not clipped
    (1.1, 1.0, False),   # inside the trust region: never clipped
])
def test_ppo_clip_gradient_vanishes_exactly_where_the_clip_binds(ratio, adv, clipped):
    old = torch.zeros(1, 3)
    logp = torch.full((1, 3), math.log(ratio), requires_grad=True)
    mask = torch.ones(1, 3)
    loss, stats = ppo_clip_loss(logp, old, torch.tensor([adv]), mask, clip_range=0.2)
    clip_frac = stats["clip_frac"]
    loss.backward()
    if clipped:
        assert torch.equal(logp.grad, torch.zeros(1, 3))
        assert clip_frac.item() == 1.0
        assert loss.item() == pytest.approx(-adv * min(max(ratio, 0.8), 1.2))
    else:
        # d/dlogp of −A·ratio/3 per token
        assert torch.allclose(logp.grad, torch.full((1, 3), -adv * ratio / 3))
        assert clip_frac.item() == 0.0
        assert loss.item() == pytest.approx(-adv * ratio)


def test_ppo_clip_loss_ignores_masked_tokens():
    mask = torch.tensor([[0, 1, 1, 0]])
    old = torch.tensor([[0.0, -1.0, -2.0, 0.0]])
    logp = torch.tensor([[0.0, -0.9, -2.3, 0.0]], requires_grad=True)
    adv = torch.tensor([[0.0, 1.0, -0.5, 0.0]])
    base, base_stats = ppo_clip_loss(logp, old, adv, mask)
    junk_logp = logp.detach().clone()
    junk_logp[0, 0], junk_logp[0, 3] = 5.0, -30.0
    junk_adv = adv.clone()
    junk_adv[0, 0], junk_adv[0, 3] = 1e3, -1e3
    junk, junk_stats = ppo_clip_loss(junk_logp, old, junk_adv, mask)
    for x, y in zip([base, *base_stats.values()], [junk, *junk_stats.values()]):
        assert x.item() == pytest.approx(y.item())
    base.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 3] == 0
    # approx KL is the k3 estimate of KL(π_old ‖ π) on the old samples: (r − 1) − log r
    ratios = torch.exp(torch.tensor([0.1, -0.3]))
    assert base_stats["approx_kl"].item() == pytest.approx(((ratios - 1) - ratios.log()).mean().item(), rel=1e-5)


def _gae_case():
    # row 0: prompt (2 positions) | 3 response tokens | 1 pad;  row 1: 1 prompt position | 4 response tokens
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0]])
    rewards = torch.tensor([[7.0, 7.0, 0.1, -0.2, 1.0, 7.0], [7.0, 0.0, 0.3, 0.0, 2.0, 7.0]])
    values = torch.tensor([[5.0, 5.0, 0.5, 0.4, 0.3, 5.0], [5.0, 1.0, 0.8, 0.6, 0.4, 5.0]])
    return rewards, values, mask


def test_gae_lambda_one_is_reward_to_go_minus_value():
    rewards, values, mask = _gae_case()
    adv, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    m = mask.float()
    to_go = (rewards * m).flip(-1).cumsum(-1).flip(-1) * m
    assert torch.allclose(adv, to_go - values * m, atol=1e-6)
    assert torch.allclose(returns, to_go, atol=1e-6)  # Monte-Carlo returns are the value targets
    # discounted: Σ_l γ^l r_{t+l} − V_t
    adv_g, _ = gae_advantages(rewards, values, mask, gamma=0.5, lam=1.0)
    assert adv_g[0, 2].item() == pytest.approx(0.1 + 0.5 * -0.2 + 0.25 * 1.0 - 0.5)


def test_gae_lambda_zero_is_the_one_step_td_error():
    rewards, values, mask = _gae_case()
    adv, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.0)
    # δ_t = r_t + V_{t+1} − V_t, with V = 0 after the last response token (terminal)
    expected = torch.tensor([[0, 0, 0.1 + 0.4 - 0.5, -0.2 + 0.3 - 0.4, 1.0 - 0.3, 0],
                             [0, 0.0 + 0.8 - 1.0, 0.3 + 0.6 - 0.8, 0.0 + 0.4 - 0.6, 2.0 - 0.4, 0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(returns, (expected + values) * mask, atol=1e-6)
    # off the response everything is zero, whatever the rewards and values there
    assert torch.equal(adv[mask == 0], torch.zeros(int((mask == 0).sum())))


def test_value_loss_clipping_is_pessimistic():
    mask, ret, old = torch.ones(1, 1), torch.ones(1, 1), torch.zeros(1, 1)

    def loss_and_grad(v, clip=0.2):
        v = torch.tensor([[v]], requires_grad=True)
        loss = value_loss(v, old, ret, mask, clip_range=clip)
        loss.backward()
        return loss.item(), v.grad.item()

    # inside the clip range both terms agree: ½(V − R)²
    assert loss_and_grad(0.1) == pytest.approx((0.5 * 0.81, 0.1 - 1.0))
    # moved 0.5 towards the return, beyond ε: the clipped (worse) term is active and has no gradient
    assert loss_and_grad(0.5) == pytest.approx((0.5 * 0.8**2, 0.0))
    # moved away from the return beyond ε: the unclipped term is the larger one and keeps its gradient
    assert loss_and_grad(-0.5) == pytest.approx((0.5 * 1.5**2, -1.5))
    # no clipping
    assert loss_and_grad(0.5, clip=None) == pytest.approx((0.5 * 0.25, -0.5))
    assert loss_and_grad(0.5, clip=0.0) == pytest.approx((0.5 * 0.25, -0.5))
    # masked tokens do not count
    v = torch.tensor([[0.5, 100.0]])
    assert value_loss(v, torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[1, 0]]), None).item() == \
        pytest.approx(0.125)


def test_kl_estimators():
    g = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    assert torch.equal(kl_k1(logp, ref), logp - ref)
    assert torch.all(kl_k3(logp, ref) >= 0)
    assert torch.equal(kl_k3(logp, logp), torch.zeros(4, 6))
    assert kl_k3(torch.tensor(-1.0), torch.tensor(-2.0)).item() == pytest.approx(math.exp(-1) + 1 - 1)


def test_kl_estimators_are_unbiased_for_kl_policy_to_reference():
    # samples from π; both k1 and k3 estimate KL(π ‖ π_ref), not KL(π_ref ‖ π)
    pi = torch.tensor([0.98, 0.02])
    ref = torch.tensor([0.5, 0.5])
    kl_forward = (pi * (pi / ref).log()).sum().item()
    kl_reverse = (ref * (ref / pi).log()).sum().item()
    assert abs(kl_forward - kl_reverse) > 0.2  # the test can tell them apart
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(pi, 200_000, replacement=True, generator=g)
    logp, logr = pi.log()[x], ref.log()[x]
    assert kl_k1(logp, logr).mean().item() == pytest.approx(kl_forward, abs=0.02)
    assert kl_k3(logp, logr).mean().item() == pytest.approx(kl_forward, abs=0.02)


def test_token_entropy():
    logits = torch.zeros(1, 2, 8)
    logits[0, 1, 3] = 100.0
    h = token_entropy(logits)
    assert h[0, 0].item() == pytest.approx(math.log(8)) and h[0, 1].item() == pytest.approx(0.0, abs=1e-5)
    x = torch.randn(1, 1, 8)
    assert token_entropy(x, temperature=2.0).item() == pytest.approx(token_entropy(x / 2).item(), rel=1e-5)

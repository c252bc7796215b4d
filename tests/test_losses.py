import math

import pytest
import torch

from preftune.losses import (
    bt_loss,
    dpo_loss,
    inverse_preference_link,
    preference_link,
    sequence_logprobs,
    sft_loss,
    token_logprobs,
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
    assert dpo_loss(*args, beta=0.5).item() == pytest.approx(math.log(1 + math.exp(-h)))
    eps = 0.2
    expected = (1 - eps) * math.log(1 + math.exp(-h)) + eps * math.log(1 + math.exp(h))
    assert dpo_loss(*args, beta=0.5, label_smoothing=eps).item() == pytest.approx(expected)


def test_dpo_loss_at_reference_is_log2():
    z = torch.zeros(3)
    assert dpo_loss(z, z, z, z).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("link", ["logistic", "probit", "weibull"])
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
    assert preference_link(one, "logistic").item() == pytest.approx(1 / (1 + math.exp(-1)))
    assert preference_link(one, "probit").item() == pytest.approx(0.5 * (1 + math.erf(0.5)))
    assert preference_link(one, "weibull", shape=2.0).item() == pytest.approx(0.5 + 0.5 * (1 - math.exp(-1)))


def test_unknown_link_names_allowed_values():
    with pytest.raises(ValueError, match="logistic"):
        preference_link(torch.zeros(1), "gumbel")

import torch

from preftune.rollout import generate, model_logits, score_logprobs


def test_behaviour_logprobs_equal_rescoring(tiny_model, tokenizer):
    torch.manual_seed(0)
    r = generate(tiny_model, tokenizer, ["12+3=", "7+1="], max_new_tokens=6, samples_per_prompt=3)
    assert r.input_ids.shape[0] == 6 and r.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    rescored = score_logprobs(tiny_model, r.input_ids, r.attention_mask, r.response_mask)
    assert torch.allclose(rescored, r.logprobs, atol=1e-5)
    assert torch.all((r.logprobs != 0) <= r.labels_mask.bool())


def test_left_padding_does_not_change_logits(tiny_model):
    ids = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[0, 0, 5, 6, 7]])
    a = model_logits(tiny_model, ids, torch.ones_like(ids))[:, -1]
    b = model_logits(tiny_model, padded, torch.tensor([[0, 0, 1, 1, 1]]))[:, -1]
    assert torch.allclose(a, b, atol=1e-5)


def test_generation_stops_at_eos_and_masks_the_rest(tiny_model, tokenizer):
    with torch.no_grad():  # make eos overwhelmingly likely after the first token
        tiny_model.lm_head.weight[tokenizer.eos_token_id] *= 0
        tiny_model.model.norm.weight.zero_()
        tiny_model.lm_head.bias = None
    torch.manual_seed(0)
    r = generate(tiny_model, tokenizer, ["ab"] * 4, max_new_tokens=8, temperature=1.0)
    # with all logits zero the first token is uniform; every row ends within the budget and nothing after eos counts
    for row in range(4):
        resp = r.input_ids[row][r.response_mask[row].bool()].tolist()
        assert len(resp) <= 8
        if tokenizer.eos_token_id in resp:
            assert resp.index(tokenizer.eos_token_id) == len(resp) - 1


def test_greedy_is_deterministic_and_sampling_is_seeded(tiny_model, tokenizer):
    g1 = generate(tiny_model, tokenizer, ["1+2="], max_new_tokens=5, temperature=0)
    g2 = generate(tiny_model, tokenizer, ["1+2="], max_new_tokens=5, temperature=0)
    assert g1.texts == g2.texts
    torch.manual_seed(1)
    s1 = generate(tiny_model, tokenizer, ["1+2="] * 4, max_new_tokens=5)
    torch.manual_seed(1)
    s2 = generate(tiny_model, tokenizer, ["1+2="] * 4, max_new_tokens=5)
    assert s1.texts == s2.texts


def test_batching_does_not_change_samples_count(tiny_model, tokenizer):
    r = generate(tiny_model, tokenizer, ["a", "bb", "ccc"], max_new_tokens=4, samples_per_prompt=2, batch_size=4)
    assert len(r.texts) == 6 and r.input_ids.shape[0] == 6


def test_top_k_one_equals_greedy(tiny_model, tokenizer):
    greedy = generate(tiny_model, tokenizer, ["xy"], max_new_tokens=5, temperature=0)
    torch.manual_seed(5)
    topk = generate(tiny_model, tokenizer, ["xy"], max_new_tokens=5, temperature=1.0, top_k=1)
    assert greedy.texts == topk.texts


def test_behaviour_logprobs_are_those_of_the_filtered_distribution_sampled_from(tiny_model, tokenizer):
    """With top-k / top-p the behaviour log-prob is the one of the distribution the token was drawn from: top-k = 1
    draws with probability 1 (log-prob 0), and top-k = 3 puts at least the unfiltered probability on each token."""
    torch.manual_seed(0)
    one = generate(tiny_model, tokenizer, ["xy"] * 4, max_new_tokens=5, temperature=1.0, top_k=1)
    assert torch.all(one.logprobs[one.labels_mask.bool()] == 0)
    torch.manual_seed(1)
    three = generate(tiny_model, tokenizer, ["xy"] * 4, max_new_tokens=5, temperature=1.0, top_k=3)
    unfiltered = score_logprobs(tiny_model, three.input_ids, three.attention_mask, three.response_mask)
    mask = three.labels_mask.bool()
    assert torch.all(three.logprobs[mask] >= unfiltered[mask] - 1e-5)
    assert torch.any(three.logprobs[mask] > unfiltered[mask] + 1e-3)  # renormalised over the kept tokens

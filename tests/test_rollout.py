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


# ----------------------------------------------------------------------------------------------
# The LM head only at the scored positions: the same log-probs and gradients as the whole-vocabulary path


def _head_only_models(tokenizer):
    from preftune.models import LoraSettings, apply_lora
    from preftune.tiny import TinySpec, build_tiny_model

    spec = TinySpec(hidden_size=32, num_layers=2, num_heads=2)
    lora = apply_lora(build_tiny_model("tiny", tokenizer, spec, seed=2), LoraSettings(r=2, alpha=4))
    with torch.no_grad():  # LoRA's B starts at zero: make the adapters change the output
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return {"llama": build_tiny_model("tiny", tokenizer, spec, seed=0),
            "gpt2": build_tiny_model("tiny-gpt2", tokenizer, spec, seed=1), "lora": lora}


def _scored_batch():
    # a left-padded row, a right-padded row and a full one; the label mask is each row's response
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9], [5, 6, 7, 8, 9, 10, 0], [4, 5, 6, 7, 8, 9, 10]])
    attn = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    resp = torch.tensor([[0, 0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1]])
    return ids, attn, resp


def _full_head(model, ids, attn, resp, temperature):
    from preftune.losses import token_entropy, token_logprobs

    logits = model_logits(model, ids, attn)[:, :-1]
    mask = resp[:, 1:]
    return (token_logprobs(logits, ids[:, 1:], temperature) * mask,
            torch.logsumexp(logits.float() / temperature, -1) * mask,
            token_entropy(logits.detach(), temperature) * mask)


def test_head_at_scored_positions_equals_the_full_head_with_gradients(tokenizer, monkeypatch):
    import preftune.rollout as rollout

    ids, attn, resp = _scored_batch()
    for name, model in _head_only_models(tokenizer).items():
        assert rollout.lm_body_and_head(model) is not None, name  # the head-only path is the one taken
        for chunk in (rollout.HEAD_CHUNK_ELEMENTS, 3 * model.config.vocab_size):  # one chunk; checkpointed chunks
            monkeypatch.setattr(rollout, "HEAD_CHUNK_ELEMENTS", chunk)
            weights = [p for p in model.parameters() if p.requires_grad]
            want = _full_head(model, ids, attn, resp, 0.7)
            want_grads = torch.autograd.grad((want[0] * torch.arange(6.0)).sum() + want[1].sum(), weights)
            got = rollout.label_scores(model, ids, attn, resp[:, 1:].bool(), 0.7, entropy=True)
            got_grads = torch.autograd.grad((got.logprobs * torch.arange(6.0)).sum() + got.logsumexp.sum(), weights)
            for a, b in ((got.logprobs, want[0]), (got.logsumexp, want[1]), (got.entropy, want[2])):
                assert torch.allclose(a, b, atol=1e-5), name
            assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got_grads, want_grads)), name
            assert torch.equal(got.logprobs != 0, resp[:, 1:].bool()), name


def test_a_model_under_accelerates_autocast_runs_whole(tokenizer):
    """Accelerate puts mixed precision's autocast in a patched ``forward``; calling the body and head directly would
    leave it, so such a model runs whole."""
    import preftune.rollout as rollout

    model = _head_only_models(tokenizer)["llama"]
    assert rollout.lm_body_and_head(model) is not None
    model._original_forward = model.forward  # what Accelerator.prepare_model sets with native AMP
    assert rollout.lm_body_and_head(model) is None


def test_head_runs_at_the_response_positions_only(tokenizer):
    model = _head_only_models(tokenizer)["llama"]
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    ids, attn, resp = _scored_batch()
    score_logprobs(model, ids, attn, resp)
    assert seen == [int(resp[:, 1:].sum())]  # 9 of the 18 label positions


def test_a_model_with_its_own_logits_runs_whole_with_the_same_scores(tokenizer):
    """`tiny.ResponseSpaceLM` masks its logits after the head: it keeps the full forward, and the scores agree."""
    import preftune.rollout as rollout
    from preftune.tiny import build_population_policy, build_population_tokenizer

    words = build_population_tokenizer()
    policy = build_population_policy(words)
    assert rollout.lm_body_and_head(policy) is None
    ids = torch.randint(4, words.vocab_size, (3, 6))
    resp = torch.tensor([[0, 0, 1, 1, 1, 1]] * 3)
    want = _full_head(policy, ids, torch.ones_like(ids), resp, 1.0)[0]
    assert torch.allclose(rollout.response_token_logprobs(policy, ids, torch.ones_like(ids), resp), want, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Shared prefill: a prompt's k samples share one pass over the prompt


def test_shared_prefill_draws_the_same_samples_as_prefilling_every_row(tokenizer):
    prompts = ["12+3=", "7+1=", "100+20=", "5+5="]
    for name, model in _head_only_models(tokenizer).items():
        for batch_size, kwargs in ((256, {}), (5, {"top_k": 8, "top_p": 0.9})):  # 5: a chunk splits a prompt's rows
            got = {}
            for share in (True, False):
                torch.manual_seed(3)
                got[share] = generate(model, tokenizer, prompts, max_new_tokens=7, samples_per_prompt=3,
                                      batch_size=batch_size, share_prefill=share, temperature=0.9, **kwargs)
            a, b = got[True], got[False]
            assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask), name
            assert torch.equal(a.response_mask, b.response_mask) and a.texts == b.texts, name
            assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5), name


def test_shared_prefill_runs_each_prompt_once(tiny_model, tokenizer):
    rows = []
    tiny_model.register_forward_hook(lambda module, args, kwargs, out: rows.append(kwargs["input_ids"].shape),
                                     with_kwargs=True)
    generate(tiny_model, tokenizer, ["12+3=", "7+1="], max_new_tokens=3, samples_per_prompt=4)
    assert rows[0][0] == 2 and all(shape == (8, 1) for shape in rows[1:])  # prefill: 2 prompts; decode: 8 rows


def _make_eos_common(model, tokenizer, share: float = 0.2):
    """Point eos's head row along the mean last hidden state, scaled so eos takes about ``share`` of the probability
    at a typical position: rows end often, at different steps."""
    import math

    import preftune.rollout as rollout

    body, head = rollout.lm_body_and_head(model)
    ids = torch.randint(4, 60, (4, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states = body(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        others = torch.logsumexp(head(states), -1).mean()  # eos's own logit is small next to the rest at init
        mean = states.mean((0, 1))
        head.weight[tokenizer.eos_token_id] = mean * (others + math.log(share / (1 - share))) / mean.square().sum()


def test_dropping_finished_rows_keeps_the_samples(tokenizer):
    """Rows that ended leave the decode batch; the draws (one uniform per row per step) and so the samples stay."""
    models = _head_only_models(tokenizer)
    for model in models.values():
        _make_eos_common(model, tokenizer)
    for name, model in models.items():
        for kwargs in ({"temperature": 1.0}, {"temperature": 1.0, "top_k": 100}):
            got = {}
            for drop in (True, False):
                torch.manual_seed(4)
                got[drop] = generate(model, tokenizer, ["12+3=", "7+1=", "100+20="], max_new_tokens=16,
                                     samples_per_prompt=4, drop_finished=drop, **kwargs)
            a, b = got[True], got[False]
            lengths = a.response_lengths
            assert len(set(lengths.tolist())) > 2 and int((lengths < 15).sum()) > 6, name  # the batch shrank
            assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.response_mask, b.response_mask), name
            assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5), name


def test_the_decode_batch_shrinks_as_rows_finish(tiny_model, tokenizer):
    _make_eos_common(tiny_model, tokenizer, share=0.3)
    rows = []
    tiny_model.register_forward_hook(lambda module, args, kwargs, out: rows.append(kwargs["input_ids"].shape[0]),
                                     with_kwargs=True)
    torch.manual_seed(0)
    r = generate(tiny_model, tokenizer, ["12+3="] * 8, max_new_tokens=16)
    decode = rows[1:]
    assert decode == sorted(decode, reverse=True) and decode[-1] < 8  # it shrank, never grew
    assert sum(decode) < 8 * len(decode)
    assert int(r.response_mask.sum()) <= sum(decode) + 8  # every generated token came from a live row

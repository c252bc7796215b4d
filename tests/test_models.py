import pytest
import torch

from preftune.models import (
    LoraSettings,
    ModelError,
    RewardModel,
    apply_lora,
    last_token_index,
    load_causal_lm,
    load_trained_causal_lm,
    save_causal_lm,
)
from preftune.tiny import build_tiny_model, build_tiny_tokenizer


def test_tiny_tokenizer_roundtrip_and_specials(tmp_path, tokenizer):
    text = "17+25=42, the cat! Zebra~"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    digits = tokenizer("1234", add_special_tokens=False)["input_ids"]
    assert len(digits) == 4  # digits never merge: arithmetic is read digit by digit
    assert len(tokenizer(" warm sun is calm", add_special_tokens=False)["input_ids"]) == 4  # task words are tokens
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False)["input_ids"] == ids
    assert again.pad_token_id == 0 and again.eos_token_id == 1


@pytest.mark.parametrize("arch", ["tiny", "tiny-gpt2"])
def test_tiny_models_build_deterministically(arch, tokenizer):
    a, b = build_tiny_model(arch, tokenizer, seed=3), build_tiny_model(arch, tokenizer, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_tiny_model(arch, tokenizer, seed=4)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_save_and_load_local_model_with_from_pretrained(tmp_path, tiny_model, tokenizer):
    save_causal_lm(tiny_model, tokenizer, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    loaded, tok = load_causal_lm(str(tmp_path / "m"))
    x = torch.tensor([[5, 6, 7]])
    assert torch.allclose(loaded(x).logits, tiny_model(x).logits, atol=1e-6)
    assert tok.decode(tok("abc", add_special_tokens=False)["input_ids"]) == "abc"


def test_lora_adapter_roundtrip(tmp_path, tiny_model, tokenizer):
    model = apply_lora(tiny_model, LoraSettings(r=2, alpha=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    with torch.no_grad():  # move the adapter off its zero init so the round trip is meaningful
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)
    save_causal_lm(model, tokenizer, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    loaded, _ = load_trained_causal_lm(tmp_path / "adapter")
    x = torch.tensor([[5, 6, 7]])
    assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)
    # the adapter names its base, so peft's own loader (and so TRL's) finds it without preftune
    from peft import AutoPeftModelForCausalLM

    assert torch.allclose(AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")(x).logits,
                          model(x).logits, atol=1e-5)
    merged = save_causal_lm(model, tokenizer, tmp_path / "merged", merge_lora=True)
    plain, _ = load_causal_lm(str(merged))
    assert torch.allclose(plain(x).logits, model(x).logits, atol=1e-5)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ModelError, match="neither"):
        load_causal_lm("not-a-model")


def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [1, 3, 3]


def test_reward_model_reads_last_token_and_ignores_padding(tiny_model, tokenizer, tmp_path):
    rm = RewardModel.from_causal_lm(tiny_model)
    ids = torch.tensor([[5, 6, 7]])
    right = torch.tensor([[5, 6, 7, 0, 0]])
    left = torch.tensor([[0, 0, 5, 6, 7]])
    r = rm(ids, torch.ones_like(ids))
    assert torch.allclose(rm(right, torch.tensor([[1, 1, 1, 0, 0]])), r, atol=1e-5)
    assert torch.allclose(rm(left, torch.tensor([[0, 0, 1, 1, 1]])), r, atol=1e-5)
    rm.save_pretrained(tmp_path / "rm", tokenizer)
    again = RewardModel.from_pretrained(tmp_path / "rm")
    assert torch.allclose(again(ids, torch.ones_like(ids)), r, atol=1e-6)


def test_sum_pooled_reward_adds_token_scores_ignores_padding_and_round_trips(tiny_model, tokenizer, tmp_path):
    rm = RewardModel.from_causal_lm(tiny_model, pooling="sum")
    ids = torch.tensor([[5, 6, 7]])
    r = rm(ids, torch.ones_like(ids))
    # the sum of the head at every token: the same as scoring each prefix's last token and adding them up
    last = RewardModel(rm.body, seed=0)
    last.head.load_state_dict(rm.head.state_dict())
    prefix_sum = sum(last(ids[:, : t + 1], torch.ones(1, t + 1, dtype=torch.long)) for t in range(3))
    assert torch.allclose(r, prefix_sum, atol=1e-5)
    assert torch.allclose(rm(torch.tensor([[0, 0, 5, 6, 7]]), torch.tensor([[0, 0, 1, 1, 1]])), r, atol=1e-5)
    assert torch.allclose(rm(torch.tensor([[5, 6, 7, 0]]), torch.tensor([[1, 1, 1, 0]])), r, atol=1e-5)
    # a shared prompt's tokens add the same amount to both responses: the difference is the responses' tokens' alone
    a, b = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[5, 6, 9, 10]])
    ones = torch.ones_like(a)

    def response_terms(seq):  # the head at positions 2 and 3 only, each read as a prefix's last token
        return sum(last(seq[:, : t + 1], torch.ones(1, t + 1, dtype=torch.long)) for t in (2, 3))

    assert torch.allclose(rm(a, ones) - rm(b, ones), response_terms(a) - response_terms(b), atol=1e-5)
    assert not torch.allclose(rm(a, ones), rm(b, ones))
    rm.save_pretrained(tmp_path / "rm", tokenizer)
    again = RewardModel.from_pretrained(tmp_path / "rm")
    assert again.pooling == "sum"
    assert torch.allclose(again(ids, torch.ones_like(ids)), r, atol=1e-6)
    ensemble = RewardModel.from_causal_lm(tiny_model, num_heads=3, pooling="sum")
    assert ensemble(torch.tensor([[5, 6, 7], [8, 9, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])).shape == (2, 3)


@pytest.mark.parametrize("arch", ["tiny", "tiny-gpt2"])
def test_saved_reward_model_is_a_standard_sequence_classifier(arch, tokenizer, tmp_path):
    """What preftune saves loads with AutoModelForSequenceClassification and scores as preftune does (last token, right
    padding, as TRL and a pipeline feed it); any such folder loads back as a preftune reward model."""
    from transformers import AutoModelForSequenceClassification

    from preftune.tiny import TinySpec

    model = build_tiny_model(arch, tokenizer, TinySpec(hidden_size=32, num_layers=1, num_heads=2), seed=0)
    rm = RewardModel.from_causal_lm(model)
    ids = torch.tensor([[5, 6, 7, tokenizer.pad_token_id], [8, 9, 10, 11]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    expected = rm(ids, mask)
    rm.save_pretrained(tmp_path / "rm", tokenizer)
    assert not (tmp_path / "rm" / "body").exists()
    standard = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert standard.config.num_labels == 1
    with torch.no_grad():
        logits = standard(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    assert torch.allclose(logits, expected, atol=1e-5)
    # a classifier saved by transformers itself (no preftune file) is a reward model too
    standard.save_pretrained(tmp_path / "hf")
    again = RewardModel.from_pretrained(tmp_path / "hf")
    assert torch.allclose(again(ids, mask), expected, atol=1e-5)


def test_lora_reward_model_saves_merged_standard_weights(tiny_model, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rm = RewardModel.from_causal_lm(apply_lora(tiny_model, LoraSettings(r=4)))
    with torch.no_grad():  # adapters that change the output, so an unmerged save would be caught
        for name, p in rm.body.named_parameters():
            if "lora_B" in name:
                p.normal_()
    ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
    expected = rm(ids, mask)
    rm.save_pretrained(tmp_path / "rm", tokenizer)
    standard = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    with torch.no_grad():
        assert torch.allclose(standard(input_ids=ids, attention_mask=mask).logits.squeeze(-1), expected, atol=1e-5)
    assert torch.allclose(RewardModel.from_pretrained(tmp_path / "rm")(ids, mask), expected, atol=1e-5)


def test_reward_model_bias_survives_the_standard_format(tiny_model, tokenizer, tmp_path):
    rm = RewardModel.from_causal_lm(tiny_model)
    with torch.no_grad():
        rm.head.bias.fill_(0.75)  # what RLP's scale matching can leave
    ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
    rm.save_pretrained(tmp_path / "rm", tokenizer)
    assert torch.allclose(RewardModel.from_pretrained(tmp_path / "rm")(ids, mask), rm(ids, mask), atol=1e-6)


def test_a_folder_that_is_no_reward_model_is_named(tmp_path):
    with pytest.raises(ModelError, match="not a reward model"):
        RewardModel.from_pretrained(tmp_path)


def test_unknown_reward_pooling_names_the_allowed_values(tiny_model):
    with pytest.raises(ValueError, match="'last', 'sum'"):
        RewardModel.from_causal_lm(tiny_model, pooling="mean")


def test_reward_ensemble_has_one_output_per_head(tiny_model):
    rm = RewardModel.from_causal_lm(tiny_model, num_heads=4)
    out = rm(torch.tensor([[5, 6, 7], [8, 9, 10]]), torch.ones(2, 3, dtype=torch.long))
    assert out.shape == (2, 4)
    assert out[0].std() > 0  # heads start apart


def test_tiny_tokenizer_is_deterministic():
    from preftune.tiny import _tiny_tokenizer_json

    first = _tiny_tokenizer_json()
    _tiny_tokenizer_json.cache_clear()
    assert _tiny_tokenizer_json() == first


def test_gpt2_style_tokenizer_is_built_offline():
    tok = build_tiny_tokenizer()
    model = build_tiny_model("tiny-gpt2", tok)
    assert model.config.model_type == "gpt2"

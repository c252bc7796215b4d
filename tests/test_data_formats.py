"""Every TRL 1.x dataset format, in the exact shapes TRL's docs show ("Dataset formats and types"), written as a small
JSONL file: preftune's matching method trains on it for 2 steps, and where TRL has the trainer, the same file runs
through TRL 1.16 on the same tiny model and tokenizer, so "accepted by both" is checked, not claimed."""

import copy
import json
import re

import pytest
import torch

from preftune.data import (
    DEFAULT_CHAT_TEMPLATE,
    DataError,
    Demo,
    Pair,
    Text,
    Unpaired,
    as_prompts,
    as_records,
    chat_turns,
    collate_demos,
    load_prompts,
    load_records,
)
from preftune.tiny import TinySpec, build_tiny_model

SKY = [{"role": "user", "content": "What color is the sky?"}]
BLUE, GREEN = [{"role": "assistant", "content": "It is blue."}], [{"role": "assistant", "content": "It is green."}]

# TRL's docs' examples, one per format (docs/source/dataset_formats.md)
FORMATS = {
    "language_modeling": {"text": "The sky is blue."},
    "conversational_language_modeling": {"messages": SKY + BLUE},
    "prompt_only": {"prompt": "The sky is"},
    "conversational_prompt_only": {"prompt": SKY},
    "prompt_completion": {"prompt": "The sky is", "completion": " blue."},
    "conversational_prompt_completion": {"prompt": SKY, "completion": BLUE},
    "preference": {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    "preference_implicit_prompt": {"chosen": "The sky is blue.", "rejected": "The sky is green."},
    "conversational_preference": {"prompt": SKY, "chosen": BLUE, "rejected": GREEN},
    "conversational_preference_implicit_prompt": {"chosen": SKY + BLUE, "rejected": SKY + GREEN},
    "unpaired_preference": {"prompt": "The sky is", "completion": " blue.", "label": True},
    "conversational_unpaired_preference": {"prompt": SKY, "completion": BLUE, "label": True},
}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def format_file(tmp_path, name, n=4):
    """The format's example n times (unpaired rows alternate their label, as a KTO set has both)."""
    rows = []
    for i in range(n):
        row = copy.deepcopy(FORMATS[name])
        if "label" in row:
            row["label"] = i % 2 == 0
        rows.append(row)
    return write_rows(tmp_path / f"{name}.jsonl", rows)


def tiny(tokenizer, seed=0):
    return build_tiny_model("tiny", tokenizer, TinySpec(hidden_size=32, num_layers=1, num_heads=2), seed=seed)


def config(cls, tmp_path, name, **kw):
    return cls(output_dir=str(tmp_path / name), steps=2, batch_size=2, save_every=0, max_length=64, **kw)


@pytest.fixture()
def chat_tokenizer(tokenizer):
    """The tiny tokenizer as TRL needs it for conversations: with a chat template (preftune falls back to the same
    `DEFAULT_CHAT_TEMPLATE` when a tokenizer has none)."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = DEFAULT_CHAT_TEMPLATE
    return tok


def tokenizer_for(name, tokenizer, chat_tokenizer):
    """Conversational files with the chat template; standard ones without (with one, preftune reads a plain prompt
    as a user turn, where TRL keeps standard text as it is: docs/your-data.md)."""
    return chat_tokenizer if name.startswith("conversational") else tokenizer


def trl_args(cls, tmp_path, **kw):
    """One step of TRL on the CPU, nothing saved or reported."""
    settings = dict(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2, use_cpu=True,
                    report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
                    logging_steps=1, bf16=False, gradient_checkpointing=False)
    return cls(**{**settings, **kw})


def trl_dataset(path):
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train")


def assert_trained(result):
    assert len(result.history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


# ----------------------------------------------------------------------------------------------
# The assistant-only mask


def test_assistant_only_mask_covers_exactly_the_assistant_turns(tokenizer):
    """A multi-turn conversation with a system turn: the trained tokens decode to the assistant turns (each with
    the end of turn its template gives it) and nothing else, and agree token for token with HF's own
    ``return_assistant_tokens_mask`` on a template with {% generation %} markers."""
    messages = [{"role": "system", "content": "Be brief."}, *SKY, *BLUE,
                {"role": "user", "content": "And grass?"}, {"role": "assistant", "content": "Green."}]
    [demo] = as_records([{"messages": messages}], Demo, tokenizer)
    batch = collate_demos(tokenizer, [demo], 128)
    ids, mask = batch.input_ids[0].tolist(), batch.response_mask[0].tolist()
    eos = tokenizer.eos_token
    trained = [i for i, m in zip(ids, mask) if m]
    assert tokenizer.decode(trained) == f"It is blue.{eos}Green.{eos}"
    # every run of trained tokens is one assistant turn, every run of untrained ones holds no assistant content
    runs, current = [], [ids[0]]
    for a, b, i in zip(mask, mask[1:], ids[1:]):
        if a == b:
            current.append(i)
        else:
            runs.append((a, tokenizer.decode(current)))
            current = [i]
    runs.append((mask[-1], tokenizer.decode(current)))
    assert runs == [(0, "<|system|>Be brief.<|user|>What color is the sky?<|assistant|>"), (1, f"It is blue.{eos}"),
                    (0, "<|user|>And grass?<|assistant|>"), (1, f"Green.{eos}")]
    hf = tokenizer.apply_chat_template(messages, chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=True, return_dict=True,
                                       return_assistant_tokens_mask=True)
    assert hf["input_ids"] == ids and hf["assistant_masks"] == mask
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, chat_template=DEFAULT_CHAT_TEMPLATE,
                                                                  tokenize=False)


def test_assistant_only_mask_with_a_real_template_and_no_generation_markers(tokenizer):
    """The turn-by-turn rendering needs no {% generation %} markers: a ChatML template (SmolLM2's/Qwen's form,
    which has none) masks each assistant turn's content and its end of turn."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + "
                         "'\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    messages = [{"role": "system", "content": "Be brief."}, *SKY, *BLUE, {"role": "user", "content": "Why?"},
                {"role": "assistant", "content": "Rayleigh."}]
    segments = chat_turns(tok, as_records([{"messages": messages}], Demo)[0].response)
    assert [text for text, trained in segments if trained] == ["It is blue.<|im_end|>\n", "Rayleigh.<|im_end|>\n"]
    assert "".join(text for text, _ in segments) == tok.apply_chat_template(messages, tokenize=False)
    assert not any("blue" in text or "Rayleigh" in text for text, trained in segments if not trained)


def test_a_template_that_rewrites_earlier_turns_is_refused_with_its_row(tokenizer):
    tok = copy.deepcopy(tokenizer)  # renders only the last assistant turn's content, like reasoning-dropping templates
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}<a>{% else %}"
                         "<{{ m['role'] }}>{{ m['content'] }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    messages = [*SKY, *BLUE, {"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Rayleigh."}]
    with pytest.raises(DataError, match=r"row 0: the chat template renders turn 1 differently"):
        as_records([{"messages": messages}], Demo, tok)


# ----------------------------------------------------------------------------------------------
# Every format through preftune's method, and through TRL's trainer where it has one


@pytest.mark.parametrize("name", ["language_modeling", "conversational_language_modeling", "prompt_completion",
                                  "conversational_prompt_completion"])
def test_sft_formats_train_in_preftune_and_in_trl(tmp_path, tokenizer, chat_tokenizer, name):
    import trl

    from preftune.methods.sft import SFTConfig, train_sft

    tok = tokenizer_for(name, tokenizer, chat_tokenizer)
    path = format_file(tmp_path, name)
    demos = load_records(path, Demo)
    result = train_sft(config(SFTConfig, tmp_path, "sft"), demos, tiny(tok), tok)
    assert_trained(result)
    if "prompt_completion" in name:  # IQLearn learns from the same prompt-completion rows
        from preftune.methods.iqlearn import IQLearnConfig, train_iqlearn

        assert_trained(train_iqlearn(config(IQLearnConfig, tmp_path, "iq"), demos, tiny(tok), tok))
    extra = {"assistant_only_loss": True} if name == "conversational_language_modeling" else {}
    trainer = trl.SFTTrainer(tiny(tok), args=trl_args(trl.SFTConfig, tmp_path, max_length=64, **extra),
                             train_dataset=trl_dataset(path), processing_class=tok)
    assert trainer.train().global_step == 1
    # both train on the same tokens: TRL's labels (-100 off the loss) are preftune's response mask
    example = trainer.train_dataset[0]
    batch = collate_demos(tok, as_records(demos[:1], Demo, tok), 64)
    assert batch.input_ids[0].tolist() == example["input_ids"]
    ours = [i for i, m in zip(batch.input_ids[0].tolist(), batch.response_mask[0].tolist()) if m]
    theirs = [label for label in example.get("labels", example["input_ids"]) if label != -100]
    if name == "language_modeling":
        assert ours[1:] == theirs[1:]  # the first token is never a label; preftune's mask starts at the text
    else:
        assert ours == theirs


@pytest.mark.parametrize("name", ["preference", "preference_implicit_prompt", "conversational_preference",
                                  "conversational_preference_implicit_prompt"])
def test_preference_formats_train_dpo_and_reward_in_preftune_and_in_trl(tmp_path, tokenizer, chat_tokenizer, name):
    import trl

    from preftune.methods.dpo import DPOConfig, train_dpo
    from preftune.methods.reward import RewardConfig, train_reward

    tok = tokenizer_for(name, tokenizer, chat_tokenizer)
    path = format_file(tmp_path, name)
    pairs = load_records(path, Pair)
    rendered = as_records(pairs, Pair, tok)[0]
    if name.startswith("conversational"):
        eos = tok.eos_token
        assert rendered == Pair("<|user|>What color is the sky?<|assistant|>", f"It is blue.{eos}",
                                f"It is green.{eos}")
    else:
        assert rendered == Pair("The sky is", " blue.", " green.")
    assert_trained(train_dpo(config(DPOConfig, tmp_path, "dpo"), pairs, tiny(tok), tok))
    assert_trained(train_reward(config(RewardConfig, tmp_path, "rm"), pairs, tiny(tok), tok))
    trainer = trl.DPOTrainer(tiny(tok), ref_model=tiny(tok), args=trl_args(trl.DPOConfig, tmp_path, max_length=64),
                             train_dataset=trl_dataset(path), processing_class=tok)
    assert trainer.train().global_step == 1
    from transformers import AutoModelForSequenceClassification

    scorer = AutoModelForSequenceClassification.from_config(tiny(tok).config.__class__(**{
        **tiny(tok).config.to_dict(), "num_labels": 1}))
    trainer = trl.RewardTrainer(scorer, args=trl_args(trl.RewardConfig, tmp_path, max_length=64),
                                train_dataset=trl_dataset(path), processing_class=tok)
    assert trainer.train().global_step == 1


@pytest.mark.parametrize("name", ["unpaired_preference", "conversational_unpaired_preference"])
def test_unpaired_formats_train_kto_in_preftune_and_in_trl(tmp_path, tokenizer, chat_tokenizer, name):
    import trl

    from preftune.methods.kto import KTOConfig, train_kto

    tok = tokenizer_for(name, tokenizer, chat_tokenizer)
    path = format_file(tmp_path, name)
    rows = load_records(path, Unpaired)
    assert [r.label for r in rows] == [True, False, True, False]
    result = train_kto(config(KTOConfig, tmp_path, "kto"), rows, tiny(tok), tok, eval_data=trl_dataset(path))
    assert_trained(result)
    assert {"kl", "rewards/chosen", "rewards/rejected", "logps/chosen"} <= set().union(*result.history)
    assert {"eval_loss", "eval_kl"} <= set(result.history[-1])  # the eval set, scored after the last step
    trainer = trl.KTOTrainer(tiny(tok), ref_model=tiny(tok), args=trl_args(trl.KTOConfig, tmp_path, max_length=64),
                             train_dataset=trl_dataset(path), processing_class=tok)
    assert trainer.train().global_step == 1


@pytest.mark.parametrize("name", ["prompt_only", "conversational_prompt_only"])
def test_prompt_only_formats_train_grpo_and_reward_functions_get_trls_arguments(tmp_path, tokenizer, chat_tokenizer,
                                                                                name):
    """GRPO on the file, with a TRL-style reward function reading an extra column (``answer``): it receives the
    prompts (strings, or message lists for conversational rows), the completions in the same form, and each
    sample's column value (the k samples of a prompt repeat its row), as TRL calls it."""
    from preftune.methods.rloo import GRPOConfig, train_grpo

    tok = tokenizer_for(name, tokenizer, chat_tokenizer)
    grass = [{"role": "user", "content": "What color is grass?"}] if name.startswith("conversational") else "Grass is"
    rows = [{**copy.deepcopy(FORMATS[name]), "answer": "blue"}, {"prompt": grass, "answer": "green"}]
    path = write_rows(tmp_path / f"{name}.jsonl", rows)
    calls = []

    def says_answer(prompts, completions, answer, **kwargs):
        calls.append((prompts, completions, answer))
        text = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [float(a in t) for t, a in zip(text, answer)]

    cfg = GRPOConfig(output_dir=str(tmp_path / "grpo"), steps=2, batch_size=2, samples_per_prompt=2,
                     max_new_tokens=4, save_every=0, max_length=64)
    result = train_grpo(cfg, load_prompts(path), [says_answer], tiny(tok), tok)
    assert len(result.history) == 2 and "rewards/says_answer/mean" in result.history[-1]
    prompts, completions, answers = calls[0]
    assert len(prompts) == len(completions) == len(answers) == 4
    # a sample's column is its own prompt's row
    expected = {json.dumps(FORMATS[name]["prompt"]): "blue", json.dumps(grass): "green"}
    assert [expected[json.dumps(p)] for p in prompts] == answers
    if name == "conversational_prompt_only":
        assert prompts[0] in (SKY, grass) and completions[0][0]["role"] == "assistant"
        assert isinstance(completions[0][0]["content"], str)
    else:
        assert prompts[0] in ("The sky is", "Grass is") and isinstance(completions[0], str)
    # TRL's GRPOTrainer on the same file calls the same function with arguments of the same shapes
    import trl

    calls.clear()
    args = trl_args(trl.GRPOConfig, tmp_path, per_device_train_batch_size=4, num_generations=2,
                    max_completion_length=4)
    trl.GRPOTrainer(tiny(tok), reward_funcs=[says_answer], args=args, train_dataset=trl_dataset(path),
                    processing_class=tok).train()
    trl_prompts, trl_completions, trl_answers = calls[0]
    assert [expected[json.dumps(p)] for p in trl_prompts] == trl_answers
    assert type(trl_prompts[0]) is type(prompts[0]) and type(trl_completions[0]) is type(completions[0])
    if name == "conversational_prompt_only":
        assert set(trl_completions[0][0]) == set(completions[0][0]) == {"role", "content"}


def test_conversational_prompts_reach_the_sampler_templated_once(chat_tokenizer):
    from preftune.data import prompt_token_ids

    [prompt] = as_prompts([{"prompt": SKY, "answer": "blue"}], chat_tokenizer)
    assert isinstance(prompt, Text) and prompt.templated and prompt.columns == {"answer": "blue"}
    assert prompt == "<|user|>What color is the sky?<|assistant|>"
    [ids] = prompt_token_ids(chat_tokenizer, [prompt])
    assert chat_tokenizer.decode(ids) == prompt  # not wrapped in a second user turn
    [plain] = prompt_token_ids(chat_tokenizer, ["hi"])  # a plain prompt still is
    assert chat_tokenizer.decode(plain) == "<|user|>hi<|assistant|>"


def test_cli_trains_sft_on_messages_and_kto_on_unpaired_rows(tmp_path):
    from typer.testing import CliRunner

    from preftune.cli import app

    runner = CliRunner()
    for method, name in (("sft", "conversational_language_modeling"), ("kto", "unpaired_preference")):
        path = format_file(tmp_path, name)
        out = runner.invoke(app, ["train", method, "--data", str(path), "--model", "tiny", "--steps", "1",
                                  "--batch-size", "2", "--output-dir", str(tmp_path / method)])
        assert out.exit_code == 0, out.output
        assert (tmp_path / method / "final").is_dir()


# ----------------------------------------------------------------------------------------------
# Every row checked when read: file, line and field


@pytest.mark.parametrize(("row", "kind", "message"), [
    ({"messages": [{"role": "user", "content": "hi"}]}, Demo, r"field 'messages' has no assistant turn"),
    ({"messages": [{"role": "user", "content": 3}, *BLUE]}, Demo,
     r"field 'messages' message 0 must be an object with string 'role' and 'content'"),
    ({"messages": [{"role": "robot", "content": "x"}, *BLUE]}, Demo, r"field 'messages' message 0 has role 'robot'"),
    ({"messages": [{"content": "x"}]}, Demo, r"field 'messages' message 0 must be an object"),
    ({"messages": []}, Demo, r"field 'messages' must be a string or a non-empty list of messages"),
    ({"prompt": SKY, "completion": " blue."}, Demo, r"fields \['prompt', 'completion'\] must all be strings or all"),
    ({"text": 5}, Demo, r"field\(s\) \['text'\] must be strings"),
    ({"prompt": SKY, "chosen": BLUE, "rejected": "green"}, Pair, r"fields \['chosen', 'rejected'\] must all be"),
    ({"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]}, Pair,
     None),  # no shared message: refused when rendered, with its row
    ({"prompt": "a", "completion": "b"}, Unpaired, r"missing field\(s\) \['label'\]"),
    ({"prompt": "a", "completion": "b", "label": "yes"}, Unpaired, r"field 'label' must be true or false"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, tokenizer, row, kind, message):
    path = write_rows(tmp_path / "bad.jsonl", [FORMATS["prompt_completion"] if kind is Demo else
                                               FORMATS["preference"] if kind is Pair else
                                               FORMATS["unpaired_preference"], row])
    if message is None:
        records = load_records(path, kind)
        with pytest.raises(DataError, match=r"bad\.jsonl:2: chosen and rejected share no message"):
            as_records(records, kind, tokenizer)
        return
    with pytest.raises(DataError, match=r"bad\.jsonl:2: " + message):
        load_records(path, kind)


def test_bad_conversational_prompt_row_names_its_line(tmp_path):
    path = write_rows(tmp_path / "p.jsonl", [{"prompt": SKY}, {"prompt": [{"role": "user"}]}])
    with pytest.raises(DataError, match=r"p\.jsonl:2: field 'prompt' message 0 must be an object"):
        load_prompts(path)


def test_a_hub_id_not_in_the_cache_is_a_clear_error(monkeypatch, tmp_path):
    """Nothing is downloaded; an id that is not a file, a folder or a cached Hub dataset says all three."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(DataError, match=r"no-such-org/no-such-set: no such file or dataset folder, and not a dataset "
                                        r"in the local Hugging Face cache"):
        load_records("no-such-org/no-such-set", Demo)
    for path in ("./missing.jsonl", "missing.parquet", "data/missing.jsonl"):
        with pytest.raises(DataError, match=rf"^{re.escape(path)}: no such file or dataset folder$"):
            load_records(path, Demo)


def test_a_hub_id_in_the_local_cache_is_read_offline(monkeypatch, tmp_path):
    """A Hub dataset as `datasets` caches it (``<cache>/<org>___<name>/<config>/<version>/<hash>/<name>-train.arrow``;
    built here from a local file, as nothing can be downloaded) is read by its id, with the Hub switched off for the
    call and the setting restored after."""
    import glob
    import shutil

    import datasets

    cache = tmp_path / "datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    source = write_rows(tmp_path / "src.jsonl", [FORMATS["conversational_prompt_completion"]])
    datasets.load_dataset("json", data_files=str(source), split="train")
    [built] = [p for p in glob.glob(str(cache / "json" / "*" / "*" / "*")) if (tmp_path / p).is_dir()]
    cached = cache / "my-org___my-set" / "default" / "0.0.0" / "abc123"
    shutil.copytree(built, cached)
    for arrow in cached.glob("json-*.arrow"):
        arrow.rename(cached / arrow.name.replace("json-", "my-set-"))
    info = json.loads((cached / "dataset_info.json").read_text())
    (cached / "dataset_info.json").write_text(json.dumps({**info, "dataset_name": "my-set", "builder_name": "my-set"}))
    offline = datasets.config.HF_HUB_OFFLINE
    [demo] = load_records("my-org/my-set", Demo)
    assert demo.prompt == tuple((m["role"], m["content"]) for m in SKY) and demo.response[0] == ("assistant",
                                                                                                "It is blue.")
    assert datasets.config.HF_HUB_OFFLINE == offline

import json

import pytest

from preftune.data import DataError, Demo, Pair, collate_demos, collate_pairs, load_records, read_jsonl, write_jsonl


def test_jsonl_roundtrip(tmp_path):
    pairs = [Pair("a", "b", "c"), Pair("d", "e", "f")]
    path = write_jsonl(tmp_path / "p.jsonl", pairs)
    assert read_jsonl(path, Pair) == pairs


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        read_jsonl(path, Demo)


def test_missing_field_names_file_line_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    with pytest.raises(DataError, match=r"pairs\.jsonl:1: missing field\(s\) \['rejected'\]"):
        read_jsonl(path, Pair)


def test_non_string_field_is_an_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "a", "response": 3}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'response' must be a string or a non-empty list"):
        read_jsonl(path, Demo)


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="holds no records"):
        read_jsonl(path, Demo)


def test_hf_dataset_on_disk(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"prompt": "p", "response": "r"}]).save_to_disk(str(tmp_path / "ds"))
    assert load_records(tmp_path / "ds", Demo) == [Demo("p", "r")]


def test_prompt_is_masked_and_eos_appended(tokenizer):
    batch = collate_demos(tokenizer, [Demo("12+3=", "15"), Demo("1+1=", "2")], max_length=32)
    row = batch.input_ids[0].tolist()
    assert tokenizer.decode(row[:5]) == "12+3="
    assert batch.response_mask[0].tolist()[:8] == [0, 0, 0, 0, 0, 1, 1, 1]  # "15" + eos
    assert row[7] == tokenizer.eos_token_id
    assert batch.attention_mask[1].sum().item() == 4 + 1 + 1  # "1+1=" "2" eos, rest padding
    assert batch.response_mask[1].sum().item() == 2


def test_pairs_stack_chosen_then_rejected(tokenizer):
    batch = collate_pairs(tokenizer, [Pair("a", "good", "bad")], max_length=16)
    assert len(batch) == 2
    assert tokenizer.decode(batch.input_ids[0][batch.response_mask[0].bool()], skip_special_tokens=True) == "good"
    assert tokenizer.decode(batch.input_ids[1][batch.response_mask[1].bool()], skip_special_tokens=True) == "bad"


# TRL's standard dataset formats (https://huggingface.co/docs/trl/dataset_formats), in the shapes its docs show

def test_prompt_completion_is_trls_name_and_response_stays_accepted(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"prompt": "The sky is", "completion": " blue."}) + "\n"
                    + json.dumps({"prompt": "2+2=", "response": "4"}) + "\n")
    assert load_records(path, Demo) == [Demo("The sky is", " blue."), Demo("2+2=", "4")]
    written = write_jsonl(tmp_path / "out.jsonl", [Demo("a", "b")]).read_text()
    assert json.loads(written) == {"prompt": "a", "completion": "b"}  # written as TRL reads it


def test_implicit_prompt_preferences_split_off_the_shared_prompt(tmp_path):
    path = tmp_path / "pref.jsonl"
    path.write_text(json.dumps({"chosen": "The sky is blue.", "rejected": "The sky is green."}) + "\n")
    assert load_records(path, Pair) == [Pair("The sky is", " blue.", " green.")]


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_json_csv_and_parquet_files_are_read_through_datasets(tmp_path, suffix):
    import datasets

    rows = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}] * 3
    path = tmp_path / f"pairs{suffix}"
    ds = datasets.Dataset.from_list(rows)
    {".json": ds.to_json, ".csv": ds.to_csv, ".parquet": ds.to_parquet}[suffix](str(path))
    assert load_records(path, Pair) == [Pair("The sky is", " blue.", " green.")] * 3


def test_prompt_only_rows_for_online_methods(tmp_path):
    from preftune.data import load_prompts

    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "What is 2+2?"}) + "\n" + json.dumps({"question": "x"}) + "\n")
    with pytest.raises(DataError, match=r"prompts\.jsonl:2: a prompt row needs a string field 'prompt'"):
        load_prompts(path)
    path.write_text(json.dumps({"prompt": "What is 2+2?", "answer": "4"}) + "\n")
    assert load_prompts(path) == ["What is 2+2?"]


def test_a_conversation_without_an_assistant_turn_is_refused_with_file_and_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match=r"chat\.jsonl:1: field 'messages' has no assistant turn"):
        load_records(path, Demo)
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        load_records(tmp_path, Demo)


def test_the_same_files_load_in_trl(tmp_path):
    """The prompt-completion and preference files preftune reads are TRL's: its own prompt extraction agrees."""
    trl_utils = pytest.importorskip("trl.data_utils")
    chosen, rejected = "The sky is blue.", "The sky is green."
    extracted = trl_utils.extract_prompt({"chosen": chosen, "rejected": rejected})
    ours = Pair(*__import__("preftune.data", fromlist=["implicit_prompt"]).implicit_prompt(chosen, rejected))
    assert (extracted["prompt"], extracted["chosen"], extracted["rejected"]) == (ours.prompt, ours.chosen,
                                                                                ours.rejected)


def test_a_saved_dataset_dict_split_is_chosen_from_the_cli(tmp_path):
    import datasets
    from typer.testing import CliRunner

    from preftune.cli import app

    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}]),
                          "test": datasets.Dataset.from_list([{"prompt": "c", "completion": "d"}])}
                         ).save_to_disk(str(tmp_path / "ds"))
    assert load_records(tmp_path / "ds", Demo, "test") == [Demo("c", "d")]
    r = CliRunner().invoke(app, ["train", "sft", "--data", str(tmp_path / "ds"), "--split", "validation",
                                 "--output-dir", str(tmp_path / "out")])
    assert r.exit_code == 2 and "not 'validation'" in r.output


def test_a_row_that_cannot_fit_is_found_before_training(tmp_path, tiny_model, tokenizer):
    from preftune.methods.sft import SFTConfig, train_sft

    demos = [Demo("1+1=", "2")] * 9 + [Demo("a long prompt " * 20, "x")]  # the last row, as on line 10
    cfg = SFTConfig(output_dir=str(tmp_path), steps=1, batch_size=1, max_length=32, progress=False, save_every=0)
    with pytest.raises(DataError, match="row 9: its prompt of .* tokens leaves no room"):
        train_sft(cfg, demos, tiny_model, tokenizer)
    assert not (tmp_path / "config.yaml").exists()  # refused before anything was written
    with pytest.raises(DataError, match="'max_length' \\(4096\\) is beyond the model's"):
        train_sft(SFTConfig(output_dir=str(tmp_path), max_length=4096, progress=False), demos[:1], tiny_model,
                  tokenizer)


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(json.dumps({"prompt": "a", "completion": "b"}).encode() + b"\n\xff\xfe{}\n")
    with pytest.raises(DataError, match=r"bin\.jsonl:2: not UTF-8 text"):
        load_records(path, Demo)
    path.write_text(json.dumps({"completion": "b"}) + "\n")
    with pytest.raises(DataError, match=r"missing field\(s\) \['prompt'\];"):
        load_records(path, Demo)


@pytest.mark.parametrize("line, words", [
    ('{"prompt": "a\\ud800b", "completion": "1"}', r"x.jsonl:2: field 'prompt' holds a lone surrogate"),
    ('{"prompt": "a", "completion": "1", "n": ' + "9" * 5000 + "}", r"x.jsonl:2: not a usable JSON row"),
    ("[" * 100_000 + "]" * 100_000, r"x.jsonl:2: JSON nested too deeply"),
    ('{"prompt": "a", "completion": 1e400}', r"x.jsonl:2: field 'completion' must be a string"),
])
def test_rows_a_tokenizer_could_not_read_name_file_line_and_field(tmp_path, line, words):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "1+1=", "completion": "2"}\n' + line + "\n")
    with pytest.raises(DataError, match=words):
        load_records(path, Demo)


def test_compressed_and_utf16_files_are_named_for_what_they_are(tmp_path):
    import gzip

    text = '{"prompt": "1+1=", "completion": "2"}\n'
    for name, content, words in (("a.jsonl", gzip.compress(text.encode()), "gzip-compressed"),
                                 ("b.jsonl", text.encode("utf-16"), "UTF-16 text")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=f"{name}: not a JSONL file: it is {words}"):
            load_records(tmp_path / name, Demo)
    (tmp_path / "c.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())  # a UTF-8 byte-order mark is fine
    assert load_records(tmp_path / "c.jsonl", Demo) == [Demo("1+1=", "2")]


def test_degenerate_rows_are_counted_and_refused_unless_allowed(tmp_path):
    from preftune.data import as_records

    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a", "rejected": "a"},
            {"chosen": "same", "rejected": "same"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"2 of 3 rows are degenerate \(.*p.jsonl:2: chosen == rejected; "
                                        r".*p.jsonl:3: chosen == rejected\).*--allow-degenerate"):
        load_records(path, Pair)
    with pytest.warns(UserWarning, match="2 of 3 rows are degenerate"):
        assert len(load_records(path, Pair, allow_degenerate=True)) == 3
    with pytest.raises(DataError, match=r"1 of 2 rows are degenerate \(row 1: empty prompt and completion\)"):
        as_records([{"prompt": "q", "completion": "a"}, {"prompt": "", "completion": " "}], Demo)
    assert as_records([Pair("q", "a", "a")], Pair) == [Pair("q", "a", "a")]  # records (a task's) as they are


def test_online_prompts_are_checked_against_the_models_positions(tiny_model, tokenizer):
    from preftune.data import check_prompts_fit

    positions = tiny_model.config.max_position_embeddings
    check_prompts_fit(tokenizer, ["1+1="], 8, tiny_model)
    with pytest.raises(DataError, match=f"prompt 1: its {positions} tokens plus max_new_tokens=8 is beyond"):
        check_prompts_fit(tokenizer, ["1+1=", "1" * positions], 8, tiny_model)
    with pytest.raises(DataError, match="'max_new_tokens'"):
        check_prompts_fit(tokenizer, ["1+1="], positions, tiny_model)

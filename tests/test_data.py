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
    with pytest.raises(DataError, match=r"d\.jsonl:1: field\(s\) \['response'\] must be strings"):
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

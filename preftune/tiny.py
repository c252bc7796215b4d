"""Models and tokenizers built in-process from a config, so nothing is downloaded: the tiny Llama- and GPT-2-style
LMs with a small BPE tokenizer trained on the built-in tasks' text, and the population task's response-space LM
(a tiny LM whose every sample is one of the task's enumerable responses)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from preftune.models import ModelError, cache_argument, position_ids_from_mask

TINY_MODELS = ("tiny", "tiny-gpt2")
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
TINY_VOCAB_SIZE = 400  # an upper bound: the built-in tasks need about 230
MASKED_LOGIT = -1e9  # finite, so a masked label times a zero mask is 0, never nan


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
# The population task's response space


def build_population_tokenizer():
    from preftune.tasks.population import EVAL_TOPICS, RESPONSE_WORDS, TRAIN_TOPICS

    """The population task's word-level tokenizer: the four specials, ``about``, every topic and every response
    word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(SPECIAL_TOKENS) + ["about", *TRAIN_TOPICS, *EVAL_TOPICS, *RESPONSE_WORDS]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")


class ResponseSpaceLM(nn.Module):
    """A causal LM constrained to responses of exactly ``response_length`` tokens of ``response_token_ids``
    followed by <eos>, after prompts of exactly ``prompt_length`` tokens.

    Logits of disallowed tokens are set to −1e9 wherever the next token is a response token (positions come
    from ``position_ids``, so left-padded batches work), so π(·|x) is a distribution over the enumerable set
    Y. Everything else — the cache, hidden states, ``save_pretrained`` (of the unconstrained LM) — is the
    wrapped model's, so `rollout.generate`, PPO, DPO and reward models use it unchanged.
    """

    def __init__(self, lm: nn.Module, prompt_length: int, response_length: int,
                 response_token_ids: Sequence[int], eos_token_id: int):
        super().__init__()
        self.lm, self.prompt_length, self.response_length = lm, prompt_length, response_length
        allowed = torch.zeros(response_length + 1, lm.config.vocab_size, dtype=torch.bool)
        allowed[:response_length, list(response_token_ids)] = True
        allowed[response_length, eos_token_id] = True
        self.register_buffer("allowed", allowed, persistent=False)

    @property
    def config(self):
        return self.lm.config

    def get_decoder(self):
        return self.lm.get_decoder()

    def save_pretrained(self, *args, **kwargs):
        return self.lm.save_pretrained(*args, **kwargs)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                **kwargs):
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask if attention_mask is not None
                                                  else torch.ones_like(input_ids))
        if cache is not None or past_key_values is not None:
            kwargs[cache_argument(self.lm)] = cache if cache is not None else past_key_values
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        positions = position_ids[:, -out.logits.shape[1]:]
        step = positions + 1 - self.prompt_length  # which response token each position predicts
        allowed = self.allowed[step.clamp(0, self.response_length)] | (step < 0)[..., None]
        out.logits = out.logits.masked_fill(~allowed, MASKED_LOGIT)
        return out


def build_population_policy(tokenizer, spec: TinySpec | None = None, seed: int = 0) -> ResponseSpaceLM:
    """A fresh tiny Llama (`build_tiny_model`) on the word tokenizer, constrained to the response space.

    At initialisation its π(·|x) is close to uniform over the 64 responses: the starting "pretrained" model
    knows the format, not the population.
    """
    from preftune.tasks.population import RESPONSE_LENGTH, RESPONSE_WORDS

    lm = build_tiny_model("tiny", tokenizer, spec or TinySpec(hidden_size=64, num_layers=2, num_heads=4,
                                                              max_positions=16), seed=seed)
    words = tokenizer.convert_tokens_to_ids(list(RESPONSE_WORDS))
    return ResponseSpaceLM(lm, prompt_length=2, response_length=RESPONSE_LENGTH, response_token_ids=words,
                           eos_token_id=tokenizer.eos_token_id)

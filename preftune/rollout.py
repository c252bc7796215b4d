"""The rollout engine: batched KV-cache sampling and log-prob scoring, shared by every method.

One sampler (`generate`) and one scorer (`score_logprobs`) serve Best-of-N, PPO, RLOO/GRPO, RLP,
online IRL and exploration. Sequences are laid out as ``[left-padded prompt | response | right pad]``
so a whole batch is decoded together; positions come from the attention mask, so left padding does
not shift a prompt's positions. ``generate`` returns the behaviour log-probs from the same forward
passes that produced the tokens, so a PPO step never runs the policy twice on its own samples.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.utils.checkpoint import checkpoint

from preftune.data import prompt_token_ids
from preftune.models import cache_argument, position_ids_from_mask


def model_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, T, V]`` with mask-derived positions (correct for left and right padding)."""
    return model(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=position_ids_from_mask(attention_mask), use_cache=False).logits


# ----------------------------------------------------------------------------------------------
# The LM head only where a loss reads it

# Causal LMs whose logits are exactly ``lm_head(body(...).last_hidden_state)`` (no soft-capping or scaling after the
# head), so the head may be applied at the scored positions only; any other model runs whole (same numbers, slower).
HEAD_ONLY_MODEL_TYPES = frozenset({"llama", "gpt2", "mistral", "qwen2", "qwen3", "phi3", "gpt_neox", "olmo2",
                                   "smollm3"})
HEAD_CHUNK_ELEMENTS = 2 ** 27  # logits held at once (512 MB in fp32); more positions go in checkpointed chunks


@dataclass
class LabelScores:
    """The head's verdict on each label ``input_ids[:, t + 1]`` at the positions asked for, each ``[B, T-1]`` and
    zero elsewhere: ``picked`` = logits_t[label] / T and ``logsumexp`` = logsumexp(logits_t / T), so log π = picked −
    logsumexp (at T = 1 they are IQLearn's Q(s_t, a_t) and V(s_t)); ``entropy`` of softmax(logits_t / T), detached,
    when asked for."""

    picked: torch.Tensor
    logsumexp: torch.Tensor
    entropy: torch.Tensor | None = None

    @property
    def logprobs(self) -> torch.Tensor:
        return self.picked - self.logsumexp


def lm_body_and_head(model):
    """``(body, head)`` of a transformers causal LM (LoRA-wrapped too) whose logits are ``head(body(...)[0])``, or
    None, and the model runs whole: a wrapper (DDP, `tiny.ResponseSpaceLM`), a model that changes logits after its
    head, or one whose forward Accelerate wrapped in an autocast (``mixed_precision`` bf16/fp16)."""
    from transformers import PreTrainedModel

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: LoRA lives inside lm
    if not isinstance(lm, PreTrainedModel) or getattr(lm.config, "model_type", None) not in HEAD_ONLY_MODEL_TYPES:
        return None
    if hasattr(model, "_original_forward") or hasattr(lm, "_original_forward"):
        return None  # Accelerate's mixed precision: the autocast lives in the patched forward, so the model runs whole
    body, head = getattr(lm, lm.base_model_prefix, None), lm.get_output_embeddings()
    if body is None or head is None or not type(lm).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        return None
    return body, head


def _head_scores(head, states: torch.Tensor, labels: torch.Tensor, temperature: float, entropy: bool):
    """``head`` at ``states`` ``[N, H]``: each label's scaled logit, the logsumexp and (detached) the entropy."""
    logits = head(states).float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    lse = torch.logsumexp(logits, dim=-1)
    if not entropy:
        return picked, lse, None
    with torch.no_grad():
        logp = logits.log_softmax(-1)
        return picked, lse, -(logp.exp() * logp).sum(-1)


def label_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, label_mask: torch.Tensor,
                 temperature: float = 1.0, entropy: bool = False) -> LabelScores:
    """Score the labels ``input_ids[:, 1:]`` where ``label_mask`` ``[B, T-1]`` is set (the response), applying the
    LM head at those positions only: the body runs over the whole sequence, the head (≈ a fifth of a small LM's
    FLOPs, and vocabulary × positions of memory) over the response. Equal, within float rounding, to
    ``token_logprobs(model_logits(...)[:, :-1], input_ids[:, 1:], T) * label_mask``, gradients included."""
    parts = lm_body_and_head(model)
    if parts is None:  # the whole model, then the scored positions of its logits
        return scores_at(torch.nn.Identity(), model_logits(model, input_ids, attention_mask), input_ids, label_mask,
                         temperature, entropy)
    body, head = parts
    states = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                  position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
    return scores_at(head, states, input_ids, label_mask, temperature, entropy)


def scores_at(head, states: torch.Tensor, input_ids: torch.Tensor, label_mask: torch.Tensor, temperature: float = 1.0,
              entropy: bool = False) -> LabelScores:
    """`LabelScores` of ``head`` applied to ``states`` ``[B, T, H]`` (the body's last hidden states; or logits, with
    an identity head) where ``label_mask`` is set. Positions go through the head in chunks of
    `HEAD_CHUNK_ELEMENTS` logits, each recomputed in the backward pass (activation checkpointing) when there is
    more than one, so peak memory does not grow with vocabulary × sequence."""
    rows, cols = label_mask.nonzero(as_tuple=True)
    labels, states = input_ids[rows, cols + 1], states[rows, cols]
    vocab = head.weight.shape[0] if hasattr(head, "weight") else states.shape[-1]  # Identity: states are logits
    size = max(1, HEAD_CHUNK_ELEMENTS // vocab)
    scored = []
    for start in range(0, max(len(rows), 1), size):
        args = (head, states[start:start + size], labels[start:start + size], temperature, entropy)
        if torch.is_grad_enabled() and len(rows) > size:
            scored.append(checkpoint(_head_scores, *args, use_reentrant=False))
        else:
            scored.append(_head_scores(*args))

    def scatter(values: list[torch.Tensor]) -> torch.Tensor:
        full = torch.zeros(label_mask.shape, dtype=torch.float32, device=input_ids.device)
        return full.index_put((rows, cols), torch.cat(values))

    return LabelScores(scatter([s[0] for s in scored]), scatter([s[1] for s in scored]),
                       scatter([s[2] for s in scored]) if entropy else None)


@dataclass
class Rollout:
    """Sampled responses. Token tensors are ``[N, T]``; per-token ones (``logprobs``) are ``[N, T-1]``,
    aligned with ``labels = input_ids[:, 1:]``. Row i answers ``prompts[prompt_index[i]]``; the k samples
    of one prompt are consecutive rows."""

    prompts: list[str]
    prompt_index: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    texts: list[str]

    @property
    def labels_mask(self) -> torch.Tensor:
        return self.response_mask[:, 1:]

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def row_prompts(self) -> list[str]:
        return [self.prompts[i] for i in self.prompt_index.tolist()]


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering: excluded tokens get −inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def left_pad(token_lists: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for i, t in enumerate(token_lists):
        ids[i, width - len(t):] = torch.tensor(t, dtype=torch.long)
        mask[i, width - len(t):] = 1
    return ids, mask


@functools.lru_cache(maxsize=1)
def _preallocated_layer_class():
    """A `DynamicLayer` whose keys and values live in buffers allocated once for the whole generation, so a decode
    step writes its one new position instead of re-concatenating the whole cache (``torch.cat`` per layer per step
    was a sixth of the sampler's time). ``keys``/``values`` are views of the filled part, exactly what
    `DynamicLayer` would hold; past the capacity it falls back to concatenation. None when this transformers
    version has no `DynamicLayer` (then the plain `DynamicCache` is used)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class PreallocatedLayer(DynamicLayer):
        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity

        def lazy_initialization(self, key_states, value_states):
            super().lazy_initialization(key_states, value_states)
            b, h, _, d = key_states.shape
            self._key_buffer = key_states.new_empty((b, h, self.capacity, d))
            self._value_buffer = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
            self._length = 0
            self.keys, self.values = self._key_buffer[:, :, :0], self._value_buffer[:, :, :0]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            start, end = self._length, self._length + key_states.shape[-2]
            if end > self.capacity or self.keys.shape[-2] != start:  # full, or changed by crop & co.
                return super().update(key_states, value_states, *args, **kwargs)
            self._key_buffer[:, :, start:end] = key_states
            self._value_buffer[:, :, start:end] = value_states
            self._length = end
            self.keys, self.values = self._key_buffer[:, :, :end], self._value_buffer[:, :, :end]
            return self.keys, self.values

        def batch_select_indices(self, indices) -> None:  # rows that finished leave the decode batch
            if not self.is_initialized:
                return
            if self.keys.shape[-2] != self._length:
                return super().batch_select_indices(indices)
            self._key_buffer, self._value_buffer = self._key_buffer[indices], self._value_buffer[indices]
            self.keys, self.values = self._key_buffer[:, :, :self._length], self._value_buffer[:, :, :self._length]

        def batch_repeat_interleave(self, repeats) -> None:  # a shared prefill's rows, each repeated for its samples
            if not self.is_initialized:
                return
            if self.keys.shape[-2] != self._length:  # fell back to concatenation: the buffers are stale
                return super().batch_repeat_interleave(repeats)
            self._key_buffer = self._key_buffer.repeat_interleave(repeats, dim=0)
            self._value_buffer = self._value_buffer.repeat_interleave(repeats, dim=0)
            self.keys, self.values = self._key_buffer[:, :, :self._length], self._value_buffer[:, :, :self._length]

    return PreallocatedLayer


def _kv_cache(capacity: int):
    from transformers import DynamicCache

    cache = DynamicCache()
    layer = _preallocated_layer_class()
    if layer is not None and getattr(cache, "layer_class_to_replicate", None) is not None and not cache.layers:
        cache.layer_class_to_replicate = lambda: layer(capacity)
    return cache


def _sample_tokens(scaled: torch.Tensor, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """One draw per row from softmax(scaled) by inverting its CDF with one uniform per row (``uniforms`` ``[N, 1]``
    in float64, else fresh ones): the same categorical distribution as ``torch.multinomial(probs, 1)`` at a fraction
    of its CPU cost (which draws a full row of exponentials). Tokens of probability 0 (−inf logits, e.g. filtered
    by top-k/top-p) are never drawn."""
    cdf = scaled.softmax(-1).double().cumsum_(-1)
    total = cdf[:, -1:]
    if not bool(torch.isfinite(total).all()):  # as torch.multinomial does
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    if uniforms is None:
        uniforms = torch.rand((cdf.shape[0], 1), dtype=cdf.dtype, device=cdf.device)
    u = uniforms * total
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


@torch.inference_mode()  # cheaper than no_grad per op; the outputs are only copied (`_assemble`)
def _sample_batch(model, prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id, temperature, top_k, top_p,
                  repeats: torch.Tensor | None = None, drop_finished: bool = True):
    """Decode a batch of left-padded prompts. With ``repeats`` (samples per row), each prompt is prefilled once and
    its KV cache repeated for its samples: rows ``repeat_interleave(repeats)``, drawn as if every row had been
    prefilled itself (prefill draws no random numbers). With ``drop_finished``, rows that have ended leave the
    decode batch (their cache rows dropped) once at most half of it is alive; every step still draws one uniform
    per row of the whole batch, so the draws are the ones the full batch makes."""
    device = prompt_ids.device
    prompt_width = prompt_ids.shape[1]
    cache = _kv_cache(prompt_width + max_new_tokens)
    cache_kw = {cache_argument(model): cache}
    positions = position_ids_from_mask(prompt_mask)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **cache_kw)
    logits_last = out.logits[:, -1]
    if repeats is not None:  # shared prefill: every row's cache, mask and positions, repeated for its samples
        cache.batch_repeat_interleave(repeats)
        prompt_mask, positions, logits_last = (t.repeat_interleave(repeats, dim=0)
                                               for t in (prompt_mask, positions, logits_last))
    n = prompt_mask.shape[0]
    # the attention mask grows by one column per step: written into a buffer, passed as a view of its filled part
    attn_buffer = torch.zeros((n, prompt_width + max_new_tokens), dtype=prompt_mask.dtype, device=device)
    attn_buffer[:, :prompt_width] = prompt_mask
    next_pos = positions[:, -1:] + 1
    filtering = top_k > 0 or top_p < 1.0
    tokens = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros((n, max_new_tokens), device=device)
    alive_masks = torch.zeros((n, max_new_tokens), dtype=torch.long, device=device)
    alive = torch.ones(n, dtype=torch.bool, device=device)
    live = torch.arange(n, device=device)  # the rows in the decode batch (attn_buffer's and the cache's rows)
    steps = 0
    for step in range(max_new_tokens):
        logits = logits_last.float()
        live_alive = alive[live]
        if temperature == 0:  # greedy
            token = logits.argmax(-1)
            logp = None
        else:
            scaled = logits / temperature if temperature != 1.0 else logits
            sampled_from = _filter_logits(scaled, top_k, top_p) if filtering else scaled
            uniforms = torch.rand((n, 1), dtype=torch.float64, device=device)  # one per row, live or not
            token = _sample_tokens(sampled_from, uniforms[live] if len(live) < n else uniforms)
            # behaviour log-prob under the distribution the token was drawn from: softmax(logits / T), renormalised
            # over what top-k / top-p kept, so the ratio π_θ / π_behaviour of PPO is the true importance weight
            logp = sampled_from.log_softmax(-1).gather(-1, token[:, None]).squeeze(-1)
        tokens[live, step] = torch.where(live_alive, token, pad_id)
        if logp is not None:
            logps[live, step] = torch.where(live_alive, logp, 0.0)
        alive_masks[live, step] = live_alive.long()
        steps = step + 1
        alive[live] = live_alive & (token != eos_id)
        if not alive.any():
            break
        attn_buffer[:, prompt_width + step] = alive_masks[live, step]
        if drop_finished and 2 * int(alive[live].sum()) <= len(live):  # half the batch is done: drop its rows
            keep = alive[live].nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            live, attn_buffer, next_pos = live[keep], attn_buffer[keep], next_pos[keep]
        out = model(input_ids=tokens[live, step:step + 1], attention_mask=attn_buffer[:, :prompt_width + step + 1],
                    position_ids=next_pos, use_cache=True, **cache_kw)
        logits_last = out.logits[:, -1]
        next_pos = next_pos + 1
    return tokens[:, :steps].clone(), logps[:, :steps].clone(), alive_masks[:, :steps].clone()


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    samples_per_prompt: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 256,
    share_prefill: bool = True,
    drop_finished: bool = True,
) -> Rollout:
    """Sample ``samples_per_prompt`` responses for each prompt (temperature 0 = greedy).

    Sampling draws from the global torch RNG, so a seeded, checkpointed run resamples identically. Prompts are
    tokenised exactly as for training (`prompt_token_ids`: the chat template when the tokenizer has one). With
    ``share_prefill`` a prompt's samples share one prefill (its KV cache repeated for each): the same tokens and
    log-probs as prefilling every row (within float rounding), for 1/k of the prompt's FLOPs. With
    ``drop_finished`` rows that have ended leave the decode batch (same draws: `_sample_batch`).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt_tokens = prompt_token_ids(tokenizer, prompts)  # with the chat template, when the tokenizer has one
    rows = [i for i in range(len(prompts)) for _ in range(samples_per_prompt)]
    chunks = []
    for start in range(0, len(rows), batch_size):
        idx = rows[start:start + batch_size]
        if share_prefill and samples_per_prompt > 1:  # each prompt once, with its number of rows in this chunk
            unique, repeats = torch.unique_consecutive(torch.tensor(idx), return_counts=True)
            p_ids, p_mask = left_pad([prompt_tokens[i] for i in unique.tolist()], pad_id)
            gen, logp, gen_mask = _sample_batch(model, p_ids.to(device), p_mask.to(device), max_new_tokens, eos_id,
                                                pad_id, temperature, top_k, top_p, repeats=repeats.to(device),
                                                drop_finished=drop_finished)
            p_ids, p_mask = p_ids.repeat_interleave(repeats, 0), p_mask.repeat_interleave(repeats, 0)
        else:
            p_ids, p_mask = left_pad([prompt_tokens[i] for i in idx], pad_id)
            gen, logp, gen_mask = _sample_batch(model, p_ids.to(device), p_mask.to(device), max_new_tokens,
                                                eos_id, pad_id, temperature, top_k, top_p, drop_finished=drop_finished)
        chunks.append((p_ids, p_mask, gen.cpu(), logp.cpu(), gen_mask.cpu()))
    model.train(was_training)
    return _assemble(chunks, list(prompts), torch.tensor(rows), tokenizer)


# ----------------------------------------------------------------------------------------------
# The generation backend seam: where an online method's samples come from (docs/architecture.md)


@dataclass(frozen=True)
class Sampling:
    """How to sample, as every generation backend takes it (temperature 0 = greedy)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


class GenerationBackend(Protocol):
    """A source of rollouts. ``generate(prompts, k, sampling)`` returns a `Rollout` of ``k`` consecutive rows per
    prompt, laid out ``[left-padded prompt | response | right pad]`` in the policy tokenizer's ids, with the
    behaviour log-probs of the distribution each token was drawn from (softmax(logits / T), renormalised over what
    top-k / top-p kept). ``sync(policy)`` runs before each rollout batch: a backend holding its own copy of the
    weights (an inference engine) loads the trained policy's there."""

    def generate(self, prompts: Sequence[str], k: int, sampling: Sampling) -> Rollout: ...

    def sync(self, policy) -> None: ...


class InHouseSampler:
    """The default backend: `generate` on the trained model itself (so `sync` has nothing to do)."""

    def __init__(self, model, tokenizer, batch_size: int = 256) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def generate(self, prompts: Sequence[str], k: int, sampling: Sampling) -> Rollout:
        return generate(self.model, self.tokenizer, prompts, sampling.max_new_tokens, k, sampling.temperature,
                        sampling.top_k, sampling.top_p, batch_size=self.batch_size)

    def sync(self, policy) -> None:
        """Nothing to copy: it samples from the trained model."""


def _assemble(chunks, prompts, prompt_index, tokenizer) -> Rollout:
    """Stack per-chunk results into one batch padded to a common prompt and response width."""
    pad_id = tokenizer.pad_token_id
    p_width = max(c[0].shape[1] for c in chunks)
    r_width = max(c[2].shape[1] for c in chunks)
    ids, attn, resp, logps = [], [], [], []
    for p_ids, p_mask, gen, logp, gen_mask in chunks:
        n = p_ids.shape[0]
        lp, lr = p_width - p_ids.shape[1], r_width - gen.shape[1]
        ids.append(torch.cat([torch.full((n, lp), pad_id), p_ids, gen, torch.full((n, lr), pad_id)], 1))
        zeros_p = torch.zeros((n, lp + p_ids.shape[1]), dtype=torch.long)
        attn.append(torch.cat([torch.zeros((n, lp), dtype=torch.long), p_mask, gen_mask,
                               torch.zeros((n, lr), dtype=torch.long)], 1))
        resp.append(torch.cat([zeros_p, gen_mask, torch.zeros((n, lr), dtype=torch.long)], 1))
        # logprobs align with labels input_ids[:, 1:]: the first response token is label p_width-1
        logps.append(torch.cat([torch.zeros((n, p_width - 1)), logp, torch.zeros((n, lr))], 1))
    input_ids, response_mask = torch.cat(ids), torch.cat(resp)
    texts = tokenizer.batch_decode(input_ids[:, p_width:], skip_special_tokens=True)
    return Rollout(prompts, prompt_index, input_ids, torch.cat(attn), response_mask, torch.cat(logps), texts)


def response_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            response_mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs ``[N, T-1]`` of the response tokens (zero elsewhere), with gradients; the LM head runs
    at the response positions only (`label_scores`)."""
    return label_scores(model, input_ids, attention_mask, response_mask[:, 1:].bool(), temperature).logprobs


@torch.no_grad()
def score_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                   batch_size: int = 64, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs of given responses under any causal LM, ``[N, T-1]``, zero off-response.

    Used for reference log-probs (computed once, so no second model stays in memory) and for scoring
    samples under a frozen model. Runs in eval mode, batched, without building a graph.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for s in range(0, input_ids.shape[0], batch_size):
        rows = slice(s, s + batch_size)
        out.append(response_token_logprobs(model, input_ids[rows].to(device), attention_mask[rows].to(device),
                                           response_mask[rows].to(device), temperature).cpu())
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def score_rewards(reward_model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  batch_size: int = 64) -> torch.Tensor:
    """Rewards of whole sequences under a `RewardModel`, ``[N]`` (``[N, heads]`` for ensembles)."""
    was_training = reward_model.training
    reward_model.eval()
    device = next(reward_model.parameters()).device
    out = [reward_model(input_ids[s:s + batch_size].to(device), attention_mask[s:s + batch_size].to(device)).cpu()
           for s in range(0, input_ids.shape[0], batch_size)]
    reward_model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def policy_distribution(policy, ids: torch.Tensor) -> torch.Tensor:
    """π(y|x) for every prompt and response, ``[P, |Y|]``, exactly: exp of the summed token log-probs.

    Not renormalised: the rows sum to 1 because the policy's support is exactly Y (a test checks it).
    """
    from preftune.tasks.population import response_mask_of

    flat = ids.flatten(0, 1)
    logps = score_logprobs(policy, flat, torch.ones_like(flat), response_mask_of(flat), batch_size=512)
    return logps.sum(-1).double().exp().view(ids.shape[0], ids.shape[1])

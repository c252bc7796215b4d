"""Joint learning from choices on your own prompts and model (Xu et al., arXiv 2305.11455), choosing among the
policy's own samples as Dwaracherla et al. (arXiv 2402.00396) do: the population version (`joint.py`) scores an
enumerable response space, here the candidates are sampled.

One round (an iteration of `Trainer.fit`):
1. for each of ``queries_per_round`` prompts (seeded epochs over the prompts), sample a pool of ``candidate_pool``
   responses from π_θ at ``boltzmann_temperature`` (0 = 2·K);
2. score the pool: utilities log π(y|x)/τ, and the LM's last hidden state at the response's last token, which the
   epistemic head reads (kept with the query: the head's inputs do not drift);
3. pick K of the pool with the exploration scheme (`joint.select_candidates`: passive and boltzmann among the
   samples, infomax / ts / double-ts by the posterior) and ask the feedback source (every query in the ledger);
4. ``updates_per_round`` optimizer steps on minibatches of all choices so far, with `joint.py`'s loss: the choice
   NLL of log π/τ trains the LM, the same NLL of u_z (LM utilities held fixed) plus an L2 trains the head;
5. log the queries and the losses (there is no known target to measure distances to).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import nn

from preftune.data import Demo, as_prompts, check_prompts_fit, collate_demos
from preftune.epistemic import build_epistemic_head, set_feature_scaling
from preftune.feedback import FeedbackSource, QueryLedger
from preftune.losses import token_logprobs
from preftune.methods.joint import JointConfig, joint_loss, save_joint_model, select_candidates
from preftune.models import last_token_index, load_policy, position_ids_from_mask
from preftune.rollout import generate
from preftune.trainer import GradientStep, Trainer, TrainResult, batch_indices, micro_batches


class JointLM(nn.Module):
    """A causal LM and its epistemic head; ``forward(batch)`` → (sequence log-probs ``[N]``, features ``[N, H]``:
    the last hidden state at each row's last token), and with indices ``[S, D]`` also the head's offsets ``[S, N]``
    on ``head_inputs`` (one forward runs every parameter, as DDP wants)."""

    def __init__(self, policy: nn.Module, head: nn.Module):
        super().__init__()
        self.policy, self.head = policy, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                index: torch.Tensor | None = None, head_inputs: torch.Tensor | None = None):
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                          position_ids=position_ids_from_mask(attention_mask), output_hidden_states=True)
        logps = (token_logprobs(out.logits[:, :-1], input_ids[:, 1:]) * response_mask[:, 1:]).sum(-1)
        hidden = out.hidden_states[-1]
        features = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
        if index is None:
            return logps, features
        return logps, features, self.head(features if head_inputs is None else head_inputs, index)


class SampledChoices:
    """Every query asked and its answer: the prompt, the K candidate texts, the chosen position, and the head's
    inputs (the features of the candidates when they were shown) in ``features`` ``[queries, K, H]``."""

    def __init__(self):
        self.rows: list[tuple[str, list[str], int]] = []
        self.features: torch.Tensor | None = None

    def add(self, prompt: str, texts: list[str], chosen: int, features: torch.Tensor) -> None:
        self.rows.append((prompt, texts, chosen))
        self.features = features[None] if self.features is None else torch.cat([self.features, features[None]])

    def state_dict(self) -> dict:
        return {"rows": [[p, list(t), c] for p, t, c in self.rows],
                **({"features": self.features} if self.features is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [(str(p), [str(t) for t in texts], int(c)) for p, texts, c in state["rows"]]
        self.features = state.get("features")


def train_joint_lm(config: JointConfig, prompts: Sequence[str], feedback: FeedbackSource, model=None,
                   tokenizer=None) -> TrainResult:
    """Joint learning on ``prompts`` and ``config.model`` (module docstring), the choices asked of ``feedback``.
    Saves the LM as a causal-LM folder with its head beside it; ``extra``: the query ``ledger`` and ``choices``."""
    if not prompts:
        raise ValueError("joint learning needs at least one prompt")
    policy, tokenizer = load_policy(config, model, tokenizer)
    prompts = as_prompts(prompts, tokenizer)  # strings, or TRL prompt-only rows (conversational: templated)
    check_prompts_fit(tokenizer, prompts, config.max_new_tokens, policy)
    head = build_epistemic_head(config.uncertainty, policy.config.hidden_size, config.index_dim,
                                config.ensemble_size, config.head_hidden, config.prior_scale, config.seed + 1)
    ledger, choices = QueryLedger(budget=config.query_budget), SampledChoices()
    trainer = Trainer(config, JointLM(policy, head), name="joint", state_objects=(ledger, choices))
    step = GradientStep(trainer, total_updates=config.steps * config.updates_per_round)
    k, tau = config.candidates, config.choice_temperature
    pool = config.candidate_pool or 2 * k
    joint_head = trainer.unwrapped_model().head

    def collate(prompt_list: Sequence[str], texts: Sequence[str]):
        return collate_demos(tokenizer, [Demo(p, t) for p, t in zip(prompt_list, texts)], config.max_length)

    def iteration(it: int) -> dict:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + it)
        people = random.Random(config.seed * 1_000_003 + it)
        torch.manual_seed(config.seed * 1_000_033 + it)  # the samples, likewise a function of (seed, it)
        joint = trainer.unwrapped_model()
        asked = [prompts[i] for i in batch_indices(len(prompts), config.queries_per_round, config.seed, it)]
        texts = generate(joint.policy, tokenizer, asked, config.max_new_tokens, samples_per_prompt=pool,  # 1.
                         temperature=config.boltzmann_temperature).texts
        batch = collate([p for p in asked for _ in range(pool)], texts)
        with torch.no_grad():  # 2. the pool's utilities and the head's inputs
            logps, features = joint(*(t.to(trainer.device) for t in (batch.input_ids, batch.attention_mask,
                                                                      batch.response_mask)))
        logps, features = logps.cpu().view(len(asked), pool), features.cpu().view(len(asked), pool, -1)
        if choices.features is None:  # the head's inputs standardised by the first pool's (checkpointed buffers)
            set_feature_scaling(joint.head, features.flatten(0, 1))
        for q, prompt in enumerate(asked):  # 3. choose K of the pool, ask
            def sample(n: int, q=q) -> torch.Tensor:
                with torch.no_grad():
                    index = joint.head.sample_index(n, generator).to(trainer.device)
                    return logps[q] / tau + joint.head(features[q].to(trainer.device), index).cpu()

            shown = select_candidates(config.explore, logps[q] / tau, sample, k, generator,
                                      config.boltzmann_temperature, config.infomax_samples, config.max_resamples,
                                      config.posterior_pick)
            ledger.record("joint")
            candidates = [texts[q * pool + i] for i in shown]
            choices.add(prompt, candidates, feedback.choose(prompt, candidates, people), features[q, shown])

        def loss_fn(rows: list[int], index: torch.Tensor):  # 4. E_z choice NLL + the head's L2 (joint.py's loss)
            picked = [choices.rows[i] for i in rows]
            batch = collate([p for p, texts, _ in picked for _ in texts], [t for _, texts, _ in picked for t in texts])
            chosen = torch.tensor([c for _, _, c in picked], device=trainer.device)
            head_inputs = choices.features[rows].flatten(0, 1).to(trainer.device)
            logps, _, offsets = trainer.model(batch.input_ids.to(trainer.device), batch.attention_mask.to(
                trainer.device), batch.response_mask.to(trainer.device), index, head_inputs)
            return joint_loss(logps, offsets, chosen, config, joint_head)

        metrics: dict = {}
        for _ in range(config.updates_per_round):
            draw = torch.randint(len(choices.rows), (config.batch_size,), generator=generator).tolist()
            index = joint_head.sample_index(config.index_samples, generator).to(trainer.device)
            mine = trainer.shard(draw)
            metrics = step(micro_batches(mine, config.grad_accum), lambda rows, index=index: loss_fn(rows, index))
        return {**metrics, "queries": ledger.total}  # 5.

    trainer.fit(iteration, config.steps, description=f"joint ({config.explore}, your prompts)")
    return trainer.finish(tokenizer, save=save_joint_model, ledger=ledger, choices=choices)

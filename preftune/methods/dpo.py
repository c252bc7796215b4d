"""Direct Preference Optimization (Rafailov et al. 2023), with conservative label smoothing.

The reference log-probs are computed once, before the first update, from the starting policy, so no
second model stays in memory during training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from preftune.config import TrainConfig, doc
from preftune.data import Pair, collate_pairs
from preftune.losses import dpo_loss
from preftune.methods.sft import TrainedPolicy
from preftune.models import load_policy, save_causal_lm
from preftune.rollout import response_token_logprobs, score_logprobs
from preftune.trainer import Trainer


@dataclass
class DPOConfig(TrainConfig):
    output_dir: str = field(default="runs/dpo", metadata=doc("Where checkpoints, metrics and the final model go."))
    lr: float = field(default=2e-4, metadata=doc("Peak learning rate of AdamW.", gt=0))
    beta: float = field(default=0.1, metadata=doc("DPO temperature β: strength of the implicit KL to the reference.",
                                                  gt=0))
    label_smoothing: float = field(default=0.0, metadata=doc(
        "Conservative DPO ε: assumed probability that a label is flipped (0 = plain DPO).", ge=0, le=0.5))


def reference_logprobs(model, tokenizer, pairs: Sequence[Pair], max_length: int, chunk: int = 256) -> torch.Tensor:
    """Sequence log-probs ``[N, 2]`` (chosen, rejected) of every pair under ``model``, computed once."""
    out = []
    for s in range(0, len(pairs), chunk):
        part = pairs[s:s + chunk]
        b = collate_pairs(tokenizer, part, max_length)
        seq = score_logprobs(model, b.input_ids, b.attention_mask, b.response_mask).sum(-1)
        out.append(torch.stack([seq[: len(part)], seq[len(part):]], dim=1))
    return torch.cat(out)


def train_dpo(config: DPOConfig, pairs: Sequence[Pair], model=None, tokenizer=None) -> TrainedPolicy:
    model, tokenizer = load_policy(config, model, tokenizer)
    ref = reference_logprobs(model, tokenizer, pairs, config.max_length)
    trainer = Trainer(config, model, name="dpo")

    def loss_fn(indices: list[int]):
        b = collate_pairs(tokenizer, [pairs[i] for i in indices], config.max_length).to(trainer.device)
        logps = response_token_logprobs(trainer.model, b.input_ids, b.attention_mask, b.response_mask).sum(-1)
        chosen, rejected = logps[: len(indices)], logps[len(indices):]
        ref_c, ref_r = ref[indices, 0].to(trainer.device), ref[indices, 1].to(trainer.device)
        loss = dpo_loss(chosen, rejected, ref_c, ref_r, config.beta, config.label_smoothing)
        margin = config.beta * ((chosen - ref_c) - (rejected - ref_r))
        return loss, {"reward_accuracy": (margin > 0).float().mean().item(), "reward_margin": margin.mean().item()}

    history = trainer.fit_dataset(len(pairs), loss_fn, description="dpo")
    model = trainer.unwrapped_model()
    path = save_causal_lm(model, tokenizer, Path(config.output_dir) / "final") if trainer.is_main else None
    return TrainedPolicy(model, tokenizer, history, path)

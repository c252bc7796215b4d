"""Supervised fine-tuning: maximum likelihood on demonstrations, prompt tokens masked out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from preftune.config import TrainConfig
from preftune.data import Demo, as_records, check_fits, collate_demos
from preftune.losses import sft_loss
from preftune.models import load_policy
from preftune.rollout import model_logits
from preftune.trainer import GradientStep, Trainer, TrainResult


@dataclass
class SFTConfig(TrainConfig):
    method_name = "sft"


def train_sft(config: SFTConfig, demos: Sequence[Demo], model=None, tokenizer=None) -> TrainResult:
    """SFT on `Demo` records or TRL prompt-completion rows (a ``datasets.Dataset`` or dicts)."""
    demos = as_records(demos, Demo, config.allow_degenerate)
    model, tokenizer = load_policy(config, model, tokenizer)
    check_fits(tokenizer, [d.prompt for d in demos], config.max_length, model)
    trainer = Trainer(config, model, name="sft")
    step = GradientStep(trainer)

    def loss_fn(indices: list[int]):
        batch = collate_demos(tokenizer, [demos[i] for i in indices], config.max_length).to(trainer.device)
        logits = model_logits(trainer.model, batch.input_ids, batch.attention_mask)[:, :-1]
        return sft_loss(logits, batch.input_ids[:, 1:], batch.response_mask[:, 1:]), {}

    trainer.fit_dataset(len(demos), step, loss_fn, description="sft")
    return trainer.finish(tokenizer)

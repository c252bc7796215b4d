"""Supervised fine-tuning: maximum likelihood on demonstrations, prompt tokens masked out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from preftune.config import TrainConfig, doc
from preftune.data import Demo, collate_demos
from preftune.losses import sft_loss
from preftune.models import load_policy, save_causal_lm
from preftune.rollout import model_logits
from preftune.trainer import Trainer


@dataclass
class SFTConfig(TrainConfig):
    output_dir: str = field(default="runs/sft", metadata=doc("Where checkpoints, metrics and the final model go."))


@dataclass
class TrainedPolicy:
    model: object
    tokenizer: object
    history: list[dict]
    path: Path | None


def train_sft(config: SFTConfig, demos: Sequence[Demo], model=None, tokenizer=None) -> TrainedPolicy:
    model, tokenizer = load_policy(config, model, tokenizer)
    trainer = Trainer(config, model, name="sft")

    def loss_fn(indices: list[int]):
        batch = collate_demos(tokenizer, [demos[i] for i in indices], config.max_length).to(trainer.device)
        logits = model_logits(trainer.model, batch.input_ids, batch.attention_mask)[:, :-1]
        return sft_loss(logits, batch.input_ids[:, 1:], batch.response_mask[:, 1:]), {}

    history = trainer.fit_dataset(len(demos), loss_fn, description="sft")
    model = trainer.unwrapped_model()
    path = save_causal_lm(model, tokenizer, Path(config.output_dir) / "final") if trainer.is_main else None
    return TrainedPolicy(model, tokenizer, history, path)

"""Supervised fine-tuning: maximum likelihood on demonstrations, prompt tokens masked out."""

from __future__ import annotations

from collections.abc import Sequence

from preftune.data import Demo, as_records, check_fits, collate_demos
from preftune.losses import response_nll
from preftune.methods.configs import SFTConfig
from preftune.models import load_policy
from preftune.rollout import label_scores
from preftune.trainer import GradientStep, Trainer, TrainResult


def train_sft(config: SFTConfig, demos: Sequence[Demo], model=None, tokenizer=None,
              eval_data: Sequence[Demo] | None = None) -> TrainResult:
    """SFT on `Demo` records or TRL rows (a ``datasets.Dataset`` or dicts): prompt-completion, ``text``, or
    conversational (``messages``: the loss is on the assistant turns only); ``eval_data`` (the same kinds) is
    scored every ``eval_every`` steps (``eval_loss``)."""
    demos = as_records(demos, Demo, allow_degenerate=config.allow_degenerate)  # checked before the model loads
    eval_demos = as_records(eval_data or [], Demo, allow_degenerate=config.allow_degenerate)
    model, tokenizer = load_policy(config, model, tokenizer)
    demos, eval_demos = as_records(demos, Demo, tokenizer), as_records(eval_demos, Demo, tokenizer)
    check_fits(tokenizer, [d.prompt for d in demos + eval_demos], config.max_length, model)
    trainer = Trainer(config, model, name="sft", num_examples=len(demos))
    step = GradientStep(trainer)

    def loss_on(rows: Sequence[Demo]):
        def loss_fn(indices: list[int]):
            batch = collate_demos(tokenizer, [rows[i] for i in indices], config.max_length).to(trainer.device)
            mask = batch.response_mask[:, 1:]  # the head runs at the response tokens only
            logprobs = label_scores(trainer.model, batch.input_ids, batch.attention_mask, mask.bool()).logprobs
            return response_nll(logprobs, mask), {}
        return loss_fn

    trainer.fit_dataset(len(demos), step, loss_on(demos), description="sft", eval_examples=len(eval_demos),
                        eval_loss_fn=loss_on(eval_demos))
    return trainer.finish(tokenizer)

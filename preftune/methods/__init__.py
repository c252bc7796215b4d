"""One module per method: its config dataclass and its ``train_*`` function on the shared trainer, returning a
`preftune.trainer.TrainResult`.

`METHODS` lists them with the kind of input each takes; `preftune train <name>` is generated from it, and
`preftune.inputs.train_from_inputs` builds each kind's input from a task or a file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from preftune.methods.configs import (
    BoNConfig,
    DPOConfig,
    GRPOConfig,
    IQLearnConfig,
    JointConfig,
    KTOConfig,
    PPOConfig,
    RewardConfig,
    RLOOConfig,
    RLPConfig,
    SFTConfig,
    ZPGConfig,
)

# demos: {prompt, response}; pairs: {prompt, chosen, rejected}; unpaired: {prompt, completion, label}; prompts:
# prompts and a reward; comparisons: a GridWorld or prompts, judged by a feedback source; choices: the population
# task or prompts, chosen by a feedback source; pipeline: the config says it all
InputKind = Literal["demos", "pairs", "unpaired", "prompts", "comparisons", "choices", "pipeline"]


def lazy(target: str) -> Callable:
    """``lazy("sft:train_sft")``: `preftune.methods.sft.train_sft`, imported at its first call, so building the
    table below (and `preftune --help`) imports no torch."""
    module, name = target.split(":")

    def train(*args, **kwargs):
        return getattr(importlib.import_module(f"preftune.methods.{module}"), name)(*args, **kwargs)

    train.__name__ = train.__qualname__ = name
    return train


@dataclass(frozen=True)
class Method:
    """A method as `preftune train` sees it. ``train`` takes ``(config, input, model=None, tokenizer=None)`` for
    demos and pairs, ``(config, prompts, reward, ...)`` for prompts; the other kinds are built by
    `preftune.inputs.train_from_inputs`, which knows their inputs. ``config`` comes from the torch-free
    `preftune.methods.configs` and ``train`` is `lazy`, so building the table imports no torch."""

    name: str
    config: type
    inputs: InputKind
    train: Callable
    summary: str
    fixed: dict = field(default_factory=dict)  # config fields the command sets (zbcpg: algorithm)
    shows: tuple[str, ...] = ()  # metrics of the last iteration the command prints when done
    option_defaults: dict = field(default_factory=dict)  # the command's input options with another default


METHODS = {m.name: m for m in (
    Method("sft", SFTConfig, "demos", lazy("sft:train_sft"),
           "Supervised fine-tuning on demonstrations {prompt, response}.", shows=("loss",)),
    Method("reward", RewardConfig, "pairs", lazy("reward:train_reward"),
           "Bradley–Terry reward model on pairs {prompt, chosen, rejected}.", shows=("loss", "accuracy")),
    Method("dpo", DPOConfig, "pairs", lazy("dpo:train_dpo"),
           "Direct Preference Optimization on pairs {prompt, chosen, rejected}.", shows=("loss", "reward_accuracy")),
    Method("kto", KTOConfig, "unpaired", lazy("kto:train_kto"),
           "KTO (Kahneman–Tversky Optimization) on unpaired preferences {prompt, completion, label}; with --task, "
           "the task's labelled pairs unpaired (chosen: desirable, rejected: not).", shows=("loss", "kl")),
    Method("iqlearn", IQLearnConfig, "demos", lazy("iqlearn:train_iqlearn"),
           "IQLearn (inverse RL as TD-regularised MLE) on demonstrations {prompt, response}; --alpha > 0 mixes fresh "
           "policy samples into each batch (online IQLearn).", shows=("loss",)),
    Method("ppo", PPOConfig, "prompts", lazy("ppo:train_ppo"),
           "PPO with a value head, GAE and a KL penalty to the starting policy (--model), rewarded by --reward.",
           shows=("score", "kl")),
    Method("rloo", RLOOConfig, "prompts", lazy("rloo:train_rloo"),
           "RLOO: k samples per prompt, leave-one-out baseline, KL penalty in the reward.", shows=("score", "kl")),
    Method("grpo", GRPOConfig, "prompts", lazy("rloo:train_grpo"),
           "GRPO: k samples per prompt, group-normalised advantages, k3 KL loss term; with --reward oracle on "
           "arithmetic, RL from verifiable rewards.", shows=("score", "kl")),
    Method("bon", BoNConfig, "prompts", lazy("bon:run_bon"),
           "Best-of-N: sample N responses per prompt (the task's eval prompts or --data), keep the best by --reward; "
           "writes responses.jsonl and metrics.json.", shows=("score", "oracle_reward"),
           option_defaults={"num_prompts": 200}),
    Method("zpg", ZPGConfig, "comparisons", lazy("zpg:train_zpg_lm"),
           "ZPG: zeroth-order policy gradient straight from human comparisons of trajectory pairs (no reward "
           "model); --task gridworld (tabular policy, exact return), a text task such as preference-language (an "
           "LM), or your --data prompts judged by --feedback.", fixed={"algorithm": "zpg"},
           shows=("queries", "score", "true_return")),
    Method("zbcpg", ZPGConfig, "comparisons", lazy("zpg:train_zpg_lm"),
           "ZBCPG: ZPG perturbing one random block of coordinates per iteration; --task gridworld, a text task, or "
           "--data prompts with --feedback.",
           fixed={"algorithm": "zbcpg"}, shows=("queries", "score", "true_return")),
    Method("joint", JointConfig, "choices", lazy("joint:train_joint"),
           "Joint learning from choices on the population task, or on your --data prompts and --model with --feedback "
           "choosing among the policy's samples: the LM is the choice model (Luce on its own probabilities), an "
           "epinet or ensemble gives its posterior, --explore picks which candidates to show.",
           shows=("queries", "kl", "tv")),
    Method("rlp", RLPConfig, "pipeline", lazy("rlp_pipeline:train_rlp"),
           "Reward Learning on Policy: SFT -> reward model -> PPO -> n policy samples per instruction -> retrain the "
           "reward model (--method uml|spg, or the baselines select-all|rlaif) -> PPO again. Every stage is saved "
           "under --output-dir (stages-<method>.json says which were trained or loaded); --resume reuses finished "
           "stages (also another method's). `preftune eval` or `preftune bench rlp` measures the policies."),
)}

"""One module per method: its config dataclass and its ``train_*`` function on the shared trainer, returning a
`preftune.trainer.TrainResult`.

`METHODS` lists them with the kind of input each takes; `preftune train <name>` is generated from it, and
`preftune.inputs.train_from_inputs` builds each kind's input from a task or a file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from preftune.methods.bon import BoNConfig, run_bon
from preftune.methods.dpo import DPOConfig, train_dpo
from preftune.methods.iqlearn import IQLearnConfig, train_iqlearn
from preftune.methods.joint import JointConfig, train_joint
from preftune.methods.ppo import PPOConfig, train_ppo
from preftune.methods.reward import RewardConfig, train_reward
from preftune.methods.rloo import GRPOConfig, RLOOConfig, train_grpo, train_rloo
from preftune.methods.rlp import RLPConfig
from preftune.methods.rlp_pipeline import train_rlp
from preftune.methods.sft import SFTConfig, train_sft
from preftune.methods.zpg import ZPGConfig, train_zpg_lm

# demos: {prompt, response}; pairs: {prompt, chosen, rejected}; prompts: prompts and a reward; comparisons: a
# GridWorld or prompts, judged by a feedback source; choices: the population task or prompts, chosen by a feedback
# source; pipeline: the config says it all
InputKind = Literal["demos", "pairs", "prompts", "comparisons", "choices", "pipeline"]


@dataclass(frozen=True)
class Method:
    """A method as `preftune train` sees it. ``train`` takes ``(config, input, model=None, tokenizer=None)`` for
    demos and pairs, ``(config, prompts, reward, ...)`` for prompts; the other kinds are built by
    `preftune.inputs.train_from_inputs`, which knows their inputs."""

    name: str
    config: type
    inputs: InputKind
    train: Callable
    summary: str
    fixed: dict = field(default_factory=dict)  # config fields the command sets (zbcpg: algorithm)
    shows: tuple[str, ...] = ()  # metrics of the last iteration the command prints when done
    option_defaults: dict = field(default_factory=dict)  # the command's input options with another default


METHODS = {m.name: m for m in (
    Method("sft", SFTConfig, "demos", train_sft,
           "Supervised fine-tuning on demonstrations {prompt, response}.", shows=("loss",)),
    Method("reward", RewardConfig, "pairs", train_reward,
           "Bradley–Terry reward model on pairs {prompt, chosen, rejected}.", shows=("loss", "accuracy")),
    Method("dpo", DPOConfig, "pairs", train_dpo,
           "Direct Preference Optimization on pairs {prompt, chosen, rejected}.", shows=("loss", "reward_accuracy")),
    Method("iqlearn", IQLearnConfig, "demos", train_iqlearn,
           "IQLearn (inverse RL as TD-regularised MLE) on demonstrations {prompt, response}; --alpha > 0 mixes fresh "
           "policy samples into each batch (online IQLearn).", shows=("loss",)),
    Method("ppo", PPOConfig, "prompts", train_ppo,
           "PPO with a value head, GAE and a KL penalty to the starting policy (--model), rewarded by --reward.",
           shows=("score", "kl")),
    Method("rloo", RLOOConfig, "prompts", train_rloo,
           "RLOO: k samples per prompt, leave-one-out baseline, KL penalty in the reward.", shows=("score", "kl")),
    Method("grpo", GRPOConfig, "prompts", train_grpo,
           "GRPO: k samples per prompt, group-normalised advantages, k3 KL loss term; with --reward oracle on "
           "arithmetic, RL from verifiable rewards.", shows=("score", "kl")),
    Method("bon", BoNConfig, "prompts", run_bon,
           "Best-of-N: sample N responses per prompt (the task's eval prompts or --data), keep the best by --reward; "
           "writes responses.jsonl and metrics.json.", shows=("score", "oracle_reward"),
           option_defaults={"num_prompts": 200}),
    Method("zpg", ZPGConfig, "comparisons", train_zpg_lm,
           "ZPG: zeroth-order policy gradient straight from human comparisons of trajectory pairs (no reward "
           "model); --task gridworld (tabular policy, exact return), a text task such as preference-language (an "
           "LM), or your --data prompts judged by --feedback.", fixed={"algorithm": "zpg"},
           shows=("queries", "score", "true_return")),
    Method("zbcpg", ZPGConfig, "comparisons", train_zpg_lm,
           "ZBCPG: ZPG perturbing one random block of coordinates per iteration; --task gridworld, a text task, or "
           "--data prompts with --feedback.",
           fixed={"algorithm": "zbcpg"}, shows=("queries", "score", "true_return")),
    Method("joint", JointConfig, "choices", train_joint,
           "Joint learning from choices on the population task, or on your --data prompts and --model with --feedback "
           "choosing among the policy's samples: the LM is the choice model (Luce on its own probabilities), an "
           "epinet or ensemble gives its posterior, --explore picks which candidates to show.",
           shows=("queries", "kl", "tv")),
    Method("rlp", RLPConfig, "pipeline", train_rlp,
           "Reward Learning on Policy: SFT -> reward model -> PPO -> n policy samples per instruction -> retrain the "
           "reward model (--method uml|spg, or the baselines select-all|rlaif) -> PPO again. Every stage is saved "
           "under --output-dir (stages-<method>.json says which were trained or loaded); --resume reuses finished "
           "stages (also another method's). `preftune eval` or `preftune bench rlp` measures the policies."),
)}

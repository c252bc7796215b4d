"""Every method's config dataclass, in one module that imports no torch: `preftune train <method> --help` lists a
config's fields without loading the libraries its training needs (each method module re-exports its config, so
``from preftune.methods.sft import SFTConfig`` works as before)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from preftune.config import ConfigError, LRSchedule, ModelConfig, RunConfig, TrainConfig, doc, override

if TYPE_CHECKING:
    from preftune.feedback import Annotator


@dataclass
class SFTConfig(TrainConfig):
    method_name = "sft"


@dataclass
class DPOConfig(TrainConfig):
    method_name = "dpo"
    lr: float = override(TrainConfig, "lr", 2e-4)
    beta: float = field(default=0.1, metadata=doc("DPO temperature β: strength of the implicit KL to the reference.",
                                                  gt=0))
    label_smoothing: float = field(default=0.0, metadata=doc(
        "Conservative DPO ε: assumed probability that a label is flipped (0 = plain DPO).", ge=0, le=0.5))


@dataclass
class KTOConfig(TrainConfig):
    method_name = "kto"
    lr: float = override(TrainConfig, "lr", 2e-4)
    beta: float = field(default=0.1, metadata=doc("KTO temperature β: strength of the implicit KL to the reference.",
                                                  gt=0))
    desirable_weight: float = field(default=1.0, metadata=doc(
        "λ_D, the weight of desirable rows' losses (raise it when they are fewer than the undesirable ones).", gt=0))
    undesirable_weight: float = field(default=1.0, metadata=doc(
        "λ_U, the weight of undesirable rows' losses.", gt=0))


@dataclass
class RewardConfig(TrainConfig):
    """The shared lr of 1e-3 beat 3e-4 in every run of the tiny-model sweep (docs/benchmarks.md); a reward model
    learns the prompt-conditional part of a preference (is this word on the prompt's topic?) slowly, so it wants
    many distinct pairs rather than many epochs over few: `preftune run` gives it 80k pairs, 3,000 steps of 128."""

    method_name = "reward"
    num_heads: int = field(default=1, metadata=doc("Reward heads on one body (>1: an ensemble).", ge=1))
    pooling: Literal["last", "sum"] = field(default="last", metadata=doc(
        "Where the head reads the body: 'last' non-pad token (TRL's design), or 'sum' of a score at every token "
        "(a reward additive over tokens; `preftune run` uses it, docs/benchmarks.md)."))


@dataclass
class IQLearnConfig(SFTConfig):
    method_name = "iqlearn"
    lam: float = field(default=0.01, metadata=doc(
        "λ, weight of the TD term (λ = 1/(4α_χ²) of IQ-Learn's χ² regulariser); 0 = plain MLE. 0.01 kept MLE's "
        "accuracy in the sweep of docs/benchmarks.md; larger λ buys diversity with accuracy.", ge=0))
    gamma: float = field(default=1.0, metadata=doc("Discount γ of the token MDP.", ge=0, le=1))
    alpha: float = field(default=0.0, metadata=doc(
        "Online mix-in ratio: the fraction of each batch that is fresh policy samples (0 = offline IQLearn).",
        ge=0, le=0.9))
    temperature: float = field(default=1.0, metadata=doc("Sampling temperature of the online policy samples.", gt=0))
    max_new_tokens: int = field(default=32, metadata=doc(
        "Longest online policy sample in tokens (the CLI defaults it to the task's max_response_chars + 1).", ge=1))

    def check(self) -> None:
        super().check()
        if self.alpha > 0 and self.lam == 0:
            raise ConfigError("config field 'lam' must be > 0 when 'alpha' > 0: online, the value term is linear in "
                              "V and only the χ² (TD) term bounds it")
        if self.alpha > 0:
            mixture_problem(self.alpha, self.batch_size, self.grad_accum, raise_as=ConfigError)


@dataclass
class OnlineConfig(TrainConfig):
    """Fields every online method shares. ``steps`` counts iterations (one rollout batch and its updates)."""

    steps: int = field(default=100, metadata=doc(
        "Iterations: each samples one rollout batch and runs ppo_epochs × num_minibatches optimizer steps on it.",
        ge=1))
    batch_size: int = field(default=32, metadata=doc("Prompts per iteration, over all processes.", ge=1))
    lr: float = override(TrainConfig, "lr", 1e-4)
    lr_schedule: LRSchedule = override(TrainConfig, "lr_schedule", "constant")
    warmup_ratio: float = override(TrainConfig, "warmup_ratio", 0.0)
    save_every: int = override(TrainConfig, "save_every", 20)
    log_every: int = override(TrainConfig, "log_every", 1)
    # --- sampling
    samples_per_prompt: int = field(default=1, metadata=doc("Responses sampled per prompt.", ge=1))
    max_new_tokens: int = field(default=32, metadata=doc(
        "Longest sampled response in tokens (the CLI defaults it to the task's max_response_chars + 1).", ge=1))
    temperature: float = field(default=1.0, metadata=doc(
        "Sampling temperature; policy, behaviour and reference log-probs all use softmax(logits / T).", gt=0))
    generation_batch_size: int = field(default=256, metadata=doc("Sequences decoded together.", ge=1))
    log_completions: bool = field(default=False, metadata=doc(
        "Append every logged iteration's samples (prompt, completion, score) to output_dir/completions.jsonl "
        "(TRL's log_completions)."))
    # --- optimisation of each rollout batch
    ppo_epochs: int = field(default=1, metadata=doc(
        "Passes over each rollout batch (1 = on-policy: the ratio is 1 at every step's start).", ge=1))
    num_minibatches: int = field(default=1, metadata=doc("Optimizer steps per pass over a rollout batch.", ge=1))
    clip_range: float = field(default=0.2, metadata=doc("PPO ratio clip ε.", gt=0))
    # --- KL to the reference policy
    kl_coef: float = field(default=0.05, metadata=doc(
        "KL coefficient β (the starting value when kl_target is set).", ge=0))
    kl_target: float | None = field(default=None, metadata=doc(
        "Target sequence KL in nats for the adaptive controller (Ziegler et al. 2019); none = fixed β.", gt=0))
    kl_horizon: int = field(default=10000, metadata=doc(
        "Adaptive controller horizon in samples: β moves by at most 20% × samples/horizon per iteration.", ge=1))
    kl_stop: float = field(default=50.0, metadata=doc(
        "Stop when the mean sequence KL to the reference exceeds this many nats (inf = never).", gt=0, allow_inf=True))

    def check(self) -> None:
        super().check()
        rows = self.batch_size * self.samples_per_prompt
        if rows < self.num_minibatches * self.grad_accum:
            raise ConfigError(f"batch_size × samples_per_prompt ({rows}) must be at least num_minibatches × "
                              f"grad_accum ({self.num_minibatches} × {self.grad_accum}) so no step is empty")

    def total_updates(self) -> int:
        return self.steps * self.ppo_epochs * self.num_minibatches


@dataclass
class PPOConfig(OnlineConfig):
    method_name = "ppo"
    ppo_epochs: int = override(OnlineConfig, "ppo_epochs", 4)
    num_minibatches: int = override(OnlineConfig, "num_minibatches", 2)
    lam: float = field(default=0.95, metadata=doc("GAE λ (γ is 1: the reward is paid once per response).",
                                                  ge=0, le=1))
    vf_coef: float = field(default=0.1, metadata=doc("Weight of the value loss beside the policy loss.", ge=0))
    value_clip_range: float = field(default=0.2, metadata=doc(
        "Clip of the value change per rollout batch in the value loss (0 = no clipping).", ge=0))
    whiten_advantages: bool = field(default=True, metadata=doc("Normalise advantages over each rollout batch."))


@dataclass
class RLOOConfig(OnlineConfig):
    """RLOO: leave-one-out baseline, the KL folded into the reward. `GRPOConfig` selects GRPO."""

    method_name = "rloo"
    samples_per_prompt: int = override(OnlineConfig, "samples_per_prompt", 4)

    def check(self) -> None:
        super().check()
        if self.samples_per_prompt < 2:
            raise ConfigError(f"config field 'samples_per_prompt' must be >= 2 for {self.method_name} "
                              f"(the baseline comes from a prompt's other samples), got {self.samples_per_prompt}")


@dataclass
class GRPOConfig(RLOOConfig):
    """GRPO: group-normalised advantage, the KL as a k3 loss term (DeepSeekMath uses β = 0.04)."""

    method_name = "grpo"
    kl_coef: float = override(OnlineConfig, "kl_coef", 0.04)


@dataclass
class BoNConfig(ModelConfig):
    method_name = "bon"
    n: int = field(default=16, metadata=doc("Samples per prompt; the best by the reward is kept.", ge=1))
    temperature: float = field(default=1.0, metadata=doc("Sampling temperature (0 = greedy: every sample alike).",
                                                         ge=0))
    max_new_tokens: int = field(default=32, metadata=doc(
        "Longest sampled response in tokens (the CLI defaults it to the task's max_response_chars + 1).", ge=1))
    generation_batch_size: int = field(default=256, metadata=doc("Sequences decoded together.", ge=1))


@dataclass
class ZPGConfig(ModelConfig):
    """ZPG's update is its own (θ ← θ + α·ĝ), so it takes no optimizer fields."""

    method_name = "zpg"
    algorithm: Literal["zpg", "zbcpg"] = field(default="zpg", metadata=doc(
        "zpg: perturb all coordinates at once; zbcpg: one random block of block_size coordinates per iteration."))
    batch_size: int = field(default=16, metadata=doc("N: trajectory pairs per iteration.", ge=1))
    annotators_per_pair: int = field(default=4, metadata=doc("M: annotator labels per pair (N·M queries per "
                                                             "iteration).", ge=1))
    mu: float = field(default=4.0, metadata=doc("Perturbation radius μ (the norm of θ' − θ).", gt=0))
    lr: float = field(default=0.1, metadata=doc(
        "Step size α of θ ← θ + α·ĝ (GridWorld-tuned; the CLI lowers it for LMs).", gt=0))
    link: Literal["bradley-terry", "thurstone", "weibull"] = field(default="bradley-terry", metadata=doc(
        "The link σ the learner inverts; a mismatch with annotator_link is allowed."))
    link_shape: float = field(default=2.0, metadata=doc("Shape k of the learner's Weibull link.", gt=0))
    clip_eps: float = field(default=0.05, metadata=doc(
        "Preference shares are clipped to [eps, 1 − eps] before σ⁻¹ (σ⁻¹(0), σ⁻¹(1) are infinite).", gt=0, le=0.49))
    block_size: int = field(default=4, metadata=doc(
        "ZBCPG: coordinates per block (4 = one GridWorld state's action logits).", ge=1))
    perturb: Literal["all", "lora"] = field(default="all", metadata=doc(
        "LM: perturb all trainable weights, or fresh LoRA adapters only (sets lora)."))
    param_filter: str = field(default="", metadata=doc(
        "LM: perturb only the weights whose name matches this regex (a fixed block); empty = no filter."))
    annotator_link: Literal["bradley-terry", "thurstone", "weibull"] = field(default="bradley-terry", metadata=doc(
        "The simulated annotators' link."))
    annotator_temperature: float = field(default=1.0, metadata=doc(
        "Annotators prefer by σ((u' − u)/T); smaller T = more decisive.", gt=0))
    annotator_flip_prob: float = field(default=0.0, metadata=doc("Annotator label-flip probability.", ge=0, le=0.5))
    query_budget: int | None = field(default=None, metadata=doc(
        "Stop with an error if the ledger would exceed this many human queries; none = no limit.", ge=1))
    # --- GridWorld
    gridworld_slip: float = field(default=0.2, metadata=doc("GridWorld: probability a move slips sideways.",
                                                            ge=0, le=1))
    gridworld_horizon: int = field(default=20, metadata=doc("GridWorld: moves per episode.", ge=1))
    # --- LM sampling
    max_new_tokens: int = field(default=30, metadata=doc("LM: longest sampled response in tokens.", ge=1))
    temperature: float = field(default=1.0, metadata=doc("LM: sampling temperature.", gt=0))
    save_every: int = override(RunConfig, "save_every", 0)
    log_every: int = override(RunConfig, "log_every", 1)

    def check(self) -> None:
        super().check()
        if self.perturb == "lora" and self.param_filter:
            raise ConfigError("config fields 'perturb'='lora' and 'param_filter' exclude each other: LoRA already "
                              "picks the perturbed weights")
        try:
            re.compile(self.param_filter)
        except re.error as e:
            raise ConfigError(f"config field 'param_filter' must be a regular expression, got "
                              f"{self.param_filter!r} ({e})") from None

    def annotator(self, utility: Callable[[str, object], float]) -> Annotator:
        from preftune.feedback import Annotator

        return Annotator(utility, link=self.annotator_link, temperature=self.annotator_temperature,
                         flip_prob=self.annotator_flip_prob)


@dataclass
class JointConfig(TrainConfig):
    method_name = "joint"
    steps: int = field(default=40, metadata=doc("Rounds: each asks queries_per_round queries, then trains.", ge=1))
    batch_size: int = field(default=128, metadata=doc("Choices per optimizer step, drawn from all asked so far.",
                                                      ge=1))
    lr_schedule: LRSchedule = override(TrainConfig, "lr_schedule", "constant")
    warmup_ratio: float = override(TrainConfig, "warmup_ratio", 0.0)
    save_every: int = override(TrainConfig, "save_every", 0)
    log_every: int = override(TrainConfig, "log_every", 1)
    # --- queries
    explore: Literal["passive", "boltzmann", "infomax", "ts", "double-ts"] = field(default="double-ts", metadata=doc(
        "Which candidates to show: passive (uniform), boltzmann (policy samples), infomax (most informative), "
        "ts (one posterior sample's best), double-ts (each candidate from its own posterior sample)."))
    queries_per_round: int = field(default=64, metadata=doc("Queries asked per round.", ge=1))
    candidates: int = field(default=2, metadata=doc("K: candidates shown per query (2 = pairwise).", ge=2))
    query_budget: int | None = field(default=None, metadata=doc("Stop with an error beyond this many queries.", ge=1))
    choice_temperature: float = field(default=1.0, metadata=doc("τ of the choice model π^(1/τ).", gt=0))
    boltzmann_temperature: float = field(default=1.0, metadata=doc("Temperature of boltzmann's policy samples.",
                                                                   gt=0))
    infomax_samples: int = field(default=16, metadata=doc("Posterior samples per query to estimate information gain.",
                                                          ge=2))
    posterior_pick: Literal["argmax", "sample"] = field(default="sample", metadata=doc(
        "How a posterior sample picks its candidate(s) in ts / double-ts: its best response (argmax, Dwaracherla et "
        "al.), or a draw from its own choice distribution softmax(u_z) (sample, preftune's variant for the inclusive "
        "target; the default because argmax ends further from the population than passive: docs/benchmarks.md)."))
    max_resamples: int = field(default=30, metadata=doc(
        "double-ts: fresh posterior samples tried before taking the best candidate not yet picked.", ge=1))
    candidate_pool: int = field(default=0, metadata=doc(
        "infomax / ts / double-ts choose among this many distinct policy samples per query (Gumbel-top-M on "
        "log π / boltzmann_temperature), as Dwaracherla et al. choose among an LM's sampled responses; 0 = among "
        "every response. On your prompts: policy samples per query, every scheme choosing among them; 0 = 2·K.",
        ge=0))
    max_new_tokens: int = field(default=30, metadata=doc("On your prompts: longest sampled candidate in tokens.",
                                                         ge=1))
    # --- training
    updates_per_round: int = field(default=20, metadata=doc("Optimizer steps after each round's queries.", ge=1))
    # --- epistemic head
    uncertainty: Literal["epinet", "ensemble"] = field(default="epinet", metadata=doc(
        "Epistemic head on the LM's last hidden state."))
    index_dim: int = field(default=16, metadata=doc("Epinet index dimension D (z ~ N(0, I_D)).", ge=1))
    ensemble_size: int = field(default=10, metadata=doc("Heads of the ensemble.", ge=2))
    head_hidden: int = field(default=32, metadata=doc("Hidden width of the epistemic head's MLPs.", ge=1))
    prior_scale: float = field(default=1.0, metadata=doc("Scale a of the fixed random prior network.", ge=0))
    head_features: Literal["initial", "current"] = field(default="initial", metadata=doc(
        "The head's input: the starting LM's last hidden states, computed once (the head's targets stay put), or "
        "the training LM's (they drift as it learns, and the head chases them)."))
    index_samples: int = field(default=4, metadata=doc("Epistemic indices per optimizer step (the loss is their mean).",
                                                       ge=1))
    head_l2: float = field(default=1e-3, metadata=doc("L2 weight on the head's learnable parameters.", ge=0))

    def check(self) -> None:
        super().check()
        if self.candidates > 64:
            raise ConfigError(f"config field 'candidates' must be at most the 64 responses, got {self.candidates}")
        if self.candidate_pool and not self.candidates <= self.candidate_pool <= 64:
            raise ConfigError(f"config field 'candidate_pool' must be 0 or between candidates ({self.candidates}) and "
                              f"the 64 responses, got {self.candidate_pool}")


@dataclass
class RLPConfig(TrainConfig):
    """The whole pipeline. The inherited optimiser fields (steps, lr, batch_size, ...) are RLP's own stage, the
    reward-model retraining; the other stages have their own ``<stage>_`` fields, defaulting to `preftune run`'s."""

    method_name = "rlp"
    method: Literal["uml", "spg", "select-all", "rlaif"] = field(default="spg", metadata=doc(
        "How the reward model learns from policy samples: uml (multi-view information bottleneck), spg (synthetic "
        "preferences), select-all or rlaif (the baselines)."))
    task: str = field(default="preference-language", metadata=doc("Built-in task (see `preftune tasks`)."))
    # --- the stages before RLP (defaults: `preftune run`'s sizes)
    demos: int = field(default=4000, metadata=doc("Teacher demonstrations for SFT.", ge=1))
    sft_steps: int = field(default=800, metadata=doc("SFT optimizer steps.", ge=1))
    human_pairs: int = field(default=40000, metadata=doc("Annotator-labelled pairs D for the reward model.", ge=1))
    feedback: str = field(default="annotator", metadata=doc(
        "Who labels the pairs D: 'annotator' (the task's simulated annotator) or a feedback source, module:function, "
        "rm:DIR or judge:DIR[:TEMPLATE.txt] (docs/your-data.md)."))
    reward_steps: int = field(default=350, metadata=doc("Optimizer steps of the first reward model.", ge=1))
    ppo_steps: int = field(default=100, metadata=doc("PPO iterations (both PPO stages).", ge=1))
    ppo_kl_coef: float = field(default=0.2, metadata=doc(
        "PPO's KL coefficient against a learned reward model (`preftune run`'s RM_KL_COEF).", ge=0))
    # --- policy samples
    policy_instructions: int = field(default=2000, metadata=doc(
        "Training instructions drawn (with repeats) to sample the PPO policy on.", ge=1))
    samples_per_instruction: int = field(default=10, metadata=doc("n: policy samples per instruction.", ge=2))
    sample_temperature: float = field(default=1.0, metadata=doc("Temperature of the policy samples.", gt=0))
    # --- RLP's own stage: retraining the reward model (continues from the first one)
    steps: int = field(default=100, metadata=doc("Optimizer steps of the reward-model retraining.", ge=1))
    batch_size: int = field(default=128, metadata=doc("Pairs per retraining step (also the first RM's).", ge=1))
    lr: float = field(default=3e-4, metadata=doc("Peak learning rate of the retraining.", gt=0))
    confidence_threshold: float = field(default=0.5, metadata=doc(
        "SPG keeps an instruction when its largest cluster holds at least this share of the n samples.", ge=0, le=1))
    synthetic_share: float | None = field(default=None, metadata=doc(
        "spg/select-all/rlaif: share of every batch drawn from the synthetic pairs D̂; none = sample D ∪ D̂ "
        "uniformly (the paper's union).", ge=0, le=0.95))
    uml_weight: float = field(default=1.0, metadata=doc("λ: weight of the UML loss beside the BT loss.", ge=0))
    uml_lr: float = field(default=1e-3, metadata=doc(
        "Peak learning rate of the UML encoder and critic (trained from scratch; the reward model uses lr).", gt=0))
    uml_beta: float = field(default=1e-3, metadata=doc(
        "β: weight of the symmetric KL inside the UML loss (Federici et al.'s starting value).", ge=0))
    latent_dim: int = field(default=64, metadata=doc("Dimension of the UML encoders' z.", ge=1))
    match_reward_scale: bool = field(default=True, metadata=doc(
        "Rescale the retrained reward model to the first one's spread on the policy samples, so the second PPO's "
        "KL coefficient means what it meant for the first (a Bradley–Terry reward's scale is arbitrary)."))
    # --- evaluation
    eval_prompts: int = field(default=400, metadata=doc("Held-out prompts for win rates.", ge=1))
    best_of: int = field(default=16, metadata=doc("N of the Best-of-N baseline (reward model).", ge=1))
    judge_flip_prob: float = field(default=0.25, metadata=doc(
        "Label-flip probability of the simulated win-rate judge (AlpacaFarm's 0.25).", ge=0, le=0.5))
    policy_eval_pairs: int = field(default=400, metadata=doc(
        "Prompts whose two PPO-policy samples, labelled by the oracle, measure reward models on policy outputs.",
        ge=1))

    def check(self) -> None:
        super().check()
        from preftune.tasks import TASKS

        if self.task not in TASKS:
            raise ConfigError(f"config field 'task' must be one of {sorted(TASKS)}, got {self.task!r}")


def mixture_problem(alpha: float, batch: int, grad_accum: int, raise_as: type[Exception]) -> None:
    """Every micro-batch must hold at least one demonstration and one policy sample, or its loss is not the α-mixture
    objective (an empty side's mean is 0). ``batch`` is one process's share of the global batch."""
    n_policy = round(alpha * batch)
    if n_policy < grad_accum or batch - n_policy < grad_accum:
        raise raise_as(f"config field 'alpha' ({alpha}) splits a batch of {batch} per process into {n_policy} policy "
                       f"samples and {batch - n_policy} demonstrations; each must be at least grad_accum "
                       f"({grad_accum}) so every micro-batch mixes both: raise batch_size or lower grad_accum")

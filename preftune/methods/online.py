"""What every online RL method (PPO, RLOO, GRPO) shares, written once.

An *iteration* — the unit `Trainer.fit` logs and checkpoints — is:

1. draw this iteration's prompts, a pure function of (seed, iteration) (`batch_indices`), so a resumed run
   sees the same prompts;
2. `collect`: sample ``samples_per_prompt`` responses per prompt with the one sampler (`rollout.generate`,
   which also returns the behaviour log-probs), score them under the reference policy, and score them with
   the reward (a reward model, the task oracle or a simulated annotator);
3. the KL guard: stop with a `TrainingError` if the mean sequence KL to the reference exceeds ``kl_stop``;
4. the method's advantages, then `optimise`: ``ppo_epochs`` passes over the rollout in ``num_minibatches``
   optimizer steps, each through `Trainer.update`;
5. the KL controller's update and the iteration's metrics (`finish_iteration`).

The reference policy π_ref is the starting policy: a frozen deepcopy, or — for a LoRA (peft) policy — the
same model with its adapters disabled, so no second model is held in memory.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from preftune.data import as_prompts, check_prompts_fit
from preftune.losses import kl_k1
from preftune.methods.configs import OnlineConfig
from preftune.rewards import RewardFn, as_reward, reward_model_reward
from preftune.rollout import GenerationBackend, InHouseSampler, Rollout, Sampling, generate, score_logprobs
from preftune.trainer import GradientStep, Trainer, TrainingError, TrainResult, batch_indices, micro_batches

# ----------------------------------------------------------------------------------------------
# Reference policy and KL coefficient


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


class ReferencePolicy:
    """π_ref, the starting policy. Full models: a frozen deepcopy (eval mode, no gradients). LoRA (peft)
    models: no copy — the live model under ``disable_adapter()``, i.e. the base weights the adapters were
    added to (the starting policy when the adapters start at zero, as `load_policy`'s fresh LoRA does)."""

    def __init__(self, policy):
        self.uses_adapters = is_peft_model(policy)
        self.model = None
        if not self.uses_adapters:
            self.model = copy.deepcopy(policy).eval().requires_grad_(False)

    def to(self, device) -> ReferencePolicy:
        if self.model is not None:
            self.model.to(device)
        return self

    def logprobs(self, policy, rollout: Rollout, temperature: float = 1.0, batch_size: int = 64) -> torch.Tensor:
        """Per-token log-probs ``[N, T-1]`` of the rollout's responses under π_ref (zero off-response)."""
        args = (rollout.input_ids, rollout.attention_mask, rollout.response_mask)
        if self.uses_adapters:
            with policy.disable_adapter():
                return score_logprobs(policy, *args, batch_size=batch_size, temperature=temperature)
        return score_logprobs(self.model, *args, batch_size=batch_size, temperature=temperature)


class KLController:
    """The KL coefficient β: fixed, or adaptive (Ziegler et al. 2019, §2.2, and their lm-human-preferences code).

    Adaptive: e = clip(KL / KL_target − 1, −0.2, 0.2) and β ← β · (1 + e · n / horizon) after each iteration of
    n samples, a proportional controller that steers the mean sequence KL towards the target. Checkpointed.
    """

    def __init__(self, init: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = float(init), target, horizon

    def update(self, kl: float, num_samples: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * num_samples / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = float(state["value"]), state["target"], int(state["horizon"])


# ----------------------------------------------------------------------------------------------
# One iteration's data


@dataclass
class OnlineBatch:
    """A scored rollout: behaviour log-probs (in ``rollout``), reference log-probs and scores ``[N]``."""

    rollout: Rollout
    ref_logprobs: torch.Tensor
    scores: torch.Tensor
    generate_seconds: float

    def __len__(self) -> int:
        return self.rollout.input_ids.shape[0]

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.labels_mask

    def kl_tokens(self) -> torch.Tensor:
        """Per-token log π_old − log π_ref on the samples (k1; Ziegler et al. 2019, Eq. 2), zero off-response."""
        return kl_k1(self.rollout.logprobs, self.ref_logprobs) * self.mask

    def kl_sequences(self) -> torch.Tensor:
        return self.kl_tokens().sum(-1)

    def rows(self, rows: Sequence[int], device, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors of some rows on ``device``, trimmed to their non-pad columns (fewer wasted FLOPs).

        Always: input_ids, attention_mask, mask, old_logprobs, ref_logprobs; plus ``extra`` tensors, per token
        ``[N, T-1]`` (sliced like the log-probs) or per sequence ``[N]``.
        """
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        attn = self.rollout.attention_mask[idx]
        used = attn.any(0).nonzero().squeeze(-1)
        lo, hi = int(used[0]), int(used[-1]) + 1
        tokens = {"mask": self.mask, "old_logprobs": self.rollout.logprobs, "ref_logprobs": self.ref_logprobs}
        out = {"input_ids": self.rollout.input_ids[idx, lo:hi], "attention_mask": attn[:, lo:hi]}
        for name, t in {**tokens, **extra}.items():
            out[name] = t[idx, lo:hi - 1] if t.dim() == 2 else t[idx]
        return {k: v.to(device) for k, v in out.items()}


def collect(policy, reference: ReferencePolicy, tokenizer, prompts: Sequence[str], reward_fn: RewardFn,
            config: OnlineConfig, sampler: GenerationBackend | None = None) -> OnlineBatch:
    """Generate (with ``sampler``, default the in-house sampler on ``policy``) → reference log-probs → scores, all
    batched; the k samples of a prompt are consecutive rows."""
    t0 = time.perf_counter()
    sampler = sampler if sampler is not None else InHouseSampler(policy, tokenizer, config.generation_batch_size)
    rollout = sampler.generate(prompts, config.samples_per_prompt,
                               Sampling(config.max_new_tokens, config.temperature))
    generate_seconds = time.perf_counter() - t0
    ref = reference.logprobs(policy, rollout, config.temperature, batch_size=config.generation_batch_size)
    scores = torch.as_tensor([float(s) for s in reward_fn(rollout.row_prompts(), rollout.texts)],
                             dtype=torch.float32)
    return OnlineBatch(rollout, ref, scores, generate_seconds)


# ----------------------------------------------------------------------------------------------
# The run


class OnlineRun:
    """The shared machinery of one online training run; a method adds its advantages and loss.

    ``trained`` is the module the optimizer owns (the policy itself, or PPO's policy + value head);
    ``policy`` must be inside it (it is what samples, and — for LoRA — what serves as the reference).
    """

    def __init__(self, name: str, config: OnlineConfig, prompts: Sequence[str], reward, policy, tokenizer,
                 trained: torch.nn.Module | None = None, eval_prompts: Sequence[str] | None = None):
        prompts = as_prompts(prompts, tokenizer)  # strings, or TRL prompt-only rows (conversational: templated)
        if not prompts:
            raise TrainingError(f"{name}: no training prompts")
        self.name, self.config, self.prompts = name, config, prompts
        self.eval_prompts = as_prompts(eval_prompts, tokenizer) if eval_prompts is not None else []
        check_prompts_fit(tokenizer, prompts + self.eval_prompts, config.max_new_tokens, policy)
        self.policy, self.tokenizer = policy, tokenizer
        # where the samples come from: any `GenerationBackend` (docs/architecture.md) may replace it
        self.sampler: GenerationBackend = InHouseSampler(policy, tokenizer, config.generation_batch_size)
        self.reference = ReferencePolicy(policy)  # before any update: π_ref is the starting policy
        self.kl_controller = KLController(config.kl_coef, config.kl_target, config.kl_horizon)
        if isinstance(reward, torch.nn.Module):  # a RewardModel that reads the policy's tokens
            self.reward_model = reward
            reward = reward_model_reward(reward, tokenizer, config.max_length)
        else:
            self.reward_model = None
            reward = as_reward(reward)  # a TRL-style function or a list of them
        self.reward_fn = reward
        # a stateful reward (AnnotatorReward: ledger + annotator RNG) is checkpointed with the run
        stateful = [reward] if hasattr(reward, "state_dict") and hasattr(reward, "load_state_dict") else []
        self.trainer = Trainer(config, trained if trained is not None else policy, name=name,
                               state_objects=[self.kl_controller, *stateful])
        self.step = GradientStep(self.trainer, total_updates=config.total_updates())
        self.reference.to(self.trainer.device)
        if self.reward_model is not None:
            self.reward_model.to(self.trainer.device)

    @property
    def kl_coef(self) -> float:
        return self.kl_controller.value

    def global_mean(self, value: float) -> float:
        """Mean over processes, so decisions (KL guard, controller) agree everywhere."""
        t = torch.as_tensor(float(value), device=self.trainer.device)
        if self.trainer.world_size > 1:
            t = self.trainer.accelerator.reduce(t, reduction="mean")
        return float(t)

    def collect(self, iteration: int) -> OnlineBatch:
        """This process's share of the iteration's prompts, sampled, scored, and checked by the KL guard."""
        cfg = self.config
        indices = batch_indices(len(self.prompts), cfg.batch_size, cfg.seed, iteration)
        prompts = self.trainer.shard([self.prompts[i] for i in indices])
        self.sampler.sync(self.policy)
        batch = collect(self.policy, self.reference, self.tokenizer, prompts, self.reward_fn, cfg, self.sampler)
        kl = self.global_mean(batch.kl_sequences().mean())
        if kl > cfg.kl_stop:
            raise TrainingError(
                f"{self.name}: mean KL to the reference is {kl:.1f} nats at iteration {iteration + 1}, above "
                f"kl_stop={cfg.kl_stop:g}; the policy is drifting away from the reference (reward hacking or an "
                f"unstable update). Raise kl_coef (now {self.kl_coef:.3g}) or set kl_target for the adaptive "
                f"controller, lower lr ({cfg.lr:g}) or clip_range ({cfg.clip_range:g}), or raise kl_stop if this "
                f"drift is intended.")
        return batch

    def optimise(self, num_rows: int, loss_fn: Callable[[list[int]], tuple[torch.Tensor, dict]],
                 iteration: int) -> dict:
        """``ppo_epochs`` passes over the rollout rows in a seeded order (a pure function of seed, iteration and
        epoch), each split into ``num_minibatches`` optimizer steps of ``grad_accum`` micro-batches. Returns the
        step metrics averaged over the iteration's steps."""
        cfg = self.config
        sums: dict[str, float] = {}
        steps = 0
        for epoch in range(cfg.ppo_epochs):
            g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + iteration) * 1_009 + epoch)
            order = torch.randperm(num_rows, generator=g).tolist()
            for m in range(cfg.num_minibatches):
                rows = order[m::cfg.num_minibatches]
                out = self.step(micro_batches(rows, cfg.grad_accum), loss_fn)
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                steps += 1
        return {k: v / steps for k, v in sums.items()}

    def finish_iteration(self, batch: OnlineBatch, updates: dict, started: float) -> dict:
        """Update the KL controller and return the iteration's metrics.

        score: the reward source's mean score; kl: mean sequence KL(π‖π_ref) estimated on the samples;
        reward: score − β·kl, the KL-regularised objective all three methods maximise; response_length in
        tokens; generate_fraction: share of the iteration's wall time spent sampling. ``updates`` adds loss,
        grad_norm, lr, entropy, clip_frac, approx_kl (and the method's own).
        """
        kl = batch.kl_sequences()
        beta = self.kl_coef
        metrics = {**getattr(self.reward_fn, "last_metrics", {}),  # each reward function's mean and std (TRL's names)
                   "reward_std": batch.scores.std().item() if len(batch) > 1 else 0.0,
            "score": batch.scores.mean().item(),
            "kl": kl.mean().item(),
            "reward": (batch.scores - beta * kl).mean().item(),
            "kl_coef": beta,
            "response_length": batch.rollout.response_lengths.float().mean().item(),
            "completions/mean_length": batch.rollout.response_lengths.float().mean().item(),  # TRL's name
            **updates,
            "generate_fraction": batch.generate_seconds / max(time.perf_counter() - started, 1e-9),
        }
        self.kl_controller.update(self.global_mean(metrics["kl"]), len(batch) * self.trainer.world_size)
        done = self.trainer.iteration + 1
        if self.config.log_completions and self.trainer.is_main and done % self.config.log_every == 0:
            self.trainer.append_rows("completions.jsonl", [
                {"iteration": done, "prompt": p, "completion": c, "score": float(s)}
                for p, c, s in zip(batch.rollout.row_prompts(), batch.rollout.texts, batch.scores.tolist())])
        return metrics

    def evaluate(self, iteration: int) -> dict:
        """One sample per eval prompt, scored by the reward: ``eval_score``, ``eval_completions/mean_length``. Drawn
        from a generator seeded by (seed, iteration), so evaluating changes nothing of the training run."""
        cfg, done = self.config, iteration + 1
        if not self.eval_prompts or not (done == cfg.steps or (cfg.eval_every and done % cfg.eval_every == 0)):
            return {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed * 1_000_003 + iteration)
            rollout = generate(self.policy, self.tokenizer, self.eval_prompts, cfg.max_new_tokens, 1,
                               cfg.temperature, batch_size=cfg.generation_batch_size)
        scores = [float(s) for s in self.reward_fn(rollout.row_prompts(), rollout.texts)]
        return {"eval_score": sum(scores) / len(scores),
                "eval_completions/mean_length": rollout.response_lengths.float().mean().item()}

    def fit(self, iteration_fn: Callable[[int], dict]) -> TrainResult:
        def with_eval(it: int) -> dict:
            return {**iteration_fn(it), **self.evaluate(it)}

        self.trainer.fit(with_eval, self.config.steps, description=self.name)
        return self.trainer.finish(self.tokenizer, model=self.policy)  # the policy alone, without a value head

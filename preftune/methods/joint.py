"""Joint learning from choices: the LM is policy, reward model and environment at once (Xu et al., arXiv 2305.11455).

The person shown K candidates picks y_i with probability ∝ π_θ(y_i|x)^(1/τ) (`losses.choice_loss`), so fitting
the choices by maximum likelihood *is* fine-tuning: no reward model, no RL step. An epistemic head on the LM's
last hidden state (`epistemic.Epinet` or `EnsembleHeads`) turns the utilities log π/τ into a posterior
u_z(x, y) = log π(y|x)/τ + δ(h(x, y), z), which drives the choice of the next candidates to show.

One round (an iteration of `Trainer.fit`):
1. score every response of every training prompt (the response space is enumerable: `tasks/population.py`);
2. for each of ``queries_per_round`` prompts (uniform), pick K candidates with the exploration scheme:
   passive (uniform), boltzmann (policy samples, without replacement), infomax (the K-set whose choice has the
   largest mutual information with the index), ts (the K best under one posterior sample), double-ts (each
   candidate the best under its own posterior sample, resampled if already picked); with ``candidate_pool`` the
   last three choose among that many policy samples instead of among every response;
3. ask the population, or any `FeedbackSource` given as ``feedback`` (every query recorded in the `QueryLedger`),
   and keep the choice;
4. ``updates_per_round`` optimizer steps on minibatches of all choices so far: the choice NLL of log π/τ trains
   the LM; the same NLL of u_z averaged over indices z (LM utilities held fixed) plus an L2 trains the head;
5. log the exact distances of π_θ(·|x) to the population's choice distribution.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import nn

from preftune.config import ConfigError
from preftune.epistemic import build_epistemic_head, learnable_l2, set_feature_scaling
from preftune.feedback import FeedbackSource, QueryLedger
from preftune.losses import choice_loss, sequence_logprobs
from preftune.methods.configs import JointConfig
from preftune.metrics import distribution_metrics
from preftune.tasks.population import PopulationTask, response_mask_of, response_space_ids
from preftune.tiny import build_population_policy, build_population_tokenizer
from preftune.trainer import GradientStep, Trainer, TrainResult, micro_batches

EXPLORATION_SCHEMES = ("passive", "boltzmann", "infomax", "ts", "double-ts")


class JointModel(nn.Module):
    """The policy and its epistemic head; ``forward(ids)`` → (sequence log-probs ``[N]``, features ``[N, H]``), and
    with epistemic indices ``index`` ``[S, D]`` also the head's offsets ``[S, N]`` (on ``head_inputs`` when given,
    else on the features), so that training runs every parameter through one forward (DDP sees them all)."""

    def __init__(self, policy: nn.Module, head: nn.Module):
        super().__init__()
        self.policy, self.head = policy, head

    def forward(self, input_ids: torch.Tensor, index: torch.Tensor | None = None,
                head_inputs: torch.Tensor | None = None):
        out = self.policy(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False,
                          output_hidden_states=True)
        logps = sequence_logprobs(out.logits[:, :-1], input_ids[:, 1:], response_mask_of(input_ids)[:, 1:])
        features = out.hidden_states[-1][:, -1]  # the <eos> position has read the whole response
        if index is None:
            return logps, features
        return logps, features, self.head(features if head_inputs is None else head_inputs, index)


class ChoiceRecords:
    """Every query asked and its answer: (prompt index, candidate response indices, chosen position)."""

    def __init__(self):
        self.rows: list[tuple[int, list[int], int]] = []

    def state_dict(self) -> dict:
        return {"rows": [[p, list(c), k] for p, c, k in self.rows]}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [(int(p), [int(i) for i in c], int(k)) for p, c, k in state["rows"]]


# ----------------------------------------------------------------------------------------------
# Exploration: which K of the |Y| responses to show. ``utilities`` [Y] = log π/τ; ``sample(n)`` → [n, Y]
# utilities under n fresh posterior indices.


def information_gain(samples: torch.Tensor) -> torch.Tensor:
    """Mutual information between the choice and the index, H(E_z p_z) − E_z H(p_z), for choice sets.

    ``samples`` ``[S, ..., K]``: utilities of the K candidates of each set under S posterior samples → ``[...]``.
    """
    logp = samples.log_softmax(-1)
    mean = logp.exp().mean(0)
    return -(mean * mean.clamp_min(1e-12).log()).sum(-1) + (logp.exp() * logp).sum(-1).mean(0)


def select_candidates(scheme: str, utilities: torch.Tensor, sample, k: int, generator: torch.Generator,
                      boltzmann_temperature: float = 1.0, infomax_samples: int = 16,
                      max_resamples: int = 30, posterior_pick: str = "argmax", pool: int = 0) -> list[int]:
    """K distinct response indices for one query; with ``pool`` > 0 the posterior schemes choose among ``pool``
    distinct policy samples (the LM proposes, the uncertainty picks: Dwaracherla et al., arXiv 2402.00396)."""
    n = utilities.shape[0]

    def gumbel() -> torch.Tensor:  # + Gumbel noise, then top-k: k draws without replacement from softmax
        return -torch.empty(n).exponential_(generator=generator).log()

    if pool and scheme in ("infomax", "ts", "double-ts"):  # the policy proposes, the scheme picks among those
        proposals = torch.topk(utilities / boltzmann_temperature + gumbel(), pool).indices
        picked = select_candidates(scheme, utilities[proposals], lambda m: sample(m)[:, proposals], k, generator,
                                   boltzmann_temperature, infomax_samples, max_resamples, posterior_pick)
        return proposals[picked].tolist()

    def posterior_draw() -> torch.Tensor:  # one posterior sample's utilities, ranked by its pick rule
        draw = sample(1)[0]
        return draw + gumbel() if posterior_pick == "sample" else draw

    if scheme == "passive":
        return torch.randperm(n, generator=generator)[:k].tolist()
    if scheme == "boltzmann":  # K policy samples without replacement: Gumbel-top-k on log π / T
        return torch.topk(utilities / boltzmann_temperature + gumbel(), k).indices.tolist()
    if scheme == "ts":
        return torch.topk(posterior_draw(), k).indices.tolist()
    if scheme == "double-ts":
        picked: list[int] = []
        for _ in range(k):
            for _ in range(max_resamples):
                draw = posterior_draw()
                best = int(draw.argmax())
                if best not in picked:
                    break
            else:  # every sample agreed with an earlier pick: take this sample's best new one
                best = int(draw.masked_fill(torch.tensor([i in picked for i in range(n)]), float("-inf")).argmax())
            picked.append(best)
        return picked
    if scheme == "infomax":  # best pair exhaustively, then greedily the candidate adding most information
        draws = sample(infomax_samples)  # [S, Y]
        pairs = torch.stack([draws[:, :, None].expand(-1, n, n), draws[:, None, :].expand(-1, n, n)], -1)
        gain = information_gain(pairs).fill_diagonal_(float("-inf"))
        first, second = divmod(int(gain.argmax()), n)
        picked = [first, second]
        while len(picked) < k:
            rest = [i for i in range(n) if i not in picked]
            sets = torch.stack([draws[:, picked + [i]] for i in rest], 1)  # [S, |rest|, len+1]
            picked.append(rest[int(information_gain(sets).argmax())])
        return picked
    raise ConfigError(f"explore must be one of {list(EXPLORATION_SCHEMES)}, got {scheme!r}")


# ----------------------------------------------------------------------------------------------


def joint_loss(logps: torch.Tensor, offsets: torch.Tensor, chosen: torch.Tensor, config: JointConfig,
               head: nn.Module) -> tuple[torch.Tensor, dict]:
    """The loss of one step of joint learning, for choice sets of ``config.candidates``: the LM learns by maximum
    likelihood of the choices (Luce on its log-probs ``logps`` at ``choice_temperature``; the joint learning itself);
    the head learns the posterior around it, the same likelihood under each sampled index (``offsets``) with the
    LM's utilities held fixed; plus the head's L2."""
    k, tau = config.candidates, config.choice_temperature
    nll = choice_loss(logps.view(-1, k), chosen, tau)
    sampled = (logps.detach()[None] / tau + offsets).view(-1, k)  # [S·B, K]: one index per choice set
    head_nll = choice_loss(sampled, chosen.repeat(config.index_samples))
    loss = nll + head_nll + config.head_l2 * learnable_l2(head)
    return loss, {"choice_nll": nll.item(), "head_nll": head_nll.item()}


def build_joint_model(config: JointConfig, tokenizer) -> JointModel:
    """The starting policy (a fresh tiny LM on the response space) and an untrained epistemic head."""
    policy = build_population_policy(tokenizer, seed=config.seed)
    head = build_epistemic_head(config.uncertainty, policy.config.hidden_size, config.index_dim,
                                config.ensemble_size, config.head_hidden, config.prior_scale, config.seed + 1)
    return JointModel(policy, head)


def train_joint(config: JointConfig, task: PopulationTask | None = None, model: JointModel | None = None,
                tokenizer=None, feedback: FeedbackSource | None = None) -> TrainResult:
    """Joint learning on the population task (module docstring). ``feedback`` chooses instead of the task's
    population (the distances logged stay those to the population's choices). ``extra``: the query ``ledger``, the
    choice ``records`` and ``head_features`` (the starting LM's features when the head reads those, else None)."""
    if model is None and config.model != "tiny":
        raise ConfigError(f"config field 'model' must be 'tiny' for joint on the population task (it has its own "
                          f"word-level response space), got {config.model!r}; your model learns on your prompts: "
                          f"--data prompts.jsonl --feedback SPEC")
    task = task or PopulationTask()
    chooser = feedback if feedback is not None else task.population
    tokenizer = tokenizer or build_population_tokenizer()
    model = model or build_joint_model(config, tokenizer)
    prompts, all_prompts = task.split_prompts("train"), task.all_prompts()
    ids = response_space_ids(tokenizer, all_prompts, task.responses)  # [P, Y, T]; train prompts come first
    targets = task.targets(all_prompts)
    favourites = [task.favourites(p) for p in all_prompts]
    with torch.no_grad():
        initial_features = model(ids.flatten(0, 1))[1].view(ids.shape[0], ids.shape[1], -1)
    # standardise the head's inputs over the whole response space (epistemic.py); a resumed run computes the same
    set_feature_scaling(model.head, initial_features.flatten(0, 1))
    ledger, records = QueryLedger(budget=config.query_budget), ChoiceRecords()
    trainer = Trainer(config, model, name="joint", state_objects=(ledger, records))
    step = GradientStep(trainer, total_updates=config.steps * config.updates_per_round)
    k, tau = config.candidates, config.choice_temperature
    joint_head = trainer.unwrapped_model().head  # its parameters are the trained ones (DDP shares the module)

    def iteration(it: int) -> dict:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + it)
        people = random.Random(config.seed * 1_000_003 + it)
        joint = trainer.unwrapped_model()
        with torch.no_grad():  # 1. score every response of every prompt
            logps, features = joint(ids.flatten(0, 1))
        utilities = (logps / tau).view(len(all_prompts), -1)
        features = initial_features if config.head_features == "initial" else features.view(ids.shape[0],
                                                                                            ids.shape[1], -1)
        for _ in range(config.queries_per_round):  # 2.-3. choose candidates, ask one person
            p = int(torch.randint(len(prompts), (1,), generator=generator))

            def sample(n: int, p=p) -> torch.Tensor:
                with torch.no_grad():
                    return utilities[p] + joint.head(features[p], joint.head.sample_index(n, generator))

            shown = select_candidates(config.explore, utilities[p], sample, k, generator,
                                      config.boltzmann_temperature, config.infomax_samples, config.max_resamples,
                                      config.posterior_pick, config.candidate_pool)
            ledger.record("joint")
            chosen = chooser.choose(prompts[p], [task.responses[i] for i in shown], people)
            records.rows.append((p, shown, chosen))

        def loss_fn(rows: list[tuple[int, list[int], int]], index: torch.Tensor):  # 4. E_z choice NLL + head's L2
            batch_ids = torch.stack([ids[p, shown] for p, shown, _ in rows]).flatten(0, 1).to(trainer.device)
            chosen = torch.tensor([c for _, _, c in rows], device=trainer.device)
            head_inputs = None
            if config.head_features == "initial":
                head_inputs = torch.cat([initial_features[p, shown] for p, shown, _ in rows]).to(trainer.device)
            logps, _, offsets = trainer.model(batch_ids, index, head_inputs)
            return joint_loss(logps, offsets, chosen, config, joint_head)

        metrics: dict = {}
        for _ in range(config.updates_per_round):
            draw = torch.randint(len(records.rows), (config.batch_size,), generator=generator).tolist()
            # one set of epistemic indices per step, shared by its micro-batches (so grad_accum keeps the step)
            index = joint_head.sample_index(config.index_samples, generator).to(trainer.device)
            mine = [records.rows[i] for i in trainer.shard(draw)]
            metrics = step(micro_batches(mine, config.grad_accum), lambda rows, index=index: loss_fn(rows, index))
        policy_probs = policy_distribution_of(trainer.unwrapped_model(), ids)  # 5. exact distances
        train_rows = slice(0, len(prompts))
        metrics.update(distribution_metrics(policy_probs[train_rows], targets[train_rows], favourites[train_rows]),
                       queries=ledger.total)
        return metrics

    trainer.fit(iteration, config.steps, description=f"joint ({config.explore})")
    return trainer.finish(tokenizer, save=save_joint_model, ledger=ledger, records=records,
                          head_features=initial_features if config.head_features == "initial" else None)


def save_joint_model(model: JointModel, tokenizer, directory: str | Path) -> Path:
    """The policy as a causal-LM folder, and its epistemic head beside it."""
    from safetensors.torch import save_file

    from preftune.models import save_causal_lm

    path = save_causal_lm(model.policy, tokenizer, directory)
    save_file({n: t.contiguous() for n, t in model.head.state_dict().items()}, path / "epistemic_head.safetensors")
    return path


@torch.no_grad()
def policy_distribution_of(model: JointModel, ids: torch.Tensor) -> torch.Tensor:
    """π(y|x) ``[P, Y]`` of the joint model's policy, exactly (see `rollout.policy_distribution`)."""
    from preftune.rollout import policy_distribution

    return policy_distribution(model.policy, ids)

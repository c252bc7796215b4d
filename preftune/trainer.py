"""The run loop every method runs on (Hugging Face Accelerate underneath), and the gradient step that gradient
methods plug into it.

Two pieces, so that gradient, zeroth-order and tabular methods share one loop:
- `Trainer.fit(iteration_fn, iterations)`: the run — progress bar, metrics to JSONL (and to Accelerate's trackers:
  TensorBoard when installed, W&B, trackio… by ``report_to``), checkpoints every N iterations, resume, state
  objects (ledgers, KL controllers, RNGs), and at the end `finish`, which saves the final model once and returns
  the `TrainResult` every method returns. What an iteration does is the method's business: one optimizer step
  (offline methods, `fit_dataset`), a rollout and several steps (online methods), or a zeroth-order update (ZPG).
- `GradientStep(trainer)`: AdamW, the LR schedule, gradient accumulation over micro-batches, clipping and the
  NaN/inf guard. Methods that follow a gradient create one; ZPG and tabular methods do not.

A checkpoint holds the model (safetensors), the optimizer and every RNG state (Accelerate), and
``trainer_state.json``: the iteration number and each state object's ``state_dict()`` as JSON (the schedule and
the step counters are state objects of the `GradientStep`). The data for iteration i is a pure function of
(seed, i), so a killed run resumed from its last checkpoint ends with the same weights, bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from preftune.config import ConfigError, TrainConfig, save_yaml

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
STATE_TENSORS_FILE = "trainer_state.safetensors"  # the tensors of the state objects (RNG states, tabular policies)
# config fields a resumed run may change: they do not change what is computed (a run folder may be moved)
RESUME_MAY_CHANGE = {"resume", "overwrite", "progress", "log_every", "save_every", "keep_checkpoints", "output_dir",
                     "report_to", "eval_every"}
LossFn = Callable[[Any], tuple[torch.Tensor, dict]]  # micro-batch -> (mean loss, metrics)


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to try."""


@dataclass
class TrainResult:
    """What every method's ``train_*`` returns.

    ``model``: the trained model (a causal LM, a `RewardModel`, a joint model, a tabular policy); ``path``: where
    `Trainer.finish` saved it (None off the main process); ``history``: one metrics dict per iteration;
    ``extra``: what a method adds (a query ledger, the choices asked, evaluation results).
    """

    model: Any
    tokenizer: Any
    history: list[dict]
    path: Path | None
    extra: dict = field(default_factory=dict)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=g)


def batch_indices(num_examples: int, batch_size: int, seed: int, iteration: int) -> list[int]:
    """Example indices of one global batch: positions [i·B, (i+1)·B) of seeded epoch permutations."""
    out = []
    for pos in range(iteration * batch_size, (iteration + 1) * batch_size):
        epoch, offset = divmod(pos, num_examples)
        if offset == 0 or not out:
            perm = epoch_permutation(num_examples, seed, epoch)
        out.append(int(perm[offset]))
    return out


def micro_batches(items: Sequence, grad_accum: int) -> list[list]:
    """``items`` (this process's share of a step) in ``grad_accum`` strided micro-batches, the empty ones dropped."""
    return [m for m in (list(items[i::grad_accum]) for i in range(grad_accum)) if m]


def trackers(report_to: str) -> list[str]:
    """The Accelerate trackers ``report_to`` asks for ('auto': TensorBoard when installed); one asked for by name that
    is not installed is a config error, not a silent no-op."""
    from accelerate.tracking import get_available_trackers

    available = [getattr(t, "value", t) for t in get_available_trackers()]
    asked = [t.strip() for t in report_to.split(",")]
    if "none" in asked:
        return []
    if "auto" in asked:
        return ["tensorboard"] if "tensorboard" in available else []
    if "all" in asked:
        return available
    missing = [t for t in asked if t not in available]
    if missing:
        raise ConfigError(f"config field 'report_to' asks for {', '.join(missing)}, which is not installed "
                          f"(pip install {' '.join(missing)}); installed: {available or 'none'}")
    return asked


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


class Trainer:
    """Owns the accelerator, the prepared model, the run's state objects and its checkpoints.

    ``config`` needs the run fields of `preftune.config.RunConfig` (output_dir, seed, resume, checkpoints,
    logging, mixed_precision); ``state_objects`` have ``state_dict()`` (JSON-serialisable) and
    ``load_state_dict()`` and are saved with every checkpoint and restored on resume. ``num_examples``, the size of
    an offline method's training set, turns ``epochs`` into ``steps``.
    """

    def __init__(self, config, model: torch.nn.Module, name: str = "train", state_objects: Sequence[object] = (),
                 num_examples: int | None = None):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        if getattr(config, "epochs", 0) > 0:
            if num_examples is None:
                raise ConfigError(f"config field 'epochs' is for methods that train on a dataset (sft, reward, dpo, "
                                  f"iqlearn); {name} runs 'steps' iterations")
            config = dataclasses.replace(config, steps=max(1, math.ceil(config.epochs * num_examples
                                                                        / config.batch_size)))
        self.config = config
        self.name = name
        self.output_dir = Path(config.output_dir)
        # Accelerate takes the multi-process CPU (gloo) path only when told cpu=True; do so exactly when a
        # multi-process launch (torchrun) finds no GPU.
        cpu_multiprocess = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = Accelerator(
            mixed_precision=_mixed_precision(config.mixed_precision), cpu=cpu_multiprocess,
            log_with=trackers(config.report_to) or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "tensorboard")))
        set_seed(config.seed)
        # prepared with its optimizer by `GradientStep` (FSDP and DeepSpeed need both in one `prepare` call), or at the
        # start of `fit` when there is none
        self.model = model
        self.state_objects: dict[str, object] = {}
        for i, obj in enumerate(state_objects):
            self.register(f"{type(obj).__name__.lower()}_{i}", obj)
        self.gradient_step: GradientStep | None = None  # set by GradientStep(self)
        self.iteration = 0  # iterations completed
        self.history: list[dict] = []

    def register(self, key: str, obj: object) -> None:
        """Save ``obj``'s ``state_dict()`` with every checkpoint under ``key`` and restore it on resume."""
        if key in self.state_objects:
            raise ValueError(f"state object {key!r} is registered twice")
        self.state_objects[key] = obj

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    def unwrapped_model(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def shard(self, items: Sequence) -> list:
        """This process's share of a global batch (every process gets the same number of items)."""
        if len(items) % self.world_size:
            raise TrainingError(f"a global batch of {len(items)} does not split over {self.world_size} processes")
        return list(items[self.accelerator.process_index::self.world_size])

    # ------------------------------------------------------------------ the loop
    def fit(self, iteration_fn: Callable[[int], dict], iterations: int, description: str | None = None) -> list[dict]:
        """Run ``iteration_fn(i)`` for i in [start, iterations), with logging and checkpoints."""
        if self.gradient_step is None and "model" not in self.state_objects \
                and any(p.requires_grad for p in self.model.parameters()):
            # no optimizer (ZPG moves the weights itself): no DDP wrapper, whose gradient buckets would go unused;
            # the weights are checkpointed as a state object. A model with nothing to train (a tabular policy, its
            # own state object) stays where the method put it.
            self.model = self.model.to(self.device)
            self.register("model", self.model)
        self._prepare_output_dir()
        start = self._maybe_resume()
        if self.is_main:  # the settings of the run, once it is known to start (resume: checked against the saved)
            save_yaml(self.config, self.output_dir / "config.yaml")
        metrics_path = self.output_dir / "metrics.jsonl"
        self._truncate_metrics(metrics_path, start)
        if self.is_main and self.accelerator.log_with:
            scalars = {k: v for k, v in dataclasses.asdict(self.config).items() if isinstance(v, int | float | str)}
            self.accelerator.init_trackers(self.name, config=scalars)
        with _progress(self.config.progress and self.is_main) as progress:
            task = progress.add_task(description or self.name, total=iterations, completed=start)
            for it in range(start, iterations):
                t0 = time.perf_counter()
                metrics = self._reduce(iteration_fn(it))
                metrics.update(iteration=it + 1, seconds=time.perf_counter() - t0)
                if self.gradient_step is not None:
                    metrics["skipped_steps"] = self.gradient_step.skipped_steps
                self.iteration = it + 1
                self.history.append(metrics)
                if self.is_main and (self.iteration % self.config.log_every == 0 or self.iteration == iterations
                                     or any(k.startswith("eval_") for k in metrics)):
                    self._log(metrics_path, metrics)
                shown = " ".join(f"{k} {metrics[k]:.4g}" for k in ("loss", "score", "kl") if k in metrics)
                progress.update(task, advance=1, description=f"{description or self.name} {shown}")
                if self.config.save_every and self.iteration % self.config.save_every == 0 \
                        and self.iteration < iterations:
                    self.save_checkpoint()
        for tracker in self.accelerator.trackers:  # not `end_training`: it also ends the process group
            tracker.finish()
        return self.history

    def fit_dataset(self, num_examples: int, step: GradientStep, loss_fn: LossFn, description: str | None = None,
                    eval_examples: int = 0, eval_loss_fn: LossFn | None = None) -> list[dict]:
        """Offline training: each iteration is one ``step`` on a seeded global batch of example indices, split
        into ``grad_accum`` micro-batches of this process's share. With ``eval_examples`` held-out examples (indices
        for ``eval_loss_fn``), `evaluate` runs every ``eval_every`` steps and after the last."""
        cfg = self.config
        if num_examples < 1:
            raise TrainingError(f"{self.name}: no training examples")

        def iteration(it: int) -> dict:
            metrics = step(micro_batches(self.shard(batch_indices(num_examples, cfg.batch_size, cfg.seed, it)),
                                         cfg.grad_accum), loss_fn)
            return {**metrics, **self.maybe_evaluate(it, eval_examples, eval_loss_fn)}

        return self.fit(iteration, cfg.steps, description)

    def maybe_evaluate(self, iteration: int, num_examples: int, loss_fn: LossFn | None) -> dict:
        """`evaluate` after iteration ``iteration`` (0-based) when one is due: every ``eval_every`` iterations and
        after the last; ``{}`` otherwise or without eval examples."""
        every, done = getattr(self.config, "eval_every", 0), iteration + 1
        if not num_examples or not (done == self.config.steps or (every and done % every == 0)):
            return {}
        return self.evaluate(num_examples, loss_fn)

    def evaluate(self, num_examples: int, loss_fn: LossFn) -> dict:
        """The mean loss and metrics of ``loss_fn`` over examples ``0 .. num_examples-1`` in batches of
        ``batch_size``, without gradients, named as the Hugging Face Trainer names them (``eval_loss``,
        ``eval_<metric>``)."""
        model, sums = self.model, {}
        was_training = model.training
        model.eval()
        with torch.no_grad(), self.accelerator.autocast():
            for start in range(0, num_examples, self.config.batch_size):
                indices = list(range(start, min(num_examples, start + self.config.batch_size)))
                loss, metrics = loss_fn(indices)
                for k, v in {"loss": loss, **metrics}.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(indices)
        model.train(was_training)
        return {f"eval_{k}": v / num_examples for k, v in sums.items()}

    def finish(self, tokenizer=None, model=None, save: Callable | None = None, **extra) -> TrainResult:
        """The end of every method: save the trained model once, on the main process, to ``output_dir/final``, and
        return the `TrainResult`. ``model`` defaults to the unwrapped trained model; ``save(model, tokenizer,
        directory) -> Path`` defaults to `preftune.models.save_causal_lm`."""
        from preftune.models import save_causal_lm

        step = self.gradient_step
        if step is not None and step.updates and step.skipped_steps == step.updates:
            raise TrainingError(f"{self.name}: every one of the {step.updates} steps had a NaN/inf loss, gradient or "
                                f"update and was skipped, so the model is untrained and was not saved. Lower the "
                                f"learning rate (lr={self.config.lr}), check the data and the method's coefficients.")
        if step is not None and step.updates and step.skipped_steps > self.config.max_skipped_fraction * step.updates:
            raise TrainingError(f"{self.name}: {step.skipped_steps} of {step.updates} steps had a NaN/inf loss, "
                                f"gradient or update and were skipped, more than max_skipped_fraction="
                                f"{self.config.max_skipped_fraction}; the model was not saved to final/ (checkpoints "
                                f"are kept). Lower the learning rate (lr={self.config.lr}), check the data, or raise "
                                f"max_skipped_fraction.")
        model = self.unwrapped_model() if model is None else model
        self._check_finite(model, self.output_dir / "final")
        path = (save or save_causal_lm)(model, tokenizer, self.output_dir / "final") if self.is_main else None
        self.accelerator.wait_for_everyone()
        return TrainResult(model, tokenizer, self.history, path, extra)

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[Path]:
        if not self.output_dir.exists():
            return []
        done = [p for p in self.output_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).exists()]
        return sorted(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))

    def _prepare_output_dir(self) -> None:
        """Check the output folder before anything is written to it: a folder that can be written, not holding
        another run (checkpoints, or only a finished run's final/) unless --resume or --overwrite says what to do."""
        out = self.output_dir
        if out.exists() and not out.is_dir():
            raise TrainingError(f"output_dir {out} is a file, not a folder; give another --output-dir")
        existing = self.checkpoints()
        finished = (out / "final").exists() and not existing
        if finished and self.config.resume and not self.config.overwrite:  # said by _maybe_resume
            finished = False
        if (existing and not self.config.resume) or (finished and not self.config.overwrite):
            if not self.config.overwrite:
                held = f"checkpoints ({existing[-1].name})" if existing else "a finished run's final model (final/)"
                raise TrainingError(f"{out} already holds {held}; pass " + (
                    "--resume to continue that run or " if existing else "") + "--overwrite to start again")
            if self.is_main:
                for p in existing + ([out / "final"] if (out / "final").exists() else []):
                    shutil.rmtree(p)
                (out / "metrics.jsonl").unlink(missing_ok=True)
            self.accelerator.wait_for_everyone()
        try:
            out.mkdir(parents=True, exist_ok=True)
            if self.is_main:  # can files be written there (permissions, a read-only disk)?
                probe = out / f".preftune-write-test-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
        except OSError as e:
            raise TrainingError(f"output_dir {out} cannot be written ({e.strerror or e}); give another "
                                f"--output-dir") from None

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-<iteration>`` atomically: into a temporary folder, renamed when complete."""
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{self.iteration}"
        tmp = self.output_dir / f".tmp-{CHECKPOINT_PREFIX}{self.iteration}"
        if self.is_main and tmp.exists():
            shutil.rmtree(tmp)
        self._check_finite(self.unwrapped_model(), final)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp), safe_serialization=True)
        if self.is_main:
            if self.gradient_step is not None:
                from preftune.models import save_loadable_files

                # Accelerate's model.safetensors holds the weights under the names from_pretrained reads: with the
                # config (or a LoRA adapter) beside them the checkpoint loads like the final model
                save_loadable_files(self.unwrapped_model(), tmp)
            tensors: dict[str, torch.Tensor] = {}
            objects = {k: _tensors_out(obj.state_dict(), k, tensors) for k, obj in self.state_objects.items()}
            state = {"iteration": self.iteration, "config": dataclasses.asdict(self.config), "state_objects": objects}
            (tmp / STATE_FILE).write_text(json.dumps(state))
            if tensors:
                save_file(tensors, str(tmp / STATE_TENSORS_FILE))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in self.checkpoints()[:-self.config.keep_checkpoints]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def _check_finite(self, model: torch.nn.Module, where: Path) -> None:
        """Refuse to write non-finite weights (a method that moves them itself, or a guard turned off): the run
        stops with its earlier checkpoints intact."""
        if not isinstance(model, torch.nn.Module):  # a tabular policy saves itself
            return
        # the parameters, not state_dict(): no collective under FSDP; every process checks what it holds
        weights = [t.detach() for t in model.parameters() if t.is_floating_point() and t.numel()]
        norms = [n.cpu() for n in torch._foreach_norm(weights, ord=math.inf)] if weights else []
        if norms and not bool(torch.stack(norms).isfinite().all()):
            raise TrainingError(f"{self.name}: the weights are NaN/inf at iteration {self.iteration}, so {where} was "
                                f"not written (earlier checkpoints are kept). Lower the learning rate or the method's "
                                f"step sizes.")

    def _maybe_resume(self) -> int:
        if not self.config.resume:
            return 0
        existing = self.checkpoints()
        if not existing:
            replaced = " (its final/ will be replaced)" if (self.output_dir / "final").exists() else ""
            self.accelerator.print(f"{self.name}: no checkpoint in {self.output_dir}; starting from the beginning"
                                   f"{replaced}")
            return 0
        latest = existing[-1]
        state = json.loads((latest / STATE_FILE).read_text())
        if "state_objects" not in state:
            raise TrainingError(f"{latest} was written by an older preftune, whose checkpoints held pickled state; "
                                f"start the run again with --overwrite")
        # more (or fewer) iterations change nothing already done when no schedule depends on their number
        scheduled = getattr(self.config, "lr_schedule", "constant") != "constant" \
            or getattr(self.config, "warmup_ratio", 0.0) > 0 or getattr(self.config, "warmup_steps", 0) > 0
        may_change = RESUME_MAY_CHANGE | (set() if scheduled else {"steps"})
        changed = {k: (v, getattr(self.config, k)) for k, v in state.get("config", {}).items()
                   if k not in may_change and hasattr(self.config, k) and getattr(self.config, k) != v}
        if changed:
            listed = ", ".join(f"{k} (checkpoint {old!r}, now {new!r})" for k, (old, new) in sorted(changed.items()))
            raise TrainingError(f"--resume with other settings than the run in {self.output_dir} would not give that "
                                f"run's result: {listed}. Resume with its settings (its config.yaml), or start "
                                f"again with --overwrite")
        saved = state["state_objects"]
        if set(saved) != set(self.state_objects):
            raise TrainingError(f"{latest} was written by a run with other state ({sorted(saved)}, this run has "
                                f"{sorted(self.state_objects)}); resume it with the same method and settings")
        self.accelerator.load_state(str(latest))
        tensors = load_file(str(latest / STATE_TENSORS_FILE)) if (latest / STATE_TENSORS_FILE).exists() else {}
        for key, obj in self.state_objects.items():
            obj.load_state_dict(_tensors_in(saved[key], tensors))
        self.iteration = state["iteration"]
        self.accelerator.print(f"{self.name}: resumed from {latest} (iteration {self.iteration})")
        return self.iteration

    # ------------------------------------------------------------------ logging
    def _reduce(self, metrics: dict) -> dict:
        """Scalar metrics as floats, averaged over processes so every process logs the global value (float64, so
        one process logs exactly what the method computed)."""
        out = {}
        for k, v in metrics.items():
            if isinstance(v, int | float | torch.Tensor):
                if self.world_size > 1:
                    v = self.accelerator.reduce(torch.as_tensor(float(v), dtype=torch.float64, device=self.device),
                                                reduction="mean")
                out[k] = float(v)
            else:
                out[k] = v
        return out

    def _truncate_metrics(self, path: Path, start: int) -> None:
        """On resume, drop logged rows after the checkpoint so the logs read as one uninterrupted run."""
        for log in (path, self.output_dir / "completions.jsonl"):
            if not self.is_main or not log.exists():
                continue
            rows = [line for line in log.read_text().splitlines() if line.strip()]
            kept = [r for r in rows if json.loads(r).get("iteration", 0) <= start]
            log.write_text("".join(r + "\n" for r in kept))

    def append_rows(self, name: str, rows: Sequence[dict]) -> None:
        """Append JSON rows (each with its ``iteration``, so a resume can drop the later ones) to a log file of the
        run, ``output_dir/<name>``."""
        with (self.output_dir / name).open("a") as f:
            f.writelines(json.dumps({k: _json_number(v) for k, v in row.items()}, allow_nan=False) + "\n"
                         for row in rows)

    def _log(self, path: Path, metrics: dict) -> None:
        row = {k: _json_number(v) for k, v in metrics.items() if _jsonable(v)}
        with path.open("a") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
        if self.accelerator.log_with:
            self.accelerator.log({k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)},
                                 step=int(metrics["iteration"]))


class GradientStep:
    """One optimizer step of a gradient method: AdamW on the trainer's model, warmup + decay, gradient accumulation
    over micro-batches, clipping, and the NaN/inf guard (a non-finite loss or gradient skips the step, an update that
    makes the weights non-finite is undone (`UpdateUndo`) and skipped too; too many in a row stop the run). Its
    schedule and counters are checkpointed with the trainer's state.

    ``lr_overrides`` maps submodules of the model to their own peak learning rate (the schedule scales every group
    alike); all other parameters use ``config.lr``. ``total_updates`` (default ``config.steps``) sets the schedule's
    length.
    """

    def __init__(self, trainer: Trainer, total_updates: int | None = None, lr_overrides: dict | None = None):
        from transformers import get_scheduler

        config: TrainConfig = trainer.config
        self.trainer, self.config = trainer, config
        model = trainer.unwrapped_model()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise TrainingError("the model has no trainable parameters")
        groups = [{"params": [p for p in m.parameters() if p.requires_grad], "lr": lr}
                  for m, lr in (lr_overrides or {}).items()]
        special = {id(p) for g in groups for p in g["params"]}
        groups.insert(0, {"params": [p for p in params if id(p) not in special]})
        if trainer.gradient_step is not None:
            raise ValueError(f"{trainer.name}: a trainer takes one GradientStep")
        if config.gradient_checkpointing:
            from preftune.models import enable_gradient_checkpointing

            enable_gradient_checkpointing(model)
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay,
                                      fused=True if getattr(config, "optim", "") == "adamw_torch_fused" else None)
        total = total_updates or config.steps
        # The scheduler is not prepared: Accelerate would step it once per process, but our global batch is
        # split across processes, so one optimizer step is one schedule step whatever the process count.
        self.scheduler = get_scheduler(
            config.lr_schedule if config.lr_schedule != "constant" else "constant_with_warmup", optimizer,
            num_warmup_steps=config.warmup_steps or int(config.warmup_ratio * total), num_training_steps=total)
        # one call: FSDP and DeepSpeed wrap the model and its optimizer together
        trainer.model, self.optimizer = trainer.accelerator.prepare(trainer.model, optimizer)
        self.params = [p for p in trainer.model.parameters() if p.requires_grad]
        self._raw_optimizer = self._plain_optimizer()
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        # the undo copy needs a torch optimizer whose state is per-parameter tensors (not DeepSpeed's own)
        self.undo = UpdateUndo(self.params, inner) if config.rollback_bad_updates \
            and isinstance(inner, torch.optim.Optimizer) else None
        self.updates = 0
        self.skipped_steps = 0
        self.bad_steps_in_a_row = 0
        trainer.gradient_step = self
        trainer.register("gradient_step", self)

    def __call__(self, micro_batches: Sequence, loss_fn: LossFn) -> dict:
        """Accumulate gradients over ``micro_batches`` (this process's share), then step once.

        ``loss_fn(micro_batch)`` returns (mean loss over the micro-batch, metrics). Each micro loss is weighted by
        its share of the examples, so the step's gradient is that of the mean over the whole global batch (DDP
        averages equal shares across processes).
        """
        trainer, acc = self.trainer, self.trainer.accelerator
        trainer.model.train()
        sizes = [len(mb) for mb in micro_batches]
        total = sum(sizes)
        loss_sum, metric_sums = 0.0, {}
        for i, (mb, size) in enumerate(zip(micro_batches, sizes)):
            weight = size / total
            sync = i == len(micro_batches) - 1
            ctx = acc.no_sync(trainer.model) if not sync else contextlib.nullcontext()
            with ctx, acc.autocast():
                loss, metrics = loss_fn(mb)
            acc.backward(loss * weight)
            loss_sum += loss.detach().float().item() * weight
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v) * weight
        grad_norm = self._grad_norm_and_clip()
        finite = math.isfinite(loss_sum) and math.isfinite(grad_norm)
        optimizer = self._raw_optimizer if self._raw_optimizer is not None and acc.sync_gradients else self.optimizer
        if finite:
            if self.undo is not None:
                self.undo.save()
            try:
                optimizer.step()
                finite = self._weights_finite()
            except RuntimeError as e:  # a step size beyond float32 ("cannot be converted ... without overflow"),
                if "overflow" not in str(e):  # raised part-way through the parameters: undone like a NaN
                    raise
                finite = False
            if not finite and self.undo is None:
                raise TrainingError(
                    f"{trainer.name}: update {self.updates} made the weights NaN/inf and cannot be undone "
                    f"(rollback_bad_updates is off); the last checkpoint is kept. Lower the learning rate "
                    f"(lr={self.config.lr}) or turn rollback_bad_updates on.")
            if not finite:
                self.undo.restore()
        if finite:
            self.scheduler.step()
            self.bad_steps_in_a_row = 0
        else:
            self.skipped_steps += 1
            self.bad_steps_in_a_row += 1
            if self.bad_steps_in_a_row > self.config.max_bad_steps:
                raise TrainingError(
                    f"{trainer.name}: loss, gradient or updated weights were NaN/inf on {self.bad_steps_in_a_row} "
                    f"steps in a row (update {self.updates}); each was skipped. Lower the learning rate "
                    f"(lr={self.config.lr}), check the data, or raise max_bad_steps.")
        optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        return {"loss": loss_sum, "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0], **metric_sums}

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict(), "updates": self.updates,
                "skipped_steps": self.skipped_steps, "bad_steps_in_a_row": self.bad_steps_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.updates, self.skipped_steps = state["updates"], state["skipped_steps"]
        self.bad_steps_in_a_row = state["bad_steps_in_a_row"]

    def _plain_optimizer(self):
        """The torch optimizer inside Accelerate's wrapper when the wrapper's ``step``/``zero_grad`` would only call it
        (one process or DDP, no AMP grad scaler, no XLA/DeepSpeed/FSDP/Megatron): its ``step`` looks up optional
        packages with importlib on every call, a fixed cost per update that is large next to a tiny model's step.
        None otherwise (the wrapper is used)."""
        from accelerate.utils import DistributedType

        acc = self.trainer.accelerator
        plain = acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
        inner = getattr(self.optimizer, "optimizer", None)
        if not plain or acc.scaler is not None or getattr(acc, "has_lomo_optimizer", False) \
                or type(inner) is not torch.optim.AdamW:
            return None
        return inner

    def _weights_finite(self) -> bool:
        """Whether every trainable weight and its optimizer state is finite after a step, from their sums (NaN and
        inf propagate into a sum; one host sync). A sum can also overflow when the values are finite but together
        beyond float32's range (~3e38): weights that large count as non-finite."""
        tensors = self.undo.live() if self.undo is not None else self.params
        sums = [t.detach().sum() for t in tensors if t.dim() > 0]  # not AdamW's step counts (0-d, on the CPU)
        return bool(torch.stack(sums).isfinite().all())

    def _grad_norm_and_clip(self) -> float:
        if self.config.max_grad_norm > 0:
            return float(self.trainer.accelerator.clip_grad_norm_(self.params, self.config.max_grad_norm))
        grads = [p.grad.detach().float().norm() for p in self.params if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0


class UpdateUndo:
    """A copy of the trainable weights and their optimizer state (AdamW: step, exp_avg, exp_avg_sq) taken before
    each update, so an update that makes them non-finite is undone exactly (`GradientStep`).

    Cost: memory for one more copy of the trainable weights and of their optimizer state (3x the trainable weights
    for AdamW; with LoRA, of the adapters only), allocated once and refilled in place each step with one fused copy.
    """

    def __init__(self, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer):
        self.params, self.optimizer = list(params), optimizer
        self.keys: list[tuple[int, str]] = []  # (parameter index, state key) of each saved state tensor
        self.saved: list[torch.Tensor] = []

    def _state_tensors(self, keys) -> list[torch.Tensor]:
        return [self.optimizer.state[self.params[i]][k] for i, k in keys]

    def live(self) -> list[torch.Tensor]:
        """The weights and their state tensors, as the optimizer holds them now."""
        state = self.optimizer.state
        return self.params + [v for p in self.params for v in state.get(p, {}).values() if isinstance(v, torch.Tensor)]

    def save(self) -> None:
        state = self.optimizer.state
        keys = [(i, k) for i, p in enumerate(self.params) for k, v in state.get(p, {}).items()
                if isinstance(v, torch.Tensor)]
        live = self.params + self._state_tensors(keys)
        with torch.no_grad():
            if keys != self.keys or len(self.saved) != len(live):  # the first step creates the state: copy anew
                self.keys, self.saved = keys, [t.detach().clone() for t in live]
            else:
                torch._foreach_copy_(self.saved, [t.detach() for t in live])

    def restore(self) -> None:
        n = len(self.params)
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params], self.saved[:n])
            saved_params = {i for i, _ in self.keys}
            for i, p in enumerate(self.params):  # state the undone step created (its first) goes
                if i not in saved_params:
                    self.optimizer.state.pop(p, None)
            if self.keys:
                torch._foreach_copy_(self._state_tensors(self.keys), self.saved[n:])


def _tensors_out(state, key: str, tensors: dict[str, torch.Tensor]):
    """A state dict with its tensors moved into ``tensors`` (saved as safetensors) and named in their place, so
    the rest is JSON."""
    if isinstance(state, torch.Tensor):
        tensors[key] = state.detach().cpu().clone()  # a copy: tied weights share memory, which safetensors refuses
        return {"__tensor__": key}
    if isinstance(state, dict):
        return {k: _tensors_out(v, f"{key}.{k}", tensors) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return [_tensors_out(v, f"{key}.{i}", tensors) for i, v in enumerate(state)]
    return state


def _tensors_in(state, tensors: dict[str, torch.Tensor]):
    """The inverse of `_tensors_out`."""
    if isinstance(state, dict):
        if set(state) == {"__tensor__"}:
            return tensors[state["__tensor__"]]
        return {k: _tensors_in(v, tensors) for k, v in state.items()}
    if isinstance(state, list):
        return [_tensors_in(v, tensors) for v in state]
    return state


def _json_number(v):
    """JSON has no NaN or infinity: a non-finite metric is logged as the string "nan", "inf" or "-inf"."""
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


def _jsonable(v) -> bool:
    return isinstance(v, int | float | str | bool) or v is None


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=False)

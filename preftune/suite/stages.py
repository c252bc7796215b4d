"""What every stage of a suite shares: its folder, the metrics it logged, and the config fields it sets."""

from __future__ import annotations

import json
from pathlib import Path


def stage_dir(run_dir: Path, name: str) -> Path:
    """The folder of one stage of a run: its checkpoints, ``metrics.jsonl`` and final model."""
    return run_dir / name


def stage_history(stage_dir: Path) -> list[dict]:
    """The rows a stage logged to its ``metrics.jsonl`` (none when it logged nothing)."""
    path = stage_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stage_fields(run_dir: Path, name: str, seed: int, resume: bool, steps: int, log_every: int = 10) -> dict:
    """Config fields of a stage: its folder, seed, steps, resume (or start afresh), checkpoint and log cadence."""
    return dict(output_dir=str(stage_dir(run_dir, name)), seed=seed, resume=resume, overwrite=not resume,
                steps=steps, save_every=max(50, steps // 4), log_every=log_every)

"""`preftune bench joint`: every exploration scheme of joint learning from choices over several seeds, with RLHF on
the passive run's queries (the comparison itself is `preftune.suite.joint_comparison`); sizes in config/joint.yaml."""

from __future__ import annotations

from pathlib import Path

from benchmarks import study_settings
from preftune.suite.joint_comparison import SCHEME_VARIANTS, JointComparisonSize
from preftune.suite.joint_report import joint_tables

STUDY = study_settings("joint")  # config/joint.yaml


def study_size(quick: bool, seeds: int, rounds: int, queries_per_round: int,
               schemes: tuple[str, ...] | None = None) -> JointComparisonSize:
    """config/joint.yaml's quick size, or its full one with ``seeds``, ``rounds`` and ``queries_per_round``; its
    schemes (the full study: every scheme) unless ``schemes`` names others."""
    fields = dict(STUDY["quick"]) if quick else dict(STUDY["full"], seeds=seeds, rounds=rounds,
                                                     queries_per_round=queries_per_round)
    fields["schemes"] = tuple(schemes if schemes is not None else fields.get("schemes", SCHEME_VARIANTS))
    return JointComparisonSize(**fields)


def write_joint_report(results: dict, run_dir: Path) -> Path:
    lines = ["# preftune bench joint", "", *joint_tables(results), "", "![exploration](joint_exploration.png)", "",
             "![uncertainty](joint_uncertainty.png)", "", "| run | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["timings"].items()]
    path = Path(run_dir) / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

"""`preftune bench joint`: every exploration scheme over several seeds (`preftune.suite.joint_comparison`)."""

from __future__ import annotations

from pathlib import Path

from preftune.suite.joint_report import joint_tables


def write_joint_report(results: dict, run_dir: Path) -> Path:
    lines = ["# preftune bench joint", "", *joint_tables(results), "", "![exploration](joint_exploration.png)", "",
             "![uncertainty](joint_uncertainty.png)", "", "| run | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["timings"].items()]
    path = Path(run_dir) / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

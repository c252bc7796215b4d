"""The studies behind docs/benchmarks.md: preftune against TRL, and the IQLearn, ZPG, RLP, joint-learning and SmolLM2
studies. Not part of the installed library: run them from a source checkout with ``python -m benchmarks STUDY``
(or ``preftune bench STUDY``). Each study's tuned settings are ``config/<study>.yaml``; see README.md.
"""

from __future__ import annotations

from pathlib import Path

from preftune.config import load_yaml

CONFIG_DIR = Path(__file__).parent / "config"


def study_settings(study: str) -> dict:
    """The tuned settings of one study: ``benchmarks/config/<study>.yaml``."""
    return load_yaml(CONFIG_DIR / f"{study}.yaml")

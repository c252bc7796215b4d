"""preftune: fine-tune language models from human feedback, with exact oracles to measure every method."""

__version__ = "0.1.0"

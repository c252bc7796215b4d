"""``python -m benchmarks STUDY ...`` from the repository root."""

from benchmarks.cli import app

app(prog_name="python -m benchmarks")

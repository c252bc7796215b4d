"""The embedded benchmark behind `preftune run` (`default.py`, `smollm2.py`) and `preftune report` (`report.py`), with
the pieces its GridWorld and population sections run. Its sizes and tuned settings are YAML files in `configs/`.

The studies behind docs/benchmarks.md are not part of the library: they live in the source repository's
`benchmarks/` folder and build on this package (never the other way round).
"""

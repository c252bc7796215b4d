import json

import pytest

pytest.importorskip("trl")


def test_trl_comparison_measures_both_libraries_on_equal_work(tmp_path):
    from benchmarks.trl_compare import run_trl_comparison

    output = tmp_path / "bench-trl.json"
    run_trl_comparison(steps=3, batch_size=4, output=output, repeats=1, methods=("sft",), threads=1)
    result = json.loads(output.read_text())

    assert result["steps"] == 3 and result["batch_size"] == 4
    assert set(result["versions"]) >= {"torch", "transformers", "trl"}
    runs = {run["library"]: run for run in result["runs"]}
    assert set(runs) == {"preftune", "trl"}
    for run in runs.values():
        assert run["method"] == "sft"
        assert run["tokens"] > 0 and run["tokens_per_s"] > 0 and run["loop_seconds"] > 0
        assert run["loop_cpu_seconds"] > 0 and run["tokens_per_cpu_s"] > 0
        assert run["peak_mb"] > 0 and run["peak_above_baseline_mb"] >= 0
    # same examples, same steps: each library puts exactly the same non-pad tokens through the model
    assert runs["preftune"]["tokens"] == runs["trl"]["tokens"]
    assert result["summary"]["sft"]["speed_ratio"] > 0


def test_unknown_method_is_refused(tmp_path):
    from benchmarks.trl_compare import run_trl_comparison

    with pytest.raises(ValueError, match="unknown method"):
        run_trl_comparison(steps=2, batch_size=2, output=tmp_path / "x.json", methods=("no-such-method",))


def test_online_row_samples_the_same_completions_in_both_libraries(tmp_path):
    from benchmarks.trl_compare import SAMPLES_PER_PROMPT, run_trl_comparison

    output = tmp_path / "bench-trl.json"
    run_trl_comparison(steps=2, batch_size=2, output=output, repeats=1, methods=("rloo",), threads=1)
    result = json.loads(output.read_text())

    runs = {run["library"]: run for run in result["runs"]}
    assert set(runs) == {"preftune", "trl"}
    for run in runs.values():
        # 2 iterations × 2 prompts × k samples, all of them trained on
        assert run["samples"] == 2 * 2 * SAMPLES_PER_PROMPT
        assert run["samples_per_s"] > 0 and run["samples_per_cpu_s"] > 0 and run["generation_tokens_per_s"] > 0
        assert run["tokens"] > 0
        assert 0 < run["generated_tokens"] <= run["samples"] * result["max_new_tokens"]
        assert 0 < run["generate_fraction"] < 1 and run["peak_mb"] > 0
    summary = result["summary"]["rloo"]
    assert summary["speed_ratio"] > 0 and summary["generation_speed_ratio"] > 0

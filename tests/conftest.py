import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    from preftune.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture()
def tiny_model(tokenizer):
    from preftune.tiny import TinySpec, build_tiny_model

    return build_tiny_model("tiny", tokenizer, TinySpec(hidden_size=32, num_layers=1, num_heads=2), seed=0)

"""Tokenizers and turns the training-sample tests share: the tiny tokenizer and the real SmolLM2 one, the chatterbot
corpus as ingest reads it, and synthetic multi-turn conversations (ops/synthetic_logs.py). Built once per session
(loading the SmolLM2 GGUF tokenizer takes ~9 s): tests copy them before changing anything."""

import pandas as pd
import pytest

from ops import synthetic_logs
from pipeline import ingest
from pipeline.config import ProjectConfig
from pipeline.model import loading


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    return loading.load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def smollm2():
    return loading.load_tokenizer(ProjectConfig().base_model)


@pytest.fixture(scope="session", params=["tiny", "smollm2"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def chatterbot():
    turns, _, _ = ingest.collect(ingest.IngestConfig(), "2026-11-22")
    return turns


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """1,200 four-turn conversations from ops/synthetic_logs.py (English and Chinese, duplicates included)."""
    return pd.read_parquet(synthetic_logs.turns_table(1200, tmp_path_factory.mktemp("synthetic")))

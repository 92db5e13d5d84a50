"""Damaged model folders and config files give one clear error naming the file, before any expensive work
(issue 22 item 8)."""

from __future__ import annotations

import json
import shutil

import pytest

from novalign.config import ConfigError, SFTConfig, load_config
from novalign.models.load import ModelDirError, load_model, load_tokenizer


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    return out


def test_truncated_or_random_weights(model_copy):
    weights = model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDirError, match="model.safetensors"):
        load_model(model_copy)
    weights.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(ModelDirError, match="model.safetensors"):
        load_model(model_copy)


def test_missing_weights(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(ModelDirError, match="no weights"):
        load_model(model_copy)


def test_tokenizer_larger_than_the_embedding(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    config["vocab_size"] = 300  # the tiny tokenizer has 2048 ids
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="embedding rows"):
        load_model(model_copy)


def test_config_files_with_invalid_utf8(model_copy, tmp_path):
    (model_copy / "config.json").write_bytes(b'{"model_type": "llama", "x": "\xff\xfe"}')
    with pytest.raises(ModelDirError, match="config.json.*not UTF-8"):
        load_model(model_copy)
    (model_copy / "tokenizer_config.json").write_bytes(b'{"a": 1,\n "b": }')
    with pytest.raises(ModelDirError, match="tokenizer_config.json.* line 2 column"):
        load_tokenizer(model_copy)
    yaml_file = tmp_path / "sft.yaml"
    yaml_file.write_bytes(b"output_dir: runs/\xff\n")
    with pytest.raises(ConfigError, match="sft.yaml: not UTF-8"):
        load_config(SFTConfig, yaml_file)

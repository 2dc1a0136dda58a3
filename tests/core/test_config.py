"""config.json: bad files get ConfigError naming file and key; both RoPE dialects read alike."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

import mlx_zoo
from mlx_zoo import BaseModelArgs, ConfigError, RopeScaling, read_config


def test_missing_config(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.json: file not found"):
        mlx_zoo.load(tmp_path)


def test_config_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
        mlx_zoo.load(tmp_path)


def test_config_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object, got list"):
        read_config(tmp_path)


def test_config_without_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ConfigError, match=r"config\.json, key 'model_type': missing") as e:
        mlx_zoo.load(tmp_path)
    assert e.value.key == "model_type" and e.value.path == tmp_path / "config.json"


def test_required_field_of_wrong_type(tmp_path, testplugin, write_zoo_tiny):
    ckpt = write_zoo_tiny(tmp_path / "t")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["hidden_size"] = "sixteen"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"key 'hidden_size': expected int, got str 'sixteen'"):
        mlx_zoo.load(ckpt)


def test_required_field_missing(tmp_path, testplugin, write_zoo_tiny):
    ckpt = write_zoo_tiny(tmp_path / "t")
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["vocab_size"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"key 'vocab_size': missing; TinyArgs requires it"):
        mlx_zoo.load(ckpt)


@dataclass
class Args(BaseModelArgs):
    model_type: str
    hidden_size: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    layer_sizes: list[int] | None = None


PUBLISHED = {"model_type": "x", "hidden_size": 8, "rope_theta": 500000,
             "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
TRANSFORMERS_5 = {"model_type": "x", "hidden_size": 8,
                  "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192}}


@pytest.mark.parametrize("raw", [PUBLISHED, TRANSFORMERS_5], ids=["published", "transformers5"])
def test_both_rope_dialects_read_into_one_typed_form(tmp_path, raw):
    (tmp_path / "config.json").write_text(json.dumps(raw))
    args = Args.from_dict(read_config(tmp_path))
    assert args.rope_theta == 500000.0 and isinstance(args.rope_theta, float)
    assert args.rope_scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def test_plain_rope_in_both_dialects_is_no_scaling(tmp_path):
    for raw in ({"model_type": "x", "hidden_size": 8, "rope_theta": 1e6},
                {"model_type": "x", "hidden_size": 8,
                 "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}):
        (tmp_path / "config.json").write_text(json.dumps(raw))
        args = Args.from_dict(read_config(tmp_path))
        assert (args.rope_theta, args.rope_scaling) == (1e6, None)


def test_nested_text_config_is_normalised():
    cfg = mlx_zoo.normalize_config({"model_type": "x", "text_config": TRANSFORMERS_5})
    assert cfg["text_config"]["rope_theta"] == 500000.0
    assert cfg["text_config"]["rope_scaling"]["rope_type"] == "llama3"


def test_normalising_adds_no_rope_key_the_file_lacks():
    """A section without RoPE settings -- the published Llama 4 layout's wrapper around
    ``text_config`` -- gains no ``rope_scaling`` key: the keys kept around the text settings,
    and written back by save, are the file's own."""
    cfg = mlx_zoo.normalize_config({"model_type": "x", "text_config": TRANSFORMERS_5})
    assert "rope_scaling" not in cfg and "rope_theta" not in cfg
    assert "rope_scaling" in cfg["text_config"]
    explicit = mlx_zoo.normalize_config({"model_type": "x", "rope_scaling": None})
    assert explicit["rope_scaling"] is None


def test_generic_field_types_checked():
    with pytest.raises(ConfigError, match="layer_sizes"):
        Args.from_dict({"model_type": "x", "hidden_size": 8, "layer_sizes": 3})
    assert Args.from_dict({"model_type": "x", "hidden_size": 8,
                           "layer_sizes": [1, 2]}).layer_sizes == [1, 2]
    with pytest.raises(ConfigError, match="rope_scaling"):
        Args.from_dict(mlx_zoo.normalize_config({"model_type": "x", "hidden_size": 8,
                                                 "rope_scaling": "yarn"}))


def test_to_dict_keeps_integers_of_float_fields():
    """from_dict reads an integer rope_theta as a float; to_dict writes the integer back, so a
    reader that type-checks (transformers' Llama4 config rejects a float floor_scale) still
    accepts what mlx_zoo.save writes."""
    args = Args.from_dict({"model_type": "x", "hidden_size": 8, "rope_theta": 500000})
    assert args.rope_theta == 500000.0 and isinstance(args.rope_theta, float)
    written = args.to_dict()["rope_theta"]
    assert written == 500000 and type(written) is int
    args.rope_theta = 1000.5  # a changed value is written as it now is
    assert args.to_dict()["rope_theta"] == 1000.5


def test_to_dict_keeps_unknown_keys():
    args = Args.from_dict({"model_type": "x", "hidden_size": 8, "architectures": ["X"]})
    assert args.to_dict()["architectures"] == ["X"]

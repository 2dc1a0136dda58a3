"""Real-world boundaries of config.json: values of the right JSON type but out of range -- zero or
negative sizes, NaN and Infinity (Python's json reads both), 2**40, numbers written as strings,
RoPE parameters that divide by zero or lists of the wrong length -- are refused by
``mlx_zoo.load`` with a :class:`~mlx_zoo.ConfigError` naming config.json and the key, for every
architecture, before any weight is read; valid edge values still load.

Each architecture's checkpoint is a demo's (its model.safetensors copied), or, for the formats no
demo uses, a randomly initialised model written by ``mlx_zoo.save``.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import mlx.core as mx
import numpy as np
import pytest

import mlx_zoo
from mlx_zoo import ConfigError
from mlx_zoo.config import (
    MAX_SIZE,
    BaseModelArgs,
    Divides,
    NonNegativeFloat,
    PositiveInt,
    check_value,
)
from mlx_zoo.demos import demo_dir

NAN, INF = float("nan"), float("inf")
HUGE = 2**40  # beyond MLX's 32-bit shapes
BEYOND_FLOAT32 = 1e39  # finite in Python, infinite in float32
LAYERS, HALF_HEAD = 4, 16  # the demos' layer count and head_dim / 2 (head_dim 32)

# -- the checkpoints -----------------------------------------------------------------------------

ARCHITECTURES = ["qwen2", "hunyuan_v1_dense", "hunyuan_v1_moe", "hunyuan", "llama4_text",
                 "llama4"]


def demo_config(name: str) -> dict[str, Any]:
    return json.loads((demo_dir(name) / "config.json").read_text())


def base_config(arch: str) -> dict[str, Any]:
    """A valid config.json of ``arch`` (the demos' sizes)."""
    if arch == "qwen2":
        return demo_config("qwen2")
    if arch == "hunyuan_v1_dense":
        return demo_config("hunyuan")
    if arch == "hunyuan_v1_moe":
        return {**demo_config("hunyuan"), "model_type": arch, "num_experts": 4,
                "moe_topk": [2, 1, 2, 1]}
    if arch == "hunyuan":  # Tencent's format: mixed MLP/MoE, Cross-Layer Attention
        return {**demo_config("hunyuan"), "model_type": arch, "num_experts": [1, 4, 4, 2],
                "moe_topk": 2, "moe_intermediate_size": 64, "use_mixed_mlp_moe": True,
                "num_shared_expert": 1, "use_cla": True, "cla_share_factor": 2}
    if arch == "llama4_text":
        return demo_config("llama4")
    if arch == "llama4":  # the published layout: nested text_config
        text = {k: v for k, v in demo_config("llama4").items() if k != "model_type"}
        return {"model_type": arch, "architectures": ["Llama4ForConditionalGeneration"],
                "text_config": text}
    raise KeyError(arch)


DEMO_OF = {"qwen2": "qwen2", "hunyuan_v1_dense": "hunyuan", "hunyuan": None,
           "hunyuan_v1_moe": None, "llama4_text": "llama4", "llama4": "llama4"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One valid checkpoint directory per architecture."""
    root = tmp_path_factory.mktemp("ranges")
    out = {}
    for arch in ARCHITECTURES:
        path = root / arch
        path.mkdir()
        demo = DEMO_OF[arch]
        if demo is not None:
            shutil.copy(demo_dir(demo) / "model.safetensors", path)
            (path / "config.json").write_text(json.dumps(base_config(arch)))
        else:
            spec = mlx_zoo.registry.resolve(arch)
            args = spec.config_class.from_dict(base_config(arch))
            mx.random.seed(0)
            mlx_zoo.save(spec.model_class(args), args, path)
        out[arch] = path
    return out


def set_key(config: dict[str, Any], key: str, value: Any) -> None:
    """``config[a][b] = value`` for ``key = "a.b"``; a top-level ``rope_scaling.*`` is created."""
    *parents, last = key.split(".")
    for part in parents:
        if config.get(part) is None:
            config[part] = {}
        config = config[part]
    config[last] = value


def variant(checkpoints, tmp_path: Path, arch: str, edits: dict[str, Any]) -> Path:
    """A copy of ``arch``'s checkpoint whose config.json has ``edits`` applied (on text_config
    for the nested llama4 layout)."""
    config = copy.deepcopy(json.loads((checkpoints[arch] / "config.json").read_text()))
    target = config["text_config"] if arch == "llama4" else config
    for key, value in edits.items():
        set_key(target, key, value)
    path = tmp_path / "edited"
    path.mkdir(parents=True)
    shutil.copy(checkpoints[arch] / "model.safetensors", path)
    (path / "config.json").write_text(json.dumps(config))  # NaN/Infinity written as JSON allows
    return path


def expect_config_error(path: Path, arch: str, key: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        mlx_zoo.load(path)
    error = caught.value
    expected = f"text_config.{key}" if arch == "llama4" else key
    assert error.key == expected, str(error)
    assert error.path == path / "config.json" and "config.json" in str(error)
    return error


# -- the table of bad values ---------------------------------------------------------------------

BAD_SIZES = [0, -1, HUGE, "2", 2.0, True]  # a count/width: positive int within int32, no float
BAD_FLOATS = [NAN, INF, -INF, BEYOND_FLOAT32, "2", True]  # any float field: finite numbers

COMMON_SIZES = ["hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
                "intermediate_size", "vocab_size", "max_position_embeddings"]
SIZES = {arch: list(COMMON_SIZES) for arch in ARCHITECTURES}
for _arch in ("hunyuan_v1_dense", "hunyuan_v1_moe", "hunyuan", "llama4_text", "llama4"):
    SIZES[_arch].append("head_dim")
SIZES["hunyuan_v1_moe"] += ["num_experts", "moe_topk"]
SIZES["hunyuan"] += ["moe_intermediate_size", "cla_share_factor", "attention_head_dim"]
for _arch in ("llama4_text", "llama4"):
    SIZES[_arch] += ["intermediate_size_mlp", "num_local_experts", "num_experts_per_tok",
                     "interleave_moe_layer_step", "no_rope_layer_interval",
                     "attention_chunk_size", "floor_scale"]

FLOATS = {arch: ["rope_theta", "rms_norm_eps"] for arch in ARCHITECTURES}
for _arch in ("llama4_text", "llama4"):
    FLOATS[_arch] += ["floor_scale", "attn_scale"]
for _arch in ("hunyuan_v1_dense", "hunyuan_v1_moe", "hunyuan"):
    FLOATS[_arch] += ["rope_scaling.alpha"]

# (edits, the key the error must name); applied to every architecture unless listed per arch
OTHER_CASES: dict[str, list[tuple[dict[str, Any], str]]] = {arch: [
    ({"rope_theta": 0}, "rope_theta"),
    ({"rope_theta": -10000.0}, "rope_theta"),
    ({"rms_norm_eps": -1e-6}, "rms_norm_eps"),
    ({"rms_norm_eps": 0}, "rms_norm_eps"),  # MLX's RMSNorm refuses it
    ({"num_key_value_heads": 3}, "num_key_value_heads"),  # does not divide 4 attention heads
] for arch in ARCHITECTURES}
OTHER_CASES["qwen2"] += [({"hidden_size": 130}, "num_attention_heads")]  # head_dim derived
for _arch in ("hunyuan_v1_dense", "hunyuan_v1_moe", "hunyuan", "llama4_text", "llama4"):
    OTHER_CASES[_arch] += [
        ({"head_dim": None, "hidden_size": 130}, "num_attention_heads"),  # derived head_dim
        ({"head_dim": 33}, "head_dim"),  # RoPE rotates pairs
    ]
for _arch in ("hunyuan_v1_dense", "hunyuan_v1_moe", "hunyuan"):
    OTHER_CASES[_arch] += [
        ({"rope_scaling.alpha": 0}, "rope_scaling.alpha"),  # was: silently factor-based dynamic
        ({"rope_scaling.alpha": -4.0}, "rope_scaling.alpha"),  # was: NaN frequencies
        ({"rope_scaling.factor": "1"}, "rope_scaling.factor"),
    ]
OTHER_CASES["hunyuan_v1_moe"] += [
    ({"moe_topk": [2, 0, 1, 1]}, "moe_topk"),
    ({"moe_topk": [2, "1", 1, 1]}, "moe_topk"),
    ({"moe_topk": 5}, "moe_topk"),  # > num_experts
]
OTHER_CASES["hunyuan"] += [
    ({"num_experts": [1, 0, 4, 2]}, "num_experts"),
    ({"num_experts": [1, 4, HUGE, 2]}, "num_experts"),
    ({"num_shared_expert": -1}, "num_shared_expert"),
    ({"moe_intermediate_size": [64, 64, -64, 64]}, "moe_intermediate_size"),
]
for _arch in ("llama4_text", "llama4"):
    OTHER_CASES[_arch] += [
        ({"floor_scale": -8192}, "floor_scale"),
        ({"attn_scale": -0.1}, "attn_scale"),
        ({"no_rope_layers": [1, 2, 1, 0]}, "no_rope_layers"),
        ({"moe_layers": [-1]}, "moe_layers"),
        ({"moe_layers": ["1"]}, "moe_layers"),
        ({"num_experts_per_tok": 5}, "num_experts_per_tok"),  # > num_local_experts
    ]

# RoPE scalings are the core's (every model reads them alike): checked on qwen2 and llama4.
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 1024}
LONGROPE = {"rope_type": "longrope", "original_max_position_embeddings": 1024,
            "short_factor": [1.0] * HALF_HEAD, "long_factor": [2.0] * HALF_HEAD}
ROPE_CASES: list[tuple[dict[str, Any], dict[str, Any], str]] = [
    # (rope_scaling, edits to it, key named)
    ({"rope_type": "linear", "factor": 2.0}, {"factor": 0}, "factor"),
    ({"rope_type": "linear", "factor": 2.0}, {"factor": -2.0}, "factor"),
    ({"rope_type": "linear", "factor": 2.0}, {"factor": NAN}, "factor"),
    ({"rope_type": "linear", "factor": 2.0}, {"factor": "2"}, "factor"),
    ({"rope_type": "linear"}, {}, "factor"),  # missing
    ({"rope_type": "dynamic", "factor": 2.0}, {"factor": 0.0}, "factor"),
    ({"rope_type": "nope"}, {}, "rope_type"),
    ({"rope_type": 3}, {}, "rope_type"),
    (LLAMA3, {"high_freq_factor": 0.5}, "high_freq_factor"),  # < low
    (LLAMA3, {"low_freq_factor": 0}, "low_freq_factor"),
    (LLAMA3, {"factor": INF}, "factor"),
    (LLAMA3, {"original_max_position_embeddings": 0}, "original_max_position_embeddings"),
    (LLAMA3, {"original_max_position_embeddings": "8192"}, "original_max_position_embeddings"),
    (LLAMA3, {"original_max_position_embeddings": 8192.0}, "original_max_position_embeddings"),
    (LONGROPE, {"short_factor": [1.0]}, "short_factor"),  # was broadcast silently
    (LONGROPE, {"long_factor": [2.0] * (HALF_HEAD + 1)}, "long_factor"),
    (LONGROPE, {"short_factor": ["1.0"] * HALF_HEAD}, "short_factor"),
    (LONGROPE, {"long_factor": [2.0] * (HALF_HEAD - 1) + [NAN]}, "long_factor"),
    (LONGROPE, {"long_factor": [2.0] * (HALF_HEAD - 1) + [0.0]}, "long_factor"),
    (LONGROPE, {"short_factor": 1.0}, "short_factor"),
    (LONGROPE, {"original_max_position_embeddings": 1}, "original_max_position_embeddings"),
    (YARN, {"beta_fast": -32.0}, "beta_fast"),
    (YARN, {"beta_slow": NAN}, "beta_slow"),
    (YARN, {"attention_factor": 0.0}, "attention_factor"),
    (YARN, {"attention_factor": -1.0}, "attention_factor"),
    (YARN, {"mscale": -1.0, "mscale_all_dim": 1.0}, "mscale"),
    (YARN, {"mscale_all_dim": INF, "mscale": 1.0}, "mscale_all_dim"),
    (YARN, {"truncate": 1}, "truncate"),
    (YARN, {"factor": -4.0}, "factor"),
]


def table() -> list:
    cases = []
    for arch in ARCHITECTURES:
        for key in SIZES[arch]:
            for value in BAD_SIZES:
                if key == "floor_scale" and isinstance(value, float):
                    continue  # floor_scale may be a float
                cases.append(pytest.param(arch, {key: value}, key, id=f"{arch}-{key}={value!r}"))
        for key in FLOATS[arch]:
            for value in BAD_FLOATS:
                cases.append(pytest.param(arch, {key: value}, key, id=f"{arch}-{key}={value!r}"))
        for edits, key in OTHER_CASES[arch]:
            cases.append(pytest.param(arch, edits, key, id=f"{arch}-{edits}"))
    for arch in ("qwen2", "llama4"):
        for scaling, edits, key in ROPE_CASES:
            cases.append(pytest.param(arch, {"rope_scaling": {**scaling, **edits}},
                                      f"rope_scaling.{key}",
                                      id=f"{arch}-rope-{scaling['rope_type']}-{edits}"))
    return cases


@pytest.mark.parametrize("arch,edits,key", table())
def test_bad_value_is_a_config_error_naming_the_key(checkpoints, tmp_path, arch, edits, key):
    expect_config_error(variant(checkpoints, tmp_path, arch, edits), arch, key)


def test_error_messages_say_what_was_expected(checkpoints, tmp_path):
    error = expect_config_error(variant(checkpoints, tmp_path, "qwen2", {"hidden_size": 0}),
                                "qwen2", "hidden_size")
    assert "expected a value >= 1 and <= 2**31 - 1, got 0" in str(error)
    error = expect_config_error(variant(checkpoints, tmp_path / "b", "llama4_text",
                                        {"rope_theta": NAN}), "llama4_text", "rope_theta")
    assert "expected a finite number" in str(error)
    path = variant(checkpoints, tmp_path / "c", "qwen2",
                   {"rope_scaling": {**LONGROPE, "short_factor": [1.0]}})
    error = expect_config_error(path, "qwen2", "rope_scaling.short_factor")
    assert f"head_dim / 2 = {HALF_HEAD} entries, got 1" in str(error)
    path = variant(checkpoints, tmp_path / "d", "hunyuan", {"num_experts": [1, 4, 0, 2]})
    assert "entry 2: expected a value >= 1" in str(expect_config_error(path, "hunyuan",
                                                                       "num_experts"))


# -- valid edge values still load ----------------------------------------------------------------

def logits(model) -> np.ndarray:
    return np.array(model(mx.array([[1, 2, 3, 4, 5]])))


VALID_EDGES: list[tuple[str, dict[str, Any]]] = [
    # the same model written differently: logits must not move
    ("qwen2", {"rope_theta": 10000}),  # an int for a float field
    ("qwen2", {"rope_scaling": {"rope_type": "default"}}),  # transformers 5's "no scaling"
    ("hunyuan_v1_dense", {"rope_scaling.alpha": 4}),
    ("hunyuan_v1_dense", {"rope_scaling.beta_fast": 32, "rope_scaling.mscale": 1.0}),  # ignored
    ("llama4_text", {"floor_scale": 8192.0}),  # transformers writes an int; a float is the same
    ("llama4_text", {"max_position_embeddings": MAX_SIZE}),  # only NoPE/RoPE tables read it
    ("llama4", {"layer_types": None, "moe_layers": None}),
    ("hunyuan", {"head_dim": None, "attention_head_dim": 32}),
    ("hunyuan_v1_moe", {"head_dim": None}),  # 128 / 4 heads: derived, the same 32
]


@pytest.mark.parametrize("arch,edits", VALID_EDGES, ids=[f"{a}-{e}" for a, e in VALID_EDGES])
def test_equivalent_spelling_loads_with_the_same_logits(checkpoints, tmp_path, arch, edits):
    reference, _ = mlx_zoo.load(checkpoints[arch])
    model, _ = mlx_zoo.load(variant(checkpoints, tmp_path, arch, edits))
    np.testing.assert_array_equal(logits(model), logits(reference))


EDGE_VALUES: list[tuple[str, dict[str, Any]]] = [
    # legal but unusual: loads, finite logits
    ("qwen2", {"rms_norm_eps": 1e-30}),
    ("qwen2", {"num_key_value_heads": 4}),  # == num_attention_heads: plain multi-head attention
    ("qwen2", {"rope_theta": 2.0**40}),  # a large base is fine for a float
    ("qwen2", {"rope_scaling": {"rope_type": "linear", "factor": 0.5}}),  # compresses
    ("qwen2", {"rope_scaling": {**YARN, "beta_fast": 0, "beta_slow": 0, "mscale": 0}}),  # defaults
    ("qwen2", {"rope_scaling": {**YARN, "truncate": False, "attention_factor": 1}}),
    ("qwen2", {"rope_scaling": {**LLAMA3, "original_max_position_embeddings": None}}),
    ("qwen2", {"rope_scaling": {**LONGROPE, "factor": 4}}),
    ("hunyuan_v1_dense", {"rope_scaling.alpha": 1e-3}),
    ("hunyuan_v1_moe", {"moe_topk": 4}),  # == num_experts
    ("hunyuan", {"num_shared_expert": [1, 0, 0, 2]}),
    ("hunyuan", {"use_cla": False, "cla_share_factor": 3}),
    ("llama4_text", {"attn_scale": 0}),
    ("llama4_text", {"num_experts_per_tok": 4, "attn_temperature_tuning": 4}),
]


@pytest.mark.parametrize("arch,edits", EDGE_VALUES, ids=[f"{a}-{e}" for a, e in EDGE_VALUES])
def test_edge_value_loads(checkpoints, tmp_path, arch, edits):
    path = variant(checkpoints, tmp_path, arch, edits)
    try:
        model, _ = mlx_zoo.load(path)
    except mlx_zoo.WeightMismatchError:
        return  # accepted by the config checks; the demo's weights simply have other shapes
    assert np.isfinite(logits(model)).all()


# -- the mechanism ---------------------------------------------------------------------------------

def test_check_value_is_strict_and_names_the_key():
    assert check_value(3, float, "x") == 3.0 and isinstance(check_value(3, float, "x"), float)
    assert check_value(MAX_SIZE, PositiveInt, "n") == MAX_SIZE
    for bad in ("3", True, 3.0, 0, MAX_SIZE + 1):
        with pytest.raises(ConfigError, match="key 'n'"):
            check_value(bad, PositiveInt, "n", "config.json")
    for bad in (NAN, INF, -INF, BEYOND_FLOAT32, "1.5"):
        with pytest.raises(ConfigError, match="key 'f'"):
            check_value(bad, float, "f")
    assert check_value(-1.5, float, "f") == -1.5  # finite is all a plain float field asks
    assert math.isclose(check_value(1e-300, float, "f"), 1e-300)


def test_plugin_declares_ranges_on_its_fields():
    """A plugin's dataclass states ranges in the field types; the base class enforces them, with
    finiteness automatic for every float."""
    @dataclass
    class Args(BaseModelArgs):
        heads: Annotated[PositiveInt, Divides("width")]
        width: PositiveInt
        strength: NonNegativeFloat = 0.0
        scale: float = 1.0

    assert Args.from_dict({"heads": 2, "width": 8, "scale": -3}).scale == -3.0
    for bad, key in (({"heads": 3, "width": 8}, "heads"), ({"heads": 0, "width": 8}, "heads"),
                     ({"heads": 2, "width": 8, "strength": -1}, "strength"),
                     ({"heads": 2, "width": 8, "scale": NAN}, "scale")):
        with pytest.raises(ConfigError) as caught:
            Args.from_dict(bad, "config.json")
        assert caught.value.key == key


def test_rope_errors_outside_a_config_name_the_key():
    """get_rope without a config file (a model built by hand) still names the key."""
    with pytest.raises(ConfigError, match=r"<config>, key 'rope_scaling\.factor'"):
        mlx_zoo.get_rope(32, base=10000.0, scaling={"rope_type": "linear", "factor": "2"})
    with pytest.raises(ConfigError, match=r"key 'rope_scaling\.short_factor'"):
        mlx_zoo.get_rope(32, base=10000.0, scaling={**LONGROPE, "short_factor": [1.0]})
    with pytest.raises(ConfigError, match=r"key 'rope_theta'"):
        mlx_zoo.get_rope(32, base=NAN)

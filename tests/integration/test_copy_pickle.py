"""Models survive ``copy.deepcopy`` and ``pickle``: tools copy models (draft models, LoRA,
evaluation harnesses). Every demo -- plain, fused and 4-bit quantized -- and a mixture-of-experts
HunYuan model are copied both ways; the copy computes the same logits and owns its weights."""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

import mlx_zoo
from mlx_zoo import registry
from mlx_zoo.demos import demo_dir
from mlx_zoo.layers import SwitchGLU

DEMOS = ("qwen2", "hunyuan", "llama4")
PROMPT = mx.array([[1, 5, 9, 42, 7, 3]])


def pickled(obj):
    return pickle.loads(pickle.dumps(obj))


COPIES: dict[str, Callable] = {"deepcopy": copy.deepcopy, "pickle": pickled}


def demo(name: str, variant: str) -> nn.Module:
    model, config = mlx_zoo.load(f"demo:{name}", fuse=variant == "fused")
    if variant == "quantized":
        mlx_zoo.quantize(model, config, bits=4, group_size=32)
    mx.eval(model.parameters())
    return model


def hunyuan_moe() -> nn.Module:
    """The HunYuan demo's shape as ``hunyuan_v1_moe`` (routed SwitchGLU experts and a shared
    MLP), randomly initialised: the demo checkpoint itself is dense."""
    raw = json.loads((demo_dir("hunyuan") / "config.json")
                     .read_text())
    raw.update(model_type="hunyuan_v1_moe", num_experts=4, moe_topk=2,
               moe_intermediate_size=64, num_shared_expert=1, use_mixed_mlp_moe=True)
    arch = registry.resolve("hunyuan_v1_moe")
    mx.random.seed(0)
    model = arch.model_class(arch.config_class.from_dict(raw))
    mx.eval(model.parameters())
    return model


def assert_independent_copy(model: nn.Module, clone: nn.Module) -> None:
    """Same type, same logits; changing the clone's weights leaves the original alone."""
    assert type(clone) is type(model)
    before = model(PROMPT)
    assert mx.array_equal(clone(PROMPT), before).item()
    original = dict(tree_flatten(model.parameters()))
    cloned = dict(tree_flatten(clone.parameters()))
    assert original.keys() == cloned.keys()
    assert all(cloned[k] is not original[k] for k in original)
    # in place, on an array of the clone, and by replacing all of the clone's parameters
    name = next(k for k, v in cloned.items() if v.dtype in (mx.float32, mx.bfloat16, mx.float16))
    cloned[name][...] = 0
    assert mx.array_equal(model(PROMPT), before).item()
    clone.update(tree_map_zero(clone.parameters()))
    assert mx.array_equal(model(PROMPT), before).item()
    assert not mx.array_equal(clone(PROMPT), before).item()


def tree_map_zero(tree):
    from mlx.utils import tree_map

    return tree_map(lambda a: mx.zeros_like(a), tree)


@pytest.mark.parametrize("how", sorted(COPIES))
@pytest.mark.parametrize("variant", ["plain", "fused", "quantized"])
@pytest.mark.parametrize("name", DEMOS)
def test_demo_models_copy_and_pickle(name, variant, how):
    model = demo(name, variant)
    assert_independent_copy(model, COPIES[how](model))


@pytest.mark.parametrize("how", sorted(COPIES))
@pytest.mark.parametrize("variant", ["plain", "fused", "quantized"])
def test_hunyuan_moe_copies_and_pickles(how, variant):
    model = hunyuan_moe()
    assert any(isinstance(m, SwitchGLU) for m in model.modules())
    if variant == "fused":
        assert mlx_zoo.fuse_projections(model) > 0
    elif variant == "quantized":
        mlx_zoo.quantize(model, {"model_type": "hunyuan_v1_moe"}, bits=4, group_size=32)
    assert_independent_copy(model, COPIES[how](model))


def test_switch_glu_keeps_its_mlx_nn_activation_through_copies():
    for activation in (nn.silu, nn.gelu):
        layer = SwitchGLU(8, 16, 4, activation=activation)
        for how in COPIES.values():
            clone = how(layer)
            assert clone.activation is activation
            assert clone.gate_proj.weight is not layer.gate_proj.weight
            assert mx.array_equal(clone.gate_proj.weight, layer.gate_proj.weight).item()


def plain_activation(x: mx.array) -> mx.array:
    return x * mx.sigmoid(x)


def test_switch_glu_with_custom_activations():
    layer = SwitchGLU(8, 16, 4, activation=plain_activation)
    assert pickled(layer).activation is plain_activation
    compiled = mx.compile(plain_activation)
    layer = SwitchGLU(8, 16, 4, activation=compiled)
    assert copy.deepcopy(layer).activation is compiled  # shared, as deepcopy shares functions
    with pytest.raises(pickle.PicklingError, match="SwitchGLU.activation.*mx.compile"):
        pickle.dumps(layer)


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16, mx.uint32, mx.int8])
def test_mlx_arrays_pickle_and_copy_natively(dtype):
    """MLX (0.32) pickles arrays itself, bfloat16 included: the core registers nothing."""
    a = (mx.arange(12).reshape(3, 4) * 3).astype(dtype)
    for clone in (pickled(a), copy.deepcopy(a)):
        assert clone.dtype == dtype and clone.shape == a.shape
        assert mx.array_equal(clone, a).item()
        assert clone is not a

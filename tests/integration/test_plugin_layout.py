"""The plugins of this repository use the core's public API only, and their model files read
alike: docstring, imports, constants, ``__all__`` near the top, then config, modules, model;
every class documented; the decoder block called ``DecoderLayer`` everywhere."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import mlx_zoo

REPO = Path(__file__).resolve().parents[2]
MODEL_FILES = {  # plugin model files checked for layout; the block class of each
    "plugins/mlx-hunyuan/src/mlx_hunyuan/blocks.py": "DecoderLayer",
    "plugins/mlx-llama4/src/mlx_llama4/llama4.py": "DecoderLayer",
}
PLUGIN_SOURCES = sorted(str(p.relative_to(REPO)) for p in
                        (REPO / "plugins").glob("mlx-*/src/mlx_*/*.py")
                        if p.parts[-4] in ("mlx-hunyuan", "mlx-llama4"))


PUBLIC_MODULES = ("mlx_zoo", "mlx_zoo.gguf")
"""The core's public API: the package, and the GGUF mapping plugins declare (its ``__all__``)."""


@pytest.mark.parametrize("relative", PLUGIN_SOURCES)
def test_plugins_import_only_public_names_of_mlx_zoo(relative):
    tree = ast.parse((REPO / relative).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlx_zoo"):
            assert node.module in PUBLIC_MODULES, f"{relative}:{node.lineno}: from {node.module}"
            exported = importlib.import_module(node.module).__all__
            for alias in node.names:
                assert not alias.name.startswith("_"), alias.name
                assert alias.name in exported, f"{alias.name} is not exported"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert not (node.value.id == "mlx_zoo" and node.attr.startswith("_")), relative


@pytest.mark.parametrize("relative", sorted(MODEL_FILES))
def test_model_file_layout(relative):
    tree = ast.parse((REPO / relative).read_text(encoding="utf-8"))
    body = tree.body
    assert ast.get_docstring(tree)
    kinds = []
    for node in body[1:]:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            kinds.append("import")
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            kinds.append("all")
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            kinds.append("definition")
    first_definition = kinds.index("definition")
    assert "all" in kinds[:first_definition], "__all__ before the first class or function"
    assert kinds.index("all") > max(i for i, k in enumerate(kinds) if k == "import")
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    assert [c.name for c in classes if not ast.get_docstring(c)] == []
    names = [c.name for c in classes]
    assert MODEL_FILES[relative] in names
    assert "TransformerBlock" not in names
    # config first, the model (a CausalLM) last among the classes
    assert names.index("DecoderLayer") > min(i for i, n in enumerate(names) if "Args" in n)
    causal = [c.name for c in classes if any(getattr(b, "id", "") == "CausalLM"
                                             for b in c.bases)]
    assert names[-1] in causal


@pytest.mark.parametrize("module", ["mlx_hunyuan.blocks", "mlx_hunyuan.hunyuan",
                                    "mlx_hunyuan.hunyuan_v1_dense", "mlx_hunyuan.hunyuan_v1_moe",
                                    "mlx_hunyuan.rope", "mlx_llama4.llama4"])
def test_all_names_exist(module):
    loaded = importlib.import_module(module)
    assert all(hasattr(loaded, name) for name in loaded.__all__)


def test_public_api_plugins_need():
    for name in ("default_periods", "validate_rope_scaling", "PositiveInt", "PositiveFloat",
                 "NonNegativeInt", "NonNegativeFloat", "Range", "Divides", "check_value",
                 "Sanitizes", "Shards", "MakesCache", "QuantizePredicate", "internal_field"):
        assert name in mlx_zoo.__all__ and hasattr(mlx_zoo, name)
    error = mlx_zoo.ConfigError("c.json", "expected a value >= 1, got 0", key="hidden_size")
    nested = error.with_key_prefix("text_config")
    assert (nested.path, nested.key, nested.message) == (
        Path("c.json"), "text_config.hidden_size", "expected a value >= 1, got 0")
    assert str(nested) == "c.json, key 'text_config.hidden_size': expected a value >= 1, got 0"
    assert mlx_zoo.ConfigError(None, "bad").with_key_prefix("text_config").key is None

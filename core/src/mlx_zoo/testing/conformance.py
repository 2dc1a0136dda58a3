"""The conformance suite every plugin's tests inherit: :class:`PluginConformance`."""

from __future__ import annotations

import copy
import inspect
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from .helpers import (
    BROKEN,
    PLAIN,
    TOKENIZER_VOCAB,
    TOLERANCE,
    relative_error,
    write_tiny_checkpoint,
)
from .reference import Reference, torch_logits, transformers_model, transformers_reference

# Parity is checked in float32 within 1e-4: on GPUs with TensorFloat-32, MLX's CUDA backend would
# run float32 matmuls with 10-bit mantissas unless told not to (read when MLX starts its device).
os.environ.setdefault("MLX_ENABLE_TF32", "0")

SHARD_TOLERANCE = TOLERANCE
"""Sharded vs unsharded: the same products summed across ranks in another order -- and, on the
Linux CPU, by BLAS calls whose thread counts the adaptive policy may choose differently per
rank (:mod:`mlx_zoo.blas`): float32 noise of 1e-5 relative was seen (SmolLM3, 3 layers). A
wrong split errs by order one."""


@dataclass
class TinyCase:
    """One declared config switch, written as a checkpoint: what the generated tests share."""

    name: str
    config: dict
    path: Path
    ids: Any  # numpy token ids (1, prompt_length)
    expected: Any = field(default=None, repr=False)  # reference logits, computed once

    def weights(self) -> dict:
        """The checkpoint's weights as numpy arrays."""
        import mlx.core as mx
        import numpy as np

        return {k: np.array(v) for k, v in mx.load(str(self.path / "model.safetensors")).items()}


def logits(model: Any, ids: Any, cache: Any = None):
    """Float32 numpy logits of an mlx-zoo model for numpy token ids."""
    import mlx.core as mx
    import numpy as np

    return np.array(model(mx.array(ids), cache).astype(mx.float32))


def decode_steps(total: int, prefill: int = 17, chunk: int = 5) -> list[int]:
    """A prefill, a multi-token piece, then single tokens up to ``total``."""
    return [prefill, chunk] + [1] * (total - prefill - chunk)


def incremental_logits(model: Any, ids: Any, steps: list[int], cache: Any = None):
    """Float32 numpy logits of ``ids`` fed through the model's caches in pieces of ``steps``
    tokens (e.g. :func:`decode_steps`), starting from ``cache`` (default: a new prompt cache)."""
    import numpy as np

    import mlx_zoo

    cache = mlx_zoo.make_prompt_cache(model) if cache is None else cache
    pieces, start = [], 0
    for n in steps:
        pieces.append(logits(model, ids[:, start:start + n], cache))
        start += n
    assert start == ids.shape[1], f"the steps cover {start} of {ids.shape[1]} tokens"
    return np.concatenate(pieces, axis=1)


def _in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` run in a new thread (its exception re-raised here)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


ISOLATION_SCRIPT = textwrap.dedent("""
    import json, sys
    import mlx_zoo
    from mlx_zoo import registry
    model_type, path = sys.argv[1:]
    entries = registry.installed_entries()
    mine = {e.module.partition(":")[0] for e in entries if e.model_type == model_type}
    model, _ = mlx_zoo.load(path)
    others = {e.module.partition(":")[0] for e in entries} - mine
    imported = sorted(m for m in others if any(n == m or n.startswith(m + ".")
                                                for n in sys.modules))
    print(json.dumps({"mine": sorted(mine), "others_imported": imported,
                      "model_module": type(model).__module__}))
""")

SHARD_SCRIPT = textwrap.dedent("""
    import sys
    import mlx.core as mx, numpy as np, mlx_zoo
    group = mx.distributed.init()
    path, vocab, length, split = sys.argv[1], *map(int, sys.argv[2:])
    ids = mx.array(np.random.default_rng(0).integers(0, vocab, (1, length)))
    full = None
    for fuse in (False, True):
        model, _ = mlx_zoo.load(path, dtype=None, dequantize=False, fuse=fuse)
        if full is None:
            full = np.array(model(ids))
        model.shard(group)
        whole = np.array(model(ids))
        cache = mlx_zoo.make_prompt_cache(model)
        cached = np.concatenate([np.array(model(ids[:, :split], cache)),
                                 np.array(model(ids[:, split:], cache))], axis=1)
        err = max(np.abs(whole - full).max(), np.abs(cached - full).max()) / np.abs(full).max()
        print(f"rank={group.rank()} size={group.size()} fuse={fuse} err={err:.3e}")
""")


class PluginConformance:
    """The tests every mlx-zoo plugin passes; a plugin's test module subclasses this once per
    model_type, naming the class ``Test...``::

        class TestLlama(PluginConformance):
            model_type = "llama"
            reference = "LlamaForCausalLM"             # transformers class, or a callable
            base_config = dict(vocab_size=320, hidden_size=64, ...)
            switches = {"untied": dict(tie_word_embeddings=False),
                        "llama3": dict(rope_scaling={"rope_type": "llama3", ...})}

    and gets, generated (one class, so a check added here reaches every plugin):

    * ``test_entry_point_imports_only_this_plugin``: in a fresh process the model_type is found
      through its installed entry point, and loading it imports no other plugin;
    * ``test_loads``; ``test_parity[switch]`` with the reference over the base config and every
      declared switch, on sharpened weights (:func:`~mlx_zoo.testing.sharpen_weights`), loaded
      as stored and with the load defaults; a transformers reference also saves its checkpoint
      (its names, its config dialect), which must load to the same logits;
    * ``test_parity_can_fail[switch]``: negative controls -- RoPE base x10, and no causal mask --
      must move the logits >= 100x the tolerance (the check is able to fail);
    * ``test_incremental_decoding[switch-fused]``: decoding through the model's caches (a
      prefill, a piece, single tokens) equals a full forward, fused and unfused;
      ``test_bad_cache_is_an_error``: ``cache=[]`` or a cache list of the wrong length raise an
      :class:`~mlx_zoo.MlxZooError`;
    * ``test_save_round_trip[switch]``: save -> load gives identical logits, and (transformers
      reference) ``AutoConfig`` reads the saved config.json into a model with the same logits;
    * ``test_quantized_round_trip[4|8]``: quantize -> forward -> save -> reload -> same logits;
    * ``test_copy[deepcopy|pickle]``; ``test_load_in_one_thread_generate_in_another``;
      ``test_prompt_cache_round_trip``; ``test_shard_two_processes`` (when the model has
      ``shard``: ``mlx.launch --backend ring -n 2``); ``test_cli`` (``list``, ``info``,
      ``generate`` with the tiny tokenizer); ``test_bad_config_value_names_the_key``.

    Declare ``base_config`` small (a few seconds for the whole suite): two layers, a hidden
    width that ``quantize_group_size`` divides, at least 4 attention heads and 2 key/value heads
    (the two-process shard), ``vocab_size`` >= :data:`~mlx_zoo.testing.TOKENIZER_VOCAB`. Override
    :meth:`tiny_config` for configs built otherwise. Attributes set to ``False`` switch a
    capability's checks off with a reason: ``shardable = False``.
    """

    model_type: ClassVar[str]
    """The model_type under test (an entry point of the plugin's distribution)."""
    base_config: ClassVar[dict[str, Any]] = {}
    """The tiny config.json (without model_type)."""
    switches: ClassVar[dict[str, dict[str, Any]]] = {}
    """Named config variants: overrides of ``base_config`` (tied/untied, RoPE variants, biases)."""
    reference: ClassVar[str | Reference | None] = None
    """A transformers class name (``"LlamaForCausalLM"``) or a :data:`Reference` callable."""
    prompt_length: ClassVar[int] = 40
    quantize_group_size: ClassVar[int] = 32
    seed: ClassVar[int] = 0
    shardable: ClassVar[bool] = True

    def tiny_config(self, **overrides: Any) -> dict[str, Any]:
        """The base config with a switch's ``overrides`` (override for other compositions)."""
        return {**self.base_config, **overrides}

    @classmethod
    def cases(cls) -> dict[str, dict[str, Any]]:
        """``"base"`` and the declared switches."""
        return {"base": {}, **cls.switches}

    def pytest_generate_tests(self, metafunc: Any) -> None:
        if "switch" in metafunc.fixturenames:
            metafunc.parametrize("switch", list(self.cases()), scope="class")

    # -- shared state ----------------------------------------------------------------------------

    _memo: ClassVar[dict[tuple[type, str], TinyCase]] = {}

    def case(self, name: str, factory: Any) -> TinyCase:
        """The checkpoint of switch ``name``, written once per class."""
        key = (type(self), name)
        if key not in PluginConformance._memo:
            import numpy as np

            config = self.tiny_config(**self.cases()[name])
            path = factory.mktemp(f"{self.model_type}-{name}")
            write_tiny_checkpoint(path, self.model_type, config, self.seed)
            ids = np.random.default_rng(self.seed).integers(
                0, config["vocab_size"], (1, self.prompt_length))
            PluginConformance._memo[key] = TinyCase(name, config, path, ids)
        return PluginConformance._memo[key]

    @pytest.fixture(scope="class")
    def tiny(self, switch: str, tmp_path_factory: Any) -> TinyCase:
        return self.case(switch, tmp_path_factory)

    @pytest.fixture(scope="class")
    def base(self, tmp_path_factory: Any) -> TinyCase:
        return self.case("base", tmp_path_factory)

    def reference_callable(self) -> Reference | None:
        """The declared reference as a callable. A function assigned in the class body
        (``reference = my_logits``) is taken as written, not bound as a method."""
        declared = inspect.getattr_static(self, "reference", None)
        if isinstance(declared, (staticmethod, classmethod)):
            declared = declared.__get__(None, type(self))
        if isinstance(declared, str):
            return transformers_reference(declared)
        return declared

    def expected(self, case: TinyCase):
        """The reference's logits for ``case`` (skips the test without a reference)."""
        reference = self.reference_callable()
        if reference is None:
            pytest.skip(f"{type(self).__name__} declares no reference")
        if case.expected is None:
            config = {**case.config, "model_type": self.model_type}
            case.expected = reference(config, case.weights(), case.ids)
        return case.expected

    def load(self, path: Path, **options: Any):
        import mlx_zoo

        return mlx_zoo.load(path, **{**PLAIN, **options})

    # -- discovery ---------------------------------------------------------------------------------

    def test_entry_point_imports_only_this_plugin(self, base: TinyCase) -> None:
        out = subprocess.run([sys.executable, "-c", ISOLATION_SCRIPT, self.model_type,
                              str(base.path)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        found = json.loads(out.stdout.strip().splitlines()[-1])
        assert found["mine"], (f"no installed entry point for {self.model_type!r} in group "
                               "'mlx_zoo.models': pip install -e the plugin")
        assert any(found["model_module"].split(".")[0] == m.split(".")[0] for m in found["mine"])
        assert found["others_imported"] == [], "loading imported other plugins"

    def test_loads(self, tiny: TinyCase) -> None:
        import numpy as np

        import mlx_zoo

        model, config = self.load(tiny.path)
        assert isinstance(model, mlx_zoo.Model) and config.model_type == self.model_type
        out = logits(model, tiny.ids)
        assert out.shape == (*tiny.ids.shape, tiny.config["vocab_size"])
        assert np.isfinite(out).all()

    # -- parity ----------------------------------------------------------------------------------

    def test_parity(self, tiny: TinyCase, tmp_path: Path) -> None:
        expected = self.expected(tiny)
        for options in ({}, {"dtype": "auto", "dequantize": "auto", "fuse": True}):
            model, _ = self.load(tiny.path, **options)
            err = relative_error(logits(model, tiny.ids), expected)
            assert err < TOLERANCE, f"{tiny.name} {options}: relative error {err:.2e}"
        if isinstance(self.reference, str):  # transformers' own checkpoint loads the same
            hf = transformers_model(self.reference, {**tiny.config, "model_type": self.model_type},
                                    tiny.weights())
            hf.save_pretrained(tmp_path / "hf")
            model, _ = self.load(tmp_path / "hf")
            err = relative_error(logits(model, tiny.ids), expected)
            assert err < TOLERANCE, f"{tiny.name}, saved by transformers: {err:.2e}"

    def test_parity_can_fail(self, tiny: TinyCase, tmp_path: Path) -> None:
        """Negative controls: a wrong RoPE base and a missing causal mask are caught by far."""
        import mlx_zoo

        reference = self.reference_callable()
        model, config = self.load(tiny.path)
        expected = self.expected(tiny) if reference else logits(model, tiny.ids)
        theta = getattr(config, "rope_theta", None)
        if theta is not None:
            broken = tmp_path / "rope"
            shutil.copytree(tiny.path, broken)
            raw = {**tiny.config, "model_type": self.model_type, "rope_theta": 10 * theta}
            raw.pop("rope_parameters", None)
            (broken / "config.json").write_text(json.dumps(raw))
            wrong, _ = self.load(broken)
            err = relative_error(logits(wrong, tiny.ids), expected)
            assert err > BROKEN, f"RoPE base x10 moved the logits only {err:.2e}"
        cache = mlx_zoo.make_prompt_cache(model)
        for c in cache:
            c.make_mask = lambda n: None
        err = relative_error(logits(model, tiny.ids, cache), expected)
        assert err > BROKEN, f"no causal mask moved the logits only {err:.2e}"

    # -- caches ----------------------------------------------------------------------------------

    @pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
    def test_incremental_decoding(self, tiny: TinyCase, fused: bool) -> None:

        import mlx_zoo

        model, _ = self.load(tiny.path, fuse=fused)
        assert mlx_zoo.fusion.is_fused(model) or not fused
        full = logits(model, tiny.ids)
        err = relative_error(incremental_logits(model, tiny.ids, decode_steps(self.prompt_length)),
                             full)
        assert err < TOLERANCE, f"{tiny.name} fused={fused}: relative error {err:.2e}"

    def test_bad_cache_is_an_error(self, base: TinyCase) -> None:
        import mlx_zoo

        model, _ = self.load(base.path)
        with pytest.raises(mlx_zoo.MlxZooError):
            logits(model, base.ids, [])
        cache = mlx_zoo.make_prompt_cache(model)
        with pytest.raises(mlx_zoo.MlxZooError):
            logits(model, base.ids, cache + cache[:1])

    def test_prompt_cache_round_trip(self, base: TinyCase, tmp_path: Path) -> None:
        import mlx_zoo

        model, _ = self.load(base.path)
        cache = mlx_zoo.make_prompt_cache(model)
        logits(model, base.ids[:, :-1], cache)
        mlx_zoo.save_prompt_cache(tmp_path / "cache.safetensors", cache, model=model)
        loaded = mlx_zoo.load_prompt_cache(tmp_path / "cache.safetensors", model=model)
        err = relative_error(logits(model, base.ids[:, -1:], loaded),
                             logits(model, base.ids[:, -1:], cache))
        assert err == 0, f"the reloaded prompt cache differs: {err:.2e}"

    # -- persistence -----------------------------------------------------------------------------

    def test_save_round_trip(self, tiny: TinyCase, tmp_path: Path) -> None:
        import numpy as np

        import mlx_zoo

        model, config = self.load(tiny.path)
        mlx_zoo.save(model, config, tmp_path / "out")
        again, config2 = self.load(tmp_path / "out")
        np.testing.assert_array_equal(logits(again, tiny.ids), logits(model, tiny.ids))
        assert config2 == config
        if isinstance(self.reference, str):
            from transformers import AutoConfig

            auto = AutoConfig.from_pretrained(tmp_path / "out")
            assert auto.model_type == self.model_type
            hf = transformers_model(self.reference, auto, tiny.weights())
            err = relative_error(logits(model, tiny.ids), torch_logits(hf, tiny.ids))
            assert err < TOLERANCE, f"transformers reads the saved config otherwise: {err:.2e}"

    @pytest.mark.parametrize("bits", [4, 8])
    def test_quantized_round_trip(self, base: TinyCase, tmp_path: Path, bits: int) -> None:
        import mlx.nn as nn
        import numpy as np

        import mlx_zoo

        model, config = self.load(base.path)
        mlx_zoo.quantize(model, config, bits=bits, group_size=self.quantize_group_size)
        in_memory = logits(model, base.ids)
        assert np.isfinite(in_memory).all()
        mlx_zoo.save(model, config, tmp_path / "q")
        saved = json.loads((tmp_path / "q" / "config.json").read_text())
        assert saved["quantization"]["bits"] == bits
        reloaded, _ = self.load(tmp_path / "q")
        assert any(isinstance(m, nn.QuantizedLinear) for _, m in reloaded.named_modules())
        np.testing.assert_array_equal(logits(reloaded, base.ids), in_memory)

    @pytest.mark.parametrize("how", ["deepcopy", "pickle"])
    def test_copy(self, base: TinyCase, how: str) -> None:
        import numpy as np
        from mlx.utils import tree_flatten

        model, _ = self.load(base.path, fuse=True)
        clone = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
        assert type(clone) is type(model)
        np.testing.assert_array_equal(logits(clone, base.ids), logits(model, base.ids))
        mine, theirs = dict(tree_flatten(model.parameters())), dict(tree_flatten(
            clone.parameters()))
        assert mine.keys() == theirs.keys() and all(mine[k] is not theirs[k] for k in mine)

    def test_load_in_one_thread_generate_in_another(self, base: TinyCase) -> None:
        import mlx_zoo

        model, _ = _in_thread(lambda: mlx_zoo.load(base.path))
        tokenizer = mlx_zoo.load_tokenizer(base.path)
        run = lambda: mlx_zoo.generate(model, tokenizer, "def ", max_tokens=6).tokens  # noqa: E731
        assert _in_thread(run) == run()

    # -- distribution ----------------------------------------------------------------------------

    def test_shard_two_processes(self, base: TinyCase) -> None:
        import mlx_zoo

        model, _ = self.load(base.path)
        if not self.shardable or not isinstance(model, mlx_zoo.hookspecs.Shards):
            pytest.skip(f"{self.model_type}: the model has no shard")
        launcher = Path(sys.executable).parent / "mlx.launch"
        if not launcher.exists():
            pytest.skip("mlx.launch is not installed")
        script = base.path.parent / f"{base.path.name}-shard.py"
        script.write_text(SHARD_SCRIPT)
        out = subprocess.run([str(launcher), "-n", "2", "--backend", "ring", "--python",
                              sys.executable, str(script), str(base.path),
                              str(base.config["vocab_size"]), str(self.prompt_length),
                              str(self.prompt_length // 2)],
                             capture_output=True, text=True, timeout=300)
        runs = [dict(item.split("=") for item in line.split())
                for line in out.stdout.splitlines() if line.startswith("rank=")]
        assert len(runs) == 4, out.stdout + out.stderr
        for run in runs:
            assert run["size"] == "2" and float(run["err"]) < SHARD_TOLERANCE, run

    # -- command line and configuration ----------------------------------------------------------

    def test_cli(self, base: TinyCase, capsys: Any) -> None:
        from mlx_zoo.cli import main

        assert base.config["vocab_size"] >= TOKENIZER_VOCAB
        assert main(["list"]) == 0
        rows = [line.split() for line in capsys.readouterr().out.splitlines()]
        assert any(row[:1] == [self.model_type] and row[-1] == "ok" for row in rows), rows
        assert main(["info", str(base.path)]) == 0
        assert self.model_type in capsys.readouterr().out
        assert main(["generate", "--model", str(base.path), "--prompt", "hello",
                     "--max-tokens", "4"]) == 0
        assert "Generation:" in capsys.readouterr().out

    def test_bad_config_value_names_the_key(self, base: TinyCase, tmp_path: Path) -> None:
        import dataclasses

        import mlx_zoo
        from mlx_zoo import registry

        declared = {f.name for f in dataclasses.fields(registry.resolve(self.model_type)
                                                       .config_class)}
        keys = sorted(k for k in base.config if k in declared)
        assert keys, "the tiny config sets none of the config class's fields"
        for key in keys:
            bad = tmp_path / key
            bad.mkdir()
            wrong = "bad" if not isinstance(base.config[key], str) else 1.5  # a wrong type
            raw = {**base.config, "model_type": self.model_type, key: wrong}
            (bad / "config.json").write_text(json.dumps(raw))
            shutil.copy(base.path / "model.safetensors", bad)
            with pytest.raises(mlx_zoo.ConfigError) as error:
                mlx_zoo.load(bad)
            assert key in str(error.value), f"{key}: {error.value}"

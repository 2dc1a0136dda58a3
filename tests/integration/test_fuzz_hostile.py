"""Property-based fuzzing of everything a checkpoint directory or a caller can hand mlx-zoo.

Hypothesis generates hostile inputs of each class -- config.json values for every architecture,
safetensors headers (offsets, dtypes, shapes, metadata), index files, prompt-cache files,
tokenizer id maps and ``mlx-zoo generate`` arguments -- and every example must keep the promises
of docs/reliability.md:

* the process never dies by a signal and never hangs (each example has a deadline);
* a refusal is an :class:`mlx_zoo.MlxZooError` whose message names the file (and, for config
  values, the key) -- never another exception type;
* an input that is accepted gives finite logits;
* nothing on disk changes: the model directory's bytes are the same after the attempt.

The example budget is fixed (``MAX_EXAMPLES`` per property, derandomised) so the suite's share of
CI is bounded and a failure reproduces on every run. Set ``MLX_ZOO_FUZZ_EXAMPLES`` to run more.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
from datetime import timedelta
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import mlx_zoo
from mlx_zoo.demos import demo_dir

MAX_EXAMPLES = int(os.environ.get("MLX_ZOO_FUZZ_EXAMPLES", "25"))
"""Examples per property: with ~10 properties, about a minute of CI on 2 cores."""

DEADLINE = timedelta(seconds=30)
"""Longest an example may take: a hang shows as a failure, not a stuck CI run."""

FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=DEADLINE, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])

DEMOS = ("qwen2", "hunyuan", "llama4")
PROBE = [[3, 17, 42, 7]]  # token ids fed to an accepted model: within every demo's vocabulary

# -- helpers ---------------------------------------------------------------------------------------


def snapshot(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``directory`` (symlinks followed)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def demo_copy(tmp: Path, demo: str) -> Path:
    target = tmp / demo
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(demo_dir(demo), target)
    return target


def check_load(model_dir: Path, must_name: str) -> None:
    """Load ``model_dir``: either a refusal naming ``must_name`` (a config error: its key), or a
    model whose logits are finite. The directory must not change either way."""
    before = snapshot(model_dir)
    try:
        model, _ = mlx_zoo.load(model_dir)
    except mlx_zoo.MlxZooError as e:
        event(f"refused: {type(e).__name__}")
        # the file itself, or the model directory with the tensors at fault (weights that do
        # not fit the config's shapes are reported against the checkpoint as a whole)
        assert must_name in str(e) or str(model_dir) in str(e), f"names no file: {e}"
        if isinstance(e, mlx_zoo.ConfigError):
            assert e.key, f"a config error must name its key: {e}"
    else:
        event("accepted")
        logits = model(mx.array(PROBE))
        mx.eval(logits)
        assert bool(mx.all(mx.isfinite(logits)).item()), "accepted, but the logits are not finite"
    assert snapshot(model_dir) == before, "loading changed the model directory"


hostile_numbers = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 7, 2**31, 2**63, 10**30, -(2**40)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, 0.5, -2.5]),
)
hostile_values = st.one_of(
    hostile_numbers, st.none(), st.booleans(), st.text(max_size=8),
    st.sampled_from(["2", "1e6", "nan", ""]),
    st.lists(hostile_numbers, max_size=4),
    st.dictionaries(st.text(max_size=5), hostile_numbers, max_size=3),
)


def set_path(config: dict, path: tuple[str, ...], value: Any) -> None:
    node = config
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


# -- config.json -----------------------------------------------------------------------------------

ROPE_KEYS = ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor",
             "beta_fast", "beta_slow", "short_factor", "long_factor", "alpha", "mscale",
             "attention_factor")
ROPE_TYPES = ("linear", "dynamic", "yarn", "longrope", "llama3", "default", "nonsense")


def config_keys(demo: str) -> list[tuple[str, ...]]:
    config = json.loads((demo_dir(demo) / "config.json").read_text())
    keys = [(k,) for k in config if k not in ("model_type", "architectures")]
    keys += [("rope_scaling", k) for k in ROPE_KEYS] + [("quantization", "group_size"),
                                                       ("quantization", "bits")]
    return keys


@pytest.mark.parametrize("demo", DEMOS)
@FUZZ
@given(data=st.data())
def test_config_values(tmp_path, demo, data):
    model_dir = demo_copy(tmp_path, demo)
    config = json.loads((model_dir / "config.json").read_text())
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        key = data.draw(st.sampled_from(config_keys(demo)), label="key")
        value = data.draw(hostile_values, label="value")
        set_path(config, key, value)
        if key[0] == "rope_scaling" and isinstance(config["rope_scaling"], dict):
            config["rope_scaling"].setdefault(
                "rope_type", data.draw(st.sampled_from(ROPE_TYPES), label="rope_type"))
    (model_dir / "config.json").write_text(json.dumps(config))  # NaN/Infinity as JSON allows
    check_load(model_dir, "config.json")


# -- safetensors headers ---------------------------------------------------------------------------

DTYPES = ["F32", "F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "U32", "F8_E4M3", "XX"]


def read_file(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_file(path: Path, header: Any, data: bytes, header_len: int | None = None) -> None:
    text = json.dumps(header).encode()
    length = len(text) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", length) + text + data)


@FUZZ
@given(data=st.data())
def test_safetensors_headers(tmp_path, data):
    model_dir = demo_copy(tmp_path, "qwen2")
    weights = model_dir / "model.safetensors"
    header, payload = read_file(weights)
    names = sorted(k for k in header if k != "__metadata__")
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        name = data.draw(st.sampled_from(names), label="tensor")
        entry = header[name]
        if not isinstance(entry, dict):  # an earlier mutation replaced the whole entry
            entry = header[name] = {}
        what = data.draw(st.sampled_from(["offsets", "dtype", "shape", "entry", "metadata",
                                          "alias", "truncate", "header_len"]), label="what")
        if what == "offsets":
            entry["data_offsets"] = data.draw(st.lists(hostile_numbers, min_size=0, max_size=3))
        elif what == "dtype":
            entry["dtype"] = data.draw(st.sampled_from(DTYPES))
        elif what == "shape":
            entry["shape"] = data.draw(st.lists(st.integers(-2, 2**20), max_size=4))
        elif what == "entry":
            header[name] = data.draw(hostile_values)
        elif what == "metadata":
            header["__metadata__"] = data.draw(hostile_values)
        elif what == "alias":  # two tensors sharing bytes
            other = header[data.draw(st.sampled_from(names))]
            if isinstance(other, dict) and isinstance(entry, dict):
                entry["data_offsets"] = list(other.get("data_offsets", [0, 0]))
        elif what == "truncate":
            payload = payload[:data.draw(st.integers(0, len(payload)))]
    header_len = data.draw(st.one_of(st.none(), st.integers(0, 2**64 - 1)), label="header_len")
    write_file(weights, header, payload, header_len)
    check_load(model_dir, "model.safetensors")


# -- index files -----------------------------------------------------------------------------------

shard_names = st.one_of(
    st.sampled_from(["../model.safetensors", "/etc/passwd", "sub/../../x.safetensors",
                     "..\\model.safetensors", "", ".", "model.safetensors\x00.txt",
                     "missing.safetensors", "model.safetensors", "./model.safetensors",
                     "config.json"]),
    st.text(max_size=12), hostile_numbers, st.none())


@FUZZ
@given(data=st.data())
def test_index_files(tmp_path, data):
    model_dir = demo_copy(tmp_path, "qwen2")
    header, _ = read_file(model_dir / "model.safetensors")
    weight_map = {k: "model.safetensors" for k in header if k != "__metadata__"}
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):
        tensor = data.draw(st.one_of(st.sampled_from(sorted(weight_map)), st.text(max_size=8)))
        weight_map[tensor] = data.draw(shard_names, label="shard")
    index: Any = {"metadata": {}, "weight_map": weight_map}
    if data.draw(st.booleans(), label="break the index itself"):
        index = data.draw(st.one_of(hostile_values, st.just({"weight_map": []})))
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    check_load(model_dir, "model.safetensors")


# -- prompt-cache files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen2_demo():
    model, _ = mlx_zoo.load("demo:qwen2")
    return model


@FUZZ
@given(data=st.data())
def test_prompt_cache_files(tmp_path, qwen2_demo, data):
    model = qwen2_demo
    cache = mlx_zoo.make_prompt_cache(model)
    model(mx.array(PROBE), cache=cache)
    path = tmp_path / "cache.safetensors"
    mlx_zoo.save_prompt_cache(path, cache)
    arrays, metadata = mx.load(str(path), return_metadata=True)
    what = data.draw(st.sampled_from(["layers", "format", "user", "drop", "array", "extra"]))
    if what == "layers":
        layout = json.loads(metadata["layers"])
        if data.draw(st.booleans()) and layout:
            i = data.draw(st.integers(0, len(layout) - 1))
            layout[i] = data.draw(st.one_of(hostile_values, st.fixed_dictionaries(
                {"class": st.sampled_from(["mlx_zoo.KVCache", "mlx_zoo.RotatingKVCache", "x"]),
                 "meta": st.lists(st.one_of(st.text(max_size=4), st.sampled_from(
                     ["-5", "0", "99999999999", "4"])), max_size=3)})))
        else:
            layout = data.draw(hostile_values)
        metadata["layers"] = json.dumps(layout)
    elif what == "format":
        metadata["format"] = data.draw(st.text(max_size=10))
    elif what == "user":
        metadata["user"] = data.draw(st.text(max_size=10))
    elif what == "drop":
        metadata.pop(data.draw(st.sampled_from(sorted(metadata))))
    elif what == "array" and arrays:
        key = data.draw(st.sampled_from(sorted(arrays)))
        arrays[key] = mx.zeros(tuple(data.draw(st.lists(st.integers(0, 5), min_size=1,
                                                        max_size=5))))
    elif what == "extra":
        arrays[data.draw(st.sampled_from(["99.0", "x", "-1.0", "0.5"]))] = mx.zeros((1,))
    mx.save_safetensors(str(path), arrays, metadata=metadata)
    before = snapshot(tmp_path)
    try:
        loaded = mlx_zoo.load_prompt_cache(path)
    except mlx_zoo.MlxZooError as e:
        event(f"refused: {type(e).__name__}")
        assert str(path) in str(e) or path.name in str(e), f"the error does not name the file: {e}"
    else:
        try:
            result = mlx_zoo.generate(model, _demo_tokenizer(), PROBE[0], max_tokens=2,
                                      prompt_cache=loaded)
        except mlx_zoo.MlxZooError:
            event("refused at use")  # a cache that does not fit the model
        else:
            event("generated")
            assert all(0 <= t < model.args.vocab_size for t in result.tokens)
    assert snapshot(tmp_path) == before


_TOKENIZERS: dict[str, Any] = {}


def _demo_tokenizer(demo: str = "qwen2"):
    if demo not in _TOKENIZERS:
        _TOKENIZERS[demo] = mlx_zoo.load_tokenizer(f"demo:{demo}")
    return _TOKENIZERS[demo]


# -- tokenizer id maps -----------------------------------------------------------------------------


@settings(FUZZ, max_examples=max(5, MAX_EXAMPLES // 3))
@given(data=st.data())
def test_tokenizer_id_maps(tmp_path, data):
    model_dir = demo_copy(tmp_path, "qwen2")
    path = model_dir / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    vocab = tokenizer["model"]["vocab"]
    ids = st.one_of(st.integers(-5, 2048), st.sampled_from([10**6, 2**31 - 1, 1023, 1024]))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        if data.draw(st.booleans(), label="vocab entry (else added token)"):
            token = data.draw(st.sampled_from(sorted(vocab)))
            vocab[token] = data.draw(ids, label="id")
        else:
            tokenizer["added_tokens"].append({
                "id": data.draw(ids, label="added id"), "content": f"<extra_{len(vocab)}>",
                "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
                "special": data.draw(st.booleans())})
    path.write_text(json.dumps(tokenizer))
    before = snapshot(model_dir)
    try:
        loaded = mlx_zoo.load_tokenizer(model_dir)
    except mlx_zoo.MlxZooError as e:
        event(f"refused: {type(e).__name__}")
        assert "tokenizer" in str(e), f"the error does not name the tokenizer file: {e}"
    else:
        model, _ = mlx_zoo.load(model_dir)
        text = data.draw(st.text(max_size=20), label="prompt")
        try:
            result = mlx_zoo.generate(model, loaded, text or "x", max_tokens=3)
        except mlx_zoo.MlxZooError as e:
            event(f"refused at use: {type(e).__name__}")
        else:
            event("generated")
            assert isinstance(result.text, str)
    assert snapshot(model_dir) == before


# -- CLI arguments ---------------------------------------------------------------------------------

FLAG_VALUES = {
    "--max-tokens": st.sampled_from(["0", "-1", "3", "x", "1e9"]),
    "--temp": st.sampled_from(["-1", "0", "0.7", "nan", "inf", "1e308"]),
    "--top-p": st.sampled_from(["0", "1.5", "0.9", "nan", "-0.1"]),
    "--top-k": st.sampled_from(["-3", "0", "5", "100000000"]),
    "--min-p": st.sampled_from(["-0.5", "0.1", "2", "nan"]),
    "--seed": st.sampled_from(["-1", "0", str(2**64), str(2**63), "abc"]),
    "--kv-bits": st.sampled_from(["1", "4", "8", "16", "0"]),
    "--kv-group-size": st.sampled_from(["0", "7", "32", "64", "128", "-64"]),
    "--repetition-penalty": st.sampled_from(["0", "-1", "1.2", "nan"]),
    "--prompt": st.one_of(st.text(max_size=12), st.just("\udcff")),
    "--model": st.sampled_from(["demo:qwen2", "demo:nope", "/nonexistent", "a/b/c", ""]),
    "--prefill-step-size": st.sampled_from(["0", "-2", "1", "3"]),
}


@settings(FUZZ, max_examples=max(5, MAX_EXAMPLES // 2))
@given(data=st.data())
def test_cli_generate_arguments(data, capsys):
    from mlx_zoo import cli

    flags = data.draw(st.lists(st.sampled_from(sorted(FLAG_VALUES)), max_size=4, unique=True))
    argv = ["generate", "--max-tokens", "3"]
    for flag in flags:
        argv += [flag, data.draw(FLAG_VALUES[flag], label=flag)]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own refusal of a malformed flag value
        code = e.code
    out, err = capsys.readouterr()
    event(f"exit {code}")
    assert code in (0, 2), f"exit code {code}"
    if code == 2:
        assert "error" in err, err


def test_budget_is_bounded():
    """The example budget is a constant of this file (CI's share stays bounded)."""
    assert FUZZ.max_examples == MAX_EXAMPLES
    assert not math.isinf(FUZZ.deadline.total_seconds())

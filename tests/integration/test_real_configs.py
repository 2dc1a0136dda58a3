"""Real, published config.json files -- the boundary users hit first -- for every model_type the
project's plugins register: each is written to a checkpoint directory, read through the path
:func:`mlx_zoo.load` takes (``read_config`` -> ``registry.resolve`` -> ``config_class.from_dict``),
and its model is built without its weights (MLX arrays are lazy and nothing is evaluated: even
Llama 3.1 405B and Llama 4 Maverick build holding a few KiB). What the config derives -- head width,
key/value heads, the RoPE variant and its parameters, the sliding window, the tied head, Llama 4's
per-layer plan -- is checked against the values the files state and, where transformers is
installed, against what transformers' own config classes derive from the same file (and from
the file as transformers saves it back, ``rope_parameters`` and all).

The files live in ``tests/integration/data/real_configs``; :data:`CONFIGS` names the source of
each. "verbatim" means the file as found (the Hub's config.json, or a user's re-saved copy of
it, which is what users load too); where a file had to be put together, the note says how.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from mlx_zoo import ChunkedKVCache, RotatingKVCache, registry
from mlx_zoo.config import CONFIG_FILE, read_config
from mlx_zoo.rope import BUILTIN_VARIANTS, HOOK

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "real_configs"
ENTRY_POINT_GROUP = "mlx_zoo.models"
MEMORY_BUDGET = 16 * 2**20
"""Bytes a model built from a config may hold before any weight is read: the lazy parameters
hold none, so this is slack for the few small arrays MLX does materialise."""

NTK_ALPHA = "ntk_alpha"  # HunYuan's "dynamic" scaling with a fixed alpha (mlx_hunyuan.rope)
DYNAMIC = "dynamic"
PLAIN = ("default", NTK_ALPHA)  # variants with no factor to compare (ntk_alpha reads alpha)
FREQUENCY_RTOL = 1e-5  # MLX computes the RoPE periods in float32, transformers in float32/64


@dataclass(frozen=True)
class RealConfig:
    """One published config.json: its file, where it comes from, and what it must derive."""

    file: str
    source: str
    expect: dict[str, Any]
    note: str = "verbatim"
    transformers_reads_it: bool = True  # False: a format transformers has no class for
    transformers_may_refuse: str = ""  # why some transformers versions refuse the file

    @property
    def path(self) -> Path:
        return DATA / self.file

    def raw(self) -> dict[str, Any]:
        return json.loads(self.path.read_text(encoding="utf-8"))


AICONF = "ai-dynamo/aiconfigurator@095f58a51c4c aic-core/src/aiconfigurator_core/model_configs/"
AICONF_L4 = "ai-dynamo/aiconfigurator@54cb8c65a28d aic-core/src/aiconfigurator_core/model_configs/"
LLM_PROF = "citsjtu2020/LLM-Prof@8434c8d19c39 sglang/Model_Config.md"
CATALOGUE = ("a catalogue of Hub checkpoints (parameter shapes and config.json of each) in the "
             "public code index, id 61558565367; repository not resolvable there")
LLAMA3 = {"rope": "llama3", "rope_theta": 500000.0}

CONFIGS = [
    # -- qwen2 -------------------------------------------------------------------------------
    RealConfig("qwen2.5-0.5b.json",
               "zyhnosleep/qwen-project@306d4ba1f4b3 models/Qwen2.5-0.5B/config.json "
               "(= https://huggingface.co/Qwen/Qwen2.5-0.5B/blob/main/config.json)",
               {"model_type": "qwen2", "layers": 24, "head_dim": 64, "kv_heads": 2,
                "rope": "default", "rope_theta": 1e6, "window": None, "tied": True}),
    RealConfig("qwen2.5-3b.json", f"{LLM_PROF} (section Qwen2.5-3B)",
               {"model_type": "qwen2", "layers": 36, "head_dim": 128, "kv_heads": 2,
                "rope": "default", "window": None, "tied": True}),
    RealConfig("qwen2.5-7b.json", f"{LLM_PROF} (section Qwen2.5-7B)",
               {"model_type": "qwen2", "layers": 28, "head_dim": 128, "kv_heads": 4,
                "rope": "default", "window": None, "tied": False, "context": 131072}),
    RealConfig("qwen2.5-14b.json", f"{LLM_PROF} (section Qwen2.5-14B)",
               {"model_type": "qwen2", "layers": 48, "head_dim": 128, "kv_heads": 8,
                "rope": "default", "window": None, "tied": False, "rms_norm_eps": 1e-5}),
    RealConfig("qwen2.5-7b-instruct.json",
               f"https://huggingface.co/Qwen/Qwen2.5-7B-Instruct/blob/main/config.json, as "
               f"copied in {CATALOGUE}",
               {"model_type": "qwen2", "layers": 28, "head_dim": 128, "kv_heads": 4,
                "rope": "default", "window": None, "tied": False, "context": 32768}),
    RealConfig("qwen2.5-0.5b-instruct-resaved.json",
               "infinityarpan/qwen-25-api@88ec35fc849f models/Qwen2.5-0.5B-Instruct/config.json",
               {"model_type": "qwen2", "layers": 24, "head_dim": 64, "kv_heads": 2,
                "rope": "default", "window": None, "tied": True},
               note="verbatim: a user's copy of Qwen2.5-0.5B-Instruct re-saved by transformers "
                    "4.49 (_name_or_path, float32, rope_scaling null)"),
    RealConfig("qwen2.5-1.5b-instruct-transformers5.json",
               "ilyassLambardi/Bilingual-Voice-Ai-Application-@82a39dd22509 "
               "models/Qwen2.5-1.5B-Instruct/config.json",
               {"model_type": "qwen2", "layers": 28, "head_dim": 128, "kv_heads": 2,
                "rope": "default", "rope_theta": 1e6, "window": None, "tied": True},
               note="verbatim: Qwen2.5-1.5B-Instruct re-saved by transformers 5.1 "
                    "(rope_parameters, layer_types, dtype, sliding_window null)"),
    # -- llama -------------------------------------------------------------------------------
    RealConfig("llama-2-7b-hf.json",
               "lucienhuangfu/eLLM@7b2e865f83a3 models/Llama-2-7b-hf/config.json "
               "(= https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json)",
               {"model_type": "llama", "layers": 32, "head_dim": 128, "kv_heads": 32,
                "rope": "default", "rope_theta": 10000.0, "window": None, "tied": False},
               note="the copy cut num_hidden_layers to 3; restored to the Hub's 32 (every other "
                    "copy in the index, e.g. ids 1861906191 and 37813372276, agrees)"),
    RealConfig("meta-llama-3-8b-instruct.json",
               "kevinstephano/thunder_model_blocks@HEAD "
               "thunder_model_blocks/llama/llama_3_8B_Instruct_config.py (its JSON string)",
               {"model_type": "llama", "layers": 32, "head_dim": 128, "kv_heads": 8,
                "rope": "default", "rope_theta": 500000.0, "window": None, "tied": False},
               note="transformers' JSON of the Hub file: the Hub's keys plus _name_or_path "
                    "(which the string repeats; one kept)"),
    RealConfig("meta-llama-3.1-8b.json", f"{AICONF}meta-llama--Meta-Llama-3.1-8B_config.json",
               {"model_type": "llama", "layers": 32, "head_dim": 128, "kv_heads": 8,
                **LLAMA3, "window": None, "tied": False, "context": 131072}),
    RealConfig("llama-3.1-8b-instruct.json",
               f"https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/blob/main/config.json, "
               f"as copied in {CATALOGUE}",
               {"model_type": "llama", "layers": 32, "head_dim": 128, "kv_heads": 8,
                **LLAMA3, "window": None, "tied": False}),
    RealConfig("llama-3.1-70b-instruct-fp8.json",
               f"{AICONF}nvidia--Llama-3.1-70B-Instruct-FP8_config.json",
               {"model_type": "llama", "layers": 80, "head_dim": 128, "kv_heads": 8,
                **LLAMA3, "window": None, "tied": False},
               note="verbatim: NVIDIA's ModelOpt FP8 export (local _name_or_path)"),
    RealConfig("meta-llama-3.1-405b.json",
               f"{AICONF}meta-llama--Meta-Llama-3.1-405B_config.json",
               {"model_type": "llama", "layers": 126, "head_dim": 128, "kv_heads": 8,
                **LLAMA3, "window": None, "tied": False}),
    RealConfig("llama-3.2-3b.json", f"{LLM_PROF} (section Llama-3.2-3B)",
               {"model_type": "llama", "layers": 28, "head_dim": 128, "kv_heads": 8,
                **LLAMA3, "rope_factor": 32.0, "window": None, "tied": True}),
    RealConfig("llama-3.2-1b-instruct-resaved.json",
               "DannyMeb/iShrink-LLM-Compression-Framework@b2cf257f89d1 "
               "models/Llama-3.2-1B-Instruct/config.json",
               {"model_type": "llama", "layers": 16, "head_dim": 64, "kv_heads": 8,
                **LLAMA3, "rope_factor": 32.0, "window": None, "tied": True},
               note="verbatim: a user's copy re-saved by transformers 4.47 (float16)"),
    # -- mistral -----------------------------------------------------------------------------
    RealConfig("mistral-7b-v0.1.json",
               "https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json, as "
               "copied verbatim in the public code index (ids 68824890106, 20946506369)",
               {"model_type": "mistral", "layers": 32, "head_dim": 128, "kv_heads": 8,
                "rope": "default", "rope_theta": 10000.0, "window": 4096, "tied": False}),
    RealConfig("mistral-7b-instruct-v0.3.json",
               "https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.3/blob/main/config.json,"
               f" as copied in {CATALOGUE} (and id 3953518908)",
               {"model_type": "mistral", "layers": 32, "head_dim": 128, "kv_heads": 8,
                "rope": "default", "rope_theta": 1e6, "window": None, "tied": False}),
    RealConfig("mistral-nemo-base-2407.json",
               "kevinstephano/thunder_model_blocks@HEAD thunder_model_blocks/mistral/"
               "mistral_config.py (its JSON string)",
               {"model_type": "mistral", "layers": 40, "head_dim": 128, "kv_heads": 8,
                "rope": "default", "window": None, "tied": False},
               note="transformers' JSON of the Hub file (adds _name_or_path); head_dim 128 is "
                    "not hidden_size / heads = 160"),
    # -- hunyuan_v1_dense, hunyuan_v1_moe, hunyuan -------------------------------------------
    RealConfig("hy-mt2-7b.json",
               "https://huggingface.co/tencent/Hy-MT2-7B/resolve/main/config.json, as fetched "
               "with curl in a public agent transcript in the code index (id 54881451550)",
               {"model_type": "hunyuan_v1_dense", "layers": 32, "head_dim": 128, "kv_heads": 8,
                "rope": NTK_ALPHA, "rope_theta": 10000.0, "window": None, "tied": True}),
    RealConfig("hunyuan-a13b-instruct.json",
               "Tencent-Hunyuan/Hunyuan-A13B@2798f3c8b6a6 models/config.json",
               {"model_type": "hunyuan", "layers": 32, "head_dim": 128, "kv_heads": 8,
                "rope": NTK_ALPHA, "window": None, "tied": True, "experts": 64, "top_k": 8},
               note="verbatim: Tencent's own format (model_type hunyuan), as first published",
               transformers_reads_it=False),
    RealConfig("hunyuan-a13b-instruct-v1-moe.json",
               "Tencent-Hunyuan/Hunyuan-A13B@2798f3c8b6a6 models/config.json",
               {"model_type": "hunyuan_v1_moe", "layers": 32, "head_dim": 128, "kv_heads": 8,
                "rope": NTK_ALPHA, "window": None, "tied": True, "experts": 64, "top_k": 8},
               note="derived: the same file with model_type hunyuan_v1_moe, the name the "
                    "checkpoint has in transformers (no verbatim hunyuan_v1_moe file found)"),
    # -- llama4, llama4_text -----------------------------------------------------------------
    RealConfig("llama-4-scout-17b-16e.json",
               "https://huggingface.co/meta-llama/Llama-4-Scout-17B-16E/blob/main/config.json, "
               "as quoted in AMD-AGI/Primus pull request #165",
               {"model_type": "llama4", "layers": 48, "head_dim": 128, "kv_heads": 8,
                **LLAMA3, "rope_factor": 16.0, "chunk": 8192, "tied": False, "experts": 16},
               note="assembled: text_config as quoted up to router_jitter_noise, its last four "
                    "keys and vision_config from the aiconfigurator copies (same values)"),
    RealConfig("llama-4-scout-17b-16e-instruct.json",
               f"{AICONF_L4}meta-llama--Llama-4-Scout-17B-16E-Instruct_config.json",
               {"model_type": "llama4", "layers": 48, "head_dim": 128, "kv_heads": 8,
                **LLAMA3, "rope_factor": 16.0, "chunk": 8192, "tied": False, "experts": 16},
               note="verbatim copy, trimmed by its repository (no token ids) and with an "
                    "image_processor_config section added"),
    RealConfig("llama-4-maverick-17b-128e-instruct.json",
               "NVIDIA/TensorRT-LLM@0074a2241768 tests/unittest/_torch/modeling/"
               "test_modeling_llama_min_latency.py (LLAMA_4_MAVERICK_TWO_LAYER_CONFIG)",
               {"model_type": "llama4", "layers": 48, "head_dim": 128, "kv_heads": 8,
                "rope": "default", "chunk": 8192, "tied": False, "experts": 128},
               note="the test's copy with its three marked edits undone (48 layers, 34 vision "
                    "layers, no added no_rope_layer_interval), as in the aiconfigurator copy"),
    RealConfig("llama-4-scout-text-finetune.json",
               "vllm-project/vllm issue #16798 (a user's text-only Scout fine-tune)",
               {"model_type": "llama4_text", "layers": 48, "head_dim": 128, "kv_heads": 8,
                **LLAMA3, "rope_factor": 16.0, "chunk": 8192, "tied": False, "experts": 16},
               note="assembled: the issue's file up to no_rope_layers and from "
                    "tie_word_embeddings on; the keys between are Scout's",
               transformers_may_refuse="written by transformers 4.51 with "
               "attn_temperature_tuning 4, which transformers >= 5 types as a strict bool"),
]
IDS = [c.file.removesuffix(".json") for c in CONFIGS]


# -- reading and building, as mlx_zoo.load does ------------------------------------------------


def read(directory: Path):
    """``(architecture, config)`` for ``directory/config.json``, by load's own steps."""
    raw = read_config(directory)
    config_path = directory / CONFIG_FILE
    arch = registry.resolve(raw["model_type"], path=config_path)
    return arch, arch.config_class.from_dict(raw, config_path)


def checkpoint_dir(tmp_path: Path, config: dict[str, Any]) -> Path:
    directory = tmp_path / "checkpoint"
    directory.mkdir(parents=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory


def rope_key(rope: Any) -> str:
    """The registry key of a built RoPE module (``llama3``, ``ntk_alpha``, ``default`` ...):
    the first key naming its class among the built-in variants and those every plugin
    registers (an alias such as ``su`` never wins over ``longrope``)."""
    known: dict[type, str] = {}
    for key, cls in {**BUILTIN_VARIANTS, **registry.all_contributions(HOOK)}.items():
        known.setdefault(cls, key)
    return known[type(rope)]


def feed_forward_shapes(layers: list) -> list[tuple[str, tuple[int, ...]]]:
    """Every distinct ``(module path within a layer, gate_proj weight shape)`` of the layers'
    feed-forward blocks: ``(width, hidden)`` for a dense SwiGLU, ``(experts, width, hidden)``
    for stacked experts. Shapes of lazy arrays: nothing is evaluated."""
    found = set()
    for layer in layers:
        for path, module in layer.named_modules():
            if path.endswith("gate_proj"):
                found.add((path, tuple(module.weight.shape)))
    return sorted(found)


def summary(args: Any, model: Any) -> dict[str, Any]:
    """What a config derives, read off the built model (and the config where the model does not
    show it): the fields :data:`CONFIGS` and transformers are compared on."""
    layers = model.layers
    attention = layers[0].self_attn
    ropes = [layer.self_attn.rope for layer in layers if "rope" in layer.self_attn]
    rope = ropes[0]
    kind = rope_key(rope)
    caches = model.make_cache()
    first = caches[0]
    result = {
        "model_type": args.model_type,
        "layers": len(layers),
        "head_dim": args.head_dim,
        "kv_heads": args.num_key_value_heads,
        "heads": args.num_attention_heads,
        "hidden": args.hidden_size,
        "vocab": args.vocab_size,
        "context": args.max_position_embeddings,
        "rms_norm_eps": args.rms_norm_eps,
        "rope": kind,
        "rope_theta": rope.base,
        "rope_factor": (args.rope_scaling or {}).get("factor") if kind not in PLAIN else None,
        "tied": "lm_head" not in model,
        "window": first.max_size if isinstance(first, RotatingKVCache) else None,
        "q_shape": tuple(attention.q_proj.weight.shape),
        "k_shape": tuple(attention.k_proj.weight.shape),
        "ffn": feed_forward_shapes(layers),
    }
    if hasattr(args, "is_moe"):  # Llama 4: the per-layer plan
        result.update(
            chunk=next((c.chunk_size for c in caches if isinstance(c, ChunkedKVCache)), None),
            experts=args.num_local_experts, top_k=args.num_experts_per_tok,
            uses_rope=[args.uses_rope(i) for i in range(len(layers))],
            moe=[args.is_moe(i) for i in range(len(layers))],
            chunked=[args.is_chunked(i) for i in range(len(layers))],
            qk_norm=args.use_qk_norm, temperature=bool(args.attn_temperature_tuning))
    elif hasattr(args, "mlp_plan"):  # HunYuan: the routing of each layer
        plans = [args.mlp_plan(i) for i in range(len(layers))]
        moe = [p for p in plans if not isinstance(p, int)]
        if moe:
            result.update(experts=moe[0].num_experts, top_k=moe[0].top_k,
                          top_ks=[p.top_k for p in moe])
    return result


def build(tmp_path: Path, config: dict[str, Any]) -> tuple[Any, Any, int]:
    """``(config object, model, bytes it holds)``: built as load builds it, no weight read."""
    arch, args = read(checkpoint_dir(tmp_path, config))
    before = mx.get_active_memory()
    model = arch.model_class(args)
    return args, model, mx.get_active_memory() - before


@pytest.fixture(params=CONFIGS, ids=IDS)
def real(request) -> RealConfig:
    return request.param


# -- coverage ------------------------------------------------------------------------------------


ENTRY_POINTS_TABLE = re.compile(
    r'^\[project\.entry-points\."' + re.escape(ENTRY_POINT_GROUP) + r'"\]\n'
    r"(?P<body>(?:[^\[\n].*\n?|\n)*)", re.MULTILINE)
"""The ``mlx_zoo.models`` entry-point table of a pyproject.toml, up to the next table."""


def plugin_model_types() -> set[str]:
    """Every model_type the project's plugins register: the keys of the ``mlx_zoo.models``
    entry-point table of each ``plugins/*/pyproject.toml`` (read as text: no TOML parser
    before Python 3.11)."""
    types = set()
    for pyproject in sorted((REPO / "plugins").glob("*/pyproject.toml")):
        for table in ENTRY_POINTS_TABLE.finditer(pyproject.read_text(encoding="utf-8")):
            types.update(line.split("=", 1)[0].strip().strip('"')
                         for line in table["body"].splitlines() if "=" in line)
    return types


PENDING = frozenset({"gemma2", "gemma3", "gemma3_text", "granite", "mixtral", "olmo2", "phi3",
                     "qwen3", "qwen3_moe", "smollm3"})
"""The model types of the plugins added for issue 24 (2026-12-08), whose published config.json
files are still to be collected here with their sources: each is checked against transformers
on tiny configs of every switch in its plugin's tests meanwhile. Shrinks to empty; nothing is
added to it."""


def test_every_registered_model_type_has_a_real_config():
    registered = plugin_model_types()
    covered = {c.raw()["model_type"] for c in CONFIGS}
    assert {"qwen2", "llama", "mistral", "hunyuan_v1_dense", "llama4"} <= registered
    missing = registered - covered - PENDING
    assert not missing, f"no real config.json for {sorted(missing)}"
    assert not PENDING & covered, f"covered now, drop from PENDING: {sorted(PENDING & covered)}"


def test_every_file_is_listed_with_its_source():
    assert sorted(p.name for p in DATA.glob("*.json")) == sorted(c.file for c in CONFIGS)
    assert all(c.source for c in CONFIGS)


# -- accepted as published -----------------------------------------------------------------------


def test_config_is_accepted_and_builds_without_weights(real, tmp_path):
    config = real.raw()
    args, model, held = build(tmp_path, config)
    assert args.model_type == config["model_type"]
    assert held < MEMORY_BUDGET, f"{held} bytes held before any weight was read"
    got = summary(args, model)
    mismatched = {k: (got[k], v) for k, v in real.expect.items() if got.get(k) != v}
    assert not mismatched, f"(derived, expected): {mismatched}"
    assert got["q_shape"] == (got["heads"] * got["head_dim"], got["hidden"])
    assert got["k_shape"] == (got["kv_heads"] * got["head_dim"], got["hidden"])


def test_config_is_written_back_with_every_key(real, tmp_path):
    """What mlx_zoo.save would write keeps every key of the file (RoPE settings in the
    normalised form), and reads back to the same model."""
    config = real.raw()
    args, model, _ = build(tmp_path / "first", config)
    written = args.to_dict()
    for section, original in [("", config)] + [
            (f"{key}.", config[key]) for key in ("text_config", "vision_config")
            if isinstance(config.get(key), dict)]:
        target = written
        for part in filter(None, section.rstrip(".").split(".")):
            target = target[part]
        lost = sorted(set(original) - set(target) - {"rope_parameters"})
        assert not lost, f"{section}: {lost} not written back"
    if "text_config" in config:  # the wrapper's keys are kept as read: none added
        assert set(written) == set(config)
    again, model_again, _ = build(tmp_path / "second", written)
    assert summary(again, model_again) == summary(args, model)


# -- as transformers reads it --------------------------------------------------------------------


def transformers_config(real: RealConfig, directory: Path) -> Any:
    """transformers' config object for ``directory/config.json`` (its own classes only, no
    remote code); skips where transformers has no class for the format, or refuses a file it
    is known to refuse in some versions (:attr:`RealConfig.transformers_may_refuse`)."""
    if not real.transformers_reads_it:
        pytest.skip(f"transformers has no class for model_type {real.raw()['model_type']!r}")
    transformers = pytest.importorskip("transformers")
    try:
        return transformers.AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except Exception as error:
        if not real.transformers_may_refuse:
            raise
        pytest.skip(f"transformers {transformers.__version__} refuses it "
                    f"({real.transformers_may_refuse}): {type(error).__name__}")


def rope_parameters(text: Any) -> dict[str, Any]:
    """transformers' RoPE settings of a text config in one form: ``rope_parameters``
    (transformers >= 5) or ``rope_theta`` plus ``rope_scaling`` (before)."""
    if getattr(text, "rope_parameters", None):
        return dict(text.rope_parameters)
    return {**(getattr(text, "rope_scaling", None) or {}), "rope_theta": text.rope_theta}


def transformers_view(hf: Any) -> dict[str, Any]:
    """The same fields as :func:`summary`, as transformers' config class ``hf`` derives them
    (the feed-forward shapes as its modeling code builds them)."""
    text = hf.get_text_config()
    params = rope_parameters(text)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == DYNAMIC and params.get("alpha"):  # HunYuan's modeling code: NTK-alpha
        kind = NTK_ALPHA
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = text.num_key_value_heads
    view = {
        "model_type": hf.model_type,
        "layers": text.num_hidden_layers,
        "head_dim": head_dim,
        "kv_heads": kv_heads,
        "heads": heads,
        "hidden": text.hidden_size,
        "vocab": text.vocab_size,
        "context": text.max_position_embeddings,
        "rms_norm_eps": text.rms_norm_eps,
        "rope": kind,
        "rope_theta": params["rope_theta"],
        "rope_factor": params.get("factor") if kind not in PLAIN else None,
        "tied": text.tie_word_embeddings,
        "window": getattr(text, "sliding_window", None),
        "q_shape": (heads * head_dim, text.hidden_size),
        "k_shape": (kv_heads * head_dim, text.hidden_size),
        "ffn": [("mlp.gate_proj", (text.intermediate_size, text.hidden_size))],
    }
    if hf.model_type in ("llama4", "llama4_text"):
        layers = range(text.num_hidden_layers)
        view.update(
            chunk=text.attention_chunk_size,
            experts=text.num_local_experts, top_k=text.num_experts_per_tok,
            uses_rope=[bool(text.no_rope_layers[i]) for i in layers],
            moe=[i in text.moe_layers for i in layers],
            chunked=[text.attention_chunk_size is not None and bool(text.no_rope_layers[i])
                     if getattr(text, "layer_types", None) is None  # transformers < 4.54
                     else text.layer_types[i] == "chunked_attention" for i in layers],
            qk_norm=text.use_qk_norm, temperature=bool(text.attn_temperature_tuning))
        view["window"] = None  # chunked attention, not a sliding window
        hidden, width, experts = text.hidden_size, text.intermediate_size, text.num_local_experts
        ffn = {("feed_forward.experts.gate_proj", (experts, width, hidden)),
               ("feed_forward.shared_expert.gate_proj", (width, hidden))}
        if len(text.moe_layers) < text.num_hidden_layers:  # dense layers in between
            ffn.add(("feed_forward.gate_proj", (text.intermediate_size_mlp, hidden)))
        view["ffn"] = sorted(ffn)
    if hf.model_type == "hunyuan_v1_moe":
        top_k = text.moe_topk
        top_ks = top_k if isinstance(top_k, list) else [top_k] * text.num_hidden_layers
        view.update(experts=text.num_experts, top_k=top_ks[0], top_ks=top_ks)
        hidden, width = text.hidden_size, text.intermediate_size  # experts and shared MLP alike
        view["ffn"] = [("mlp.shared_mlp.gate_proj", (width, hidden)),
                       ("mlp.switch_mlp.gate_proj", (text.num_experts, width, hidden))]
    return view


def assert_same_as_transformers(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    differ = {k: (ours.get(k), v) for k, v in theirs.items()
              if ours.get(k) != v and not (isinstance(v, float)
                                           and ours.get(k) == pytest.approx(v, rel=1e-6))}
    assert not differ, f"(mlx-zoo, transformers): {differ}"


def transformers_frequencies(hf: Any) -> tuple[np.ndarray, float]:
    """``(inv_freq, attention factor)`` of transformers' RoPE for config ``hf``: its
    ``ROPE_INIT_FUNCTIONS`` for the scaled variants, the plain formula otherwise -- with
    HunYuan's fixed alpha stretching the base as its modeling code's
    ``compute_ntk_alpha_rope_parameters`` does."""
    pytest.importorskip("torch")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    text = hf.get_text_config()
    params = rope_parameters(text)
    view = transformers_view(hf)
    kind, dim = view["rope"], view["head_dim"]
    if kind in ROPE_INIT_FUNCTIONS:
        inv_freq, factor = ROPE_INIT_FUNCTIONS[kind](text, "cpu")
        return inv_freq.double().numpy(), float(factor)
    base = params["rope_theta"]
    if kind == NTK_ALPHA:
        base *= params["alpha"] ** (dim / (dim - 2))
    return 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim), 1.0


def test_rope_frequencies_match_transformers(real, tmp_path):
    """The RoPE built from the config rotates at transformers' frequencies (to float32
    precision) and scales as it does: the variant's parameters are read, not just its name."""
    config = real.raw()
    hf = transformers_config(real, checkpoint_dir(tmp_path / "hf", config))
    inv_freq, factor = transformers_frequencies(hf)
    _, model, _ = build(tmp_path, config)
    for layer in model.layers:
        if "rope" in layer.self_attn:
            rope = layer.self_attn.rope
            ours = 1.0 / np.array(rope.periods_for_length(1), dtype=np.float64)
            np.testing.assert_allclose(ours, inv_freq, rtol=FREQUENCY_RTOL)
            assert rope.attention_factor == pytest.approx(factor, rel=FREQUENCY_RTOL)


def test_derived_fields_match_transformers(real, tmp_path):
    config = real.raw()
    theirs = transformers_view(transformers_config(real, checkpoint_dir(tmp_path / "hf", config)))
    args, model, _ = build(tmp_path, config)
    assert_same_as_transformers(summary(args, model), theirs)


def test_config_as_transformers_saves_it_reads_the_same(real, tmp_path):
    """A fine-tune saved by the installed transformers (``rope_parameters``, derived per-layer
    lists, ``dtype``) derives what the published file does."""
    config = real.raw()
    hf = transformers_config(real, checkpoint_dir(tmp_path / "hf", config))
    saved = tmp_path / "saved"
    hf.save_pretrained(saved)
    resaved = json.loads((saved / CONFIG_FILE).read_text(encoding="utf-8"))
    args, model, _ = build(tmp_path / "original", config)
    again, model_again, _ = build(tmp_path / "resaved", resaved)
    assert summary(again, model_again) == summary(args, model)

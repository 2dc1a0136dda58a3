"""mlx-zoo: a plugin-based model zoo for MLX.

The core defines the contracts (:mod:`mlx_zoo.hookspecs`) and does the shared work -- finding the
plugin for a checkpoint's model_type, loading and checking weights, RoPE, KV caches and
generation; each architecture ships as its own plugin distribution.

    >>> import mlx_zoo
    >>> model, config = mlx_zoo.load("Qwen/Qwen2.5-0.5B")   # with mlx-qwen2 installed
"""

# First, before anything imports mlx.core: importing mlx_zoo.blas binds, on Linux with MLX's CPU
# wheel, MLX's cblas_sgemm to OpenBLAS instead of the reference BLAS it ships (elsewhere it does
# nothing; see the module's docstring for what it writes and how to opt out).
from . import blas as blas  # noqa: I001 (must stay first)
from .cache import (ChunkedKVCache, KVCache, QuantizedKVCache, RotatingKVCache, load_prompt_cache,
                    make_prompt_cache, save_prompt_cache)
from .checks import (Divides, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range,
                     check_value)
from .config import (QUANTIZATION_CONFIG_KEY, QUANTIZATION_KEY, BaseModelArgs, RopeScaling,
                     internal_field, normalize_config, read_config)
from .errors import (CacheFileError, ConfigError, GenerationArgumentError, GGUFError, MlxZooError,
                     PluginConflictError, PluginError, PluginLoadError, PluginNotFoundError,
                     QuantizationError, SafetensorsError, SaveError, ShardingError,
                     TokenizerError, WeightMismatchError, WeightsError)
from .fusion import FusedLinear, fuse_projections, project, unfuse_projections
from .generate import (GenerationResponse, GenerationResult, generate, generate_step,
                       reuse_prompt_cache, stream_generate)
from .hookspecs import (SPEC_VERSION, Architecture, MakesCache, Model, PipelineStages,
                        QuantizePredicate, Sanitizes, Shards, hookimpl)
from .hookspecs import ModelBridge
from .layers import (CausalLM, SwiGLU, SwitchGLU, SwitchLinear, attention, mask_for,
                     merge_heads, split_heads)
from .errors import ModelNotFoundError
from .loading import load, resolve_model_dir, save
from .pipeline import PipelineLM
from .registry import list_plugins, register, unregister
from .rope import RoPE, default_periods, get_rope, validate_rope_scaling
from .sample import make_logits_processors, make_sampler
from .sharding import shard_attention, shard_experts, shard_mlp
from .tokenizer import Tokenizer, load_tokenizer
from .weights import quantize_model as quantize

__version__ = "0.1.0"

__all__ = [
    "Architecture", "BaseModelArgs", "CacheFileError", "CausalLM", "ChunkedKVCache", "ConfigError",
    "SwiGLU", "merge_heads", "split_heads",
    "FusedLinear", "fuse_projections", "project", "unfuse_projections",
    "GenerationArgumentError", "GGUFError", "KVCache", "MlxZooError", "Model", "ModelNotFoundError",
    "PluginConflictError", "PluginError", "PluginLoadError", "PluginNotFoundError",
    "QuantizedKVCache", "RoPE", "RopeScaling", "RotatingKVCache", "SPEC_VERSION",
    "SafetensorsError", "SwitchGLU", "SwitchLinear", "TokenizerError", "WeightMismatchError",
    "WeightsError", "attention", "get_rope", "hookimpl", "list_plugins", "load",
    "load_prompt_cache", "make_prompt_cache", "mask_for", "normalize_config", "quantize",
    "read_config", "register", "resolve_model_dir", "save", "save_prompt_cache", "unregister",
    "GenerationResponse", "GenerationResult", "Tokenizer", "generate", "generate_step",
    "load_tokenizer", "make_logits_processors", "make_sampler", "reuse_prompt_cache",
    "stream_generate",
    "ShardingError", "shard_attention", "shard_experts", "shard_mlp",
    "QuantizationError", "SaveError",
    "Divides", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat", "PositiveInt", "Range",
    "check_value", "QUANTIZATION_CONFIG_KEY", "QUANTIZATION_KEY", "internal_field",
    "default_periods", "validate_rope_scaling",
    "MakesCache", "QuantizePredicate", "Sanitizes", "Shards",
    "PipelineLM", "PipelineStages",
    "ModelBridge",
]

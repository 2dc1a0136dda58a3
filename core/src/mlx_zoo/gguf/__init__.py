"""GGUF: llama.cpp's model files, read by mlx-zoo wherever a checkpoint is accepted.

``mlx_zoo.load("model.gguf")`` (or a directory holding one, split files, ``ollama:NAME[:TAG]``)
reads the config and tokenizer from the file's metadata and the weights from its tensors, mapped
by the plugin that owns the file's ``general.architecture``:

* :mod:`~mlx_zoo.gguf.reader` -- the header, validated before any tensor is read;
* :mod:`~mlx_zoo.gguf.tensors` -- tensor data to MLX arrays (Q4_0/Q4_1/Q8_0 kept quantized);
* :mod:`~mlx_zoo.gguf.mapping` -- what a plugin declares: :class:`GGUFArchitecture`;
* :mod:`~mlx_zoo.gguf.checkpoint` -- the file as a checkpoint for :func:`mlx_zoo.load`;
* :mod:`~mlx_zoo.gguf.tokenizer` -- the tokenizer and chat template from the metadata;
* :mod:`~mlx_zoo.gguf.ollama` -- ``ollama:NAME`` through Ollama's local store.

A plugin maps its GGUF architectures with the ``register_gguf_architectures`` hook::

    from mlx_zoo import hookimpl
    from mlx_zoo.gguf import GGUFArchitecture

    @hookimpl
    def register_gguf_architectures():
        return {"qwen2": GGUFArchitecture("qwen2", "qwen2")}
"""

from .mapping import (
    DECODER_TENSORS,
    GEMMA_SHIFTED,
    LLAMA_PERMUTED,
    GGUFArchitecture,
    Metadata,
    decoder_config,
    unpermute_rows,
)
from .reader import GGUFFile, TensorInfo, read_gguf

GGUF_SUFFIX = ".gguf"

__all__ = ["DECODER_TENSORS", "GEMMA_SHIFTED", "GGUF_SUFFIX", "LLAMA_PERMUTED", "GGUFArchitecture",
           "GGUFFile", "Metadata", "TensorInfo", "decoder_config", "read_gguf", "unpermute_rows"]

"""The tokenizer and chat template of a GGUF file, from its ``tokenizer.ggml.*`` metadata.

The vocabulary, merges, special tokens and ``tokenizer.chat_template`` are turned into a
tokenizer by transformers' own GGUF support (``from_pretrained(..., gguf_file=...)``), so the ids
are those of transformers' GGUF tokenizer by construction; the header has already been
validated by :mod:`mlx_zoo.gguf.reader` (a hostile file never reaches transformers). The stop
ids are llama.cpp's: ``eos_token_id`` plus the end-of-turn and end-of-message ids
(``eot_token_id``, ``eom_token_id``) where the file names them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import TokenizerError
from ..hf import quiet_transformers
from .reader import GGUFFile, read_gguf

STOP_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
             "tokenizer.ggml.eom_token_id")
TOKENS_KEY = "tokenizer.ggml.tokens"


def stop_ids(gguf: GGUFFile) -> set[int]:
    """The ids that end a generation, from the metadata (ids outside the vocabulary ignored)."""
    count = len(gguf.metadata.get(TOKENS_KEY) or ())
    ids = {gguf.metadata.get(key) for key in STOP_KEYS}
    return {i for i in ids if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count}


def hf_tokenizer(path: Path) -> Any:
    """transformers' tokenizer for the GGUF file at ``path``. AutoTokenizer first (it picks the
    family's tokenizer class from the file's config); where transformers cannot read that
    architecture's config, the generic fast tokenizer built from the same metadata."""
    where = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    with quiet_transformers() as transformers:
        try:
            return transformers.AutoTokenizer.from_pretrained(**where, trust_remote_code=False)
        except Exception as e:  # transformers raises ValueError/KeyError/... on what it lacks
            error = e
        try:
            return transformers.PreTrainedTokenizerFast.from_pretrained(**where)
        except Exception:
            raise TokenizerError(f"{path}: transformers could not build a tokenizer from the "
                                 f"GGUF metadata ({type(error).__name__}: {error})") from error


def gguf_tokenizer_parts(path: Path, gguf: GGUFFile | None = None) -> tuple[Any, set[int]]:
    """``(transformers tokenizer, stop ids)`` of the GGUF file at ``path`` (``gguf``: its
    parsed header, if already read)."""
    gguf = gguf or read_gguf(path)
    tokens = gguf.metadata.get(TOKENS_KEY)
    if not isinstance(tokens, list) or not tokens:
        raise TokenizerError(f"{path}, key {TOKENS_KEY!r}: no vocabulary in the GGUF metadata")
    return hf_tokenizer(path), stop_ids(gguf)

"""transformers, as mlx-zoo's tokenizer loaders use it (model directories in
:mod:`mlx_zoo.tokenizer`, GGUF metadata in :mod:`mlx_zoo.gguf.tokenizer`): imported only when a
tokenizer is loaded, quietly, and named in the error when it is missing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from .errors import TokenizerError

ADVISORY_WARNINGS_ENV = "TRANSFORMERS_NO_ADVISORY_WARNINGS"
"""Set (unless the user set it) before transformers is imported: its import-time advice ("PyTorch
was not found ...") is noise here, where only the tokenizer is used."""


@contextlib.contextmanager
def quiet_transformers() -> Iterator[Any]:
    """``transformers``, imported with its advisory warnings off and its logging at errors only
    for the block (restored after); a missing transformers is a :class:`TokenizerError` naming
    the extra that brings it."""
    os.environ.setdefault(ADVISORY_WARNINGS_ENV, "1")
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        raise TokenizerError("loading a tokenizer needs transformers: pip install "
                             "'mlx-zoo[generate]'") from e
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield transformers
    finally:
        hf_logging.set_verbosity(verbosity)

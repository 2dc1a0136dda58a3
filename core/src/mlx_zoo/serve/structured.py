"""Structured output: ``response_format`` enforced while sampling."""

from __future__ import annotations

from typing import Any

from .protocol import APIError


def processor_factory(fmt: dict, tokenizer: Any, vocab_size: int | None):
    raise APIError(f"response_format type {fmt.get('type')!r} is not supported by this server",
                   param="response_format", code="unsupported_parameter")

"""Tokenizers, chat templates and streaming detokenisation.

Tokenizers come from transformers' ``AutoTokenizer`` reading ``tokenizer.json`` and
``tokenizer_config.json`` (imported only when a tokenizer is loaded). Code shipped with a
checkpoint is never run: ``trust_remote_code=False``, and a tokenizer that needs custom code
(``auto_map`` in tokenizer_config.json) is refused with a :class:`TokenizerError`.

Generation stops on the end-of-sequence ids of ``generation_config.json``, ``config.json`` and
the tokenizer, together (checkpoints disagree on which file has them).

While generating, text is produced token by token by a :class:`StreamingDetokenizer`, which
never emits a partial UTF-8 character (a byte-level token may hold half of one):

* :class:`ByteLevelDetokenizer` -- byte-level BPE (GPT-2 style, ``decoder.type == "ByteLevel"``):
  each token maps to its bytes, fed to an incremental UTF-8 decoder; O(1) per token.
* :class:`GenericDetokenizer` -- any other tokenizer: re-decodes the tokens since a recent
  checkpoint and holds text back while it ends in U+FFFD (an incomplete character).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import GenerationArgumentError, TokenizerError
from .hf import quiet_transformers

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
CONFIG_FILE = "config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
REPLACEMENT_CHAR = "\ufffd"  # what a decoder yields for incomplete UTF-8


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _ids(value: Any, path: Path, key: str) -> set[int]:
    """``eos_token_id`` is an int, a list of ints, or null."""
    if value is None:
        return set()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TokenizerError(f"{path}, key {key!r}: expected an integer or a list of integers, "
                             f"got {value!r}")
    return set(values)


def read_eos_token_ids(model_dir: Path) -> set[int]:
    """``eos_token_id`` of generation_config.json and config.json (and config.json's
    ``text_config``), united."""
    ids: set[int] = set()
    for name in (GENERATION_CONFIG_FILE, CONFIG_FILE):
        path = model_dir / name
        data = _read_json(path)
        ids |= _ids(data.get("eos_token_id"), path, "eos_token_id")
        text_config = data.get("text_config")
        if isinstance(text_config, dict):
            ids |= _ids(text_config.get("eos_token_id"), path, "text_config.eos_token_id")
    return ids


# -- streaming detokenisation --------------------------------------------------------------------


class StreamingDetokenizer:
    """Turns generated token ids into text incrementally. :meth:`add_token` returns the new text
    that is complete so far (possibly ""); :meth:`finalize` returns whatever was held back. The
    concatenation of all returned pieces equals ``tokenizer.decode(tokens)``."""

    def add_token(self, token: int) -> str:
        raise NotImplementedError

    def finalize(self) -> str:
        raise NotImplementedError


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet (Radford et al. 2019, the ``ByteLevel`` pre-tokenizer of the
    ``tokenizers`` library): each byte value becomes one printable character, so that BPE works on
    strings. Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space,
    a few Latin-1 gaps) are mapped, in order, to code points 256, 257, ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    next_code = 256
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(next_code)
            next_code += 1
    return mapping


class ByteLevelDetokenizer(StreamingDetokenizer):
    """For byte-level BPE: token id -> its bytes (a table built once per tokenizer) -> an
    incremental UTF-8 decoder, which keeps an incomplete character until its last byte comes."""

    def __init__(self, token_bytes: list[bytes]):
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add_token(self, token: int) -> str:
        # Embedding tables are often padded past the tokenizer (Qwen2: 151,936 rows for 151,665
        # tokens): an id in the padding is valid for the model and stands for no text.
        piece = self._token_bytes[token] if 0 <= token < len(self._token_bytes) else b""
        return self._decoder.decode(piece)

    def finalize(self) -> str:
        return self._decoder.decode(b"", final=True)


class GenericDetokenizer(StreamingDetokenizer):
    """For any tokenizer: decode the tokens since a checkpoint and emit the new suffix, unless
    the text ends in an incomplete character. Every ``WINDOW`` tokens the checkpoint moves on,
    keeping ``CONTEXT`` tokens so that decoders that treat the first token specially (leading
    spaces of SentencePiece) still see the right neighbours."""

    WINDOW = 32
    CONTEXT = 4

    def __init__(self, decode):
        self._decode = decode
        self._tokens: list[int] = []
        self._emitted = 0  # characters of decode(self._tokens) already returned

    def add_token(self, token: int) -> str:
        self._tokens.append(token)
        text = self._decode(self._tokens)
        if text.endswith(REPLACEMENT_CHAR):
            return ""
        piece = text[self._emitted:]
        self._emitted = len(text)
        if len(self._tokens) > self.WINDOW:
            self._tokens = self._tokens[-self.CONTEXT:]
            self._emitted = len(self._decode(self._tokens))
        return piece

    def finalize(self) -> str:
        text = self._decode(self._tokens)
        piece = text[self._emitted:]
        self._tokens, self._emitted = [], 0
        return piece


# -- the tokenizer -----------------------------------------------------------------------------


class Tokenizer:
    """A transformers tokenizer with what generation needs: the EOS ids, the chat template and a
    streaming detokenizer. The wrapped ``AutoTokenizer`` is :attr:`hf`."""

    def __init__(self, hf_tokenizer: Any, eos_token_ids: Iterable[int] = (),
                 tokenizer_json: dict[str, Any] | None = None, model_dir: Path | None = None):
        self.hf = hf_tokenizer
        self.model_dir = model_dir
        ids = set(eos_token_ids)
        if hf_tokenizer.eos_token_id is not None:
            ids.add(hf_tokenizer.eos_token_id)
        self.eos_token_ids: frozenset[int] = frozenset(ids)
        self._token_bytes = _byte_level_table(tokenizer_json, len(hf_tokenizer))

    def __getattr__(self, name: str) -> Any:
        """Any other attribute is the wrapped transformers tokenizer's (``convert_tokens_to_ids``,
        ``chat_template``, ``pad_token_id``, ...), as mlx-lm's ``TokenizerWrapper`` forwards
        them: code written for either keeps working."""
        hf = self.__dict__.get("hf")
        if hf is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(hf, name)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    @property
    def bos_token(self) -> str | None:
        """The beginning-of-sequence token's text (``"<|begin_of_text|>"``), None without one
        (Qwen)."""
        return getattr(self.hf, "bos_token", None)

    @property
    def bos_token_id(self) -> int | None:
        return getattr(self.hf, "bos_token_id", None)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; :class:`GenerationArgumentError` for what is not a string of
        valid Unicode (a lone surrogate such as ``"\\ud800"`` -- what invalid UTF-8 bytes on a
        command line decode to -- has no UTF-8 encoding to tokenise)."""
        check_text(text)
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a text prompt to generate from: :meth:`encode` with the special tokens,
        except that a text already starting with the BOS token (a rendered chat template writes
        its own) does not get a second one (:func:`without_double_bos`)."""
        return without_double_bos(self.encode(text), text, self.bos_token, self.bos_token_id)

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids))

    def apply_chat_template(self, conversation: list[dict[str, Any]] | list[list[dict[str, Any]]],
                            tools: list[dict[str, Any]] | None = None,
                            documents: list[dict[str, str]] | None = None,
                            chat_template: str | None = None,
                            add_generation_prompt: bool = False,
                            continue_final_message: bool | str = False,
                            tokenize: bool = True, return_dict: bool = False,
                            **kwargs: Any) -> Any:
        """The conversation rendered by the checkpoint's chat template, as transformers'
        ``apply_chat_template`` with the same arguments renders it (it does the rendering).

        ``tokenize=True`` (the default) returns the token ids (a ``list[int]``; the template
        writes its own BOS, none is added), ``tokenize=False`` the text. ``return_dict=True``
        returns transformers' ``BatchEncoding`` (``input_ids``, ``attention_mask``) instead of
        the ids; it defaults to False, as in mlx-lm (transformers 5 defaults to True).
        ``tools``, ``documents``, ``add_generation_prompt``, ``continue_final_message`` and every
        other keyword (template variables such as Qwen3's ``enable_thinking``; transformers'
        ``tokenizer_kwargs``, ``return_tensors``, ...) go to transformers. A list of
        conversations renders each (a list of results).

        Raises :class:`GenerationArgumentError` for an empty conversation, message text that is
        not valid Unicode, or ``add_generation_prompt`` with ``continue_final_message``;
        :class:`TokenizerError` when there is no chat template or rendering fails (the template
        is the checkpoint's code).
        """
        if chat_template is None and not self.has_chat_template:
            raise TokenizerError("this tokenizer has no chat template (no 'chat_template' in "
                                 "tokenizer_config.json or chat_template.jinja): pass the prompt "
                                 "as plain text (--no-chat-template)")
        _check_conversation(conversation)
        if continue_final_message and add_generation_prompt:
            raise GenerationArgumentError(
                "apply_chat_template: continue_final_message and add_generation_prompt exclude "
                "each other (continue the last message, or start the assistant's)")
        try:
            out = self.hf.apply_chat_template(
                conversation, tools=tools, documents=documents, chat_template=chat_template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message, tokenize=tokenize,
                return_dict=return_dict, **kwargs)
        except ImportError as e:  # transformers renders templates with jinja2, an optional dep
            raise TokenizerError(f"rendering the chat template needs jinja2 ({e}): pip install "
                                 "'mlx-zoo[generate]'") from e
        except Exception as e:
            # The template is code from the checkpoint: jinja2's TemplateError family
            # (UndefinedError, TemplateSyntaxError, its raise_exception()), or any Python error
            # it trips over (TypeError, KeyError, ...). Either way the checkpoint is at fault.
            source = "the chat_template argument" if chat_template is not None else (
                f"{self.chat_template_source}, key 'chat_template'")
            raise TokenizerError(f"{source}: rendering failed ({type(e).__name__}: {e})") from e
        return _checked_render(out, tokenize, return_dict, self.chat_template_source)

    @property
    def chat_template_source(self) -> str:
        """Where the chat template comes from, for error messages: chat_template.jinja when the
        model directory has one, else tokenizer_config.json; for a GGUF file, its
        ``tokenizer.chat_template`` metadata."""
        if self.model_dir is not None and self.model_dir.is_file():
            return f"{self.model_dir} (metadata tokenizer.chat_template)"
        if self.model_dir is not None and (self.model_dir / CHAT_TEMPLATE_FILE).is_file():
            return str(self.model_dir / CHAT_TEMPLATE_FILE)
        if self.model_dir is not None:
            return str(self.model_dir / TOKENIZER_CONFIG_FILE)
        return TOKENIZER_CONFIG_FILE

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                    **kwargs: Any) -> list[int]:
        """The token ids of ``messages`` ready to generate the assistant's reply from:
        :meth:`apply_chat_template` with ``add_generation_prompt=True`` (``kwargs`` as there:
        ``tools``, template variables, ...)."""
        return self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                        tokenize=True, return_dict=False, **kwargs)

    def detokenizer(self) -> StreamingDetokenizer:
        """A fresh streaming detokenizer for one generation."""
        if self._token_bytes is not None:
            return ByteLevelDetokenizer(self._token_bytes)
        return GenericDetokenizer(self.decode)


def check_text(text: Any, what: str = "the prompt") -> None:
    """Raise :class:`GenerationArgumentError` unless ``text`` is a string UTF-8 can encode."""
    if not isinstance(text, str):
        raise GenerationArgumentError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise GenerationArgumentError(
            f"{what} is not valid Unicode: character {e.start} is U+{ord(text[e.start]):04X}, a "
            "lone surrogate (invalid UTF-8 input?); it cannot be tokenised") from None


def without_double_bos(ids: list[int], text: str, bos_token: str | None,
                       bos_token_id: int | None) -> list[int]:
    """``ids`` (``text`` encoded with the special tokens) less the BOS the tokenizer added when
    ``text`` already starts with the BOS token: ``[bos, bos, ...]`` becomes ``[bos, ...]``. A
    rendered chat template writes its own BOS; a second one conditions the model on a prompt it
    never saw in training. Tokenizers without a BOS (Qwen) are left alone."""
    if (bos_token and bos_token_id is not None and text.startswith(bos_token)
            and ids[:2] == [bos_token_id, bos_token_id]):
        return ids[1:]
    return ids


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of the text prompt ``text`` for generation, with ``tokenizer`` (a
    :class:`Tokenizer`, or any object with ``encode`` and optionally ``bos_token`` /
    ``bos_token_id`` attributes): special tokens added, but never a second BOS
    (:func:`without_double_bos`)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.encode_prompt(text)
    check_text(text)
    ids = list(tokenizer.encode(text))
    return without_double_bos(ids, text, getattr(tokenizer, "bos_token", None),
                              getattr(tokenizer, "bos_token_id", None))


def _check_conversation(conversation: Any) -> None:
    """:class:`GenerationArgumentError` unless ``conversation`` is a non-empty list of message
    dicts (or a non-empty list of such lists) whose string contents are valid Unicode."""
    if not isinstance(conversation, (list, tuple)) or not conversation:
        raise GenerationArgumentError(
            "apply_chat_template: expected a non-empty list of messages ({'role': ..., "
            f"'content': ...}}) or a list of such lists, got {conversation!r:.80}")
    batched = isinstance(conversation[0], (list, tuple))
    for chat in conversation if batched else [conversation]:
        if not isinstance(chat, (list, tuple)) or not chat:
            raise GenerationArgumentError("apply_chat_template: each conversation must be a "
                                          f"non-empty list of messages, got {chat!r:.80}")
        for message in chat:
            if not isinstance(message, dict):
                raise GenerationArgumentError(
                    "apply_chat_template: each message must be a dict with 'role' and "
                    f"'content', got {type(message).__name__}")
            content = message.get("content")
            if isinstance(content, str):
                check_text(content, f"the {message.get('role', 'message')!s} message")


def _checked_render(out: Any, tokenize: bool, return_dict: bool, source: str) -> Any:
    """transformers' ``apply_chat_template`` result in the form asked for: text, a list of ids
    (lists for a batch), or the ``BatchEncoding`` itself with ``return_dict``."""
    if tokenize and return_dict:
        return out
    if not tokenize:
        ok = isinstance(out, str) or (isinstance(out, list)
                                      and all(isinstance(t, str) for t in out))
        expected = "a string"
    else:
        if hasattr(out, "tolist"):  # return_tensors="np" / "mlx"
            return out
        ok = isinstance(out, list)
        expected = "token ids"
    if not ok:
        raise TokenizerError(f"{source}, key 'chat_template': rendered a "
                             f"{type(out).__name__}, expected {expected}")
    return out


def _byte_level_table(tokenizer_json: dict[str, Any] | None, size: int) -> list[bytes] | None:
    """Bytes of every token id for a byte-level BPE tokenizer.json, else None. Added tokens
    (special or not) stand for their literal text; so does a normalised added token."""
    if not tokenizer_json:
        return None
    decoder = tokenizer_json.get("decoder") or {}
    model = tokenizer_json.get("model") or {}
    if decoder.get("type") != "ByteLevel" or model.get("type") != "BPE":
        return None
    byte_of = {char: b for b, char in bytes_to_unicode().items()}
    table = [b""] * size
    for token, i in model.get("vocab", {}).items():
        if not 0 <= i < size or any(c not in byte_of for c in token):
            return None  # not a pure byte-level vocabulary: use the generic detokenizer
        table[i] = bytes(byte_of[c] for c in token)
    for added in tokenizer_json.get("added_tokens", []):
        if 0 <= added["id"] < size:
            table[added["id"]] = added["content"].encode("utf-8")
    return table


def read_model_vocab_size(model_dir: Path) -> int | None:
    """config.json's ``vocab_size`` (or ``text_config.vocab_size``): the rows of the model's
    embedding. None when config.json is absent or has neither."""
    path = model_dir / CONFIG_FILE
    data = _read_json(path)
    text_config = data.get("text_config")
    for key, value in (("vocab_size", data.get("vocab_size")),
                       ("text_config.vocab_size",
                        text_config.get("vocab_size") if isinstance(text_config, dict) else None)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TokenizerError(f"{path}, key {key!r}: expected a positive integer, got "
                                 f"{value!r}")
        return value
    return None


def check_ids_fit_vocab(model_dir: Path, tokenizer_json: dict[str, Any], hf: Any,
                        vocab_size: int) -> None:
    """Raise :class:`TokenizerError` when the tokenizer can produce an id the model has no
    embedding row for (``>= vocab_size``): one in tokenizer.json's ``model.vocab`` or
    ``added_tokens``, or one the tokenizers library gives an added token it renumbered past the
    vocabulary (``len(hf)``). Such an id would read outside the embedding table."""
    path = model_dir / TOKENIZER_FILE
    model = tokenizer_json.get("model") if isinstance(tokenizer_json, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    beyond = (f"beyond the model's vocab_size {vocab_size} (config.json): ids must be in "
              f"[0, {vocab_size})")
    if isinstance(vocab, dict):
        for token, i in vocab.items():
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size:
                raise TokenizerError(f"{path}, key 'model.vocab': token {token!r} has id {i!r}, "
                                     f"{beyond}")
    elif isinstance(vocab, list) and len(vocab) > vocab_size:  # Unigram: ids are positions
        raise TokenizerError(f"{path}, key 'model.vocab': {len(vocab)} entries, {beyond}")
    added = tokenizer_json.get("added_tokens") if isinstance(tokenizer_json, dict) else None
    for entry in added if isinstance(added, list) else []:
        i = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size:
            content = entry.get("content") if isinstance(entry, dict) else entry
            raise TokenizerError(f"{path}, key 'added_tokens': token {content!r} has id {i!r}, "
                                 f"{beyond}")
    size = len(hf)
    if size > vocab_size:
        raise TokenizerError(
            f"{path}: the tokenizer has {size} ids; id {size - 1} (token "
            f"{hf.convert_ids_to_tokens(size - 1)!r}, an added token the tokenizers library "
            f"numbered after the vocabulary?) is {beyond}")


def _check_no_custom_code(model_dir: Path, tokenizer_config: dict[str, Any]) -> None:
    auto_map = tokenizer_config.get("auto_map")
    if auto_map:
        raise TokenizerError(
            f"{model_dir / TOKENIZER_CONFIG_FILE}, key 'auto_map': this tokenizer needs custom "
            f"code shipped with the checkpoint ({auto_map!r}); mlx-zoo never runs code from a "
            "model directory (trust_remote_code=False). Use a checkpoint whose tokenizer is a "
            "plain tokenizer.json.")


def _auto_tokenizer(model_dir: Path) -> Any:
    """transformers' AutoTokenizer on ``model_dir``, its warnings about the *model* config
    (which it reads to pick a tokenizer class) silenced."""
    with quiet_transformers() as transformers:
        try:
            return transformers.AutoTokenizer.from_pretrained(str(model_dir),
                                                              trust_remote_code=False)
        except Exception as e:  # transformers raises ValueError/OSError/... on unusable files
            error = e
        # AutoTokenizer parses config.json with the model's transformers config class only to
        # choose a tokenizer class; a config that class rejects (a stricter field type, an
        # unknown model_type) must not make the tokenizer unusable: retry with
        # tokenizer_config.json alone.
        try:
            return transformers.AutoTokenizer.from_pretrained(
                str(model_dir), trust_remote_code=False, config=transformers.PretrainedConfig())
        except Exception:
            raise TokenizerError(f"{model_dir}: transformers' AutoTokenizer could not load the "
                                 f"tokenizer ({type(error).__name__}: {error})") from error


def load_tokenizer(path_or_repo: str | Path, *, revision: str | None = None,
                   eos_token_ids: Iterable[int] | None = None) -> Tokenizer:
    """Load the tokenizer of a model directory, Hub repo id or ``demo:NAME``.

    ``eos_token_ids`` adds to the ids read from the checkpoint. Raises :class:`TokenizerError`
    when the tokenizer files are missing or need custom code, or when the tokenizer has ids the
    model cannot embed (>= config.json's ``vocab_size``, :func:`check_ids_fit_vocab`).
    """
    from .sources import is_gguf, resolve_reference

    model_dir = resolve_reference(path_or_repo, revision)
    if is_gguf(model_dir):  # a GGUF file: vocabulary and template from its metadata
        return _gguf_tokenizer(model_dir, eos_token_ids, str(path_or_repo))
    tokenizer_config = _read_json(model_dir / TOKENIZER_CONFIG_FILE)
    _check_no_custom_code(model_dir, tokenizer_config)
    tokenizer_json = _read_json(model_dir / TOKENIZER_FILE)
    has_files = tokenizer_json or any((model_dir / f).is_file() for f in (
        "tokenizer.model", "vocab.json", "tokenizer.tiktoken"))
    if not has_files:
        raise TokenizerError(f"{model_dir}: no tokenizer files (expected {TOKENIZER_FILE} and "
                             f"{TOKENIZER_CONFIG_FILE})")
    vocab_size = read_model_vocab_size(model_dir)
    hf = _auto_tokenizer(model_dir)
    if vocab_size is not None:
        check_ids_fit_vocab(model_dir, tokenizer_json, hf, vocab_size)
    ids = read_eos_token_ids(model_dir) | set(eos_token_ids or ())
    return Tokenizer(hf, ids, tokenizer_json, model_dir)


def _gguf_tokenizer(path: Path, eos_token_ids: Iterable[int] | None, reference: str
                    ) -> Tokenizer:
    """The tokenizer of a GGUF file (:mod:`mlx_zoo.gguf.tokenizer`), its vocabulary checked
    against the model's embedding (``token_embd.weight`` rows); for ``ollama:NAME``, the
    model's ``stop`` parameters that are single tokens stop generation too."""
    from .gguf.ollama import stop_token_ids
    from .gguf.reader import read_gguf
    from .gguf.tokenizer import gguf_tokenizer_parts
    from .sources import OLLAMA_PREFIX

    gguf = read_gguf(path)
    count = len(gguf.metadata.get("tokenizer.ggml.tokens") or ())
    embed = gguf.tensors.get("token_embd.weight")
    if embed is not None and count > embed.shape[0]:
        raise TokenizerError(f"{path}, key 'tokenizer.ggml.tokens': {count} tokens, but the "
                             f"model embeds only {embed.shape[0]} (token_embd.weight)")
    hf, ids = gguf_tokenizer_parts(path, gguf)
    if reference.startswith(OLLAMA_PREFIX):
        ids |= stop_token_ids(reference[len(OLLAMA_PREFIX):], hf)
    tokenizer_json = json.loads(hf.backend_tokenizer.to_str())
    return Tokenizer(hf, ids | set(eos_token_ids or ()), tokenizer_json, path)

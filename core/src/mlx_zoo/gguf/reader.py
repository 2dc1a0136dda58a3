"""A validating reader of GGUF headers: metadata and tensor directory, before any tensor is read.

GGUF is llama.cpp's single-file format (spec:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): a magic ``GGUF``, a version, the
tensor and metadata counts, the metadata as typed key/value pairs, one directory entry per
tensor (name, dimensions innermost first, ggml type, offset), then the tensor data, aligned to
``general.alignment`` bytes (32 by default).

Every count and length is checked against the bytes left in the file before anything is
allocated for it, so a truncated or hostile file -- a string claiming 2^60 bytes, an array of a
billion entries in a 1 KB file, a tensor past the end of the data or overlapping another, a
duplicate name, an unknown ggml type -- is a :class:`~mlx_zoo.errors.GGUFError` naming the file
and the key or tensor, never a crash or gigabytes allocated. Metadata arrays of numbers come back
as Python lists; tensor data is not touched here (:mod:`mlx_zoo.gguf.tensors` reads it).
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GGUFError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
"""Versions 2 and 3 share the layout read here (64-bit counts); version 1 (32-bit counts, 2023)
is long gone from the tools that write GGUF."""
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 2  # arrays of arrays: the spec allows them, no writer nests deeper
MAX_ELEMENTS = 1 << 50  # far past any real tensor, and below int64 overflow of byte sizes
MAX_ARRAY_LENGTH = 1 << 22
"""Entries a metadata array may hold: the largest real ones are vocabularies and merge lists
(Gemma 3: 262,144 tokens; ~4.2 M leaves 16x room). Past it, a file of a few hundred MB could ask
for tens of GB of Python objects."""

# value type id -> (struct format, size in bytes); 8 = string, 9 = array, handled apart
SCALARS = {0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4),
           6: ("f", 4), 7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}
STRING, ARRAY = 8, 9

SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
"""``model-00001-of-00003.gguf``: the shards ``llama-gguf-split`` writes."""
SPLIT_COUNT_KEY = "split.count"


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor directory: ``shape`` in row-major order (outermost first, as
    NumPy and MLX index it; GGUF stores the dimensions innermost first), ``ggml_type`` the
    ``gguf.GGMLQuantizationType`` id, ``offset`` the absolute byte offset in ``path``."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int
    path: Path


@dataclass
class GGUFFile:
    """A parsed, validated GGUF file (or the shards of a split one, merged)."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise GGUFError(self.path, "expected a non-empty string", "general.architecture")
        return arch


def quant_sizes() -> dict[int, tuple[int, int]]:
    """``{ggml type id: (values per block, bytes per block)}``, from llama.cpp's own Python
    package (``gguf.GGML_QUANT_SIZES``): every tensor type its writers know."""
    import gguf

    return {int(t): sizes for t, sizes in gguf.GGML_QUANT_SIZES.items()}


def type_name(ggml_type: int) -> str:
    import gguf

    try:
        return gguf.GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


class _Cursor:
    """Reads little-endian values from a buffer, refusing any read past its end."""

    def __init__(self, buf: Any, path: Path):
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def need(self, nbytes: int, what: str, key: str | None = None) -> None:
        if nbytes < 0 or self.pos + nbytes > self.size:
            raise GGUFError(self.path, f"truncated: {what} needs {nbytes} bytes at offset "
                            f"{self.pos}, the file has {self.size - self.pos} left", key)

    def scalar(self, type_id: int, key: str | None = None) -> Any:
        fmt, size = SCALARS[type_id]
        self.need(size, "a value", key)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def scalars(self, type_id: int, count: int, key: str | None) -> list:
        fmt, size = SCALARS[type_id]
        self.need(size * count, f"an array of {count} values", key)
        values = struct.unpack_from(f"<{count}{fmt}", self.buf, self.pos)
        self.pos += size * count
        return list(values)

    def string(self, key: str | None = None) -> str:
        length = self.scalar(10, key)
        self.need(length, "a string", key)
        raw = bytes(self.buf[self.pos:self.pos + length])
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(self.path, f"a string is not valid UTF-8 ({e})", key) from e


@dataclass(frozen=True)
class SkippedStrings:
    """A metadata array of ``count`` strings, walked (and its lengths checked) but not decoded:
    loading weights needs no vocabulary (``read_gguf(path, strings=False)``)."""

    count: int

    def __len__(self) -> int:
        return self.count


LENGTH = struct.Struct("<Q")


def _skip_strings(cur: _Cursor, count: int, key: str) -> SkippedStrings:
    """Step over ``count`` strings (a tight loop: a vocabulary has 10^5 of them); a length
    running past the end stops the walk at the next string, as a truncated file."""
    buf, pos, size, unpack = cur.buf, cur.pos, cur.size, LENGTH.unpack_from
    for _ in range(count):
        if pos + 8 > size:
            break
        pos += 8 + unpack(buf, pos)[0]
    else:
        if pos <= size:
            cur.pos = pos
            return SkippedStrings(count)
    raise GGUFError(cur.path, f"truncated: an array of {count} strings runs past the end of "
                    "the file", key)


def _value(cur: _Cursor, type_id: int, key: str, depth: int = 0, strings: bool = True) -> Any:
    if type_id in SCALARS:
        return cur.scalar(type_id, key)
    if type_id == STRING:
        return cur.string(key)
    if type_id != ARRAY:
        raise GGUFError(cur.path, f"unknown metadata value type {type_id} (expected 0-12)", key)
    item_type, count = cur.scalar(4, key), cur.scalar(10, key)
    if count > MAX_ARRAY_LENGTH:
        raise GGUFError(cur.path, f"an array of {count} entries (at most {MAX_ARRAY_LENGTH} "
                        "are read)", key)
    if item_type in SCALARS:
        return cur.scalars(item_type, count, key)
    if depth >= MAX_NESTING or item_type not in (STRING, ARRAY):
        raise GGUFError(cur.path, f"array of value type {item_type} (nested {depth + 1} deep) "
                        "is not a GGUF value", key)
    cur.need(count * 8, f"an array of {count} strings or arrays", key)  # >= 8 bytes each
    if item_type == STRING and not strings:
        return _skip_strings(cur, count, key)
    return [_value(cur, item_type, key, depth + 1) for _ in range(count)]


def _count(cur: _Cursor, what: str, least_bytes_each: int) -> int:
    count = cur.scalar(10)
    if count * least_bytes_each > cur.size - cur.pos:
        raise GGUFError(cur.path, f"the header claims {count} {what}, more than the "
                        f"{cur.size} bytes of the file can hold")
    return count


def _tensor_entry(cur: _Cursor, sizes: dict[int, tuple[int, int]]) -> tuple[str, tuple, int, int]:
    name = cur.string()
    n_dims = cur.scalar(4, name)
    if not 1 <= n_dims <= MAX_DIMS:
        raise GGUFError(cur.path, f"{n_dims} dimensions (expected 1-{MAX_DIMS})", name)
    dims = cur.scalars(10, n_dims, name)
    ggml_type, offset = cur.scalar(4, name), cur.scalar(10, name)
    if ggml_type not in sizes:
        raise GGUFError(cur.path, f"unknown ggml tensor type {ggml_type} (known: "
                        f"{', '.join(type_name(t) for t in sorted(sizes))}); a newer GGUF "
                        "writer? Try a newer mlx-zoo and gguf package", name)
    elements = 1
    for d in dims:
        elements *= d
    block, _ = sizes[ggml_type]
    if 0 in dims or elements > MAX_ELEMENTS or dims[0] % block:
        raise GGUFError(cur.path, f"dimensions {dims} do not make a {type_name(ggml_type)} tensor "
                        f"(none zero, the innermost a multiple of its block of {block})", name)
    return name, tuple(reversed(dims)), ggml_type, offset


def read_header(path: Path, strings: bool = True) -> GGUFFile:
    """Parse and validate one GGUF file's header (no tensor data is read); ``strings=False``
    leaves arrays of strings (the vocabulary, the merges) undecoded."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise GGUFError(path, f"{size} bytes: too short for a GGUF header (24 bytes)")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise GGUFError(path, f"cannot be read ({e})") from e
    try:
        return _parse(buf, path, strings)
    finally:
        buf.close()


def _parse(buf: mmap.mmap, path: Path, strings: bool) -> GGUFFile:
    cur = _Cursor(buf, path)
    magic = bytes(buf[:4])
    if magic != MAGIC:
        raise GGUFError(path, f"not a GGUF file (magic {magic!r}, expected {MAGIC!r})")
    cur.pos = 4
    version = cur.scalar(4)
    if version not in SUPPORTED_VERSIONS:
        swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        hint = " (a big-endian file: convert it with gguf-convert-endian)" \
            if swapped in SUPPORTED_VERSIONS else ""
        raise GGUFError(path, f"GGUF version {version} is not supported (expected one of "
                        f"{SUPPORTED_VERSIONS}){hint}")
    n_tensors = _count(cur, "tensors", 8 + 4 + 8 + 4 + 8)
    n_kv = _count(cur, "metadata entries", 8 + 4 + 1)
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        if key in metadata:
            raise GGUFError(path, "metadata key repeated", key)
        metadata[key] = _value(cur, cur.scalar(4, key), key, strings=strings)
    sizes = quant_sizes()
    entries = [_tensor_entry(cur, sizes) for _ in range(n_tensors)]
    alignment = metadata.get(ALIGNMENT_KEY, DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment < 1 \
            or alignment & (alignment - 1):
        raise GGUFError(path, f"expected a power of two, got {alignment!r}", ALIGNMENT_KEY)
    data_start = -(-cur.pos // alignment) * alignment
    tensors = _directory(path, entries, sizes, data_start, cur.size, alignment)
    return GGUFFile(path, version, metadata, tensors)


def _directory(path: Path, entries: list, sizes: dict, data_start: int, file_size: int,
               alignment: int) -> dict[str, TensorInfo]:
    """The tensor directory, each tensor inside the data section, aligned, none overlapping."""
    tensors: dict[str, TensorInfo] = {}
    for name, shape, ggml_type, offset in entries:
        if name in tensors:
            raise GGUFError(path, "tensor name repeated in the directory: refused (which copy "
                            "to use is ambiguous)", name)
        block, type_size = sizes[ggml_type]
        elements = 1
        for d in shape:
            elements *= d
        nbytes = elements // block * type_size
        if offset % alignment or data_start + offset + nbytes > file_size:
            raise GGUFError(path, f"data at offset {offset} ({nbytes} bytes) lies outside the "
                            f"file's {file_size - data_start} data bytes or is not aligned to "
                            f"{alignment}", name)
        tensors[name] = TensorInfo(name, shape, ggml_type, data_start + offset, nbytes, path)
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values())
    for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise GGUFError(path, f"its data overlaps that of {first!r}", second)
    return tensors


def split_files(path: Path) -> list[Path]:
    """All shards of a split GGUF given any one of them (``-00002-of-00003.gguf``), in order;
    ``[path]`` for an ordinary file. A missing shard is an error naming it."""
    match = SPLIT_NAME.match(path.name)
    if not match:
        return [path]
    count = int(match["count"])
    if count < 1:
        raise GGUFError(path, "a split count of 0 in the file name")
    files = [path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf")
             for i in range(1, count + 1)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise GGUFError(path, f"split GGUF: shard(s) {', '.join(missing)} missing beside it")
    return files


def read_gguf(path: Path, strings: bool = True) -> GGUFFile:
    """Read a GGUF file, or every shard of a split one: metadata from the first shard (where
    llama.cpp writes it), tensors from all, each name in one shard only. ``strings=False``:
    arrays of strings are checked but not decoded (:class:`SkippedStrings`)."""
    files = split_files(Path(path))
    first = read_header(files[0], strings)
    declared = first.metadata.get(SPLIT_COUNT_KEY, 1 if len(files) == 1 else None)
    if declared != len(files):
        raise GGUFError(files[0], f"expected {len(files)} (the shards beside it), got "
                        f"{declared!r}", SPLIT_COUNT_KEY)
    for shard in files[1:]:
        part = read_header(shard, strings)
        for name, info in part.tensors.items():
            if name in first.tensors:
                raise GGUFError(shard, f"tensor also stored in {first.tensors[name].path.name}: "
                                "refused (which copy to use is ambiguous)", name)
            first.tensors[name] = info
    return first

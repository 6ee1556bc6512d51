"""Minimal GGUF v3 writer and reader (numpy only, no `gguf` package needed).

Used by tools/make_fixtures.py to write the test fixtures, and by its --selftest
to read them back.  Only what the fixtures need is implemented, but the format
handling is complete for GGUF v3 little-endian files.

File layout (GGUF v3, as in ggml/src/gguf.cpp and gguf-py/gguf/gguf_writer.py):

    u32  magic   = 0x46554747 ("GGUF" read as little-endian bytes 47 47 55 46)
    u32  version = 3
    u64  n_tensors
    u64  n_kv
    n_kv    x  { gguf_string key; u32 value_type; value }
    n_tensors x { gguf_string name; u32 n_dims; u64 ne[n_dims]; u32 ggml_type; u64 offset }
    zero padding up to a multiple of `general.alignment` (default 32)
    tensor data; each tensor starts at data_start + offset, offset a multiple of alignment

    gguf_string = u64 byte length + UTF-8 bytes (no terminating NUL)
    array value = u32 element type + u64 count + elements

ne[] is in ggml order: ne[0] is the innermost (fastest varying) dimension, i.e. the
number of columns of a row-major [rows, cols] matrix.  A PyTorch/HF weight of shape
[out, in] therefore has ne = [in, out].
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

GGUF_MAGIC = 0x46554747  # b"GGUF" as little-endian u32
GGUF_VERSION = 3
GGUF_DEFAULT_ALIGNMENT = 32

# gguf_type (ggml/include/gguf.h, enum gguf_type)
GGUF_TYPE_UINT8 = 0
GGUF_TYPE_INT8 = 1
GGUF_TYPE_UINT16 = 2
GGUF_TYPE_INT16 = 3
GGUF_TYPE_UINT32 = 4
GGUF_TYPE_INT32 = 5
GGUF_TYPE_FLOAT32 = 6
GGUF_TYPE_BOOL = 7
GGUF_TYPE_STRING = 8
GGUF_TYPE_ARRAY = 9
GGUF_TYPE_UINT64 = 10
GGUF_TYPE_INT64 = 11
GGUF_TYPE_FLOAT64 = 12

# struct format for the fixed-size scalar types
_SCALAR_FMT = {
    GGUF_TYPE_UINT8: "<B",
    GGUF_TYPE_INT8: "<b",
    GGUF_TYPE_UINT16: "<H",
    GGUF_TYPE_INT16: "<h",
    GGUF_TYPE_UINT32: "<I",
    GGUF_TYPE_INT32: "<i",
    GGUF_TYPE_FLOAT32: "<f",
    GGUF_TYPE_BOOL: "<?",
    GGUF_TYPE_UINT64: "<Q",
    GGUF_TYPE_INT64: "<q",
    GGUF_TYPE_FLOAT64: "<d",
}

# ggml_type ids (ggml/include/ggml.h, enum ggml_type). TQ1_0/TQ2_0 are mainline
# llama.cpp; I2_S = 36 is bitnet.cpp's fork (3rdparty/llama.cpp/ggml/include/ggml.h).
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TYPE_TQ1_0 = 34
GGML_TYPE_TQ2_0 = 35
GGML_TYPE_I2_S = 36

GGML_TYPE_NAMES = {
    GGML_TYPE_F32: "F32",
    GGML_TYPE_F16: "F16",
    GGML_TYPE_TQ1_0: "TQ1_0",
    GGML_TYPE_TQ2_0: "TQ2_0",
    GGML_TYPE_I2_S: "I2_S",
}


def ggml_nbytes(ggml_type: int, ne: Iterable[int]) -> int:
    """Byte size of a tensor's data as ggml computes it (ggml_nbytes / ggml_row_size)."""
    ne = [int(x) for x in ne]
    n = 1
    for x in ne:
        n *= x
    if ggml_type == GGML_TYPE_F32:
        return 4 * n
    if ggml_type == GGML_TYPE_F16:
        return 2 * n
    if ggml_type == GGML_TYPE_TQ2_0:
        # block_tq2_0: uint8 qs[QK_K/4]; ggml_half d  -> 66 bytes per 256 weights along a row
        assert ne[0] % 256 == 0, "TQ2_0 rows must be a multiple of 256"
        return (n // 256) * 66
    if ggml_type == GGML_TYPE_TQ1_0:
        # block_tq1_0: uint8 qs[48]; uint8 qh[4]; ggml_half d -> 54 bytes per 256 weights
        assert ne[0] % 256 == 0, "TQ1_0 rows must be a multiple of 256"
        return (n // 256) * 54
    if ggml_type == GGML_TYPE_I2_S:
        # bitnet.cpp: n/4 bytes of 2-bit codes for the WHOLE tensor, then one float32
        # scale and 28 bytes of padding (quantize_i2_s returns nrow*row_size/4 + 32).
        assert n % 128 == 0, "I2_S tensors must hold a multiple of 128 weights"
        return n // 4 + 32
    raise ValueError(f"unsupported ggml type {ggml_type}")


def _pad_len(n: int, alignment: int) -> int:
    return (alignment - (n % alignment)) % alignment


def _enc_string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _enc_scalar(vtype: int, value: Any) -> bytes:
    if vtype == GGUF_TYPE_STRING:
        return _enc_string(value)
    fmt = _SCALAR_FMT.get(vtype)
    if fmt is None:
        raise ValueError(f"not a scalar gguf type: {vtype}")
    if vtype == GGUF_TYPE_BOOL:
        value = bool(value)
    return struct.pack(fmt, value)


@dataclass
class _TensorEntry:
    name: str
    ne: tuple[int, ...]
    ggml_type: int
    data: bytes


@dataclass
class GGUFWriter:
    """Collects key/values and tensors, then writes one GGUF v3 file.

    KVs and tensors are written in the order they were added (llama.cpp's loaders
    do not depend on the order, but keeping it fixed makes the files reproducible).
    """

    alignment: int = GGUF_DEFAULT_ALIGNMENT
    _kv: list[tuple[str, int, Any, int | None]] = field(default_factory=list)
    _tensors: list[_TensorEntry] = field(default_factory=list)

    # ---- key/values -----------------------------------------------------------
    def add_kv(self, key: str, vtype: int, value: Any, elem_type: int | None = None) -> None:
        if any(k == key for k, _, _, _ in self._kv):
            raise KeyError(f"duplicate GGUF key {key}")
        if vtype == GGUF_TYPE_ARRAY and elem_type is None:
            raise ValueError("arrays need elem_type")
        self._kv.append((key, vtype, value, elem_type))

    def add_string(self, key: str, value: str) -> None:
        self.add_kv(key, GGUF_TYPE_STRING, value)

    def add_uint32(self, key: str, value: int) -> None:
        self.add_kv(key, GGUF_TYPE_UINT32, int(value))

    def add_int32(self, key: str, value: int) -> None:
        self.add_kv(key, GGUF_TYPE_INT32, int(value))

    def add_float32(self, key: str, value: float) -> None:
        self.add_kv(key, GGUF_TYPE_FLOAT32, float(value))

    def add_bool(self, key: str, value: bool) -> None:
        self.add_kv(key, GGUF_TYPE_BOOL, bool(value))

    def add_array(self, key: str, elem_type: int, values: Iterable[Any]) -> None:
        self.add_kv(key, GGUF_TYPE_ARRAY, list(values), elem_type)

    # ---- tensors --------------------------------------------------------------
    def add_tensor(self, name: str, ne: Iterable[int], ggml_type: int, data: bytes | np.ndarray) -> None:
        """Add a tensor. `ne` is in ggml order (ne[0] = number of columns)."""
        ne = tuple(int(x) for x in ne)
        raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
        expect = ggml_nbytes(ggml_type, ne)
        if len(raw) != expect:
            raise ValueError(f"{name}: {len(raw)} data bytes, ggml expects {expect} for type {ggml_type} ne={ne}")
        if any(t.name == name for t in self._tensors):
            raise KeyError(f"duplicate tensor {name}")
        if len(name.encode("utf-8")) >= 64:  # GGML_MAX_NAME
            raise ValueError(f"tensor name too long: {name}")
        self._tensors.append(_TensorEntry(name, ne, ggml_type, raw))

    # ---- output ---------------------------------------------------------------
    def to_bytes(self) -> bytes:
        out = bytearray()
        out += struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(self._tensors), len(self._kv))
        for key, vtype, value, elem_type in self._kv:
            out += _enc_string(key)
            out += struct.pack("<I", vtype)
            if vtype == GGUF_TYPE_ARRAY:
                out += struct.pack("<IQ", elem_type, len(value))
                if elem_type in _SCALAR_FMT and elem_type != GGUF_TYPE_BOOL:
                    # fast path for numeric arrays
                    np_dt = np.dtype(_SCALAR_FMT[elem_type])
                    out += np.asarray(value, dtype=np_dt).tobytes()
                else:
                    for v in value:
                        out += _enc_scalar(elem_type, v)
            else:
                out += _enc_scalar(vtype, value)
        # tensor infos: offsets are relative to the start of the data section
        offset = 0
        offsets = []
        for t in self._tensors:
            offsets.append(offset)
            offset += len(t.data)
            offset += _pad_len(offset, self.alignment)
        for t, off in zip(self._tensors, offsets):
            out += _enc_string(t.name)
            out += struct.pack("<I", len(t.ne))
            out += struct.pack(f"<{len(t.ne)}Q", *t.ne)
            out += struct.pack("<IQ", t.ggml_type, off)
        out += b"\x00" * _pad_len(len(out), self.alignment)
        for t in self._tensors:
            out += t.data
            out += b"\x00" * _pad_len(len(t.data), self.alignment)
        return bytes(out)

    def write(self, path: str) -> int:
        blob = self.to_bytes()
        with open(path, "wb") as f:
            f.write(blob)
        return len(blob)


# =============================================================================
# Reader (used by the self-test and to verify written fixtures)
# =============================================================================


@dataclass
class GGUFTensorInfo:
    name: str
    ne: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to data section
    data: bytes  # exactly ggml_nbytes(type, ne) bytes


@dataclass
class GGUFFile:
    version: int
    alignment: int
    kv: dict[str, tuple[int, Any]]  # key -> (gguf type, value); arrays -> (ARRAY, (elem_type, list))
    tensors: dict[str, GGUFTensorInfo]
    tensor_order: list[str]
    data_start: int

    def value(self, key: str) -> Any:
        vtype, v = self.kv[key]
        if vtype == GGUF_TYPE_ARRAY:
            return v[1]
        return v


class _Cursor:
    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise ValueError("truncated GGUF file")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))

    def string(self) -> str:
        (n,) = self.unpack("<Q")
        return self.take(n).decode("utf-8")

    def scalar(self, vtype: int):
        if vtype == GGUF_TYPE_STRING:
            return self.string()
        fmt = _SCALAR_FMT.get(vtype)
        if fmt is None:
            raise ValueError(f"bad gguf value type {vtype}")
        return self.unpack(fmt)[0]


def read_gguf(path_or_bytes: str | bytes) -> GGUFFile:
    if isinstance(path_or_bytes, (bytes, bytearray)):
        buf = bytes(path_or_bytes)
    else:
        with open(path_or_bytes, "rb") as f:
            buf = f.read()
    c = _Cursor(buf)
    magic, version = c.unpack("<II")
    if magic != GGUF_MAGIC:
        raise ValueError(f"bad magic 0x{magic:08x}")
    if version != GGUF_VERSION:
        raise ValueError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = c.unpack("<QQ")
    kv: dict[str, tuple[int, Any]] = {}
    for _ in range(n_kv):
        key = c.string()
        (vtype,) = c.unpack("<I")
        if vtype == GGUF_TYPE_ARRAY:
            elem_type, count = c.unpack("<IQ")
            vals = [c.scalar(elem_type) for _ in range(count)]
            kv[key] = (vtype, (elem_type, vals))
        else:
            kv[key] = (vtype, c.scalar(vtype))
    alignment = GGUF_DEFAULT_ALIGNMENT
    if "general.alignment" in kv:
        alignment = int(kv["general.alignment"][1])
    infos = []
    for _ in range(n_tensors):
        name = c.string()
        (n_dims,) = c.unpack("<I")
        ne = tuple(c.unpack(f"<{n_dims}Q"))
        ggml_type, offset = c.unpack("<IQ")
        infos.append((name, ne, ggml_type, offset))
    data_start = c.pos + _pad_len(c.pos, alignment)
    # padding bytes must be zero (writers pad with zeros)
    if any(buf[c.pos : data_start]):
        raise ValueError("non-zero padding before data section")
    tensors: dict[str, GGUFTensorInfo] = {}
    order = []
    for name, ne, ggml_type, offset in infos:
        if offset % alignment:
            raise ValueError(f"{name}: offset {offset} not aligned to {alignment}")
        nbytes = ggml_nbytes(ggml_type, ne)
        start = data_start + offset
        if start + nbytes > len(buf):
            raise ValueError(f"{name}: data runs past end of file")
        tensors[name] = GGUFTensorInfo(name, ne, ggml_type, offset, buf[start : start + nbytes])
        order.append(name)
    return GGUFFile(version, alignment, kv, tensors, order, data_start)

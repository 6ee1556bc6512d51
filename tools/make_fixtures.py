#!/usr/bin/env python3
"""Generate the tiny BitNet b1.58 test fixtures for `tern`.

    python3 tools/make_fixtures.py --out DIR     # needs torch, transformers, tokenizers, numpy
    python3 tools/make_fixtures.py --selftest    # numpy only: packers, GGUF writer/reader, tokenizer trainer

Everything is seeded and deterministic.  The model is a 2-layer BitNet with random weights
(hidden 256, FFN 512, 4 heads / 2 KV heads of dim 64, vocab 512).  Outputs in DIR:

    hf_bf16/                HF "master weights" checkpoint (bf16, no quantization_config)
    hf_packed/              HF packed checkpoint, linear_class "autobitlinear" (scale multiplies)
    hf_packed_bitlinear/    same, linear_class "bitlinear" (weight_scale = bf16(1/m_b), divides)
    model-i2_s.gguf         arch "bitnet-b1.58", ternary tensors I2_S (type 36)
    model-tq2_0.gguf        arch "bitnet", ternary tensors TQ2_0 (type 35)
    model-tq1_0.gguf        arch "bitnet", ternary tensors TQ1_0 (type 34)
    tokens.txt              the reference token ids, comma separated (starts with BOS 509)
    logits_packed.npy       transformers, hf_packed (AutoBitLinear offline)        [n_tokens, vocab] f32
    logits_bitlinear.npy    transformers, hf_packed_bitlinear (BitLinear)           [n_tokens, vocab] f32
    logits_bf16.npy         transformers, hf_bf16 + online AutoBitLinear quant      [n_tokens, vocab] f32
    logits_gguf.npy         as logits_packed but with the F16-rounded embedding/head the GGUFs hold
    tokenizer_samples.json  [{text, ids}] from the HF tokenizer, add_special_tokens=True
    manifest.json           config, per-matrix scales, how each reference was produced, file hashes

All ternary files hold the SAME ternary weights Wq and the same per-matrix scale m_b:
    m   = max(mean(|W|), 1e-5) in float32          (transformers WeightQuant)
    Wq  = clamp(round(W * (1/m)), -1, 1)            (computed with that float32 m)
    m_b = bf16(m)                                   (so the HF bf16 weight_scale is exact;
                                                     fp16(m_b) == m_b is asserted for TQ*_0)

=====================================================================================
FINDING: Q/K row order in BitNet GGUFs and the RoPE pairing  (the C++ loader must know)
=====================================================================================
BitNet GGUFs store attn_q / attn_k rows in the HF order, NOT permuted, and llama.cpp and
bitnet.cpp apply NeoX-style RoPE (pairs (i, i + head_dim/2)) to them, exactly like HF's
rotate_half.  So there is NOTHING to undo: tern uses HF-order Q/K rows from every format
and applies NeoX RoPE.  Evidence (read from the public sources):

  * llama.cpp convert_hf_to_gguf.py, class BitnetModel (registered for "BitnetForCausalLM"
    and, in current versions, "BitNetForCausalLM"; model_arch = MODEL_ARCH.BITNET):
    modify_tensors only ternarizes q/k/v/o/gate/up/down (weight_quant, or unpacks the
    packed weight * weight_scale) and maps names.  It does NOT call LlamaModel.permute,
    which only LlamaModel.modify_tensors applies to q_proj/k_proj.
  * llama.cpp src/llama-model.cpp, llama_model_rope_type(): LLM_ARCH_BITNET is listed
    under "the pairs of head values are offset by n_rot/2" -> LLAMA_ROPE_TYPE_NEOX.
  * microsoft/BitNet (bitnet.cpp), the path used for bitnet-b1.58-2B-4T:
    utils/convert-helper-bitnet.py -> preprocess-huggingface-bitnet.py (quant_weight_fp16)
    -> utils/convert-ms-to-gguf-bitnet.py (ARCH = MODEL_ARCH.BITNET_25).  In
    convert_model_names() every permute_lazy(...q_proj/k_proj...) call is commented out,
    so Q/K are written unpermuted.  (Its older utils/convert-hf-to-gguf-bitnet.py: class
    BitnetModel also has no permute; only its LlamaModel permutes.)
  * bitnet.cpp's llama.cpp fork (Eddie-Wang1120/llama.cpp, src/llama.cpp, llama_rope_type()):
    LLM_ARCH_BITNET, LLM_ARCH_BITNET_25 and LLM_ARCH_BITNET_158 -> LLAMA_ROPE_TYPE_NEOX.
  * HF transformers models/bitnet/modeling_bitnet.py: apply_rotary_pos_emb with
    rotate_half (x[..., :d/2], x[..., d/2:]) and cos/sin = cat(freqs, freqs): NeoX pairing.

=====================================================================================
Block layouts written here (sources: llama.cpp ggml/src/ggml-common.h, ggml-quants.c;
bitnet.cpp src/ggml-bitnet-mad.cpp quantize_i2_s; transformers integrations/bitnet.py)
=====================================================================================
  HF packed (pack_weights): uint8 [out/4, in]; code = w + 1; unpacked row r lives in packed
      row r % (out/4), bits 2*(r // (out/4)) .. +1  (quarter 0 in bits 1:0).
  I2_S: the [out, in] matrix flattened row-major, 128-weight blocks of 32 bytes; byte b of a
      block holds weight b in bits 7:6, b+32 in 5:4, b+64 in 3:2, b+96 in 1:0; code w + 1;
      after the n/4 code bytes: one float32 scale (multiplies), then 28 zero bytes.
  TQ2_0 (block_tq2_0 = {uint8 qs[64]; ggml_half d}, 66 B / 256 weights along a row):
      element e of the block is in qs[32*(e/128) + e%32] at shift 2*((e%128)/32); code w + 1.
  TQ1_0 (block_tq1_0 = {uint8 qs[48]; uint8 qh[4]; ggml_half d}, 54 B / 256 weights):
      qs[m]      (m <32) holds elements m + 32*n,        n = 0..4 (e < 160)
      qs[32+m]   (m <16) holds elements 160 + m + 16*n,  n = 0..4 (160 <= e < 240)
      qh[j]      (j < 4) holds elements 240 + j + 4*n,   n = 0..3 (e >= 240)
      A byte packs its trits t_0..t_k (code w + 1) base 3 with t_0 most significant
      (qh: t0*81 + t1*27 + t2*9 + t3*3, i.e. one trailing 0 trit), then stores
      ceil(q * 256 / 243).  Trit n is decoded as (((q * 3^n) mod 256) * 3) >> 8.
      The TQ*_0 files put d = fp16(m_b) in EVERY block (llama.cpp's quantizer would put
      the block absmax, which is the same value except for all-zero blocks).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import re
import struct
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gguf_py as G  # noqa: E402

GENERATOR_VERSION = 1

# ----------------------------------------------------------------------------------
# Model shape (the brief) and seeds
# ----------------------------------------------------------------------------------
HIDDEN = 256
INTER = 512
N_LAYERS = 2
N_HEADS = 4
N_KV_HEADS = 2
HEAD_DIM = HIDDEN // N_HEADS  # 64
VOCAB = 512
CTX = 4096
ROPE_THETA = 500000.0
RMS_EPS = 1e-5
BOS_ID = 509
EOS_ID = 510
EOT_ID = 511
N_REGULAR_TOKENS = 509  # ids 0..508: 256 byte tokens + 253 merges

SEED = 20250417
N_REF_TOKENS = 40

SPECIAL_TOKENS = [(BOS_ID, "<|begin_of_text|>"), (EOS_ID, "<|end_of_text|>"), (EOT_ID, "<|eot_id|>")]

# microsoft/bitnet-b1.58-2B-4T tokenizer_config.json "chat_template" (BOS comes from
# add_bos_token at tokenization time, not from the template).
BITNET_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)

# LLaMA-3 pre-tokenizer regex (tokenizer.json of Meta-Llama-3 / bitnet-b1.58-2B-4T)
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# The same regex with \p{L} -> [A-Za-z], \p{N} -> [0-9]: identical on ASCII input.  Used to
# pre-tokenize the (ASCII) training text without the third-party `regex` module.
_ASCII_SPLIT_REGEX = re.compile(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}| ?[^\sA-Za-z0-9]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

LAYER_LINEARS = [
    # (HF suffix, GGUF suffix, shape [out, in])
    ("self_attn.q_proj", "attn_q", (N_HEADS * HEAD_DIM, HIDDEN)),
    ("self_attn.k_proj", "attn_k", (N_KV_HEADS * HEAD_DIM, HIDDEN)),
    ("self_attn.v_proj", "attn_v", (N_KV_HEADS * HEAD_DIM, HIDDEN)),
    ("self_attn.o_proj", "attn_output", (HIDDEN, N_HEADS * HEAD_DIM)),
    ("mlp.gate_proj", "ffn_gate", (INTER, HIDDEN)),
    ("mlp.up_proj", "ffn_up", (INTER, HIDDEN)),
    ("mlp.down_proj", "ffn_down", (HIDDEN, INTER)),
]
LAYER_NORMS = [
    ("input_layernorm", "attn_norm", HIDDEN),
    ("self_attn.attn_sub_norm", "attn_sub_norm", HIDDEN),
    ("post_attention_layernorm", "ffn_norm", HIDDEN),
    ("mlp.ffn_sub_norm", "ffn_sub_norm", INTER),
]


def linear_names() -> list[str]:
    return [f"model.layers.{i}.{s}.weight" for i in range(N_LAYERS) for s, _, _ in LAYER_LINEARS]


def hf_to_gguf_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name)
    assert m, name
    i, suffix = int(m.group(1)), m.group(2)
    for hf, gg, _ in LAYER_LINEARS:
        if suffix == hf:
            return f"blk.{i}.{gg}.weight"
    for hf, gg, _ in LAYER_NORMS:
        if suffix == hf:
            return f"blk.{i}.{gg}.weight"
    raise KeyError(name)


# ==================================================================================
# Float helpers (bf16 / fp16), numpy only
# ==================================================================================


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 -> bfloat16 (round to nearest even, like torch's .to(bfloat16)); returns uint16 bits."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    assert np.all(np.isfinite(x))
    b = x.view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return b.astype(np.uint16)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_bf16(x: np.ndarray) -> np.ndarray:
    return bf16_bits_to_f32(f32_to_bf16_bits(x))


def fp16_bytes(x) -> bytes:
    return np.asarray(x, dtype=np.float32).astype("<f2").tobytes()


# ==================================================================================
# Ternary packers / unpackers (vectorized; used for the fixtures)
# ==================================================================================


def pack_hf(q: np.ndarray) -> np.ndarray:
    """transformers integrations/bitnet.py pack_weights: uint8 [out/4, in], quarter i of the rows in bits 2i."""
    out, _ = q.shape
    assert out % 4 == 0
    r = out // 4
    codes = (q.astype(np.int16) + 1).astype(np.uint8)
    packed = np.zeros((r, q.shape[1]), dtype=np.uint8)
    for i in range(4):
        packed |= codes[i * r : (i + 1) * r] << (2 * i)
    return packed


def unpack_hf(packed: np.ndarray) -> np.ndarray:
    """transformers unpack_weights: returns int8 ternary [4*rows, in]."""
    parts = [((packed >> (2 * i)) & 3).astype(np.int8) - 1 for i in range(4)]
    return np.concatenate(parts, axis=0)


def pack_i2s(q: np.ndarray, scale: float) -> bytes:
    """bitnet.cpp quantize_i2_s (x86, QK_I2 = 128) layout plus float32 scale and 28 pad bytes."""
    flat = (q.reshape(-1).astype(np.int16) + 1).astype(np.uint8)
    assert flat.size % 128 == 0
    g = flat.reshape(-1, 4, 32)  # [block, group (bit pair), position]
    b = (g[:, 0] << 6) | (g[:, 1] << 4) | (g[:, 2] << 2) | g[:, 3]
    return b.reshape(-1).tobytes() + struct.pack("<f", float(scale)) + bytes(28)


def unpack_i2s(data: bytes, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    n = shape[0] * shape[1]
    assert len(data) == n // 4 + 32
    b = np.frombuffer(data, dtype=np.uint8, count=n // 4).reshape(-1, 1, 32)
    shifts = np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 4, 1)
    codes = (b >> shifts) & 3  # [block, group, pos]
    q = codes.reshape(shape).astype(np.int8) - 1
    (scale,) = struct.unpack_from("<f", data, n // 4)
    assert data[n // 4 + 4 :] == bytes(28)
    return q, scale


def pack_tq2_0(q: np.ndarray, d: float) -> bytes:
    """llama.cpp quantize_row_tq2_0_ref layout, d = fp16(d) in every block."""
    out, inn = q.shape
    assert inn % 256 == 0
    c = (q.astype(np.int16) + 1).astype(np.uint8).reshape(-1, 2, 4, 32)  # [blk, half, n, m]
    qs = c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)  # [blk, half, m]
    qs = qs.reshape(-1, 64)
    dd = np.frombuffer(fp16_bytes(np.full(qs.shape[0], d, np.float32)), dtype=np.uint8).reshape(-1, 2)
    return np.concatenate([qs, dd], axis=1).tobytes()


def unpack_tq2_0(data: bytes, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    blk = np.frombuffer(data, dtype=np.uint8).reshape(-1, 66)
    qs = blk[:, :64].reshape(-1, 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    codes = (qs >> shifts) & 3  # [blk, half, n, m]
    q = codes.reshape(shape).astype(np.int8) - 1
    d = blk[:, 64:66].copy().view("<f2").reshape(-1).astype(np.float32)
    return q, d


_POW3 = np.array([1, 3, 9, 27, 81, 243], dtype=np.uint32)


def _tq1_enc(v: np.ndarray) -> np.ndarray:
    # ceiling division (243 == 3^5): ggml-quants.c quantize_row_tq1_0_ref
    return ((v.astype(np.int64) * 256 + (243 - 1)) // 243).astype(np.uint8)


def _tq1_trit(byte: np.ndarray, n: int) -> np.ndarray:
    # ggml-quants.c dequantize_row_tq1_0: q = byte * pow3[n] (uint8 wrap); xi = (q * 3) >> 8
    q = (byte.astype(np.uint32) * _POW3[n]) & 0xFF
    return ((q * 3) >> 8).astype(np.int16)


def pack_tq1_0(q: np.ndarray, d: float) -> bytes:
    """llama.cpp quantize_row_tq1_0_ref layout, d = fp16(d) in every block."""
    out, inn = q.shape
    assert inn % 256 == 0
    c = (q.astype(np.int64) + 1).reshape(-1, 256)
    nb = c.shape[0]
    w5 = np.array([81, 27, 9, 3, 1], dtype=np.int64).reshape(1, 5, 1)
    w4 = np.array([27, 9, 3, 1], dtype=np.int64).reshape(1, 4, 1)
    qa = (c[:, :160].reshape(nb, 5, 32) * w5).sum(axis=1)  # element m + 32n
    qb = (c[:, 160:240].reshape(nb, 5, 16) * w5).sum(axis=1)  # element 160 + m + 16n
    qh = (c[:, 240:256].reshape(nb, 4, 4) * w4).sum(axis=1) * 3  # element 240 + j + 4n
    dd = np.frombuffer(fp16_bytes(np.full(nb, d, np.float32)), dtype=np.uint8).reshape(-1, 2)
    return np.concatenate([_tq1_enc(qa), _tq1_enc(qb), _tq1_enc(qh), dd], axis=1).tobytes()


def unpack_tq1_0(data: bytes, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    blk = np.frombuffer(data, dtype=np.uint8).reshape(-1, 54)
    nb = blk.shape[0]
    a = np.stack([_tq1_trit(blk[:, 0:32], n) for n in range(5)], axis=1)  # [nb, 5, 32]
    b = np.stack([_tq1_trit(blk[:, 32:48], n) for n in range(5)], axis=1)  # [nb, 5, 16]
    h = np.stack([_tq1_trit(blk[:, 48:52], n) for n in range(4)], axis=1)  # [nb, 4, 4]
    codes = np.concatenate([a.reshape(nb, 160), b.reshape(nb, 80), h.reshape(nb, 16)], axis=1)
    q = codes.reshape(shape).astype(np.int8) - 1
    d = blk[:, 52:54].copy().view("<f2").reshape(-1).astype(np.float32)
    return q, d


# ----------------------------------------------------------------------------------
# Literal (slow) transliterations of the reference C / python code, for the self-test.
# They are written independently of the vectorized packers above on purpose.
# ----------------------------------------------------------------------------------


def _lroundf(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def _ref_pack_weights(q: np.ndarray) -> np.ndarray:
    """transformers pack_weights, loop over the 4 row slices."""
    rows = q.shape[0]
    row_dim = (rows + 3) // 4
    packed = np.zeros((row_dim, q.shape[1]), dtype=np.uint8)
    unpacked = (q.astype(np.int16) + 1).astype(np.uint8)
    it = min(4, rows // row_dim + 1)
    for i in range(it):
        start = i * row_dim
        end = min(start + row_dim, rows)
        packed[: end - start] |= (unpacked[start:end] << (2 * i)).astype(np.uint8)
    return packed


def _ref_quantize_i2_s(src: np.ndarray) -> bytes:
    """bitnet.cpp src/ggml-bitnet-mad.cpp quantize_i2_s (x86 path), element loop."""
    n = src.size
    x = src.reshape(-1)
    mx = max(abs(float(v)) for v in x)
    q8 = [1 if abs(float(v)) < 1e-6 else (2 if float(v) * mx > 0 else 0) for v in x]
    out = bytearray(n // 4)
    for i in range(n // 128):
        for j in range(128):
            group_idx, group_pos = j // 32, j % 32
            out[i * 32 + group_pos] |= (q8[i * 128 + j] << (6 - 2 * group_idx)) & 0xFF
    return bytes(out) + struct.pack("<f", mx) + bytes(28)


def _ref_quantize_row_tq2_0(x: np.ndarray) -> bytes:
    """ggml-quants.c quantize_row_tq2_0_ref, literal loops."""
    out = bytearray()
    for blk in x.reshape(-1, 256):
        amax = max(abs(float(v)) for v in blk)
        d = amax
        idv = 1.0 / d if d else 0.0
        qs = bytearray(64)
        off = 0
        for j in range(0, 64, 32):
            for m in range(32):
                q = 0
                for n in range(4):
                    xi = _lroundf(float(blk[off + m + n * 32]) * idv) + 1
                    q += (xi & 3) << (2 * n)
                qs[j + m] = q
            off += 128
        out += qs + fp16_bytes(d)
    return bytes(out)


def _ref_quantize_row_tq1_0(x: np.ndarray) -> bytes:
    """ggml-quants.c quantize_row_tq1_0_ref, literal loops (qs 48 = 32 + 16, qh 4)."""
    out = bytearray()
    for blk in x.reshape(-1, 256):
        amax = max(abs(float(v)) for v in blk)
        d = amax
        idv = 1.0 / d if d else 0.0
        qs = bytearray(48)
        qh = bytearray(4)
        off = 0
        for j in range(0, 32, 32):  # sizeof(qs) - sizeof(qs) % 32 == 32
            for m in range(32):
                q = 0
                for n in range(5):
                    q = q * 3 + (_lroundf(float(blk[off + m + n * 32]) * idv) + 1)
                qs[j + m] = (q * 256 + 242) // 243
            off += 5 * 32
        for j in range(32, 48, 16):
            for m in range(16):
                q = 0
                for n in range(5):
                    q = q * 3 + (_lroundf(float(blk[off + m + n * 16]) * idv) + 1)
                qs[j + m] = (q * 256 + 242) // 243
            off += 5 * 16
        for j in range(4):
            q = 0
            for m in range(4):
                q = q * 3 + (_lroundf(float(blk[off + j + m * 4]) * idv) + 1)
            q *= 3
            qh[j] = (q * 256 + 242) // 243
        out += qs + qh + fp16_bytes(d)
    return bytes(out)


def _ref_dequantize_row_tq1_0(data: bytes) -> np.ndarray:
    """ggml-quants.c dequantize_row_tq1_0, literal loops (returns codes - 1, ignoring d)."""
    pow3 = [1, 3, 9, 27, 81, 243]
    y = []
    for o in range(0, len(data), 54):
        qs, qh = data[o : o + 48], data[o + 48 : o + 52]
        for n in range(5):
            for m in range(32):
                q = (qs[m] * pow3[n]) & 0xFF
                y.append(((q * 3) >> 8) - 1)
        for n in range(5):
            for m in range(16):
                q = (qs[32 + m] * pow3[n]) & 0xFF
                y.append(((q * 3) >> 8) - 1)
        for n in range(4):
            for j in range(4):
                q = (qh[j] * pow3[n]) & 0xFF
                y.append(((q * 3) >> 8) - 1)
    return np.array(y, dtype=np.int8)


# ==================================================================================
# Minimal safetensors writer / reader (bf16 written as raw uint16 bits)
# ==================================================================================

_ST_DTYPES = {"BF16": 2, "F16": 2, "F32": 4, "U8": 1, "I8": 1}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    """tensors: name -> (safetensors dtype, shape, raw little-endian bytes). Names sorted."""
    header: dict = {"__metadata__": {"format": "pt"}}
    blobs = []
    off = 0
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        n = 1
        for s in shape:
            n *= s
        assert len(raw) == n * _ST_DTYPES[dtype], name
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)  # the safetensors library pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def read_safetensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack_from("<Q", buf, 0)
    header = json.loads(buf[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = (info["dtype"], tuple(info["shape"]), buf[base + a : base + b])
    return out


# ==================================================================================
# Tokenizer: tiny byte-level BPE in the LLaMA-3 style
# ==================================================================================

TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. The dog did not care; it was asleep in the sun.
Ternary networks store every weight as one of three values: minus one, zero, or plus one.
A language model reads text as tokens, and each token is a small piece of a word or a whole word.
When the model answers a question, it predicts the next token, then the next, and so on until it stops.
In the beginning there were only bytes, and the bytes were merged into pairs, and the pairs into words.
She said that they would meet again at the station at half past seven in the evening.
Numbers like 2024, 1999 and 3.14159 are split into groups of at most three digits.
It's not what you look at that matters, it's what you see. They're here, we've seen them, I'm sure.
Good software is tested often: small tests, fast tests, and tests that fail when something is wrong.
The weather was cold and the wind was strong, so the children stayed inside and read their books.
Every morning the baker makes fresh bread, and the smell of it fills the whole street before dawn.
If you want to understand how a machine works, take it apart carefully and put it back together.
The river runs through the valley, past the old mill and under the stone bridge near the church.
Questions and answers, prompts and replies: the assistant listens to the user and then responds.
This is the end of the training text, which is short but long enough to learn a few hundred merges.
"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte -> printable unicode char table (as in tokenizers' ByteLevel)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_TO_UNI = bytes_to_unicode()
UNI_TO_BYTE = {v: k for k, v in BYTE_TO_UNI.items()}


def _split_regex():
    """The real LLaMA-3 regex if the `regex` module exists, else the ASCII equivalent."""
    try:
        import regex  # type: ignore

        return regex.compile(LLAMA3_SPLIT_REGEX), True
    except ImportError:
        return _ASCII_SPLIT_REGEX, False


def pretokenize(text: str) -> list[str]:
    rx, full = _split_regex()
    if not full and not text.isascii():
        raise ValueError("non-ASCII text needs the `regex` module")
    return rx.findall(text)


def train_bpe(text: str, n_vocab: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Deterministic BPE trainer. Ids 0..255 are the byte tokens in byte order; merges fill up to n_vocab."""
    assert text.isascii()
    vocab = {BYTE_TO_UNI[b]: b for b in range(256)}
    words = Counter(tuple(BYTE_TO_UNI[b] for b in w.encode("utf-8")) for w in _ASCII_SPLIT_REGEX.findall(text))
    merges: list[tuple[str, str]] = []
    while len(vocab) < n_vocab:
        pairs: Counter = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            raise RuntimeError(f"training text too short: only {len(vocab)} tokens")
        best_count = max(pairs.values())
        best = min(p for p, c in pairs.items() if c == best_count)  # tie-break: lexicographic
        merges.append(best)
        new = best[0] + best[1]
        if new not in vocab:
            vocab[new] = len(vocab)
        nw: Counter = Counter()
        for w, c in words.items():
            out = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            nw[tuple(out)] += c
        words = nw
    return vocab, merges


class PyBPE:
    """Pure-python encoder with HF tokenizers' semantics for this tokenizer (cross-check only)."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        self.vocab = vocab
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.special = {s: i for i, s in SPECIAL_TOKENS}

    def _word(self, piece: str) -> list[int]:
        sym = "".join(BYTE_TO_UNI[b] for b in piece.encode("utf-8"))
        if sym in self.vocab:  # ignore_merges = true
            return [self.vocab[sym]]
        parts = list(sym)
        while len(parts) > 1:
            # merge the lowest-ranked adjacent pair (all its non-overlapping occurrences, left to right)
            ranked = [(self.ranks.get(pr, 1 << 30), pr) for pr in zip(parts, parts[1:])]
            r, pair = min(ranked, key=lambda t: t[0])
            if r == 1 << 30:
                break
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    out.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            parts = out
        return [self.vocab[p] for p in parts]

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [BOS_ID] if add_bos else []
        pat = "(" + "|".join(re.escape(s) for s in self.special) + ")"
        for seg in re.split(pat, text):
            if not seg:
                continue
            if seg in self.special:
                ids.append(self.special[seg])
                continue
            for piece in pretokenize(seg):
                ids.extend(self._word(piece))
        return ids

    def decode(self, ids: list[int]) -> str:
        inv = {v: k for k, v in self.vocab.items()}
        out = bytearray()
        for i in ids:
            if i in inv:
                out += bytes(UNI_TO_BYTE[ch] for ch in inv[i])
            else:
                out += dict(SPECIAL_TOKENS)[i].encode("utf-8")
        return out.decode("utf-8", errors="replace")


def build_tokenizer():
    vocab, merges = train_bpe(TRAINING_TEXT, N_REGULAR_TOKENS)
    assert len(vocab) == N_REGULAR_TOKENS and sorted(vocab.values()) == list(range(N_REGULAR_TOKENS))
    return vocab, merges


def tokenizer_json(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict:
    """A tokenizer.json shaped like Meta-Llama-3's (and bitnet-b1.58-2B-4T's)."""
    added = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, s in SPECIAL_TOKENS
    ]
    bos = "<|begin_of_text|>"
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT_REGEX}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "Sequence",
            "processors": [
                {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
                {
                    "type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [
                        {"SpecialToken": {"id": bos, "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": bos, "type_id": 1}},
                        {"Sequence": {"id": "B", "type_id": 1}},
                    ],
                    "special_tokens": {bos: {"id": bos, "ids": [BOS_ID], "tokens": [bos]}},
                },
            ],
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
            "merges": [f"{a} {b}" for a, b in merges],
        },
    }


def tokenizer_config_json() -> dict:
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
            for i, s in SPECIAL_TOKENS
        },
        "bos_token": "<|begin_of_text|>",
        "chat_template": BITNET_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|end_of_text|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": CTX,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def render_chat_manually(messages: list[dict], add_generation_prompt: bool) -> str:
    """What BITNET_CHAT_TEMPLATE renders (fallback when jinja/transformers is unavailable)."""
    s = "".join(m["role"].capitalize() + ": " + m["content"].strip() + "<|eot_id|>" for m in messages)
    return s + ("Assistant: " if add_generation_prompt else "")


SAMPLE_TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces,   runs of   spaces and trailing   ",
    "line one\nline two\n\n\nline five\r\nwindows\ttab",
    "numbers: 7 42 123 4567 1234567 3.14159 and 2024",
    "I don't think they'll say it's theirs; we've I'M sure",
    "emoji 😀 and accents: café, naïve, Zürich; 日本語",
    "User: Hey, are you conscious?<|eot_id|>Assistant: ",
    "<|begin_of_text|>text that already starts with BOS<|end_of_text|>",
    "",
]
CHAT_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "  Hey, are you conscious?  "},
    {"role": "assistant", "content": "I am a small test model."},
    {"role": "user", "content": "Say hi."},
]


# ==================================================================================
# Weights (numpy, seeded) and ternarization
# ==================================================================================


def make_master_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """All HF parameter names -> float32 arrays already rounded to bf16 (so bf16 storage is exact)."""
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}
    # Small embeddings (std 0.05) so the layers, not the input token's own embedding row,
    # decide each position's logits and argmax: with N(0, 1) every argmax was the input id.
    w["model.embed_tokens.weight"] = rng.standard_normal((VOCAB, HIDDEN)) * 0.05
    for i in range(N_LAYERS):
        for hf, _, n in LAYER_NORMS:
            w[f"model.layers.{i}.{hf}.weight"] = 1.0 + 0.2 * rng.standard_normal(n)
        for hf, _, shape in LAYER_LINEARS:
            mult = rng.uniform(0.5, 2.0)  # so every matrix has its own absmean
            w[f"model.layers.{i}.{hf}.weight"] = rng.standard_normal(shape) * 0.02 * mult
    w["model.norm.weight"] = 1.0 + 0.2 * rng.standard_normal(HIDDEN)
    return {k: round_bf16(v.astype(np.float32)) for k, v in w.items()}


def ternarize_numpy(W: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """numpy version of transformers WeightQuant (used by --selftest; main path uses torch)."""
    m = np.float32(max(np.mean(np.abs(W), dtype=np.float32), np.float32(1e-5)))
    s = np.float32(1.0) / m
    q = np.clip(np.round(W * s), -1, 1).astype(np.int8)
    return q, m


def ternarize_torch(W: np.ndarray):
    """Exactly transformers WeightQuant.forward's arithmetic (float32, eager)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(W, dtype=np.float32))
    m = x.abs().mean().clamp_(min=1e-5)
    s = 1.0 / m
    q = (x * s).round().clamp(-1, 1)
    return q.to(torch.int8).numpy(), np.float32(m.item())


def ternarize_all(master: dict[str, np.ndarray], use_torch: bool) -> dict[str, dict]:
    """name -> {q: int8 [out,in], m: f32 mean|W|, m_b: f32 value of bf16(m), m_b_bits, inv_b: bf16(1/m_b)}."""
    out = {}
    for name in linear_names():
        q, m = (ternarize_torch if use_torch else ternarize_numpy)(master[name])
        m_b_bits = f32_to_bf16_bits(np.array([m], np.float32))
        m_b = bf16_bits_to_f32(m_b_bits)[0]
        inv = np.float32(1.0) / m_b
        inv_b_bits = f32_to_bf16_bits(np.array([inv], np.float32))
        out[name] = {
            "q": q,
            "m": np.float32(m),
            "m_b": np.float32(m_b),
            "m_b_bits": int(m_b_bits[0]),
            "inv_b": np.float32(bf16_bits_to_f32(inv_b_bits)[0]),
            "inv_b_bits": int(inv_b_bits[0]),
        }
        assert np.float32(np.float16(m_b)) == m_b, f"{name}: fp16(m_b) != m_b"
    return out


# ==================================================================================
# Writers: HF safetensors dicts and GGUF files
# ==================================================================================


def bf16_entry(x: np.ndarray):
    return ("BF16", tuple(x.shape), f32_to_bf16_bits(x).astype("<u2").tobytes())


def hf_master_tensors(master):
    return {k: bf16_entry(v) for k, v in master.items()}


def hf_packed_tensors(master, tern, linear_class: str):
    t = {}
    for k, v in master.items():
        if k in tern:
            p = pack_hf(tern[k]["q"])
            t[k] = ("U8", tuple(p.shape), p.tobytes())
            bits = tern[k]["m_b_bits"] if linear_class == "autobitlinear" else tern[k]["inv_b_bits"]
            t[k + "_scale"] = ("BF16", (1,), struct.pack("<H", bits))
        else:
            t[k] = bf16_entry(v)
    return t


def gguf_tokenizer_kv(w: G.GGUFWriter, vocab, merges):
    inv = {i: s for s, i in vocab.items()}
    tokens = [inv[i] for i in range(N_REGULAR_TOKENS)] + [s for _, s in SPECIAL_TOKENS]
    types = [1] * N_REGULAR_TOKENS + [3] * len(SPECIAL_TOKENS)  # 1 = NORMAL, 3 = CONTROL (llama_token_type)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", G.GGUF_TYPE_STRING, tokens)
    w.add_array("tokenizer.ggml.token_type", G.GGUF_TYPE_INT32, types)
    w.add_array("tokenizer.ggml.merges", G.GGUF_TYPE_STRING, [f"{a} {b}" for a, b in merges])
    w.add_uint32("tokenizer.ggml.bos_token_id", BOS_ID)
    w.add_uint32("tokenizer.ggml.eos_token_id", EOS_ID)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_string("tokenizer.chat_template", BITNET_CHAT_TEMPLATE)


def build_gguf(arch: str, ttype: int, master, tern, vocab, merges) -> G.GGUFWriter:
    w = G.GGUFWriter()
    w.add_string("general.architecture", arch)
    w.add_string("general.name", "tern-fixture-bitnet-tiny")
    w.add_uint32(f"{arch}.context_length", CTX)
    w.add_uint32(f"{arch}.embedding_length", HIDDEN)
    w.add_uint32(f"{arch}.block_count", N_LAYERS)
    w.add_uint32(f"{arch}.feed_forward_length", INTER)
    w.add_uint32(f"{arch}.attention.head_count", N_HEADS)
    w.add_uint32(f"{arch}.attention.head_count_kv", N_KV_HEADS)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", RMS_EPS)
    w.add_float32(f"{arch}.rope.freq_base", ROPE_THETA)
    w.add_uint32(f"{arch}.rope.dimension_count", HEAD_DIM)
    w.add_uint32(f"{arch}.vocab_size", VOCAB)
    gguf_tokenizer_kv(w, vocab, merges)

    emb = master["model.embed_tokens.weight"]
    w.add_tensor("token_embd.weight", (HIDDEN, VOCAB), G.GGML_TYPE_F16, np.asarray(emb, "<f2"))
    for i in range(N_LAYERS):
        order = ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "self_attn.attn_sub_norm", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
                 "mlp.down_proj", "mlp.ffn_sub_norm"]
        for suffix in order:
            name = f"model.layers.{i}.{suffix}.weight"
            gname = hf_to_gguf_name(name)
            if name in tern:
                q, m_b = tern[name]["q"], float(tern[name]["m_b"])
                ne = (q.shape[1], q.shape[0])  # ggml order: ne[0] = in (columns), ne[1] = out (rows)
                # NOTE: Q/K rows are NOT permuted (see FINDING in the module docstring).
                if ttype == G.GGML_TYPE_I2_S:
                    data = pack_i2s(q, m_b)
                elif ttype == G.GGML_TYPE_TQ2_0:
                    data = pack_tq2_0(q, m_b)
                elif ttype == G.GGML_TYPE_TQ1_0:
                    data = pack_tq1_0(q, m_b)
                else:
                    raise ValueError(ttype)
                w.add_tensor(gname, ne, ttype, data)
            else:
                v = master[name]
                w.add_tensor(gname, (v.shape[0],), G.GGML_TYPE_F32, np.asarray(v, "<f4"))
    v = master["model.norm.weight"]
    w.add_tensor("output_norm.weight", (v.shape[0],), G.GGML_TYPE_F32, np.asarray(v, "<f4"))
    return w


GGUF_FILES = [
    ("model-i2_s.gguf", "bitnet-b1.58", G.GGML_TYPE_I2_S),
    ("model-tq2_0.gguf", "bitnet", G.GGML_TYPE_TQ2_0),
    ("model-tq1_0.gguf", "bitnet", G.GGML_TYPE_TQ1_0),
]


def load_gguf_model(path: str) -> dict:
    """Decode one of our GGUFs back into HF names: float arrays and (q, scale) for ternary ones."""
    f = G.read_gguf(path)
    arch = f.value("general.architecture")
    out = {"arch": arch, "kv": {k: f.value(k) for k in f.kv}, "lin": {}, "float": {}}
    inv_names = {hf_to_gguf_name(n): n for n in ["model.embed_tokens.weight", "model.norm.weight"]}
    for i in range(N_LAYERS):
        for hf, _, _ in LAYER_LINEARS + [(a, b, c) for a, b, c in LAYER_NORMS]:
            n = f"model.layers.{i}.{hf}.weight"
            inv_names[hf_to_gguf_name(n)] = n
    for gname, t in f.tensors.items():
        name = inv_names[gname]
        if t.ggml_type == G.GGML_TYPE_F32:
            out["float"][name] = np.frombuffer(t.data, "<f4").reshape(tuple(reversed(t.ne))).astype(np.float32)
        elif t.ggml_type == G.GGML_TYPE_F16:
            out["float"][name] = np.frombuffer(t.data, "<f2").reshape(tuple(reversed(t.ne))).astype(np.float32)
        else:
            shape = (t.ne[1], t.ne[0])
            if t.ggml_type == G.GGML_TYPE_I2_S:
                q, s = unpack_i2s(t.data, shape)
            else:
                q, d = (unpack_tq2_0 if t.ggml_type == G.GGML_TYPE_TQ2_0 else unpack_tq1_0)(t.data, shape)
                assert np.all(d == d[0]), f"{gname}: block scales differ"
                s = float(d[0])
            out["lin"][name] = (q, np.float32(s))
    return out


# ==================================================================================
# Independent numpy forward pass (float64) - cross-checks transformers and the GGUFs
# ==================================================================================


def np_bitlinear(x: np.ndarray, q: np.ndarray, scale: float) -> np.ndarray:
    s = 127.0 / np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-5)
    xq = np.clip(np.round(x * s), -128, 127)
    return (xq @ q.T.astype(np.float64)) / s * float(scale)


def np_rmsnorm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS) * w.astype(np.float64)


def np_forward(tokens: list[int], floats: dict[str, np.ndarray], lin: dict[str, tuple]) -> np.ndarray:
    """BitNet b1.58 forward (BITNET_FACTS.md): NeoX RoPE on HF-order Q/K, relu^2 FFN, sub-norms, tied head."""
    emb = floats["model.embed_tokens.weight"].astype(np.float64)
    x = emb[np.asarray(tokens)]
    T = len(tokens)
    half = HEAD_DIM // 2
    inv_freq = 1.0 / (ROPE_THETA ** (np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM))
    ang = np.arange(T, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(v):  # [T, H, D], pairs (i, i + D/2) as HF rotate_half
        a, b = v[..., :half], v[..., half:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    mask = np.triu(np.full((T, T), -np.inf), k=1)
    rep = N_HEADS // N_KV_HEADS
    for i in range(N_LAYERS):
        p = f"model.layers.{i}."
        h = np_rmsnorm(x, floats[p + "input_layernorm.weight"])
        q = rope(np_bitlinear(h, *lin[p + "self_attn.q_proj.weight"]).reshape(T, N_HEADS, HEAD_DIM))
        k = rope(np_bitlinear(h, *lin[p + "self_attn.k_proj.weight"]).reshape(T, N_KV_HEADS, HEAD_DIM))
        v = np_bitlinear(h, *lin[p + "self_attn.v_proj.weight"]).reshape(T, N_KV_HEADS, HEAD_DIM)
        heads = []
        for hh in range(N_HEADS):
            kv = hh // rep  # repeat_kv: kv head j serves query heads j*rep .. j*rep+rep-1
            sc = q[:, hh] @ k[:, kv].T / math.sqrt(HEAD_DIM) + mask
            sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
            sc /= sc.sum(axis=-1, keepdims=True)
            heads.append(sc @ v[:, kv])
        a = np_rmsnorm(np.concatenate(heads, axis=-1), floats[p + "self_attn.attn_sub_norm.weight"])
        x = x + np_bitlinear(a, *lin[p + "self_attn.o_proj.weight"])
        h = np_rmsnorm(x, floats[p + "post_attention_layernorm.weight"])
        g = np_bitlinear(h, *lin[p + "mlp.gate_proj.weight"])
        u = np_bitlinear(h, *lin[p + "mlp.up_proj.weight"])
        f = np_rmsnorm(np.maximum(g, 0.0) ** 2 * u, floats[p + "mlp.ffn_sub_norm.weight"])
        x = x + np_bitlinear(f, *lin[p + "mlp.down_proj.weight"])
    x = np_rmsnorm(x, floats["model.norm.weight"])
    return x @ emb.T


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def reference_tokens(seed: int = SEED) -> list[int]:
    rng = np.random.default_rng(seed + 1)
    return [BOS_ID] + [int(t) for t in rng.integers(0, N_REGULAR_TOKENS, size=N_REF_TOKENS - 1)]


# ==================================================================================
# transformers / torch part
# ==================================================================================


class Notes:
    def __init__(self):
        self.items: list[str] = []

    def __call__(self, msg: str):
        print("  note:", msg)
        self.items.append(msg)


def import_torch_stack():
    # transformers' BitNet code decorates unpack_weights / ActQuant / WeightQuant with
    # @torch.compile.  Disabling dynamo makes them run eagerly: exact float32 arithmetic,
    # no dependency on a C++ compiler / triton, and no reduction-order surprises.
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    import torch

    try:
        import torch._dynamo

        torch._dynamo.config.disable = True
    except Exception:
        pass
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    import transformers

    return torch, transformers


def _from_pretrained(cls, path, torch, notes: Notes, **kw):
    """transformers 5.x takes dtype=, 4.x torch_dtype=; also try without attn_implementation."""
    attempts = [
        dict(dtype=torch.float32, attn_implementation="eager"),
        dict(torch_dtype=torch.float32, attn_implementation="eager"),
        dict(dtype=torch.float32),
        dict(torch_dtype=torch.float32),
    ]
    last = None
    for a in attempts:
        try:
            m = cls.from_pretrained(str(path), **a, **kw)
            if a is not attempts[0]:
                notes(f"from_pretrained({Path(path).name}) needed kwargs {sorted(a)}")
            return m
        except TypeError as e:  # unknown kwarg
            last = e
    raise last  # type: ignore[misc]


def _set_eager(model):
    for fn in (lambda: model.set_attn_implementation("eager"), lambda: setattr(model.config, "_attn_implementation", "eager")):
        try:
            fn()
            return
        except Exception:
            continue


def make_config(transformers, quant: dict | None = None):
    kw = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS, num_key_value_heads=N_KV_HEADS, hidden_act="relu2",
        max_position_embeddings=CTX, rms_norm_eps=RMS_EPS, rope_theta=ROPE_THETA, tie_word_embeddings=True,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=None, attention_bias=False,
        attention_dropout=0.0, initializer_range=0.02, use_cache=True,
    )
    cfg = transformers.BitNetConfig(**kw)
    if quant is not None:
        cfg.quantization_config = quant
    return cfg


def expected_inv_freq():
    return 1.0 / (ROPE_THETA ** (np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM))


def check_model_structure(model, torch, notes: Notes):
    """Assert the module names BITNET_FACTS / modeling_bitnet.py describe exist, and the RoPE theta took."""
    names = ["model.embed_tokens", "model.norm", "lm_head"]
    for i in range(N_LAYERS):
        names += [f"model.layers.{i}.{s}" for s, _, _ in LAYER_LINEARS]
        names += [f"model.layers.{i}.{s}" for s, _, _ in LAYER_NORMS]
    for n in names:
        model.get_submodule(n)  # raises AttributeError if missing
    rot = model.get_submodule("model.rotary_emb")
    inv = rot.inv_freq.detach().double().cpu().numpy()
    if not np.allclose(inv, expected_inv_freq(), rtol=1e-5, atol=0):
        raise AssertionError(f"rotary inv_freq does not match theta={ROPE_THETA}: {inv[:4]}")
    assert model.config.hidden_act == "relu2"


def fix_config_json(path: Path, notes: Notes, quant: dict | None = None):
    """Keep the top-level keys the real 2B-4T config.json has (rope_theta), add quantization_config."""
    cfg = json.loads(path.read_text())
    if "rope_theta" not in cfg:
        cfg["rope_theta"] = ROPE_THETA
        notes("config.json had no top-level rope_theta (transformers 5 writes rope_parameters); added it")
    cfg.pop("quantization_config", None)
    if quant is not None:
        cfg["quantization_config"] = quant
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return cfg


def write_hf_dirs(out: Path, master, tern, vocab, merges, torch, transformers, notes: Notes) -> dict:
    info = {}
    cfg = make_config(transformers)
    model = transformers.BitNetForCausalLM(cfg).to(torch.float32)
    _set_eager(model)
    check_model_structure(model, torch, notes)
    params = dict(model.named_parameters())
    if set(params) != set(master):
        raise AssertionError(f"parameter names differ: extra {set(params) - set(master)}, missing {set(master) - set(params)}")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(torch.from_numpy(master[k]))
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    if not tied:
        notes("lm_head was not tied to embed_tokens after construction; tying by copy")
        with torch.no_grad():
            model.lm_head.weight.copy_(model.model.embed_tokens.weight)
    # torch's bf16 rounding must agree with ours (both round-to-nearest-even)
    for k, v in master.items():
        t = torch.from_numpy(v).to(torch.bfloat16).to(torch.float32).numpy()
        assert np.array_equal(t, v), f"{k}: weights are not exactly bf16"

    d = out / "hf_bf16"
    d.mkdir(parents=True, exist_ok=True)
    mb = copy.deepcopy(model).to(torch.bfloat16)
    mb.save_pretrained(str(d))
    st_files = sorted(p.name for p in d.glob("*.safetensors"))
    if st_files != ["model.safetensors"]:
        notes(f"save_pretrained wrote {st_files}; replacing with one model.safetensors")
        for p in d.glob("*.safetensors*"):
            p.unlink()
    else:
        saved = read_safetensors(d / "model.safetensors")
        if "lm_head.weight" in saved:
            notes("save_pretrained wrote lm_head.weight although tied; deleted")
        mine = hf_master_tensors(master)
        diff = [k for k in mine if k not in saved or saved[k] != mine[k]]
        if diff:
            notes(f"save_pretrained tensors differ from the generated ones: {diff[:4]}")
    # Rewrite the weights file ourselves: exact bf16 bits, no lm_head, canonical order.
    write_safetensors(d / "model.safetensors", hf_master_tensors(master))
    cfg_json = fix_config_json(d / "config.json", notes)
    info["hf_bf16_config"] = cfg_json

    tok_json = tokenizer_json(vocab, merges)
    tok_cfg = tokenizer_config_json()
    aux = {}
    for p in d.iterdir():
        if p.name not in ("model.safetensors", "config.json") and p.is_file():
            aux[p.name] = p.read_bytes()
    aux["tokenizer.json"] = (json.dumps(tok_json, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    aux["tokenizer_config.json"] = (json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    aux["special_tokens_map.json"] = (json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, indent=2) + "\n").encode("utf-8")
    for name, blob in aux.items():
        (d / name).write_bytes(blob)

    for sub, lc in (("hf_packed", "autobitlinear"), ("hf_packed_bitlinear", "bitlinear")):
        pd = out / sub
        pd.mkdir(parents=True, exist_ok=True)
        for name, blob in aux.items():
            (pd / name).write_bytes(blob)
        (pd / "config.json").write_text((d / "config.json").read_text())
        quant = {"quant_method": "bitnet", "linear_class": lc, "quantization_mode": "offline"}
        fix_config_json(pd / "config.json", notes, quant)
        write_safetensors(pd / "model.safetensors", hf_packed_tensors(master, tern, lc))
    return info


# ---- reference models -----------------------------------------------------------


def _bitnet_module():
    import transformers.integrations.bitnet as B

    return B


def _parent(model, name):
    mod_name = name.rsplit(".", 1)[0]  # strip ".weight"
    parent_name, child = mod_name.rsplit(".", 1)
    return model.get_submodule(parent_name), child, mod_name


def verify_packed_model(model, master, tern, linear_class: str, torch, notes: Notes) -> list[str]:
    """Return a list of problems; also repairs known loader bugs in place (noted)."""
    problems = []
    want_cls = "AutoBitLinear" if linear_class == "autobitlinear" else "BitLinear"
    for name in linear_names():
        parent, child, mod_name = _parent(model, name)
        mod = getattr(parent, child)
        cls = type(mod).__name__
        if cls != want_cls:
            problems.append(f"{mod_name} is {cls}, expected {want_cls}")
            continue
        q = torch.from_numpy(tern[name]["q"].astype(np.float32))
        if want_cls == "AutoBitLinear":
            if getattr(mod, "online_quant", False):
                problems.append(f"{mod_name}: online_quant is True")
            w = mod.weight
            if w.dtype == torch.uint8:
                # transformers 5.x BitNetDeserialize.convert unpacks with dtype=uint8 (the storage
                # dtype), so -1 wraps to 255.  Reinterpret as int8 and cast to float32.
                notes(f"{mod_name}: weight loaded as uint8 (-1 -> 255 loader bug); reinterpreted as int8")
                mod.weight = torch.nn.Parameter(w.data.view(torch.int8).to(torch.float32), requires_grad=False)
                w = mod.weight
            elif w.is_floating_point() and bool((w == 255).any()):
                notes(f"{mod_name}: weight holds 255 for -1 (loader bug); repaired")
                mod.weight = torch.nn.Parameter(torch.where(w == 255, -torch.ones_like(w), w).float(), requires_grad=False)
                w = mod.weight
            if w.dtype != torch.float32:
                mod.weight = torch.nn.Parameter(w.data.float(), requires_grad=False)
                w = mod.weight
            if tuple(w.shape) != tuple(q.shape) or not torch.equal(w.detach().cpu(), q):
                problems.append(f"{mod_name}: unpacked ternary weight differs from the expected one")
            sc = mod.weight_scale.detach().float().cpu().reshape(-1)
            if sc.numel() != 1 or float(sc[0]) != float(tern[name]["m_b"]):
                problems.append(f"{mod_name}: weight_scale {sc.tolist()} != m_b {float(tern[name]['m_b'])}")
            if mod.weight_scale.dtype != torch.float32:
                mod.weight_scale = mod.weight_scale.float()
        else:
            if getattr(mod, "dtype", torch.float32) != torch.float32:
                notes(f"{mod_name}: BitLinear.dtype was {mod.dtype}; set to float32")
                mod.dtype = torch.float32
            w = mod.weight
            want = torch.from_numpy(pack_hf(tern[name]["q"]))
            if w.dtype != torch.uint8 or not torch.equal(w.cpu(), want):
                problems.append(f"{mod_name}: packed buffer differs (dtype {w.dtype}, shape {tuple(w.shape)})")
            sc = mod.weight_scale.detach().float().cpu().reshape(-1)
            if sc.numel() != 1 or float(sc[0]) != float(tern[name]["inv_b"]):
                problems.append(f"{mod_name}: weight_scale {sc.tolist()} != bf16(1/m_b) {float(tern[name]['inv_b'])}")
            mod.weight_scale = mod.weight_scale.float()
    sd = dict(model.named_parameters())
    sd.update(dict(model.named_buffers()))
    for k, v in master.items():
        if k in tern:
            continue
        t = sd.get(k)
        if t is None:
            problems.append(f"{k} missing")
        elif not torch.equal(t.detach().float().cpu(), torch.from_numpy(v)):
            problems.append(f"{k} differs from the master value")
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        if not torch.equal(model.lm_head.weight.detach().float().cpu(), torch.from_numpy(master["model.embed_tokens.weight"])):
            problems.append("lm_head is neither tied to nor equal to embed_tokens")
    return problems


def build_packed_manually(master, tern, linear_class: str, torch, transformers, notes: Notes):
    """BitNetForCausalLM float32 with transformers' own AutoBitLinear / BitLinear modules put in by hand."""
    B = _bitnet_module()
    model = transformers.BitNetForCausalLM(make_config(transformers)).to(torch.float32)
    _set_eager(model)
    with torch.no_grad():
        for k, p in model.named_parameters():
            if k in master and k not in tern:
                p.copy_(torch.from_numpy(master[k]))
    for name in linear_names():
        parent, child, _ = _parent(model, name)
        old = getattr(parent, child)
        if linear_class == "autobitlinear":
            try:
                new = B.AutoBitLinear(old.in_features, old.out_features, bias=False, online_quant=False)
            except TypeError:
                new = B.AutoBitLinear(old.in_features, old.out_features, False, None, None, False)
            with torch.no_grad():
                new.weight = torch.nn.Parameter(torch.from_numpy(tern[name]["q"].astype(np.float32)), requires_grad=False)
                new.weight_scale = torch.tensor([float(tern[name]["m_b"])], dtype=torch.float32)
        else:
            new = B.BitLinear(old.in_features, old.out_features, bias=False, device=None, dtype=torch.float32)
            with torch.no_grad():
                new.weight = torch.from_numpy(pack_hf(tern[name]["q"]))
                new.weight_scale = torch.tensor([float(tern[name]["inv_b"])], dtype=torch.float32)
        setattr(parent, child, new)
    model.eval()
    return model


def load_packed_reference(path: Path, master, tern, linear_class: str, torch, transformers, notes: Notes):
    """Prefer the real loader (from_pretrained); fall back to hand assembly if it fails or loads wrong weights."""
    try:
        model = _from_pretrained(transformers.BitNetForCausalLM, path, torch, notes)
        model.eval()
        _set_eager(model)
        problems = verify_packed_model(model, master, tern, linear_class, torch, notes)
        if not problems:
            return model, "from_pretrained"
        notes(f"from_pretrained({path.name}) loaded wrong weights: {problems[:3]} (+{max(0, len(problems) - 3)} more)")
    except Exception as e:  # noqa: BLE001 - report and fall back
        notes(f"from_pretrained({path.name}) failed: {type(e).__name__}: {str(e)[:300]}")
    model = build_packed_manually(master, tern, linear_class, torch, transformers, notes)
    problems = verify_packed_model(model, master, tern, linear_class, torch, notes)
    if problems:
        raise AssertionError(f"hand-assembled {linear_class} model is wrong: {problems[:5]}")
    return model, "manual (transformers modules, weights set by hand)"


class _OnlineQuantLinear:
    """Fallback wrapper: forward = F.linear(ActQuant(x), WeightQuant(W)), with transformers' own autograd Functions."""

    @staticmethod
    def make(old, torch):
        B = _bitnet_module()
        F = torch.nn.functional

        class OnlineQuantLinear(torch.nn.Module):
            def __init__(self, weight):
                super().__init__()
                self.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)

            def forward(self, x):
                return F.linear(B.ActQuant.apply(x), B.WeightQuant.apply(self.weight))

        return OnlineQuantLinear(old.weight)


def load_bf16_online_reference(path: Path, master, torch, transformers, notes: Notes):
    B = _bitnet_module()
    model = _from_pretrained(transformers.BitNetForCausalLM, path, torch, notes)
    model.eval()
    _set_eager(model)
    sd = dict(model.named_parameters())
    for k, v in master.items():
        if not torch.equal(sd[k].detach().float().cpu(), torch.from_numpy(v)):
            raise AssertionError(f"hf_bf16 load: {k} differs from the master weights")
    how = None
    for name in linear_names():
        parent, child, _ = _parent(model, name)
        old = getattr(parent, child)
        assert type(old).__name__ == "Linear", type(old)
        new = None
        try:
            new = B.AutoBitLinear(old.in_features, old.out_features, bias=False, online_quant=True)
            with torch.no_grad():
                new.weight.copy_(old.weight)
            how = "AutoBitLinear(online_quant=True)"
        except Exception as e:  # noqa: BLE001
            if how is None:
                notes(f"AutoBitLinear(online_quant=True) unusable ({type(e).__name__}: {e}); using ActQuant/WeightQuant wrapper")
            new = _OnlineQuantLinear.make(old, torch)
            how = "F.linear(ActQuant(x), WeightQuant(W)) wrapper"
        setattr(parent, child, new)
    return model, how


def run_logits(model, tokens, torch) -> np.ndarray:
    ids = torch.tensor([tokens], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits[0].detach().float().cpu().numpy().astype(np.float32)


def cross_check_transformers_packing(tern, torch) -> None:
    """Our pack_hf must equal transformers' pack_weights, and unpack_weights must invert it."""
    B = _bitnet_module()
    for name in linear_names():
        q = torch.from_numpy(tern[name]["q"].astype(np.int64))
        theirs = B.pack_weights(q.clone()).cpu().numpy()
        mine = pack_hf(tern[name]["q"])
        if not np.array_equal(theirs, mine):
            raise AssertionError(f"{name}: pack_hf differs from transformers pack_weights")
        un = B.unpack_weights(torch.from_numpy(mine), dtype=torch.float32).cpu().numpy()
        if not np.array_equal(un, tern[name]["q"].astype(np.float32)):
            raise AssertionError(f"{name}: transformers unpack_weights does not invert pack_hf")


def check_weightquant(master, tern, torch, notes: Notes) -> int:
    B = _bitnet_module()
    mism = 0
    for name in linear_names():
        W = torch.from_numpy(master[name])
        deq = B.WeightQuant.apply(W).numpy()  # = Wq / s with s = 1/m
        q = tern[name]["q"].astype(np.float32)
        s = np.float32(1.0) / tern[name]["m"]
        mism += int(np.sum(deq != q / s))
    if mism:
        notes(f"transformers WeightQuant differs from our ternarization in {mism} weights")
    return mism


def tokenizer_samples(hf_dir: Path, vocab, merges, transformers, notes: Notes) -> list[dict]:
    from tokenizers import Tokenizer

    tok_lib = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    pybpe = PyBPE(vocab, merges)
    # The training text must round-trip and pre-tokenize as our ASCII splitter did.
    enc = tok_lib.encode(TRAINING_TEXT, add_special_tokens=False)
    assert tok_lib.decode(enc.ids, skip_special_tokens=False) == TRAINING_TEXT, "tokenizer does not round-trip"
    pre = [p for p, _ in tok_lib.pre_tokenizer.pre_tokenize_str(TRAINING_TEXT)]
    mine = ["".join(BYTE_TO_UNI[b] for b in w.encode()) for w in _ASCII_SPLIT_REGEX.findall(TRAINING_TEXT)]
    assert pre == mine, "ASCII splitter disagrees with the LLaMA-3 Split pre-tokenizer"
    try:
        hf_tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    except Exception as e:  # noqa: BLE001
        notes(f"AutoTokenizer failed ({type(e).__name__}: {e}); samples come from the tokenizers library")
        hf_tok = None
    try:
        chat = hf_tok.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001
        notes(f"apply_chat_template failed ({type(e).__name__}: {e}); rendered by hand")
        chat = render_chat_manually(CHAT_MESSAGES, True)
    if chat != render_chat_manually(CHAT_MESSAGES, True):
        notes(f"chat template rendering differs from the hand rendering: {chat!r}")
    samples = []
    for text, note in [(t, None) for t in SAMPLE_TEXTS] + [(chat, "chat_template(add_generation_prompt=True) of CHAT_MESSAGES")]:
        lib_ids = tok_lib.encode(text, add_special_tokens=True).ids
        ids = list(hf_tok(text, add_special_tokens=True)["input_ids"]) if hf_tok is not None else lib_ids
        if ids != lib_ids:
            notes(f"AutoTokenizer and tokenizers disagree on {text!r}: {ids} vs {lib_ids}")
        py_ids = pybpe.encode(text)
        if py_ids != ids:
            notes(f"pure-python BPE disagrees on {text!r}: {py_ids} vs {ids}")
        if not ids or ids[0] != BOS_ID:
            notes(f"no BOS prepended for {text!r}")
        e = {"text": text, "ids": [int(i) for i in ids]}
        if note:
            e["note"] = note
            e["messages"] = CHAT_MESSAGES
        samples.append(e)
    return samples


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def generate(out: Path) -> int:
    notes = Notes()
    out.mkdir(parents=True, exist_ok=True)
    torch, transformers = import_torch_stack()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}")
    torch.manual_seed(SEED)

    master = make_master_weights()
    tern = ternarize_all(master, use_torch=True)
    vocab, merges = build_tokenizer()
    tokens = reference_tokens()

    cross_check_transformers_packing(tern, torch)
    wq_mismatch = check_weightquant(master, tern, torch, notes)

    print("writing HF checkpoints ...")
    info = write_hf_dirs(out, master, tern, vocab, merges, torch, transformers, notes)

    print("writing GGUF files ...")
    gguf_models = {}
    for fname, arch, ttype in GGUF_FILES:
        n = build_gguf(arch, ttype, master, tern, vocab, merges).write(str(out / fname))
        gguf_models[fname] = load_gguf_model(str(out / fname))  # read back with the independent reader
        for name in linear_names():
            q, s = gguf_models[fname]["lin"][name]
            assert np.array_equal(q, tern[name]["q"]) and s == tern[name]["m_b"], f"{fname}:{name} round-trip"
        print(f"  {fname}: {n} bytes")

    (out / "tokens.txt").write_text(",".join(str(t) for t in tokens) + "\n")

    print("reference logits (transformers, CPU float32) ...")
    m_packed, how_packed = load_packed_reference(out / "hf_packed", master, tern, "autobitlinear", torch, transformers, notes)
    logits_packed = run_logits(m_packed, tokens, torch)
    m_manual = build_packed_manually(master, tern, "autobitlinear", torch, transformers, notes)
    logits_manual = run_logits(m_manual, tokens, torch)
    del m_manual

    m_bl, how_bl = load_packed_reference(out / "hf_packed_bitlinear", master, tern, "bitlinear", torch, transformers, notes)
    logits_bitlinear = run_logits(m_bl, tokens, torch)
    del m_bl

    m_bf16, how_bf16 = load_bf16_online_reference(out / "hf_bf16", master, torch, transformers, notes)
    logits_bf16 = run_logits(m_bf16, tokens, torch)
    del m_bf16

    # The GGUFs hold token_embd as F16: same packed model with the F16-rounded embedding / tied head.
    emb16 = master["model.embed_tokens.weight"].astype(np.float16).astype(np.float32)
    n_changed = int(np.sum(emb16 != master["model.embed_tokens.weight"]))
    with torch.no_grad():
        m_packed.model.embed_tokens.weight.copy_(torch.from_numpy(emb16))
        if m_packed.lm_head.weight.data_ptr() != m_packed.model.embed_tokens.weight.data_ptr():
            m_packed.lm_head.weight.copy_(torch.from_numpy(emb16))
    logits_gguf = run_logits(m_packed, tokens, torch)
    del m_packed

    # Independent numpy forward (float64) from the GGUF contents and from the in-memory weights.
    floats = {k: v for k, v in master.items() if k not in tern}
    lin = {k: (tern[k]["q"], tern[k]["m_b"]) for k in tern}
    np_packed = np_forward(tokens, floats, lin)
    g = gguf_models["model-i2_s.gguf"]
    np_gguf = np_forward(tokens, g["float"], g["lin"])

    for fname, arr in (("logits_packed.npy", logits_packed), ("logits_bitlinear.npy", logits_bitlinear),
                       ("logits_bf16.npy", logits_bf16), ("logits_gguf.npy", logits_gguf)):
        assert arr.shape == (len(tokens), VOCAB) and np.all(np.isfinite(arr)), fname
        np.save(out / fname, arr)

    print("tokenizer samples ...")
    samples = tokenizer_samples(out / "hf_packed", vocab, merges, transformers, notes)
    (out / "tokenizer_samples.json").write_text(json.dumps(samples, indent=1, ensure_ascii=False) + "\n")

    diffs = {
        "packed_vs_gguf": rel_l2(logits_gguf, logits_packed),
        "packed_vs_bf16": rel_l2(logits_bf16, logits_packed),
        "packed_vs_bitlinear": rel_l2(logits_bitlinear, logits_packed),
        "packed_vs_manual_assembly": rel_l2(logits_manual, logits_packed),
        "numpy_f64_vs_packed": rel_l2(np_packed, logits_packed),
        "numpy_f64_from_i2s_gguf_vs_gguf": rel_l2(np_gguf, logits_gguf),
    }
    print()
    for name, arr in (("packed", logits_packed), ("bitlinear", logits_bitlinear), ("bf16", logits_bf16), ("gguf", logits_gguf)):
        print(f"  logits_{name:<10} shape {arr.shape}  argmax(last) = {int(np.argmax(arr[-1]))}")
    for k, v in diffs.items():
        print(f"  rel L2 {k:<34} {v:.3e}")
    print(f"  embedding values changed by F16 rounding: {n_changed}")

    manifest = {
        "generator": "tools/make_fixtures.py",
        "generator_version": GENERATOR_VERSION,
        "seed": SEED,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__},
        "config": {
            "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": N_LAYERS,
            "num_attention_heads": N_HEADS, "num_key_value_heads": N_KV_HEADS, "head_dim": HEAD_DIM,
            "vocab_size": VOCAB, "max_position_embeddings": CTX, "rope_theta": ROPE_THETA,
            "rms_norm_eps": RMS_EPS, "hidden_act": "relu2", "tie_word_embeddings": True,
            "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "eot_token_id": EOT_ID,
        },
        "qk_rope": "GGUF attn_q/attn_k rows are in HF order (not permuted); RoPE is NeoX (pairs i, i+head_dim/2)",
        "tokens": tokens,
        "linears": {
            name: {
                "gguf_name": hf_to_gguf_name(name), "shape": list(tern[name]["q"].shape),
                "mean_abs_f32": float(tern[name]["m"]), "scale_m_b": float(tern[name]["m_b"]),
                "scale_bf16_bits": f"0x{tern[name]['m_b_bits']:04x}",
                "bitlinear_weight_scale": float(tern[name]["inv_b"]),
                "n_minus1_zero_plus1": [int(np.sum(tern[name]["q"] == v)) for v in (-1, 0, 1)],
            }
            for name in linear_names()
        },
        "references": {
            "logits_packed.npy": f"hf_packed via {how_packed}; AutoBitLinear offline, CPU float32, eager attention",
            "logits_bitlinear.npy": f"hf_packed_bitlinear via {how_bl}; BitLinear (divides by weight_scale)",
            "logits_bf16.npy": f"hf_bf16 float32 with every layer linear -> {how_bf16}",
            "logits_gguf.npy": "as logits_packed with embed_tokens/lm_head replaced by their F16-rounded values",
        },
        "weightquant_mismatches": wq_mismatch,
        "relative_l2": diffs,
        "notes": notes.items,
        "hf_bf16_config": info["hf_bf16_config"],
    }
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest["files"] = {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")

    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"\nwrote {len(files) + 1} files, {total / 1e6:.2f} MB total, into {out}")
    if notes.items:
        print(f"{len(notes.items)} note(s) recorded in manifest.json")
    assert total < 8e6, "fixtures exceed 8 MB"
    # Hard failures for things the fixtures must guarantee:
    assert diffs["packed_vs_manual_assembly"] < 1e-6, "loader path and hand-assembled model disagree"
    assert diffs["numpy_f64_vs_packed"] < 1e-3, "independent numpy forward disagrees with transformers"
    assert diffs["numpy_f64_from_i2s_gguf_vs_gguf"] < 1e-3, "numpy forward from the GGUF disagrees with logits_gguf"
    return 0


# ==================================================================================
# Self-test (numpy only)
# ==================================================================================


def selftest() -> int:
    rng = np.random.default_rng(7)
    checks = 0

    def ok(cond, msg):
        nonlocal checks
        if not cond:
            raise AssertionError(msg)
        checks += 1

    # bf16 rounding: RNE on ties, exactness of representable values
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.0e-3, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8], np.float32)
    ok(np.array_equal(round_bf16(x)[[0, 3]], x[[0, 3]]), "bf16 exact values")
    ok(round_bf16(np.array([1.0 + 2 ** -8], np.float32))[0] == 1.0, "bf16 tie to even (down)")
    ok(round_bf16(np.array([1.0 + 3 * 2 ** -8], np.float32))[0] == 1.0 + 2 ** -6, "bf16 tie to even (up)")

    # HF pack vs literal pack_weights, round trip
    for out_f, in_f in ((4, 3), (12, 7), (256, 64)):
        q = rng.integers(-1, 2, size=(out_f, in_f)).astype(np.int8)
        p = pack_hf(q)
        ok(p.shape == (out_f // 4, in_f) and np.array_equal(p, _ref_pack_weights(q)), "pack_hf == pack_weights")
        ok(np.array_equal(unpack_hf(p), q), "unpack_hf round trip")
    # the docstring example of transformers unpack_weights
    ex = unpack_hf(np.array([[0b10100001, 0b00011000], [0b10010000, 0b00001010]], np.uint8))
    ok(ex.tolist() == [[0, -1], [-1, 1], [-1, 1], [-1, 1], [1, 0], [0, -1], [1, -1], [1, -1]], "unpack_weights doc example")

    # I2_S vs literal quantize_i2_s, round trip
    for shape in ((2, 128), (8, 256), (3, 384)):
        q = rng.integers(-1, 2, size=shape).astype(np.int8)
        scale = np.float32(0.0234375)
        data = pack_i2s(q, scale)
        ok(len(data) == G.ggml_nbytes(G.GGML_TYPE_I2_S, (shape[1], shape[0])), "I2_S size")
        ok(data == _ref_quantize_i2_s(q.astype(np.float32) * scale), "pack_i2s == quantize_i2_s")
        q2, s2 = unpack_i2s(data, shape)
        ok(np.array_equal(q2, q) and s2 == scale, "I2_S round trip")
    # byte 0 of a block: weight 0 in bits 7:6, weight 32 in 5:4, 64 in 3:2, 96 in 1:0
    q = np.zeros((1, 128), np.int8)
    q[0, 0], q[0, 32], q[0, 64], q[0, 96] = 1, -1, 1, 0
    ok(pack_i2s(q, 1.0)[0] == (2 << 6) | (0 << 4) | (2 << 2) | 1, "I2_S bit placement")

    # TQ2_0 / TQ1_0 vs literal llama.cpp reference quantizers (x = q * d), round trips
    d = np.float32(0.01953125)  # exactly representable in bf16 and fp16
    for shape in ((1, 256), (3, 512), (5, 256)):
        q = rng.integers(-1, 2, size=shape).astype(np.int8)
        q[:, 0] = 1  # every block non-zero, so the ref quantizer's absmax d equals ours
        x = q.astype(np.float32) * d
        t2 = pack_tq2_0(q, d)
        ok(len(t2) == G.ggml_nbytes(G.GGML_TYPE_TQ2_0, (shape[1], shape[0])), "TQ2_0 size")
        ok(t2 == _ref_quantize_row_tq2_0(x), "pack_tq2_0 == quantize_row_tq2_0_ref")
        q2, dd = unpack_tq2_0(t2, shape)
        ok(np.array_equal(q2, q) and np.all(dd == d), "TQ2_0 round trip")
        t1 = pack_tq1_0(q, d)
        ok(len(t1) == G.ggml_nbytes(G.GGML_TYPE_TQ1_0, (shape[1], shape[0])), "TQ1_0 size")
        ok(t1 == _ref_quantize_row_tq1_0(x), "pack_tq1_0 == quantize_row_tq1_0_ref")
        q1, dd = unpack_tq1_0(t1, shape)
        ok(np.array_equal(q1, q) and np.all(dd == d), "TQ1_0 round trip")
        ok(np.array_equal(_ref_dequantize_row_tq1_0(t1), q.reshape(-1)), "dequantize_row_tq1_0 literal")
    # TQ2_0 element placement: e -> qs[32*(e/128) + e%32], shift 2*((e%128)/32)
    for e in (0, 31, 32, 100, 127, 128, 200, 255):
        q = np.zeros((1, 256), np.int8)
        q[0, e] = 1
        b = pack_tq2_0(q, 1.0)
        byte, shift = 32 * (e // 128) + e % 32, 2 * ((e % 128) // 32)
        ok((b[byte] >> shift) & 3 == 2, f"TQ2_0 placement e={e}")
    # all 3^5 five-trit bytes decode back
    for v in range(243):
        trits = [(v // 3 ** (4 - n)) % 3 for n in range(5)]
        byte = _tq1_enc(np.array([v]))
        ok([int(_tq1_trit(byte, n)[0]) for n in range(5)] == trits, "TQ1 trit code")

    # Weights, ternarization, packed tensor dicts
    master = make_master_weights()
    tern = ternarize_all(master, use_torch=False)
    for name in linear_names():
        ok(np.array_equal(unpack_hf(pack_hf(tern[name]["q"])), tern[name]["q"]), "packed linear round trip")
    scales = [float(tern[n]["m_b"]) for n in linear_names()]
    ok(len(set(scales)) == len(scales), "every matrix has its own scale")

    # Tokenizer
    vocab, merges = build_tokenizer()
    ok(len(merges) >= N_REGULAR_TOKENS - 256 and len(vocab) == N_REGULAR_TOKENS, "tokenizer size")
    tj = tokenizer_json(vocab, merges)
    json.loads(json.dumps(tj))
    py = PyBPE(vocab, merges)
    for text in [TRAINING_TEXT, "Hello world", "It's 2024!\n\nok  ", "User: hi<|eot_id|>Assistant: "]:
        ids = py.encode(text)
        ok(ids[0] == BOS_ID and py.decode(ids[1:]) == text, f"PyBPE round trip {text[:20]!r}")
    ok(len(py.encode(TRAINING_TEXT)) < len(TRAINING_TEXT) / 2, "BPE compresses the training text")

    # GGUF files: write, read back, decode, and compare numpy forwards
    tokens = reference_tokens()
    floats = {k: v for k, v in master.items() if k not in tern}
    lin = {k: (tern[k]["q"], tern[k]["m_b"]) for k in tern}
    ref = np_forward(tokens, floats, lin)
    ok(ref.shape == (N_REF_TOKENS, VOCAB) and np.all(np.isfinite(ref)), "numpy forward")
    with tempfile.TemporaryDirectory() as td:
        for fname, arch, ttype in GGUF_FILES:
            p = os.path.join(td, fname)
            build_gguf(arch, ttype, master, tern, vocab, merges).write(p)
            f = G.read_gguf(p)
            ok(f.version == 3 and f.value("general.architecture") == arch, "GGUF header")
            ok(f.value(f"{arch}.rope.dimension_count") == HEAD_DIM and f.value(f"{arch}.block_count") == N_LAYERS, "GGUF kv")
            ok(abs(f.value(f"{arch}.attention.layer_norm_rms_epsilon") - RMS_EPS) < 1e-12, "GGUF eps")
            ok(len(f.value("tokenizer.ggml.tokens")) == VOCAB and f.kv["tokenizer.ggml.token_type"][1][0] == G.GGUF_TYPE_INT32, "GGUF vocab")
            ok(f.value("tokenizer.ggml.add_bos_token") is True and f.value("tokenizer.ggml.bos_token_id") == BOS_ID, "GGUF bos")
            ok(f.value("tokenizer.chat_template") == BITNET_CHAT_TEMPLATE, "GGUF chat template")
            ok(f"{arch}.hidden_activation" not in f.kv, "no hidden_activation key")
            ok(len(f.tensors) == 2 + N_LAYERS * 11, "GGUF tensor count")
            ok(f.tensors["token_embd.weight"].ne == (HIDDEN, VOCAB) and f.tensors["token_embd.weight"].ggml_type == G.GGML_TYPE_F16, "token_embd")
            ok(f.tensors["blk.0.ffn_down.weight"].ne == (INTER, HIDDEN) and f.tensors["blk.0.ffn_down.weight"].ggml_type == ttype, "ffn_down ne")
            ok(all(t.offset % 32 == 0 for t in f.tensors.values()) and f.data_start % 32 == 0, "GGUF alignment")
            m = load_gguf_model(p)
            for name in linear_names():
                q, s = m["lin"][name]
                ok(np.array_equal(q, tern[name]["q"]) and s == tern[name]["m_b"], f"{fname} {name} round trip")
            out = np_forward(tokens, m["float"], m["lin"])
            ok(rel_l2(out, ref) < 1e-3, f"{fname}: forward from GGUF close to in-memory ({rel_l2(out, ref):.2e})")
        # tiny generic GGUF with every KV type
        w = G.GGUFWriter()
        w.add_string("general.architecture", "x")
        w.add_uint32("a.u32", 7)
        w.add_int32("a.i32", -7)
        w.add_float32("a.f32", 0.5)
        w.add_bool("a.b", False)
        w.add_kv("a.u64", G.GGUF_TYPE_UINT64, 1 << 40)
        w.add_array("a.arr_f", G.GGUF_TYPE_FLOAT32, [1.0, 2.5])
        w.add_array("a.arr_s", G.GGUF_TYPE_STRING, ["", "ü", "a b"])
        w.add_tensor("t0", (3,), G.GGML_TYPE_F32, np.array([1, 2, 3], "<f4"))
        w.add_tensor("t1", (2, 2), G.GGML_TYPE_F16, np.array([[1, 2], [3, 4]], "<f2"))
        blob = w.to_bytes()
        ok(blob[:4] == b"GGUF" and struct.unpack_from("<IQQ", blob, 4) == (3, 2, 8), "raw header bytes")
        f = G.read_gguf(blob)
        ok(f.value("a.u32") == 7 and f.value("a.i32") == -7 and f.value("a.f32") == 0.5 and f.value("a.b") is False, "scalars")
        ok(f.value("a.u64") == 1 << 40 and f.value("a.arr_f") == [1.0, 2.5] and f.value("a.arr_s") == ["", "ü", "a b"], "arrays")
        ok(f.tensor_order == ["t0", "t1"] and f.tensors["t1"].offset == 32, "tensor offsets")
        ok(np.frombuffer(f.tensors["t1"].data, "<f2").tolist() == [1, 2, 3, 4], "tensor data")
        # safetensors writer/reader
        st = os.path.join(td, "x.safetensors")
        t = hf_packed_tensors(master, tern, "autobitlinear")
        write_safetensors(Path(st), t)
        ok(read_safetensors(Path(st)) == t, "safetensors round trip")
        with open(st, "rb") as fh:
            (hl,) = struct.unpack("<Q", fh.read(8))
        ok(hl % 8 == 0, "safetensors header padded to 8")
    print(f"selftest: {checks} checks passed")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="output directory for the fixtures")
    ap.add_argument("--selftest", action="store_true", help="numpy-only self-test of packers, GGUF and tokenizer")
    a = ap.parse_args(argv)
    if a.selftest:
        return selftest()
    if not a.out:
        ap.error("--out DIR is required (or --selftest)")
    return generate(a.out)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Generate the LoRA test fixtures for `tern` with HF peft.

    python3 tools/make_lora_fixtures.py [--tiny tests/fixtures/tiny] [--out tests/fixtures/lora]
        needs torch, transformers, peft, numpy; CPU, float32, nothing downloaded
    python3 tools/make_lora_fixtures.py --selftest    # numpy only: the float64 LoRA forward

Reads the tiny BitNet fixtures tools/make_fixtures.py made (tests/fixtures/tiny), wraps the
model with peft (LoraConfig r=4, lora_alpha=8, dropout 0, all seven projections) with seeded
random A and B (B != 0, so the adapter changes the logits), and writes into --out:

    adapter/adapter_config.json        peft's save_pretrained
    adapter/adapter_model.safetensors  lora_A [r, in] / lora_B [out, r], float32, peft's names
                                       base_model.model.model.layers.{i}.{self_attn,mlp}.X_proj.lora_{A,B}.weight
    logits_packed_lora.npy             peft on hf_packed (AutoBitLinear, offline)           [n_tokens, vocab] f32
    logits_bf16_lora.npy               peft on hf_bf16 with AutoBitLinear(online_quant=True) [n_tokens, vocab] f32
    grads.safetensors                  d loss / d lora_{A,B} on hf_packed, float32, the adapter's tensor names;
                                       loss = HF causal-LM loss (labels = input ids: mean cross entropy of
                                       the n_tokens - 1 next-token predictions), straight-through estimator
                                       through the activation quantizer (transformers' ActQuant.backward)
    manifest.json                      versions, LoRA config, loss, cross-checks, how each file was made, sha256

Tokens: tests/fixtures/tiny/tokens.txt. The LoRA branch sees the float input of each linear
(before the int8 activation quantizer): y = BitLinear(x) + (alpha / r) * B (A x), which a
float64 numpy forward (make_fixtures.np_forward with a LoRA-aware linear) cross-checks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as MF  # noqa: E402

GENERATOR_VERSION = 1
REPO = Path(__file__).resolve().parent.parent

RANK = 4
ALPHA = 8
SCALING = ALPHA / RANK
# std of B: with A ~ U(+-1/sqrt(in)) and unit-RMS inputs the branch's outputs are ~0.1, a
# sizeable fraction of the ternary linears' (~0.3), so the logits move well beyond the
# comparison tolerance.
B_STD = 0.04
SEED = MF.SEED + 5
PROJS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODULES = {p: s for s, _, _ in MF.LAYER_LINEARS for p in [s.split(".")[-1]]}  # q_proj -> self_attn.q_proj
SHAPES = {s.split(".")[-1]: shape for s, _, shape in MF.LAYER_LINEARS}  # q_proj -> (out, in)


def peft_name(layer: int, proj: str, ab: str) -> str:
    return f"base_model.model.model.layers.{layer}.{MODULES[proj]}.lora_{ab}.weight"


def make_lora_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """peft tensor name -> float32 array: A ~ U(+-1/sqrt(in)) (peft's kaiming bound), B ~ N(0, B_STD)."""
    rng = np.random.default_rng(seed)
    w = {}
    for i in range(MF.N_LAYERS):
        for p in PROJS:
            out_f, in_f = SHAPES[p]
            bound = 1.0 / math.sqrt(in_f)
            w[peft_name(i, p, "A")] = rng.uniform(-bound, bound, size=(RANK, in_f)).astype(np.float32)
            w[peft_name(i, p, "B")] = (rng.standard_normal((out_f, RANK)) * B_STD).astype(np.float32)
    return w


# ==================================================================================
# Independent float64 forward with LoRA (numpy): make_fixtures.np_forward, whose linears
# look up lin[name] = (q, scale) and call np_bitlinear(x, q, scale), given a linear that
# also takes (A, B, scaling).
# ==================================================================================


def np_bitlinear_lora(x, q, scale, A=None, B=None, s=0.0):
    y = _NP_BITLINEAR(x, q, scale)
    if A is not None:
        y = y + s * ((x @ A.T.astype(np.float64)) @ B.T.astype(np.float64))
    return y


_NP_BITLINEAR = MF.np_bitlinear


def np_forward_lora(tokens, floats, lin, lora: dict[str, np.ndarray], scaling: float) -> np.ndarray:
    lin2 = {}
    for name, (q, scale) in lin.items():
        i, mod = name.split(".")[2], name.split(".")[-2]  # model.layers.{i}.{...}.{q_proj}.weight
        a = lora.get(peft_name(int(i), mod, "A"))
        lin2[name] = (q, scale) if a is None else (q, scale, a, lora[peft_name(int(i), mod, "B")], scaling)
    MF.np_bitlinear = np_bitlinear_lora
    try:
        return MF.np_forward(tokens, floats, lin2)
    finally:
        MF.np_bitlinear = _NP_BITLINEAR


# ==================================================================================
# torch / transformers / peft part
# ==================================================================================


def import_peft():
    import peft

    return peft


def online_linear_class(torch):
    """An nn.Linear (so peft wraps it) computing F.linear(ActQuant(x), WeightQuant(W)) with transformers' Functions."""
    B = MF._bitnet_module()

    class OnlineBitLinear(torch.nn.Linear):
        def forward(self, x):
            return torch.nn.functional.linear(B.ActQuant.apply(x), B.WeightQuant.apply(self.weight))

    return OnlineBitLinear


def ensure_linear_subclasses(model, torch, notes) -> None:
    """peft wraps torch.nn.Linear subclasses only: replace make_fixtures' fallback wrapper if it was used."""
    cls = online_linear_class(torch)
    for name in MF.linear_names():
        parent, child, mod_name = MF._parent(model, name)
        old = getattr(parent, child)
        if isinstance(old, torch.nn.Linear):
            continue
        new = cls(old.weight.shape[1], old.weight.shape[0], bias=False)
        with torch.no_grad():
            new.weight.copy_(old.weight)
        new.weight.requires_grad_(False)
        setattr(parent, child, new)
        notes(f"{mod_name}: {type(old).__name__} is no nn.Linear; replaced by OnlineBitLinear for peft")


def wrap_with_lora(model, lora: dict[str, np.ndarray], torch, peft, notes):
    cfg = peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(PROJS), bias="none", task_type="CAUSAL_LM",
        init_lora_weights=True, use_rslora=False,
    )
    pm = peft.get_peft_model(model, cfg)
    state = {k: torch.from_numpy(v.copy()) for k, v in lora.items()}
    res = peft.set_peft_model_state_dict(pm, state)
    unexpected = list(getattr(res, "unexpected_keys", []) or [])
    if unexpected:
        raise AssertionError(f"peft did not take these tensors: {unexpected[:4]}")
    got = peft.get_peft_model_state_dict(pm)
    if set(got) != set(lora):
        raise AssertionError(f"peft's adapter tensors differ: extra {sorted(set(got) - set(lora))[:4]}, "
                             f"missing {sorted(set(lora) - set(got))[:4]}")
    for k, v in lora.items():
        if not np.array_equal(got[k].detach().float().cpu().numpy(), v):
            raise AssertionError(f"{k}: peft holds other values than were set")
    # Every target must be a LoRA layer around the BitNet linear (not a plain Linear).
    wrapped = 0
    for name, mod in pm.named_modules():
        if hasattr(mod, "lora_A") and hasattr(mod, "base_layer"):
            wrapped += 1
            base = type(mod.base_layer).__name__
            if base not in ("AutoBitLinear", "OnlineBitLinear"):
                raise AssertionError(f"{name}: peft wrapped a {base}, not a BitNet linear")
            if abs(float(mod.scaling["default"]) - SCALING) > 1e-12:
                raise AssertionError(f"{name}: peft scaling {mod.scaling['default']} != {SCALING}")
    if wrapped != MF.N_LAYERS * len(PROJS):
        raise AssertionError(f"peft wrapped {wrapped} modules, expected {MF.N_LAYERS * len(PROJS)}")
    pm.eval()
    return pm


def save_adapter(pm, out: Path, notes) -> None:
    d = out / "adapter"
    if d.exists():
        shutil.rmtree(d)
    # A stable name instead of this machine's path to the fixture.
    pm.peft_config["default"].base_model_name_or_path = "tests/fixtures/tiny/hf_packed"
    pm.save_pretrained(str(d), safe_serialization=True)
    for p in list(d.iterdir()):
        if p.name not in ("adapter_config.json", "adapter_model.safetensors"):
            notes(f"save_pretrained also wrote {p.name}; removed")
            p.unlink() if p.is_file() else shutil.rmtree(p)


def check_saved_adapter(out: Path, lora: dict[str, np.ndarray]) -> dict:
    d = out / "adapter"
    cfg = json.loads((d / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == RANK and cfg["lora_alpha"] == ALPHA, cfg
    assert sorted(cfg["target_modules"]) == sorted(PROJS), cfg["target_modules"]
    assert not cfg.get("use_rslora") and not cfg.get("use_dora") and not cfg.get("fan_in_fan_out"), cfg
    saved = MF.read_safetensors(d / "adapter_model.safetensors")
    assert set(saved) == set(lora), f"saved tensors differ: {sorted(set(saved) ^ set(lora))[:4]}"
    for k, (dtype, shape, raw) in saved.items():
        assert dtype == "F32" and tuple(shape) == lora[k].shape, (k, dtype, shape)
        assert np.array_equal(np.frombuffer(raw, "<f4").reshape(shape), lora[k]), k
    return cfg


def lora_grads(pm, tokens, torch) -> tuple[float, dict[str, np.ndarray]]:
    """HF causal-LM loss with labels = input ids, and d loss / d (every LoRA tensor)."""
    ids = torch.tensor([tokens], dtype=torch.long)
    pm.zero_grad(set_to_none=True)
    trainable = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    if not trainable or not all(".lora_A." in n or ".lora_B." in n for n in trainable):
        raise AssertionError(f"unexpected trainable parameters: {sorted(trainable)[:4]}")
    with torch.enable_grad():
        out = pm(input_ids=ids, labels=ids, use_cache=False)
        loss = out.loss
        loss.backward()
    # The same loss by hand: mean cross entropy of positions 0..T-2 predicting 1..T-1.
    with torch.no_grad():
        lg = out.logits[0, :-1].double()
        manual = torch.nn.functional.cross_entropy(lg, ids[0, 1:])
    if abs(float(manual) - float(loss)) > 1e-5 * max(1.0, abs(float(loss))):
        raise AssertionError(f"HF loss {float(loss)} != mean cross entropy {float(manual)}")
    grads = {}
    for n, p in trainable.items():
        if p.grad is None:
            raise AssertionError(f"{n}: no gradient")
        key = n.replace(".default.weight", ".weight")  # peft's saved names drop the adapter name
        grads[key] = p.grad.detach().float().cpu().numpy().astype(np.float32)
    pm.zero_grad(set_to_none=True)
    return float(loss), grads


def generate(tiny: Path, out: Path) -> int:
    notes = MF.Notes()
    torch, transformers = MF.import_torch_stack()
    peft = import_peft()
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                "numpy": np.__version__}
    print(", ".join(f"{k} {v}" for k, v in versions.items()))
    torch.manual_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)

    master = MF.make_master_weights()
    tern = MF.ternarize_all(master, use_torch=True)
    tokens = [int(t) for t in (tiny / "tokens.txt").read_text().strip().split(",")]
    if tokens != MF.reference_tokens():
        raise AssertionError("tokens.txt is not make_fixtures' reference sequence: regenerate tests/fixtures/tiny first")
    lora = make_lora_weights()

    # Cross-check: float64 numpy with this adapter (scale m_b, as hf_packed stores it).
    floats = {k: v for k, v in master.items() if k not in tern}
    np_lora = np_forward_lora(tokens, floats, {k: (tern[k]["q"], tern[k]["m_b"]) for k in tern}, lora, SCALING)
    np_base = MF.np_forward(tokens, floats, {k: (tern[k]["q"], tern[k]["m_b"]) for k in tern})

    print("peft on hf_packed ...")
    m_packed, how_packed = MF.load_packed_reference(tiny / "hf_packed", master, tern, "autobitlinear", torch, transformers, notes)
    logits_base = MF.run_logits(m_packed, tokens, torch)
    ref_base = np.load(tiny / "logits_packed.npy")
    pm = wrap_with_lora(m_packed, lora, torch, peft, notes)
    logits_packed = MF.run_logits(pm, tokens, torch)
    save_adapter(pm, out, notes)
    cfg = check_saved_adapter(out, lora)
    loss, grads = lora_grads(pm, tokens, torch)
    assert set(grads) == set(lora), f"gradient names differ from the adapter's: {sorted(set(grads) ^ set(lora))[:4]}"
    del pm, m_packed

    print("peft on hf_bf16 (online quantization) ...")
    m_bf16, how_bf16 = MF.load_bf16_online_reference(tiny / "hf_bf16", master, torch, transformers, notes)
    ensure_linear_subclasses(m_bf16, torch, notes)
    pm16 = wrap_with_lora(m_bf16, lora, torch, peft, notes)
    logits_bf16 = MF.run_logits(pm16, tokens, torch)
    np_lora16 = np_forward_lora(tokens, floats, {k: (tern[k]["q"], tern[k]["m"]) for k in tern}, lora, SCALING)
    del pm16, m_bf16

    np.save(out / "logits_packed_lora.npy", logits_packed.astype(np.float32))
    np.save(out / "logits_bf16_lora.npy", logits_bf16.astype(np.float32))
    MF.write_safetensors(out / "grads.safetensors",
                         {k: ("F32", v.shape, np.ascontiguousarray(v, "<f4").tobytes()) for k, v in grads.items()})

    diffs = {
        "packed_base_vs_tiny_fixture": MF.rel_l2(logits_base, ref_base),
        "packed_lora_vs_base": MF.rel_l2(logits_packed, logits_base),
        "bf16_lora_vs_packed_lora": MF.rel_l2(logits_bf16, logits_packed),
        "numpy_f64_lora_vs_packed_lora": MF.rel_l2(np_lora, logits_packed),
        "numpy_f64_lora_scale_m_vs_bf16_lora": MF.rel_l2(np_lora16, logits_bf16),
        "numpy_f64_base_vs_packed_base": MF.rel_l2(np_base, logits_base),
    }
    for k, v in diffs.items():
        print(f"  {k}: {v:.3e}")
    grad_norms = {k: float(np.linalg.norm(v)) for k, v in sorted(grads.items())}
    manifest = {
        "generator": "tools/make_lora_fixtures.py",
        "generator_version": GENERATOR_VERSION,
        "versions": versions,
        "lora": {"r": RANK, "lora_alpha": ALPHA, "scaling": SCALING, "lora_dropout": 0.0, "target_modules": PROJS,
                 "init": f"A ~ U(+-1/sqrt(in)), B ~ N(0, {B_STD}), numpy default_rng({SEED}), set with "
                         "peft.set_peft_model_state_dict"},
        "adapter_config": cfg,
        "tokens": tokens,
        "loss": loss,
        "loss_definition": "HF causal-LM loss, labels = input ids: mean cross entropy of the n-1 next-token predictions",
        "grad_l2_norms": grad_norms,
        "references": {
            "logits_packed_lora.npy": f"peft LoRA on tiny/hf_packed via {how_packed}; AutoBitLinear offline, CPU float32, eager",
            "logits_bf16_lora.npy": f"peft LoRA on tiny/hf_bf16 float32 with every linear -> {how_bf16}",
            "grads.safetensors": "torch autograd of `loss` on the hf_packed peft model; STE through ActQuant",
        },
        "relative_l2": diffs,
        "notes": notes.items,
    }
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest["files"] = {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": MF.sha256(p)} for p in files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(files) + 1} files, {total / 1e6:.2f} MB, into {out}")
    # What the fixtures must guarantee to be worth testing against:
    assert diffs["packed_base_vs_tiny_fixture"] < 1e-6, "hf_packed no longer gives tiny/logits_packed.npy"
    assert diffs["numpy_f64_lora_vs_packed_lora"] < 1e-3, "an independent numpy LoRA forward disagrees with peft"
    assert diffs["numpy_f64_lora_scale_m_vs_bf16_lora"] < 1e-3, "numpy LoRA forward (scale m) disagrees with peft on hf_bf16"
    assert diffs["packed_lora_vs_base"] > 5e-2, "the adapter barely changes the logits: raise B_STD"
    assert all(math.isfinite(v) and v > 0 for v in grad_norms.values()), "a LoRA tensor has a zero or non-finite gradient"
    return 0


def selftest() -> int:
    """numpy only: the LoRA-aware forward is np_forward with B = 0, and moves the logits with B != 0."""
    master = MF.make_master_weights()
    tern = MF.ternarize_all(master, use_torch=False)
    floats = {k: v for k, v in master.items() if k not in tern}
    lin = {k: (tern[k]["q"], tern[k]["m_b"]) for k in tern}
    tokens = MF.reference_tokens()[:12]
    lora = make_lora_weights()
    zero = {k: (np.zeros_like(v) if ".lora_B." in k else v) for k, v in lora.items()}
    base = MF.np_forward(tokens, floats, lin)
    assert MF.rel_l2(np_forward_lora(tokens, floats, lin, zero, SCALING), base) == 0.0, "B = 0 must be the base model"
    moved = MF.rel_l2(np_forward_lora(tokens, floats, lin, lora, SCALING), base)
    assert moved > 5e-2, f"the adapter moves the logits by only {moved:.2e}"
    assert MF.np_bitlinear is _NP_BITLINEAR, "np_bitlinear was not restored"
    assert len(lora) == 2 * MF.N_LAYERS * len(PROJS)
    for k, v in lora.items():
        out_f, in_f = SHAPES[k.split(".")[-3]]
        assert v.shape == ((RANK, in_f) if ".lora_A." in k else (out_f, RANK)), (k, v.shape)
    print(f"selftest: ok (the adapter moves the logits by {moved:.3f} relative L2)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", type=Path, default=REPO / "tests/fixtures/tiny", help="the tiny model fixtures")
    ap.add_argument("--out", type=Path, default=REPO / "tests/fixtures/lora", help="output directory")
    ap.add_argument("--selftest", action="store_true", help="numpy-only check of the float64 LoRA forward")
    a = ap.parse_args(argv)
    if a.selftest:
        return selftest()
    return generate(a.tiny, a.out)


if __name__ == "__main__":
    sys.exit(main())

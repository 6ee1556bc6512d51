#!/usr/bin/env python3
"""Check that an adapter written by `tern finetune` loads in HF peft and gives tern's logits.

    python3 tools/check_tern_adapter_in_peft.py --adapter DIR --tern-logits tern.npy [--tiny tests/fixtures/tiny]

Loads the tiny packed fixture model (tests/fixtures/tiny/hf_packed) with transformers exactly
as tools/make_fixtures.py does, wraps it with peft.PeftModel.from_pretrained(model, DIR) (the
adapter_config.json + adapter_model.safetensors tern wrote), runs the fixture tokens and
compares with the logits `tern logits -m tests/fixtures/tiny/hf_packed --tokens ... --lora DIR`
wrote. Prints the relative L2 error and the argmax agreement; exits 1 above 1e-3 or on any
argmax mismatch. Needs torch, transformers, peft, numpy (the GPU machine has them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as MF  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", type=Path, required=True)
    ap.add_argument("--tern-logits", type=Path, required=True)
    ap.add_argument("--tiny", type=Path, default=Path(__file__).resolve().parent.parent / "tests/fixtures/tiny")
    a = ap.parse_args(argv)
    import peft

    notes = MF.Notes()
    torch, transformers = MF.import_torch_stack()
    master = MF.make_master_weights()
    tern = MF.ternarize_all(master, use_torch=True)
    tokens = [int(t) for t in (a.tiny / "tokens.txt").read_text().strip().split(",")]
    model, _ = MF.load_packed_reference(a.tiny / "hf_packed", master, tern, "autobitlinear", torch, transformers, notes)
    base = MF.run_logits(model, tokens, torch).astype(np.float64)  # before peft injects the adapter
    pm = peft.PeftModel.from_pretrained(model, str(a.adapter))
    got = MF.run_logits(pm, tokens, torch).astype(np.float64)
    want = np.load(a.tern_logits).astype(np.float64)
    if got.shape != want.shape:
        print(f"shape mismatch: peft {got.shape} vs tern {want.shape}")
        return 1
    rel = float(np.linalg.norm(got - want) / np.linalg.norm(got))
    same = int((got.argmax(-1) == want.argmax(-1)).sum())
    moved = float(np.linalg.norm(got - base) / np.linalg.norm(base))
    print(f"peft {peft.__version__} with tern's adapter vs tern --lora: rel L2 {rel:.3g}, argmax {same}/{len(tokens)}; "
          f"the adapter moves peft's logits by {moved:.3g}")
    return 0 if rel < 1e-3 and same == len(tokens) else 1


if __name__ == "__main__":
    sys.exit(main())

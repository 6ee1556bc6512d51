#!/usr/bin/env python3
"""LoRA training speed and GPU memory: tern against peft + transformers, same shape and
batch, in one run on the GPU machine (issue 5's comparison).

Both train rank-16 LoRA on all seven projections of a 2b-4t-shaped BitNet model with
random weights (no download), AdamW, gradient clipping 1.0, dropout 0.05, on batches of
random tokens with labels = input ids:
  tern: `tern bench --train` on `tern synth --shape 2b-4t --init hf` (what a fresh HF
        model's weights quantize to; ternary weights, F16 head);
  peft: transformers' BitNetForCausalLM in bf16 with every decoder linear an AutoBitLinear
        (online weight + activation quantization, the straight-through estimator), eager
        attention, peft LoRA.
Memory: tern's figure is the whole device in use (cudaMemGetInfo: total - free, CUDA
context included); peft's is torch's peak reserved (and allocated), which leaves the
context out, so the comparison is conservative for tern.

  python3 tools/bench_finetune_vs_peft.py --tern build/tern [--model synth.gguf] [--batch 8]
      [--seq 512] [--rank 16] [--steps 5] [--json out.json] [--skip-peft]
"""
import argparse
import json
import os
import subprocess
import sys
import time

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def run_tern(args):
    model = args.model
    if not os.path.exists(model):
        subprocess.run([args.tern, "synth", "--shape", "2b-4t", "--init", "hf", "-o", model], check=True, stdout=subprocess.DEVNULL)
    cmd = [args.tern, "bench", "-m", model, "--train", "--backend", "cuda", "-p", str(args.seq), "--train-batch", str(args.batch),
           "--rank", str(args.rank), "-r", str(args.steps), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    r = json.loads(out.stdout)[0]
    return {"tokens_per_s": r["avg_ts"], "stddev": r["stddev_ts"], "samples": r["samples_ts"], "gpu_gib": r["device_gib"],
            "backend": r["backend"], "loss": r["loss"], "command": " ".join(cmd)}


def run_peft(args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.integrations.bitnet import AutoBitLinear

    # microsoft/bitnet-b1.58-2B-4T's config.json
    cfg = BitNetConfig(vocab_size=128256, hidden_size=2560, intermediate_size=6912, num_hidden_layers=30, num_attention_heads=20,
                       num_key_value_heads=5, hidden_act="relu2", max_position_embeddings=4096, rope_theta=500000.0,
                       rms_norm_eps=1e-5, tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = BitNetForCausalLM(cfg).to(torch.bfloat16)
    for layer in model.model.layers:
        for parent, names in ((layer.self_attn, TARGETS[:4]), (layer.mlp, TARGETS[4:])):
            for n in names:
                lin = getattr(parent, n)
                new = AutoBitLinear(lin.in_features, lin.out_features, bias=False, online_quant=True).to("cuda", torch.bfloat16)
                new.weight.data.copy_(lin.weight.data)
                setattr(parent, n, new)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator(device="cuda").manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device="cuda", generator=g)
    model.train()

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(2):  # warm-up (torch.compile of the quantizers, cuBLAS heuristics)
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    samples = []
    loss = 0.0
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()  # .item() synchronizes
        samples.append(args.batch * args.seq / (time.perf_counter() - t0))
    mean = sum(samples) / len(samples)
    return {"tokens_per_s": mean, "samples": samples, "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "loss": loss,
            "lora_params": sum(p.numel() for p in params), "torch": torch.__version__, "device": torch.cuda.get_device_name()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tern", required=True)
    ap.add_argument("--model", default="/tmp/synth-2b-4t-hf.gguf")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--skip-peft", action="store_true")
    args = ap.parse_args()
    res = {"shape": "2b-4t", "batch": args.batch, "seq": args.seq, "rank": args.rank, "date": time.strftime("%Y-%m-%d")}
    res["tern"] = run_tern(args)
    print(f"tern: {res['tern']['tokens_per_s']:.0f} tok/s, {res['tern']['gpu_gib']:.2f} GiB in use", flush=True)
    if not args.skip_peft:
        try:
            res["peft"] = run_peft(args)
            p = res["peft"]
            print(f"peft: {p['tokens_per_s']:.0f} tok/s, peak {p['peak_reserved_gib']:.2f} GiB reserved "
                  f"({p['peak_allocated_gib']:.2f} allocated)", flush=True)
            res["speedup"] = res["tern"]["tokens_per_s"] / p["tokens_per_s"]
            res["memory_ratio"] = res["tern"]["gpu_gib"] / p["peak_reserved_gib"]
            print(f"tern / peft: {res['speedup']:.2f}x the tokens/s at {res['memory_ratio']:.2f}x the memory")
        except Exception as e:  # report, keep tern's numbers
            res["peft_error"] = repr(e)
            print("peft failed:", repr(e))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# --lora and lora-init end to end: a fresh adapter (B = 0) changes nothing, a random one
# changes the logits the same way in prefill and decode, adapters stack and scale, every
# command that runs a model takes --lora, and bad adapters or specs exit 1 naming the
# file or flag.
source "$(dirname "$0")/lib.bash"

expect_ok "$TERN" synth --shape tiny -o "$WORK/t.gguf" --seed 5
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/base.npy"

# A fresh adapter starts as the base model (B = 0, as peft initialises it).
expect_ok "$TERN" lora-init -m "$WORK/t.gguf" -o "$WORK/zero"
grep -q "rank 16, alpha 32" "$WORK/out" && ok || bad "lora-init did not report rank and alpha: $(cat "$WORK/out")"
[ -f "$WORK/zero/adapter_config.json" ] && [ -f "$WORK/zero/adapter_model.safetensors" ] && ok || bad "lora-init wrote no adapter files"
grep -q '"peft_type": "LORA"' "$WORK/zero/adapter_config.json" && ok || bad "adapter_config.json lacks peft_type LORA"
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/zero.npy" --lora "$WORK/zero"
same_file "$WORK/base.npy" "$WORK/zero.npy"

# A random adapter changes the logits; prefill and decode still agree bit for bit.
expect_ok "$TERN" lora-init -m "$WORK/t.gguf" -o "$WORK/r" --rank 4 --alpha 8 --targets q_proj,v_proj,down_proj --seed 3 --b-std 0.05
grep -q '"r": 4' "$WORK/r/adapter_config.json" && ok || bad "adapter_config.json lacks r = 4"
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/r.npy" --lora "$WORK/r"
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/r1.npy" --lora "$WORK/r" --batch 1 -t 1
same_file "$WORK/r.npy" "$WORK/r1.npy"
cmp -s "$WORK/base.npy" "$WORK/r.npy" && bad "a random adapter left the logits unchanged" || ok
# Scale 0 is the base model; DIR:1 is DIR.
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/s0.npy" --lora "$WORK/r:0"
same_file "$WORK/base.npy" "$WORK/s0.npy"
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/s1.npy" --lora "$WORK/r:1.0"
same_file "$WORK/r.npy" "$WORK/s1.npy"
# Two adapters at once (repeatable flag).
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/two.npy" --lora "$WORK/r:0.5" --lora "$WORK/zero"

# Every command that runs the model takes --lora.
expect_ok "$TERN" generate -m "$WORK/t.gguf" -p "Hello" -n 4 --temp 0 -t 2 --backend cpu --lora "$WORK/r"
expect_ok "$TERN" generate -m "$WORK/t.gguf" -p "Hello" -n 4 --temp 0 -t 2 --backend cpu --lora "$WORK/zero"
cp "$WORK/out" "$WORK/gen_zero.txt"
expect_ok "$TERN" generate -m "$WORK/t.gguf" -p "Hello" -n 4 --temp 0 -t 2 --backend cpu
same_file "$WORK/gen_zero.txt" "$WORK/out"
printf 'hi\n/exit\n' >"$WORK/chat.in"
expect_ok "$TERN" chat -m "$WORK/t.gguf" -n 3 --temp 0 -t 2 --backend cpu --lora "$WORK/r" <"$WORK/chat.in"
printf 'The quick brown fox jumps over the lazy dog. %.0s' 1 2 3 4 5 >"$WORK/p.txt"
expect_ok "$TERN" perplexity -m "$WORK/t.gguf" -f "$WORK/p.txt" -c 16 -t 2 --backend cpu --lora "$WORK/r:2"
grep -q "Final estimate" "$WORK/out" && ok || bad "perplexity --lora printed no estimate"
expect_ok "$TERN" bench -m "$WORK/t.gguf" -p 8 -n 2 -r 1 -t 2 --lora "$WORK/r"
grep -q "pp8" "$WORK/out" && ok || bad "bench --lora printed no pp8 row"

# lora-init refuses to overwrite an adapter unless --force.
expect_fail "already holds an adapter" "$TERN" lora-init -m "$WORK/t.gguf" -o "$WORK/r"
expect_ok "$TERN" lora-init -m "$WORK/t.gguf" -o "$WORK/r" --force --rank 2
expect_fail "--targets" "$TERN" lora-init -m "$WORK/t.gguf" -o "$WORK/x" --targets q_proj,lm_head
expect_fail "--rank" "$TERN" lora-init -m "$WORK/t.gguf" -o "$WORK/x" --rank 0
[ ! -e "$WORK/x" ] && ok || bad "a failed lora-init left $WORK/x behind"

# Bad adapters and specs: exit 1, the file or flag named.
expect_fail "$WORK/missing: not a directory" "$TERN" logits -m "$WORK/t.gguf" --tokens 1 -o "$WORK/x.npy" --lora "$WORK/missing"
expect_fail "--lora: scale 'abc'" "$TERN" logits -m "$WORK/t.gguf" --tokens 1 -o "$WORK/x.npy" --lora "$WORK/r:abc"
mkdir -p "$WORK/empty"
expect_fail "$WORK/empty/adapter_config.json: missing" "$TERN" generate -m "$WORK/t.gguf" -p "Hi" -n 1 --backend cpu --lora "$WORK/empty"
sed 's/"LORA"/"IA3"/' "$WORK/r/adapter_config.json" >"$WORK/r/c.json" && mv "$WORK/r/c.json" "$WORK/r/adapter_config.json"
expect_fail "adapter_config.json: field peft_type" "$TERN" perplexity -m "$WORK/t.gguf" -f "$WORK/p.txt" -c 16 --backend cpu --lora "$WORK/r"
# An adapter made for another shape.
expect_ok "$TERN" synth --shape 256,512,1,4,2,300 -o "$WORK/one.gguf"
expect_fail "layer 1 but the model has 1 layers" "$TERN" logits -m "$WORK/one.gguf" --tokens 1 -o "$WORK/x.npy" --lora "$WORK/zero"
finish

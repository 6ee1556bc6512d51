#!/usr/bin/env bash
# tern finetune end to end on a synthetic tiny model: the loss falls, the outputs exist and
# the adapter loads with --lora, --resume continues exactly (same adapter bytes as an
# uninterrupted run), and bad data or flags exit 1 naming the file or flag.
source "$(dirname "$0")/lib.bash"

expect_ok "$TERN" synth --shape tiny -o "$WORK/t.gguf" --seed 3
cat >"$WORK/data.json" <<'JSON'
[{"instruction": "Say hello", "input": "", "output": "hello hello"},
 {"instruction": "Say bye", "input": "", "output": "bye bye bye"},
 {"instruction": "Repeat", "input": "one two", "output": "one two one two"},
 {"instruction": "Count", "input": "", "output": "one two three"},
 {"text": "a plain text record for language modelling"},
 {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}]
JSON
model=(-m "$WORK/t.gguf" --rank 4 --alpha 8 --dropout 0.1 --batch-size 2 --lr 5e-3
        --lr-schedule constant --max-grad-norm 1 -t 2)
common=("${model[@]}" --data "$WORK/data.json")

# 12 straight steps, checkpoints every 6.
expect_ok "$TERN" finetune "${common[@]}" -o "$WORK/a" --max-steps 12 --save-every 6
for f in adapter_config.json adapter_model.safetensors metrics.jsonl loss_curve.svg checkpoint-6/optimizer.safetensors \
         checkpoint-12/trainer_state.json; do
  [ -s "$WORK/a/$f" ] && ok || bad "missing $f"
done
[ "$(grep -c '"loss"' "$WORK/a/metrics.jsonl")" = 12 ] && ok || bad "metrics.jsonl should have 12 step lines"
grep -q "<svg" "$WORK/a/loss_curve.svg" && ok || bad "loss_curve.svg is not an SVG"
# The loss falls: the first epoch's mean (3 batches of 2 of the 6 records) against the last
# epoch's. One step's loss against another's compares different records on a random model
# (seen: 43.5 -> 45.2 on the GPU while the epoch means fell).
read -r first last < <(grep '"loss"' "$WORK/a/metrics.jsonl" | sed 's/.*"loss":\([0-9.e+-]*\).*/\1/' |
  awk '{ a[NR] = $1 } END { print (a[1] + a[2] + a[3]) / 3, (a[NR - 2] + a[NR - 1] + a[NR]) / 3 }')
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' && ok || bad "loss did not fall: first epoch $first -> last epoch $last"

# 6 steps, then --resume to 12: the same adapter, byte for byte.
expect_ok "$TERN" finetune "${common[@]}" -o "$WORK/b" --max-steps 6 --save-every 6
expect_ok "$TERN" finetune "${common[@]}" -o "$WORK/b" --max-steps 12 --save-every 6 --resume
same_file "$WORK/a/adapter_model.safetensors" "$WORK/b/adapter_model.safetensors"
same_file "$WORK/a/checkpoint-12/optimizer.safetensors" "$WORK/b/checkpoint-12/optimizer.safetensors"

# The trained adapter is usable at inference, and --init-adapter starts from it.
expect_ok "$TERN" generate -m "$WORK/t.gguf" -p "Say hello" -n 4 --temp 0 --backend cpu --lora "$WORK/a"
expect_ok "$TERN" finetune "${common[@]}" -o "$WORK/c" --max-steps 1 --init-adapter "$WORK/a" --eval-split 0.3

# Bad input.
expect_fail "$WORK/none.json" "$TERN" finetune "${model[@]}" -o "$WORK/d" --data "$WORK/none.json"
printf '[{"instruction": "x", "output": ' >"$WORK/bad.json"
expect_fail "bad.json" "$TERN" finetune "${model[@]}" -o "$WORK/d" --data "$WORK/bad.json"
expect_fail "no checkpoint-N" "$TERN" finetune "${common[@]}" -o "$WORK/fresh" --resume
expect_fail "--targets" "$TERN" finetune "${common[@]}" -o "$WORK/d" --targets qq_proj
expect_fail "--optimizer" "$TERN" finetune "${common[@]}" -o "$WORK/d" --optimizer adam
expect_fail "--eval-split" "$TERN" finetune "${common[@]}" -o "$WORK/d" --eval-split 1.5
expect_fail "--precision" "$TERN" finetune "${common[@]}" -o "$WORK/d" --precision fp16
expect_fail "--backend" "$TERN" finetune "${common[@]}" -o "$WORK/d" --backend tpu

# Training throughput (tern bench --train): a full optimizer step on random tokens.
expect_ok "$TERN" bench -m "$WORK/t.gguf" --train --backend cpu -p 12 --train-batch 2 --rank 2 -r 1 --json -t 2
grep -q '"test": "train12@b2"' "$WORK/out" && grep -q '"avg_ts"' "$WORK/out" && ok || bad "bench --train JSON: $(head -c 300 "$WORK/out")"
expect_fail "--precision" "$TERN" bench -m "$WORK/t.gguf" --train --backend cpu -p 12 --precision half
expect_fail "-p" "$TERN" bench -m "$WORK/t.gguf" --train --backend cpu -p 1
expect_fail "--targets" "$TERN" bench -m "$WORK/t.gguf" --train --backend cpu -p 12 --targets qq_proj
# The capped CPU paths (TERN_CPU_SIMD=scalar, =avx2) give the same logits as the dispatched
# one, and token-by-token decode (the fused 16-bit head, single-row dots) the same as one
# 5-token forward (4-token tiles, the head row converted once).
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,4,5 -o "$WORK/simd.npy" --backend cpu
TERN_CPU_SIMD=scalar expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,4,5 -o "$WORK/scalar.npy" --backend cpu
same_file "$WORK/simd.npy" "$WORK/scalar.npy"
TERN_CPU_SIMD=avx2 expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,4,5 -o "$WORK/avx2.npy" --backend cpu
same_file "$WORK/simd.npy" "$WORK/avx2.npy"
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,4,5 -o "$WORK/decode.npy" --backend cpu --batch 1
same_file "$WORK/simd.npy" "$WORK/decode.npy"

# A base that behaves like a fresh HF model (logits of order 1): its first loss is near
# log(vocab), where the sharp default init starts far above.
expect_ok "$TERN" synth --shape tiny --init hf -o "$WORK/h.gguf" --seed 3
expect_ok "$TERN" bench -m "$WORK/h.gguf" --train --backend cpu -p 12 --train-batch 2 --rank 2 -r 1 --json -t 2
loss=$(grep '"loss"' "$WORK/out" | sed 's/[^0-9.]//g')
vocab_log=$("$TERN" info -m "$WORK/h.gguf" 2>/dev/null | grep -io 'vocab[^0-9]*[0-9]*' | head -1 | sed 's/[^0-9]//g')
awk -v l="$loss" -v v="$vocab_log" 'BEGIN { exit !(v > 0 && l > log(v) - 1 && l < log(v) + 1) }' && ok ||
  bad "hf init: first loss $loss is not near log($vocab_log)"
expect_fail "--init" "$TERN" synth --shape tiny --init xavier -o "$WORK/x.gguf"
finish

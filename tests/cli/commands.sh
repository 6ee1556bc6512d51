#!/usr/bin/env bash
# End-to-end runs of every command on small synthetic models.
source "$(dirname "$0")/lib.bash"

expect_ok "$TERN" synth --shape tiny -o "$WORK/t.gguf" --seed 3
expect_ok "$TERN" info -m "$WORK/t.gguf" --tensors
grep -q "layers: *2" "$WORK/out" && ok || bad "info lacks the layer count"
grep -q "blk.1.ffn_down.weight" "$WORK/out" && ok || bad "info --tensors lacks a tensor"

# Logits: prefill, token-by-token decode and chunks must agree bit for bit.
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/a.npy" -t 2
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/b.npy" --batch 1 -t 1
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/c.npy" --batch 2
same_file "$WORK/a.npy" "$WORK/b.npy"
same_file "$WORK/a.npy" "$WORK/c.npy"
# --no-mmap: the weights read into memory, the same logits.
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/d.npy" --no-mmap
same_file "$WORK/a.npy" "$WORK/d.npy"
# A model over 16 MB just copied (the page cache holds a copy in the pieces it was written in):
# the CPU engine settles the bytes it streams in 2 MB pages, re-caching them where the kernel
# can (util/mapped_file.h); the logits stay those of the weights read into memory.
expect_ok "$TERN" synth --shape 256,512,1,2,1,40000 -o "$WORK/big.gguf"
cp "$WORK/big.gguf" "$WORK/big-copy.gguf" && sync "$WORK/big-copy.gguf"
expect_ok "$TERN" logits -m "$WORK/big-copy.gguf" --tokens 1,2,39999 -o "$WORK/big-a.npy" -t 2
expect_ok "$TERN" logits -m "$WORK/big.gguf" --tokens 1,2,39999 -o "$WORK/big-b.npy" --no-mmap
same_file "$WORK/big-a.npy" "$WORK/big-b.npy"
cp "$WORK/big.gguf" "$WORK/big-copy2.gguf" && sync "$WORK/big-copy2.gguf"
expect_ok "$TERN" bench -m "$WORK/big-copy2.gguf" -p 0 -n 2 -r 1 -t 2 --json
# weights_recached_s appears only where the kernel re-cached (this VM does; others may not).
if grep -q '"weights_recached_s"' "$WORK/out"; then
  grep -Eq '"weights_recached_s": [0-9.e-]+' "$WORK/out" && grep -q '"weights_in_2mb_pages"' "$WORK/out" && ok ||
    bad "bench --json: weights_recached_s without a number or weights_in_2mb_pages: $(cat "$WORK/out")"
  echo "  (the copied model was re-cached in 2 MB pages at load)"
else
  echo "  (the copied model was not re-cached here: the kernel or file system keeps no 2 MB folios)"
fi
size=$(stat -c %s "$WORK/a.npy")
[ "$size" -eq $((128 + 5 * 512 * 4)) ] && ok || bad "logits .npy has $size bytes"
head -c 128 "$WORK/a.npy" | grep -q "'shape': (5, 512)" && ok || bad ".npy header lacks shape (5, 512)"

# Every output format holds the same model.
for t in tq2_0 tq1_0 i2_s; do
  expect_ok "$TERN" convert "$WORK/t.gguf" "$WORK/t-$t.gguf" --type $t
  expect_ok "$TERN" logits -m "$WORK/t-$t.gguf" --tokens 1,2,3,300,7 -o "$WORK/$t.npy"
  same_file "$WORK/a.npy" "$WORK/$t.npy"
done
expect_ok "$TERN" synth --shape tiny -o "$WORK/hf" --type hf-packed --seed 3
expect_ok "$TERN" logits -m "$WORK/hf" --tokens 1,2,3,300,7 -o "$WORK/hf.npy"
same_file "$WORK/a.npy" "$WORK/hf.npy"
expect_ok "$TERN" convert "$WORK/hf" "$WORK/from-hf.gguf" --type i2_s
expect_ok "$TERN" logits -m "$WORK/from-hf.gguf" --tokens 1,2,3,300,7 -o "$WORK/from-hf.npy"
same_file "$WORK/a.npy" "$WORK/from-hf.npy"

# Text prompts go through the model's tokenizer.
expect_ok "$TERN" logits -m "$WORK/t.gguf" -p "Hello, world" -o "$WORK/p.npy"
expect_ok "$TERN" logits -m "$WORK/hf" -p "Hello, world" -o "$WORK/p2.npy"
same_file "$WORK/p.npy" "$WORK/p2.npy"

# Bench prints llama-bench-like rows and JSON.
expect_ok "$TERN" bench -m "$WORK/t.gguf" -p 16 -n 4 -r 2 -t 2
grep -q "pp16" "$WORK/out" && grep -q "tg4" "$WORK/out" && ok || bad "bench table lacks pp16/tg4"
expect_ok "$TERN" bench -m "$WORK/t.gguf" -p 8,16 -n 0 -r 1 --json
grep -q '"avg_ts"' "$WORK/out" && grep -q '"pp8"' "$WORK/out" && ok || bad "bench --json lacks fields"
# Batched decode rows (-B) with their roofline, in the table and in JSON.
expect_ok "$TERN" bench -m "$WORK/t.gguf" -p 0 -n 4 -B 1,3 -r 1 -t 2 --bw 10
grep -q "tg4@B3" "$WORK/out" && grep -q "roofline: .* at 10 GB/s (--bw)" "$WORK/out" && ok || bad "bench -B table: $(cat "$WORK/out")"
expect_ok "$TERN" bench -m "$WORK/t.gguf" -p 0 -n 4 -B 3 -r 1 -t 2 --json --lm-head int8
grep -q '"n_batch": 3' "$WORK/out" && grep -q '"pct_roofline"' "$WORK/out" && grep -q '"lm_head": "int8"' "$WORK/out" &&
  grep -q '"pct_bw_around"' "$WORK/out" && ok || bad "bench -B --json lacks n_batch/pct_roofline/lm_head/pct_bw_around"
# Long enough for read passes between the steps (one after every 4th).
expect_ok "$TERN" bench -m "$WORK/t.gguf" -p 0 -n 9 -r 1 -t 2 --json --no-mmap
grep -q '"pct_bw_between"' "$WORK/out" && ok || bad "bench --json lacks pct_bw_between: $(cat "$WORK/out")"
grep -q '"weights_in_2mb_pages"' "$WORK/out" && ok || bad "bench --json lacks weights_in_2mb_pages: $(cat "$WORK/out")"
# Depth (-d): each test from D cached positions; the decode roofline counts their KV reads.
expect_ok "$TERN" bench -m "$WORK/t.gguf" -p 8 -n 4 -d 0,40 -r 1 -t 2 --json --bw 10
grep -q '"test": "tg4@d40"' "$WORK/out" && grep -q '"test": "pp8@d40"' "$WORK/out" && grep -q '"test": "tg4"' "$WORK/out" &&
  grep -q '"n_depth": 40' "$WORK/out" && ok || bad "bench -d JSON lacks tg4@d40/pp8@d40/n_depth: $(cat "$WORK/out")"
# (nlohmann::json orders an object's keys: roofline_ts comes before test)
roof() { awk -v t="\"$1\"," '/{/ { r = "" } $1 == "\"roofline_ts\":" { r = $2; sub(",", "", r) } $1 == "\"test\":" && $2 == t { print r }' "$WORK/out"; }
awk -v a="$(roof tg4)" -v b="$(roof tg4@d40)" 'BEGIN { exit !(b > 0 && b < a) }' && ok ||
  bad "bench -d: tg4@d40's roofline ($(roof tg4@d40)) should be below tg4's ($(roof tg4))"
expect_fail "-d" "$TERN" bench -m "$WORK/t.gguf" -p 8 -n 0 -d x
expect_fail "--batch" "$TERN" bench -m "$WORK/t.gguf" -p 0 -n 4 -B x
expect_fail "unknown backend 'gpu'" "$TERN" bench -m "$WORK/t.gguf" -p 8 -n 0 --backend gpu

# A custom shape.
expect_ok "$TERN" synth --shape 256,512,1,2,1,300 -o "$WORK/c.gguf" --type tq2_0
expect_ok "$TERN" synth --shape 128,256,1,2,1,300 -o "$WORK/c2.gguf"
finish

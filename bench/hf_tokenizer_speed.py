"""HF tokenizers' single-thread encode speed on the same text and pieces as bench_tokenizer.

Run on the GPU machine (which has `tokenizers`):
  RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false python3 bench/hf_tokenizer_speed.py TOKENIZER_JSON TEXT
"""
import sys
import time

from tokenizers import Tokenizer


def main() -> None:
    tok = Tokenizer.from_file(sys.argv[1])
    data = open(sys.argv[2], "rb").read()
    pieces, i = [], 0
    while i < len(data):  # 1 MiB pieces cut at UTF-8 character starts, as bench_tokenizer does
        j = min(len(data), i + (1 << 20))
        while j < len(data) and (data[j] & 0xC0) == 0x80:
            j += 1
        pieces.append(data[i:j].decode("utf-8"))
        i = j
    times, n = [], 0
    for _ in range(3):
        t0 = time.perf_counter()
        n = sum(len(tok.encode(p, add_special_tokens=False).ids) for p in pieces)
        times.append(time.perf_counter() - t0)
    print(f"{len(data) / min(times) / 1e6:.2f} MB/s best of 3, {len(data) / times[0] / 1e6:.2f} MB/s first run "
          f"({len(data)} bytes, {n} tokens)")


if __name__ == "__main__":
    main()

// Byte-level BPE over one pre-token: the HF `tokenizers` BPE model with ignore_merges.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tern {

class BpeModel {
 public:
  // tokens by id in byte-level form; in_bpe[id] is false for added/special tokens,
  // which the BPE model never produces (as in HF, where they live outside model.vocab).
  // merges are "left right" in rank order; merges naming tokens that are not BPE tokens
  // are skipped, as llama.cpp does.
  BpeModel(const std::vector<std::string>& tokens, const std::vector<bool>& in_bpe,
           const std::vector<std::string>& merges);

  // Appends the ids of one pre-token given as raw bytes. Throws tern::Error naming the
  // piece if some byte has no token.
  void encode(std::string_view piece, std::vector<int32_t>& out) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  void merge_symbols(std::vector<int32_t>& ids) const;

  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

  StringMap vocab_;                             // byte-level text -> id
  std::unordered_map<uint64_t, Merge> merges_;  // (left id, right id) -> rank, result
  std::array<int32_t, 256> byte_id_;            // raw byte -> id of its token, -1 if none

  // Pre-token -> ids for words that needed merging. Encoding may run on several threads
  // at once, hence the lock; the cache is simply dropped when it grows too large.
  static constexpr size_t kCacheMax = 1 << 16;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace tern

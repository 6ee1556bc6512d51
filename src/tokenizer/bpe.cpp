#include "tokenizer/bpe.h"

#include <algorithm>

#include "tern/error.h"
#include "tokenizer/byte_level.h"

namespace tern {

BpeModel::BpeModel(const std::vector<std::string>& tokens, const std::vector<bool>& in_bpe,
                   const std::vector<std::string>& merges) {
  vocab_.reserve(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id)
    if (in_bpe[id]) vocab_.emplace(tokens[id], int32_t(id));  // first id wins on duplicates

  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(bytelevel::byte_to_unicode(uint8_t(b)));
    byte_id_[b] = it == vocab_.end() ? -1 : it->second;
  }

  merges_.reserve(merges.size());
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& m = merges[rank];
    // Split at the first space after the first character (a left part cannot be empty).
    size_t sp = m.find(' ', 1);
    if (sp == std::string::npos) continue;
    std::string_view left(m.data(), sp), right(m.data() + sp + 1, m.size() - sp - 1);
    joined.assign(left).append(right);
    auto l = vocab_.find(left), r = vocab_.find(right), j = vocab_.find(joined);
    if (l == vocab_.end() || r == vocab_.end() || j == vocab_.end()) continue;
    merges_.emplace(pair_key(l->second, r->second), Merge{int32_t(rank), j->second});  // first rank wins
  }
}

void BpeModel::encode(std::string_view piece, std::vector<int32_t>& out) const {
  std::string mapped;
  mapped.reserve(piece.size() * 2);
  bytelevel::encode(piece, mapped);

  // ignore_merges: a pre-token that is itself a token is emitted whole.
  if (auto it = vocab_.find(mapped); it != vocab_.end()) {
    out.push_back(it->second);
    return;
  }
  {
    std::lock_guard lock(cache_mu_);
    if (auto it = cache_.find(mapped); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }

  std::vector<int32_t> ids;
  ids.reserve(piece.size());
  for (unsigned char c : piece) {
    if (byte_id_[c] < 0)
      fail("tokenizer: piece \"{}\" is not in the vocabulary (byte 0x{:02X} has no token)",
           bytelevel::byte_to_unicode(c), c);
    ids.push_back(byte_id_[c]);
  }
  merge_symbols(ids);
  out.insert(out.end(), ids.begin(), ids.end());

  std::lock_guard lock(cache_mu_);
  if (cache_.size() >= kCacheMax) cache_.clear();
  cache_.emplace(std::move(mapped), std::move(ids));
}

// Classic BPE as HF runs it: repeatedly merge the adjacent pair with the lowest rank,
// leftmost first on ties. Symbols form a linked list; candidate pairs sit in a min-heap
// and are re-validated when popped, since an earlier merge may have consumed them.
void BpeModel::merge_symbols(std::vector<int32_t>& ids) const {
  const int n = int(ids.size());
  if (n < 2) return;
  struct Sym {
    int32_t id, prev, next;
    bool alive;
  };
  struct Cand {
    int32_t rank, pos, left, right, result;
  };
  std::vector<Sym> syms(n);
  for (int i = 0; i < n; ++i) syms[i] = {ids[i], i - 1, i + 1 < n ? i + 1 : -1, true};

  std::vector<Cand> heap;
  auto later = [](const Cand& a, const Cand& b) {  // heap top = smallest (rank, pos)
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  auto push = [&](int pos) {
    int nx = syms[pos].next;
    if (nx < 0) return;
    auto it = merges_.find(pair_key(syms[pos].id, syms[nx].id));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, pos, syms[pos].id, syms[nx].id, it->second.result});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (int i = 0; i + 1 < n; ++i) push(i);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    Cand c = heap.back();
    heap.pop_back();
    Sym& a = syms[c.pos];
    if (!a.alive || a.next < 0 || a.id != c.left || syms[a.next].id != c.right) continue;  // stale
    Sym& b = syms[a.next];
    a.id = c.result;
    b.alive = false;
    a.next = b.next;
    if (b.next >= 0) syms[b.next].prev = c.pos;
    if (a.prev >= 0) push(a.prev);
    push(c.pos);
  }

  ids.clear();
  for (int i = 0; i >= 0; i = syms[i].next) ids.push_back(syms[i].id);
}

}  // namespace tern

// std::vector storage on 64-byte boundaries, for buffers the SIMD kernels stream. With
// plain std::vector the int8 activations of the CPU prefill landed wherever the heap put
// them (16-byte aligned), which depended on earlier allocations - even on whether argv[0]
// fit std::string's short buffer - and some placements ran pp128 ~20 % slower (2b-4t,
// 2-vCPU EPYC VM: page offset 2464 slow, 2416 fast; why is not established - not split
// loads, the fast one split more). Aligned, every run measured got the fast speed.
#pragma once
#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

namespace tern {

template <class T, std::size_t A = 64>
struct AlignedAllocator {
  using value_type = T;
  template <class U>
  struct rebind {
    using other = AlignedAllocator<U, A>;
  };
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U, A>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{A})); }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t{A}); }
  template <class U>
  bool operator==(const AlignedAllocator<U, A>&) const noexcept {
    return true;
  }
};

template <class T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

// An array of n trivial T on a 64-byte boundary, left uninitialised (its pages are only
// touched as it is written: the CPU KV cache). Plain new[] of a large array lands 16 bytes
// past a page start, so every 64-byte load of a cached row split two cache lines
// (attention's value loop ran ~25 % slower so; Zen 5 VM, 2026-11-28).
template <class T>
struct AlignedArrayDelete {
  void operator()(T* p) const noexcept { ::operator delete[](p, std::align_val_t{64}); }
};
template <class T>
using AlignedArray = std::unique_ptr<T[], AlignedArrayDelete<T>>;
template <class T>
AlignedArray<T> make_aligned_array(std::size_t n) {
  static_assert(std::is_trivially_default_constructible_v<T>);
  return AlignedArray<T>(static_cast<T*>(::operator new[](n * sizeof(T), std::align_val_t{64})));
}

}  // namespace tern

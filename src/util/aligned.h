// std::vector storage on 64-byte boundaries, for buffers the SIMD kernels stream. With
// plain std::vector the int8 activations of the CPU prefill landed wherever the heap put
// them (16-byte aligned), which depended on earlier allocations - even on whether argv[0]
// fit std::string's short buffer - and some placements ran pp128 ~20 % slower (2b-4t,
// 2-vCPU EPYC VM: page offset 2464 slow, 2416 fast; why is not established - not split
// loads, the fast one split more). Aligned, every run measured got the fast speed.
#pragma once
#include <cstddef>
#include <new>
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

}  // namespace tern

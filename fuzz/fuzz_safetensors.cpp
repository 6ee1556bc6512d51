// libFuzzer target for the safetensors reader: any input must either parse into
// tensors whose bytes lie inside the input, or throw tern::Error. Reading every
// tensor byte lets the address sanitizer catch a range check that is off by one.
#include <cstddef>
#include <cstdint>

#include "model/safetensors.h"
#include "tern/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    tern::st::Reader r = tern::st::Reader::parse(data, size, "fuzz.safetensors");
    uint64_t sum = 0;
    for (const auto& t : r.tensors()) {
      for (uint64_t k = 0; k < t.nbytes; ++k) sum += t.data[k];
    }
    for (const auto& [k, v] : r.metadata()) sum += k.size() + v.size();
    volatile uint64_t sink = sum;  // keep the reads from being optimised away
    (void)sink;
  } catch (const tern::Error&) {
    // Rejecting bad input with a message is the expected outcome.
  }
  return 0;
}

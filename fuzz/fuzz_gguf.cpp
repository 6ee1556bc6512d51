// libFuzzer target for the GGUF reader: any input must either parse into tensors whose
// bytes lie inside the input, or throw tern::Error. Reading every tensor byte lets the
// address sanitizer catch a range check that is off by one.
#include <cstddef>
#include <cstdint>

#include "model/gguf.h"
#include "tern/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    tern::gguf::Reader r = tern::gguf::Reader::parse(data, size, "fuzz.gguf");
    uint64_t sum = 0;
    for (const auto& t : r.tensors()) {
      for (uint64_t k = 0; k < t.nbytes; ++k) sum += t.data[k];
    }
    for (const auto& [key, v] : r.kv()) sum += key.size() + v.str.size() + v.strs.size();
    volatile uint64_t sink = sum;  // keep the reads from being optimised away
    (void)sink;
  } catch (const tern::Error&) {
    // Rejecting bad input with a message is the expected outcome.
  }
  return 0;
}

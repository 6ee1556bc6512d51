// Helpers shared by the GGUF and HF loaders and the writers.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"

namespace tern {

namespace gguf {
class Reader;
}
// The tokenizer.* metadata of a GGUF (empty TokenizerData if it has none).
TokenizerData read_gguf_tokenizer(const gguf::Reader& r);

// Reads and parses a JSON file that must hold an object; throws "FILE: invalid JSON: ..."
// or "FILE: expected a JSON object".
nlohmann::json read_json_object(const std::string& file);

// Widens F32/F16/BF16 elements to float.
std::vector<float> to_f32(FloatType type, const uint8_t* data, int64_t n);

// Checks every layer's tensors against the config; throws naming `where`.
void check_model_shapes(const Model& m, const std::string& where);

// Names used in summaries and errors: "blk.3.attn_q" style for GGUF, HF names for HF.
extern const char* const kLinearNames[7];  // q k v o gate up down (short)
TernaryMatrix& layer_linear(Layer& l, int i);
const TernaryMatrix& layer_linear(const Layer& l, int i);

}  // namespace tern

// tern info -m MODEL [--tensors]
#include <fmt/core.h>

#include <map>

#include "commands.h"
#include "model_flags.h"

namespace tern::cli {

namespace {
std::string human_bytes(uint64_t b) {
  if (b >= (1ull << 30)) return fmt::format("{:.2f} GiB", b / double(1ull << 30));
  if (b >= (1ull << 20)) return fmt::format("{:.2f} MiB", b / double(1ull << 20));
  if (b >= (1ull << 10)) return fmt::format("{:.2f} KiB", b / double(1ull << 10));
  return fmt::format("{} B", b);
}
std::string shape_str(const std::vector<int64_t>& s) {
  std::string out;
  for (int64_t d : s) out += (out.empty() ? "" : " x ") + std::to_string(d);
  return "[" + out + "]";
}
}  // namespace

Action add_info(CLI::App& app) {
  auto flags = std::make_shared<ModelFlags>();
  auto tensors = std::make_shared<bool>(false);
  flags->add(app);
  app.add_flag("--tensors", *tensors, "List every tensor");
  return [flags, tensors] {
    Model m = flags->load();
    const ModelConfig& c = m.config;
    int64_t ternary = 0;
    for (const Layer& l : m.layers) {
      for (const TernaryMatrix* t : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) ternary += t->rows * t->cols;
    }
    fmt::print("model:          {}\n", m.path);
    fmt::print("format:         {}\n", m.source_format);
    fmt::print("architecture:   {}\n", c.arch);
    fmt::print("layers:         {}\n", c.n_layers);
    fmt::print("hidden:         {}\n", c.hidden);
    fmt::print("ffn:            {} ({})\n", c.ffn, activation_name(c.act));
    fmt::print("heads:          {} (kv {}, head dim {})\n", c.n_heads, c.n_kv_heads, c.head_dim);
    fmt::print("vocab:          {}\n", c.vocab);
    fmt::print("context:        {}\n", c.ctx);
    fmt::print("rope theta:     {}\n", c.rope_theta);
    fmt::print("rms eps:        {}\n", c.rms_eps);
    fmt::print("parameters:     {:.3f} B ternary + {:.3f} B embedding ({}, tied LM head)\n", ternary / 1e9,
               c.vocab * c.hidden / 1e9, float_type_name(m.embedding.type));
    fmt::print("size:           {}\n", human_bytes(m.file_bytes));
    if (m.tokenizer.empty()) {
      fmt::print("tokenizer:      none in this checkpoint\n");
    } else {
      const TokenizerData& t = m.tokenizer;
      fmt::print("tokenizer:      {} BPE, {} tokens, {} merges, bos {}, eos {}, eot {}, chat template {}\n",
                 t.model.empty() ? "gpt2" : t.model, t.tokens.size(), t.merges.size(), t.bos, t.eos, t.eot,
                 t.chat_template.empty() ? "no" : "yes");
    }
    std::map<std::string, std::pair<int, uint64_t>> by_type;
    for (const TensorSummary& t : m.tensors) {
      by_type[t.type].first++;
      by_type[t.type].second += t.bytes;
    }
    fmt::print("tensors:        {}\n", m.tensors.size());
    for (const auto& [type, cnt] : by_type) fmt::print("  {:<28} {:>5} tensors {:>12}\n", type, cnt.first, human_bytes(cnt.second));
    if (*tensors) {
      for (const TensorSummary& t : m.tensors) {
        fmt::print("  {:<40} {:<24} {:<18} {:>12}\n", t.name, t.type, shape_str(t.shape), human_bytes(t.bytes));
      }
    }
    return 0;
  };
}

}  // namespace tern::cli

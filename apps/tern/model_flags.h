// Flags shared by every command that loads a model.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "model/model.h"

namespace tern::cli {

struct ModelFlags {
  std::string path;
  std::string activation;
  void add(CLI::App& app, bool required = true) {
    auto* o = app.add_option("-m,--model", path, "GGUF file or HF model directory");
    if (required) o->required();
    app.add_option("--activation", activation, "Override the FFN activation: relu2, silu or gelu");
  }
  Model load() const {
    LoadOptions opts;
    if (!activation.empty()) opts.activation = parse_activation(activation);
    return load_model(path, opts);
  }
};

}  // namespace tern::cli

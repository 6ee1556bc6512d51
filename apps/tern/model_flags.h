// Flags shared by every command that loads a model.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "model/model.h"

namespace tern::cli {

struct ModelFlags {
  std::string path;
  std::string activation;
  bool no_mmap = false;
  void add(CLI::App& app, bool required = true) {
    auto* o = app.add_option("-m,--model", path, "GGUF file or HF model directory");
    if (required) o->required();
    app.add_option("--activation", activation, "Override the FFN activation: relu2, silu or gelu");
    app.add_flag("--no-mmap", no_mmap,
                 "Read the weights into memory (2 MB pages) instead of mapping the file: steadier CPU decode where the page "
                 "cache holds the file in 4 KB pages");
  }
  Model load() const {
    LoadOptions opts;
    opts.mmap = !no_mmap;
    if (!activation.empty()) opts.activation = parse_activation(activation);
    return load_model(path, opts);
  }
};

}  // namespace tern::cli

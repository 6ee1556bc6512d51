// tern: one binary, one subcommand per job (llama.cpp-style flags: -m, -p, -n, -o).
#include <fmt/core.h>

#include <CLI/CLI.hpp>
#include <map>

#include "commands.h"
#include "tern/error.h"

int main(int argc, char** argv) {
  CLI::App app{"tern: BitNet b1.58 ternary LLM engine"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "tern 0.1.0");
  std::map<CLI::App*, tern::cli::Action> actions;
  auto add = [&](const char* name, const char* help, tern::cli::Action (*fn)(CLI::App&)) {
    CLI::App* sub = app.add_subcommand(name, help);
    actions[sub] = fn(*sub);
  };
  add("info", "Summarise a model: architecture, shapes, tensor types, bytes", tern::cli::add_info);
  add("convert", "Convert a model (HF dir or GGUF) to GGUF i2_s / tq2_0 / tq1_0", tern::cli::add_convert);
  add("synth", "Write a random-weight model of a given shape", tern::cli::add_synth);
  add("logits", "Write the logits of every position as float32 .npy", tern::cli::add_logits);
  add("tokenize", "Text on stdin -> token ids", tern::cli::add_tokenize);
  add("detokenize", "Token ids on stdin -> text", tern::cli::add_detokenize);
  add("generate", "Generate text from a prompt, streaming", tern::cli::add_generate);
  add("chat", "Interactive multi-turn chat", tern::cli::add_chat);
  add("perplexity", "Perplexity of a text file (llama-perplexity / HF sliding window)", tern::cli::add_perplexity);
  add("bench", "Prompt-processing and generation speed (like llama-bench)", tern::cli::add_bench);
  add("lora-init", "Write a fresh LoRA adapter (HF peft format) for a model", tern::cli::add_lora_init);
  add("finetune", "Train a LoRA adapter on Alpaca / text / chat data", tern::cli::add_finetune);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 1;
  }
  try {
    for (CLI::App* sub : app.get_subcommands()) return actions.at(sub)();
  } catch (const tern::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "error: out of memory\n");
    return 1;
  }
  return 1;
}

// One function per `tern` subcommand; each registers its flags on the CLI11 app and
// returns the action to run after parsing.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace tern::cli {

using Action = std::function<int()>;

Action add_info(CLI::App& app);
Action add_convert(CLI::App& app);
Action add_synth(CLI::App& app);
Action add_logits(CLI::App& app);
Action add_bench(CLI::App& app);
Action add_tokenize(CLI::App& app);
Action add_detokenize(CLI::App& app);
Action add_generate(CLI::App& app);
Action add_chat(CLI::App& app);
Action add_perplexity(CLI::App& app);
Action add_lora_init(CLI::App& app);
Action add_finetune(CLI::App& app);

}  // namespace tern::cli

// Training data for fine-tuning: JSON / JSONL records -> token sequences with per-token
// training targets, a deterministic train/eval split, and a resumable batcher.
//
// Label convention (the loss takes aligned (position, target) pairs):
//   labels has the same length as tokens, and labels[i] is the token the model must
//   predict AFTER reading tokens[0..i], i.e. the labels are ALREADY SHIFTED:
//     labels[i] = tokens[i + 1]  when token i + 1 is trained,
//     labels[i] = kIgnoreLabel   (-100) otherwise, and always at the last position.
//   So the loss is  sum over i with labels[i] != -100 of  -log softmax(logits[i])[labels[i]].
//   (HF computes the same thing from unshifted labels by shifting inside the loss.)
//
// Record forms (one per record, detected from its keys; a file may mix forms, since every
// record says what it is and a record that matches two forms is an error):
//   1. Alpaca {"instruction", "input" (optional, may be "" or null), "output"}:
//      BOS + prompt + output + EOS, trained on the output tokens and the EOS. The prompt is
//      stanford_alpaca's PROMPT_DICT (train.py): "prompt_input" when input != "", else
//      "prompt_no_input"; see alpaca_prompt(). Prompt and response are tokenized separately
//      and concatenated (see dataset.cpp for how this relates to stanford_alpaca's masking).
//   2. {"text"}: BOS + text, trained on every predicted token (HF causal LM).
//   3. {"messages": [{"role", "content"}, ...]}: rendered with the model's chat template
//      (BOS as ChatPrompter adds it), trained on each assistant turn's content and the text
//      the template closes the turn with (BitNet, LLaMA-3: "<|eot_id|>"), nothing else.
//      Method: incremental prefix rendering (see dataset.cpp).
// Extra keys in a record are ignored (datasets often carry ids or categories).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace tern {

constexpr int32_t kIgnoreLabel = -100;

struct TrainExample {
  std::vector<int32_t> tokens;
  std::vector<int32_t> labels;  // same length, already shifted (see above)
  int64_t record = -1;          // index of the source record in the file (0-based)
  int64_t n_trained() const;    // labels != kIgnoreLabel
};

enum class DatasetFormat { Auto, Alpaca, Text, Chat };

struct DatasetOptions {
  // Longest sequence kept, in tokens; longer ones are cut from the right (the end of the
  // response goes first). A record left with no trained label is dropped and counted.
  // 0 = no limit.
  int64_t max_len = 0;
  // Alpaca: end the response with EOS (and train on it), as stanford_alpaca does.
  bool add_eos = true;
  // Text: append EOS after the text (HF tokenizers add none; off by default).
  bool text_add_eos = false;
  // Alpaca: "### Response:\n" (true: the README's prompt format, alpaca-lora, torchtune,
  // axolotl) or "### Response:" exactly as stanford_alpaca's train.py (false).
  bool alpaca_response_newline = true;
  // Special-token text (e.g. "<|eot_id|>") inside Alpaca fields and "text" becomes the
  // special token, as HF tokenizers do by default. Chat templates always parse specials.
  bool parse_special = true;
  // Auto: each record's form from its keys. Otherwise every record must be of this form.
  DatasetFormat format = DatasetFormat::Auto;
};

struct DatasetStats {
  int64_t records = 0;            // records in the file
  int64_t examples = 0;           // kept
  int64_t alpaca = 0, text = 0, chat = 0;  // kept, by form
  int64_t truncated = 0;          // kept but cut to max_len
  int64_t dropped_truncated = 0;  // no trained label left after cutting to max_len
  int64_t dropped_empty = 0;      // nothing to train even uncut (empty text, no assistant turn)
  int64_t tokens = 0;             // in kept examples
  int64_t trained_tokens = 0;     // labels != -100 in kept examples
  int64_t longest = 0;            // longest kept example, in tokens
};
// "5000 records -> 4999 examples (4999 alpaca) (1 dropped: 1 with nothing to train within
//  max_len), 2 truncated, 522519 tokens, 286549 trained, longest 512"
std::string describe(const DatasetStats& s);

// Reads a JSON array of records or a JSONL file (one record per line; blank lines
// skipped), chosen by the first non-space character ('[' or '{'). Throws tern::Error
// naming the file, the record (0-based index; JSONL also the line) and the field:
// invalid JSON (with line and column), a record of no known form or of two, a field of
// the wrong type, invalid UTF-8, text the tokenizer rejects, and a dataset left with no
// examples. `stats`, when given, receives the counts.
std::vector<TrainExample> load_dataset(const std::string& path, const Tokenizer& tok, const TokenizerData& td,
                                       const DatasetOptions& o, DatasetStats* stats = nullptr);

// stanford_alpaca's prompt for a record (what the model is given at inference, too).
// An empty input selects the no-input prompt.
std::string alpaca_prompt(const std::string& instruction, const std::string& input, bool response_newline = true);

// Deterministic split: a seeded shuffle picks round(fraction * n) examples for eval
// (at least 1 when fraction > 0 and n >= 2, and never all of them); both parts keep
// the input order. fraction in [0, 1). Same input, fraction and seed -> same split on
// every platform (own PRNG, not std::shuffle).
struct DatasetSplit {
  std::vector<TrainExample> train, eval;
};
DatasetSplit split_eval(std::vector<TrainExample> examples, double fraction, uint64_t seed);

// A batch of `rows` sequences padded on the right to the longest (`seq_len`).
// tokens / labels are row-major [rows][seq_len]; padding has pad_id / kIgnoreLabel.
// Attention is per sequence: lengths[r] real tokens in row r, the rest is padding.
struct Batch {
  int64_t rows = 0, seq_len = 0;
  std::vector<int32_t> tokens, labels, lengths;
  std::vector<int64_t> indices;  // positions of the rows' examples in the batcher's vector
  int64_t epoch = 0;             // the epoch this batch belongs to
  int64_t trained_tokens = 0;    // labels != kIgnoreLabel
};

struct BatcherOptions {
  int64_t batch_size = 1;
  uint64_t seed = 0;
  bool shuffle = true;     // a fresh seeded permutation per epoch; false = file order
  bool drop_last = false;  // skip an epoch's final, smaller batch
  int32_t pad_id = 0;      // pad_token_for(td) gives the usual choice
};
// EOS when the tokenizer has one, else 0 (padding is never trained or attended).
int32_t pad_token_for(const TokenizerData& td);

// Where a Batcher stands: restoring it makes the batcher yield exactly the batches it
// would have yielded next. Also carries the settings and a fingerprint of the data,
// so a resume against different data or settings is refused.
struct BatcherState {
  uint64_t seed = 0;
  int64_t batch_size = 0;
  bool shuffle = true, drop_last = false;
  int64_t epoch = 0;     // current epoch (0-based)
  int64_t position = 0;  // examples of this epoch already served
  int64_t steps = 0;     // batches served in total
  int64_t n_examples = 0;
  uint64_t data_hash = 0;  // FNV-1a over every example's tokens and labels
};
void to_json(nlohmann::json& j, const BatcherState& s);
void from_json(const nlohmann::json& j, BatcherState& s);  // throws tern::Error on a bad field
std::string batcher_state_to_string(const BatcherState& s);
BatcherState batcher_state_from_string(const std::string& text);  // throws tern::Error

class Batcher {
 public:
  // `examples` must outlive the batcher and stay unchanged. Throws tern::Error when
  // there is nothing to batch (no examples, batch_size < 1, or drop_last with fewer
  // examples than one batch).
  Batcher(const std::vector<TrainExample>& examples, const BatcherOptions& o);
  // The next batch; after the last batch of an epoch the next epoch starts (reshuffled).
  // A batch never mixes two epochs.
  Batch next();
  BatcherState state() const;
  // Throws tern::Error when the state is for other data or other settings.
  void restore(const BatcherState& s);
  int64_t epoch() const { return epoch_; }
  int64_t steps() const { return steps_; }
  int64_t batches_per_epoch() const;

 private:
  void start_epoch(int64_t epoch);
  const std::vector<TrainExample>* ex_;
  BatcherOptions o_;
  uint64_t hash_;
  std::vector<int64_t> order_;
  int64_t epoch_ = 0, position_ = 0, steps_ = 0;
};

}  // namespace tern

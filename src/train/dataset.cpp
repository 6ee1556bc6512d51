// Training data: records -> (tokens, shifted labels), split, batches.
//
// How each form is tokenized, and why:
//
// Alpaca. stanford_alpaca (train.py, PROMPT_DICT / SupervisedDataset / preprocess)
// builds source = prompt, target = output + eos_token, tokenizes source + target and source
// on their own (both with the tokenizer's BOS), and sets labels[:len(source ids)] = -100.
// That mask is right only when the joint tokenization splits exactly at the prompt/response
// boundary. We tokenize the two parts separately and concatenate:
//   tokens = encode(prompt, add_bos) ++ encode(output) ++ [EOS]
// with every token after the prompt trained. With the LLaMA-3 pre-tokenizer and the
// "### Response:\n" prompt this gives the same ids as stanford_alpaca's joint tokenization
// unless the output begins with whitespace that contains a line break (the pre-tokenizer
// then joins it with the prompt's final "\n"; none of the 5000 records of alpaca_5000.json
// does, see the SharedAlpaca5000Stats test); there the joint mask would cut a token in
// two, and the separate tokenization is also exactly what the model sees at inference (the
// prompt tokenized alone, the response generated token by token after it). EOS is the id,
// appended, rather than the eos text tokenized with the output (same ids for LLaMA-3, whose
// eos is one special token). With alpaca_response_newline = false the prompt ends with
// "### Response:" as in train.py itself; the pre-tokenizer would then join the ':' with a
// response that starts with a letter (2058 of those 5000 records), which separate
// tokenization again keeps apart. Like train.py (model_max_length), long sequences are cut
// from the right; unlike it, a record left with no trained label is dropped, not kept
// with an all -100 label row.
//
// Chat. Incremental prefix rendering: for each assistant message i, render messages[0, i)
// with the generation prompt (P_i, ends with "Assistant: " for BitNet) and messages[0, i]
// without it (F_i). The text F_i[|P_i|:] is the assistant turn as the template writes it
// (BitNet: "content<|eot_id|>", content trimmed by the template), and is trained; the text
// between F_{i-1} and P_i (the following user turns and the next header) and after the last
// F (trailing turns) is not. Every rendering must extend the previous one (checked; a
// template that renders earlier turns differently once later turns follow is refused).
// Segments are tokenized separately (specials parsed) and concatenated, the first with
// BOS exactly as ChatPrompter does (added by the tokenizer unless the template wrote it).
// So the tokens before the first trained span are exactly ChatPrompter::encode() of the
// conversation up to that turn: the prompt the model gets at inference. (Tokenizing the
// whole rendering at once, as HF/TRL collators do, would differ for BitNet exactly at each
// "Assistant: " + content boundary: the header's trailing space joins the content's first
// word (" The") into a token that straddles the mask, while at inference the prompt ends in
// a lone " " token; the separate segments match inference and need no straddle rule.)
#include "train/dataset.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "tern/error.h"
#include "tokenizer/chat_template.h"
#include "util/atomic_file.h"

namespace tern {

using nlohmann::json;

int64_t TrainExample::n_trained() const {
  return std::count_if(labels.begin(), labels.end(), [](int32_t l) { return l != kIgnoreLabel; });
}

std::string alpaca_prompt(const std::string& instruction, const std::string& input, bool response_newline) {
  // tatsu-lab/stanford_alpaca train.py PROMPT_DICT, verbatim.
  std::string p;
  if (!input.empty()) {
    p = "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n" + instruction + "\n\n### Input:\n" + input + "\n\n### Response:";
  } else {
    p = "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n" + instruction + "\n\n### Response:";
  }
  if (response_newline) p += '\n';
  return p;
}

std::string describe(const DatasetStats& s) {
  std::string dropped;
  const int64_t n_dropped = s.dropped_truncated + s.dropped_empty;
  if (n_dropped > 0) {
    std::vector<std::string> why;
    if (s.dropped_truncated) why.push_back(fmt::format("{} with nothing to train within max_len", s.dropped_truncated));
    if (s.dropped_empty) why.push_back(fmt::format("{} with nothing to train", s.dropped_empty));
    dropped = fmt::format(" ({} dropped: {})", n_dropped, fmt::join(why, ", "));
  }
  std::vector<std::string> forms;
  if (s.alpaca) forms.push_back(fmt::format("{} alpaca", s.alpaca));
  if (s.text) forms.push_back(fmt::format("{} text", s.text));
  if (s.chat) forms.push_back(fmt::format("{} chat", s.chat));
  return fmt::format("{} records -> {} examples{}{}, {} truncated, {} tokens, {} trained, longest {}", s.records, s.examples,
                     forms.empty() ? "" : fmt::format(" ({})", fmt::join(forms, ", ")), dropped, s.truncated, s.tokens,
                     s.trained_tokens, s.longest);
}

namespace {

// ---- reading ----------------------------------------------------------------------

struct RawRecord {
  json value;
  int64_t line = 0;  // 1-based line (JSONL), 0 for a JSON array
};

// A message may quote bytes of the input; never pass invalid UTF-8 on.
std::string printable(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool ok = len > 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    if (ok) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += fmt::format("\\x{:02X}", c);
      ++i;
    }
  }
  return out;
}

// nlohmann's "[json.exception.parse_error.101] parse error at line 1, column 5: <what>" -> "<what>".
std::string parse_error_detail(const json::parse_error& e) {
  std::string_view m = e.what();
  const size_t col = m.find("column ");
  if (col != std::string_view::npos) {
    const size_t colon = m.find(": ", col);
    if (colon != std::string_view::npos) m.remove_prefix(colon + 2);
  }
  std::string out = printable(m);
  if (out.find("ill-formed UTF-8") != std::string::npos) out = "invalid UTF-8 in a string (" + out + ")";
  return out;
}

// 1-based line and column of byte offset `pos` (0-based) in text.
std::pair<int64_t, int64_t> line_col(std::string_view text, size_t pos) {
  pos = std::min(pos, text.size());
  int64_t line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i < pos; ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  return {line, static_cast<int64_t>(pos - line_start) + 1};
}

const char* type_name(const json& v) { return v.type_name(); }

std::vector<RawRecord> read_records(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail("{}: is a directory, not a dataset file", path);
  const std::string text = read_text_file(path);
  size_t start = 0;
  if (text.starts_with("\xEF\xBB\xBF")) start = 3;  // UTF-8 byte order mark
  while (start < text.size() && std::isspace(static_cast<unsigned char>(text[start]))) ++start;
  if (start == text.size()) fail("{}: empty dataset (no records)", path);

  std::vector<RawRecord> out;
  if (text[start] == '[') {
    // Count the finished top-level elements while parsing, to name the record an error is in.
    int64_t done = 0;
    json::parser_callback_t cb = [&done](int depth, json::parse_event_t ev, json&) {
      if (depth == 1 && (ev == json::parse_event_t::object_end || ev == json::parse_event_t::array_end ||
                         ev == json::parse_event_t::value))
        ++done;
      return true;
    };
    json doc;
    try {
      doc = json::parse(std::string_view(text).substr(start), cb);
    } catch (const json::parse_error& e) {
      const size_t at = start + (e.byte > 0 ? e.byte - 1 : 0);
      const auto [line, col] = line_col(text, at);
      fail("{}:{}:{}: invalid JSON in record {} (byte offset {}): {}", path, line, col, done, at, parse_error_detail(e));
    }
    out.reserve(doc.size());
    for (size_t i = 0; i < doc.size(); ++i) out.push_back({std::move(doc[i]), 0});
  } else if (text[start] == '{') {
    const size_t bom = text.starts_with("\xEF\xBB\xBF") ? 3 : 0;
    int64_t line_no = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      ++line_no;
      const size_t skip = line_no == 1 ? bom : 0;
      const std::string_view line(text.data() + pos + skip, end - pos - skip);
      const size_t line_pos = pos + skip;
      pos = end + 1;
      const bool blank = std::all_of(line.begin(), line.end(), [](char c) { return std::isspace(static_cast<unsigned char>(c)); });
      if (blank) continue;
      const int64_t index = static_cast<int64_t>(out.size());
      try {
        out.push_back({json::parse(line), line_no});
      } catch (const json::parse_error& e) {
        const size_t in_line = e.byte > 0 ? e.byte - 1 : 0;
        const bool whole_file_object = index == 0 && std::string_view(e.what()).find("end of input") != std::string_view::npos;
        fail("{}:{}:{}: invalid JSON in record {} (byte offset {}): {}{}", path, line_no, in_line + skip + 1, index,
             line_pos + in_line, parse_error_detail(e),
             whole_file_object ? " (a JSONL file holds one whole JSON object per line)" : "");
      }
    }
  } else {
    fail("{}: not a JSON array or JSONL file (starts with '{}'; expected '[' or '{{')", path, printable(text.substr(start, 1)));
  }
  if (out.empty()) fail("{}: empty dataset (no records)", path);
  return out;
}

// ---- records -> token sequences ---------------------------------------------------------

enum class Form { Alpaca, Text, Chat };

struct Ctx {
  const std::string& path;
  int64_t index;
  int64_t line;
  std::string where() const {
    return line > 0 ? fmt::format("{}: record {} (line {})", path, index, line) : fmt::format("{}: record {}", path, index);
  }
};

Form detect_form(const json& r, DatasetFormat forced, const Ctx& c) {
  switch (forced) {
    case DatasetFormat::Alpaca: return Form::Alpaca;
    case DatasetFormat::Text: return Form::Text;
    case DatasetFormat::Chat: return Form::Chat;
    case DatasetFormat::Auto: break;
  }
  const bool chat = r.contains("messages");
  const bool text = r.contains("text");
  const bool alpaca = r.contains("instruction") || r.contains("output");
  const int n = int(chat) + int(text) + int(alpaca);
  if (n == 1) return chat ? Form::Chat : text ? Form::Text : Form::Alpaca;
  if (n == 0) {
    std::vector<std::string> keys;
    for (auto it = r.begin(); it != r.end(); ++it) keys.push_back('"' + printable(it.key()) + '"');
    fail("{}: no known record form: expected \"instruction\" + \"output\" (Alpaca), \"text\", or \"messages\"; "
         "the record has {}",
         c.where(), keys.empty() ? std::string("no fields") : fmt::format("fields {}", fmt::join(keys, ", ")));
  }
  std::vector<std::string> forms;
  if (alpaca) forms.push_back("Alpaca (\"instruction\"/\"output\")");
  if (text) forms.push_back("\"text\"");
  if (chat) forms.push_back("\"messages\"");
  fail("{}: ambiguous record: it has the fields of {}; keep one form per record", c.where(), fmt::join(forms, " and "));
}

const std::string& get_string(const json& obj, const char* key, const std::string& field, const Ctx& c) {
  auto it = obj.find(key);
  if (it == obj.end()) fail("{}: field \"{}\" is missing", c.where(), field);
  if (!it->is_string()) fail("{}: field \"{}\": expected a string, got {}", c.where(), field, type_name(*it));
  return it->get_ref<const std::string&>();
}

// Per-token training mask -> TrainExample, with truncation and the counts.
struct Builder {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> trained;  // trained[j]: token j is a target (predicted from position j - 1)
  void add(const std::vector<int32_t>& ids, bool train) {
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    trained.insert(trained.end(), ids.size(), train ? 1 : 0);
  }
};

enum class Outcome { Kept, DroppedEmpty, DroppedTruncated };

Outcome finish(Builder& b, int64_t max_len, TrainExample& ex, bool& was_truncated) {
  auto any_target = [&](size_t n) {
    for (size_t j = 1; j < n; ++j)
      if (b.trained[j]) return true;
    return false;
  };
  was_truncated = false;
  if (!any_target(b.tokens.size())) return Outcome::DroppedEmpty;
  size_t n = b.tokens.size();
  if (max_len > 0 && n > static_cast<size_t>(max_len)) {
    n = static_cast<size_t>(max_len);
    was_truncated = true;
    if (!any_target(n)) return Outcome::DroppedTruncated;
  }
  ex.tokens.assign(b.tokens.begin(), b.tokens.begin() + static_cast<std::ptrdiff_t>(n));
  ex.labels.assign(n, kIgnoreLabel);
  for (size_t i = 0; i + 1 < n; ++i)
    if (b.trained[i + 1]) ex.labels[i] = ex.tokens[i + 1];
  return Outcome::Kept;
}

class RecordEncoder {
 public:
  RecordEncoder(const Tokenizer& tok, const TokenizerData& td, const DatasetOptions& o) : tok_(tok), td_(td), o_(o) {}

  void alpaca(const json& r, const Ctx& c, Builder& b) {
    const std::string& instruction = get_string(r, "instruction", "instruction", c);
    const std::string& output = get_string(r, "output", "output", c);
    std::string input;
    if (auto it = r.find("input"); it != r.end() && !it->is_null()) {
      if (!it->is_string()) fail("{}: field \"input\": expected a string, got {}", c.where(), type_name(*it));
      input = it->get<std::string>();
    }
    b.add(tok_.encode(alpaca_prompt(instruction, input, o_.alpaca_response_newline), td_.add_bos, o_.parse_special), false);
    b.add(tok_.encode(output, false, o_.parse_special), true);
    if (o_.add_eos) b.add({eos(c)}, true);
  }

  void text(const json& r, const Ctx& c, Builder& b) {
    const std::string& text = get_string(r, "text", "text", c);
    b.add(tok_.encode(text, td_.add_bos, o_.parse_special), true);
    if (o_.text_add_eos) b.add({eos(c)}, true);
    // The first token is never predicted (there is nothing before it).
    if (!b.trained.empty()) b.trained[0] = 0;
  }

  void chat(const json& r, const Ctx& c, Builder& b) {
    auto it = r.find("messages");
    if (it == r.end()) fail("{}: field \"messages\" is missing", c.where());
    if (!it->is_array()) fail("{}: field \"messages\": expected an array, got {}", c.where(), type_name(*it));
    std::vector<ChatMessage> msgs;
    for (size_t k = 0; k < it->size(); ++k) {
      const json& m = (*it)[k];
      const std::string name = fmt::format("messages[{}]", k);
      if (!m.is_object()) fail("{}: field \"{}\": expected an object, got {}", c.where(), name, type_name(m));
      msgs.push_back({get_string(m, "role", name + ".role", c), get_string(m, "content", name + ".content", c)});
    }
    const ChatTemplate& tmpl = chat_template();
    auto render = [&](size_t n, bool gen) {
      ChatTemplateInputs in;
      in.messages.assign(msgs.begin(), msgs.begin() + static_cast<std::ptrdiff_t>(n));
      in.add_generation_prompt = gen;
      in.bos_token = bos_text_;
      in.eos_token = eos_text_;
      return tmpl.render(in);
    };
    auto refuse = [&](size_t k) {
      fail("{}: the chat template renders the turns before messages[{}] differently once later turns follow, "
           "so the assistant turns cannot be located",
           c.where(), k);
    };
    std::vector<std::pair<std::string, bool>> segments;
    std::string done;  // rendered text covered by the segments so far
    for (size_t i = 0; i < msgs.size(); ++i) {
      if (msgs[i].role != "assistant") continue;
      std::string prompt = render(i, true);
      std::string full = render(i + 1, false);
      if (!prompt.starts_with(done) || !full.starts_with(prompt)) refuse(i);
      segments.emplace_back(prompt.substr(done.size()), false);
      segments.emplace_back(full.substr(prompt.size()), true);
      done = std::move(full);
    }
    const std::string all = render(msgs.size(), false);
    if (!all.starts_with(done)) refuse(msgs.size());
    segments.emplace_back(all.substr(done.size()), false);
    const bool has_bos = !bos_text_.empty() && all.starts_with(bos_text_);
    for (size_t s = 0; s < segments.size(); ++s) {
      const bool add_bos = s == 0 && td_.add_bos && !has_bos;
      if (segments[s].first.empty() && !add_bos) continue;
      b.add(tok_.encode(segments[s].first, add_bos, true), segments[s].second);
    }
  }

 private:
  int32_t eos(const Ctx& c) const {
    if (td_.eos < 0) fail("{}: the tokenizer has no EOS token to end the example with", c.where());
    return td_.eos;
  }
  const ChatTemplate& chat_template() {
    if (!tmpl_) {
      auto text_of = [&](int32_t id) { return id >= 0 && id < static_cast<int32_t>(td_.tokens.size()) ? td_.tokens[id] : ""; };
      bos_text_ = text_of(td_.bos);
      eos_text_ = text_of(td_.eos);
      tmpl_.emplace(chat_template_or_default(td_.chat_template));
    }
    return *tmpl_;
  }

  const Tokenizer& tok_;
  const TokenizerData& td_;
  const DatasetOptions& o_;
  std::optional<ChatTemplate> tmpl_;
  std::string bos_text_, eos_text_;
};

// ---- deterministic randomness --------------------------------------------------------

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Fisher-Yates with splitmix64: the same permutation on every platform and library.
void shuffle(std::vector<int64_t>& v, uint64_t seed) {
  uint64_t state = seed;
  for (size_t i = v.size(); i > 1; --i) {
    const uint64_t r = splitmix64(state);
    const auto j = static_cast<size_t>((static_cast<unsigned __int128>(r) * i) >> 64);  // uniform in [0, i)
    std::swap(v[i - 1], v[j]);
  }
}

uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001B3ull;
  }
  return h;
}

uint64_t hash_examples(const std::vector<TrainExample>& ex) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (const TrainExample& e : ex) {
    const uint64_t n = e.tokens.size();
    h = fnv1a(h, &n, sizeof n);
    h = fnv1a(h, e.tokens.data(), e.tokens.size() * sizeof(int32_t));
    h = fnv1a(h, e.labels.data(), e.labels.size() * sizeof(int32_t));
  }
  return h;
}

}  // namespace

std::vector<TrainExample> load_dataset(const std::string& path, const Tokenizer& tok, const TokenizerData& td,
                                       const DatasetOptions& o, DatasetStats* stats) {
  if (o.max_len < 0) fail("dataset: max_len {} is negative", o.max_len);
  std::vector<RawRecord> records = read_records(path);
  DatasetStats st;
  st.records = static_cast<int64_t>(records.size());
  RecordEncoder enc(tok, td, o);
  std::vector<TrainExample> out;
  out.reserve(records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    const Ctx c{path, static_cast<int64_t>(i), records[i].line};
    const json& r = records[i].value;
    if (!r.is_object()) fail("{}: expected a JSON object, got {}", c.where(), type_name(r));
    Builder b;
    Form form = detect_form(r, o.format, c);
    try {
      switch (form) {
        case Form::Alpaca: enc.alpaca(r, c, b); break;
        case Form::Text: enc.text(r, c, b); break;
        case Form::Chat: enc.chat(r, c, b); break;
      }
    } catch (const json::exception& e) {
      fail("{}: {}", c.where(), printable(e.what()));
    } catch (const Error& e) {
      const std::string msg = e.what();
      if (msg.starts_with(path + ": record ")) throw;
      fail("{}: {}", c.where(), msg);
    }
    TrainExample ex;
    bool truncated = false;
    switch (finish(b, o.max_len, ex, truncated)) {
      case Outcome::DroppedEmpty: ++st.dropped_empty; continue;
      case Outcome::DroppedTruncated: ++st.dropped_truncated; continue;
      case Outcome::Kept: break;
    }
    ex.record = static_cast<int64_t>(i);
    ++st.examples;
    (form == Form::Alpaca ? st.alpaca : form == Form::Text ? st.text : st.chat)++;
    st.truncated += truncated;
    st.tokens += static_cast<int64_t>(ex.tokens.size());
    st.trained_tokens += ex.n_trained();
    st.longest = std::max<int64_t>(st.longest, static_cast<int64_t>(ex.tokens.size()));
    out.push_back(std::move(ex));
    records[i].value = json();  // free as we go
  }
  if (stats) *stats = st;
  if (out.empty()) fail("{}: empty dataset: no record has anything to train ({})", path, describe(st));
  return out;
}

DatasetSplit split_eval(std::vector<TrainExample> examples, double fraction, uint64_t seed) {
  if (!(fraction >= 0.0 && fraction < 1.0)) fail("eval fraction {} is outside [0, 1)", fraction);
  const size_t n = examples.size();
  size_t n_eval = static_cast<size_t>(std::llround(fraction * static_cast<double>(n)));
  if (fraction > 0 && n >= 2) n_eval = std::clamp<size_t>(n_eval, 1, n - 1);
  if (n < 2) n_eval = 0;
  std::vector<int64_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = static_cast<int64_t>(i);
  shuffle(order, seed);
  std::vector<uint8_t> is_eval(n, 0);
  for (size_t k = 0; k < n_eval; ++k) is_eval[static_cast<size_t>(order[k])] = 1;
  DatasetSplit s;
  s.eval.reserve(n_eval);
  s.train.reserve(n - n_eval);
  for (size_t i = 0; i < n; ++i) (is_eval[i] ? s.eval : s.train).push_back(std::move(examples[i]));
  return s;
}

int32_t pad_token_for(const TokenizerData& td) { return td.eos >= 0 ? td.eos : 0; }

// ---- batcher state ----------------------------------------------------------------------

void to_json(json& j, const BatcherState& s) {
  j = json{{"seed", s.seed},
           {"batch_size", s.batch_size},
           {"shuffle", s.shuffle},
           {"drop_last", s.drop_last},
           {"epoch", s.epoch},
           {"position", s.position},
           {"steps", s.steps},
           {"n_examples", s.n_examples},
           {"data_hash", fmt::format("{:016x}", s.data_hash)}};
}

void from_json(const json& j, BatcherState& s) {
  if (!j.is_object()) fail("batcher state: expected a JSON object, got {}", j.type_name());
  auto field = [&](const char* key) -> const json& {
    auto it = j.find(key);
    if (it == j.end()) fail("batcher state: field \"{}\" is missing", key);
    return *it;
  };
  auto int_field = [&](const char* key) {
    const json& v = field(key);
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) || v.get<int64_t>() < 0)
      fail("batcher state: field \"{}\": expected a non-negative integer, got {}", key, printable(v.dump()));
    return v.get<int64_t>();
  };
  auto bool_field = [&](const char* key) {
    const json& v = field(key);
    if (!v.is_boolean()) fail("batcher state: field \"{}\": expected true or false, got {}", key, printable(v.dump()));
    return v.get<bool>();
  };
  const json& seed = field("seed");
  if (!seed.is_number_unsigned() && !(seed.is_number_integer() && seed.get<int64_t>() >= 0))
    fail("batcher state: field \"seed\": expected a non-negative integer, got {}", printable(seed.dump()));
  s.seed = seed.get<uint64_t>();
  s.batch_size = int_field("batch_size");
  s.shuffle = bool_field("shuffle");
  s.drop_last = bool_field("drop_last");
  s.epoch = int_field("epoch");
  s.position = int_field("position");
  s.steps = int_field("steps");
  s.n_examples = int_field("n_examples");
  const json& h = field("data_hash");
  const std::string hs = h.is_string() ? h.get<std::string>() : "";
  if (hs.size() != 16 || !std::all_of(hs.begin(), hs.end(), [](char ch) { return std::isxdigit(static_cast<unsigned char>(ch)); }))
    fail("batcher state: field \"data_hash\": expected 16 hex digits, got {}", printable(h.dump()));
  s.data_hash = std::stoull(hs, nullptr, 16);
}

std::string batcher_state_to_string(const BatcherState& s) { return json(s).dump(); }

BatcherState batcher_state_from_string(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    fail("batcher state: invalid JSON: {}", parse_error_detail(e));
  }
  return j.get<BatcherState>();
}

// ---- batcher ---------------------------------------------------------------------------

Batcher::Batcher(const std::vector<TrainExample>& examples, const BatcherOptions& o) : ex_(&examples), o_(o) {
  const auto n = static_cast<int64_t>(examples.size());
  if (n == 0) fail("batcher: no examples");
  if (o.batch_size < 1) fail("batcher: batch size {} (must be at least 1)", o.batch_size);
  if (o.drop_last && n < o.batch_size)
    fail("batcher: {} examples do not fill one batch of {} (drop_last)", n, o.batch_size);
  for (size_t i = 0; i < examples.size(); ++i)
    if (examples[i].tokens.empty() || examples[i].tokens.size() != examples[i].labels.size())
      fail("batcher: example {} has {} tokens and {} labels", i, examples[i].tokens.size(), examples[i].labels.size());
  hash_ = hash_examples(examples);
  start_epoch(0);
}

int64_t Batcher::batches_per_epoch() const {
  const auto n = static_cast<int64_t>(ex_->size());
  return o_.drop_last ? n / o_.batch_size : (n + o_.batch_size - 1) / o_.batch_size;
}

void Batcher::start_epoch(int64_t epoch) {
  epoch_ = epoch;
  position_ = 0;
  order_.resize(ex_->size());
  for (size_t i = 0; i < order_.size(); ++i) order_[i] = static_cast<int64_t>(i);
  if (o_.shuffle) {
    uint64_t s = o_.seed ^ (0xD1B54A32D192ED03ull * (static_cast<uint64_t>(epoch) + 1));
    shuffle(order_, splitmix64(s));
  }
}

Batch Batcher::next() {
  const auto n = static_cast<int64_t>(ex_->size());
  const int64_t left = n - position_;
  if (left <= 0 || (o_.drop_last && left < o_.batch_size)) start_epoch(epoch_ + 1);
  const int64_t rows = std::min(o_.batch_size, n - position_);
  Batch b;
  b.rows = rows;
  b.epoch = epoch_;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t idx = order_[static_cast<size_t>(position_ + r)];
    b.indices.push_back(idx);
    b.seq_len = std::max<int64_t>(b.seq_len, static_cast<int64_t>((*ex_)[static_cast<size_t>(idx)].tokens.size()));
  }
  b.tokens.assign(static_cast<size_t>(rows * b.seq_len), o_.pad_id);
  b.labels.assign(static_cast<size_t>(rows * b.seq_len), kIgnoreLabel);
  for (int64_t r = 0; r < rows; ++r) {
    const TrainExample& e = (*ex_)[static_cast<size_t>(b.indices[static_cast<size_t>(r)])];
    std::copy(e.tokens.begin(), e.tokens.end(), b.tokens.begin() + r * b.seq_len);
    std::copy(e.labels.begin(), e.labels.end(), b.labels.begin() + r * b.seq_len);
    b.lengths.push_back(static_cast<int32_t>(e.tokens.size()));
    b.trained_tokens += e.n_trained();
  }
  position_ += rows;
  ++steps_;
  return b;
}

BatcherState Batcher::state() const {
  BatcherState s;
  s.seed = o_.seed;
  s.batch_size = o_.batch_size;
  s.shuffle = o_.shuffle;
  s.drop_last = o_.drop_last;
  s.epoch = epoch_;
  s.position = position_;
  s.steps = steps_;
  s.n_examples = static_cast<int64_t>(ex_->size());
  s.data_hash = hash_;
  return s;
}

void Batcher::restore(const BatcherState& s) {
  const auto n = static_cast<int64_t>(ex_->size());
  if (s.n_examples != n || s.data_hash != hash_)
    fail("batcher state is for other data ({} examples, hash {:016x}; this data: {} examples, hash {:016x})", s.n_examples,
         s.data_hash, n, hash_);
  if (s.batch_size != o_.batch_size || s.seed != o_.seed || s.shuffle != o_.shuffle || s.drop_last != o_.drop_last)
    fail("batcher state has other settings (batch {}, seed {}, shuffle {}, drop_last {}; now batch {}, seed {}, shuffle {}, "
         "drop_last {})",
         s.batch_size, s.seed, s.shuffle, s.drop_last, o_.batch_size, o_.seed, o_.shuffle, o_.drop_last);
  if (s.epoch < 0 || s.position < 0 || s.position > n || s.steps < 0)
    fail("batcher state: position {} of epoch {} is outside the data ({} examples)", s.position, s.epoch, n);
  start_epoch(s.epoch);
  position_ = s.position;
  steps_ = s.steps;
}

}  // namespace tern

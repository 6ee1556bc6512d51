// HF tokenizer.json / tokenizer_config.json <-> TokenizerData.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "tern/error.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/token_types.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"

namespace tern {
namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

json parse_file(const std::string& path) {
  std::string text = read_text_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", path, e.what());
  }
}

const json& require(const std::string& file, const json& obj, const char* key, std::string_view field) {
  auto it = obj.find(key);
  if (it == obj.end()) fail("{}: missing field \"{}\"", file, field);
  return *it;
}

int32_t find_token(const std::vector<std::string>& tokens, std::string_view s) {
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] == s) return int32_t(i);
  return -1;
}

// Fills tokens / token_types from model.vocab and added_tokens, checking that the ids
// are exactly 0..V-1. An added token may repeat a vocab entry (GPT-2 does) if the id
// and text agree.
void read_tokens(const std::string& path, const json& doc, const json& model, TokenizerData& t) {
  const json& vocab = require(path, model, "vocab", "model.vocab");
  if (!vocab.is_object()) fail("{}: field \"model.vocab\" must be an object {{token: id}}", path);
  static const json kNone = json::array();
  auto added_it = doc.find("added_tokens");
  const json& added = added_it == doc.end() || added_it->is_null() ? kNone : *added_it;
  if (!added.is_array()) fail("{}: field \"added_tokens\" must be an array", path);

  // Dense ids cannot exceed the number of entries; checking first bounds the allocation.
  const size_t entries = vocab.size() + added.size();
  std::vector<bool> seen;
  auto put = [&](const json& id_json, const std::string& text, int32_t type, std::string_view field) {
    if (!id_json.is_number_integer())
      fail("{}: field \"{}\": token \"{}\" needs an integer id", path, field, text);
    int64_t id = id_json.get<int64_t>();
    if (id < 0 || size_t(id) >= entries)
      fail("{}: field \"{}\": token \"{}\" has id {}; ids must be dense 0..V-1 ({} entries)", path, field,
           text, id, entries);
    if (size_t(id) >= t.tokens.size()) {
      t.tokens.resize(id + 1);
      t.token_types.resize(id + 1, kTokenNormal);
      seen.resize(id + 1);
    }
    if (seen[id] && t.tokens[id] != text)
      fail("{}: field \"{}\": token id {} is used twice (\"{}\" and \"{}\")", path, field, id, t.tokens[id],
           text);
    seen[id] = true;
    t.tokens[id] = text;
    t.token_types[id] = type;
  };

  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    put(it.value(), it.key(), kTokenNormal, "model.vocab");
  for (size_t i = 0; i < added.size(); ++i) {
    const json& a = added[i];
    std::string field = fmt::format("added_tokens[{}]", i);
    if (!a.is_object()) fail("{}: field \"{}\" must be an object", path, field);
    const json& content = require(path, a, "content", field + ".content");
    if (!content.is_string()) fail("{}: field \"{}.content\" must be a string", path, field);
    auto sp = a.find("special");
    if (sp != a.end() && !sp->is_boolean())
      fail("{}: field \"{}.special\" must be true or false", path, field);
    bool special = sp != a.end() && sp->get<bool>();
    std::string text = content.get<std::string>();
    if (auto v = vocab.find(text); v != vocab.end() && *v != require(path, a, "id", field + ".id"))
      fail("{}: field \"{}\": token \"{}\" has id {} here but {} in model.vocab", path, field, text,
           a["id"].dump(), v->dump());
    put(require(path, a, "id", field + ".id"), text, special ? kTokenControl : kTokenUserDefined, field);
  }
  if (t.tokens.empty()) fail("{}: field \"model.vocab\" is empty", path);
  for (size_t id = 0; id < seen.size(); ++id)
    if (!seen[id])
      fail("{}: token ids are not dense: no token has id {} (ids must cover 0..{})", path, id,
           seen.size() - 1);
}

void read_merges(const std::string& path, const json& model, TokenizerData& t) {
  auto it = model.find("merges");
  if (it == model.end() || it->is_null()) return;
  if (!it->is_array()) fail("{}: field \"model.merges\" must be an array", path);
  t.merges.reserve(it->size());
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    if (m.is_string()) {  // older format: "a b"
      t.merges.push_back(m.get<std::string>());
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["a", "b"]
      t.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
    } else {
      fail("{}: field \"model.merges[{}]\" must be \"a b\" or [\"a\", \"b\"]", path, i);
    }
  }
}

// bos_token / eos_token: a string, {"content": ...} or null.
int32_t read_special(const std::string& file, const json& cfg, const char* key, const TokenizerData& t,
                     int32_t fallback) {
  auto it = cfg.find(key);
  if (it == cfg.end()) return fallback;
  if (it->is_null()) return -1;
  const json* s = &*it;
  if (s->is_object()) s = &require(file, *s, "content", std::string(key) + ".content");
  if (!s->is_string()) fail("{}: field \"{}\" must be a string or {{\"content\": ...}}", file, key);
  int32_t id = find_token(t.tokens, s->get<std::string>());
  if (id < 0)
    fail("{}: field \"{}\" names \"{}\", which is not in the vocabulary", file, key, s->get<std::string>());
  return id;
}

// chat_template: a string, or a list of {"name", "template"} (the "default" one wins).
std::string read_chat_template(const std::string& file, const json& cfg) {
  auto it = cfg.find("chat_template");
  if (it == cfg.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array() && !it->empty()) {
    for (const json& e : *it)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
          e["template"].is_string())
        return e["template"].get<std::string>();
    const json& first = (*it)[0];
    if (first.is_object() && first.contains("template") && first["template"].is_string())
      return first["template"].get<std::string>();
  }
  fail("{}: field \"chat_template\" must be a string or a list of {{name, template}}", file);
}

}  // namespace

TokenizerData load_tokenizer_json(const std::string& path) {
  json doc = parse_file(path);
  if (!doc.is_object()) fail("{}: expected a JSON object at the top level", path);
  const json& model = require(path, doc, "model", "model");
  if (!model.is_object()) fail("{}: field \"model\" must be an object", path);
  const json& type = require(path, model, "type", "model.type");
  if (type != "BPE") fail("{}: field \"model.type\" is {}; only \"BPE\" is supported", path, type.dump());
  // ignore_merges is always on for LLaMA-3 ("llama-bpe"); TokenizerData has no field for
  // it, so the value is only checked for type.
  if (auto im = model.find("ignore_merges"); im != model.end() && !im->is_boolean() && !im->is_null())
    fail("{}: field \"model.ignore_merges\" must be true or false", path);

  TokenizerData t;
  t.model = "gpt2";
  t.pre = "llama-bpe";
  read_tokens(path, doc, model, t);
  read_merges(path, model, t);
  t.bos = find_token(t.tokens, "<|begin_of_text|>");
  t.eos = find_token(t.tokens, "<|end_of_text|>");
  t.eot = find_token(t.tokens, "<|eot_id|>");

  auto cfg_path = (std::filesystem::path(path).parent_path() / "tokenizer_config.json").string();
  json cfg = json::object();
  if (std::filesystem::exists(cfg_path)) {
    cfg = parse_file(cfg_path);
    if (!cfg.is_object()) fail("{}: expected a JSON object at the top level", cfg_path);
    t.bos = read_special(cfg_path, cfg, "bos_token", t, t.bos);
    t.eos = read_special(cfg_path, cfg, "eos_token", t, t.eos);
    t.chat_template = read_chat_template(cfg_path, cfg);
  }

  // BOS: an explicit add_bos_token wins. Otherwise default to adding it (LLaMA-3
  // models expect it; early LLaMA-3 tokenizer.json files only forgot to say so in their
  // post_processor), unless the file says "post_processor": null, which HF reads as
  // "add nothing" and which to_tokenizer_json writes for add_bos = false.
  if (auto a = cfg.find("add_bos_token"); a != cfg.end() && !a->is_null()) {
    if (!a->is_boolean()) fail("{}: field \"add_bos_token\" must be true or false", cfg_path);
    t.add_bos = a->get<bool>();
  } else {
    auto pp = doc.find("post_processor");
    t.add_bos = pp == doc.end() || !pp->is_null();
  }
  return t;
}

namespace {

std::string quote(const std::string& s) {
  try {
    return json(s).dump();
  } catch (const json::exception&) {
    fail("tokenizer: token {} is not valid UTF-8 and cannot be written to JSON",
         json(s).dump(-1, ' ', false, json::error_handler_t::replace));
  }
}

void join_lines(std::string& out, const std::vector<std::string>& items, const char* indent) {
  for (size_t i = 0; i < items.size(); ++i) {
    out += indent;
    out += items[i];
    out += i + 1 < items.size() ? ",\n" : "\n";
  }
}

ojson template_processing(const std::string& bos, int32_t bos_id) {
  auto special = [&](int type_id) { return ojson{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}}; };
  auto seq = [](const char* id, int type_id) {
    return ojson{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
  };
  ojson p;
  p["type"] = "TemplateProcessing";
  p["single"] = {special(0), seq("A", 0)};
  p["pair"] = {special(0), seq("A", 0), special(1), seq("B", 1)};
  p["special_tokens"][bos] = {{"id", bos}, {"ids", {bos_id}}, {"tokens", {bos}}};
  return p;
}

// First id of the trailing run of added tokens. HF numbers added tokens that are not in
// model.vocab after the vocab, so only that tail may be left out of model.vocab.
size_t added_tail_start(const TokenizerData& t) {
  size_t start = t.tokens.size();
  while (start > 0 && is_added_type(effective_token_type(t, start - 1))) --start;
  return start;
}

}  // namespace

std::string to_tokenizer_json(const TokenizerData& t) {
  const size_t tail = added_tail_start(t);
  std::vector<std::string> added, vocab, merges;
  for (size_t id = 0; id < t.tokens.size(); ++id) {
    int32_t type = effective_token_type(t, id);
    if (is_added_type(type))
      added.push_back(fmt::format(
          R"({{"id":{},"content":{},"single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":{}}})",
          id, quote(t.tokens[id]), type == kTokenControl));
    if (id < tail) vocab.push_back(fmt::format("{}: {}", quote(t.tokens[id]), id));
  }
  merges.reserve(t.merges.size());
  for (const std::string& m : t.merges) merges.push_back(quote(m));

  ojson pre = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"},
         {"pattern", {{"Regex", kLlama3Pattern}}},
         {"behavior", "Isolated"},
         {"invert", false}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
  ojson decoder = {
      {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  ojson post = nullptr;
  if (t.add_bos && t.bos >= 0 && size_t(t.bos) < t.tokens.size())
    post = template_processing(t.tokens[t.bos], t.bos);

  std::string out = "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n";
  out += "  \"added_tokens\": [\n";
  join_lines(out, added, "    ");
  out += "  ],\n  \"normalizer\": null,\n";
  out += "  \"pre_tokenizer\": " + pre.dump() + ",\n";
  out += "  \"post_processor\": " + post.dump() + ",\n";
  out += "  \"decoder\": " + decoder.dump() + ",\n";
  out += "  \"model\": {\n";
  out += "    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n";
  out += "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n";
  out += "    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n    \"ignore_merges\": true,\n";
  out += "    \"vocab\": {\n";
  join_lines(out, vocab, "      ");
  out += "    },\n    \"merges\": [\n";
  join_lines(out, merges, "      ");
  out += "    ]\n  }\n}\n";
  return out;
}

std::string to_tokenizer_config_json(const TokenizerData& t) {
  auto token_or_null = [&](int32_t id) {
    return id >= 0 && size_t(id) < t.tokens.size() ? quote(t.tokens[id]) : std::string("null");
  };
  std::vector<std::string> decoder;
  for (size_t id = 0; id < t.tokens.size(); ++id) {
    int32_t type = effective_token_type(t, id);
    if (!is_added_type(type)) continue;
    decoder.push_back(fmt::format(
        R"("{}": {{"content":{},"lstrip":false,"normalized":false,"rstrip":false,"single_word":false,"special":{}}})",
        id, quote(t.tokens[id]), type == kTokenControl));
  }
  std::string out = "{\n";
  out += fmt::format("  \"add_bos_token\": {},\n  \"add_eos_token\": false,\n", t.add_bos);
  out += "  \"added_tokens_decoder\": {\n";
  join_lines(out, decoder, "    ");
  out += "  },\n";
  out += "  \"bos_token\": " + token_or_null(t.bos) + ",\n";
  if (!t.chat_template.empty()) out += "  \"chat_template\": " + quote(t.chat_template) + ",\n";
  // false: transformers would otherwise rewrite " ." to "." when decoding, which is not
  // what the tokens say.
  out += "  \"clean_up_tokenization_spaces\": false,\n";
  out += "  \"eos_token\": " + token_or_null(t.eos) + ",\n";
  out += "  \"model_input_names\": [\"input_ids\", \"attention_mask\"],\n";
  out += "  \"tokenizer_class\": \"PreTrainedTokenizerFast\"\n}\n";
  return out;
}

}  // namespace tern

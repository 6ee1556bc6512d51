// Training data: record forms, label masks token by token, truncation, JSON / JSONL,
// errors that name the file and the record, the eval split, and batcher resume.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "model/model.h"
#include "runtime/chat_prompt.h"
#include "test_util.h"
#include "train/dataset.h"

namespace tern {
namespace {

using nlohmann::json;
using test::error_of;
using test::TempDir;

// The small real BPE tokenizer other tests use (no file needed); BitNet's chat template.
struct Tiny {
  TokenizerData td = synth_tokenizer(2000);
  Tokenizer tok{td};
};

std::string write(const TempDir& d, const std::string& name, const std::string& content) {
  const std::string p = d.file(name);
  std::ofstream(p, std::ios::binary) << content;
  return p;
}

std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Labels expected from a per-token "is a target" mask, written out the long way.
std::vector<int32_t> expected_labels(const std::vector<int32_t>& tokens, const std::vector<bool>& target) {
  std::vector<int32_t> l(tokens.size(), -100);
  for (size_t i = 0; i + 1 < tokens.size(); ++i)
    if (target[i + 1]) l[i] = tokens[i + 1];
  return l;
}

// The text of the trained targets, in order.
std::string trained_text(const Tokenizer& tok, const TrainExample& e) {
  std::vector<int32_t> t;
  for (int32_t l : e.labels)
    if (l != -100) t.push_back(l);
  return tok.decode(t);
}

const char* kPromptInput =
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 and "
    "3\n\n### Response:\n";
const char* kPromptNoInput =
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\nSay hello.\n\n### Response:\n";

TEST(Dataset, AlpacaPromptIsStanfordAlpacas) {
  EXPECT_EQ(alpaca_prompt("Add the numbers.", "2 and 3"), kPromptInput);
  EXPECT_EQ(alpaca_prompt("Say hello.", ""), kPromptNoInput);
  // train.py's PROMPT_DICT ends at "### Response:" (no newline).
  std::string exact = kPromptNoInput;
  exact.pop_back();
  EXPECT_EQ(alpaca_prompt("Say hello.", "", false), exact);
}

TEST(Dataset, AlpacaTrainsResponseAndEosOnly) {
  Tiny t;
  TempDir d;
  const std::string p = write(d, "a.json", R"([
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "The sum is 5."},
    {"instruction": "Say hello.", "input": "", "output": "Hello there, the model says."},
    {"instruction": "Say hello.", "output": "Hello there, the model says."},
    {"instruction": "Say hello.", "input": null, "output": "Hello there, the model says.", "id": 7}
  ])");
  DatasetStats st;
  std::vector<TrainExample> ex = load_dataset(p, t.tok, t.td, {}, &st);
  ASSERT_EQ(ex.size(), 4u);

  const std::vector<int32_t> prompt = t.tok.encode(kPromptInput, true);
  const std::vector<int32_t> resp = t.tok.encode("The sum is 5.", false);
  ASSERT_EQ(prompt.front(), t.td.bos);
  const std::vector<int32_t> want = cat({prompt, resp, {t.td.eos}});
  EXPECT_EQ(ex[0].tokens, want);
  std::vector<bool> target(want.size(), false);
  for (size_t j = prompt.size(); j < want.size(); ++j) target[j] = true;
  EXPECT_EQ(ex[0].labels, expected_labels(want, target));
  // Spelled out: nothing before the last prompt token, then each next token, then -100.
  for (size_t i = 0; i + 1 < prompt.size(); ++i) EXPECT_EQ(ex[0].labels[i], -100) << i;
  for (size_t k = 0; k < resp.size(); ++k) EXPECT_EQ(ex[0].labels[prompt.size() - 1 + k], resp[k]) << k;
  EXPECT_EQ(ex[0].labels[want.size() - 2], t.td.eos);
  EXPECT_EQ(ex[0].labels.back(), -100);
  EXPECT_EQ(ex[0].n_trained(), static_cast<int64_t>(resp.size() + 1));
  EXPECT_EQ(trained_text(t.tok, ex[0]), "The sum is 5.<|end_of_text|>");

  // Empty, missing and null input all select the no-input prompt.
  const std::vector<int32_t> want1 =
      cat({t.tok.encode(kPromptNoInput, true), t.tok.encode("Hello there, the model says.", false), {t.td.eos}});
  for (int r = 1; r <= 3; ++r) {
    EXPECT_EQ(ex[r].tokens, want1) << r;
    EXPECT_EQ(ex[r].record, r);
    EXPECT_EQ(trained_text(t.tok, ex[r]), "Hello there, the model says.<|end_of_text|>") << r;
  }
  EXPECT_EQ(st.records, 4);
  EXPECT_EQ(st.examples, 4);
  EXPECT_EQ(st.alpaca, 4);
  EXPECT_EQ(st.tokens, static_cast<int64_t>(want.size() + 3 * want1.size()));
  EXPECT_EQ(st.trained_tokens, ex[0].n_trained() + 3 * ex[1].n_trained());

  // Without EOS: the response alone.
  DatasetOptions o;
  o.add_eos = false;
  ex = load_dataset(p, t.tok, t.td, o);
  EXPECT_EQ(ex[0].tokens, cat({prompt, resp}));
  EXPECT_EQ(trained_text(t.tok, ex[0]), "The sum is 5.");
}

TEST(Dataset, AlpacaWhitespaceInputCountsAsInput) {
  // stanford_alpaca: example.get("input", "") != "" picks prompt_input.
  Tiny t;
  TempDir d;
  const std::string p = write(d, "a.jsonl", R"({"instruction": "I", "input": " ", "output": "O"})");
  std::vector<TrainExample> ex = load_dataset(p, t.tok, t.td, {});
  EXPECT_EQ(ex[0].tokens, cat({t.tok.encode(alpaca_prompt("I", " "), true), t.tok.encode("O", false), {t.td.eos}}));
}

TEST(Dataset, TextTrainsEveryPredictedToken) {
  Tiny t;
  TempDir d;
  const std::string text = "The model reads the text, and the text becomes tokens.";
  const std::string p = write(d, "t.jsonl", json({{"text", text}}).dump() + "\n");
  std::vector<TrainExample> ex = load_dataset(p, t.tok, t.td, {});
  ASSERT_EQ(ex.size(), 1u);
  const std::vector<int32_t> want = t.tok.encode(text, true);
  ASSERT_EQ(want.front(), t.td.bos);
  EXPECT_EQ(ex[0].tokens, want);
  for (size_t i = 0; i + 1 < want.size(); ++i) EXPECT_EQ(ex[0].labels[i], want[i + 1]) << i;
  EXPECT_EQ(ex[0].labels.back(), -100);
  EXPECT_EQ(trained_text(t.tok, ex[0]), text);

  DatasetOptions o;
  o.text_add_eos = true;
  ex = load_dataset(p, t.tok, t.td, o);
  EXPECT_EQ(ex[0].tokens, cat({want, {t.td.eos}}));
  EXPECT_EQ(trained_text(t.tok, ex[0]), text + "<|end_of_text|>");

  // A text of one token has nothing to predict: dropped, and then the dataset is empty.
  const std::string q = write(d, "empty.jsonl", "{\"text\": \"\"}\n{\"text\": \"the model\"}\n");
  DatasetStats st;
  ex = load_dataset(q, t.tok, t.td, {}, &st);
  EXPECT_EQ(ex.size(), 1u);
  EXPECT_EQ(ex[0].record, 1);
  EXPECT_EQ(st.dropped_empty, 1);
}

TEST(Dataset, ChatTrainsAssistantContentAndEotOnly) {
  Tiny t;
  ASSERT_TRUE(t.td.chat_template.empty());  // BitNet's template, the fallback
  TempDir d;
  const json rec = {{"messages",
                     {{{"role", "system"}, {"content", "Be brief."}},
                      {{"role", "user"}, {"content", "What is the model?"}},
                      {{"role", "assistant"}, {"content", " The model reads text. "}},
                      {{"role", "user"}, {"content", "And then?"}},
                      {{"role", "assistant"}, {"content", "It writes tokens."}},
                      {{"role", "user"}, {"content", "Thanks"}}}}};
  const std::string p = write(d, "c.json", json::array({rec}).dump());
  DatasetStats st;
  std::vector<TrainExample> ex = load_dataset(p, t.tok, t.td, {}, &st);
  ASSERT_EQ(ex.size(), 1u);
  EXPECT_EQ(st.chat, 1);

  const std::vector<int32_t> s0 = t.tok.encode("System: Be brief.<|eot_id|>User: What is the model?<|eot_id|>Assistant: ", true);
  const std::vector<int32_t> a1 = t.tok.encode("The model reads text.<|eot_id|>", false);
  const std::vector<int32_t> s1 = t.tok.encode("User: And then?<|eot_id|>Assistant: ", false);
  const std::vector<int32_t> a2 = t.tok.encode("It writes tokens.<|eot_id|>", false);
  const std::vector<int32_t> s2 = t.tok.encode("User: Thanks<|eot_id|>", false);
  const std::vector<int32_t> want = cat({s0, a1, s1, a2, s2});
  EXPECT_EQ(ex[0].tokens, want);
  EXPECT_EQ(std::count(want.begin(), want.end(), t.td.bos), 1);
  EXPECT_EQ(a1.back(), t.td.eot);

  // The untrained prefix of the first turn is exactly the inference prompt.
  std::vector<ChatMessage> head = {{"system", "Be brief."}, {"user", "What is the model?"}};
  EXPECT_EQ(ChatPrompter(t.td).encode(t.tok, head), s0);

  std::vector<bool> target(want.size(), false);
  size_t at = s0.size();
  for (size_t j = 0; j < a1.size(); ++j) target[at + j] = true;
  at += a1.size() + s1.size();
  for (size_t j = 0; j < a2.size(); ++j) target[at + j] = true;
  EXPECT_EQ(ex[0].labels, expected_labels(want, target));
  EXPECT_EQ(trained_text(t.tok, ex[0]), "The model reads text.<|eot_id|>It writes tokens.<|eot_id|>");
  EXPECT_EQ(ex[0].n_trained(), static_cast<int64_t>(a1.size() + a2.size()));
}

TEST(Dataset, ChatBosOnceWhenTheTemplateWritesIt) {
  Tiny t;
  t.td.chat_template =
      "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}"
      "{% if add_generation_prompt %}<assistant>{% endif %}";
  Tokenizer tok(t.td);
  TempDir d;
  const std::string p =
      write(d, "c.jsonl", R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})");
  std::vector<TrainExample> ex = load_dataset(p, tok, t.td, {});
  const std::vector<int32_t> head = tok.encode("<|begin_of_text|><user>Hi<|end_of_text|><assistant>", false);
  EXPECT_EQ(ex[0].tokens, cat({head, tok.encode("Hello<|end_of_text|>", false)}));
  EXPECT_EQ(std::count(ex[0].tokens.begin(), ex[0].tokens.end(), t.td.bos), 1);
  EXPECT_EQ(trained_text(tok, ex[0]), "Hello<|end_of_text|>");
}

TEST(Dataset, ChatWithoutAssistantIsDropped) {
  Tiny t;
  TempDir d;
  const std::string p = write(d, "c.jsonl",
                              "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n"
                              "{\"messages\": []}\n"
                              "{\"messages\": [{\"role\": \"assistant\", \"content\": \"\"}]}\n");
  DatasetStats st;
  std::vector<TrainExample> ex = load_dataset(p, t.tok, t.td, {}, &st);
  ASSERT_EQ(ex.size(), 1u);  // an empty reply still trains its end of turn
  EXPECT_EQ(trained_text(t.tok, ex[0]), "<|eot_id|>");
  EXPECT_EQ(st.dropped_empty, 2);

  const std::string q = write(d, "none.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n");
  const std::string e = error_of([&] { load_dataset(q, t.tok, t.td, {}); });
  EXPECT_NE(e.find(q), std::string::npos) << e;
  EXPECT_NE(e.find("empty dataset"), std::string::npos) << e;
}

TEST(Dataset, ChatTemplateThatRewritesEarlierTurnsIsRefused) {
  Tiny t;
  // Writes the message count first, so a longer conversation does not extend a shorter one.
  t.td.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}";
  Tokenizer tok(t.td);
  TempDir d;
  const std::string p =
      write(d, "c.jsonl", R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]})");
  const std::string e = error_of([&] { load_dataset(p, tok, t.td, {}); });
  EXPECT_NE(e.find(p + ": record 0"), std::string::npos) << e;
  EXPECT_NE(e.find("cannot be located"), std::string::npos) << e;
}

TEST(Dataset, TruncationKeepsTheLeftAndDropsWhatHasNoTarget) {
  Tiny t;
  TempDir d;
  const std::string long_out = "The model reads the text, and the text becomes tokens. The tokens go into the model.";
  const std::string p = write(d, "a.json",
                              json::array({{{"instruction", "Say hello."}, {"output", long_out}},
                                           {{"instruction", std::string(400, 'x')}, {"output", "Hi"}}})
                                  .dump());
  const std::vector<int32_t> prompt = t.tok.encode(kPromptNoInput, true);
  const std::vector<int32_t> full = cat({prompt, t.tok.encode(long_out, false), {t.td.eos}});
  DatasetOptions o;
  o.max_len = static_cast<int64_t>(prompt.size()) + 3;
  ASSERT_GT(static_cast<int64_t>(full.size()), o.max_len);
  ASSERT_GT(static_cast<int64_t>(t.tok.encode(alpaca_prompt(std::string(400, 'x'), ""), true).size()), o.max_len);
  DatasetStats st;
  std::vector<TrainExample> ex = load_dataset(p, t.tok, t.td, o, &st);
  ASSERT_EQ(ex.size(), 1u);
  ASSERT_EQ(static_cast<int64_t>(ex[0].tokens.size()), o.max_len);
  EXPECT_TRUE(std::equal(ex[0].tokens.begin(), ex[0].tokens.end(), full.begin()));
  // Targets: the 3 response tokens inside the window; the last position predicts nothing.
  for (size_t i = 0; i + 1 < prompt.size(); ++i) EXPECT_EQ(ex[0].labels[i], -100);
  for (size_t i = prompt.size() - 1; i + 1 < ex[0].tokens.size(); ++i) EXPECT_EQ(ex[0].labels[i], full[i + 1]) << i;
  EXPECT_EQ(ex[0].labels.back(), -100);
  EXPECT_EQ(ex[0].n_trained(), 3);
  EXPECT_EQ(st.truncated, 1);
  EXPECT_EQ(st.dropped_truncated, 1);
  EXPECT_EQ(st.examples, 1);
  EXPECT_EQ(st.longest, o.max_len);
  EXPECT_EQ(st.trained_tokens, 3);

  // A window that ends right after the prompt trains the first response token only.
  o.max_len = static_cast<int64_t>(prompt.size()) + 1;
  ex = load_dataset(p, t.tok, t.td, o);
  EXPECT_EQ(ex[0].n_trained(), 1);
  o.max_len = static_cast<int64_t>(prompt.size());  // nothing of the response fits
  const std::string e = error_of([&] { load_dataset(p, t.tok, t.td, o); });
  EXPECT_NE(e.find("empty dataset"), std::string::npos) << e;
}

TEST(Dataset, JsonlAndArrayGiveTheSameExamples) {
  Tiny t;
  TempDir d;
  const json recs = json::array({{{"instruction", "Say hello."}, {"input", ""}, {"output", "Hello."}},
                                 {{"text", "the model writes text"}},
                                 {{"messages", {{{"role", "user"}, {"content", "Hi"}}, {{"role", "assistant"}, {"content", "Hello"}}}}}});
  std::string jsonl = "\xEF\xBB\xBF";  // a byte order mark, blank lines and CRLF are all fine
  for (const auto& r : recs) jsonl += r.dump() + "\r\n\r\n";
  const std::string a = write(d, "d.json", "\n  " + recs.dump(2));
  const std::string l = write(d, "d.jsonl", jsonl);
  DatasetStats sa, sl;
  std::vector<TrainExample> ea = load_dataset(a, t.tok, t.td, {}, &sa);
  std::vector<TrainExample> el = load_dataset(l, t.tok, t.td, {}, &sl);
  ASSERT_EQ(ea.size(), 3u);
  ASSERT_EQ(el.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(ea[i].tokens, el[i].tokens) << i;
    EXPECT_EQ(ea[i].labels, el[i].labels) << i;
  }
  EXPECT_EQ(sa.alpaca, 1);
  EXPECT_EQ(sa.text, 1);
  EXPECT_EQ(sa.chat, 1);
  EXPECT_EQ(sa.tokens, sl.tokens);
  EXPECT_EQ(sa.trained_tokens, sl.trained_tokens);
  EXPECT_NE(describe(sa).find("3 records -> 3 examples"), std::string::npos) << describe(sa);
}

TEST(Dataset, ForcedFormat) {
  Tiny t;
  TempDir d;
  const std::string p = write(d, "t.jsonl", R"({"text": "the model", "instruction": "ignored"})");
  EXPECT_NE(error_of([&] { load_dataset(p, t.tok, t.td, {}); }).find("ambiguous"), std::string::npos);
  DatasetOptions o;
  o.format = DatasetFormat::Text;
  EXPECT_EQ(load_dataset(p, t.tok, t.td, o)[0].tokens, t.tok.encode("the model", true));
  o.format = DatasetFormat::Chat;
  const std::string e = error_of([&] { load_dataset(p, t.tok, t.td, o); });
  EXPECT_NE(e.find(p + ": record 0 (line 1): field \"messages\" is missing"), std::string::npos) << e;
}

// Each bad input gives a tern::Error naming the file and the record.
TEST(Dataset, ErrorsNameFileRecordAndField) {
  Tiny t;
  TempDir d;
  auto err = [&](const std::string& name, const std::string& content) {
    const std::string p = write(d, name, content);
    std::string e;
    try {
      load_dataset(p, t.tok, t.td, {});
    } catch (const Error& x) {
      e = x.what();
    } catch (const std::exception& x) {
      ADD_FAILURE() << name << ": not a tern::Error: " << x.what();
    }
    EXPECT_NE(e.find(p), std::string::npos) << name << ": " << e;
    return e;
  };
  auto has = [](const std::string& e, const std::string& part) {
    EXPECT_NE(e.find(part), std::string::npos) << "'" << part << "' not in: " << e;
  };
  const std::string ok = R"({"instruction": "I", "output": "O"})";

  // Invalid JSON inside the third element of an array: line, column and record 2.
  std::string e = err("bad.json", "[\n" + ok + ",\n" + ok + ",\n{\"instruction\": \"I\", \"output\": }\n]");
  has(e, "bad.json:4:");
  has(e, "invalid JSON in record 2");
  // In JSONL: the line and the record (blank lines do not count as records).
  e = err("bad.jsonl", ok + "\n\n" + ok + "\n{\"text\": \"x\",,}\n");
  has(e, "bad.jsonl:4:");
  has(e, "record 2");
  // A pretty-printed object is not JSONL.
  e = err("pretty.jsonl", "{\n  \"text\": \"x\"\n}\n");
  has(e, "one whole JSON object per line");
  // Neither an array nor objects.
  e = err("plain.txt", "hello");
  has(e, "not a JSON array or JSONL");
  e = err("empty.json", " \n ");
  has(e, "empty dataset");
  e = err("empty_array.json", "[]");
  has(e, "empty dataset");
  e = err("scalar.json", "[" + ok + ", 3]");
  has(e, "record 1: expected a JSON object, got number");
  // No known form: names the record and what it has.
  e = err("noform.jsonl", ok + "\n" + R"({"prompt": "p", "completion": "c"})");
  has(e, "record 1 (line 2): no known record form");
  has(e, "\"prompt\"");
  // Ambiguous.
  e = err("both.json", R"([{"text": "t", "messages": []}])");
  has(e, "record 0: ambiguous record");
  // Wrong types and missing fields, by field name.
  e = err("type.json", R"([{"instruction": "I", "output": 5}])");
  has(e, "record 0: field \"output\": expected a string, got number");
  e = err("missing.json", R"([{"output": "O"}])");
  has(e, "record 0: field \"instruction\" is missing");
  e = err("input.json", R"([{"instruction": "I", "input": ["x"], "output": "O"}])");
  has(e, "field \"input\": expected a string, got array");
  e = err("text.jsonl", R"({"text": null})");
  has(e, "record 0 (line 1): field \"text\": expected a string, got null");
  e = err("msgs.json", R"([{"messages": {"role": "user"}}])");
  has(e, "field \"messages\": expected an array, got object");
  e = err("content.json", R"([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": null}]}])");
  has(e, "record 0: field \"messages[1].content\": expected a string, got null");
  e = err("role.json", R"([{"messages": [{"content": "a"}]}])");
  has(e, "field \"messages[0].role\" is missing");
  e = err("msg.json", R"([{"messages": ["hi"]}])");
  has(e, "field \"messages[0]\": expected an object, got string");
  // Invalid UTF-8 in a string: raw bytes (array and JSONL) and a lone surrogate escape.
  e = err("utf8.json", "[" + ok + ", {\"instruction\": \"I\", \"output\": \"bad \xC3\x28 byte\"}]");
  has(e, "invalid JSON in record 1");
  has(e, "invalid UTF-8");
  e = err("utf8.jsonl", ok + "\n{\"text\": \"\xFF\xFE\"}\n");
  has(e, "record 1");
  has(e, "invalid UTF-8");
  EXPECT_EQ(e.find('\xFF'), std::string::npos) << "the message itself is valid UTF-8";
  e = err("surrogate.jsonl", R"({"text": "\ud800"})");
  has(e, "record 0");
  // A missing file and a directory.
  EXPECT_NE(error_of([&] { load_dataset(d.file("nope.json"), t.tok, t.td, {}); }).find("nope.json"), std::string::npos);
  EXPECT_NE(error_of([&] { load_dataset(d.path.string(), t.tok, t.td, {}); }).find("is a directory"), std::string::npos);
}

TEST(Dataset, TokenizerErrorsNameTheRecord) {
  Tiny t;
  t.td.eos = -1;  // no EOS to end an Alpaca response with
  Tokenizer tok(t.td);
  TempDir d;
  const std::string p = write(d, "a.jsonl", R"({"text": "fine"})" "\n" R"({"instruction": "I", "output": "O"})");
  const std::string e = error_of([&] { load_dataset(p, tok, t.td, {}); });
  EXPECT_NE(e.find(p + ": record 1 (line 2): the tokenizer has no EOS"), std::string::npos) << e;
}

std::vector<TrainExample> numbered(int n) {
  std::vector<TrainExample> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const int len = 2 + (i * 7) % 5;
    for (int k = 0; k < len; ++k) v[i].tokens.push_back(100 * i + k);
    v[i].labels.assign(static_cast<size_t>(len), -100);
    for (int k = 0; k + 1 < len; ++k) v[i].labels[k] = v[i].tokens[k + 1];
    v[i].record = i;
  }
  return v;
}

TEST(Dataset, SplitIsDeterministic) {
  const std::vector<TrainExample> all = numbered(50);
  DatasetSplit a = split_eval(all, 0.1, 42), b = split_eval(all, 0.1, 42), c = split_eval(all, 0.1, 43);
  ASSERT_EQ(a.eval.size(), 5u);
  ASSERT_EQ(a.train.size(), 45u);
  auto records = [](const std::vector<TrainExample>& v) {
    std::vector<int64_t> r;
    for (const auto& e : v) r.push_back(e.record);
    return r;
  };
  EXPECT_EQ(records(a.eval), records(b.eval));
  EXPECT_EQ(records(a.train), records(b.train));
  EXPECT_NE(records(a.eval), records(c.eval));
  // Both parts keep the input order and together hold every example once.
  const auto ra = records(a.train), rb = records(a.eval);
  EXPECT_TRUE(std::is_sorted(ra.begin(), ra.end()));
  EXPECT_TRUE(std::is_sorted(rb.begin(), rb.end()));
  std::set<int64_t> seen(ra.begin(), ra.end());
  seen.insert(rb.begin(), rb.end());
  EXPECT_EQ(seen.size(), 50u);
  EXPECT_EQ(a.eval[0].tokens, all[static_cast<size_t>(rb[0])].tokens);
  // Pinned: the same split on every platform and standard library (own PRNG).
  EXPECT_EQ(records(split_eval(numbered(10), 0.3, 7).eval), (std::vector<int64_t>{5, 8, 9}));
  EXPECT_EQ(split_eval(numbered(3), 0.01, 1).eval.size(), 1u);   // at least one
  EXPECT_EQ(split_eval(numbered(3), 0.99, 1).train.size(), 1u);  // never all
  EXPECT_EQ(split_eval(numbered(1), 0.5, 1).eval.size(), 0u);
  EXPECT_EQ(split_eval(numbered(5), 0.0, 1).train.size(), 5u);
  EXPECT_THROW(split_eval(numbered(5), 1.0, 1), Error);
  EXPECT_THROW(split_eval(numbered(5), -0.1, 1), Error);
}

TEST(Dataset, BatcherPadsAndCoversEachEpoch) {
  const std::vector<TrainExample> data = numbered(10);
  BatcherOptions o;
  o.batch_size = 4;
  o.seed = 5;
  o.pad_id = 9999;
  Batcher b(data, o);
  EXPECT_EQ(b.batches_per_epoch(), 3);
  for (int epoch = 0; epoch < 3; ++epoch) {
    std::multiset<int64_t> seen;
    for (int k = 0; k < 3; ++k) {
      Batch bt = b.next();
      EXPECT_EQ(bt.epoch, epoch);
      EXPECT_EQ(bt.rows, k < 2 ? 4 : 2);
      int64_t trained = 0;
      for (int64_t r = 0; r < bt.rows; ++r) {
        const TrainExample& e = data[static_cast<size_t>(bt.indices[r])];
        seen.insert(bt.indices[r]);
        ASSERT_EQ(bt.lengths[r], static_cast<int32_t>(e.tokens.size()));
        for (int64_t c = 0; c < bt.seq_len; ++c) {
          const size_t at = static_cast<size_t>(r * bt.seq_len + c);
          if (c < bt.lengths[r]) {
            EXPECT_EQ(bt.tokens[at], e.tokens[c]);
            EXPECT_EQ(bt.labels[at], e.labels[c]);
          } else {
            EXPECT_EQ(bt.tokens[at], 9999);
            EXPECT_EQ(bt.labels[at], -100);
          }
          trained += bt.labels[at] != -100;
        }
      }
      EXPECT_EQ(bt.trained_tokens, trained);
      EXPECT_EQ(bt.seq_len, *std::max_element(bt.lengths.begin(), bt.lengths.end()));
    }
    EXPECT_EQ(seen.size(), 10u);
    EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), 10u);
  }
  // drop_last: two full batches per epoch.
  o.drop_last = true;
  Batcher dl(data, o);
  EXPECT_EQ(dl.batches_per_epoch(), 2);
  for (int k = 0; k < 6; ++k) {
    Batch bt = dl.next();
    EXPECT_EQ(bt.rows, 4);
    EXPECT_EQ(bt.epoch, k / 2);
  }
  // Pinned epoch order: the same on every platform and standard library.
  BatcherOptions pin;
  pin.batch_size = 4;
  pin.seed = 7;
  Batcher pinned(data, pin);
  EXPECT_EQ(pinned.next().indices, (std::vector<int64_t>{3, 8, 5, 1}));
  EXPECT_EQ(pinned.next().indices, (std::vector<int64_t>{6, 2, 4, 9}));
  EXPECT_EQ(pinned.next().indices, (std::vector<int64_t>{0, 7}));
  // No shuffle: file order.
  o.drop_last = false;
  o.shuffle = false;
  Batcher plain(data, o);
  EXPECT_EQ(plain.next().indices, (std::vector<int64_t>{0, 1, 2, 3}));
  o.batch_size = 11;
  o.drop_last = true;
  EXPECT_THROW((void)Batcher(data, o), Error);
  std::vector<TrainExample> none;
  EXPECT_THROW((void)Batcher(none, BatcherOptions{}), Error);
}

bool same(const Batch& a, const Batch& b) {
  return a.rows == b.rows && a.seq_len == b.seq_len && a.tokens == b.tokens && a.labels == b.labels &&
         a.lengths == b.lengths && a.indices == b.indices && a.epoch == b.epoch;
}

TEST(Dataset, BatcherResumesExactly) {
  const std::vector<TrainExample> data = numbered(13);
  BatcherOptions o;
  o.batch_size = 3;
  o.seed = 123456789012345ull;
  for (int stop : {0, 1, 4, 5, 9}) {  // 5 batches per epoch: stops inside and at an epoch's end
    Batcher a(data, o);
    for (int k = 0; k < stop; ++k) a.next();
    const std::string saved = batcher_state_to_string(a.state());
    Batcher b(data, o);
    b.restore(batcher_state_from_string(saved));
    EXPECT_EQ(b.steps(), stop);
    for (int k = 0; k < 12; ++k) {
      const Batch x = a.next(), y = b.next();
      ASSERT_TRUE(same(x, y)) << "stop " << stop << " step " << k;
    }
  }
  // Epochs are shuffled differently, and reproducibly.
  Batcher a(data, o), b(data, o);
  std::vector<int64_t> e0, e1;
  for (int k = 0; k < 5; ++k) {
    const auto idx = a.next().indices;
    e0.insert(e0.end(), idx.begin(), idx.end());
  }
  for (int k = 0; k < 5; ++k) {
    const auto idx = a.next().indices;
    e1.insert(e1.end(), idx.begin(), idx.end());
  }
  EXPECT_NE(e0, e1);
  EXPECT_EQ(b.next().indices, std::vector<int64_t>(e0.begin(), e0.begin() + 3));

  // The state is JSON; refused for other data or settings, or when malformed.
  const json j = json::parse(batcher_state_to_string(a.state()));
  EXPECT_EQ(j["epoch"], 1);  // the next epoch starts with the next batch
  EXPECT_EQ(j["position"], 13);
  EXPECT_EQ(j["steps"], 10);
  EXPECT_EQ(j["seed"].get<uint64_t>(), o.seed);
  const BatcherState s = a.state();
  std::vector<TrainExample> other = numbered(13);
  other[3].tokens[0] = 7;
  Batcher c(other, o);
  EXPECT_NE(error_of([&] { c.restore(s); }).find("other data"), std::string::npos);
  BatcherOptions o2 = o;
  o2.batch_size = 4;
  Batcher d(data, o2);
  EXPECT_NE(error_of([&] { d.restore(s); }).find("other settings"), std::string::npos);
  EXPECT_NE(error_of([&] { batcher_state_from_string("{\"seed\": 1}"); }).find("\"batch_size\" is missing"), std::string::npos);
  EXPECT_NE(error_of([&] { batcher_state_from_string("nope"); }).find("invalid JSON"), std::string::npos);
  json bad = j;
  bad["position"] = -1;
  EXPECT_NE(error_of([&] { batcher_state_from_string(bad.dump()); }).find("\"position\""), std::string::npos);
}

// ---- with the real LLaMA-3 tokenizer (skipped without it) ------------------------------------

std::string llama3_tokenizer_path() {
  if (const char* p = std::getenv("TERN_LLAMA3_TOKENIZER")) return p;
  return std::string(TERN_FIXTURES) + "/../../.cache/llama3/tokenizer.json";
}

TEST(Dataset, Llama3BitNetChatMasksAreExact) {
  const std::string path = llama3_tokenizer_path();
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is missing (scripts/fetch-tokenizer.sh)";
  TokenizerData td = load_tokenizer_json(path);
  td.chat_template = kBitNetChatTemplate;
  Tokenizer tok(td);
  TempDir d;
  const json rec = {{"messages",
                     {{{"role", "user"}, {"content", "Why is the sky blue?"}},
                      {{"role", "assistant"}, {"content", "Rayleigh scattering.\n\nShort waves scatter more."}},
                      {{"role", "user"}, {"content", "Thanks!"}},
                      {{"role", "assistant"}, {"content", "You're welcome."}}}}};
  const std::string p = write(d, "c.jsonl", rec.dump());
  std::vector<TrainExample> ex = load_dataset(p, tok, td, {});
  ASSERT_EQ(ex.size(), 1u);
  EXPECT_EQ(ex[0].tokens.front(), 128000);
  EXPECT_EQ(trained_text(tok, ex[0]), "Rayleigh scattering.\n\nShort waves scatter more.<|eot_id|>You're welcome.<|eot_id|>");
  EXPECT_EQ(tok.decode(ex[0].tokens),
            "<|begin_of_text|>User: Why is the sky blue?<|eot_id|>Assistant: Rayleigh scattering.\n\nShort waves scatter "
            "more.<|eot_id|>User: Thanks!<|eot_id|>Assistant: You're welcome.<|eot_id|>");
  // The first trained target follows exactly the inference prompt.
  const std::vector<int32_t> prompt = ChatPrompter(td).encode(tok, {{"user", "Why is the sky blue?"}});
  ASSERT_LT(prompt.size(), ex[0].tokens.size());
  EXPECT_TRUE(std::equal(prompt.begin(), prompt.end(), ex[0].tokens.begin()));
  for (size_t i = 0; i + 1 < prompt.size(); ++i) EXPECT_EQ(ex[0].labels[i], -100);
  EXPECT_NE(ex[0].labels[prompt.size() - 1], -100);
  int eots_trained = 0;
  for (int32_t l : ex[0].labels) eots_trained += l == 128009;
  EXPECT_EQ(eots_trained, 2);
}

// Loads ../shared/data/alpaca_5000.json when present and prints the counts. Also counts the
// records where stanford_alpaca's joint tokenization of prompt + response differs from
// ours (prompt and response tokenized apart).
TEST(Dataset, SharedAlpaca5000Stats) {
  const std::string data = std::string(TERN_FIXTURES) + "/../../../shared/data/alpaca_5000.json";
  const std::string path = llama3_tokenizer_path();
  if (!std::filesystem::exists(data)) GTEST_SKIP() << data << " is missing";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is missing (scripts/fetch-tokenizer.sh)";
  TokenizerData td = load_tokenizer_json(path);
  Tokenizer tok(td);
  DatasetStats st;
  DatasetOptions o;
  o.max_len = 512;
  std::vector<TrainExample> ex = load_dataset(data, tok, td, o, &st);
  std::printf("alpaca_5000 (max_len 512): %s\n", describe(st).c_str());
  EXPECT_EQ(st.records, 5000);
  EXPECT_GT(st.examples, 4900);

  const json recs = json::parse(std::ifstream(data));
  for (bool newline : {true, false}) {
    int differ = 0;
    for (const auto& r : recs) {
      const std::string input = r.value("input", "");
      const std::string prompt = alpaca_prompt(r["instruction"], input, newline);
      const std::string output = r["output"];
      const auto joint = tok.encode(prompt + output, true);
      const auto apart = cat({tok.encode(prompt, true), tok.encode(output, false)});
      differ += joint != apart;
    }
    std::printf("prompt ending \"### Response:%s\": joint tokenization differs from prompt|response in %d of %zu records\n",
                newline ? "\\n" : "", differ, recs.size());
    if (newline) {
      EXPECT_EQ(differ, 0) << "with the newline, the prompt/response boundary is a pre-token boundary";
    }
  }
}

}  // namespace
}  // namespace tern

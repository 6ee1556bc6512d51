#include "runtime/generate.h"

#include <algorithm>
#include <chrono>

#include "runtime/text_stream.h"
#include "tern/error.h"

namespace tern {

std::string stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::Length: return "length";
    case StopReason::StopToken: return "stop token";
    case StopReason::StopString: return "stop string";
    case StopReason::ContextFull: return "context full";
  }
  return "?";
}

std::vector<int32_t> default_stop_tokens(const TokenizerData& t) {
  std::vector<int32_t> ids;
  for (int32_t id : {t.eos, t.eot}) {
    if (id >= 0) ids.push_back(id);
  }
  for (size_t i = 0; i < t.tokens.size(); ++i) {
    if (t.tokens[i] == "<|eot_id|>" || t.tokens[i] == "<|end_of_text|>") ids.push_back(static_cast<int32_t>(i));
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

GenerateResult generate(Engine& engine, const Tokenizer& tok, std::span<const int32_t> prompt, const GenerateOptions& opts,
                        const std::function<void(std::string_view)>& on_text) {
  using clock = std::chrono::steady_clock;
  GenerateResult res;
  res.n_prompt = static_cast<int64_t>(prompt.size());
  if (prompt.empty()) fail("generate: the prompt is empty");
  if (engine.position() + res.n_prompt > engine.context_length()) {
    fail("the prompt ({} tokens) does not fit in the context ({} tokens, {} already used)", res.n_prompt,
         engine.context_length(), engine.position());
  }
  const int64_t V = engine.config().vocab;
  std::vector<float> logits(V);
  Sampler sampler(opts.sampling, V);
  res.seed = sampler.seed();
  Utf8StreamDecoder utf8;
  StopMatcher stops(opts.stop_strings);
  auto emit = [&](const std::string& s) {
    if (s.empty()) return;
    res.text += s;
    on_text(s);
  };

  auto t0 = clock::now();
  engine.forward(prompt, logits.data(), Logits::Last);
  res.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();

  std::vector<int32_t> history(prompt.begin(), prompt.end());
  auto t1 = clock::now();
  for (int64_t i = 0; opts.n_predict < 0 || i < opts.n_predict; ++i) {
    const int32_t next = sampler.sample(logits.data(), history);
    if (std::find(opts.stop_tokens.begin(), opts.stop_tokens.end(), next) != opts.stop_tokens.end()) {
      res.reason = StopReason::StopToken;
      break;
    }
    res.tokens.push_back(next);
    history.push_back(next);
    emit(stops.push(utf8.push(tok.token_bytes(next))));
    if (stops.stopped()) {
      res.reason = StopReason::StopString;
      break;
    }
    if (opts.n_predict >= 0 && i + 1 == opts.n_predict) break;  // no forward for a token never sampled
    if (engine.position() >= engine.context_length()) {
      res.reason = StopReason::ContextFull;
      break;
    }
    engine.forward(std::span<const int32_t>(&next, 1), logits.data(), Logits::Last);
  }
  res.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  if (!stops.stopped()) {
    std::string tail = stops.push(utf8.flush());  // two statements: the order matters
    tail += stops.flush();
    emit(tail);
  }
  return res;
}

}  // namespace tern

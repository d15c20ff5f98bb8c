// Tokenizer throughput, single thread: encode (and decode) of ~1 MB of text with the smollm2 and
// bytelevel_llama3 fixture tokenizers. The text is built exactly as scripts/bench_tokenizer.py
// builds it for HF tokenizers (the peer number): corpus.txt repeated, cut after the last '\n'
// before 1,000,000 bytes. Fixtures: $MIL_TOKENIZER_FIXTURES or tests/fixtures/tokenizer.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;

fs::path fixtures_dir() {
  if (const char* env = std::getenv("MIL_TOKENIZER_FIXTURES")) return env;
  return fs::path(__FILE__).parent_path().parent_path() / "tests" / "fixtures" / "tokenizer";
}

const std::string& bench_text() {
  static const std::string text = [] {
    std::ifstream in(fixtures_dir() / "corpus.txt", std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    const std::string corpus = s.str();
    if (corpus.empty()) return std::string();
    constexpr size_t kTarget = 1'000'000;
    std::string buf;
    while (buf.size() < kTarget) buf += corpus;
    const size_t last_newline = buf.rfind('\n', kTarget - 1);
    return buf.substr(0, last_newline + 1);
  }();
  return text;
}

std::unique_ptr<mil::Tokenizer> load(const std::string& name) {
  return mil::Tokenizer::from_hf_json((fixtures_dir() / name / "tokenizer.json").string());
}

void BM_Encode(benchmark::State& state, const std::string& name) {
  const std::string& text = bench_text();
  if (text.empty()) {
    state.SkipWithError("corpus.txt not found (set MIL_TOKENIZER_FIXTURES)");
    return;
  }
  const auto tok = load(name);
  size_t n_ids = tok->encode(text, false).size();  // warm-up, as the HF script does
  for (auto _ : state) {
    auto ids = tok->encode(text, false);
    n_ids = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["text_bytes"] = static_cast<double>(text.size());
  state.counters["ids"] = static_cast<double>(n_ids);
}

void BM_Decode(benchmark::State& state, const std::string& name) {
  const std::string& text = bench_text();
  if (text.empty()) {
    state.SkipWithError("corpus.txt not found (set MIL_TOKENIZER_FIXTURES)");
    return;
  }
  const auto tok = load(name);
  const auto ids = tok->encode(text, false);
  for (auto _ : state) {
    auto out = tok->decode(ids, false);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}

// Cold: a fresh tokenizer per iteration, so the word cache starts empty (load time excluded).
void BM_EncodeCold(benchmark::State& state, const std::string& name) {
  const std::string& text = bench_text();
  if (text.empty()) {
    state.SkipWithError("corpus.txt not found (set MIL_TOKENIZER_FIXTURES)");
    return;
  }
  for (auto _ : state) {
    state.PauseTiming();
    auto tok = load(name);
    state.ResumeTiming();
    auto ids = tok->encode(text, false);
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}

BENCHMARK_CAPTURE(BM_Encode, smollm2, std::string("smollm2"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, bytelevel_llama3, std::string("bytelevel_llama3"))
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EncodeCold, smollm2, std::string("smollm2"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EncodeCold, bytelevel_llama3, std::string("bytelevel_llama3"))
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Decode, smollm2, std::string("smollm2"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Decode, bytelevel_llama3, std::string("bytelevel_llama3"))
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();

// Weight loading: tensor-parallel slices are views of exactly the rank's rows/columns, and
// bad model files fail with errors that name the file and the tensor or field.
#include <gtest/gtest.h>

#include "common/file_writers.h"
#include "core/error.h"
#include "model/weights.h"

namespace mil {
namespace {

using namespace mil::test;

constexpr uint64_t kHidden = 64, kHeads = 4, kKvHeads = 2, kHeadDim = 16, kFfn = 96, kVocab = 32;

struct TinyGguf {
  GgufSpec spec;

  TinyGguf() {
    spec.kvs = {
        {"general.architecture", gv_string("llama")},
        {"llama.block_count", gv<uint32_t>(kU32, 1)},
        {"llama.embedding_length", gv<uint32_t>(kU32, kHidden)},
        {"llama.feed_forward_length", gv<uint32_t>(kU32, kFfn)},
        {"llama.attention.head_count", gv<uint32_t>(kU32, kHeads)},
        {"llama.attention.head_count_kv", gv<uint32_t>(kU32, kKvHeads)},
        {"llama.context_length", gv<uint32_t>(kU32, 128)},
        {"llama.vocab_size", gv<uint32_t>(kU32, kVocab)},
        {"llama.attention.layer_norm_rms_epsilon", gv<float>(kF32, 1e-5f)},
    };
    add("token_embd.weight", {kHidden, kVocab});
    add("output_norm.weight", {kHidden});
    for (const char* n : {"attn_norm", "ffn_norm"}) add(std::string("blk.0.") + n + ".weight", {kHidden});
    add("blk.0.attn_q.weight", {kHidden, kHeads * kHeadDim});
    add("blk.0.attn_k.weight", {kHidden, kKvHeads * kHeadDim});
    add("blk.0.attn_v.weight", {kHidden, kKvHeads * kHeadDim});
    add("blk.0.attn_output.weight", {kHeads * kHeadDim, kHidden});
    add("blk.0.ffn_gate.weight", {kHidden, kFfn});
    add("blk.0.ffn_up.weight", {kHidden, kFfn});
    add("blk.0.ffn_down.weight", {kFfn, kHidden});
  }
  void add(const std::string& name, std::vector<uint64_t> ne, uint32_t type = 0) {
    uint64_t n = 1;
    for (uint64_t d : ne) n *= d;
    spec.tensors.push_back({name, ne, type, pattern_bytes(n * 4, static_cast<uint8_t>(spec.tensors.size())), {}});
  }
  GgufTensor& tensor(const std::string& name) {
    for (GgufTensor& t : spec.tensors) {
      if (t.name == name) return t;
    }
    throw std::runtime_error("no tensor " + name);
  }
};

std::string load_error(const TinyGguf& g, ShardSpec shard = {}) {
  TempFile file(gguf_bytes(g.spec), "tiny.gguf");
  try {
    LlamaWeights w(open_weight_source(file.path()), shard);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tiny.gguf"), std::string::npos) << e.what();
    return e.what();
  }
  return "";
}

TEST(Weights, LoadsAGgufAndTiesTheEmbedding) {
  TinyGguf g;
  TempFile file(gguf_bytes(g.spec), "tiny.gguf");
  LlamaWeights w(open_weight_source(file.path()), ShardSpec{});
  EXPECT_TRUE(w.config().tie_word_embeddings);
  EXPECT_TRUE(w.config().rope.interleaved);
  EXPECT_EQ(w.lm_head.data, w.embedding.data);
  EXPECT_EQ(w.layers[0].q.rows, 64);
  EXPECT_EQ(w.layers[0].down.cols, 96);
}

TEST(Weights, TensorParallelShardsAreViewsOfTheRanksSlice) {
  TinyGguf g;
  TempFile file(gguf_bytes(g.spec), "tiny.gguf");
  LlamaWeights full(open_weight_source(file.path()), ShardSpec{0, 1});
  for (int rank = 0; rank < 2; ++rank) {
    LlamaWeights part(open_weight_source(file.path()), ShardSpec{rank, 2});
    const LayerWeights& f = full.layers[0];
    const LayerWeights& p = part.layers[0];
    // Each LlamaWeights maps the file anew: compare offsets from the (unsharded) embedding.
    auto off = [](const LlamaWeights& w, const void* ptr) {
      return static_cast<const std::byte*>(ptr) - static_cast<const std::byte*>(w.embedding.data);
    };
    // Column-parallel: this rank's output rows, contiguous.
    EXPECT_EQ(p.q.rows, 32);
    EXPECT_EQ(off(part, p.q.data), off(full, f.q.row<std::byte>(rank * 32)));
    EXPECT_EQ(off(part, p.k.data), off(full, f.k.row<std::byte>(rank * 16)));
    EXPECT_EQ(off(part, p.gate.data), off(full, f.gate.row<std::byte>(rank * 48)));
    // Row-parallel: this rank's input columns of every row, strided like the full matrix.
    EXPECT_EQ(p.o.cols, 32);
    EXPECT_EQ(p.o.row_stride, f.o.row_stride);
    EXPECT_EQ(off(part, p.o.data), off(full, f.o.ptr<std::byte>() + rank * 32 * sizeof(float)));
    EXPECT_EQ(p.down.cols, 48);
    EXPECT_EQ(off(part, p.down.data), off(full, f.down.ptr<std::byte>() + rank * 48 * sizeof(float)));
    EXPECT_EQ(part.dims().num_heads, 2);
    EXPECT_EQ(part.dims().num_kv_heads, 1);
    EXPECT_EQ(off(part, part.lm_head.data), off(full, full.lm_head.row<std::byte>(rank * 16)));
  }
  TinyGguf g3;
  EXPECT_NE(load_error(g3, ShardSpec{0, 3}).find("does not split evenly over 3 ranks"), std::string::npos);
}

TEST(Weights, MissingTensorIsNamed) {
  TinyGguf g;
  std::erase_if(g.spec.tensors, [](const GgufTensor& t) { return t.name == "blk.0.attn_q.weight"; });
  EXPECT_NE(load_error(g).find("missing tensor 'blk.0.attn_q.weight'"), std::string::npos);
}

TEST(Weights, WrongShapeIsNamed) {
  TinyGguf g;
  GgufTensor& t = g.tensor("blk.0.ffn_up.weight");
  t.ne = {kHidden, kFfn - 1};
  t.data.resize(kHidden * (kFfn - 1) * 4);
  const std::string e = load_error(g);
  EXPECT_NE(e.find("'blk.0.ffn_up.weight' has shape [95, 64] but the config needs [96, 64]"),
            std::string::npos) << e;
}

TEST(Weights, UnsupportedTypeIsNamed) {
  TinyGguf g;
  GgufTensor& t = g.tensor("blk.0.ffn_down.weight");
  t.type = 12;  // Q4_K: 256-element blocks of 144 bytes
  t.ne = {256, kHidden};
  t.data.assign(kHidden * 144, std::byte{0});
  const std::string e = load_error(g);
  EXPECT_NE(e.find("blk.0.ffn_down.weight"), std::string::npos) << e;
}

TEST(Weights, UnsupportedArchitectureAndMissingMetadata) {
  TinyGguf g;
  g.spec.kvs[0].second = gv_string("falcon");
  EXPECT_NE(load_error(g).find("general.architecture 'falcon' is not supported"), std::string::npos);
  TinyGguf h;
  h.spec.kvs.erase(h.spec.kvs.begin() + 1);
  EXPECT_NE(load_error(h).find("missing metadata 'llama.block_count'"), std::string::npos);
}

}  // namespace
}  // namespace mil

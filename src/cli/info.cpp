// mil info: what MIL reads from a model (architecture and shapes), without running it.
#include <cstdio>

#include "cli/commands.h"
#include "model/weights.h"

namespace mil::cli {

void add_info_command(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("info", "print a model's configuration and weight types");
  cmd->add_option("--model-id", *path, "HF model directory or GGUF file")->required();
  cmd->callback([path] {
    LlamaWeights w(open_weight_source(*path), ShardSpec{});
    const ModelConfig& c = w.config();
    std::printf("architecture      %s\n", c.architecture.c_str());
    std::printf("layers            %lld\n", static_cast<long long>(c.num_layers));
    std::printf("hidden / ffn      %lld / %lld\n", static_cast<long long>(c.hidden_size),
                static_cast<long long>(c.intermediate_size));
    std::printf("heads / kv / dim  %lld / %lld / %lld\n", static_cast<long long>(c.num_heads),
                static_cast<long long>(c.num_kv_heads), static_cast<long long>(c.head_dim));
    std::printf("vocab             %lld\n", static_cast<long long>(c.vocab_size));
    std::printf("rope theta        %g%s\n", c.rope.theta, c.rope.interleaved ? " (interleaved pairs)" : "");
    std::printf("tied embeddings   %s\n", c.tie_word_embeddings ? "yes" : "no");
    std::printf("embedding dtype   %s\n", std::string(dtype_name(w.embedding.dtype)).c_str());
    std::printf("layer 0 q dtype   %s\n", std::string(dtype_name(w.layers[0].q.dtype)).c_str());
  });
}

}  // namespace mil::cli

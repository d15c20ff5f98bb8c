// HF model directories that are broken or hostile: each fails with an error naming the file
// and what is wrong. Built from copies of the bf16_sharded fixture.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/weights.h"

namespace mil {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class HfDirectory : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mil_hfdir_" + std::to_string(::getpid()) + "_" +
                                        testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::copy(fs::path(MIL_FIXTURES_DIR) / "tiny" / "bf16_sharded", dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  json read(const char* name) {
    std::ifstream in(dir_ / name);
    return json::parse(in);
  }
  void write(const char* name, const json& j) {
    std::ofstream out(dir_ / name, std::ios::trunc);
    out << j.dump();
  }
  std::string load_error() {
    try {
      LlamaWeights w(open_weight_source(dir_.string()), ShardSpec{});
    } catch (const Error& e) {
      return e.what();
    }
    return "(loaded)";
  }

  fs::path dir_;
};

TEST_F(HfDirectory, LoadsAsShipped) { EXPECT_EQ(load_error(), "(loaded)"); }

TEST_F(HfDirectory, IndexMayNotLeaveTheDirectory) {
  json index = read("model.safetensors.index.json");
  index["weight_map"]["lm_head.weight"] = "../../etc/passwd";
  write("model.safetensors.index.json", index);
  const std::string e = load_error();
  EXPECT_NE(e.find("model.safetensors.index.json: weight_map['lm_head.weight']"), std::string::npos) << e;
  EXPECT_NE(e.find("is not a plain file name"), std::string::npos) << e;
}

TEST_F(HfDirectory, MissingShardIsNamed) {
  fs::remove(dir_ / "model-00002-of-00003.safetensors");
  const std::string e = load_error();
  EXPECT_NE(e.find("model-00002-of-00003.safetensors"), std::string::npos) << e;
}

TEST_F(HfDirectory, TensorMissingFromIndexIsNamed) {
  json index = read("model.safetensors.index.json");
  index["weight_map"].erase("model.layers.1.mlp.up_proj.weight");
  write("model.safetensors.index.json", index);
  const std::string e = load_error();
  EXPECT_NE(e.find("missing tensor 'model.layers.1.mlp.up_proj.weight'"), std::string::npos) << e;
}

TEST_F(HfDirectory, IndexPointingAtTheWrongShardIsNamed) {
  json index = read("model.safetensors.index.json");
  index["weight_map"]["lm_head.weight"] = "model-00001-of-00003.safetensors";
  write("model.safetensors.index.json", index);
  const std::string e = load_error();
  EXPECT_NE(e.find("model-00001-of-00003.safetensors: the index maps tensor 'lm_head.weight'"),
            std::string::npos) << e;
}

TEST_F(HfDirectory, ConfigThatDisagreesWithTheWeightsIsNamed) {
  json config = read("config.json");
  config["intermediate_size"] = 128;
  write("config.json", config);
  const std::string e = load_error();
  EXPECT_NE(e.find("has shape [176, 64] but the config needs [128, 64]"), std::string::npos) << e;
}

TEST_F(HfDirectory, PickledWeightsAreNotLoaded) {
  for (const auto& f : fs::directory_iterator(dir_)) {
    if (f.path().extension() == ".safetensors" || f.path().extension() == ".json") {
      if (f.path().filename() != "config.json") fs::remove(f.path());
    }
  }
  std::ofstream(dir_ / "pytorch_model.bin") << "not unpickled";
  const std::string e = load_error();
  EXPECT_NE(e.find("pickled .bin weights are not loaded"), std::string::npos) << e;
}

TEST_F(HfDirectory, CorruptConfigIsNamed) {
  std::ofstream(dir_ / "config.json", std::ios::trunc) << "{\"model_type\": ";
  const std::string e = load_error();
  EXPECT_NE(e.find("config.json: invalid JSON"), std::string::npos) << e;
}

}  // namespace
}  // namespace mil

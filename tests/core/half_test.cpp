// f16/bf16 conversions against the CPU's own F16C instructions (exhaustive for f16 -> f32,
// a dense sample for f32 -> f16) and hand values for bf16.
#include "core/half.h"

#include <gtest/gtest.h>
#include <immintrin.h>

#include <cmath>
#include <random>

namespace mil {
namespace {

__attribute__((target("f16c"))) float hw_f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) uint16_t hw_f32_to_f16(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}

TEST(Half, F16ToF32IsExactForEveryValue) {
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "no F16C on this CPU";
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float ours = f16_to_f32(static_cast<uint16_t>(h));
    const float hw = hw_f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(hw)) {
      EXPECT_TRUE(std::isnan(ours)) << h;
    } else {
      ASSERT_EQ(std::memcmp(&ours, &hw, 4), 0) << "f16 bits " << h;
    }
  }
}

TEST(Half, F32ToF16RoundsToNearestEvenLikeTheHardware) {
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "no F16C on this CPU";
  std::mt19937 rng(1);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t bits = rng();
    float f;
    std::memcpy(&f, &bits, 4);
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), hw_f32_to_f16(f)) << "f32 bits " << bits;
  }
  // Every f16 value and the midpoints next to it (ties go to even).
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const float v = f16_to_f32(static_cast<uint16_t>(h));
    ASSERT_EQ(f32_to_f16(v), h);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    for (uint32_t delta : {0xfffu, 0x1000u, 0x1001u}) {
      uint32_t b = bits + delta;
      float g;
      std::memcpy(&g, &b, 4);
      ASSERT_EQ(f32_to_f16(g), hw_f32_to_f16(g)) << "near f16 " << h;
    }
  }
}

TEST(Half, Bf16) {
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is halfway between two bf16 values: ties to even (down to 1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1.0p-8f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1.8p-8f), 0x3f81);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

}  // namespace
}  // namespace mil

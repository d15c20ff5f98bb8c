#include <gtest/gtest.h>
#include "backends/cpu/cpu_ops.h"
TEST(Smoke, Builds) { auto ops = mil::make_cpu_ops(1); EXPECT_EQ(ops->device(), mil::Device::CPU); }

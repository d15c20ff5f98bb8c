#include "core/mapped_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace mil {
namespace {

TEST(MappedFile, BoundsAreChecked) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("mil_mapped_" + std::to_string(::getpid()) + ".bin")).string();
  std::ofstream(path, std::ios::binary) << "0123456789";
  {
    MappedFile f(path);
    EXPECT_EQ(f.size(), 10u);
    EXPECT_EQ(static_cast<char>(f.bytes(2, 3, "x")[0]), '2');
    EXPECT_EQ(f.bytes(10, 0, "x").size(), 0u);
    EXPECT_THROW(f.bytes(8, 3, "x"), Error);
    EXPECT_THROW(f.bytes(11, 0, "x"), Error);
    EXPECT_THROW(f.bytes(1, UINT64_MAX, "x"), Error);  // no wrap-around
    try {
      f.bytes(5, 100, "tensor 'w'");
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path + ": tensor 'w' spans bytes [5, 105)"), std::string::npos)
          << e.what();
    }
  }
  std::filesystem::remove(path);
  EXPECT_THROW(MappedFile("/nonexistent/mil.bin"), Error);
  EXPECT_THROW(MappedFile("/tmp"), Error);  // not a regular file
}

}  // namespace
}  // namespace mil

// Helpers shared by the safetensors tests: temporary directories, raw file writing, random data.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <catch2/catch.hpp>

#include "io/atomic_dir.h"
#include "io/dtype.h"
#include "util/error.h"

namespace prime::test {

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::random_device device;
    const auto base = std::filesystem::temp_directory_path();
    for (;;) {
      path_ = base / ("prime-io-test-" + std::to_string(device()));
      if (std::filesystem::create_directory(path_)) break;
    }
  }
  ~TempDir() {
    io::remove_tree(path_);  // not std::filesystem::remove_all: see atomic_dir.h
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A safetensors file built by hand: length prefix (which may lie), header text, data bytes.
inline std::string raw_safetensors(const std::string& header, uint64_t data_bytes,
                                   uint64_t claimed_length = UINT64_MAX) {
  const uint64_t length = claimed_length == UINT64_MAX ? header.size() : claimed_length;
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &length, 8);
  bytes += header;
  bytes.append(data_bytes, '\x5a');
  return bytes;
}

// Random bytes of the right size for `dtype` (0/1 for BOOL so the values stay valid).
inline at::Tensor random_tensor(io::DType dtype, std::vector<int64_t> shape, uint64_t seed) {
  at::Tensor result = at::empty(shape, at::TensorOptions().dtype(io::to_scalar_type(dtype)));
  std::mt19937_64 generator(seed);
  auto* bytes = static_cast<unsigned char*>(result.data_ptr());
  for (size_t position = 0; position < result.nbytes(); ++position) {
    const auto value = static_cast<unsigned char>(generator());
    bytes[position] = dtype == io::DType::BOOL ? (value & 1) : value;
  }
  return result;
}

inline std::string tensor_bytes(const at::Tensor& tensor) {
  at::Tensor dense = tensor.contiguous();
  return std::string(static_cast<const char*>(dense.data_ptr()), dense.nbytes());
}

// The message of the UserError `action` throws; fails the test for any other outcome.
template <typename Action>
std::string user_error_message(Action&& action) {
  try {
    action();
  } catch (const UserError& error) {
    return error.what();
  } catch (const std::exception& error) {
    FAIL("expected prime::UserError, got another exception: " << error.what());
  }
  FAIL("expected prime::UserError, nothing was thrown");
  return {};
}

}  // namespace prime::test

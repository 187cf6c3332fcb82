// Read-only, memory-mapped safetensors files. Tensors are zero-copy views into the mapping.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <memory>
#include <string>

#include "io/dtype.h"
#include "io/safetensors_header.h"

namespace prime::io {

class SafetensorsFile {
 public:
  // Maps the file and validates its header (see parse_header); UserError names the path.
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const Header& header() const { return header_; }
  const TensorInfo* find(const std::string& name) const;
  // The whole mapped file and the offset of its data region (for hashing, or checking views).
  std::string_view mapped_bytes() const;
  uint64_t data_start() const { return data_start_; }

  // A CPU view of the mapped bytes; the view keeps the mapping alive, so it may outlive this
  // object. The mapping is read-only: clone() before modifying in place (writing through the
  // view faults). Data that is not aligned to its element size is copied instead of viewed.
  // UserError if `name` is missing.
  at::Tensor tensor(const std::string& name) const;

  // Hint that `name`'s pages are not needed for now: drops them from this process's resident
  // set (they stay in the page cache, and any view still reads correctly, faulting them back).
  // Keeps peak RSS flat when streaming through a checkpoint larger than memory.
  void release(const std::string& name) const;

 private:
  struct Mapping;
  SafetensorsFile() = default;
  std::filesystem::path path_;
  Header header_;
  uint64_t data_start_ = 0;
  std::shared_ptr<const Mapping> mapping_;
  std::map<std::string, size_t> index_;  // name -> position in header_.tensors
};

}  // namespace prime::io

// The source checkpoint as the converter reads it: names, shapes and dtypes from the headers;
// whole tensors as mmap'd views (for computed targets, released after use); raw bytes streamed
// through one small buffer with pread (for copies), so that no copied tensor is ever resident
// in this process. Synthetic sources generate each tensor on demand (seeded per name).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "convert/weight_map.h"
#include "io/checkpoint.h"
#include "io/source.h"

namespace prime::convert {

class SourceWeights : public SourceReader {
 public:
  // Opens the checkpoint (headers only) or prepares the synthetic tensor list.
  explicit SourceWeights(const io::Source& source);
  ~SourceWeights() override;
  SourceWeights(const SourceWeights&) = delete;
  SourceWeights& operator=(const SourceWeights&) = delete;

  const io::Source& source() const { return source_; }
  bool contains(const std::string& name) const;
  std::vector<std::string> names() const;  // storage order (synthetic: the Transformer's order)
  std::vector<int64_t> shape(const std::string& name) const;
  at::ScalarType dtype(const std::string& name) const;
  uint64_t nbytes(const std::string& name) const;
  uint64_t total_bytes() const;
  // The safetensors files (absent for synthetic sources).
  std::vector<std::filesystem::path> files() const;

  // A zero-copy view (checkpoint) or a fresh tensor (synthetic), in the source dtype.
  at::Tensor tensor(const std::string& name) const override;
  // A fresh tensor read with one pread (checkpoint): unlike faulting a view in page by page,
  // a cold file is read in large sequential requests. Synthetic: as tensor().
  at::Tensor read(const std::string& name) const;
  // Drops `name`'s mapped pages from this process's resident set (no-op for synthetic).
  void release(const std::string& name) const;

  // Passes `name`'s bytes, converted to `dtype`, to `sink` in pieces of at most kChunkBytes
  // source bytes (whole elements), reading with pread: memory stays at one chunk.
  using ByteSink = std::function<void(const void* data, size_t size)>;
  void stream(const std::string& name, at::ScalarType dtype, const ByteSink& sink) const;
  static constexpr size_t kChunkBytes = 16u << 20;
  void set_chunk_bytes(size_t bytes) { chunk_bytes_ = bytes; }  // tests: many small pieces

  // Where a checkpoint tensor's bytes are, for copying them file to file as they are; absent
  // for synthetic sources.
  struct Location {
    std::filesystem::path path;
    uint64_t offset;  // of the tensor's first byte in the file
  };
  std::optional<Location> file_location(const std::string& name) const;

 private:
  Location locate(const std::string& name) const;
  int descriptor(const std::filesystem::path& path) const;
  const io::TensorSpec& synthetic_spec(const std::string& name) const;

  io::Source source_;
  std::optional<io::Checkpoint> checkpoint_;
  // Synthetic sources.
  std::vector<io::TensorSpec> synthetic_specs_;
  std::map<std::string, size_t> synthetic_index_;
  at::ScalarType synthetic_dtype_ = at::kFloat;
  // Open descriptors for pread (shared by threads: read() may run on a worker), and the one
  // copy buffer of stream() (its caller's thread only).
  mutable std::mutex descriptors_mutex_;
  mutable std::map<std::string, int> descriptors_;
  mutable std::vector<char> buffer_;
  size_t chunk_bytes_ = kChunkBytes;
};

// The dtype a synthetic source stands for: config torch_dtype/dtype (bfloat16, float16,
// float32), fp32 when absent.
at::ScalarType synthetic_source_dtype(const io::ModelConfig& config);

}  // namespace prime::convert

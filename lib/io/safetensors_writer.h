// Streaming sharded safetensors writer: tensors are declared up front (name, dtype, shape) so
// that shard layout and headers are known before any data exists; each tensor is then produced
// and written one at a time, so peak memory is one tensor, not the model.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "io/dtype.h"

namespace prime::io {

struct WriterOptions {
  uint64_t max_shard_bytes = 5000000000ull;  // tensor bytes per shard; one larger tensor gets its own
  // Written as __metadata__ into every shard. "format": "pt" is added when absent, because
  // transformers refuses safetensors files without it.
  std::map<std::string, std::string> metadata;
};

struct WriteProgress {
  size_t tensors_done, tensors_total;
  uint64_t bytes_done, bytes_total;
};

class SafetensorsWriter {
 public:
  // `dir` must exist (e.g. AtomicDirectory::staging()); files in it are created, never replaced.
  SafetensorsWriter(std::filesystem::path dir, WriterOptions options);

  // UserError on a duplicate or empty name. `produce` runs once, during write(); it may return
  // a non-contiguous or GPU tensor (it is copied to contiguous CPU memory for writing).
  void add(std::string name, DType dtype, std::vector<int64_t> shape,
           std::function<at::Tensor()> produce);

  // Receives a tensor's bytes in order, in pieces of any size.
  using ByteSink = std::function<void(const void* data, size_t size)>;
  // Like add(), for data that arrives in pieces (e.g. copied from another file through a small
  // buffer), so that no whole tensor is ever resident: `stream(sink)` runs once, during write(),
  // and must pass exactly the declared byte count to `sink` (InternalError otherwise).
  void add_stream(std::string name, DType dtype, std::vector<int64_t> shape,
                  std::function<void(const ByteSink&)> stream);

  // Like add(), for bytes that already exist in another file at `offset` (a tensor kept as it
  // is): copied as cp copies, through a 128 KB buffer, so nothing is held or mapped. A source
  // file shorter than offset + the tensor's bytes is a UserError.
  void add_file_copy(std::string name, DType dtype, std::vector<int64_t> shape,
                     std::filesystem::path source, uint64_t offset);

  // Shards in declaration order, starting a new one when the next tensor would exceed
  // max_shard_bytes. Within a shard, tensors are laid out (and produced) by decreasing element
  // size, stably, so that every tensor is aligned; with one dtype that is declaration order.
  // One shard: model.safetensors. Several: model-00001-of-0000N.safetensors
  // plus model.safetensors.index.json {"metadata":{"total_size":N},"weight_map":{...}}.
  // A produced tensor whose dtype/shape differ from its declaration is an InternalError;
  // I/O failures (ENOSPC, ...) are UserErrors naming the file and strerror. Call once.
  void write(const std::function<void(const WriteProgress&)>& progress = {});

  // The files written (or to be written), in order; the index last when sharded.
  std::vector<std::string> file_names() const;
  uint64_t total_bytes() const { return total_bytes_; }

 private:
  struct Declared {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t nbytes;
    std::function<at::Tensor()> produce;
    std::function<void(const ByteSink&)> stream;  // instead of produce, see add_stream
    std::filesystem::path copy_source;            // instead of produce, see add_file_copy
    uint64_t copy_offset = 0;
  };
  std::vector<std::vector<size_t>> plan_shards() const;
  std::string shard_name(size_t shard, size_t shard_count) const;

  std::filesystem::path dir_;
  WriterOptions options_;
  std::vector<Declared> declared_;
  std::map<std::string, size_t> by_name_;
  uint64_t total_bytes_ = 0;
  bool written_ = false;
};

}  // namespace prime::io

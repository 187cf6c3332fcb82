#include "io/safetensors_writer.h"

#include <ATen/core/Tensor.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "util/error.h"

namespace prime::io {
namespace fs = std::filesystem;

namespace {

// Buffers small writes (headers, norms, biases) and passes large tensors straight through, so a
// model with thousands of tiny tensors does not cost a syscall each.
class OutputFile {
 public:
  static constexpr size_t kBufferBytes = 8 << 20;
  // Writeback is started every this many bytes so that dirty pages stay bounded and the final
  // fsync in AtomicDirectory::commit has little left to do.
  static constexpr uint64_t kWritebackBytes = 64ull << 20;

  explicit OutputFile(fs::path path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot create");
    buffer_.reserve(kBufferBytes);
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  ~OutputFile() {
    if (fd_ >= 0) ::close(fd_);  // only on an error path; close() reports errors otherwise
  }

  void append(const void* data, size_t size) {
    if (size >= kBufferBytes) {
      flush();
      write_all(static_cast<const char*>(data), size);
      return;
    }
    if (buffer_.size() + size > kBufferBytes) flush();
    buffer_.insert(buffer_.end(), static_cast<const char*>(data), static_cast<const char*>(data) + size);
  }

  // Appends `size` bytes of `source_fd` from `offset`, as cp does: read/write through a small
  // buffer that stays in the CPU cache (measured as fast as cp here; copy_file_range and
  // multi-MB buffers were 15-30% slower), leaving writeback to the kernel.
  void copy_from(int source_fd, uint64_t offset, uint64_t size, const fs::path& source) {
    static constexpr size_t kCopyChunk = 128 << 10;
    flush();
    posix_fadvise(source_fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    if (copy_buffer_.size() < kCopyChunk) copy_buffer_.resize(kCopyChunk);
    while (size > 0) {
      const ssize_t got = ::pread(source_fd, copy_buffer_.data(), std::min<uint64_t>(size, kCopyChunk),
                                  static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) throw user_error("cannot read ", source.string(), ": ", std::strerror(errno));
      if (got == 0) throw user_error(source.string(), " ended before byte ", offset + size, " (truncated?)");
      for (const char* data = copy_buffer_.data(); data < copy_buffer_.data() + got;) {
        const ssize_t written = ::write(fd_, data, static_cast<size_t>(copy_buffer_.data() + got - data));
        if (written < 0 && errno == EINTR) continue;
        if (written < 0) fail("cannot write");
        data += written;
      }
      offset += static_cast<uint64_t>(got);
      size -= static_cast<uint64_t>(got);
      offset_ += static_cast<uint64_t>(got);
    }
    synced_ = offset_;
  }

  void close() {
    flush();
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail("cannot write");
  }

 private:
  [[noreturn]] void fail(const char* what) const {
    throw user_error(what, " ", path_.string(), ": ", std::strerror(errno));
  }
  void flush() {
    write_all(buffer_.data(), buffer_.size());
    buffer_.clear();
  }
  void write_all(const char* data, size_t size) {
    while (size > 0) {
      const ssize_t written = ::write(fd_, data, std::min<size_t>(size, 1 << 30));
      if (written < 0) {
        if (errno == EINTR) continue;
        fail("cannot write");
      }
      data += written;
      size -= static_cast<size_t>(written);
      offset_ += static_cast<uint64_t>(written);
    }
    if (offset_ - synced_ >= kWritebackBytes) {
      sync_file_range(fd_, static_cast<off64_t>(synced_), static_cast<off64_t>(offset_ - synced_),
                      SYNC_FILE_RANGE_WRITE);
      synced_ = offset_;
    }
  }

  fs::path path_;
  int fd_ = -1;
  std::vector<char> buffer_;
  std::vector<char> copy_buffer_;
  uint64_t offset_ = 0, synced_ = 0;
};

std::string shape_text(at::IntArrayRef shape) {
  std::string text = "[";
  for (size_t dim = 0; dim < shape.size(); ++dim) text += (dim ? ", " : "") + std::to_string(shape[dim]);
  return text + "]";
}

}  // namespace

SafetensorsWriter::SafetensorsWriter(fs::path dir, WriterOptions options)
    : dir_(std::move(dir)), options_(std::move(options)) {
  std::error_code error;
  if (!fs::is_directory(dir_, error))
    throw user_error("output directory ", dir_.string(), " does not exist");
  PRIME_CHECK(options_.max_shard_bytes > 0, "max_shard_bytes must be positive");
  options_.metadata.emplace("format", "pt");
}

void SafetensorsWriter::add(std::string name, DType dtype, std::vector<int64_t> shape,
                            std::function<at::Tensor()> produce) {
  PRIME_CHECK(!written_, "SafetensorsWriter::add after write: ", name);
  if (name.empty()) throw user_error("cannot write a tensor with an empty name");
  if (name == "__metadata__") throw user_error("\"__metadata__\" is reserved, not a tensor name");
  if (by_name_.count(name) != 0) throw user_error("duplicate tensor name ", name, " in output");
  uint64_t nbytes = dtype_size(dtype);
  for (int64_t extent : shape) {
    PRIME_CHECK(extent >= 0, "negative dimension in the shape of ", name);
    PRIME_CHECK(!__builtin_mul_overflow(nbytes, static_cast<uint64_t>(extent), &nbytes),
                "byte count of ", name, " overflows");
  }
  by_name_.emplace(name, declared_.size());
  total_bytes_ += nbytes;
  declared_.push_back({std::move(name), dtype, std::move(shape), nbytes, std::move(produce), {}, {}, 0});
}

void SafetensorsWriter::add_stream(std::string name, DType dtype, std::vector<int64_t> shape,
                                   std::function<void(const ByteSink&)> stream) {
  add(std::move(name), dtype, std::move(shape), {});
  declared_.back().stream = std::move(stream);
}

void SafetensorsWriter::add_file_copy(std::string name, DType dtype, std::vector<int64_t> shape,
                                      fs::path source, uint64_t offset) {
  add(std::move(name), dtype, std::move(shape), {});
  declared_.back().copy_source = std::move(source);
  declared_.back().copy_offset = offset;
}

std::vector<std::vector<size_t>> SafetensorsWriter::plan_shards() const {
  std::vector<std::vector<size_t>> shards(1);
  uint64_t shard_bytes = 0;
  for (size_t position = 0; position < declared_.size(); ++position) {
    const uint64_t nbytes = declared_[position].nbytes;
    if (!shards.back().empty() && shard_bytes + nbytes > options_.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(position);
    shard_bytes += nbytes;
  }
  // Wider elements first (stable, as the Python writer does): every group then ends on a
  // multiple of the next group's element size, so each tensor is naturally aligned in the file
  // (given the 8-byte aligned data start) and can be mapped as a view without copying.
  for (auto& shard : shards)
    std::stable_sort(shard.begin(), shard.end(), [this](size_t a, size_t b) {
      return dtype_size(declared_[a].dtype) > dtype_size(declared_[b].dtype);
    });
  return shards;
}

std::string SafetensorsWriter::shard_name(size_t shard, size_t shard_count) const {
  if (shard_count == 1) return kSingleFileName;
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", shard + 1, shard_count);
  return name;
}

std::vector<std::string> SafetensorsWriter::file_names() const {
  const size_t shard_count = plan_shards().size();
  std::vector<std::string> names;
  for (size_t shard = 0; shard < shard_count; ++shard) names.push_back(shard_name(shard, shard_count));
  if (shard_count > 1) names.push_back(kIndexFileName);
  return names;
}

void SafetensorsWriter::write(const std::function<void(const WriteProgress&)>& progress) {
  PRIME_CHECK(!written_, "SafetensorsWriter::write called twice for ", dir_.string());
  written_ = true;
  const auto shards = plan_shards();
  WriteProgress done{0, declared_.size(), 0, total_bytes_};
  nlohmann::json weight_map = nlohmann::json::object();

  for (size_t shard = 0; shard < shards.size(); ++shard) {
    const std::string file_name = shard_name(shard, shards.size());
    nlohmann::json header = nlohmann::json::object();
    if (!options_.metadata.empty()) header["__metadata__"] = options_.metadata;
    uint64_t offset = 0;
    for (size_t position : shards[shard]) {
      const Declared& tensor = declared_[position];
      header[tensor.name] = {{"dtype", std::string(dtype_name(tensor.dtype))},
                             {"shape", tensor.shape},
                             {"data_offsets", {offset, offset + tensor.nbytes}}};
      offset += tensor.nbytes;
      weight_map[tensor.name] = file_name;
    }
    std::string header_text = header.dump();
    // Pad so the data region starts 8-byte aligned, which keeps every mapped view aligned.
    header_text.append((8 - header_text.size() % 8) % 8, ' ');
    const uint64_t header_length = header_text.size();

    OutputFile out(dir_ / file_name);
    out.append(&header_length, sizeof header_length);  // little-endian host
    out.append(header_text.data(), header_text.size());
    for (size_t position : shards[shard]) {
      Declared& tensor = declared_[position];
      if (!tensor.copy_source.empty()) {
        const int source_fd = ::open(tensor.copy_source.c_str(), O_RDONLY | O_CLOEXEC);
        if (source_fd < 0)
          throw user_error("cannot open ", tensor.copy_source.string(), ": ", std::strerror(errno));
        try {
          out.copy_from(source_fd, tensor.copy_offset, tensor.nbytes, tensor.copy_source);
        } catch (...) {
          ::close(source_fd);
          throw;
        }
        ::close(source_fd);
        done.tensors_done += 1;
        done.bytes_done += tensor.nbytes;
        if (progress) progress(done);
        continue;
      }
      if (tensor.stream) {
        uint64_t passed = 0;
        tensor.stream([&](const void* data, size_t size) {
          if (passed + size > tensor.nbytes)
            throw internal_error("stream of ", tensor.name, " passed more than its ", tensor.nbytes, " bytes");
          if (size > 0) out.append(data, size);
          passed += size;
        });
        tensor.stream = nullptr;
        if (passed != tensor.nbytes)
          throw internal_error("stream of ", tensor.name, " passed ", passed, " of its ", tensor.nbytes, " bytes");
        done.tensors_done += 1;
        done.bytes_done += tensor.nbytes;
        if (progress) progress(done);
        continue;
      }
      at::Tensor produced = tensor.produce();
      tensor.produce = nullptr;  // drop whatever the producer captured as soon as possible
      if (!produced.defined()) throw internal_error("producer of ", tensor.name, " returned no tensor");
      if (produced.scalar_type() != to_scalar_type(tensor.dtype) || !produced.sizes().equals(tensor.shape))
        throw internal_error("tensor ", tensor.name, " was declared ", dtype_name(tensor.dtype), " ",
                             shape_text(tensor.shape), " but produced as ",
                             c10::toString(produced.scalar_type()), " ", shape_text(produced.sizes()));
      if (!produced.device().is_cpu()) produced = produced.cpu();
      produced = produced.contiguous();
      PRIME_CHECK(produced.nbytes() == tensor.nbytes, "byte count of ", tensor.name);
      if (tensor.nbytes > 0) out.append(produced.data_ptr(), tensor.nbytes);
      produced.reset();
      done.tensors_done += 1;
      done.bytes_done += tensor.nbytes;
      if (progress) progress(done);
    }
    out.close();
  }

  if (shards.size() > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", total_bytes_}}},
                                  {"weight_map", weight_map}};
    const std::string text = index.dump(2) + "\n";
    OutputFile out(dir_ / kIndexFileName);
    out.append(text.data(), text.size());
    out.close();
  }
}

}  // namespace prime::io

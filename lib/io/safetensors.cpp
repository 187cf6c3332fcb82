#include "io/safetensors.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "util/error.h"

namespace prime::io {

struct SafetensorsFile::Mapping {
  const char* base = nullptr;
  size_t size = 0;
  Mapping(const char* base, size_t size) : base(base), size(size) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (base != nullptr) munmap(const_cast<char*>(base), size);
  }
};

namespace {

// Closes the descriptor on every path out of open(); the mapping does not need it.
struct FileDescriptor {
  int fd;
  ~FileDescriptor() {
    if (fd >= 0) close(fd);
  }
};

}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  const std::string where = path.string();
  FileDescriptor file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) throw user_error("cannot open ", where, ": ", std::strerror(errno));
  struct stat info {};
  if (fstat(file.fd, &info) != 0) throw user_error("cannot stat ", where, ": ", std::strerror(errno));
  if (!S_ISREG(info.st_mode)) throw user_error(where, ": not a regular file");
  const auto size = static_cast<uint64_t>(info.st_size);
  if (size < 8)
    throw user_error(where, ": file is truncated: ", size,
                     " bytes, shorter than the 8-byte header length");

  void* base = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, file.fd, 0);
  if (base == MAP_FAILED) throw user_error("cannot map ", where, ": ", std::strerror(errno));
  auto mapping = std::make_shared<const Mapping>(static_cast<const char*>(base), size);

  // The length prefix is checked (cap, EOF) before the header bytes are touched.
  ParsedFile parsed = parse_file_bytes(std::string_view(mapping->base, size), where);

  std::shared_ptr<SafetensorsFile> result(new SafetensorsFile());
  result->path_ = path;
  result->header_ = std::move(parsed.header);
  result->data_start_ = parsed.data_start;
  result->mapping_ = std::move(mapping);
  for (size_t position = 0; position < result->header_.tensors.size(); ++position)
    result->index_.emplace(result->header_.tensors[position].name, position);
  return result;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto found = index_.find(name);
  return found == index_.end() ? nullptr : &header_.tensors[found->second];
}

std::string_view SafetensorsFile::mapped_bytes() const {
  return std::string_view(mapping_->base, mapping_->size);
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo* info = find(name);
  if (info == nullptr) throw user_error("missing tensor ", name, " in ", path_.string());
  const auto options = at::TensorOptions().dtype(to_scalar_type(info->dtype));
  if (info->nbytes() == 0) return at::empty(info->shape, options);
  const char* data = mapping_->base + data_start_ + info->begin;
  if (reinterpret_cast<uintptr_t>(data) % dtype_size(info->dtype) != 0) {
    // Kernels may assume natural alignment; files from other writers need not provide it.
    at::Tensor copy = at::empty(info->shape, options);
    std::memcpy(copy.data_ptr(), data, info->nbytes());
    return copy;
  }
  std::shared_ptr<const Mapping> keep_alive = mapping_;
  return at::from_blob(
      const_cast<char*>(data), info->shape, [keep_alive](void*) {}, options);
}

void SafetensorsFile::release(const std::string& name) const {
  const TensorInfo* info = find(name);
  if (info == nullptr || info->nbytes() == 0) return;
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto base = reinterpret_cast<uintptr_t>(mapping_->base);
  // Rounding outwards is safe: the mapping is read-only and never dirty, so a dropped page
  // shared with a neighbour is simply read again from the page cache.
  uintptr_t first = (base + data_start_ + info->begin) / page * page;
  uintptr_t last = (base + data_start_ + info->end + page - 1) / page * page;
  last = std::min(last, (base + mapping_->size + page - 1) / page * page);
  madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

}  // namespace prime::io

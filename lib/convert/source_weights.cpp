#include "convert/source_weights.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "io/dtype.h"
#include "io/synthetic.h"
#include "util/error.h"

namespace prime::convert {

at::ScalarType synthetic_source_dtype(const io::ModelConfig& config) { return io::synthetic_dtype(config); }

SourceWeights::SourceWeights(const io::Source& source) : source_(source) {
  if (source.kind == "synthetic") {
    synthetic_specs_ = io::transformer_tensor_specs(source.config);
    for (size_t i = 0; i < synthetic_specs_.size(); ++i) synthetic_index_[synthetic_specs_[i].name] = i;
    synthetic_dtype_ = synthetic_source_dtype(source.config);
    return;
  }
  checkpoint_.emplace(io::Checkpoint::open(source.dir));
  io::check_weights_match_config(source.config, *checkpoint_);
}

SourceWeights::~SourceWeights() {
  for (const auto& [path, fd] : descriptors_) ::close(fd);
}

const io::TensorSpec& SourceWeights::synthetic_spec(const std::string& name) const {
  auto found = synthetic_index_.find(name);
  if (found == synthetic_index_.end()) throw user_error("missing tensor ", name, " in ", source_.spec);
  return synthetic_specs_[found->second];
}

bool SourceWeights::contains(const std::string& name) const {
  return checkpoint_ ? checkpoint_->contains(name) : synthetic_index_.count(name) != 0;
}

std::vector<std::string> SourceWeights::names() const {
  if (checkpoint_) return checkpoint_->names();
  std::vector<std::string> names;
  for (const auto& spec : synthetic_specs_) names.push_back(spec.name);
  return names;
}

std::vector<int64_t> SourceWeights::shape(const std::string& name) const {
  return checkpoint_ ? checkpoint_->info(name).shape : synthetic_spec(name).shape;
}

at::ScalarType SourceWeights::dtype(const std::string& name) const {
  if (checkpoint_) return io::to_scalar_type(checkpoint_->info(name).dtype);
  synthetic_spec(name);  // UserError when missing
  return synthetic_dtype_;
}

uint64_t SourceWeights::nbytes(const std::string& name) const {
  if (checkpoint_) return checkpoint_->info(name).nbytes();
  uint64_t count = at::elementSize(synthetic_dtype_);
  for (int64_t extent : synthetic_spec(name).shape) count *= static_cast<uint64_t>(extent);
  return count;
}

uint64_t SourceWeights::total_bytes() const {
  if (checkpoint_) return checkpoint_->total_bytes();
  uint64_t total = 0;
  for (const auto& spec : synthetic_specs_) total += nbytes(spec.name);
  return total;
}

std::vector<std::filesystem::path> SourceWeights::files() const {
  std::vector<std::filesystem::path> paths;
  if (checkpoint_)
    for (const auto& file : checkpoint_->files()) paths.push_back(file->path());
  return paths;
}

at::Tensor SourceWeights::tensor(const std::string& name) const {
  if (checkpoint_) return checkpoint_->tensor(name);
  const auto& spec = synthetic_spec(name);
  return io::synthetic_tensor(spec.name, spec.shape, source_.seed, synthetic_dtype_);
}

at::Tensor SourceWeights::read(const std::string& name) const {
  if (!checkpoint_) return tensor(name);
  const Location where = locate(name);
  at::Tensor out = at::empty(shape(name), at::TensorOptions().dtype(dtype(name)));
  char* data = static_cast<char*>(out.data_ptr());
  const uint64_t total = nbytes(name);
  const int fd = descriptor(where.path);
  for (uint64_t done = 0; done < total;) {
    const ssize_t n = ::pread(fd, data + done, std::min<uint64_t>(total - done, 1u << 30),
                              static_cast<off_t>(where.offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw user_error("cannot read ", where.path.string(), ": ", std::strerror(errno));
    if (n == 0) throw user_error(where.path.string(), " ended inside tensor ", name, " (file truncated?)");
    done += static_cast<uint64_t>(n);
  }
  return out;
}

void SourceWeights::release(const std::string& name) const {
  if (checkpoint_ && checkpoint_->contains(name)) checkpoint_->release(name);
}

SourceWeights::Location SourceWeights::locate(const std::string& name) const {
  for (const auto& file : checkpoint_->files())
    if (const io::TensorInfo* info = file->find(name)) return {file->path(), file->data_start() + info->begin};
  throw user_error("missing tensor ", name, " in ", source_.dir.string());
}

std::optional<SourceWeights::Location> SourceWeights::file_location(const std::string& name) const {
  if (!checkpoint_) return std::nullopt;
  return locate(name);
}

int SourceWeights::descriptor(const std::filesystem::path& path) const {
  std::lock_guard<std::mutex> lock(descriptors_mutex_);
  auto found = descriptors_.find(path.string());
  if (found != descriptors_.end()) return found->second;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw user_error("cannot open ", path.string(), ": ", std::strerror(errno));
  // Tensors are read front to back: let the kernel read ahead generously.
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  descriptors_.emplace(path.string(), fd);
  return fd;
}

void SourceWeights::stream(const std::string& name, at::ScalarType dtype, const ByteSink& sink) const {
  const at::ScalarType from = this->dtype(name);
  if (!checkpoint_) {
    at::Tensor whole = tensor(name).to(dtype).contiguous();
    if (whole.nbytes() > 0) sink(whole.data_ptr(), whole.nbytes());
    return;
  }
  const Location where = locate(name);
  const uint64_t total = nbytes(name);
  const size_t element = at::elementSize(from);
  const size_t chunk = std::max(chunk_bytes_ / element, size_t{1}) * element;
  if (buffer_.size() < chunk) buffer_.resize(chunk);
  const int fd = descriptor(where.path);
  for (uint64_t done = 0; done < total;) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(chunk, total - done));
    size_t got = 0;
    while (got < want) {
      const ssize_t n = ::pread(fd, buffer_.data() + got, want - got, static_cast<off_t>(where.offset + done + got));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw user_error("cannot read ", where.path.string(), ": ", std::strerror(errno));
      if (n == 0) throw user_error(where.path.string(), " ended inside tensor ", name, " (file truncated?)");
      got += static_cast<size_t>(n);
    }
    if (dtype == from) {
      sink(buffer_.data(), want);
    } else {
      const int64_t count = static_cast<int64_t>(want / element);
      at::Tensor piece = at::from_blob(buffer_.data(), {count}, at::TensorOptions().dtype(from)).to(dtype);
      sink(piece.data_ptr(), piece.nbytes());
    }
    done += want;
  }
}

}  // namespace prime::convert

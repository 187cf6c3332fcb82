#include "data/token_shard.h"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <random>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/atomic_dir.h"
#include "util/error.h"

// The body is mapped and handed out as-is, which is only right on a little-endian host.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "token shards assume a little-endian host");

namespace prime::io {
namespace {

void put_u32(uint8_t* at, uint32_t value) {
  for (int i = 0; i < 4; ++i) at[i] = static_cast<uint8_t>(value >> (8 * i));
}
void put_u64(uint8_t* at, uint64_t value) {
  for (int i = 0; i < 8; ++i) at[i] = static_cast<uint8_t>(value >> (8 * i));
}
uint32_t get_u32(const uint8_t* at) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= static_cast<uint32_t>(at[i]) << (8 * i);
  return value;
}
uint64_t get_u64(const uint8_t* at) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= static_cast<uint64_t>(at[i]) << (8 * i);
  return value;
}

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, const uint8_t* data, size_t size, const std::filesystem::path& path) {
  while (size > 0) {
    const ssize_t written = ::write(fd, data, size);
    if (written < 0) {
      if (errno == EINTR) continue;
      throw user_error("cannot write ", path.string(), ": ", errno_text());
    }
    data += written;
    size -= static_cast<size_t>(written);
  }
}

}  // namespace

std::vector<uint8_t> encode_shard_header(const TokenShardHeader& header) {
  std::vector<uint8_t> bytes(kTokenShardHeaderBytes, 0);
  std::memcpy(bytes.data(), kTokenShardMagic, sizeof(kTokenShardMagic));
  put_u32(&bytes[8], kTokenShardVersion);
  put_u32(&bytes[12], header.width);
  put_u64(&bytes[16], header.count);
  put_u64(&bytes[24], header.source_bytes);
  put_u64(&bytes[32], header.documents);
  put_u32(&bytes[40], header.eos_id);
  put_u32(&bytes[44], header.vocab_size);
  put_u32(&bytes[48], header.row_length);
  put_u32(&bytes[52], static_cast<uint32_t>(header.kind));
  return bytes;
}

TokenShardHeader decode_shard_header(const uint8_t* bytes, size_t size, const std::string& where) {
  if (size < kTokenShardHeaderBytes)
    throw user_error(where, ": not a token shard: ", size, " bytes is shorter than the ", kTokenShardHeaderBytes,
                     "-byte header");
  if (std::memcmp(bytes, kTokenShardMagic, sizeof(kTokenShardMagic)) != 0)
    throw user_error(where, ": not a token shard (bad magic; expected \"PRIMETOK\")");
  const uint32_t version = get_u32(bytes + 8);
  if (version != kTokenShardVersion)
    throw user_error(where, ": token shard version ", version, " is not supported (this build reads version ",
                     kTokenShardVersion, ")");
  TokenShardHeader header;
  header.width = get_u32(bytes + 12);
  header.count = get_u64(bytes + 16);
  header.source_bytes = get_u64(bytes + 24);
  header.documents = get_u64(bytes + 32);
  header.eos_id = get_u32(bytes + 40);
  header.vocab_size = get_u32(bytes + 44);
  header.row_length = get_u32(bytes + 48);
  const uint32_t kind = get_u32(bytes + 52);
  if (header.width != 2 && header.width != 4)
    throw user_error(where, ": token shard width ", header.width, " bytes is not 2 (u16) or 4 (u32)");
  if (kind > 1) throw user_error(where, ": token shard kind ", kind, " is not 0 (tokens) or 1 (positions)");
  header.kind = static_cast<ShardKind>(kind);
  if (header.count > (UINT64_MAX - kTokenShardHeaderBytes) / header.width)
    throw user_error(where, ": token shard count ", header.count, " is impossibly large");
  if (header.row_length != 0 && header.count % header.row_length != 0)
    throw user_error(where, ": token shard count ", header.count, " is not a multiple of its row length ",
                     header.row_length);
  return header;
}

uint32_t width_for_vocab(int64_t vocab_size) { return vocab_size > 0 && vocab_size <= 65536 ? 2 : 4; }

// ---- writer -----------------------------------------------------------------------------------

TokenShardWriter::TokenShardWriter(std::filesystem::path path, TokenShardHeader header, bool overwrite,
                                   const std::string& flag)
    : path_(std::move(path)), header_(header) {
  if (header_.width != 2 && header_.width != 4) throw internal_error("token shard width must be 2 or 4");
  struct stat info {};
  if (::stat(path_.c_str(), &info) == 0 && S_ISDIR(info.st_mode))
    throw user_error("cannot write token shard ", path_.string(), ": it is a directory");
  // Temporary files of runs that were killed (SIGKILL) are removed here; callers report them.
  file_ = std::make_unique<AtomicFile>(path_, overwrite, flag, nullptr);
  fd_ = ::open(file_->staging().c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0)
    throw user_error("cannot create ", path_.string(), " (temporary ", file_->staging().string(), "): ", errno_text());
  const auto placeholder = encode_shard_header(header_);
  write_all(fd_, placeholder.data(), placeholder.size(), file_->staging());
  buffer_.reserve(1 << 20);
}

TokenShardWriter::~TokenShardWriter() {
  if (fd_ >= 0) ::close(fd_);  // file_ removes the temporary file unless finish() committed it
}

const std::vector<std::filesystem::path>& TokenShardWriter::removed_stale() const { return file_->removed_stale(); }

void TokenShardWriter::append(const uint32_t* ids, size_t n) {
  if (finished_) throw internal_error("append after finish on ", path_.string());
  const uint64_t limit = header_.vocab_size ? header_.vocab_size : (header_.width == 2 ? 65536ull : (1ull << 32));
  for (size_t i = 0; i < n; ++i) {
    const uint32_t id = ids[i];
    if (id >= limit || (header_.width == 2 && id > 0xFFFF))
      throw user_error(path_.string(), ": id ", id, " at element ", count_ + i, " does not fit (limit ",
                       header_.width == 2 ? std::min<uint64_t>(limit, 65536) : limit, ")");
    if (header_.width == 2) {
      buffer_.push_back(static_cast<uint8_t>(id));
      buffer_.push_back(static_cast<uint8_t>(id >> 8));
    } else {
      uint8_t bytes[4];
      put_u32(bytes, id);
      buffer_.insert(buffer_.end(), bytes, bytes + 4);
    }
    if (buffer_.size() >= (1 << 20)) flush_buffer();
  }
  count_ += n;
}

void TokenShardWriter::flush_buffer() {
  write_all(fd_, buffer_.data(), buffer_.size(), file_->staging());
  buffer_.clear();
}

void TokenShardWriter::finish() {
  if (finished_) return;
  flush_buffer();
  header_.count = count_;
  if (header_.row_length != 0 && count_ % header_.row_length != 0)
    throw internal_error(path_.string(), ": ", count_, " elements are not whole rows of ", header_.row_length);
  const auto bytes = encode_shard_header(header_);
  if (::pwrite(fd_, bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(bytes.size()))
    throw user_error("cannot write ", file_->staging().string(), ": ", errno_text());
  if (::close(fd_) != 0) {
    fd_ = -1;
    throw user_error("cannot write ", file_->staging().string(), ": ", errno_text());
  }
  fd_ = -1;
  file_->commit();  // fsync, rename into place, fsync the directory
  finished_ = true;
}

// ---- reader -----------------------------------------------------------------------------------

struct TokenShard::Mapping {
  void* base = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (base) ::munmap(base, size);
  }
};

TokenShard TokenShard::open(const std::filesystem::path& path) {
  const std::string where = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw user_error("cannot open token shard ", where, ": ", errno_text());
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd);
    throw user_error("cannot read token shard ", where, ": not a regular file");
  }
  const auto file_size = static_cast<uint64_t>(info.st_size);
  uint8_t head[kTokenShardHeaderBytes] = {};
  const ssize_t got = file_size == 0 ? 0 : ::pread(fd, head, sizeof(head), 0);
  if (got < 0) {
    ::close(fd);
    throw user_error("cannot read token shard ", where, ": ", errno_text());
  }
  TokenShardHeader header;
  try {
    header = decode_shard_header(head, static_cast<size_t>(got), where);
  } catch (...) {
    ::close(fd);
    throw;
  }
  const uint64_t expected = kTokenShardHeaderBytes + header.count * header.width;
  if (file_size != expected) {
    ::close(fd);
    if (file_size < expected)
      throw user_error(where, ": truncated token shard: header says ", header.count, " ids (", expected,
                       " bytes) but the file has ", file_size, " bytes");
    throw user_error(where, ": token shard has ", file_size - expected, " unexpected bytes after its ",
                     header.count, " ids");
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = file_size;
  mapping->base = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping->base == MAP_FAILED) {
    mapping->base = nullptr;
    throw user_error("cannot map token shard ", where, ": ", errno_text());
  }
  TokenShard shard;
  shard.path_ = path;
  shard.header_ = header;
  shard.body_ = static_cast<const uint8_t*>(mapping->base) + kTokenShardHeaderBytes;
  shard.mapping_ = std::move(mapping);
  return shard;
}

uint32_t TokenShard::at(int64_t index) const {
  if (index < 0 || index >= size()) throw internal_error("token index ", index, " outside [0, ", size(), ")");
  if (header_.width == 2) return reinterpret_cast<const uint16_t*>(body_)[index];
  return reinterpret_cast<const uint32_t*>(body_)[index];
}

void TokenShard::read(int64_t offset, int64_t length, uint32_t* out) const {
  if (offset < 0 || length < 0 || offset + length > size())
    throw internal_error("range [", offset, ", ", offset + length, ") outside shard of ", size());
  if (header_.width == 4) {
    std::memcpy(out, body_ + offset * 4, static_cast<size_t>(length) * 4);
    return;
  }
  const auto* ids = reinterpret_cast<const uint16_t*>(body_) + offset;
  for (int64_t i = 0; i < length; ++i) out[i] = ids[i];
}

at::Tensor TokenShard::slice(int64_t offset, int64_t length) const {
  if (offset < 0 || length < 0 || offset + length > size())
    throw user_error(path_.string(), ": range [", offset, ", ", offset + length, ") is outside its ", size(),
                     " ids");
  at::Tensor out = at::empty({length}, at::kLong);
  int64_t* data = out.data_ptr<int64_t>();
  if (header_.width == 2) {
    const auto* ids = reinterpret_cast<const uint16_t*>(body_) + offset;
    for (int64_t i = 0; i < length; ++i) data[i] = ids[i];
  } else {
    const auto* ids = reinterpret_cast<const uint32_t*>(body_) + offset;
    for (int64_t i = 0; i < length; ++i) data[i] = ids[i];
  }
  return out;
}

at::Tensor TokenShard::tensor() const {
  std::vector<int64_t> sizes = {size()};
  if (header_.row_length) sizes = {rows(), static_cast<int64_t>(header_.row_length)};
  auto keep_alive = mapping_;
  return at::from_blob(const_cast<uint8_t*>(body_), sizes, [keep_alive](void*) {},
                       at::TensorOptions().dtype(header_.width == 2 ? at::kUInt16 : at::kUInt32));
}

at::Tensor TokenShard::sample_windows(int64_t n, int64_t length, uint64_t seed) const {
  if (length <= 0 || length > size())
    throw user_error(path_.string(), ": cannot sample windows of ", length, " ids from a shard of ", size());
  // Our own draw (not std::uniform_int_distribution) so the offsets are the same on every
  // standard library.
  std::mt19937_64 rng(seed);
  const uint64_t choices = static_cast<uint64_t>(size() - length) + 1;
  at::Tensor out = at::empty({n, length}, at::kLong);
  for (int64_t row = 0; row < n; ++row) out[row].copy_(slice(static_cast<int64_t>(rng() % choices), length));
  return out;
}

}  // namespace prime::io

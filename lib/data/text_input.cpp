#include "data/text_input.h"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/error.h"

extern char** environ;

namespace prime::data {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

struct XzChild {
  int out = -1;  // its stdout
  int err = -1;  // its stderr (a line or two at most), read once it has exited
  pid_t pid = -1;
};

// Starts `xz args... -- path` with stdout and stderr on pipes.
XzChild spawn_xz(const std::vector<std::string>& args, const std::string& path) {
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0) throw user_error("cannot create a pipe for xz: ", std::strerror(errno));
  if (::pipe2(err, O_CLOEXEC) != 0) {
    ::close(out[0]), ::close(out[1]);
    throw user_error("cannot create a pipe for xz: ", std::strerror(errno));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err[1], STDERR_FILENO);
  std::vector<std::string> argv_text = {"xz"};
  argv_text.insert(argv_text.end(), args.begin(), args.end());
  argv_text.push_back("--");
  argv_text.push_back(path);
  std::vector<char*> argv;
  for (auto& arg : argv_text) argv.push_back(arg.data());
  argv.push_back(nullptr);
  XzChild child;
  const int status = ::posix_spawnp(&child.pid, "xz", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out[1]);
  ::close(err[1]);
  if (status != 0) {
    ::close(out[0]), ::close(err[0]);
    throw user_error("cannot run xz to decompress ", path, " (", std::strerror(status),
                     "; install xz-utils, or decompress it first with xz -dk)");
  }
  child.out = out[0];
  child.err = err[0];
  return child;
}

std::string read_all(int fd) {
  std::string text;
  char buffer[4096];
  ssize_t got;
  while ((got = ::read(fd, buffer, sizeof(buffer))) > 0 || (got < 0 && errno == EINTR))
    if (got > 0) text.append(buffer, static_cast<size_t>(got));
  return text;
}

int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

}  // namespace

TxtDocuments parse_txt_documents(const std::string& name) {
  if (name == "file") return TxtDocuments::kFile;
  if (name == "paragraph") return TxtDocuments::kParagraph;
  if (name == "line") return TxtDocuments::kLine;
  throw user_error("unknown --txt-documents '", name, "' (file, paragraph, line)");
}

bool is_xz(const std::string& path) { return ends_with(path, ".xz"); }

InputFormat input_format(const std::string& path) {
  const std::string base = is_xz(path) ? path.substr(0, path.size() - 3) : path;
  return ends_with(base, ".jsonl") || ends_with(base, ".json") ? InputFormat::kJsonl : InputFormat::kText;
}

// ---- ByteStream -------------------------------------------------------------------------------

ByteStream::ByteStream(const std::string& path) : path_(path) {
  if (::access(path.c_str(), R_OK) != 0) throw user_error("cannot read ", path, ": ", std::strerror(errno));
  if (is_xz(path)) {
    const XzChild child = spawn_xz({"-dc"}, path);
    child_ = child.pid;
    child_err_ = child.err;
    file_ = ::fdopen(child.out, "rb");
    if (!file_) ::close(child.out);
  } else {
    file_ = std::fopen(path.c_str(), "rb");
  }
  if (!file_) throw user_error("cannot open ", path, ": ", std::strerror(errno));
}

ByteStream::~ByteStream() {
  if (file_) std::fclose(file_);
  if (child_ > 0) {
    ::kill(child_, SIGTERM);
    wait_child(child_);
  }
  if (child_err_ >= 0) ::close(child_err_);
}

size_t ByteStream::read(char* out, size_t size) {
  size_t total = 0;
  if (pending_pos_ < pending_.size()) {
    total = std::min(size, pending_.size() - pending_pos_);
    std::memcpy(out, pending_.data() + pending_pos_, total);
    pending_pos_ += total;
    if (total == size) {
      consumed_ += total;
      return total;
    }
  }
  total += read_raw(out + total, size - total);
  consumed_ += total;
  return total;
}

size_t ByteStream::read_raw(char* out, size_t size) {
  if (eof_ || size == 0) return 0;
  const size_t got = std::fread(out, 1, size, file_);
  if (got < size) {
    if (std::ferror(file_)) throw user_error("cannot read ", path_, ": ", std::strerror(errno));
    eof_ = true;
  }
  return got;
}

bool ByteStream::next_line(std::string& line) {
  line.clear();
  while (true) {
    const char* begin = pending_.data() + pending_pos_;
    const size_t available = pending_.size() - pending_pos_;
    if (const void* newline = std::memchr(begin, '\n', available)) {
      const size_t length = static_cast<const char*>(newline) - begin;
      line.append(begin, length);
      pending_pos_ += length + 1;
      consumed_ += line.size() + 1;
      return true;
    }
    line.append(begin, available);
    pending_.clear();
    pending_pos_ = 0;
    if (!eof_) {
      pending_.resize(1 << 16);
      pending_.resize(read_raw(pending_.data(), pending_.size()));
    }
    if (pending_.empty()) {
      consumed_ += line.size();
      return !line.empty();
    }
  }
}

void ByteStream::close() {
  if (file_) std::fclose(file_);
  file_ = nullptr;
  if (child_ > 0) {
    const int status = wait_child(child_);
    child_ = -1;
    std::string message = read_all(child_err_);
    ::close(child_err_);
    child_err_ = -1;
    while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      throw user_error("xz -dc ", path_, " failed (", message.empty() ? "exit " + std::to_string(WEXITSTATUS(status)) : message,
                       "): the file is corrupt, truncated or not xz");
  }
}

uint64_t uncompressed_size(const std::string& path) {
  if (!is_xz(path)) {
    std::FILE* file = std::fopen(path.c_str(), "rb");
    if (!file) return 0;
    std::fseek(file, 0, SEEK_END);
    const long size = std::ftell(file);
    std::fclose(file);
    return size > 0 ? static_cast<uint64_t>(size) : 0;
  }
  try {
    const XzChild child = spawn_xz({"--robot", "--list"}, path);
    const std::string listing = read_all(child.out);
    ::close(child.out);
    wait_child(child.pid);
    ::close(child.err);
    // "totals <streams> <blocks> <compressed> <uncompressed> ..."
    std::istringstream lines(listing);
    std::string line;
    while (std::getline(lines, line)) {
      if (line.rfind("totals\t", 0) != 0) continue;
      std::istringstream fields(line);
      std::string word;
      uint64_t streams, blocks, compressed, uncompressed = 0;
      fields >> word >> streams >> blocks >> compressed >> uncompressed;
      return uncompressed;
    }
  } catch (const UserError&) {
  }
  return 0;
}

// ---- documents --------------------------------------------------------------------------------

namespace {

bool is_blank(const std::string& line) {
  return line.find_first_not_of(" \t\r") == std::string::npos;
}

using DocumentCallback = std::function<void(std::string&&, uint64_t)>;

void read_jsonl(ByteStream& stream, const std::string& path, const std::string& field,
                const DocumentCallback& on_document) {
  std::string line;
  for (int64_t line_number = 1; stream.next_line(line); ++line_number) {
    if (is_blank(line)) continue;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw user_error(path, ":", line_number, ": invalid JSON (", e.what(), ")");
    }
    if (!record.is_object()) throw user_error(path, ":", line_number, ": expected a JSON object per line");
    auto found = record.find(field);
    if (found == record.end())
      throw user_error(path, ":", line_number, ": no \"", field, "\" field (choose another with --text-field)");
    if (!found->is_string()) throw user_error(path, ":", line_number, ": field \"", field, "\" is not a string");
    std::string text = found->get<std::string>();
    if (!text.empty()) on_document(std::move(text), stream.consumed());
  }
}

}  // namespace

void read_documents(const std::string& path, const DocumentOptions& options, const DocumentCallback& on_document) {
  ByteStream stream(path);
  if (input_format(path) == InputFormat::kJsonl) {
    read_jsonl(stream, path, options.text_field, on_document);
  } else if (options.txt_documents == TxtDocuments::kFile) {
    std::string text;
    std::vector<char> buffer(1 << 20);
    while (size_t got = stream.read(buffer.data(), buffer.size())) text.append(buffer.data(), got);
    if (!text.empty()) on_document(std::move(text), stream.consumed());
  } else {
    const bool by_paragraph = options.txt_documents == TxtDocuments::kParagraph;
    std::string line, paragraph;
    bool in_paragraph = false;
    while (stream.next_line(line)) {
      if (is_blank(line)) {
        if (in_paragraph) on_document(std::move(paragraph), stream.consumed());
        paragraph.clear();
        in_paragraph = false;
        continue;
      }
      if (!by_paragraph) {
        on_document(std::move(line), stream.consumed());
        line = std::string();
        continue;
      }
      if (in_paragraph) paragraph += '\n';
      paragraph += line;
      in_paragraph = true;
    }
    if (in_paragraph) on_document(std::move(paragraph), stream.consumed());
  }
  stream.close();
}

}  // namespace prime::data

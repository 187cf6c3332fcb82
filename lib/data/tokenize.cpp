#include "data/tokenize.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include <sys/stat.h>
#include <unistd.h>

#include "data/progress.h"
#include "data/token_shard.h"
#include "util/cli.h"
#include "util/error.h"

namespace prime::data {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

struct Batch {
  uint64_t seq = 0;
  size_t file = 0;
  uint64_t consumed = 0;  // bytes of the file read once this batch was cut (progress)
  std::vector<std::string> documents;
};

struct Encoded {
  size_t file = 0;
  uint64_t consumed = 0;
  std::vector<uint32_t> ids;
  uint64_t bytes = 0, documents = 0;
};

// Reader -> workers -> in-order writer. All shared state sits under one mutex: batches are ~1 MB
// of text, so the lock is taken a few times per second per thread at most.
class Pipeline {
 public:
  Pipeline(const io::Tokenizer& tokenizer, const TokenizeOptions& options, uint32_t eos, size_t capacity)
      : tokenizer_(tokenizer), options_(options), eos_(eos), capacity_(capacity) {}

  ~Pipeline() { stop_and_join(); }

  void start(int workers) {
    threads_.emplace_back([this] { guarded([this] { read_all(); }); });
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { guarded([this] { encode_loop(); }); });
  }

  // Next encoded batch in input order; false when everything has been handed out. Rethrows the
  // first error of any thread.
  bool next(Encoded& out) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return error_ || done_.count(written_) || (reader_done_ && written_ == read_); });
    if (error_) std::rethrow_exception(error_);
    auto found = done_.find(written_);
    if (found == done_.end()) return false;
    out = std::move(found->second);
    done_.erase(found);
    ++written_;
    cv_.notify_all();
    return true;
  }

  void stop_and_join() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& thread : threads_)
      if (thread.joinable()) thread.join();
    threads_.clear();
  }

 private:
  struct Stopped {};

  template <typename Body>
  void guarded(Body body) {
    try {
      body();
    } catch (const Stopped&) {
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      stop_ = true;
      cv_.notify_all();
    }
  }

  void push(Batch&& batch) {
    std::unique_lock<std::mutex> lock(mutex_);
    // Bound what is read but not yet written: memory stays ~capacity batches.
    cv_.wait(lock, [&] { return stop_ || read_ - written_ < capacity_; });
    if (stop_) throw Stopped{};
    batch.seq = read_++;
    queue_.push_back(std::move(batch));
    cv_.notify_all();
  }

  void read_all() {
    for (size_t file = 0; file < options_.inputs.size(); ++file) {
      Batch batch;
      batch.file = file;
      size_t batch_bytes = 0;
      read_documents(options_.inputs[file], options_.documents, [&](std::string&& text, uint64_t consumed) {
        batch_bytes += text.size();
        batch.documents.push_back(std::move(text));
        batch.consumed = consumed;
        if (batch_bytes >= options_.batch_bytes) {
          push(std::move(batch));
          batch = Batch();
          batch.file = file;
          batch_bytes = 0;
        }
      });
      // Always one (possibly empty) last batch per file, so progress sees the file complete.
      batch.consumed = ~uint64_t{0};
      push(std::move(batch));
    }
    std::lock_guard<std::mutex> lock(mutex_);
    reader_done_ = true;
    cv_.notify_all();
  }

  void encode_loop() {
    while (true) {
      Batch batch;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty() || reader_done_; });
        if (stop_ || queue_.empty()) return;
        batch = std::move(queue_.front());
        queue_.pop_front();
      }
      Encoded encoded;
      encoded.file = batch.file;
      encoded.consumed = batch.consumed;
      for (const std::string& text : batch.documents) {
        const auto ids = tokenizer_.encode(text, options_.parse_special);
        encoded.ids.insert(encoded.ids.end(), ids.begin(), ids.end());
        encoded.ids.push_back(eos_);
        encoded.bytes += text.size();
        ++encoded.documents;
      }
      std::lock_guard<std::mutex> lock(mutex_);
      done_[batch.seq] = std::move(encoded);
      cv_.notify_all();
    }
  }

  const io::Tokenizer& tokenizer_;
  const TokenizeOptions& options_;
  const uint32_t eos_;
  const size_t capacity_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Batch> queue_;
  std::map<uint64_t, Encoded> done_;
  uint64_t read_ = 0, written_ = 0;
  bool reader_done_ = false, stop_ = false;
  std::exception_ptr error_;
};

void check_readable(const std::string& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) throw user_error("cannot read input ", path, ": no such file");
  if (!S_ISREG(info.st_mode)) throw user_error("cannot read input ", path, ": not a regular file");
  if (::access(path.c_str(), R_OK) != 0) throw user_error("cannot read input ", path, ": permission denied");
}

}  // namespace

std::string shard_name_for(const std::string& input) {
  std::string name = std::filesystem::path(input).filename().string();
  if (ends_with(name, ".xz")) name.resize(name.size() - 3);
  for (const char* suffix : {".txt", ".jsonl", ".json"})
    if (ends_with(name, suffix)) {
      name.resize(name.size() - std::string(suffix).size());
      break;
    }
  return name + ".tok";
}

TokenizeReport tokenize_files(const io::Tokenizer& tokenizer, const TokenizeOptions& options) {
  if (options.inputs.empty()) throw user_error("no input files");
  if (options.out.empty() == options.out_dir.empty()) throw user_error("give exactly one of --out FILE or --out-dir DIR");
  for (const auto& input : options.inputs) check_readable(input);
  const auto eos = options.eos_id ? options.eos_id : std::optional<int64_t>(tokenizer.eos_id());
  if (!eos || *eos < 0) throw user_error("the tokenizer has no end-of-text token; give --eos-id");
  if (*eos >= (int64_t{1} << 32) - 1) throw user_error("--eos-id ", *eos, " does not fit 32 bits");

  io::TokenShardHeader header;
  header.vocab_size = static_cast<uint32_t>(std::max<int64_t>(tokenizer.vocab_size(), *eos + 1));
  header.width = io::width_for_vocab(header.vocab_size);
  header.eos_id = static_cast<uint32_t>(*eos);

  // An --out-dir this call creates is removed again when it fails (if still empty: the writers,
  // declared after it, have removed their temporary files by then).
  struct CreatedDirectory {
    std::filesystem::path path;
    bool keep = false;
    ~CreatedDirectory() {
      std::error_code ignored;
      if (!path.empty() && !keep) std::filesystem::remove(path, ignored);
    }
  } created_dir;
  // Outputs first: a collision or an unwritable place fails before any work.
  std::vector<std::unique_ptr<io::TokenShardWriter>> writers;
  TokenizeReport report;
  if (!options.out.empty()) {
    report.outputs.push_back(options.out);
  } else {
    struct stat info {};
    const bool exists = ::stat(options.out_dir.c_str(), &info) == 0;
    if (exists && !S_ISDIR(info.st_mode)) throw user_error("--out-dir ", options.out_dir, " exists and is not a directory");
    std::set<std::string> names;
    for (const auto& input : options.inputs) {
      const std::string name = shard_name_for(input);
      if (!names.insert(name).second) throw user_error("two inputs would both be written to ", name, " in ", options.out_dir);
      report.outputs.push_back((std::filesystem::path(options.out_dir) / name).string());
    }
    std::error_code error;
    std::filesystem::create_directories(options.out_dir, error);
    if (error) throw user_error("cannot create --out-dir ", options.out_dir, ": ", error.message());
    if (!exists) created_dir.path = options.out_dir;
  }
  for (const auto& output : report.outputs) check_output_file(output, options.out.empty() ? "--out-dir" : "--out", options.force);
  for (const auto& output : report.outputs) {
    writers.push_back(std::make_unique<io::TokenShardWriter>(output, header, options.force,
                                                             options.out.empty() ? "--out-dir" : "--out"));
    for (const auto& stale : writers.back()->removed_stale()) report.removed_stale.push_back(stale.string());
  }

  std::vector<uint64_t> sizes;
  uint64_t total = 0;
  for (const auto& input : options.inputs) total += sizes.emplace_back(uncompressed_size(input));
  std::unique_ptr<ProgressMeter> meter;
  if (options.progress) meter = std::make_unique<ProgressMeter>("tokenize", total, *options.progress, options.progress_tty);

  const auto start = std::chrono::steady_clock::now();
  const int workers = options.threads > 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  Pipeline pipeline(tokenizer, options, static_cast<uint32_t>(*eos), static_cast<size_t>(4 * workers + 4));
  pipeline.start(workers);
  Encoded encoded;
  uint64_t finished_files_bytes = 0;
  size_t current_file = 0;
  while (pipeline.next(encoded)) {
    io::TokenShardWriter& writer = *writers[options.out.empty() ? encoded.file : 0];
    writer.append(encoded.ids);
    writer.header().source_bytes += encoded.bytes;
    writer.header().documents += encoded.documents;
    report.documents += static_cast<int64_t>(encoded.documents);
    report.tokens += static_cast<int64_t>(encoded.ids.size());
    report.bytes += static_cast<int64_t>(encoded.bytes);
    while (current_file < encoded.file) finished_files_bytes += sizes[current_file++];
    if (encoded.consumed == ~uint64_t{0}) {
      finished_files_bytes += sizes[current_file++];
      if (meter) meter->update(finished_files_bytes);
    } else if (meter) {
      meter->update(finished_files_bytes + std::min(encoded.consumed, sizes[current_file]));
    }
  }
  pipeline.stop_and_join();
  for (auto& writer : writers) writer->finish();
  created_dir.keep = true;
  report.files = static_cast<int64_t>(options.inputs.size());
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (meter) meter->finish();
  return report;
}

}  // namespace prime::data

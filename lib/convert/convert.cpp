#include "convert/convert.h"

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstdio>
#include <future>
#include <map>
#include <fstream>
#include <sstream>

#include "convert/model_card.h"
#include "io/atomic_dir.h"
#include "io/dtype.h"
#include "io/safetensors_writer.h"
#include "util/error.h"

namespace prime::convert {
namespace {

using Clock = std::chrono::steady_clock;

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) throw user_error("cannot write ", path.string());
}

// Byte-for-byte, following symlinks (the HF cache links snapshot files to blobs).
void copy_bytes(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::ifstream in(from, std::ios::binary);
  if (!in) throw user_error("cannot read ", from.string());
  std::ofstream out(to, std::ios::binary | std::ios::trunc);
  out << in.rdbuf();
  out.close();
  if (!out) throw user_error("cannot write ", to.string());
}

// Computed targets read their sources with pread (see SourceWeights::read): nothing mapped.
class ReadingSource : public SourceReader {
 public:
  explicit ReadingSource(const SourceWeights& weights) : weights_(weights) {}
  at::Tensor tensor(const std::string& name) const override { return weights_.read(name); }

 private:
  const SourceWeights& weights_;
};

// Makes the large computed targets (gates, Mamba-2 in_proj) one ahead on a worker thread, in
// declaration order, which is the order the writer asks for them (one dtype, declaration order
// within a shard): the arithmetic then overlaps the writer's copies, which are kernel work.
// Small computed targets are made when asked. At most one made tensor waits at a time.
class Prefetcher {
 public:
  static constexpr uint64_t kLargeBytes = 1u << 20;

  Prefetcher(const std::vector<TargetTensor>& targets, const SourceReader& reader) : reader_(reader) {
    for (const auto& target : targets)
      if (!target.copy && target.nbytes() >= kLargeBytes) {
        position_[&target] = large_.size();
        large_.push_back(&target);
      }
  }

  at::Tensor make(const TargetTensor& target) {
    auto found = position_.find(&target);
    if (found == position_.end()) return target.make(reader_);
    const size_t position = found->second;
    at::Tensor made = ahead_position_ == position ? ahead_.get() : target.make(reader_);
    if (ahead_.valid()) ahead_.wait();  // a guess that missed: let it finish before the next
    ahead_position_ = position + 1;
    if (ahead_position_ < large_.size()) {
      const TargetTensor* next = large_[ahead_position_];
      ahead_ = std::async(std::launch::async, [next, this] { return next->make(reader_); });
    }
    return made;
  }

 private:
  const SourceReader& reader_;
  std::vector<const TargetTensor*> large_;
  std::map<const TargetTensor*, size_t> position_;
  std::future<at::Tensor> ahead_;
  size_t ahead_position_ = SIZE_MAX;
};

std::string format_seconds(double seconds) {
  char text[32];
  if (seconds >= 3600)
    std::snprintf(text, sizeof text, "%dh%02dm", static_cast<int>(seconds / 3600), static_cast<int>(seconds / 60) % 60);
  else if (seconds >= 60)
    std::snprintf(text, sizeof text, "%dm%02ds", static_cast<int>(seconds / 60), static_cast<int>(seconds) % 60);
  else
    std::snprintf(text, sizeof text, "%.1fs", seconds);
  return text;
}

// --out equal to the source, or a directory holding it, would delete the source on --force.
void refuse_output_over_source(const io::Source& source, const std::filesystem::path& out) {
  if (source.dir.empty()) return;
  std::error_code error;
  const auto source_dir = std::filesystem::weakly_canonical(source.dir, error);
  const auto out_dir = std::filesystem::weakly_canonical(out, error);
  if (error) return;
  auto source_part = source_dir.begin();
  for (auto part = out_dir.begin(); part != out_dir.end(); ++part, ++source_part)
    if (source_part == source_dir.end() || *source_part != *part) return;
  throw user_error("--out ", out.string(), " is the source ", source.dir.string(),
                   source_dir == out_dir ? "" : " or holds it", ": refusing to write over the source");
}

}  // namespace

ProgressMeter::ProgressMeter(std::ostream& out, ProgressStyle style, std::string what)
    : out_(out), style_(style), what_(std::move(what)), start_(Clock::now()), last_(start_) {}

std::string ProgressMeter::line(size_t items_done, size_t items_total, uint64_t bytes_done, uint64_t bytes_total) const {
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  const double rate = elapsed > 0 ? bytes_done / elapsed : 0;
  std::ostringstream text;
  text << what_ << " " << items_done << "/" << items_total << " tensors, " << format_bytes(bytes_done) << " / "
       << format_bytes(bytes_total) << ", " << format_bytes(static_cast<uint64_t>(rate)) << "/s";
  if (items_done < items_total && rate > 0)
    text << ", ETA " << format_seconds((bytes_total - bytes_done) / rate);
  else
    text << ", " << format_seconds(elapsed);
  return text.str();
}

void ProgressMeter::update(size_t items_done, size_t items_total, uint64_t bytes_done, uint64_t bytes_total) {
  if (style_ == ProgressStyle::Quiet) return;
  const auto now = Clock::now();
  const bool done = items_done == items_total;
  const double since = std::chrono::duration<double>(now - last_).count();
  // A TTY line is cheap to redraw; plain lines go to logs, so keep them sparse.
  if (!done && since < (style_ == ProgressStyle::Tty ? 0.2 : 10.0)) return;
  last_ = now;
  last_line_ = line(items_done, items_total, bytes_done, bytes_total);
  if (style_ == ProgressStyle::Tty)
    out_ << "\r\033[K" << last_line_ << std::flush;
  else
    out_ << last_line_ << "\n" << std::flush;
  printed_ = true;
}

void ProgressMeter::finish() {
  if (style_ == ProgressStyle::Tty && printed_) out_ << "\n" << std::flush;
}

WriteResult write_hybrid(const ConversionPlan& plan, const ConvertOptions& options, std::ostream& log,
                         ProgressStyle style) {
  if (options.out.empty()) throw user_error("--out is required (or use --dry-run)");
  const auto start = Clock::now();
  io::AtomicDirectory dir(options.out, options.force);
  io::print_removed_stale(dir.removed_stale(), log);
  const std::filesystem::path& staging = dir.staging();
  const SourceWeights& weights = *plan.weights;
  WriteResult result;
  result.dir = dir.final_path();
  try {
    write_text(staging / "config.json", plan.config.dump(2) + "\n");
    write_text(staging / "prime.json", provenance_json(plan, options.command_line).dump(2) + "\n");
    write_text(staging / "README.md", model_card(plan, options.command_line));
    if (!plan.source.dir.empty())
      for (const auto& name : carried_files())
        if (std::filesystem::exists(plan.source.dir / name)) copy_bytes(plan.source.dir / name, staging / name);

    io::WriterOptions writer_options;
    writer_options.max_shard_bytes = plan.max_shard_bytes;
    writer_options.metadata = shard_metadata(plan, options.command_line);
    io::SafetensorsWriter writer(staging, writer_options);
    const ReadingSource reader(weights);
    Prefetcher prefetcher(plan.targets, reader);
    for (const TargetTensor& target : plan.targets) {
      const io::DType dtype = io::from_scalar_type(target.dtype);
      const auto location = target.copy ? weights.file_location(target.sources[0]) : std::nullopt;
      if (location && weights.dtype(target.sources[0]) == target.dtype) {
        // Unchanged bytes: file to file inside the kernel, as cp copies.
        writer.add_file_copy(target.name, dtype, target.shape, location->path, location->offset);
      } else if (target.copy) {
        writer.add_stream(target.name, dtype, target.shape, [&weights, &target](const io::SafetensorsWriter::ByteSink& sink) {
          weights.stream(target.sources[0], target.dtype, sink);
        });
      } else {
        writer.add(target.name, dtype, target.shape, [&prefetcher, &target] { return prefetcher.make(target); });
      }
    }
    ProgressMeter meter(log, style, "writing");
    writer.write([&](const io::WriteProgress& progress) {
      meter.update(progress.tensors_done, progress.tensors_total, progress.bytes_done, progress.bytes_total);
    });
    meter.finish();
    result.files = writer.file_names();
    result.tensors = plan.targets.size();
    result.bytes = writer.total_bytes();
    dir.commit();
  } catch (const UserError& error) {
    // After the rename the output is complete: only the clean-up after it failed.
    if (dir.committed()) throw user_error(error.what(), "\n", dir.final_path().string(), " was written completely");
    throw user_error(error.what(), "\nnothing was written to ", dir.final_path().string(), ": the partial output in ",
                     staging.string(), " has been removed");
  }
  for (const char* name : {"config.json", "prime.json", "README.md"}) result.files.push_back(name);
  if (!plan.source.dir.empty())
    for (const auto& name : carried_files())
      if (std::filesystem::exists(result.dir / name)) result.files.push_back(name);
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

nlohmann::json plan_json(const ConversionPlan& plan, const std::string& command_line, bool every_tensor) {
  nlohmann::json json = provenance_json(plan, command_line);
  json["config"] = plan.config;
  json["read_bytes"] = plan.read_bytes;
  json["peak_bytes_estimate"] = plan.peak_bytes_estimate;
  json["dropped"] = plan.dropped;
  if (every_tensor) {
    nlohmann::json tensors = nlohmann::json::array();
    for (const TargetTensor& target : plan.targets)
      tensors.push_back({{"name", target.name}, {"dtype", dtype_short_name(target.dtype)}, {"shape", target.shape},
                         {"how", target.how}, {"sources", target.sources}, {"bytes", target.nbytes()}});
    json["tensors"] = tensors;
  }
  return json;
}

void run_convert(const ConvertOptions& options, bool dry_run, bool every_tensor, ProgressStyle style,
                 std::ostream& out, bool json) {
  if (json && !dry_run) throw user_error("--json prints the plan: use it with --dry-run");
  if (!dry_run && options.out.empty()) throw user_error("--out is required (or use --dry-run)");
  // The arithmetic here (gates, random init) is small and memory-bound; idle OpenMP workers
  // spinning between those steps cost the copies more CPU than extra threads save.
  at::set_num_threads(1);
  const ConversionPlan plan = plan_conversion(options);
  if (dry_run && json) {
    out << plan_json(plan, options.command_line, every_tensor).dump(2) << "\n";
    return;
  }
  if (dry_run) {
    out << "prime-convert plan (dry run: nothing is written)\n" << plan.summary(every_tensor);
    return;
  }
  refuse_output_over_source(plan.source, options.out);
  // Refuse an existing output before the plan scrolls by.
  std::error_code error;
  if (!options.force && std::filesystem::exists(std::filesystem::symlink_status(options.out, error)))
    throw user_error("output ", options.out.string(), " already exists (choose another path, or --force to replace it)");
  out << plan.summary(every_tensor) << "\n" << std::flush;
  const WriteResult result = write_hybrid(plan, options, out, style);
  out << "wrote " << result.dir.string() << ": " << result.tensors << " tensors, " << format_bytes(result.bytes)
      << " in " << format_seconds(result.seconds) << " ("
      << format_bytes(static_cast<uint64_t>(result.seconds > 0 ? result.bytes / result.seconds : 0)) << "/s)\n";
}

}  // namespace prime::convert

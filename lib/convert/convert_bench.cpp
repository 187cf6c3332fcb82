#include "convert/convert_bench.h"

#include <ATen/Parallel.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "convert/convert.h"
#include "io/atomic_dir.h"
#include "io/safetensors_writer.h"
#include "io/source.h"
#include "io/synthetic.h"
#include "util/error.h"

extern char** environ;

namespace prime::convert {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::vector<fs::path> regular_files(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_regular_file()) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

uint64_t directory_bytes(const fs::path& dir) {
  uint64_t total = 0;
  for (const auto& file : regular_files(dir)) total += fs::file_size(file);
  return total;
}

// fsync each file (its data must be on disk before the clock stops), then the directory.
void sync_directory(const fs::path& dir) {
  for (const auto& file : regular_files(dir)) {
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::fsync(fd) != 0) throw user_error("cannot sync ", file.string(), ": ", std::strerror(errno));
    ::close(fd);
  }
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Commits the filesystem's journal (and with it the discards of deleted files) now.
void sync_filesystem(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::syncfs(fd);
  ::close(fd);
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n == 0 ? 0 : n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

std::string seconds_list(const std::vector<double>& values) {
  std::string text;
  char item[32];
  for (size_t i = 0; i < values.size(); ++i) {
    std::snprintf(item, sizeof item, "%s%.1f", i ? ", " : "", values[i]);
    text += item;
  }
  return text;
}

// Drops the files' clean pages from the page cache, so both timed runs read from disk.
void evict(const fs::path& dir) {
  for (const auto& file : regular_files(dir)) {
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ::fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

void run_program(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (const int error = posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ); error != 0)
    throw user_error("cannot run ", args[0], ": ", std::strerror(error));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) throw user_error("waiting for ", args[0], ": ", std::strerror(errno));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw user_error(args[0], " failed (status ", status, ")");
}

std::string cache_name(const std::string& spec) {
  std::string name = "source-";
  for (char c : spec.substr(std::string("synthetic:").size()))
    name += std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' ? c : '_';
  return name + "-bf16";
}

// Writes the synthetic source as a bf16 checkpoint directory (config.json + 5 GB shards).
void materialise(const io::Source& source, const fs::path& dir, std::ostream& log) {
  io::AtomicDirectory staging(dir, true);
  nlohmann::json config = source.config.raw;
  config["torch_dtype"] = "bfloat16";
  {
    std::ofstream out(staging.staging() / "config.json");
    out << config.dump(2) << "\n";
  }
  io::SafetensorsWriter writer(staging.staging(), {});
  for (const auto& spec : io::transformer_tensor_specs(source.config)) {
    const uint64_t seed = source.seed;
    writer.add(spec.name, io::DType::BF16, spec.shape, [spec, seed] {
      return io::synthetic_tensor(spec.name, spec.shape, seed, at::kBFloat16);
    });
  }
  ProgressMeter meter(log, ProgressStyle::Lines, "materialising " + source.spec + ":");
  writer.write([&](const io::WriteProgress& p) { meter.update(p.tensors_done, p.tensors_total, p.bytes_done, p.bytes_total); });
  {
    std::ofstream marker(staging.staging() / "prime-bench-source.json");
    marker << nlohmann::json{{"spec", source.spec}, {"dtype", "bf16"}}.dump() << "\n";
  }
  staging.commit();
}

bool is_cached(const fs::path& dir, const std::string& spec) {
  std::ifstream marker(dir / "prime-bench-source.json");
  if (!marker) return false;
  try {
    return nlohmann::json::parse(marker).value("spec", "") == spec;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

uint64_t process_memory_bytes(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.compare(0, field.size() + 1, field + ":") == 0) {
      std::istringstream values(line.substr(field.size() + 1));
      uint64_t kilobytes = 0;
      values >> kilobytes;
      return kilobytes * 1024;
    }
  return 0;
}

bool reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.close();
  return static_cast<bool>(clear);
}

ConvertBenchResult run_convert_bench(const ConvertBenchOptions& options, std::ostream& log) {
  if (options.source.rfind("synthetic:", 0) != 0)
    throw user_error("prime-bench convert needs a synthetic:ALIAS source (it writes it to disk once), got ",
                     options.source);
  const io::Source source = io::resolve_source(options.source);
  std::error_code error;
  fs::create_directories(options.work_dir, error);
  if (!fs::is_directory(options.work_dir)) throw user_error("cannot create work directory ", options.work_dir.string());

  ConvertBenchResult result;
  result.source = options.source;
  result.cpus = std::thread::hardware_concurrency();
  result.source_dir = options.work_dir / cache_name(options.source);
  result.cached = is_cached(result.source_dir, options.source);
  if (!result.cached) {
    const auto start = Clock::now();
    materialise(source, result.source_dir, log);
    result.materialise_seconds = since(start);
  }
  result.source_files = regular_files(result.source_dir).size();
  result.source_bytes = directory_bytes(result.source_dir);

  // The anchor: cp of the same files, durable on disk before the clock stops. Rounds alternate
  // cp and conversion; after each, the output is deleted and the filesystem synced, so that the
  // next run does not pay for the previous one's writeback or discards.
  const fs::path copy_dir = options.work_dir / "copy-out", convert_dir = options.work_dir / "convert-out";
  auto clear = [&](const fs::path& dir) {
    io::remove_tree(dir);
    sync_filesystem(options.work_dir);
  };
  clear(copy_dir);
  clear(convert_dir);
  result.evicted = options.evict;
  ConvertOptions convert;
  convert.source = result.source_dir.string();
  convert.layers.layer = options.layer;
  convert.layers.ratio = options.ratio;
  convert.init = options.init;
  convert.out = convert_dir;
  convert.command_line = "prime-convert --source " + convert.source + " --layer " + options.layer + " --ratio " +
                         options.ratio + " --init " + options.init + " --out " + convert_dir.string();
  at::set_num_threads(1);  // as prime-convert runs (convert.cpp)
  result.rss_before_bytes = process_memory_bytes("VmRSS");
  result.peak_rss_how = reset_peak_rss() ? "VmHWM, reset when the conversions started"
                                         : "VmHWM of the whole process (could not reset it)";
  for (int round = 0; round < std::max(options.rounds, 1); ++round) {
    const bool last = round + 1 >= options.rounds;
    if (options.evict) evict(result.source_dir);
    log << "round " << round + 1 << ": cp -r of " << format_bytes(result.source_bytes) << " ...\n" << std::flush;
    auto start = Clock::now();
    run_program({"cp", "-r", "--reflink=never", result.source_dir.string(), copy_dir.string()});
    sync_directory(copy_dir);
    result.copy_seconds.push_back(since(start));
    if (!(last && options.keep_outputs)) clear(copy_dir);

    // The conversion, in this process so its memory is measured here.
    if (options.evict) evict(result.source_dir);
    log << "round " << round + 1 << ": prime-convert ...\n" << std::flush;
    start = Clock::now();
    const ConversionPlan plan = plan_conversion(convert);
    write_hybrid(plan, convert, log, ProgressStyle::Quiet);
    result.convert_seconds.push_back(since(start));
    result.output_bytes = directory_bytes(convert_dir);
    if (!(last && options.keep_outputs)) clear(convert_dir);
  }
  result.peak_rss_bytes = process_memory_bytes("VmHWM");
  return result;
}

std::string format_convert_bench(const ConvertBenchResult& r, const ConvertBenchOptions& options) {
  char line[256];
  std::ostringstream out;
  out << "prime-bench convert: " << r.source << " -> " << options.layer << " " << options.ratio << " (init "
      << options.init << "), " << r.cpus << " CPU cores\n";
  out << "source   " << r.source_dir.string() << ": " << r.source_files << " files, " << format_bytes(r.source_bytes)
      << (r.cached ? " (cached)" : "") << "\n";
  if (!r.cached) {
    std::snprintf(line, sizeof line, "         materialised in %.1f s (bf16, once)\n", r.materialise_seconds);
    out << line;
  }
  out << "         " << r.copy_seconds.size() << (r.copy_seconds.size() == 1 ? " round" : " rounds")
      << " of cp then prime-convert; page cache: "
      << (r.evicted ? "source evicted before each run" : "left as it was") << "\n";
  const double copy = median(r.copy_seconds), convert = median(r.convert_seconds);
  const double copy_best = *std::min_element(r.copy_seconds.begin(), r.copy_seconds.end());
  const double convert_best = *std::min_element(r.convert_seconds.begin(), r.convert_seconds.end());
  std::snprintf(line, sizeof line, "%-30s %9s %12s %7s %7s   %s\n", "what", "median", "rate", "ratio", "best", "rounds (s)");
  out << line;
  std::snprintf(line, sizeof line, "%-30s %8.1fs %10s/s %7.2f %6.1fs   %s\n", "cp -r --reflink=never + fsync", copy,
                format_bytes(static_cast<uint64_t>(r.source_bytes / copy)).c_str(), 1.0, copy_best,
                seconds_list(r.copy_seconds).c_str());
  out << line;
  const double ratio = convert / copy;
  std::snprintf(line, sizeof line, "%-30s %8.1fs %10s/s %7.2f %6.1fs   %s\n", "prime-convert", convert,
                format_bytes(static_cast<uint64_t>(r.output_bytes / convert)).c_str(), ratio, convert_best,
                seconds_list(r.convert_seconds).c_str());
  out << line;
  std::snprintf(line, sizeof line, "ratio of medians %.2f, of best runs %.2f\n", ratio, convert_best / copy_best);
  out << line;
  out << "output   " << format_bytes(r.output_bytes) << " (tensors + config, prime.json, README.md)\n";
  out << "peak RSS of the conversions: " << format_bytes(r.peak_rss_bytes) << " (" << r.peak_rss_how << "; "
      << format_bytes(r.rss_before_bytes) << " resident before them)\n";
  const bool time_ok = ratio <= 1.2, rss_ok = r.peak_rss_bytes <= 1000000000ull;
  out << "targets: <= 1.2x copy time (medians) " << (time_ok ? "met" : "NOT met") << "; <= 1 GB peak RSS "
      << (rss_ok ? "met" : "NOT met") << "\n";
  return out.str();
}

}  // namespace prime::convert

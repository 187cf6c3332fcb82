#include "tokenizer/tokenizer_bench.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <iomanip>
#include <memory>
#include <thread>

#include "tokenizer/tokenizer_impl.h"
#include "util/error.h"

namespace prime::io {

std::string read_text_maybe_xz(const std::string& path) {
  const bool compressed = path.size() > 3 && path.compare(path.size() - 3, 3, ".xz") == 0;
  if (!compressed) return read_text_file(path, "text file");
  if (std::FILE* probe = std::fopen(path.c_str(), "rb")) std::fclose(probe);
  else throw user_error("cannot read text file ", path, ": no such file or not readable");
  std::string quoted = "'";
  for (char c : path) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  quoted += "'";
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> pipe(popen(("xz -dc " + quoted).c_str(), "r"), &pclose);
  if (!pipe) throw user_error("cannot run xz to decompress ", path);
  std::string text;
  char buffer[1 << 16];
  size_t got = 0;
  while ((got = std::fread(buffer, 1, sizeof buffer, pipe.get())) > 0) text.append(buffer, got);
  if (pclose(pipe.release()) != 0)
    throw user_error("xz -dc ", path, " failed (is xz-utils installed and the file intact?)");
  return text;
}

std::vector<std::string_view> split_into_chunks(std::string_view text, size_t chunk_bytes) {
  std::vector<std::string_view> chunks;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = std::min(text.size(), start + std::max<size_t>(chunk_bytes, 1));
    if (end < text.size()) {
      const size_t newline = text.find('\n', end);
      end = newline == std::string_view::npos ? text.size() : newline + 1;
    }
    chunks.push_back(text.substr(start, end - start));
    start = end;
  }
  return chunks;
}

std::vector<EncodePass> bench_encode(const Tokenizer& tokenizer,
                                     const std::vector<std::string_view>& chunks, int threads,
                                     int passes) {
  if (threads < 1) throw user_error("--threads must be at least 1");
  if (passes < 1) throw user_error("--repeat must be at least 1");
  int64_t bytes = 0;
  for (auto chunk : chunks) bytes += static_cast<int64_t>(chunk.size());
  std::vector<EncodePass> results;
  for (int pass = 0; pass < passes; ++pass) {
    std::atomic<size_t> next_chunk{0};
    std::atomic<int64_t> tokens{0};
    auto work = [&] {
      int64_t local = 0;
      for (size_t index = next_chunk++; index < chunks.size(); index = next_chunk++)
        local += static_cast<int64_t>(tokenizer.encode(chunks[index]).size());
      tokens += local;
    };
    const auto start = std::chrono::steady_clock::now();
    if (threads == 1) {
      work();
    } else {
      std::vector<std::thread> pool;
      for (int thread = 0; thread < threads; ++thread) pool.emplace_back(work);
      for (auto& thread : pool) thread.join();
    }
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    results.push_back(EncodePass{pass, threads, bytes, tokens.load(), elapsed.count()});
  }
  return results;
}

void print_encode_passes(const std::vector<EncodePass>& passes, std::ostream& out) {
  out << std::left << std::setw(6) << "pass" << std::right << std::setw(8) << "threads"
      << std::setw(12) << "MB" << std::setw(12) << "tokens" << std::setw(10) << "seconds"
      << std::setw(10) << "MB/s" << std::setw(14) << "tokens/s" << "\n";
  for (const EncodePass& pass : passes) {
    out << std::left << std::setw(6) << (pass.pass == 0 ? "cold" : std::to_string(pass.pass))
        << std::right << std::setw(8) << pass.threads << std::fixed << std::setprecision(2)
        << std::setw(12) << pass.bytes / 1e6 << std::setw(12) << pass.tokens
        << std::setprecision(3) << std::setw(10) << pass.seconds << std::setprecision(2)
        << std::setw(10) << pass.mb_per_s() << std::setprecision(0) << std::setw(14)
        << pass.tokens_per_s() << "\n";
  }
}

}  // namespace prime::io

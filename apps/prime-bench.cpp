// prime-bench: throughput measurements. One subcommand per thing measured.
#include <CLI/CLI.hpp>

#include <iostream>

#include "io/tokenizer.h"
#include "io/tokenizer_bench.h"
#include "util/error.h"

namespace {

struct TokenizerOptions {
  std::string tokenizer;
  std::string text;
  int threads = 1;
  int repeat = 3;
  size_t chunk_bytes = 64 * 1024;
};

void add_tokenizer_command(CLI::App& app, TokenizerOptions& options) {
  CLI::App* command = app.add_subcommand("tokenizer", "encode throughput (MB/s, tokens/s) of a tokenizer on a text file");
  command->add_option("--tokenizer", options.tokenizer,
                      "tokenizer.json, a directory holding one, or a *.tiktoken file (read as Qwen2)")
      ->required()->group("Inputs");
  command->add_option("--text", options.text, "text file to encode; FILE.xz is decompressed with xz")
      ->required()->group("Inputs");
  command->add_option("--threads", options.threads, "encoding threads (default 1)")->group("Measurement");
  command->add_option("--repeat", options.repeat, "passes over the text; the first runs with a cold word cache (default 3)")
      ->group("Measurement");
  command->add_option("--chunk-bytes", options.chunk_bytes, "text is encoded in chunks of about this size, cut at line ends (default 65536)")
      ->group("Measurement");
}

void run_tokenizer(const TokenizerOptions& options) {
  const prime::io::Tokenizer tokenizer = prime::io::Tokenizer::from_file(options.tokenizer);
  const std::string text = prime::io::read_text_maybe_xz(options.text);
  const auto chunks = prime::io::split_into_chunks(text, options.chunk_bytes);
  std::cout << "tokenizer " << options.tokenizer << " (vocab " << tokenizer.vocab_size() << ")\n"
            << "text      " << options.text << " (" << text.size() << " bytes, " << chunks.size()
            << " chunks)\n";
  prime::io::print_encode_passes(
      prime::io::bench_encode(tokenizer, chunks, options.threads, options.repeat), std::cout);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"prime-bench: throughput measurements"};
  app.require_subcommand(1);
  TokenizerOptions tokenizer_options;
  add_tokenizer_command(app, tokenizer_options);
  CLI11_PARSE(app, argc, argv);
  try {
    if (app.got_subcommand("tokenizer")) run_tokenizer(tokenizer_options);
    return 0;
  } catch (const prime::UserError& e) {
    std::cerr << "prime-bench: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "prime-bench: internal error: " << e.what() << "\n";
    return 2;
  }
}

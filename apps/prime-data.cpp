// prime-data: corpus files -> token shards (tokenize), shards -> training windows (pack), and a
// look inside a shard (inspect). Logic lives in lib/data.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <optional>

#include "data/inspect_shard.h"
#include "data/pack.h"
#include "data/progress.h"
#include "data/tokenize.h"
#include "data/tokenizer_spec.h"
#include "data/token_shard.h"
#include "util/cli.h"
#include "util/cli_checks.h"
#include "util/error.h"

namespace {

void add_tokenizer_flags(CLI::App& command, prime::data::TokenizerSpec& spec, bool required) {
  const std::string group = required ? "Tokenizer (one of)" : "Tokenizer (optional, to decode)";
  command.add_option("--tokenizer", spec.json, "tokenizer.json, a directory holding one, or a *.tiktoken (as Qwen2)")
      ->group(group);
  command.add_option("--tiktoken", spec.tiktoken, "tiktoken rank file (with --regex, or the file for a preset)")->group(group);
  command.add_option("--regex", spec.regex, "split regex for --tiktoken")->group(group);
  command.add_flag("--nfc", spec.nfc, "NFC-normalise before splitting (--tiktoken)")->group(group);
  command.add_option("--tokenizer-preset", spec.preset, "qwen (Qwen2/3 from qwen.tiktoken) or gpt2 (shared tokenizer.json)")
      ->group(group);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"prime-data: tokenize corpora into token shards, pack training windows, inspect shards"};
  app.require_subcommand(1);

  prime::data::TokenizerSpec tokenize_tokenizer, inspect_tokenizer;
  prime::data::TokenizeOptions tokenize;
  std::string txt_documents = "file";
  int64_t eos_id = -1;
  bool quiet = false;
  auto* tokenize_command = app.add_subcommand(
      "tokenize", "encode .txt / .txt.xz / .jsonl(.xz) files into token shards, EOS after every document");
  tokenize_command->add_option("inputs", tokenize.inputs, "input files")->required()->group("Inputs");
  tokenize_command->add_option("--txt-documents", txt_documents,
                               "documents in .txt: file (whole file, default), paragraph (blank-line separated), line")
      ->group("Inputs");
  tokenize_command->add_option("--text-field", tokenize.documents.text_field, "jsonl field holding the text (default text)")
      ->group("Inputs");
  add_tokenizer_flags(*tokenize_command, tokenize_tokenizer, true);
  tokenize_command->add_option("--eos-id", eos_id, "document separator id (default: the tokenizer's end-of-text)")
      ->check(prime::non_negative_number())->group("Tokenizer (one of)");
  tokenize_command->add_flag("--parse-special", tokenize.parse_special,
                             "treat special-token text in the corpus as special tokens (default: plain text)")
      ->group("Tokenizer (one of)");
  tokenize_command->add_option("--out", tokenize.out, "one shard for all inputs, in order")->group("Output");
  tokenize_command->add_option("--out-dir", tokenize.out_dir, "one shard per input: DIR/<name>.tok (DIR is created when missing)")
      ->group("Output");
  tokenize_command->add_flag("--force", tokenize.force, "replace existing output shards")->group("Output");
  tokenize_command->add_option("--threads", tokenize.threads, "encoding threads (default: all cores)")->group("Run");
  tokenize_command->add_flag("--quiet", quiet, "no progress")->group("Run");

  prime::data::PackOptions pack;
  auto* pack_command = app.add_subcommand("pack", "cut token shards into fixed-length windows (optionally with document positions)");
  pack_command->add_option("inputs", pack.inputs, "token shards, read as one stream in this order")->required();
  pack_command->add_option("--seq-len", pack.seq_len, "window length in tokens")->required();
  pack_command->add_option("--out", pack.out, "output shard (rows of --seq-len)")->required();
  pack_command->add_flag("--document-mask", pack.document_mask,
                         "also write per-token positions inside each document (restart after EOS)");
  pack_command->add_option("--positions-out", pack.positions_out, "positions shard (default: OUT with .pos.tok)");
  pack_command->add_flag("--force", pack.force, "replace existing output shards");

  std::string inspect_path;
  prime::data::InspectOptions inspect;
  auto* inspect_command = app.add_subcommand("inspect", "header, counts, histograms and decoded samples of a shard");
  inspect_command->add_option("shard", inspect_path, "token shard")->required();
  add_tokenizer_flags(*inspect_command, inspect_tokenizer, false);
  inspect_command->add_option("--top", inspect.top_k, "most frequent ids to list (default 20)");
  inspect_command->add_option("--samples", inspect.samples, "random windows to decode (default 2, needs a tokenizer)");
  inspect_command->add_option("--sample-tokens", inspect.sample_tokens, "tokens per sample (default 48)");
  inspect_command->add_option("--seed", inspect.seed, "sample seed (default 0)")->check(prime::non_negative_number());
  if (auto exit_code = prime::parse_command_line(app, "prime-data", argc, argv)) return *exit_code;

  return prime::run_command("prime-data", [&] {
    if (tokenize_command->parsed()) {
      tokenize.documents.txt_documents = prime::data::parse_txt_documents(txt_documents);
      if (eos_id >= 0) tokenize.eos_id = eos_id;
      const auto tokenizer = prime::data::load_tokenizer(tokenize_tokenizer);
      if (!quiet) {
        tokenize.progress = &std::cerr;
        tokenize.progress_tty = prime::data::ProgressMeter::stderr_is_tty();
      }
      const auto report = prime::data::tokenize_files(tokenizer, tokenize);
      for (const auto& stale : report.removed_stale)
        std::cout << "removed " << stale << ", the partial output of an earlier run that was killed\n";
      for (const auto& output : report.outputs) std::cout << "wrote " << output << "\n";
      std::printf("%lld files, %lld documents, %lld tokens, %.1f MB of text in %.2f s (%.2f MB/s)\n",
                  static_cast<long long>(report.files), static_cast<long long>(report.documents),
                  static_cast<long long>(report.tokens), report.bytes / 1e6, report.seconds, report.mb_per_s());
    } else if (pack_command->parsed()) {
      const auto report = prime::data::pack_shards(pack);
      for (const auto& stale : report.removed_stale)
        std::cout << "removed " << stale << ", the partial output of an earlier run that was killed\n";
      std::cout << "wrote " << report.out << ": " << report.windows << " windows of " << pack.seq_len << " tokens ("
                << report.tokens_dropped << " of " << report.tokens_in << " tokens dropped at the end)\n";
      if (!report.positions_out.empty()) std::cout << "wrote " << report.positions_out << " (document positions)\n";
    } else if (inspect_command->parsed()) {
      const auto shard = prime::io::TokenShard::open(inspect_path);
      std::optional<prime::io::Tokenizer> tokenizer;
      if (!inspect_tokenizer.empty()) tokenizer = prime::data::load_tokenizer(inspect_tokenizer);
      const auto stats = prime::data::shard_stats(shard, inspect.top_k);
      prime::data::print_shard_report(shard, stats, tokenizer ? &*tokenizer : nullptr, inspect, std::cout);
    }
  });
}

// `prime-data tokenize`: corpus files -> token shards. Documents are encoded independently (so
// the ids of a document are exactly Tokenizer::encode(document)) and each is followed by the
// EOS id. One reader thread cuts the files into batches of documents in order, worker threads
// encode batches in parallel (across files and within a file), and the calling thread writes
// them back in order, so the output does not depend on the thread count.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "data/text_input.h"
#include "tokenizer/tokenizer.h"

namespace prime::data {

struct TokenizeOptions {
  std::vector<std::string> inputs;
  std::string out;      // one shard holding every input in order, or
  std::string out_dir;  // one shard per input: <out_dir>/<name without .xz/.txt/.jsonl>.tok (created)
  bool force = false;   // replace existing output shards (refused otherwise)
  DocumentOptions documents;
  int threads = 0;                   // 0: hardware concurrency
  bool parse_special = false;        // match special tokens written in the text (off: plain text)
  std::optional<int64_t> eos_id;     // default: the tokenizer's end-of-text token
  size_t batch_bytes = 1 << 20;      // documents are handed to workers in batches of ~this size
  std::ostream* progress = nullptr;  // where progress goes (nullptr: silent)
  bool progress_tty = false;
};

struct TokenizeReport {
  int64_t files = 0, documents = 0, tokens = 0, bytes = 0;
  double seconds = 0;
  std::vector<std::string> outputs;
  std::vector<std::string> removed_stale;  // leftovers of killed runs removed before writing
  double mb_per_s() const { return seconds > 0 ? bytes / seconds / 1e6 : 0; }
};

// Writes every output at once at the end (each atomically): on any error nothing is written.
// UserError for unreadable inputs, bad documents (see read_documents), a tokenizer without EOS
// and no eos_id, or outputs that would collide.
TokenizeReport tokenize_files(const io::Tokenizer& tokenizer, const TokenizeOptions& options);

// <out_dir>/<name>.tok for an input path (".xz", then ".txt"/".jsonl"/".json" removed).
std::string shard_name_for(const std::string& input);

}  // namespace prime::data

// `prime-data inspect`: what a token shard holds: header, counts, how often ids occur, how long
// documents are, and (with a tokenizer) the most frequent tokens and sample windows decoded.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "data/token_shard.h"
#include "tokenizer/tokenizer.h"

namespace prime::data {

struct ShardStats {
  int64_t count = 0, documents = 0, distinct = 0;
  int64_t min_id = 0, max_id = 0;
  int64_t out_of_vocab = 0;  // ids >= header vocab_size (when known): a corrupt or mixed shard
  std::vector<std::pair<uint32_t, int64_t>> top;  // most frequent (id, occurrences)
  // Distinct ids by occurrences: bucket b holds ids seen [2^b, 2^(b+1)) times.
  std::vector<int64_t> frequency_buckets;
  // Documents (EOS-terminated runs, EOS included) by length: bucket b is [2^b, 2^(b+1)).
  std::vector<int64_t> length_buckets;
  int64_t trailing = 0;  // tokens after the last EOS (an unterminated document)
  int64_t longest_document = 0;
};

// One pass over the body.
ShardStats shard_stats(const io::TokenShard& shard, int top_k = 20);

struct InspectOptions {
  int top_k = 20;
  int samples = 2;           // sample windows to decode (needs a tokenizer)
  int64_t sample_tokens = 48;
  uint64_t seed = 0;
};

void print_shard_report(const io::TokenShard& shard, const ShardStats& stats, const io::Tokenizer* tokenizer,
                        const InspectOptions& options, std::ostream& out);

}  // namespace prime::data

#include "data/inspect_shard.h"

#include <algorithm>
#include <cstdio>
#include <iomanip>

namespace prime::data {
namespace {

int bucket_of(int64_t value) {
  int bucket = 0;
  while (value >= 2) value >>= 1, ++bucket;
  return bucket;
}

void add_to(std::vector<int64_t>& buckets, int64_t value) {
  const int bucket = bucket_of(value);
  if (static_cast<int>(buckets.size()) <= bucket) buckets.resize(bucket + 1, 0);
  ++buckets[bucket];
}

// A bar of up to 40 '#' proportional to value / largest.
std::string bar(int64_t value, int64_t largest) {
  const int width = largest > 0 ? static_cast<int>((40.0 * value + largest - 1) / largest) : 0;
  return std::string(static_cast<size_t>(width), '#');
}

void print_buckets(const std::vector<int64_t>& buckets, const std::string& what, std::ostream& out) {
  const int64_t largest = buckets.empty() ? 0 : *std::max_element(buckets.begin(), buckets.end());
  for (size_t b = 0; b < buckets.size(); ++b) {
    if (buckets[b] == 0) continue;
    char range[64];
    std::snprintf(range, sizeof(range), "%lld-%lld", 1LL << b, (1LL << (b + 1)) - 1);
    out << "  " << std::setw(16) << range << " " << what << "  " << std::setw(10) << buckets[b] << "  "
        << bar(buckets[b], largest) << "\n";
  }
}

// Control characters shown escaped so a sample stays on its lines.
std::string printable(const std::string& text) {
  std::string shown;
  for (char c : text) {
    if (c == '\n') shown += "\\n";
    else if (c == '\t') shown += "\\t";
    else if (c == '\r') shown += "\\r";
    else shown += c;
  }
  return shown;
}

}  // namespace

ShardStats shard_stats(const io::TokenShard& shard, int top_k) {
  ShardStats stats;
  const auto& header = shard.header();
  stats.count = shard.size();
  std::vector<int64_t> counts(header.vocab_size ? header.vocab_size : 65536, 0);
  std::vector<uint32_t> chunk(1 << 16);
  int64_t document_length = 0;
  uint32_t lowest = UINT32_MAX, highest = 0;
  for (int64_t offset = 0; offset < stats.count; offset += static_cast<int64_t>(chunk.size())) {
    const int64_t length = std::min<int64_t>(chunk.size(), stats.count - offset);
    shard.read(offset, length, chunk.data());
    for (int64_t i = 0; i < length; ++i) {
      const uint32_t id = chunk[i];
      lowest = std::min(lowest, id);
      highest = std::max(highest, id);
      if (header.vocab_size && id >= header.vocab_size) ++stats.out_of_vocab;
      if (id >= counts.size()) counts.resize(static_cast<size_t>(id) + 1, 0);
      ++counts[id];
      ++document_length;
      if (header.kind == io::ShardKind::kTokens && header.has_eos() && id == header.eos_id) {
        add_to(stats.length_buckets, document_length);
        stats.longest_document = std::max(stats.longest_document, document_length);
        ++stats.documents;
        document_length = 0;
      }
    }
  }
  stats.trailing = header.has_eos() ? document_length : 0;
  stats.min_id = stats.count ? lowest : 0;
  stats.max_id = stats.count ? highest : 0;
  for (size_t id = 0; id < counts.size(); ++id) {
    if (counts[id] == 0) continue;
    ++stats.distinct;
    add_to(stats.frequency_buckets, counts[id]);
    stats.top.emplace_back(static_cast<uint32_t>(id), counts[id]);
  }
  const size_t keep = std::min<size_t>(stats.top.size(), static_cast<size_t>(std::max(top_k, 0)));
  std::partial_sort(stats.top.begin(), stats.top.begin() + keep, stats.top.end(),
                    [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
  stats.top.resize(keep);
  return stats;
}

void print_shard_report(const io::TokenShard& shard, const ShardStats& stats, const io::Tokenizer* tokenizer,
                        const InspectOptions& options, std::ostream& out) {
  const auto& header = shard.header();
  const bool tokens = header.kind == io::ShardKind::kTokens;
  out << "shard        " << shard.path().string() << "\n"
      << "kind         " << (tokens ? "token ids" : "position ids") << ", u" << header.width * 8 << "\n"
      << "elements     " << stats.count;
  if (header.row_length) out << " (" << shard.rows() << " rows of " << header.row_length << ")";
  out << "\n";
  if (tokens) {
    out << "documents    " << header.documents << " (header), " << stats.documents << " EOS found";
    if (stats.trailing) out << ", " << stats.trailing << " tokens after the last EOS";
    out << "\n";
    out << "eos id       " << (header.has_eos() ? std::to_string(header.eos_id) : "none") << "\n"
        << "vocab size   " << header.vocab_size << "\n"
        << "source bytes " << header.source_bytes;
    if (header.source_bytes && stats.count)
      out << " (" << std::fixed << std::setprecision(3) << double(header.source_bytes) / stats.count
          << " bytes/token)" << std::defaultfloat;
    out << "\n";
  }
  out << "ids          " << stats.distinct << " distinct, range [" << stats.min_id << ", " << stats.max_id << "]\n";
  if (stats.out_of_vocab) out << "WARNING      " << stats.out_of_vocab << " ids >= vocab size " << header.vocab_size << "\n";
  if (!tokens) return;

  out << "\nid frequency (distinct ids by how often they occur)\n";
  print_buckets(stats.frequency_buckets, "times", out);
  if (!stats.length_buckets.empty()) {
    out << "\ndocument length (tokens incl. EOS; longest " << stats.longest_document << ")\n";
    print_buckets(stats.length_buckets, "tokens", out);
  }
  out << "\ntop " << stats.top.size() << " ids\n";
  for (const auto& [id, occurrences] : stats.top) {
    out << "  " << std::setw(8) << id << "  " << std::setw(10) << occurrences << "  " << std::fixed
        << std::setprecision(2) << std::setw(6) << 100.0 * occurrences / std::max<int64_t>(stats.count, 1) << "%"
        << std::defaultfloat;
    if (tokenizer) out << "  \"" << printable(tokenizer->decode({static_cast<int32_t>(id)})) << "\"";
    out << "\n";
  }
  if (tokenizer && options.samples > 0 && stats.count > 0) {
    const int64_t length = std::min<int64_t>(options.sample_tokens, stats.count);
    const at::Tensor windows = shard.sample_windows(options.samples, length, options.seed);
    const auto rows = windows.accessor<int64_t, 2>();
    for (int64_t s = 0; s < options.samples; ++s) {
      std::vector<int32_t> ids;
      for (int64_t i = 0; i < length; ++i) ids.push_back(static_cast<int32_t>(rows[s][i]));
      out << "\nsample " << s << " (" << length << " tokens)\n  " << printable(tokenizer->decode(ids)) << "\n";
    }
  }
}

}  // namespace prime::data

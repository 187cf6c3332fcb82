#include "data/pack.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "data/token_shard.h"
#include "util/cli.h"
#include "util/error.h"

namespace prime::data {

std::string positions_path_for(const std::string& out) {
  const std::string suffix = ".tok";
  if (out.size() > suffix.size() && out.compare(out.size() - suffix.size(), suffix.size(), suffix) == 0)
    return out.substr(0, out.size() - suffix.size()) + ".pos.tok";
  return out + ".pos.tok";
}

std::vector<uint32_t> document_positions(const uint32_t* ids, int64_t length, int64_t eos_id) {
  std::vector<uint32_t> positions(static_cast<size_t>(length));
  uint32_t position = 0;
  for (int64_t i = 0; i < length; ++i) {
    positions[i] = position;
    position = (eos_id >= 0 && ids[i] == static_cast<uint32_t>(eos_id)) ? 0 : position + 1;
  }
  return positions;
}

PackReport pack_shards(const PackOptions& options) {
  if (options.inputs.empty()) throw user_error("no input shards");
  if (options.out.empty()) throw user_error("no --out shard");
  if (options.seq_len < 2) throw user_error("--seq-len must be >= 2, got ", options.seq_len);
  if (options.seq_len > 0xFFFFFFFFll) throw user_error("--seq-len ", options.seq_len, " is too large");
  std::vector<io::TokenShard> shards;
  uint64_t total = 0, source_bytes = 0;
  uint32_t vocab = 0, width = 2;
  for (const auto& input : options.inputs) {
    auto shard = io::TokenShard::open(input);
    if (shard.header().kind != io::ShardKind::kTokens)
      throw user_error(input, " holds position ids, not tokens; pack token shards");
    if (!shards.empty() && shard.header().eos_id != shards.front().header().eos_id)
      throw user_error(input, " has EOS id ", shard.header().eos_id, " but ", options.inputs.front(), " has ",
                       shards.front().header().eos_id, " (different tokenizers?)");
    total += shard.header().count;
    source_bytes += shard.header().source_bytes;
    vocab = std::max(vocab, shard.header().vocab_size);
    width = std::max(width, shard.header().width);
    shards.push_back(std::move(shard));
  }
  const uint32_t eos = shards.front().header().eos_id;
  if (options.document_mask && eos == io::kNoEos)
    throw user_error("document masking needs document ends, but the shards have no EOS id");
  const int64_t windows = static_cast<int64_t>(total) / options.seq_len;
  if (windows == 0)
    throw user_error("the inputs hold ", total, " tokens, fewer than one window of ", options.seq_len);

  const uint64_t kept = static_cast<uint64_t>(windows * options.seq_len);
  io::TokenShardHeader header;
  header.width = width;
  header.eos_id = eos;
  header.vocab_size = vocab;
  header.row_length = static_cast<uint32_t>(options.seq_len);
  // Bytes scale with the tokens kept (the dropped tail's share is unknown exactly).
  header.source_bytes = total ? static_cast<uint64_t>(std::llround(double(source_bytes) * kept / total)) : 0;
  check_output_file(options.out, "--out", options.force);
  if (options.document_mask)
    check_output_file(options.positions_out.empty() ? positions_path_for(options.out) : options.positions_out,
                      "--positions-out", options.force);
  io::TokenShardWriter writer(options.out, header, options.force, "--out");
  std::unique_ptr<io::TokenShardWriter> positions_writer;
  PackReport report;
  report.out = options.out;
  for (const auto& stale : writer.removed_stale()) report.removed_stale.push_back(stale.string());
  if (options.document_mask) {
    report.positions_out = options.positions_out.empty() ? positions_path_for(options.out) : options.positions_out;
    io::TokenShardHeader positions = header;
    positions.kind = io::ShardKind::kPositions;
    positions.width = io::width_for_vocab(options.seq_len);
    positions.vocab_size = static_cast<uint32_t>(options.seq_len);
    positions_writer =
        std::make_unique<io::TokenShardWriter>(report.positions_out, positions, options.force, "--positions-out");
    for (const auto& stale : positions_writer->removed_stale()) report.removed_stale.push_back(stale.string());
  }

  // Walk the concatenated stream one window at a time.
  std::vector<uint32_t> window(static_cast<size_t>(options.seq_len));
  size_t shard_index = 0;
  int64_t offset = 0;
  uint64_t documents = 0;
  for (int64_t w = 0; w < windows; ++w) {
    int64_t filled = 0;
    while (filled < options.seq_len) {
      const auto& shard = shards[shard_index];
      const int64_t take = std::min(options.seq_len - filled, shard.size() - offset);
      shard.read(offset, take, window.data() + filled);
      filled += take;
      offset += take;
      if (offset == shard.size()) ++shard_index, offset = 0;
    }
    for (uint32_t id : window) documents += (id == eos);
    writer.append(window);
    if (positions_writer) positions_writer->append(document_positions(window.data(), options.seq_len, eos));
  }
  writer.header().documents = documents;
  if (positions_writer) {
    positions_writer->header().documents = documents;
    positions_writer->finish();
  }
  writer.finish();
  report.windows = windows;
  report.tokens_in = static_cast<int64_t>(total);
  report.tokens_dropped = static_cast<int64_t>(total - kept);
  report.documents = static_cast<int64_t>(documents);
  return report;
}

}  // namespace prime::data

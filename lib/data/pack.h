// `prime-data pack`: token shards -> fixed-length windows for training. The inputs are read as one
// stream (in the order given) and cut into consecutive, non-overlapping windows of seq_len ids;
// the last partial window is dropped. The output is a token shard with row_length = seq_len.
//
// Document masking (optional): a second shard of kind "positions" with the same rows holds each
// token's position inside its document, restarting at 0 at every window start and right after
// every EOS (the EOS itself ends its document). A trainer builds the block-diagonal causal mask
// (token i sees j <= i when no position-0 token lies in (j, i]) or varlen cu_seqlens from it,
// and passes the positions as RoPE position ids.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace prime::data {

struct PackOptions {
  std::vector<std::string> inputs;
  std::string out;
  int64_t seq_len = 0;
  bool document_mask = false;
  std::string positions_out;  // default: positions_path_for(out)
  bool force = false;         // replace existing output shards (refused otherwise)
};

struct PackReport {
  int64_t windows = 0, tokens_in = 0, tokens_dropped = 0, documents = 0;
  std::string out, positions_out;
  std::vector<std::string> removed_stale;  // leftovers of killed runs removed before writing
};

// "windows.tok" -> "windows.pos.tok"; other names get ".pos.tok" appended.
std::string positions_path_for(const std::string& out);

// UserError on unreadable/bad shards, a position shard given as input, a seq_len < 2, fewer
// tokens than one window, or document masking without an EOS id. Writes atomically.
PackReport pack_shards(const PackOptions& options);

// Positions for one window: 0 at the start and after each eos (see above).
std::vector<uint32_t> document_positions(const uint32_t* ids, int64_t length, int64_t eos_id);

}  // namespace prime::data

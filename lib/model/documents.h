// Packed rows holding several documents (prime-data pack --document-mask): each token's position
// inside its document, 0 at a document's first token. A forward given Documents keeps documents
// apart: attention never looks across a boundary (block-diagonal causal mask) and rotates by
// the in-document positions; every SSM layer and its short conv start from a zero state at each
// document. By default each document runs as its own sequence (run_per_document, bucketed by
// length), so the packed result equals the documents run one by one by construction; a mixer
// with a varlen path (GDN) runs the packed tokens at once from `cu_seqlens` / `starts` instead.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace prime::model {

// The packed tokens of a Documents (B*T, row-major) laid out in chunks of `chunk_size` that
// start at each document's first token: a document of length L takes ceil(L / chunk_size)
// chunks, only its last one padded. Chunked SSM forms run on this layout with the state reset
// at every chunk that starts a document.
struct DocumentChunks {
  int64_t count = 0;  // chunks
  // [count * chunk_size] int64: the flat token of each slot; a padding slot repeats its
  // document's last token (finite values that no real slot's output depends on: chunked forms
  // are causal within a chunk, and the state leaving a document's last chunk is dropped).
  at::Tensor gather;
  at::Tensor scatter;  // [B*T] int64: each token's slot
  at::Tensor starts;   // [count] bool: the chunk starts a document
};

struct Documents {
  at::Tensor positions;      // [B, T] int64, on the model's device
  int64_t max_position = 0;  // largest position + 1 (dynamic RoPE grows its base with it)
  at::Tensor visible;        // [B, 1, T, T] bool: key j visible to query i (same document, j <= i)

  // Documents of equal padded length, run as one batch: `gather` [count * length] picks each
  // document's tokens (flat index into B*T; past a document's end, its last token again, which
  // a causal map never lets reach the real ones); `real` [tokens] picks the real tokens of the
  // bucket's output.
  struct Bucket {
    int64_t count = 0, length = 0;
    at::Tensor gather, real;
  };
  std::vector<Bucket> buckets;
  // The buckets' real tokens, concatenated, are a permutation of B*T; `restore` [B*T] undoes it.
  at::Tensor restore;
  int64_t batch = 0, steps = 0;
  bool one_per_row = false;  // every row is a single document: nothing to split

  // The packed (varlen) form: document d holds the flat tokens [cu_seqlens[d], cu_seqlens[d+1])
  // of the B*T tokens (row-major; a document never spans two rows). [documents + 1] int64 on the
  // model's device, and the same values on the host.
  at::Tensor cu_seqlens;
  std::vector<int64_t> cu_seqlens_host;
  at::Tensor starts;  // [B, T] bool on the device: the token starts a document (every row's first)

  // The chunk layout for `chunk_size`, built on the host at its first use and kept (every layer
  // of a forward shares it; the index upload happens once per chunk size, not once per layer).
  const DocumentChunks& chunks(int64_t chunk_size) const;

 private:
  struct ChunkCache {
    std::mutex mutex;
    std::map<int64_t, DocumentChunks> by_size;
  };
  std::shared_ptr<ChunkCache> chunk_cache_ = std::make_shared<ChunkCache>();
};

// positions [B, T] (any integer dtype, host or device; read on the host once): a row's first
// token always starts a document. UserError when a position is neither 0 nor the previous one
// + 1. Buckets pad each document to a power of two (at least `min_length`), so padding stays
// below half the tokens and the number of batched calls is logarithmic in T.
Documents make_documents(const at::Tensor& positions, const at::Device& device, int64_t min_length = 64);

// Runs fn (a causal map [n, L, d] -> [n, L, d'] with a fresh state per sequence) once per
// bucket and puts the results back in place: x [B, T, d] -> [B, T, d']. Differentiable.
at::Tensor run_per_document(const Documents& documents, const at::Tensor& x,
                            const std::function<at::Tensor(const at::Tensor&)>& fn);

// [B, T, ...] -> [1, count * chunk_size, ...]: the packed tokens in `layout`'s chunks, side by
// side as one row, for a chunked form to run with the layout's `starts` (undefined stays
// undefined). Differentiable.
at::Tensor to_document_chunks(const at::Tensor& x, const DocumentChunks& layout);
// Back from that row: a chunked form's output [1, count * chunk_size, ...] -> [B, T, ...].
at::Tensor from_document_chunks(const at::Tensor& y, const DocumentChunks& layout, int64_t batch, int64_t steps);

}  // namespace prime::model

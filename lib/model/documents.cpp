#include "model/documents.h"

#include <algorithm>
#include <map>
#include <vector>

#include "util/error.h"

namespace prime::model {

Documents make_documents(const at::Tensor& positions, const at::Device& device, int64_t min_length) {
  if (positions.dim() != 2) throw user_error("document positions must be [batch, tokens], got ", positions.dim(), " dims");
  const at::Tensor host = positions.to(at::kCPU, at::kLong).contiguous();
  const int64_t batch = host.size(0), steps = host.size(1);
  const int64_t* pos = host.data_ptr<int64_t>();

  struct Span {
    int64_t row, start, length;
  };
  std::vector<Span> spans;
  at::Tensor starts = at::zeros({batch, steps}, at::kLong);
  int64_t* start_flags = starts.data_ptr<int64_t>();
  int64_t max_position = 0;
  for (int64_t row = 0; row < batch; ++row) {
    const int64_t* p = pos + row * steps;
    for (int64_t t = 0; t < steps; ++t) {
      if (t == 0 || p[t] == 0) {
        spans.push_back({row, t, 0});
        start_flags[row * steps + t] = 1;
      } else if (p[t] != p[t - 1] + 1) {
        throw user_error("document positions of row ", row, " jump from ", p[t - 1], " to ", p[t], " at token ", t,
                         " (a position is 0 at a document's start, else the previous one + 1)");
      }
      ++spans.back().length;
      max_position = std::max(max_position, p[t] + 1);
    }
  }

  Documents documents;
  documents.batch = batch;
  documents.steps = steps;
  documents.max_position = max_position;
  documents.positions = host.to(device);
  documents.one_per_row = static_cast<int64_t>(spans.size()) == batch;
  documents.starts = starts.to(at::kBool).to(device);
  documents.cu_seqlens_host.reserve(spans.size() + 1);
  for (const Span& span : spans) documents.cu_seqlens_host.push_back(span.row * steps + span.start);
  documents.cu_seqlens_host.push_back(batch * steps);
  documents.cu_seqlens = at::tensor(documents.cu_seqlens_host, at::kLong).to(device);
  // Query i sees key j when j <= i and both lie in one document (same count of starts so far).
  const at::Tensor document_id = starts.cumsum(1).to(device);
  const at::Tensor causal = at::ones({steps, steps}, at::TensorOptions().dtype(at::kBool).device(device)).tril();
  documents.visible = document_id.unsqueeze(2).eq(document_id.unsqueeze(1)).logical_and(causal).unsqueeze(1);

  std::map<int64_t, std::vector<Span>> by_length;
  for (const Span& span : spans) {
    int64_t length = std::max<int64_t>(1, min_length);
    while (length < span.length) length *= 2;
    by_length[std::min(length, steps)].push_back(span);
  }
  std::vector<int64_t> order;  // flat B*T index of each real token, in bucket output order
  order.reserve(batch * steps);
  for (const auto& [length, members] : by_length) {
    Documents::Bucket bucket;
    bucket.count = static_cast<int64_t>(members.size());
    bucket.length = length;
    std::vector<int64_t> gather, real;
    gather.reserve(bucket.count * length);
    for (int64_t k = 0; k < bucket.count; ++k) {
      const Span& span = members[k];
      const int64_t base = span.row * steps + span.start;
      for (int64_t i = 0; i < length; ++i) gather.push_back(base + std::min(i, span.length - 1));
      for (int64_t i = 0; i < span.length; ++i) {
        real.push_back(k * length + i);
        order.push_back(base + i);
      }
    }
    bucket.gather = at::tensor(gather, at::kLong).to(device);
    bucket.real = at::tensor(real, at::kLong).to(device);
    documents.buckets.push_back(std::move(bucket));
  }
  at::Tensor restore = at::empty({batch * steps}, at::kLong);
  int64_t* r = restore.data_ptr<int64_t>();
  for (int64_t i = 0; i < static_cast<int64_t>(order.size()); ++i) r[order[i]] = i;
  documents.restore = restore.to(device);
  return documents;
}

const DocumentChunks& Documents::chunks(int64_t chunk_size) const {
  PRIME_CHECK(chunk_size > 0 && cu_seqlens.defined(), "Documents::chunks: chunk size ", chunk_size);
  const std::lock_guard<std::mutex> lock(chunk_cache_->mutex);
  auto found = chunk_cache_->by_size.find(chunk_size);
  if (found != chunk_cache_->by_size.end()) return found->second;
  std::vector<int64_t> gather, scatter(batch * steps);
  std::vector<uint8_t> chunk_starts;
  for (size_t d = 0; d + 1 < cu_seqlens_host.size(); ++d) {
    const int64_t begin = cu_seqlens_host[d], end = cu_seqlens_host[d + 1];
    for (int64_t chunk_begin = begin; chunk_begin < end; chunk_begin += chunk_size) {
      chunk_starts.push_back(chunk_begin == begin ? 1 : 0);
      for (int64_t i = 0; i < chunk_size; ++i) {
        const int64_t token = chunk_begin + i;
        if (token < end) scatter[token] = static_cast<int64_t>(gather.size());
        gather.push_back(std::min(token, end - 1));
      }
    }
  }
  DocumentChunks layout;
  layout.count = static_cast<int64_t>(chunk_starts.size());
  const at::Device device = cu_seqlens.device();
  layout.gather = at::tensor(gather, at::kLong).to(device);
  layout.scatter = at::tensor(scatter, at::kLong).to(device);
  layout.starts = at::tensor(std::vector<int64_t>(chunk_starts.begin(), chunk_starts.end()), at::kLong)
                      .to(at::kBool)
                      .to(device);
  return chunk_cache_->by_size.emplace(chunk_size, std::move(layout)).first->second;
}

at::Tensor run_per_document(const Documents& documents, const at::Tensor& x,
                            const std::function<at::Tensor(const at::Tensor&)>& fn) {
  PRIME_CHECK(x.dim() == 3 && x.size(0) == documents.batch && x.size(1) == documents.steps);
  if (documents.one_per_row) return fn(x);
  const at::Tensor flat = x.reshape({documents.batch * documents.steps, x.size(2)});
  std::vector<at::Tensor> outputs;
  for (const Documents::Bucket& bucket : documents.buckets) {
    const at::Tensor y = fn(flat.index_select(0, bucket.gather).view({bucket.count, bucket.length, x.size(2)}));
    outputs.push_back(y.reshape({bucket.count * bucket.length, y.size(2)}).index_select(0, bucket.real));
  }
  const at::Tensor joined = outputs.size() == 1 ? outputs.front() : at::cat(outputs, 0);
  return joined.index_select(0, documents.restore).view({documents.batch, documents.steps, joined.size(1)});
}

at::Tensor to_document_chunks(const at::Tensor& x, const DocumentChunks& layout) {
  if (!x.defined()) return x;
  PRIME_CHECK(x.dim() >= 2 && x.size(0) * x.size(1) == layout.scatter.size(0), "packed documents: ", x.sizes(),
              " for a chunk layout of ", layout.scatter.size(0), " tokens");
  std::vector<int64_t> flat{x.size(0) * x.size(1)};
  for (int64_t dim = 2; dim < x.dim(); ++dim) flat.push_back(x.size(dim));
  return x.reshape(flat).index_select(0, layout.gather).unsqueeze(0);
}

at::Tensor from_document_chunks(const at::Tensor& y, const DocumentChunks& layout, int64_t batch, int64_t steps) {
  PRIME_CHECK(y.dim() >= 2 && y.size(0) == 1 && y.size(1) == layout.gather.size(0) &&
                  batch * steps == layout.scatter.size(0),
              "packed documents: ", y.sizes(), " back to ", batch, " x ", steps, " tokens");
  std::vector<int64_t> shape{batch, steps};
  for (int64_t dim = 2; dim < y.dim(); ++dim) shape.push_back(y.size(dim));
  return y.squeeze(0).index_select(0, layout.scatter).view(shape);
}

}  // namespace prime::model

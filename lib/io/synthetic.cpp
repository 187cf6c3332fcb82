#include "io/synthetic.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>  // at::get_num_threads

#include <algorithm>
#include <atomic>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "io/source.h"
#include "util/error.h"

namespace prime::io {
namespace {

uint64_t fnv1a(const std::string& text, uint64_t seed) {
  uint64_t hash = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash;
}

// Block b of a large tensor draws from its own stream (splitmix64 of the tensor's stream and b).
uint64_t block_stream(uint64_t stream, int64_t block) {
  uint64_t z = stream + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(block + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Runs work(block, scratch) for block 0..count on up to at::get_num_threads() threads, blocks
// handed out in turn, each thread with its own fp32 scratch of kSyntheticBlock elements (so no
// block allocates and zero-fills fresh pages); the first exception is rethrown once every thread
// has stopped.
void run_blocks(int64_t count, const std::function<void(int64_t, at::Tensor&)>& work) {
  const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>({count, at::get_num_threads(), cores}));
  std::atomic<int64_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto worker = [&] {
    try {
      at::Tensor scratch = at::empty({kSyntheticBlock}, at::TensorOptions().dtype(at::kFloat));
      for (int64_t item = next++; item < count; item = next++) work(item, scratch);
    } catch (...) {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
      next = count;
    }
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& thread : pool) thread.join();
  if (failure) std::rethrow_exception(failure);
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

uint64_t apply_synthetic_overrides(nlohmann::json& config, const std::string& overrides, const std::string& spec) {
  static const std::map<std::string, std::string> keys = {
      {"layers", "num_hidden_layers"},     {"hidden", "hidden_size"},
      {"heads", "num_attention_heads"},    {"kv_heads", "num_key_value_heads"},
      {"head_dim", "head_dim"},            {"intermediate", "intermediate_size"},
      {"vocab", "vocab_size"},             {"experts", "num_experts"},
      {"experts_per_tok", "num_experts_per_tok"}, {"moe_intermediate", "moe_intermediate_size"},
      {"window", "sliding_window"},        {"max_positions", "max_position_embeddings"}};
  uint64_t seed = 0;
  std::stringstream items(overrides);
  std::string item;
  while (std::getline(items, item, ',')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    if (eq == std::string::npos) throw user_error(spec, ": expected key=value, got '", item, "'");
    const std::string key = item.substr(0, eq), text = item.substr(eq + 1);
    int64_t value = 0;
    try {
      size_t used = 0;
      value = std::stoll(text, &used);
      if (used != text.size()) throw std::invalid_argument(text);
    } catch (const std::exception&) {
      throw user_error(spec, ": value of '", key, "' must be an integer, got '", text, "'");
    }
    if (key == "seed") {
      seed = static_cast<uint64_t>(value);
      continue;
    }
    auto found = keys.find(key);
    if (found == keys.end()) {
      std::string known = "seed";
      for (const auto& [name, field] : keys) known += ", " + name;
      throw user_error(spec, ": unknown synthetic override '", key, "' (known: ", known, ")");
    }
    if (value <= 0) throw user_error(spec, ": '", key, "' must be > 0");
    config[found->second] = value;
    if (key == "layers") {
      // Keep per-layer lists consistent with the new depth.
      if (config.contains("layer_types") && config["layer_types"].is_array()) {
        auto types = config["layer_types"];
        nlohmann::json resized = nlohmann::json::array();
        for (int64_t i = 0; i < value; ++i) resized.push_back(types.empty() ? "full_attention" : types[std::min<size_t>(i, types.size() - 1)]);
        config["layer_types"] = resized;
      }
      if (config.contains("max_window_layers")) config["max_window_layers"] = value;
    }
  }
  return seed;
}

at::Tensor synthetic_tensor(const std::string& name, const std::vector<int64_t>& shape, uint64_t seed,
                            at::ScalarType dtype) {
  const uint64_t stream = fnv1a(name, seed);
  const double mean = ends_with(name, "norm.weight") ? 1.0 : 0.0;
  const int64_t count = c10::multiply_integers(shape);
  if (count <= kSyntheticBlock) {  // one stream: the values small fixtures have always had
    auto generator = at::make_generator<at::CPUGeneratorImpl>(stream);
    at::Tensor noise = at::normal(0.0, 0.02, shape, generator, at::TensorOptions().dtype(at::kFloat));
    if (mean != 0.0) noise.add_(mean);
    return noise.to(dtype);
  }
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(dtype));
  // Larger tensors: one stream per block of kSyntheticBlock elements, drawn on worker threads.
  // The values depend only on (seed, name, block), never on the thread count. Plain threads and
  // serial ATen calls: prime is not compiled with OpenMP, so at::parallel_for would run inline.
  const int64_t blocks = (count + kSyntheticBlock - 1) / kSyntheticBlock;
  const float shift = static_cast<float>(mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "synthetic_tensor", [&] {
    scalar_t* data = out.data_ptr<scalar_t>();
    run_blocks(blocks, [&](int64_t block, at::Tensor& scratch) {
      const int64_t first = block * kSyntheticBlock, size = std::min(kSyntheticBlock, count - first);
      auto generator = at::make_generator<at::CPUGeneratorImpl>(block_stream(stream, block));
      const at::Tensor noise = scratch.narrow(0, 0, size).normal_(0.0, 0.02, generator);
      const float* drawn = noise.data_ptr<float>();
      for (int64_t i = 0; i < size; ++i) data[first + i] = static_cast<scalar_t>(drawn[i] + shift);
    });
  });
  return out;
}

std::map<std::string, at::Tensor> synthetic_weights(const std::vector<TensorSpec>& specs, uint64_t seed,
                                                    at::ScalarType dtype) {
  std::map<std::string, at::Tensor> weights;
  for (const auto& spec : specs) weights[spec.name] = synthetic_tensor(spec.name, spec.shape, seed, dtype);
  return weights;
}

}  // namespace prime::io

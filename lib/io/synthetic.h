// synthetic:ALIAS[@key=value,...] sources: a known model's exact config with seeded random
// weights, optionally shrunk (layers=4,hidden=256,...) so tests and demos run on a laptop.
#pragma once

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

namespace prime::io {

struct TensorSpec;

// Applies "layers=4,hidden=256,heads=4,kv_heads=2,head_dim=64,intermediate=512,vocab=1024,
// experts=8,experts_per_tok=2,moe_intermediate=64,window=16,max_positions=4096,seed=7" to a
// config.json object; returns the seed (default 0). UserError on an unknown key or bad value.
uint64_t apply_synthetic_overrides(nlohmann::json& config, const std::string& overrides, const std::string& spec);

// Seeded random tensors for the given specs, in `dtype` (sources ask for io::synthetic_dtype):
// norms 1 + N(0, 0.02), everything else N(0, 0.02), drawn in fp32 and then rounded. Each
// tensor's values depend only on (seed, name), so adding tensors never changes the others.
// Tensors above kSyntheticBlock elements draw one stream per block of that many elements, in
// parallel (the values do not depend on the thread count), so generating a large model's
// weights scales with the cores instead of running on one.
constexpr int64_t kSyntheticBlock = int64_t{1} << 20;
std::map<std::string, at::Tensor> synthetic_weights(const std::vector<TensorSpec>& specs, uint64_t seed,
                                                    at::ScalarType dtype = at::kFloat);

// A tensor's seeded random initialisation (see above), exposed for converters and tests.
at::Tensor synthetic_tensor(const std::string& name, const std::vector<int64_t>& shape, uint64_t seed,
                            at::ScalarType dtype = at::kFloat);

}  // namespace prime::io

// A toy Transformer with planted structure for the layer-selection tests: a Llama-shaped model
// (no MLP: down_proj = 0) whose heads attend by position only. Local layers attend to the token
// itself; long-range layers are copy heads that attend exactly kCopyOffset tokens back and copy
// that token's identity into the residual stream, where the head (the embedding) reads it. On
// the data below (blocks of kHalf random tokens followed by the same kHalf tokens again) the copy
// heads predict the second half of every block, so they cannot be replaced by anything local.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/token_shard.h"
#include "io/tensor_file.h"

namespace prime::test {

inline constexpr int64_t kToyLayers = 4, kToyHidden = 32, kToyHeadDim = 16, kToyVocab = 64;
inline constexpr int64_t kHalf = 24, kCopyOffset = kHalf - 1;
inline const std::vector<int64_t> kLongRangeLayers = {1, 3};

// Writes config.json + model.safetensors of the planted model into `dir`.
inline void write_planted_model(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  const int64_t d = kToyHidden, heads = 2, half = kToyHeadDim / 2;
  std::ofstream(dir / "config.json") << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 32, "intermediate_size": 8, "num_hidden_layers": 4, "num_attention_heads": 2,
    "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 64, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": false, "hidden_act": "silu",
    "attention_bias": false, "torch_dtype": "float32"})";
  at::manual_seed(7);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  // Channel 0 is a constant the positional q/k read; the other channels carry the token.
  at::Tensor embed = at::randn({kToyVocab, d}, f32) * 0.15;
  embed.select(1, 0).fill_(1.0);
  std::map<std::string, at::Tensor> w;
  w["model.embed_tokens.weight"] = embed;
  at::Tensor head = embed.clone();
  head.select(1, 0).zero_();
  w["lm_head.weight"] = head;
  w["model.norm.weight"] = at::ones({d}, f32);
  const double alpha = 100.0;
  for (int64_t layer = 0; layer < kToyLayers; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    const bool copy = std::find(kLongRangeLayers.begin(), kLongRangeLayers.end(), layer) != kLongRangeLayers.end();
    const int64_t offset = copy ? kCopyOffset : 0;
    at::Tensor q = at::zeros({d, d}, f32), k = at::zeros({d, d}, f32);
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < half; ++i) {
        // RoPE rotates pair (i, i + D/2) by theta_i * position: a key rotated ahead by
        // theta_i * offset makes every pair's score peak at query - key = offset.
        const double theta = std::pow(10000.0, -2.0 * static_cast<double>(i) / kToyHeadDim);
        q.index_put_({h * kToyHeadDim + i, 0}, alpha);
        k.index_put_({h * kToyHeadDim + i, 0}, alpha * std::cos(theta * offset));
        k.index_put_({h * kToyHeadDim + i + half, 0}, alpha * std::sin(theta * offset));
      }
    at::Tensor v = at::eye(d, f32), o = at::eye(d, f32) * (copy ? 1.5 : 0.5);
    v.select(0, 0).zero_();
    o.select(0, 0).zero_();
    w[p + "self_attn.q_proj.weight"] = q;
    w[p + "self_attn.k_proj.weight"] = k;
    w[p + "self_attn.v_proj.weight"] = v;
    w[p + "self_attn.o_proj.weight"] = o;
    w[p + "mlp.gate_proj.weight"] = at::randn({8, d}, f32) * 0.02;
    w[p + "mlp.up_proj.weight"] = at::randn({8, d}, f32) * 0.02;
    w[p + "mlp.down_proj.weight"] = at::zeros({d, 8}, f32);
    w[p + "input_layernorm.weight"] = at::ones({d}, f32);
    w[p + "post_attention_layernorm.weight"] = at::ones({d}, f32);
  }
  io::save_tensor_file(dir / "model.safetensors", w);
}

// `blocks` blocks of kHalf seeded random tokens, each followed by the same kHalf tokens.
inline void write_copy_shard(const std::filesystem::path& path, int64_t blocks, uint64_t seed = 3) {
  io::TokenShardHeader header;
  header.width = 2;
  header.vocab_size = kToyVocab;
  io::TokenShardWriter writer(path, header);
  uint64_t state = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (int64_t block = 0; block < blocks; ++block) {
    std::vector<uint32_t> ids;
    for (int64_t i = 0; i < kHalf; ++i) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      ids.push_back(static_cast<uint32_t>((state >> 33) % kToyVocab));
    }
    writer.append(ids);
    writer.append(ids);
  }
  writer.finish();
}

}  // namespace prime::test

#include "model/rope.h"

#include <algorithm>
#include <cmath>

#include "kernels/rope/rope.h"
#include "util/error.h"

namespace prime::model {
namespace {

// 1 / theta^(2i/D), computed like transformers (fp32 exponent, fp32 division).
at::Tensor default_inv_freq(double theta, int64_t dim) {
  at::Tensor exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<float>(dim);
  return (1.0 / at::pow(at::scalar_tensor(theta, at::kFloat), exponents)).to(at::kFloat);
}

double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

at::Tensor llama3_inv_freq(const io::RopeConfig& rope, int64_t dim) {
  at::Tensor inv_freq = default_inv_freq(rope.theta, dim);
  const double old_context = static_cast<double>(rope.original_max_position_embeddings);
  if (old_context <= 0) throw user_error("llama3 rope needs original_max_position_embeddings");
  const double low_freq_wavelen = old_context / rope.low_freq_factor;
  const double high_freq_wavelen = old_context / rope.high_freq_factor;
  at::Tensor wavelen = 2.0 * M_PI / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq);
  at::Tensor smooth = (old_context / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled;
  at::Tensor is_medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
  return at::where(is_medium, smoothed, scaled);
}

std::pair<at::Tensor, double> yarn_inv_freq(const io::RopeConfig& rope, int64_t dim, int64_t max_positions) {
  double factor = rope.factor;
  int64_t original = max_positions;
  if (rope.original_max_position_embeddings > 0) {
    // As transformers: when the original length is given, the ratio of the two lengths is the factor.
    original = rope.original_max_position_embeddings;
    factor = static_cast<double>(max_positions) / static_cast<double>(original);
  }
  double attention_factor;
  if (rope.attention_factor) {
    attention_factor = *rope.attention_factor;
  } else if (rope.mscale && rope.mscale_all_dim && *rope.mscale && *rope.mscale_all_dim) {
    attention_factor = yarn_mscale(factor, *rope.mscale) / yarn_mscale(factor, *rope.mscale_all_dim);
  } else {
    attention_factor = yarn_mscale(factor, 1.0);
  }
  auto correction_dim = [&](double rotations) {
    return (dim * std::log(original / (rotations * 2 * M_PI))) / (2 * std::log(rope.theta));
  };
  double low = correction_dim(rope.beta_fast), high = correction_dim(rope.beta_slow);
  if (rope.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  at::Tensor ramp = ((at::arange(dim / 2, at::kFloat) - low) / (high - low)).clamp(0, 1);
  at::Tensor extrapolation_factor = 1 - ramp;
  at::Tensor pos_freqs = at::pow(at::scalar_tensor(rope.theta, at::kFloat),
                                 at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<float>(dim));
  at::Tensor extrapolation = 1.0 / pos_freqs;
  at::Tensor interpolation = 1.0 / (factor * pos_freqs);
  at::Tensor inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
  return {inv_freq, attention_factor};
}

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

}  // namespace

Rope::Rope(const io::RopeConfig& config, int64_t head_dim, int64_t max_position_embeddings)
    : config_(config), head_dim_(head_dim), max_position_embeddings_(max_position_embeddings) {
  if (config.partial_rotary_factor != 1.0)
    throw user_error("partial_rotary_factor ", config.partial_rotary_factor, " is not supported");
  if (config.type == "default" || config.type == "dynamic") {
    base_inv_freq_ = default_inv_freq(config.theta, head_dim);
  } else if (config.type == "linear") {
    base_inv_freq_ = default_inv_freq(config.theta, head_dim) / config.factor;
  } else if (config.type == "llama3") {
    base_inv_freq_ = llama3_inv_freq(config, head_dim);
  } else if (config.type == "yarn") {
    std::tie(base_inv_freq_, attention_scaling_) = yarn_inv_freq(config, head_dim, max_position_embeddings);
  } else {
    throw user_error("unsupported rope type ", config.type);
  }
}

std::pair<at::Tensor, double> Rope::inv_freq(int64_t seq_len) const {
  if (config_.type == "dynamic") {
    const int64_t original = config_.original_max_position_embeddings > 0 ? config_.original_max_position_embeddings
                                                                          : max_position_embeddings_;
    if (seq_len > original) {
      const double dim = static_cast<double>(head_dim_);
      const double base = config_.theta * std::pow(config_.factor * seq_len / original - (config_.factor - 1),
                                                   dim / (dim - 2));
      return {default_inv_freq(base, head_dim_), 1.0};
    }
  }
  return {base_inv_freq_, attention_scaling_};
}

std::pair<at::Tensor, at::Tensor> Rope::apply(const at::Tensor& q, const at::Tensor& k, int64_t start) const {
  const int64_t steps = q.size(1);
  const auto angle_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (last_.start != start || last_.steps != steps || last_.device != q.device() || last_.dtype != angle_type) {
    auto [frequencies, scaling] = inv_freq(start + steps);
    at::Tensor positions = at::arange(start, start + steps, at::TensorOptions().dtype(angle_type));
    at::Tensor freqs = positions.to(q.device()).unsqueeze(1) * frequencies.to(q.device(), angle_type).unsqueeze(0);
    at::Tensor emb = at::cat({freqs, freqs}, -1);  // [T, D]
    last_ = {start, steps, q.device(), angle_type, (emb.cos() * scaling).unsqueeze(0).unsqueeze(2),
             (emb.sin() * scaling).unsqueeze(0).unsqueeze(2)};
  }
  return rotate(q, k, last_.cos, last_.sin);
}

std::pair<at::Tensor, at::Tensor> Rope::apply_positions(const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& positions, int64_t max_position) const {
  PRIME_CHECK(positions.dim() == 2 && positions.size(0) == q.size(0) && positions.size(1) == q.size(1));
  const auto angle_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto [frequencies, scaling] = inv_freq(max_position);
  const at::Tensor freqs = positions.to(q.device(), angle_type).unsqueeze(2) *
                           frequencies.to(q.device(), angle_type).view({1, 1, -1});  // [B, T, D/2]
  const at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(2);                // [B, T, 1, D]
  return rotate(q, k, emb.cos() * scaling, emb.sin() * scaling);
}

std::pair<at::Tensor, at::Tensor> Rope::rotate(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                               const at::Tensor& sin) const {
  // Inference on CUDA: one fused launch, bitwise equal to the ops below (which stay the reference
  // and serve training, float64 and the CPU).
  if (kernels::rope_apply(q, k, cos, sin)) return kernels::rope_rotate(q, k, cos, sin);
  auto turn = [&](const at::Tensor& x) {
    at::Tensor xf = x.to(cos.scalar_type());
    return (xf * cos + rotate_half(xf) * sin).to(x.scalar_type());
  };
  return {turn(q), turn(k)};
}

std::pair<at::Tensor, at::Tensor> Rope::apply_at(const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& position) const {
  const auto [cos, sin] = angles_at(q, position);
  return rotate(q, k, cos, sin);
}

std::pair<at::Tensor, at::Tensor> Rope::angles_at(const at::Tensor& q, const at::Tensor& position) const {
  PRIME_CHECK(q.size(1) == 1 && position.numel() == 1 && position.device() == q.device());
  const auto angle_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool tracked = !position.is_inference();  // inference tensors have no version counter
  const int64_t version = tracked ? static_cast<int64_t>(position._version()) : -1;
  const bool new_tables =
      !step_.inv_freq.defined() || step_.dtype != angle_type || step_.inv_freq.device() != q.device();
  if (new_tables || !tracked || step_.position != position.unsafeGetTensorImpl() || step_.version != version) {
    if (new_tables) {
      // Host-to-device copies happen here, at the first step, never inside a captured step.
      step_.inv_freq = base_inv_freq_.to(q.device(), angle_type);
      step_.exponents = (at::arange(0, head_dim_, 2, at::kLong).to(at::kFloat) / static_cast<float>(head_dim_))
                            .to(q.device());
    }
    const at::Tensor pos = position.to(angle_type);  // [1]
    at::Tensor inv_freq = step_.inv_freq;
    double scaling = attention_scaling_;
    if (config_.type == "dynamic") {
      // As inv_freq(position + 1), on the device: past the original length the base grows.
      const int64_t original = config_.original_max_position_embeddings > 0 ? config_.original_max_position_embeddings
                                                                            : max_position_embeddings_;
      const double dim = static_cast<double>(head_dim_);
      const at::Tensor seq_len = position.to(at::kDouble) + 1;
      const at::Tensor base = config_.theta * at::pow(config_.factor * seq_len / original - (config_.factor - 1),
                                                      dim / (dim - 2));
      const at::Tensor grown = 1.0 / at::pow(base.to(at::kFloat), step_.exponents);
      inv_freq = at::where(seq_len > original, grown, step_.inv_freq.to(at::kFloat)).to(angle_type);
      scaling = 1.0;
    }
    const at::Tensor freqs = pos.unsqueeze(1) * inv_freq.unsqueeze(0);  // [1, D/2]
    const at::Tensor emb = at::cat({freqs, freqs}, -1).view({1, 1, 1, head_dim_});
    step_.position = position.unsafeGetTensorImpl();
    step_.version = version;
    step_.dtype = angle_type;
    step_.cos = emb.cos() * scaling;
    step_.sin = emb.sin() * scaling;
  }
  return {step_.cos, step_.sin};
}

}  // namespace prime::model

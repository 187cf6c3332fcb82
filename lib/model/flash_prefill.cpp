#include "model/flash_prefill.h"

#include "kernels/common/policy.h"
#include "util/error.h"

namespace prime::model {

bool flash_prefill_apply(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values) {
  if (!q.defined() || !keys.defined() || !values.defined() || !q.is_cuda()) return false;
  if (kernels::policy() != kernels::Policy::Auto) return false;
  const at::ScalarType type = q.scalar_type();
  if ((type != at::kBFloat16 && type != at::kHalf) || keys.scalar_type() != type || values.scalar_type() != type)
    return false;
  if (keys.device() != q.device() || values.device() != q.device()) return false;
  if (q.dim() != 4 || keys.dim() != 4 || values.sizes() != keys.sizes()) return false;
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3), Hkv = keys.size(1), Tk = keys.size(2);
  if (keys.size(0) != B || keys.size(3) != D || Hkv < 1 || Hq % Hkv != 0 || Tq < 1 || Tq > Tk) return false;
  if (D % 8 != 0 || D > 256) return false;
  return q.stride(3) == 1 && keys.stride(3) == 1 && values.stride(3) == 1;
}

at::Tensor flash_prefill(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, double scale) {
  PRIME_CHECK(flash_prefill_apply(q, keys, values), "flash_prefill: operands it does not serve (q ", q.sizes(),
              ", keys ", keys.sizes(), "); ask flash_prefill_apply first");
  const int64_t Tq = q.size(2), Tk = keys.size(2);
  // Flash attention's layout is [B, T, H, D]: transposed views, nothing copied.
  const auto outputs = at::_flash_attention_forward(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                                    std::nullopt, std::nullopt, Tq, Tk, /*dropout_p=*/0.0,
                                                    /*is_causal=*/true, /*return_debug_mask=*/false, scale);
  return std::get<0>(outputs).transpose(1, 2);
}

}  // namespace prime::model

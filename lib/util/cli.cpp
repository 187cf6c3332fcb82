#include "util/cli.h"

#include <iostream>

#include "util/error.h"

namespace prime {

int run_command(const std::string& program, const std::function<void()>& body) {
  try {
    body();
    return 0;
  } catch (const UserError& e) {
    std::cerr << program << ": error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << program << ": internal error: " << e.what() << "\n";
    return 2;
  }
}

at::Device parse_device(const std::string& name) {
  if (name == "auto") return at::hasCUDA() ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  if (name == "cpu") return at::kCPU;
  if (name.rfind("cuda", 0) == 0) {
    if (!at::hasCUDA()) throw user_error("--device ", name, ": no CUDA device is available");
    return at::Device(name);
  }
  throw user_error("unknown device '", name, "' (cpu, cuda, cuda:N, auto)");
}

at::ScalarType parse_dtype_flag(const std::string& name) {
  if (name == "fp32" || name == "float32") return at::kFloat;
  if (name == "bf16" || name == "bfloat16") return at::kBFloat16;
  if (name == "fp16" || name == "float16") return at::kHalf;
  if (name == "fp64" || name == "float64") return at::kDouble;
  throw user_error("unknown dtype '", name, "' (fp32, bf16, fp16, fp64)");
}

}  // namespace prime

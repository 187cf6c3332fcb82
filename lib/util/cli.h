// What every prime-<verb> main shares: exit codes (0 ok, 1 user error, 2 internal), device and
// dtype flags. Kept in lib/ so tests can reach it.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <string>

namespace prime {

// Runs body(); maps prime::UserError to exit 1 and anything else to exit 2, printing
// "<program>: error: <message>" to stderr.
int run_command(const std::string& program, const std::function<void()>& body);

// "cpu", "cuda", "cuda:1" or "auto" (cuda when available). UserError when CUDA is asked for
// but absent.
at::Device parse_device(const std::string& name);
// "fp32" | "float32" | "bf16" | "bfloat16" | "fp16" | "float16" | "fp64".
at::ScalarType parse_dtype_flag(const std::string& name);

}  // namespace prime

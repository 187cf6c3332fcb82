#include "util/cli.h"

#include <CLI/CLI.hpp>

#include <sys/stat.h>

#include <iostream>

#include "util/error.h"
#include "util/interrupt.h"

namespace prime {

std::optional<int> parse_command_line(CLI::App& app, const std::string& program, int argc, char** argv) {
  install_interrupt_cleanup();
  app.set_version_flag("--version", program + " " + PRIME_VERSION, "print the version and exit");
  try {
    app.parse(argc, argv);
    return std::nullopt;
  } catch (const CLI::Success& done) {  // --help, --version
    return app.exit(done);
  } catch (const CLI::ParseError& error) {
    std::string message = error.what();
    // CLI11 checks required options before leftovers, so "prime-x --sorce D" would otherwise be
    // reported as "--source is required" rather than naming the typo.
    const auto leftovers = app.remaining(true);
    if (!leftovers.empty()) {
      const std::string& first = leftovers.front();
      message = (first.rfind("-", 0) == 0 ? "unknown option " : "unexpected argument ") + first;
      if (leftovers.size() > 1) message += " (and " + std::to_string(leftovers.size() - 1) + " more)";
    }
    std::cerr << program << ": error: " << message << "\nRun " << program << " --help for the options.\n";
    return 1;
  }
}

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

void check_output_file(const std::string& path, const std::string& flag, bool force) {
  if (path.empty()) return;
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) return;
  if (S_ISDIR(info.st_mode)) throw user_error(flag, " ", path, " is a directory");
  if (!force) throw user_error(flag, " ", path, " already exists (choose another path, or --force to replace it)");
}

std::string dtype_flag_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "fp32";
    case at::kBFloat16: return "bf16";
    case at::kHalf: return "fp16";
    case at::kDouble: return "fp64";
    default: return c10::toString(dtype);
  }
}

at::ScalarType parse_dtype_flag(const std::string& name) {
  if (name == "fp32" || name == "float32") return at::kFloat;
  if (name == "bf16" || name == "bfloat16") return at::kBFloat16;
  if (name == "fp16" || name == "float16") return at::kHalf;
  if (name == "fp64" || name == "float64") return at::kDouble;
  throw user_error("unknown dtype '", name, "' (fp32, bf16, fp16, fp64)");
}

}  // namespace prime

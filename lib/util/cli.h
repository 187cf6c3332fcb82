// What every prime-<verb> main shares: exit codes (0 ok, 1 user error, 2 internal), device and
// dtype flags. Kept in lib/ so tests can reach it.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <string>

namespace CLI {
class App;
}

namespace prime {

// Parses the command line the one way every prime-<verb> does. Adds --version; installs the
// interrupt cleanup (util/interrupt.h). Returns nullopt when the command should run, else the
// exit code: 0 after --help / --version, 1 for any parse error (unknown flag, missing or
// malformed value, a whole number outside its flag's type, extra argument, missing required
// option), printed as
// "<program>: error: <message naming the flag>". An unknown flag is reported as such even when
// a required option is also missing.
std::optional<int> parse_command_line(CLI::App& app, const std::string& program, int argc, char** argv);

// CLI11's parse error messages in the commands' words ("--tokens: '1.5' is not a whole number in
// range", "--lr was given 2 times; give it once", "--dtype needs a value"); any other message as
// it is. parse_command_line prints its errors through it.
std::string describe_parse_error(const std::string& message);

// Runs body(); maps prime::UserError to exit 1 and anything else to exit 2, printing
// "<program>: error: <message>" to stderr.
int run_command(const std::string& program, const std::function<void()>& body);

// "cpu", "cuda", "cuda:1" or "auto" (cuda when available). UserError when CUDA is asked for
// but absent.
at::Device parse_device(const std::string& name);
// --force means the same for every output: an existing file given as `flag` is replaced only
// with force (UserError otherwise, naming the flag); a directory in its place is always refused.
void check_output_file(const std::string& path, const std::string& flag, bool force);

// "fp32" | "float32" | "bf16" | "bfloat16" | "fp16" | "float16" | "fp64".
at::ScalarType parse_dtype_flag(const std::string& name);
// The short name parse_dtype_flag reads back: fp32, bf16, fp16, fp64.
std::string dtype_flag_name(at::ScalarType dtype);

}  // namespace prime

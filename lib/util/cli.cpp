#include "util/cli.h"

#include <CLI/CLI.hpp>

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <iostream>
#include <regex>
#include <vector>

#include "util/error.h"
#include "util/interrupt.h"

namespace prime {

std::string describe_parse_error(const std::string& message) {
  std::smatch m;
  const auto match = [&](const char* pattern) { return std::regex_match(message, m, std::regex(pattern)); };
  if (match(R"(Could not convert: (\S+) = (.*))")) {
    const std::string value = m[2].str();
    char* end = nullptr;
    std::strtod(value.c_str(), &end);
    const bool number = !value.empty() && end == value.c_str() + value.size();
    return m[1].str() + ": '" + value + "' is not " + (number ? "a whole number in range" : "a number");
  }
  if (match(R"((\S+): At Most 1 required but received (\d+))"))
    return m[1].str() + " was given " + m[2].str() + " times; give it once";
  if (match(R"((\S+): 1 required \S+ missing)")) return m[1].str() + " needs a value";
  if (match(R"((\S+): (\d+) required \S+ missing)")) return m[1].str() + " needs " + m[2].str() + " values";
  if (match(R"((\S+): At least (\d+) required but received (\d+))"))
    return m[1].str() + " needs at least " + m[2].str() + " values, not " + m[3].str();
  if (match(R"(Expected exactly (\d+) arguments to (\S+), got (\d+))"))
    return m[2].str() + " takes " + m[1].str() + " values, not " + m[3].str();
  if (match(R"((\S+): too many inputs for a flag)") || match(R"((\S+): Should be true/false or a number)"))
    return m[1].str() + " is a switch: give it alone, without a value";
  if (match(R"(The value (\S+) is not an allowed value for (\S+))"))
    return m[2].str() + ": '" + m[1].str() + "' is not an allowed value";
  if (match(R"((-\S+): (.*) not in \{(.*)\})")) {  // IsMember
    std::string choices = m[3].str();
    for (size_t at = choices.find(','); at != std::string::npos; at = choices.find(',', at + 2))
      choices.replace(at, 1, ", ");
    return m[1].str() + ": '" + m[2].str() + "' is not one of " + choices;
  }
  if (match(R"(([A-Za-z][\w-]*) is required)")) return "missing " + m[1].str() + " (a positional argument)";
  return message;
}

namespace {

// An on/off flag given twice ("--json --json") is refused like an option given twice: CLI11 keeps
// the last by default. For `app` and all its subcommands.
void refuse_repeated_flags(CLI::App& app) {
  for (CLI::Option* option : app.get_options([](const CLI::Option* o) { return o->get_items_expected_max() == 0; }))
    if (option->get_name() != "--help" && option->get_name() != "--version")
      option->multi_option_policy(CLI::MultiOptionPolicy::Throw);
  for (CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) refuse_repeated_flags(*sub);
}

// A whole-number flag's value outside its type's range is refused: CLI11 reads a 64-bit flag's
// out-of-range literal as the largest (or smallest) value, and an unsigned flag's "-1" as 2^64 - 1,
// without a word. Other text is left to CLI11's own conversion. For `app` and all its subcommands.
void refuse_out_of_range_integers(CLI::App& app) {
  for (CLI::Option* option : app.get_options()) {
    // The type as CLI11 names it, then any validators' descriptions ("INT:> 0").
    const std::string type = option->get_type_name();
    const bool is_signed = type.rfind("INT", 0) == 0, is_unsigned = type.rfind("UINT", 0) == 0;
    if ((!is_signed && !is_unsigned) || (type.size() > (is_unsigned ? 4 : 3) && type[is_unsigned ? 4 : 3] != ':'))
      continue;
    option->check(CLI::Validator(
        [is_unsigned](std::string& text) -> std::string {
          static const std::regex integer(R"(\s*[+-]?[0-9]+\s*)");
          if (!std::regex_match(text, integer)) return "";
          if (is_unsigned && text.find('-') != std::string::npos) return "'" + text + "' is not a whole number >= 0";
          errno = 0;
          if (is_unsigned)
            std::strtoull(text.c_str(), nullptr, 10);
          else
            std::strtoll(text.c_str(), nullptr, 10);
          return errno == ERANGE ? "'" + text + "' is not a whole number in range" : "";
        },
        ""));
  }
  for (CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) refuse_out_of_range_integers(*sub);
}

std::string subcommand_names(const CLI::App& app) {
  std::string names;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    names += (names.empty() ? "" : ", ") + sub->get_name();
  return names;
}

}  // namespace

std::optional<int> parse_command_line(CLI::App& app, const std::string& program, int argc, char** argv) {
  install_interrupt_cleanup();
  app.set_version_flag("--version", program + " " + PRIME_VERSION, "print the version and exit");
  try {
    refuse_repeated_flags(app);
    refuse_out_of_range_integers(app);
    app.parse(argc, argv);
    return std::nullopt;
  } catch (const CLI::Success& done) {  // --help, --version
    return app.exit(done);
  } catch (const CLI::ParseError& error) {
    std::string message = describe_parse_error(error.what());
    if (message == "A subcommand is required") message = "a subcommand is required: " + subcommand_names(app);
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

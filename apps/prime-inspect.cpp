// prime-inspect: what a checkpoint (or synthetic source) holds, without loading its weights.
#include <CLI/CLI.hpp>

#include <iostream>

#include "io/inspect.h"
#include "util/cli.h"

int main(int argc, char** argv) {
  CLI::App app{"prime-inspect: config, parameter count and per-layer tensor table of a source"};
  std::string spec;
  bool all_tensors = false;
  app.add_option("source", spec, "checkpoint dir, known alias, or synthetic:ALIAS[@k=v,...]")->required();
  app.add_flag("--tensors", all_tensors, "also list every tensor (name, dtype, shape, bytes)");
  CLI11_PARSE(app, argc, argv);
  return prime::run_command("prime-inspect", [&] {
    prime::io::print_inspection(prime::io::resolve_source(spec), std::cout, all_tensors);
  });
}

// prime-inspect: what a checkpoint (or synthetic source) holds, without loading its weights.
#include <CLI/CLI.hpp>

#include <iostream>

#include "io/inspect.h"
#include "util/cli.h"

int main(int argc, char** argv) {
  CLI::App app{"prime-inspect: config, parameter count and per-layer tensor table of a source"};
  std::string spec;
  bool all_tensors = false, json = false;
  app.add_option("source", spec, "checkpoint dir, known alias or HF id (HF cache), or synthetic:ALIAS[@k=v,...]")
      ->required();
  app.add_flag("--tensors", all_tensors, "also list every tensor (name, dtype, shape, bytes)")->group("Output");
  app.add_flag("--json", json, "print the report as JSON (for scripts)")->group("Output");
  if (auto exit_code = prime::parse_command_line(app, "prime-inspect", argc, argv)) return *exit_code;
  return prime::run_command("prime-inspect", [&] {
    const prime::io::Source source = prime::io::resolve_source(spec);
    if (json)
      std::cout << prime::io::inspection_json(source, all_tensors).dump(2) << "\n";
    else
      prime::io::print_inspection(source, std::cout, all_tensors);
  });
}

// prime-inspect's report: config summary, parameter count, per-layer tensor table and bytes.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/source.h"

namespace prime::io {

struct TensorRow {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  int64_t layer = -1;  // -1: not inside model.layers.N
  uint64_t bytes = 0;
  uint64_t elements = 0;
};

// Tensors of the source: from the checkpoint headers (no data read), or the synthetic spec
// (in io::synthetic_dtype, as every command loads them). UserError when the checkpoint does not
// hold what its config implies (io::check_weights_match_config).
std::vector<TensorRow> describe_tensors(const Source& source);

void print_inspection(const Source& source, std::ostream& out, bool all_tensors);

// The same report for scripts (prime-inspect --json): source, config summary, parameters, bytes,
// dtype, per-layer totals, and with all_tensors every tensor.
nlohmann::json inspection_json(const Source& source, bool all_tensors);

}  // namespace prime::io

// prime-inspect's report: config summary, parameter count, per-layer tensor table and bytes.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

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
// (float32, as synthetic weights are made).
std::vector<TensorRow> describe_tensors(const Source& source);

void print_inspection(const Source& source, std::ostream& out, bool all_tensors);

}  // namespace prime::io

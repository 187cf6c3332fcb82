#include "io/tensor_file.h"

#include "io/atomic_dir.h"
#include "io/dtype.h"
#include "io/safetensors_writer.h"
#include "util/error.h"

namespace prime::io {

void save_tensor_file(const std::filesystem::path& path, const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  if (std::filesystem::is_directory(path)) throw user_error(path.string(), " is a directory");
  // Stage in a sibling directory so the final rename stays on one filesystem.
  const auto parent = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  AtomicDirectory staging(parent / (path.filename().string() + ".staging"), /*overwrite=*/true);
  WriterOptions options;
  options.metadata = metadata;
  options.max_shard_bytes = UINT64_MAX;
  SafetensorsWriter writer(staging.staging(), options);
  for (const auto& [name, tensor] : tensors) {
    at::Tensor value = tensor;
    writer.add(name, from_scalar_type(tensor.scalar_type()),
               std::vector<int64_t>(tensor.sizes().begin(), tensor.sizes().end()), [value] { return value; });
  }
  writer.write();
  std::filesystem::rename(staging.staging() / "model.safetensors", path);
}

}  // namespace prime::io

#include "io/checkpoint.h"

#include <fstream>
#include <iterator>
#include <set>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace prime::io {
namespace fs = std::filesystem;

namespace {

std::string read_small_file(const fs::path& path) {
  std::error_code error;
  const auto size = fs::file_size(path, error);
  if (error) throw user_error("cannot read ", path.string(), ": ", error.message());
  if (size > kMaxHeaderBytes)
    throw user_error(path.string(), ": ", size, " bytes is too large for an index file");
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in && !in.eof()) throw user_error("cannot read ", path.string());
  return text;
}

// The index is untrusted: a shard name like "../../etc/x" or "/abs" must not lead us outside
// the checkpoint directory. Symlinks named plainly (the HF cache layout) are fine.
void check_shard_name(const std::string& shard, const std::string& tensor, const std::string& where,
                      const fs::path& dir) {
  const bool plain = !shard.empty() && shard != "." && shard != ".." &&
                     shard.find_first_of(std::string("/\\\0", 3)) == std::string::npos;
  if (!plain)
    throw user_error(where, ": tensor \"", tensor, "\" names shard \"", shard,
                     "\", which is not a plain file name inside ", dir.string(),
                     " (path separators, \"..\" and absolute paths are refused)");
}

std::string describe_directory(const fs::path& dir) {
  std::string found;
  std::error_code error;
  for (const auto& item : fs::directory_iterator(dir, error)) {
    const std::string name = item.path().filename().string();
    if (name.size() > 4 && (name.substr(name.size() - 4) == ".bin" ||
                            name.substr(name.size() - 3) == ".pt" ||
                            name.substr(name.size() - 5) == ".gguf")) {
      found += found.empty() ? "" : ", ";
      found += name;
    }
  }
  if (found.empty()) return "";
  return " (found " + found + "; only safetensors checkpoints are supported)";
}

}  // namespace

Checkpoint Checkpoint::open(const fs::path& path) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (!fs::exists(status)) throw user_error("checkpoint ", path.string(), " does not exist");

  Checkpoint checkpoint;
  checkpoint.path_ = path;
  // name -> shard file name; empty when every tensor of the single file belongs.
  std::map<std::string, std::string> weight_map;
  std::vector<fs::path> shard_paths;

  if (fs::is_regular_file(status)) {
    shard_paths.push_back(path);
  } else if (fs::is_directory(status)) {
    const fs::path index_path = path / kIndexFileName;
    if (fs::exists(index_path)) {
      const std::string where = index_path.string();
      const nlohmann::json index = parse_json_strict(read_small_file(index_path), where);
      if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
        throw user_error(where, ": expected an object with a \"weight_map\" object");
      if (index.contains("metadata") && !index["metadata"].is_object() &&
          !index["metadata"].is_null())
        throw user_error(where, ": \"metadata\" must be an object");
      if (index["weight_map"].empty()) throw user_error(where, ": weight_map names no tensors");
      std::set<std::string> shards;
      for (const auto& [tensor, shard] : index["weight_map"].items()) {
        if (!shard.is_string())
          throw user_error(where, ": weight_map value for \"", tensor, "\" must be a file name");
        const std::string& shard_name = shard.get_ref<const std::string&>();
        check_shard_name(shard_name, tensor, where, path);
        weight_map[tensor] = shard_name;
        shards.insert(shard_name);
      }
      for (const std::string& shard : shards) {
        if (!fs::is_regular_file(path / shard, error))
          throw user_error(where, ": names shard \"", shard, "\", which does not exist in ",
                           path.string());
        shard_paths.push_back(path / shard);
      }
    } else if (fs::exists(path / kSingleFileName)) {
      shard_paths.push_back(path / kSingleFileName);
    } else {
      throw user_error("no ", kSingleFileName, " or ", kIndexFileName, " in ", path.string(),
                       describe_directory(path));
    }
  } else {
    throw user_error("checkpoint ", path.string(), " is neither a file nor a directory");
  }

  for (const fs::path& shard_path : shard_paths) {
    checkpoint.files_.push_back(SafetensorsFile::open(shard_path));
    const SafetensorsFile& file = *checkpoint.files_.back();
    const std::string shard_name = shard_path.filename().string();
    for (const TensorInfo& info : file.header().tensors) {
      if (!weight_map.empty()) {
        auto placed = weight_map.find(info.name);
        if (placed == weight_map.end() || placed->second != shard_name) continue;
      }
      checkpoint.entries_.emplace(info.name, Entry{&file, &info});
      checkpoint.names_.push_back(info.name);
      checkpoint.total_bytes_ += info.nbytes();
    }
  }
  for (const auto& [tensor, shard] : weight_map)
    if (checkpoint.entries_.count(tensor) == 0)
      throw user_error((path / kIndexFileName).string(), ": places tensor \"", tensor,
                       "\" in shard \"", shard, "\", which does not contain it");
  return checkpoint;
}

const Checkpoint::Entry& Checkpoint::entry(const std::string& name) const {
  auto found = entries_.find(name);
  if (found == entries_.end()) throw user_error("missing tensor ", name, " in ", path_.string());
  return found->second;
}

const TensorInfo& Checkpoint::info(const std::string& name) const { return *entry(name).info; }

at::Tensor Checkpoint::tensor(const std::string& name) const {
  return entry(name).file->tensor(name);
}

void Checkpoint::release(const std::string& name) const { entry(name).file->release(name); }

std::map<std::string, std::string> Checkpoint::metadata() const {
  if (files_.empty()) return {};
  return files_.front()->header().metadata;
}

}  // namespace prime::io

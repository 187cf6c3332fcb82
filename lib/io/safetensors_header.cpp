#include "io/safetensors_header.h"

#include <algorithm>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace prime::io {

// The data region is copied/viewed byte for byte; safetensors is little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "prime reads safetensors on little-endian hosts only");

namespace {

using nlohmann::json;

// Thrown from inside the parser callback; turned into a UserError with context outside.
struct DuplicateKey {
  std::string key;
};

std::string describe_type(const json& value) { return value.type_name(); }

uint64_t as_u64(const json& value, const std::string& where, const std::string& what) {
  if (!value.is_number_unsigned() && !(value.is_number_integer() && value.get<int64_t>() >= 0))
    throw user_error(where, ": ", what, " must be a non-negative integer, got ", value.dump());
  return value.get<uint64_t>();
}

TensorInfo parse_entry(const std::string& name, const json& entry, uint64_t data_size,
                       const std::string& where) {
  const std::string tensor = "tensor \"" + name + "\"";
  if (name.empty()) throw user_error(where, ": a tensor has an empty name");
  if (!entry.is_object())
    throw user_error(where, ": ", tensor, " must be an object, got ", describe_type(entry));
  for (const auto& [key, value] : entry.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      throw user_error(where, ": ", tensor, " has unknown field \"", key, "\"");
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(field)) throw user_error(where, ": ", tensor, " lacks \"", field, "\"");

  TensorInfo info;
  info.name = name;
  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) throw user_error(where, ": ", tensor, " dtype must be a string");
  try {
    info.dtype = parse_dtype(dtype.get_ref<const std::string&>());
  } catch (const UserError& error) {
    throw user_error(where, ": ", tensor, ": ", error.what());
  }

  const json& shape = entry["shape"];
  if (!shape.is_array()) throw user_error(where, ": ", tensor, " shape must be an array");
  uint64_t elements = 1;
  bool overflow = false;
  for (const json& dim : shape) {
    uint64_t extent = as_u64(dim, where, tensor + " shape dimension");
    if (extent > static_cast<uint64_t>(INT64_MAX))
      throw user_error(where, ": ", tensor, " shape dimension ", extent, " is too large");
    info.shape.push_back(static_cast<int64_t>(extent));
    overflow = overflow || __builtin_mul_overflow(elements, extent, &elements);
  }
  uint64_t expected_bytes = 0;
  overflow = overflow || __builtin_mul_overflow(elements, dtype_size(info.dtype), &expected_bytes);
  // A zero extent anywhere makes the tensor empty, whatever overflowed before it.
  if (std::find(info.shape.begin(), info.shape.end(), 0) != info.shape.end()) {
    overflow = false;
    expected_bytes = 0;
  }
  if (overflow) throw user_error(where, ": ", tensor, " shape is too large (byte count overflows)");

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2)
    throw user_error(where, ": ", tensor, " data_offsets must be [begin, end]");
  info.begin = as_u64(offsets[0], where, tensor + " data_offsets begin");
  info.end = as_u64(offsets[1], where, tensor + " data_offsets end");
  if (info.end < info.begin)
    throw user_error(where, ": ", tensor, " data_offsets end ", info.end, " is before begin ",
                     info.begin);
  if (info.end > data_size)
    throw user_error(where, ": ", tensor, " data_offsets end ", info.end,
                     " is past the end of the data region (", data_size,
                     " bytes): the file is truncated or the header is wrong");
  if (info.end - info.begin != expected_bytes)
    throw user_error(where, ": ", tensor, " shape/bytes mismatch: ", dtype_name(info.dtype), " ",
                     shape.dump(), " needs ", expected_bytes, " bytes but data_offsets [",
                     info.begin, ", ", info.end, "] span ", info.end - info.begin);
  return info;
}

std::map<std::string, std::string> parse_metadata(const json& metadata, const std::string& where) {
  std::map<std::string, std::string> result;
  if (metadata.is_null()) return result;
  if (!metadata.is_object())
    throw user_error(where, ": __metadata__ must be an object of strings, got ",
                     describe_type(metadata));
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string())
      throw user_error(where, ": __metadata__ value for \"", key, "\" must be a string, got ",
                       describe_type(value));
    result[key] = value.get<std::string>();
  }
  return result;
}

// Sorted by begin, the entries must cover [0, data_size) with no gap and no overlap, so that
// every byte of the data region belongs to exactly one tensor.
void check_tiling(const std::vector<TensorInfo>& tensors, uint64_t data_size,
                  const std::string& where) {
  uint64_t cursor = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& info : tensors) {
    if (info.begin < cursor)
      throw user_error(where, ": tensor \"", info.name, "\" data_offsets [", info.begin, ", ",
                       info.end, "] overlap tensor \"", previous->name, "\" ending at ", cursor);
    if (info.begin > cursor)
      throw user_error(where, ": gap in the data region: bytes [", cursor, ", ", info.begin,
                       ") before tensor \"", info.name, "\" belong to no tensor");
    cursor = info.end;
    previous = &info;
  }
  if (cursor != data_size)
    throw user_error(where, ": the data region has ", data_size - cursor,
                     " bytes after the last tensor (data is ", data_size,
                     " bytes, tensors end at ", cursor, ")");
}

}  // namespace

json parse_json_strict(std::string_view text, const std::string& where) {
  // One key set per open object; a repeated key at any depth is refused.
  std::vector<std::set<std::string>> open_objects;
  json::parser_callback_t reject_duplicates = [&open_objects](int, json::parse_event_t event,
                                                              json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: open_objects.emplace_back(); break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open_objects.empty() &&
            !open_objects.back().insert(parsed.get<std::string>()).second)
          throw DuplicateKey{parsed.get<std::string>()};
        break;
      default: break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), reject_duplicates);
  } catch (const DuplicateKey& duplicate) {
    throw user_error(where, ": duplicate key \"", duplicate.key, "\" in JSON");
  } catch (const json::exception& error) {
    throw user_error(where, ": invalid JSON: ", error.what());
  }
}

Header parse_header(std::string_view text, uint64_t data_size, const std::string& where) {
  json root = parse_json_strict(text, where);
  if (!root.is_object())
    throw user_error(where, ": header must be a JSON object, got ", describe_type(root));
  Header header;
  header.tensors.reserve(root.size());
  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__")
      header.metadata = parse_metadata(entry, where);
    else
      header.tensors.push_back(parse_entry(name, entry, data_size, where));
  }
  // Zero-size tensors share a begin with their neighbour; order them first so the tiling check
  // sees them at the cursor, and by name for a deterministic order.
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              if (a.begin != b.begin) return a.begin < b.begin;
              if (a.end != b.end) return a.end < b.end;
              return a.name < b.name;
            });
  check_tiling(header.tensors, data_size, where);
  return header;
}

uint64_t read_header_length(std::string_view prefix, uint64_t file_size, const std::string& where) {
  if (prefix.size() < 8 || file_size < 8)
    throw user_error(where, ": file is truncated: ", file_size,
                     " bytes, shorter than the 8-byte header length");
  uint64_t length = 0;
  std::memcpy(&length, prefix.data(), 8);  // little-endian host (static_assert above)
  if (length > kMaxHeaderBytes)
    throw user_error(where, ": header length ", length, " bytes exceeds the ",
                     kMaxHeaderBytes / 1'000'000, " MB limit (not a safetensors file?)");
  if (length > file_size - 8)
    throw user_error(where, ": header length ", length, " runs past the end of the file (",
                     file_size, " bytes): the file is truncated or not safetensors");
  return length;
}

ParsedFile parse_file_bytes(std::string_view bytes, const std::string& where) {
  uint64_t length = read_header_length(bytes, bytes.size(), where);
  ParsedFile parsed;
  parsed.data_start = 8 + length;
  parsed.header = parse_header(bytes.substr(8, length), bytes.size() - parsed.data_start, where);
  return parsed;
}

}  // namespace prime::io

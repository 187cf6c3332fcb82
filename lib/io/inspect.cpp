#include "io/inspect.h"

#include <iomanip>
#include <map>
#include <regex>

#include "io/checkpoint.h"
#include "io/dtype.h"

namespace prime::io {
namespace {

int64_t layer_of(const std::string& name) {
  static const std::regex pattern(R"(^model\.layers\.(\d+)\.)");
  std::smatch match;
  return std::regex_search(name, match, pattern) ? std::stoll(match[1]) : -1;
}

std::string human_bytes(uint64_t bytes) {
  std::ostringstream out;
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) value /= 1024, ++unit;
  out << std::fixed << std::setprecision(unit ? 2 : 0) << value << " " << units[unit];
  return out.str();
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

}  // namespace

std::vector<TensorRow> describe_tensors(const Source& source) {
  std::vector<TensorRow> rows;
  if (source.kind == "synthetic") {
    const at::ScalarType dtype = synthetic_dtype(source.config);
    const std::string dtype_text(dtype_name(from_scalar_type(dtype)));
    for (const auto& spec : transformer_tensor_specs(source.config)) {
      TensorRow row{spec.name, dtype_text, spec.shape, layer_of(spec.name)};
      row.elements = 1;
      for (int64_t dim : spec.shape) row.elements *= static_cast<uint64_t>(dim);
      row.bytes = row.elements * at::elementSize(dtype);
      rows.push_back(row);
    }
    return rows;
  }
  Checkpoint checkpoint = Checkpoint::open(source.dir);
  check_weights_match_config(source.config, checkpoint);
  for (const auto& name : checkpoint.names()) {
    const TensorInfo& info = checkpoint.info(name);
    TensorRow row{name, std::string(dtype_name(info.dtype)), info.shape, layer_of(name)};
    row.bytes = info.end - info.begin;
    row.elements = 1;
    for (int64_t dim : info.shape) row.elements *= static_cast<uint64_t>(dim);
    rows.push_back(row);
  }
  return rows;
}

void print_inspection(const Source& source, std::ostream& out, bool all_tensors) {
  const ModelConfig& c = source.config;
  out << "source      " << source.spec << " (" << source.kind;
  if (!source.hf_id.empty()) out << ", " << source.hf_id;
  if (!source.revision.empty()) out << " @ " << source.revision.substr(0, 12);
  out << ")\n";
  if (!source.dir.empty()) out << "path        " << source.dir.string() << "\n";
  out << "family      " << c.family << " (model_type " << c.model_type << ", " << c.architecture << ")\n";
  out << "shape       layers " << c.num_hidden_layers << ", hidden " << c.hidden_size << ", heads "
      << c.num_attention_heads << " q / " << c.num_key_value_heads << " kv, head_dim " << c.head_dim
      << ", intermediate " << c.intermediate_size << ", vocab " << c.vocab_size << "\n";
  out << "rope        " << c.rope.type << ", theta " << c.rope.theta;
  if (c.rope.type != "default") out << ", factor " << c.rope.factor;
  out << "; max positions " << c.max_position_embeddings << "\n";
  out << "options     tied embeddings " << (c.tie_word_embeddings ? "yes" : "no") << ", attention bias "
      << (c.attention_bias ? "yes" : "no") << ", q/k norm " << (c.qk_norm ? "yes" : "no") << "\n";
  if (c.moe.num_experts > 0)
    out << "moe         " << c.moe.num_experts << " experts, top-" << c.moe.num_experts_per_tok << ", expert width "
        << c.moe.moe_intermediate_size << ", renormalise " << (c.moe.norm_topk_prob ? "yes" : "no") << "\n";
  out << "pattern     " << join_layer_pattern(c.layer_pattern) << "\n";

  const auto rows = describe_tensors(source);
  std::map<int64_t, std::pair<uint64_t, uint64_t>> per_layer;  // layer -> (params, bytes)
  std::map<int64_t, int> tensor_count;
  uint64_t params = 0, bytes = 0;
  for (const auto& row : rows) {
    per_layer[row.layer].first += row.elements;
    per_layer[row.layer].second += row.bytes;
    tensor_count[row.layer]++;
    params += row.elements;
    bytes += row.bytes;
  }
  out << "parameters  " << params << " (" << std::fixed << std::setprecision(3) << params / 1e9 << " B)\n";
  out << "bytes       " << bytes << " (" << human_bytes(bytes) << ")\n\n";
  out << std::left << std::setw(7) << "layer" << std::setw(6) << "type" << std::right << std::setw(9) << "tensors"
      << std::setw(16) << "parameters" << std::setw(14) << "bytes" << "\n";
  for (const auto& [layer, totals] : per_layer) {
    const std::string type = layer < 0 ? "-" : c.layer_pattern.at(layer);
    out << std::left << std::setw(7) << (layer < 0 ? std::string("other") : std::to_string(layer)) << std::setw(6)
        << type << std::right << std::setw(9) << tensor_count[layer] << std::setw(16) << totals.first << std::setw(14)
        << human_bytes(totals.second) << "\n";
  }
  if (all_tensors) {
    out << "\n";
    for (const auto& row : rows)
      out << std::left << std::setw(64) << row.name << std::setw(9) << row.dtype << std::setw(20)
          << shape_text(row.shape) << std::right << std::setw(12) << human_bytes(row.bytes) << "\n";
  }
}

nlohmann::json inspection_json(const Source& source, bool all_tensors) {
  const ModelConfig& c = source.config;
  nlohmann::json json = {{"source", source.spec}, {"kind", source.kind}};
  if (!source.hf_id.empty()) json["hf_id"] = source.hf_id;
  if (!source.revision.empty()) json["revision"] = source.revision;
  if (!source.dir.empty()) json["path"] = source.dir.string();
  json["config"] = {{"family", c.family},
                    {"model_type", c.model_type},
                    {"architecture", c.architecture},
                    {"num_hidden_layers", c.num_hidden_layers},
                    {"hidden_size", c.hidden_size},
                    {"num_attention_heads", c.num_attention_heads},
                    {"num_key_value_heads", c.num_key_value_heads},
                    {"head_dim", c.head_dim},
                    {"intermediate_size", c.intermediate_size},
                    {"vocab_size", c.vocab_size},
                    {"max_position_embeddings", c.max_position_embeddings},
                    {"rope", {{"type", c.rope.type}, {"theta", c.rope.theta}, {"factor", c.rope.factor}}},
                    {"tie_word_embeddings", c.tie_word_embeddings},
                    {"attention_bias", c.attention_bias},
                    {"qk_norm", c.qk_norm}};
  if (c.moe.num_experts > 0)
    json["config"]["moe"] = {{"num_experts", c.moe.num_experts},
                             {"num_experts_per_tok", c.moe.num_experts_per_tok},
                             {"moe_intermediate_size", c.moe.moe_intermediate_size},
                             {"norm_topk_prob", c.moe.norm_topk_prob}};
  json["pattern"] = join_layer_pattern(c.layer_pattern);
  const auto rows = describe_tensors(source);
  std::map<int64_t, nlohmann::json> per_layer;
  std::map<std::string, uint64_t> bytes_by_dtype;
  uint64_t params = 0, bytes = 0;
  for (const auto& row : rows) {
    auto& layer = per_layer[row.layer];
    if (layer.is_null()) {
      layer = {{"layer", row.layer < 0 ? nlohmann::json("other") : nlohmann::json(row.layer)},
               {"type", row.layer < 0 ? std::string("-") : c.layer_pattern.at(row.layer)},
               {"tensors", 0}, {"parameters", 0}, {"bytes", 0}};
    }
    layer["tensors"] = layer["tensors"].get<int64_t>() + 1;
    layer["parameters"] = layer["parameters"].get<uint64_t>() + row.elements;
    layer["bytes"] = layer["bytes"].get<uint64_t>() + row.bytes;
    bytes_by_dtype[row.dtype] += row.bytes;
    params += row.elements;
    bytes += row.bytes;
  }
  json["parameters"] = params;
  json["bytes"] = bytes;
  json["bytes_by_dtype"] = bytes_by_dtype;
  json["layers"] = nlohmann::json::array();
  for (auto& [layer, totals] : per_layer) json["layers"].push_back(totals);
  if (all_tensors) {
    json["tensors"] = nlohmann::json::array();
    for (const auto& row : rows)
      json["tensors"].push_back({{"name", row.name}, {"dtype", row.dtype}, {"shape", row.shape}, {"bytes", row.bytes}});
  }
  return json;
}

}  // namespace prime::io

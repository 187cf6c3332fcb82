// ConversionPlan::summary: the --dry-run text. Layers of one type share their tensor table, so the
// plan of a 36-layer model stays readable; --tensors lists every output tensor as well.
#include <map>
#include <set>
#include <sstream>

#include "convert/conversion_plan.h"
#include "convert/hybrid_config.h"
#include "io/architecture.h"

namespace prime::convert {
namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

std::string join(const std::vector<int64_t>& values) {
  std::string text;
  for (size_t i = 0; i < values.size(); ++i) text += (i ? "," : "") + std::to_string(values[i]);
  return text;
}

std::string pad(std::string text, size_t width) {
  if (text.size() < width) text.append(width - text.size(), ' ');
  return text;
}

std::string strip(const std::string& name, const std::string& prefix) {
  return name.compare(0, prefix.size(), prefix) == 0 ? name.substr(prefix.size()) : name;
}

std::string type_title(const std::string& symbol) { return symbol == "*" ? "attention (*)" : symbol; }

}  // namespace

std::string ConversionPlan::summary(bool every_tensor) const {
  const io::ModelConfig& config = source.config;
  const auto& arch = io::find_architecture(config.model_type, config.architecture, config.model_type);
  std::ostringstream out;
  out << "source    " << source.spec;
  if (!source.hf_id.empty()) out << "  (" << source.hf_id << (source.revision.empty() ? "" : "@" + source.revision) << ")";
  if (source.kind == "synthetic") out << ", synthetic weights, seed " << source.seed;
  out << "\n          " << config.family << ", " << config.num_hidden_layers << " layers, hidden " << config.hidden_size
      << ", heads " << config.num_attention_heads << " q / " << config.num_key_value_heads << " kv, head_dim "
      << config.head_dim << ", " << weights->names().size() << " tensors, " << format_bytes(weights->total_bytes())
      << "\n";
  out << "target    " << plan_target_line() << "\n";
  out << "pattern   " << layers.pattern() << "\n";
  out << "init      " << init_recipe_name(init) << ", seed " << seed << "\n";
  out << "dtype     " << (dtype ? dtype_short_name(*dtype) + " for every weight" : std::string("as in the source"))
      << "; A_log, dt_bias, D in fp32\n";

  // Per layer: type, what it reads, what it writes.
  std::map<int64_t, std::pair<std::set<std::string>, std::pair<size_t, uint64_t>>> per_layer;
  std::map<std::string, int64_t> example;  // first layer of each type
  for (size_t i = 0; i < targets.size(); ++i) {
    if (target_layers[i] < 0) continue;
    auto& entry = per_layer[target_layers[i]];
    for (const auto& name : targets[i].sources) entry.first.insert(name);
    entry.second.first += 1;
    entry.second.second += targets[i].nbytes();
  }
  out << "\nlayer  type  reads                    writes\n";
  for (const auto& [layer, entry] : per_layer) {
    uint64_t read_bytes = 0;
    for (const auto& name : entry.first) read_bytes += weights->nbytes(name);
    const std::string& symbol = layers.types.at(layer);
    example.emplace(symbol, layer);
    out << pad(std::to_string(layer), 7) << pad(symbol, 6)
        << pad(std::to_string(entry.first.size()) + " tensors " + format_bytes(read_bytes), 25)
        << entry.second.first << " tensors " << format_bytes(entry.second.second) << "\n";
  }

  // One table per layer type, from its first layer.
  for (const auto& [symbol, layer] : example) {
    const std::string layer_prefix = arch.name("layer_prefix", layer);
    std::vector<int64_t> of_type;
    for (size_t i = 0; i < layers.types.size(); ++i)
      if (layers.types[i] == symbol) of_type.push_back(static_cast<int64_t>(i));
    out << "\n" << type_title(symbol) << " layers (" << of_type.size() << "): " << join(of_type)
        << "\n  tensors of layer " << layer << ", names under " << layer_prefix << ":\n";
    const std::string mixer_prefix =
        symbol == "*" ? arch.name("attention_prefix", layer) : layer_prefix + mixer_infix(symbol);
    size_t others = 0;
    uint64_t other_bytes = 0;
    for (size_t i = 0; i < targets.size(); ++i) {
      if (target_layers[i] != layer) continue;
      const TargetTensor& target = targets[i];
      if (target.name.compare(0, mixer_prefix.size(), mixer_prefix) != 0) {
        ++others;
        other_bytes += target.nbytes();
        continue;
      }
      std::string from = target.how;
      if (!target.sources.empty()) {
        from += " <- ";
        for (size_t s = 0; s < target.sources.size(); ++s) from += (s ? ", " : "") + strip(target.sources[s], layer_prefix);
      }
      out << "  " << pad(strip(target.name, layer_prefix), 34) << pad(dtype_short_name(target.dtype), 6)
          << pad(shape_text(target.shape), 16) << from << "\n";
    }
    out << "  + " << others << " tensors copied unchanged (norms, MLP/MoE; " << format_bytes(other_bytes) << ")\n";
    std::vector<std::string> not_carried;
    for (const auto& name : dropped)
      if (name.compare(0, layer_prefix.size(), layer_prefix) == 0) not_carried.push_back(strip(name, layer_prefix));
    if (!not_carried.empty()) {
      out << "  not carried over:";
      for (const auto& name : not_carried) out << " " << name;
      out << "\n";
    }
  }

  if (every_tensor) {
    out << "\nevery output tensor:\n";
    for (const auto& target : targets)
      out << "  " << pad(target.name, 56) << pad(dtype_short_name(target.dtype), 6) << pad(shape_text(target.shape), 18)
          << target.how << "\n";
  }

  size_t copies = 0;
  uint64_t copy_bytes = 0;
  for (const auto& target : targets)
    if (target.copy) {
      ++copies;
      copy_bytes += target.nbytes();
    }
  out << "\ntotals\n";
  out << "  source tensors read    " << (weights->names().size() - dropped.size()) << " of " << weights->names().size()
      << " (" << format_bytes(read_bytes) << ")\n";
  out << "  output tensors         " << targets.size() << " (" << format_bytes(output_bytes) << "), " << copies
      << " copied (" << format_bytes(copy_bytes) << "), " << targets.size() - copies << " computed or initialised\n";
  out << "  output files           " << shard_count << " shard" << (shard_count == 1 ? "" : "s") << " of <= "
      << format_bytes(max_shard_bytes) << (shard_count > 1 ? " + index" : "")
      << ", config.json, prime.json, README.md"
      << (source.dir.empty() ? "" : ", tokenizer files and generation_config.json when present") << "\n";
  out << "  not carried over       " << dropped.size() << " source tensors\n";
  out << "  estimated peak memory  " << format_bytes(peak_bytes_estimate) << " (largest step: " << peak_step
      << (source.kind == "synthetic" ? "; a synthetic source makes each tensor whole in fp32, a checkpoint streams" : "")
      << ")\n";
  return out.str();
}

std::string ConversionPlan::plan_target_line() const {
  std::ostringstream out;
  out << config.value("model_type", "") << " (" << config["architectures"][0].get<std::string>() << "): ";
  std::map<std::string, int64_t> counts;
  for (const auto& symbol : layers.types) counts[symbol] += 1;
  bool first = true;
  for (const auto& [symbol, count] : counts) {
    out << (first ? "" : " + ") << count << (symbol == "*" ? " attention" : " " + symbol);
    first = false;
  }
  // How the layers were chosen: "ratio 1:3 (n_attn = ...), placed uniform", "ratio 1:3 (...), by scores
  // FILE [format]", "by --pattern", "by --keep-attention".
  out << "; ";
  const std::string& method = layers.method;
  if (layers.ratio) {
    const int64_t L = static_cast<int64_t>(layers.types.size());
    out << "ratio " << layers.ratio->text() << " (n_attn = round(" << L << "*" << layers.ratio->attention << "/"
        << layers.ratio->attention + layers.ratio->ssm << ") = " << layers.count("*") << ")";
    if (method != "ratio" && method != "scores") out << ", placed " << method;
  } else if (method == "pattern" || method == "keep-attention") {
    out << "by --" << method;
  } else {
    out << method;
  }
  if (layers.scores)
    out << (layers.ratio ? ", " : "") << "by scores " << layers.scores->path << " [" << layers.scores->format << "]";
  return out.str();
}

}  // namespace prime::convert

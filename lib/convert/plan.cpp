#include "convert/plan.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>

#include "io/model_config.h"
#include "util/error.h"

namespace prime::convert {
namespace {

std::string trim(const std::string& text) {
  const auto begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  return text.substr(begin, text.find_last_not_of(" \t\r\n") - begin + 1);
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, separator)) parts.push_back(trim(part));
  if (!text.empty() && text.back() == separator) parts.push_back("");
  return parts;
}

bool parse_int(const std::string& text, int64_t* value) {
  if (text.empty()) return false;
  try {
    size_t used = 0;
    *value = std::stoll(text, &used);
    return used == text.size();
  } catch (const std::exception&) {
    return false;
  }
}

bool parse_double(const std::string& text, double* value) {
  if (text.empty()) return false;
  try {
    size_t used = 0;
    *value = std::stod(text, &used);
    return used == text.size() && std::isfinite(*value);
  } catch (const std::exception&) {
    return false;
  }
}

std::string join_indices(const std::vector<int64_t>& indices) {
  std::string text;
  for (size_t i = 0; i < indices.size(); ++i) text += (i ? "," : "") + std::to_string(indices[i]);
  return text;
}

std::vector<std::string> pattern_from_attention(int64_t num_layers, const std::vector<int64_t>& attention,
                                                const std::string& target) {
  std::vector<std::string> types(num_layers, target);
  for (int64_t layer : attention) types[layer] = "*";
  return types;
}

}  // namespace

Ratio parse_ratio(const std::string& text, const std::string& flag) {
  const auto parts = split(text, ':');
  Ratio ratio;
  if (parts.size() != 2 || !parse_int(parts[0], &ratio.attention) || !parse_int(parts[1], &ratio.ssm) ||
      ratio.attention < 0 || ratio.ssm < 0)
    throw user_error(flag, " '", text, "' is malformed: expected A:S with non-negative integers, attention : SSM ",
                     "layers (e.g. 1:3, or 0:1 for all SSM)");
  if (ratio.attention == 0 && ratio.ssm == 0) throw user_error(flag, " 0:0 is meaningless (expected e.g. 1:3)");
  return ratio;
}

int64_t attention_layer_count(int64_t num_layers, const Ratio& ratio) {
  const int64_t total = ratio.attention + ratio.ssm;
  if (ratio.attention == 0) return 0;
  // A:0 asks for every layer as attention, like an all-'*' --pattern: the identity conversion
  // (a control whose output reproduces the source).
  if (ratio.ssm == 0) return num_layers;
  // round(L*A/T) with halves up: floor((2LA + T) / 2T).
  int64_t count = (2 * num_layers * ratio.attention + total) / (2 * total);
  count = std::max<int64_t>(count, 1);
  if (count >= num_layers)
    throw user_error("--ratio ", ratio.text(), " cannot be met with ", num_layers, " layers: round(", num_layers,
                     "*", ratio.attention, "/", total, ") = ", count,
                     " attention layers leaves no layer to convert");
  return count;
}

std::string parse_layer_type(const std::string& text) {
  std::string upper;
  for (char c : trim(text)) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (upper == "MAMBA2" || upper == "MAMBA") upper = "M2";
  if (upper == "GKA" || upper == "GDN" || upper == "M2" || upper == "SWA") return upper;
  throw user_error("unknown --layer '", text, "' (known: GKA, GDN, M2, SWA)");
}

std::vector<int64_t> uniform_placement(int64_t num_layers, int64_t num_attention) {
  std::vector<int64_t> layers;
  for (int64_t k = 0; k < num_attention; ++k) layers.push_back((2 * k + 1) * num_layers / (2 * num_attention));
  return layers;
}

std::vector<int64_t> middle_placement(int64_t num_layers, int64_t num_attention) {
  std::vector<int64_t> layers(num_attention);
  std::iota(layers.begin(), layers.end(), (num_layers - num_attention) / 2);
  return layers;
}

std::vector<int64_t> parse_layer_list(const std::string& text, int64_t num_layers, const std::string& flag) {
  if (trim(text).empty()) throw user_error(flag, " is empty (expected layer indices like 3,7,11)");
  std::vector<int64_t> layers;
  for (const auto& part : split(text, ',')) {
    int64_t layer = 0;
    if (!parse_int(part, &layer)) throw user_error(flag, ": '", part, "' is not a layer index");
    if (layer < 0 || layer >= num_layers)
      throw user_error(flag, ": layer ", layer, " is out of range (the model has layers 0..", num_layers - 1, ")");
    if (std::find(layers.begin(), layers.end(), layer) != layers.end())
      throw user_error(flag, ": layer ", layer, " is listed twice");
    layers.push_back(layer);
  }
  std::sort(layers.begin(), layers.end());
  return layers;
}

LayerScores parse_layer_scores(const std::string& text, int64_t num_layers, const std::string& where) {
  LayerScores result;
  result.path = where;
  std::map<int64_t, double> by_layer;
  std::stringstream lines(text);
  std::string line;
  size_t line_number = 0, value_columns = 0;
  bool first = true;
  while (std::getline(lines, line)) {
    ++line_number;
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    const auto fields = split(line, ',');
    int64_t layer = 0;
    if (first && !parse_int(fields[0], &layer)) {  // a header row
      result.columns.assign(fields.begin() + 1, fields.end());
      value_columns = result.columns.size();
      first = false;
      continue;
    }
    first = false;
    if (fields.size() < 2) throw user_error(where, ":", line_number, ": expected layer,score, got '", line, "'");
    if (value_columns == 0) value_columns = fields.size() - 1;
    if (fields.size() - 1 != value_columns)
      throw user_error(where, ":", line_number, ": expected ", value_columns + 1, " columns, got ", fields.size());
    if (!parse_int(fields[0], &layer)) throw user_error(where, ":", line_number, ": '", fields[0], "' is not a layer index");
    double sum = 0;
    for (size_t column = 1; column < fields.size(); ++column) {
      double value = 0;
      if (!parse_double(fields[column], &value))
        throw user_error(where, ":", line_number, ": '", fields[column], "' is not a finite number");
      sum += value;
    }
    const double mean = sum / static_cast<double>(value_columns);
    if (layer == -1) {  // HMF: the unmodified model's scores
      result.baseline = mean;
      continue;
    }
    if (layer < 0 || layer >= num_layers)
      throw user_error(where, ":", line_number, ": layer ", layer, " is out of range (the model has layers 0..",
                       num_layers - 1, ")");
    if (!by_layer.emplace(layer, mean).second)
      throw user_error(where, ":", line_number, ": layer ", layer, " has a second score");
  }
  std::vector<int64_t> missing;
  for (int64_t layer = 0; layer < num_layers; ++layer)
    if (!by_layer.count(layer)) missing.push_back(layer);
  if (!missing.empty())
    throw user_error(where, ": no score for layer(s) ", join_indices(missing), " (every layer 0..", num_layers - 1,
                     " needs one)");
  for (const auto& [layer, score] : by_layer) result.scores.push_back(score);
  result.format = value_columns == 1 ? "layer,score"
                                     : "importance CSV (mean of " + std::to_string(value_columns) + " task columns)";
  return result;
}

LayerScores read_layer_scores(const std::filesystem::path& path, int64_t num_layers) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw user_error("cannot read scores file ", path.string());
  std::stringstream content;
  content << in.rdbuf();
  return parse_layer_scores(content.str(), num_layers, path.string());
}

std::vector<int64_t> lowest_scoring_layers(const LayerScores& scores, int64_t count) {
  std::vector<int64_t> order(scores.scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return scores.scores[a] < scores.scores[b]; });
  order.resize(count);
  std::sort(order.begin(), order.end());
  return order;
}

std::string LayerPlan::pattern() const { return io::join_layer_pattern(types); }

int64_t LayerPlan::count(const std::string& symbol) const {
  return std::count(types.begin(), types.end(), symbol);
}

std::vector<int64_t> LayerPlan::attention_layers() const {
  std::vector<int64_t> layers;
  for (size_t i = 0; i < types.size(); ++i)
    if (types[i] == "*") layers.push_back(static_cast<int64_t>(i));
  return layers;
}

LayerPlan plan_layers(int64_t num_layers, const PlanRequest& request) {
  LayerPlan plan;
  const int choices = !request.placement.empty() + !request.keep_attention.empty() + !request.pattern.empty() +
                      !request.scores.empty();
  if (choices > 1)
    throw user_error("choose one of --placement, --keep-attention, --pattern and --scores");
  if (!request.pattern.empty()) {
    if (!request.layer.empty() || !request.ratio.empty())
      throw user_error("--pattern gives every layer's type; drop --layer and --ratio");
    plan.method = "pattern";
    plan.types = io::parse_layer_pattern(request.pattern, "--pattern");
    if (static_cast<int64_t>(plan.types.size()) != num_layers)
      throw user_error("--pattern has ", plan.types.size(), " layers but the source has ", num_layers);
    return plan;
  }
  if (request.layer.empty()) throw user_error("--layer is required (GKA, GDN, M2 or SWA) unless --pattern is given");
  plan.target = parse_layer_type(request.layer);
  if (!request.ratio.empty()) plan.ratio = parse_ratio(request.ratio);

  if (!request.keep_attention.empty()) {
    plan.method = "keep-attention";
    const auto keep = parse_layer_list(request.keep_attention, num_layers, "--keep-attention");
    if (plan.ratio) {
      const int64_t expected = attention_layer_count(num_layers, *plan.ratio);
      if (expected != static_cast<int64_t>(keep.size()))
        throw user_error("--ratio ", plan.ratio->text(), " means ", expected, " attention layers of ", num_layers,
                         " but --keep-attention lists ", keep.size());
    }
    plan.types = pattern_from_attention(num_layers, keep, plan.target);
    return plan;
  }
  if (!plan.ratio) throw user_error("--ratio A:S is required (attention : SSM layers, e.g. 1:3)");
  const int64_t keep_count = attention_layer_count(num_layers, *plan.ratio);
  std::vector<int64_t> keep;
  if (keep_count == num_layers) {  // --ratio A:0
    plan.method = "ratio";
    plan.types.assign(num_layers, "*");
    return plan;
  }
  if (!request.scores.empty()) {
    plan.method = "scores";
    plan.scores = read_layer_scores(request.scores, num_layers);
    keep = lowest_scoring_layers(*plan.scores, keep_count);
  } else {
    plan.method = request.placement.empty() ? "uniform" : request.placement;
    if (plan.method == "uniform")
      keep = uniform_placement(num_layers, keep_count);
    else if (plan.method == "middle")
      keep = middle_placement(num_layers, keep_count);
    else
      throw user_error("unknown --placement '", request.placement, "' (known: uniform, middle)");
  }
  plan.types = pattern_from_attention(num_layers, keep, plan.target);
  return plan;
}

}  // namespace prime::convert

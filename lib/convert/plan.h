// Which layers become which mixer: a ratio with a placement, an explicit list of attention layers
// to keep, an HMF pattern string, or per-layer scores, resolved to one pattern symbol per layer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace prime::convert {

// --ratio A:S = attention layers : SSM layers.
struct Ratio {
  int64_t attention = 0;
  int64_t ssm = 0;
  std::string text() const { return std::to_string(attention) + ":" + std::to_string(ssm); }
};

// "A:S" with non-negative integers, not both zero; UserError otherwise. "1:0" is refused here
// too (nothing would be converted).
Ratio parse_ratio(const std::string& text, const std::string& flag = "--ratio");

// n_attn = round(L*A/(A+S)) where an exact half rounds up (toward more attention, the safer
// side: 1:1 over 3 layers keeps 2), computed in integers; at least 1 when A > 0, 0 when A = 0.
// UserError when the rounding leaves no layer to convert (e.g. 3:1 over 2 layers).
int64_t attention_layer_count(int64_t num_layers, const Ratio& ratio);

// The symbols --layer accepts for replaced layers: GKA, GDN, M2, SWA (case-insensitive; MAMBA2
// and MAMBA are read as M2). UserError listing them otherwise.
std::string parse_layer_type(const std::string& text);

// Kept attention layers, sorted. uniform: one per segment of L/n layers, at the segment's
// middle (floor((2k+1)L/(2n))); middle: a contiguous block centred on the stack.
std::vector<int64_t> uniform_placement(int64_t num_layers, int64_t num_attention);
std::vector<int64_t> middle_placement(int64_t num_layers, int64_t num_attention);

// "3,7,11" -> sorted indices; UserError on a malformed, out-of-range or duplicated index.
std::vector<int64_t> parse_layer_list(const std::string& text, int64_t num_layers, const std::string& flag);

// Per-layer scores: higher = safer to replace with an SSM.
struct LayerScores {
  std::string path;
  std::string format;                // "layer,score" or "importance CSV (mean of N task columns)"
  std::vector<std::string> columns;  // the averaged columns' names (header), when there is one
  std::vector<double> scores;        // one per layer
  std::optional<double> baseline;    // HMF's layer -1 row (the unmodified model), mean of columns
};

// CSV: `layer,score` (header optional) or HMF's importance CSV (`layer_num,task_1,...,task_K`,
// a baseline row with layer -1, task columns averaged). Every layer 0..L-1 exactly once.
LayerScores parse_layer_scores(const std::string& text, int64_t num_layers, const std::string& where);
LayerScores read_layer_scores(const std::filesystem::path& path, int64_t num_layers);

// The `count` lowest-scoring layers (ties: the lower index), sorted by index.
std::vector<int64_t> lowest_scoring_layers(const LayerScores& scores, int64_t count);

// The CLI's placement flags, as given (empty = not given).
struct PlanRequest {
  std::string layer;           // --layer
  std::string ratio;           // --ratio
  std::string placement;       // --placement uniform|middle (default uniform)
  std::string keep_attention;  // --keep-attention i,j,...
  std::string pattern;         // --pattern "*-GKA-..."
  std::string scores;          // --scores FILE
};

struct LayerPlan {
  std::vector<std::string> types;    // one pattern symbol per layer
  std::string method;                // uniform | middle | keep-attention | pattern | scores
  std::string target;                // the --layer symbol; empty for --pattern
  std::optional<Ratio> ratio;        // as asked (absent for --pattern / bare --keep-attention)
  std::optional<LayerScores> scores;

  std::string pattern() const;
  int64_t count(const std::string& symbol) const;
  std::vector<int64_t> attention_layers() const;
};

// Resolves the request for a model of `num_layers` layers. UserError on conflicting or missing
// flags and on every bad value, before anything is read or written.
LayerPlan plan_layers(int64_t num_layers, const PlanRequest& request);

}  // namespace prime::convert

// prime-db report: one self-contained HTML page (no network): the study's Pareto plots as
// inline SVG (gnuplot), a sortable trial table (a few lines of inline JS), each trial's curves
// as small inline SVG line charts.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>

#include <unistd.h>

#include "io/atomic_dir.h"
#include "store/db_commands.h"
#include "store/db_plot.h"
#include "util/error.h"
#include "util/interrupt.h"

namespace prime::store {
namespace {

namespace fs = std::filesystem;

std::string html(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string number(double value) { return number_text(value, ""); }

// A 260x90 line chart of one curve, min/max and last step written on it.
std::string curve_svg(const std::string& name, const std::vector<MetricPoint>& curve) {
  std::vector<MetricPoint> points;
  for (const MetricPoint& point : curve)
    if (std::isfinite(point.value)) points.push_back(point);
  if (points.empty()) return "";
  double low = points[0].value, high = low;
  for (const MetricPoint& point : points) low = std::min(low, point.value), high = std::max(high, point.value);
  const double first = static_cast<double>(points.front().step), last = static_cast<double>(points.back().step);
  const double width = 260, height = 90, left = 4, top = 14, plot_w = 252, plot_h = 62;
  std::ostringstream svg;
  svg << std::setprecision(5) << "<svg class='curve' width='" << width << "' height='" << height
      << "' xmlns='http://www.w3.org/2000/svg'><text x='4' y='11'>" << html(name) << " (min " << number(low) << ", max "
      << number(high) << ")</text><polyline fill='none' stroke='#4a7ab5' stroke-width='1.5' points='";
  // Long curves are thinned to about 300 points: enough for a sparkline.
  const size_t stride = std::max<size_t>(1, points.size() / 300);
  for (size_t index = 0; index < points.size(); index += stride) {
    const double x = left + (last > first ? (points[index].step - first) / (last - first) : 0.5) * plot_w;
    const double y = top + (high > low ? (high - points[index].value) / (high - low) : 0.5) * plot_h;
    svg << x << "," << y << " ";
  }
  svg << "'/><text x='4' y='88'>step " << points.front().step << "</text><text x='256' y='88' text-anchor='end'>"
      << points.back().step << "</text></svg>";
  return svg.str();
}

std::string inline_svg(const std::string& path) {
  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t start = text.find("<svg");
  return start == std::string::npos ? "" : text.substr(start);
}

const char* const kStyle = R"(
body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:top}th{background:#f0f0f0;cursor:pointer;user-select:none}
th:hover{background:#e0e8f4}tr.front td{background:#fff4f0}tr.infeasible td{color:#999}
.plots{display:flex;flex-wrap:wrap}.plots svg{max-width:560px;height:auto;margin:0 12px 12px 0;border:1px solid #eee}
svg.curve{margin:2px;border:1px solid #eee}svg.curve text{font-size:9px;fill:#555}
)";

// Click a header to sort by it; numbers numerically, again to reverse.
const char* const kScript = R"(
document.querySelectorAll('th').forEach(function(th, column) {
  th.addEventListener('click', function() {
    var body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
    var up = th.dataset.order !== 'up'; th.dataset.order = up ? 'up' : 'down';
    rows.sort(function(a, b) {
      var x = a.cells[column].dataset.v || a.cells[column].textContent, y = b.cells[column].dataset.v || b.cells[column].textContent;
      var nx = parseFloat(x), ny = parseFloat(y), c;
      if (!isNaN(nx) && !isNaN(ny)) c = nx - ny; else if (!isNaN(nx)) c = -1; else if (!isNaN(ny)) c = 1; else c = x.localeCompare(y);
      return up ? c : -c;
    });
    rows.forEach(function(row) { body.appendChild(row); });
  });
});
)";


// The plots' working directory in $TMPDIR, removed when done, on error and on interrupt.
class ScratchDirectory {
 public:
  explicit ScratchDirectory(const fs::path& path) : path_(path), cleanup_(path) { fs::create_directories(path_); }
  ~ScratchDirectory() { io::remove_tree(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  RemoveOnInterrupt cleanup_;
};

}  // namespace

void write_report(Store& store, const std::string& study_name, const std::string& out, bool force) {
  io::AtomicFile file(out, force, "--out");  // checked before the store is read
  if (!detail::have_gnuplot())
    throw user_error("gnuplot is not installed (Debian: apt-get install gnuplot-nox); the report's Pareto plots need it");
  const Study study = store.study(study_name);
  const ParetoTable table = pareto_table(store, study_name, study.objectives, false, true);
  std::map<int64_t, const ParetoRow*> placed;
  for (const ParetoRow& row : table.rows) placed[row.trial.id] = &row;

  std::ostringstream page;
  page << "<!DOCTYPE html><html><head><meta charset='utf-8'><title>" << html(study.name) << " - prime study report</title><style>"
       << kStyle << "</style></head><body><h1>Study " << html(study.name) << "</h1><p>Objectives: ";
  for (const Objective& objective : study.objectives) page << "<code>" << html(objective_text(objective)) << "</code> ";
  for (const std::string& constraint : study.constraints) page << " · constraint <code>" << html(constraint) << "</code>";
  const auto trials = store.trials(study.id);
  page << "<br>" << trials.size() << " trials, " << table.rows.size() << " complete, "
       << std::count_if(table.rows.begin(), table.rows.end(), [](const ParetoRow& r) { return r.on_front; })
       << " on the Pareto front.</p>";

  // One plot per pair of objectives (the first three).
  page << "<h2>Pareto fronts</h2><div class='plots'>";
  const size_t shown = std::min<size_t>(study.objectives.size(), 3);
  const ScratchDirectory scratch_directory(fs::temp_directory_path() / ("prime_report_" + std::to_string(::getpid())));
  const fs::path& scratch = scratch_directory.path();
  for (size_t a = 0; a < shown; ++a)
    for (size_t b = a + 1; b < shown; ++b) {
      const ParetoTable pair = pareto_table(store, study_name, {study.objectives[a], study.objectives[b]}, false);
      const std::string stem = (scratch / ("pareto_" + std::to_string(a) + "_" + std::to_string(b))).string();
      detail::render_pareto(pair, stem + ".svg", true);
      page << inline_svg(stem + ".svg");
    }
  if (shown < 2) page << "<p>(one objective: no front to plot)</p>";
  page << "</div>";

  page << "<h2>Trials</h2><p>Click a column to sort. Front trials are tinted, infeasible ones grey.</p><table><thead><tr>"
       << "<th>trial</th><th>number</th><th>state</th><th>label</th><th>params</th>";
  for (const Objective& objective : study.objectives) page << "<th>" << html(objective_text(objective)) << "</th>";
  page << "<th>front rank</th><th>attributes</th><th>curves</th></tr></thead><tbody>";
  for (const Trial& trial : trials) {
    const auto found = placed.find(trial.id);
    const ParetoRow* row = found == placed.end() ? nullptr : found->second;
    page << "<tr class='" << (row && row->on_front ? "front" : "") << (trial.infeasible() ? " infeasible" : "") << "'><td>"
         << trial.id << "</td><td>" << trial.number << "</td><td>" << trial_state_name(trial.state)
         << (trial.pruned_step ? " @" + std::to_string(*trial.pruned_step) : "") << "</td><td>" << html(trial_label(trial))
         << "</td><td>";
    for (const TrialParam& p : trial.params) page << html(p.name) << "=" << html(p.value) << "<br>";
    page << "</td>";
    for (size_t k = 0; k < study.objectives.size(); ++k)
      page << "<td>" << (k < trial.values.size() && trial.values[k] ? number(*trial.values[k]) : "") << "</td>";
    page << "<td>" << (row && row->rank >= 0 && std::none_of(row->point.begin(), row->point.end(), [](double v) { return std::isnan(v); })
                           ? std::to_string(row->rank)
                           : "") << "</td><td>";
    for (const auto& [key, value] : trial.attrs) page << html(key) << "=" << html(value) << "<br>";
    if (!trial.error.empty()) page << "<i>" << html(trial.error) << "</i>";
    page << "</td><td>";
    for (const std::string& metric : store.metric_names(trial.id))
      if (metric != kStageMetric)
        for (const NamedCurve& piece : store.stage_curves(trial.id, metric)) page << curve_svg(piece.name, piece.points);
    page << "</td></tr>\n";
  }
  page << "</tbody></table><script>" << kScript << "</script></body></html>\n";
  file.write(page.str());
  file.commit();
}

}  // namespace prime::store

// prime-db plot / curves: the data and the gnuplot script are written beside the image so a
// user can restyle it and re-run `gnuplot NAME.gp`.
#include "store/db_plot.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <functional>
#include <set>
#include <sstream>

#include "io/atomic_dir.h"
#include "store/pareto.h"
#include "util/error.h"
#include "util/interrupt.h"

namespace prime::store {
namespace detail {
namespace {

namespace fs = std::filesystem;

std::string terminal_for(const std::string& image) {
  const std::string extension = fs::path(image).extension().string();
  if (extension == ".png") return "pngcairo size 1000,700 noenhanced font 'Sans,10'";
  if (extension == ".svg") return "svg size 1000,700 dynamic noenhanced font 'Sans,10' background '#ffffff'";
  throw user_error("--out '", image, "' must end in .png or .svg");
}

// gnuplot double-quoted strings: backslashes and quotes escaped.
std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (c != '\n') out += c;
  }
  return out + "\"";
}

// Data-file labels cannot hold a double quote at all.
std::string data_label(std::string text) {
  std::replace(text.begin(), text.end(), '"', '\'');
  return "\"" + text + "\"";
}

std::string shell_quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

namespace {

// Runs gnuplot on `script` from the script's directory, where its data and output names are;
// `image` (the output's staging name) must exist afterwards. `what` names the plot in errors.
void run_gnuplot(const std::string& script, const std::string& image, const std::string& what) {
  const fs::path script_path = fs::absolute(script);
  const std::string log = script_path.string() + ".log";
  const RemoveOnInterrupt log_cleanup(log);
  const std::string command = "cd " + shell_quoted(script_path.parent_path().string()) + " && gnuplot " +
                              shell_quoted(script_path.filename().string()) + " >" + shell_quoted(log) + " 2>&1";
  const int status = std::system(command.c_str());
  std::ifstream in(log);
  const std::string messages((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  fs::remove(log);
  if (status != 0 || !fs::exists(image)) throw internal_error("gnuplot failed drawing ", what, ":\n", messages);
}

// OUT (.png or .svg) drawn by gnuplot, with the data and the script beside it (OUT's stem + .dat
// and .gp). Each of the three is checked against --force before anything is written, and appears
// complete or not at all. script_text(data name, output name) is the script reading that data file
// and drawing to that output, both names relative to the script's directory.
void write_plot(const std::string& image, bool force, const std::string& data_text,
                const std::function<std::string(const std::string& data, const std::string& output)>& script_text) {
  terminal_for(image);  // refuses other extensions before anything is written
  const fs::path stem = fs::path(image).parent_path() / fs::path(image).stem();
  io::AtomicFile image_file(image, force, "--out");
  io::AtomicFile data_file(stem.string() + ".dat", force, "--out's data file");
  io::AtomicFile script_file(stem.string() + ".gp", force, "--out's gnuplot script");
  const std::string data_name = data_file.final_path().filename().string();
  data_file.write(data_text);
  script_file.write(script_text(data_name, image_file.final_path().filename().string()));
  if (!have_gnuplot()) {
    // The data and the script alone, and no older image beside them that they do not draw.
    data_file.commit();
    script_file.commit();
    std::error_code ignored;
    if (force) fs::remove(image_file.final_path(), ignored);
    throw user_error("gnuplot is not installed (Debian: apt-get install gnuplot-nox); the data and script are in ",
                     script_file.final_path().string(), " and beside it: `gnuplot ",
                     script_file.final_path().filename().string(), "` there draws ",
                     image_file.final_path().filename().string(), " (or run this again with --force)");
  }
  // gnuplot reads the data and draws the image at their staging names, from a copy of the script
  // that names them; what it leaves is committed only once it succeeded.
  io::AtomicFile run_script(script_file.final_path(), true, "--out's gnuplot script");
  run_script.write(script_text(data_file.staging().filename().string(), image_file.staging().filename().string()));
  run_gnuplot(run_script.staging().string(), image_file.staging().string(), image_file.final_path().string());
  data_file.commit();
  script_file.commit();
  image_file.commit();
}

}  // namespace

void render_pareto(const ParetoTable& table, const std::string& image, bool force) {
  // One block, rows grouped (0 dominated, 1 infeasible, 2 front sorted by x) so the front's
  // rows are contiguous and its line connects only them.
  // The highlighted front is that of the feasible trials; infeasible ones are greyed wherever
  // they lie.
  std::vector<std::vector<double>> feasible_points;
  std::vector<const ParetoRow*> feasible_rows;
  for (const ParetoRow& row : table.rows)
    if (row.feasible) {
      feasible_points.push_back({row.point[0], row.point[1]});
      feasible_rows.push_back(&row);
    }
  std::set<const ParetoRow*> front;
  for (size_t index : pareto_front(feasible_points, {table.objectives[0].direction, table.objectives[1].direction}))
    front.insert(feasible_rows[index]);
  std::vector<std::tuple<int, double, double, std::string>> rows;
  for (const ParetoRow& row : table.rows) {
    if (std::isnan(row.point[0]) || std::isnan(row.point[1])) continue;
    const int group = !row.feasible ? 1 : front.count(&row) ? 2 : 0;
    rows.emplace_back(group, row.point[0], row.point[1], trial_label(row.trial));
  }
  std::sort(rows.begin(), rows.end());
  std::ostringstream data;
  data << "# " << table.objectives[0].name << " " << table.objectives[1].name
       << " label group (0 dominated, 1 infeasible, 2 Pareto front)\n" << std::setprecision(10);
  for (const auto& [group, x, y, label] : rows) data << x << " " << y << " " << data_label(label) << " " << group << "\n";
  if (rows.empty()) data << "NaN NaN \"\" 0\n";
  const std::string script_name = fs::path(image).stem().string() + ".gp";
  write_plot(image, force, data.str(), [&](const std::string& data_name, const std::string& output) {
    std::ostringstream out;
    out << "# Pareto plot of study " << table.study.name << ": `gnuplot " << script_name
        << "` from this directory redraws it.\n"
        << "set terminal " << terminal_for(image) << "\n"
        << "set output " << quoted(output) << "\n"
        << "set title " << quoted("study " + table.study.name + ": Pareto front (" + objective_text(table.objectives[0]) +
                                  ", " + objective_text(table.objectives[1]) + ")")
        << "\n"
        << "set xlabel " << quoted(axis_title(table.objectives[0].name)) << "\n"
        << "set ylabel " << quoted(axis_title(table.objectives[1].name)) << "\n"
        << "set grid lc rgb '#dddddd'\nset key outside right top\nset offsets graph 0.08, graph 0.08, graph 0.08, graph 0.08\n"
        << "data = " << quoted(data_name) << "\n"
        << "plot data using 1:($4 == 0 ? $2 : 1/0) with points pt 7 ps 1.3 lc rgb '#4a7ab5' title 'dominated', \\\n"
        << "     data using 1:($4 == 1 ? $2 : 1/0) with points pt 7 ps 1.3 lc rgb '#b0b0b0' title 'infeasible', \\\n"
        << "     data using 1:($4 == 2 ? $2 : 1/0) with linespoints pt 7 ps 1.7 lw 2 lc rgb '#d62728' title 'Pareto front (feasible)', \\\n"
        << "     data using 1:2:3 with labels offset char 0.8, char 0.7 left font ',8' tc rgb '#333333' notitle\n";
    return out.str();
  });
}

}  // namespace detail

namespace {
// One metric: its own title; several with one unit ("val_loss", "eval_loss"): "value (nats/token)".
std::string shared_axis_title(const std::vector<std::string>& metrics) {
  if (metrics.size() == 1) return axis_title(metrics[0]);
  std::string unit;
  for (const std::string& metric : metrics) {
    const std::string title = axis_title(metric), this_unit = title.substr(metric.size());
    if (this_unit.empty() || (!unit.empty() && this_unit != unit)) return "value";
    unit = this_unit;
  }
  return "value" + unit;
}
}  // namespace

void plot_pareto(Store& store, const std::string& study, const Objective& x, const Objective& y, const std::string& out,
                 bool feasible_only, bool force) {
  const ParetoTable table = pareto_table(store, study, {x, y}, feasible_only);
  detail::render_pareto(table, out, force);
}

void plot_curves(Store& store, int64_t trial_id, const std::vector<std::string>& metrics, const std::string& out,
                 bool force) {
  namespace fs = std::filesystem;
  const TrialDetail detail = store.trial_detail(trial_id);
  std::vector<std::string> plotted;
  std::ostringstream data;
  data << "# metric step value\n" << std::setprecision(10);
  std::vector<std::string> lines;  // a line per metric, or per stage of a metric that spans several
  for (const std::string& metric : metrics) {
    const std::vector<NamedCurve> pieces = store.stage_curves(trial_id, metric);
    if (pieces.front().points.empty()) {
      std::string known;
      for (const auto& name : store.metric_names(trial_id)) known += (known.empty() ? "" : ", ") + name;
      throw user_error("trial ", trial_id, " has no metric '", metric, "' (it has: ", known.empty() ? "none" : known, ")");
    }
    for (const NamedCurve& piece : pieces) {
      bool any = false;  // a piece of only non-finite values (mfu on a CPU) gets no line
      for (const MetricPoint& point : piece.points)
        if (std::isfinite(point.value)) {
          data << detail::data_label(piece.name) << " " << point.step << " " << point.value << "\n";
          any = true;
        }
      data << "\n";  // a blank line ends each line
      if (any) lines.push_back(piece.name);
    }
    plotted.push_back(metric);
  }
  if (lines.empty()) throw user_error("trial ", trial_id, ": no finite value to plot in the metrics asked for");
  const std::string script_name = fs::path(out).stem().string() + ".gp";
  detail::write_plot(out, force, data.str(), [&](const std::string& data_name, const std::string& output) {
    std::ostringstream file;
    file << "# Curves of trial " << trial_id << ": `gnuplot " << script_name << "` from this directory redraws them.\n"
         << "set terminal " << detail::terminal_for(out) << "\n"
         << "set output " << detail::quoted(output) << "\n"
         << "set title " << detail::quoted("trial " + std::to_string(trial_id) + " (" + trial_label(detail.trial) +
                                           ", study " + detail.study.name + ")")
         << "\nset xlabel 'step'\nset ylabel " << detail::quoted(shared_axis_title(plotted)) << "\n"
         << "set grid lc rgb '#dddddd'\nset key outside right top\n"
         << "data = " << detail::quoted(data_name) << "\nplot ";
    for (size_t index = 0; index < lines.size(); ++index)
      file << (index ? ", \\\n     " : "") << "data using 2:(strcol(1) eq " << detail::quoted(lines[index])
           << " ? $3 : 1/0) with lines lw 2 title " << detail::quoted(lines[index]);
    file << "\n";
    return file.str();
  });
}

}  // namespace prime::store

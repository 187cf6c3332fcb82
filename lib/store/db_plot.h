// gnuplot helpers shared by prime-db plot and report (internal to lib/store).
#pragma once

#include <string>

#include "store/db_commands.h"

namespace prime::store::detail {

// Whether gnuplot is on PATH.
bool have_gnuplot();

// A Pareto scatter of table's first two objectives drawn by gnuplot to `image` (.png or .svg),
// with image's stem + .dat and .gp beside it; existing files are replaced only with force.
void render_pareto(const ParetoTable& table, const std::string& image, bool force);

}  // namespace prime::store::detail

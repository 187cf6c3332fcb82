// gnuplot helpers shared by prime-db plot and report (internal to lib/store).
#pragma once

#include <string>

#include "store/db_commands.h"

namespace prime::store::detail {

// Writes `stem`.dat and `stem`.gp for a Pareto scatter of table's first two objectives and runs
// gnuplot to `image` (.png or .svg).
void render_pareto(const ParetoTable& table, const std::string& stem, const std::string& image);

}  // namespace prime::store::detail

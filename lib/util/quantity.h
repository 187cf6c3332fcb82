// Numbers with a size suffix, as every command and spec writes them: K, M, B (or G) are binary
// multiples (256K tokens = 64 sequences of 4096), KiB/MiB/GiB/TiB too; KB/MB/GB/TB are decimal.
// Lower-case k, m, b, g are accepted.
#pragma once

#include <optional>
#include <string>

namespace prime {

// The value of "1.5B", "64MiB", "500MB", "1e-3", "4096"; nullopt when the text is not one.
std::optional<double> parse_quantity_text(const std::string& text);

}  // namespace prime

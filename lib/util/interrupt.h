// Partial outputs do not outlive an interrupted command: paths registered here (a staging
// directory, a temporary file) are removed when SIGINT, SIGTERM, SIGHUP or SIGPIPE ends the process, and
// the process then dies of that signal as it would have. SIGKILL cannot be caught; writers name
// their staging paths after their pid so the next run can remove what a dead process left
// (see stale_staging_pid).
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace prime {

// Installs the handlers (once; later calls do nothing). Every prime-<verb> main does this
// through parse_command_line.
void install_interrupt_cleanup();

// Registers a path for removal on interrupt for as long as it lives; release() (or the
// destructor) unregisters it, e.g. once the path has been renamed into place. At most 64 paths
// are registered at a time; more are left out (they are still removed on ordinary errors).
class RemoveOnInterrupt {
 public:
  explicit RemoveOnInterrupt(const std::filesystem::path& path);
  RemoveOnInterrupt(const RemoveOnInterrupt&) = delete;
  RemoveOnInterrupt& operator=(const RemoveOnInterrupt&) = delete;
  ~RemoveOnInterrupt() { release(); }
  void release();

 private:
  int slot_ = -1;
};

// Staging names are "<prefix><pid>-<anything>". When `name` starts with `prefix` followed by the
// pid of a process that no longer exists, returns that pid: the entry is a leftover of a killed
// run and may be removed.
std::optional<long> stale_staging_pid(const std::string& name, const std::string& prefix);

}  // namespace prime

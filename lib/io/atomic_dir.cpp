#include "io/atomic_dir.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>  // renameat2 (glibc >= 2.28)
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>

#include "util/cli.h"
#include "util/error.h"

namespace prime::io {
namespace fs = std::filesystem;

namespace {

std::string random_suffix() {
  static constexpr char kDigits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  std::random_device device;
  std::string suffix;
  for (int position = 0; position < 10; ++position) suffix += kDigits[device() % 36];
  return suffix;
}

// A sibling of final_path that does not exist yet, created as a directory when `create`.
fs::path unique_sibling(const fs::path& final_path, const std::string& kind, bool create) {
  const fs::path parent = final_path.parent_path();
  for (int attempt = 0; attempt < 100; ++attempt) {
    fs::path candidate =
        parent / ("." + final_path.filename().string() + "." + kind + "-" + random_suffix());
    if (!create) {
      std::error_code error;
      if (!fs::exists(fs::symlink_status(candidate, error))) return candidate;
      continue;
    }
    if (mkdir(candidate.c_str(), 0755) == 0) return candidate;
    if (errno != EEXIST)
      throw user_error("cannot create ", candidate.string(), ": ", std::strerror(errno));
  }
  throw user_error("cannot find a free temporary name beside ", final_path.string());
}

void fsync_path(const fs::path& path, bool directory) {
  int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) throw user_error("cannot open ", path.string(), " to sync: ", std::strerror(errno));
  const int result = fsync(fd);
  const int saved = errno;
  close(fd);
  if (result != 0) throw user_error("cannot sync ", path.string(), ": ", std::strerror(saved));
}

// Files first, then each directory after its contents, so the entries it names are durable.
void fsync_tree(const fs::path& dir) {
  for (const auto& item : fs::directory_iterator(dir)) {
    if (item.is_symlink()) continue;
    if (item.is_directory())
      fsync_tree(item.path());
    else if (item.is_regular_file())
      fsync_path(item.path(), false);
  }
  fsync_path(dir, true);
}

// Directories an --overwrite typo must never delete.
bool is_protected(const fs::path& path) {
  std::error_code error;
  const fs::path target = fs::weakly_canonical(path, error);
  if (error || target == target.root_path()) return true;
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    if (fs::weakly_canonical(home, error) == target) return true;
  }
  const fs::path cwd = fs::weakly_canonical(fs::current_path(error), error);
  if (error) return false;
  // target is cwd or an ancestor of it when cwd starts with all of target's components.
  auto cwd_part = cwd.begin();
  for (auto part = target.begin(); part != target.end(); ++part, ++cwd_part)
    if (cwd_part == cwd.end() || *cwd_part != *part) return false;
  return true;
}

int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  return ::remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

}  // namespace

std::error_code remove_tree(const fs::path& path) noexcept {
  struct stat info {};
  if (lstat(path.c_str(), &info) != 0)
    return errno == ENOENT ? std::error_code() : std::error_code(errno, std::generic_category());
  // Depth-first so directories are empty when removed; FTW_PHYS never follows a symlink.
  if (nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
    return std::error_code(errno, std::generic_category());
  return {};
}

AtomicDirectory::AtomicDirectory(fs::path final_path, bool overwrite) : overwrite_(overwrite) {
  final_path = fs::absolute(final_path).lexically_normal();
  if (final_path.filename().empty()) final_path = final_path.parent_path();  // trailing '/'
  final_path_ = final_path;
  const fs::path parent = final_path_.parent_path();
  const std::string where = final_path_.string();

  std::error_code error;
  if (!fs::is_directory(parent, error))
    throw user_error("cannot create output ", where, ": parent directory ", parent.string(),
                     " does not exist");
  if (access(parent.c_str(), W_OK | X_OK) != 0)
    throw user_error("cannot create output ", where, ": parent directory ", parent.string(),
                     " is not writable: ", std::strerror(errno));
  const fs::file_status existing = fs::symlink_status(final_path_, error);
  if (fs::exists(existing)) {
    if (!overwrite)
      throw user_error("output ", where, " already exists (choose another path or allow overwriting it)");
    if (!fs::is_directory(existing))
      throw user_error("output ", where, " exists and is not a directory; refusing to replace it");
    if (is_protected(final_path_))
      throw user_error("refusing to overwrite ", where,
                       ": it is /, $HOME, or the working directory or one of its parents");
  }
  removed_stale_ = remove_stale_staging(final_path_);
  staging_ = unique_sibling(final_path_, "tmp-" + std::to_string(::getpid()), true);
  interrupt_cleanup_ = std::make_unique<RemoveOnInterrupt>(staging_);
}

AtomicDirectory::~AtomicDirectory() {
  if (committed_ || staging_.empty()) return;
  remove_tree(staging_);  // a destructor must not throw; leftovers are named .tmp-<pid>- anyway
}

std::vector<fs::path> remove_stale_staging(const fs::path& final_path) {
  std::vector<fs::path> removed;
  const fs::path parent = final_path.has_parent_path() ? final_path.parent_path() : fs::path(".");
  const std::string prefix = "." + final_path.filename().string() + ".tmp-";
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(parent, error)) {
    const std::string name = entry.path().filename().string();
    if (!stale_staging_pid(name, prefix)) continue;
    if (!remove_tree(entry.path())) removed.push_back(entry.path());
  }
  return removed;
}

void AtomicDirectory::commit() {
  PRIME_CHECK(!committed_, "AtomicDirectory committed twice: ", final_path_.string());
  fsync_tree(staging_);
  const std::string where = final_path_.string();
  std::error_code error;
  const bool replacing = fs::exists(fs::symlink_status(final_path_, error));
  if (replacing && !overwrite_)
    throw user_error("output ", where, " appeared while it was being written; not replacing it");

  fs::path old_contents;  // where the replaced directory ends up, to be removed afterwards
  if (!replacing) {
    // renameat2(RENAME_NOREPLACE) so a directory created meanwhile is never clobbered.
    if (renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, final_path_.c_str(), RENAME_NOREPLACE) != 0) {
      if (errno != EINVAL && errno != ENOSYS)
        throw user_error("cannot rename ", staging_.string(), " to ", where, ": ", std::strerror(errno));
      if (rename(staging_.c_str(), final_path_.c_str()) != 0)
        throw user_error("cannot rename ", staging_.string(), " to ", where, ": ", std::strerror(errno));
    }
  } else if (renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, final_path_.c_str(), RENAME_EXCHANGE) == 0) {
    old_contents = staging_;  // the exchange left the old directory at the staging name
  } else {
    if (errno != EINVAL && errno != ENOSYS)
      throw user_error("cannot replace ", where, ": ", std::strerror(errno));
    // No atomic exchange here: move the old directory aside, then rename, then delete.
    old_contents = unique_sibling(final_path_, "old", false);
    if (rename(final_path_.c_str(), old_contents.c_str()) != 0)
      throw user_error("cannot move ", where, " aside: ", std::strerror(errno));
    if (rename(staging_.c_str(), final_path_.c_str()) != 0) {
      const int saved = errno;
      rename(old_contents.c_str(), final_path_.c_str());  // put the old output back
      throw user_error("cannot rename ", staging_.string(), " to ", where, ": ", std::strerror(saved));
    }
  }
  committed_ = true;
  interrupt_cleanup_.reset();  // staging_ now names the final output (or the replaced one)
  if (!old_contents.empty()) interrupt_cleanup_ = std::make_unique<RemoveOnInterrupt>(old_contents);
  fsync_path(final_path_.parent_path(), true);
  if (!old_contents.empty()) {
    error = remove_tree(old_contents);
    if (error)
      throw user_error("output ", where, " is complete, but the replaced directory ",
                       old_contents.string(), " could not be removed: ", error.message());
  }
}

AtomicFile::AtomicFile(fs::path final_path, bool overwrite, const std::string& flag, std::ostream* announce)
    : final_path_(fs::absolute(final_path)), flag_(flag), overwrite_(overwrite) {
  check_output_file(final_path.string(), flag_, overwrite_);
  std::error_code error;
  if (!overwrite_ && fs::is_symlink(fs::symlink_status(final_path_, error)))
    throw user_error(flag_, " ", final_path.string(), " already exists (choose another path, or --force to replace it)");
  const fs::path parent = final_path_.parent_path();
  if (!fs::is_directory(parent, error))
    throw user_error(flag_, " ", final_path.string(), ": directory ", parent.string(), " does not exist");
  removed_stale_ = remove_stale_staging(final_path_);
  if (announce) print_removed_stale(removed_stale_, *announce);
  staging_ = unique_sibling(final_path_, "tmp-" + std::to_string(::getpid()), false);
  interrupt_cleanup_ = std::make_unique<RemoveOnInterrupt>(staging_);
}

void print_removed_stale(const std::vector<fs::path>& removed, std::ostream& out) {
  for (const fs::path& path : removed)
    out << "removed " << path.string() << ", the partial output of an earlier run that was killed\n";
}

AtomicFile::~AtomicFile() {
  if (!committed_ && !staging_.empty()) ::unlink(staging_.c_str());
}

void AtomicFile::commit() {
  PRIME_CHECK(!committed_, "AtomicFile committed twice: ", final_path_.string());
  const std::string where = final_path_.string();
  // A replaced file keeps its permission bits (a symlink is replaced, so its target's are not taken).
  struct stat existing {};
  if (overwrite_ && ::lstat(final_path_.c_str(), &existing) == 0 && S_ISREG(existing.st_mode))
    ::chmod(staging_.c_str(), existing.st_mode & 07777);
  fsync_path(staging_, false);
  if (overwrite_) {
    if (rename(staging_.c_str(), final_path_.c_str()) != 0)
      throw user_error("cannot rename ", staging_.string(), " to ", where, ": ", std::strerror(errno));
  } else if (renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, final_path_.c_str(), RENAME_NOREPLACE) != 0) {
    if (errno == EEXIST) throw user_error(flag_, " ", where, " appeared while it was being written; not replacing it");
    if (errno != EINVAL && errno != ENOSYS)
      throw user_error("cannot rename ", staging_.string(), " to ", where, ": ", std::strerror(errno));
    if (rename(staging_.c_str(), final_path_.c_str()) != 0)
      throw user_error("cannot rename ", staging_.string(), " to ", where, ": ", std::strerror(errno));
  }
  committed_ = true;
  interrupt_cleanup_.reset();
  fsync_path(final_path_.parent_path(), true);
}

void AtomicFile::write(const std::string& text) const {
  std::ofstream out(staging_, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) throw user_error("cannot write ", staging_.string(), " (for ", final_path_.string(), ")");
}

void write_file_atomically(const fs::path& path, const std::string& text, bool overwrite, const std::string& flag) {
  AtomicFile file(path, overwrite, flag);
  file.write(text);
  file.commit();
}

}  // namespace prime::io

// Outputs that appear complete or not at all: a directory, or a single file, is written under a
// hidden staging name beside its final path, fsync'd, then renamed into place.
#pragma once

#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "util/interrupt.h"

namespace prime::io {

// Removes `path` and everything under it without following symlinks; a missing path is no
// error. Use this, not std::filesystem::remove_all: libtorch.so exports its own copy of that
// function, which wins symbol resolution and crashes (null call) with the system libstdc++.
std::error_code remove_tree(const std::filesystem::path& path) noexcept;

class AtomicDirectory {
 public:
  // Creates "<parent>/.<name>.tmp-<pid>-<random>", removed again if SIGINT/SIGTERM/SIGHUP/SIGPIPE end
  // the process (util/interrupt.h). Staging directories of this name left by processes that no
  // longer exist (a SIGKILL) are removed first: see removed_stale(). UserError when final_path
  // exists and !overwrite, when the parent is missing or not writable, or when overwriting would
  // remove a directory that is never an output (/, $HOME, the working directory or one of its
  // ancestors).
  AtomicDirectory(std::filesystem::path final_path, bool overwrite);
  AtomicDirectory(const AtomicDirectory&) = delete;
  AtomicDirectory& operator=(const AtomicDirectory&) = delete;
  // Not committed: the staging directory is removed recursively.
  ~AtomicDirectory();

  const std::filesystem::path& staging() const { return staging_; }
  const std::filesystem::path& final_path() const { return final_path_; }
  bool committed() const { return committed_; }
  // Leftover staging directories of dead processes removed by the constructor.
  const std::vector<std::filesystem::path>& removed_stale() const { return removed_stale_; }

  // fsyncs every file and directory under staging, puts staging in place of final_path (an
  // atomic exchange when overwriting, where the filesystem supports it), removes the old
  // directory, and fsyncs the parent. Errors are UserErrors with strerror.
  void commit();

 private:
  std::filesystem::path final_path_;
  std::filesystem::path staging_;
  bool overwrite_ = false;
  bool committed_ = false;
  std::vector<std::filesystem::path> removed_stale_;
  std::unique_ptr<RemoveOnInterrupt> interrupt_cleanup_;
};

class AtomicFile {
 public:
  // Names the staging file "<parent>/.<name>.tmp-<pid>-<random>" (not created: write it with any
  // stream or descriptor), removed again if SIGINT/SIGTERM/SIGHUP/SIGPIPE end the process. Staging files
  // of dead processes are removed first (removed_stale()), each announced by a line on `announce`
  // (print_removed_stale) unless it is null. UserError naming `flag` (as check_output_file in
  // util/cli.h) when final_path is a directory or exists (a symlink too, dangling or not) and
  // !overwrite, and when its parent directory is missing. The path is used as given, so "a/../b"
  // means what the kernel makes of it; with overwrite a symlink there is replaced, not followed.
  AtomicFile(std::filesystem::path final_path, bool overwrite, const std::string& flag,
             std::ostream* announce = &std::cerr);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  // Not committed: the staging file is removed.
  ~AtomicFile();

  const std::filesystem::path& staging() const { return staging_; }
  const std::filesystem::path& final_path() const { return final_path_; }
  const std::vector<std::filesystem::path>& removed_stale() const { return removed_stale_; }

  // `text` as the whole content of the staging file (UserError when it cannot be written).
  void write(const std::string& text) const;
  // fsyncs the staging file, renames it over final_path (never over a file that appeared
  // meanwhile unless overwriting), and fsyncs the parent. UserError when the staging file is
  // missing or cannot be moved.
  void commit();

 private:
  std::filesystem::path final_path_;
  std::filesystem::path staging_;
  std::string flag_;
  bool overwrite_ = false;
  bool committed_ = false;
  std::vector<std::filesystem::path> removed_stale_;
  std::unique_ptr<RemoveOnInterrupt> interrupt_cleanup_;
};

// `text` as the whole content of `path`, through an AtomicFile (write, then commit).
void write_file_atomically(const std::filesystem::path& path, const std::string& text, bool overwrite,
                           const std::string& flag);

// "removed P, the partial output of an earlier run that was killed", a line per path.
void print_removed_stale(const std::vector<std::filesystem::path>& removed, std::ostream& out);

// Removes "<parent>/.<name>.tmp-<pid>-*" entries (directories or files) whose pid is dead;
// returns what was removed.
std::vector<std::filesystem::path> remove_stale_staging(const std::filesystem::path& final_path);

}  // namespace prime::io

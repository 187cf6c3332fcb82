#include "util/interrupt.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace prime {
namespace {

constexpr int kSlots = 64;
constexpr size_t kPathBytes = 4096;

// A slot is free (0), being filled (1) or registered (2). The handler reads only registered ones.
struct Slot {
  std::atomic<int> state{0};
  char path[kPathBytes];
};
Slot slots[kSlots];

// Everything below runs inside a signal handler: only async-signal-safe calls (open, close,
// unlinkat, rmdir, lstat, the raw getdents64 system call), no allocation, bounded stack.
struct LinuxDirent64 {
  ino64_t d_ino;
  off64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[];
};

void remove_tree_in_handler(const char* path, int depth);

// Removes the entries of an open directory; returns whether any entry was seen.
bool remove_entries(int dir_fd, const char* path, int depth) {
  char buffer[2048];
  bool any = false;
  for (;;) {
    const long bytes = syscall(SYS_getdents64, dir_fd, buffer, sizeof buffer);
    if (bytes <= 0) return any;
    for (long offset = 0; offset < bytes;) {
      const auto* entry = reinterpret_cast<const LinuxDirent64*>(buffer + offset);
      offset += entry->d_reclen;
      const char* name = entry->d_name;
      if (std::strcmp(name, ".") == 0 || std::strcmp(name, "..") == 0) continue;
      any = true;
      if (unlinkat(dir_fd, name, 0) == 0 || errno != EISDIR) continue;
      // A subdirectory (unlink refuses it with EISDIR): recurse on "path/name".
      char child[kPathBytes];
      const size_t path_length = std::strlen(path), name_length = std::strlen(name);
      if (path_length + 1 + name_length + 1 > sizeof child) continue;
      std::memcpy(child, path, path_length);
      child[path_length] = '/';
      std::memcpy(child + path_length + 1, name, name_length + 1);
      remove_tree_in_handler(child, depth + 1);
    }
  }
}

void remove_tree_in_handler(const char* path, int depth) {
  struct stat info {};
  if (lstat(path, &info) != 0) return;
  if (!S_ISDIR(info.st_mode)) {
    unlink(path);
    return;
  }
  if (depth > 16) return;
  // Other threads may still be adding files: read again until a pass finds nothing.
  for (int pass = 0; pass < 4; ++pass) {
    const int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return;
    const bool any = remove_entries(fd, path, depth);
    close(fd);
    if (rmdir(path) == 0 || !any) return;
  }
}

void on_interrupt(int signal_number) {
  for (Slot& slot : slots)
    if (slot.state.load() == 2) remove_tree_in_handler(slot.path, 0);
  // Die of the signal, as without a handler, so shells and parents see what happened.
  struct sigaction action {};
  action.sa_handler = SIG_DFL;
  sigemptyset(&action.sa_mask);
  sigaction(signal_number, &action, nullptr);
  raise(signal_number);
}

}  // namespace

void install_interrupt_cleanup() {
  static std::atomic<bool> installed{false};
  if (installed.exchange(true)) return;
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  // A second signal while cleaning up waits until the first is handled.
  // SIGPIPE too: `prime-convert ... | head` ends the writer when head exits.
  for (int blocked : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) sigaddset(&action.sa_mask, blocked);
  for (int signal_number : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) {
    struct sigaction previous {};
    sigaction(signal_number, nullptr, &previous);
    if (previous.sa_handler == SIG_IGN) continue;  // e.g. started with nohup: keep ignoring
    sigaction(signal_number, &action, nullptr);
  }
}

RemoveOnInterrupt::RemoveOnInterrupt(const std::filesystem::path& path) {
  const std::string text = std::filesystem::absolute(path).string();
  if (text.size() + 1 > kPathBytes) return;
  for (int index = 0; index < kSlots; ++index) {
    int expected = 0;
    if (!slots[index].state.compare_exchange_strong(expected, 1)) continue;
    std::memcpy(slots[index].path, text.c_str(), text.size() + 1);
    slots[index].state.store(2);
    slot_ = index;
    return;
  }
}

void RemoveOnInterrupt::release() {
  if (slot_ < 0) return;
  slots[slot_].state.store(0);
  slot_ = -1;
}

std::optional<long> stale_staging_pid(const std::string& name, const std::string& prefix) {
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  size_t position = prefix.size();
  long pid = 0;
  while (position < name.size() && name[position] >= '0' && name[position] <= '9' && pid < 1L << 40)
    pid = pid * 10 + (name[position++] - '0');
  if (position == prefix.size() || position >= name.size() || name[position] != '-' || pid <= 0) return std::nullopt;
  if (kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) return std::nullopt;  // alive, or not ours to judge
  return pid;
}

}  // namespace prime

// Helpers for the experiment-store tests: a scratch directory, and the stores to test against
// (an SQLite file always; PostgreSQL when PRIME_TEST_POSTGRES_URL names a server).
#pragma once

#include <catch2/catch.hpp>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "store/database.h"
#include "store/store.h"

namespace prime::test {

class StoreScratch {
 public:
  explicit StoreScratch(const std::string& name)
      : path_(std::filesystem::temp_directory_path() /
              ("prime_store_" + name + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++))) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~StoreScratch() {
    std::error_code ignored;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all, ignored);
    std::filesystem::remove_all(path_, ignored);
  }
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  static std::atomic<int>& counter() {
    static std::atomic<int> value{0};
    return value;
  }
  std::filesystem::path path_;
};

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The server the PostgreSQL tests run against; a value that is not a postgresql:// URL (e.g. a
// setup script's stray output captured with it) is an error rather than a skip.
inline std::string postgres_test_url() {
  const char* env = std::getenv("PRIME_TEST_POSTGRES_URL");
  const std::string url = env ? env : "";
  if (!url.empty() && url.rfind("postgresql://", 0) != 0 && url.rfind("postgres://", 0) != 0)
    throw std::runtime_error("PRIME_TEST_POSTGRES_URL is not a postgresql:// URL: '" + url + "'");
  return url;
}

// A fresh, empty PostgreSQL schema of its own for one test: the returned URL selects it through
// search_path, so tests (and test runs) never see each other's tables.
inline std::string fresh_postgres_store(const std::string& name) {
  const std::string base = postgres_test_url();
  const std::string schema = "prime_test_" + name + "_" + std::to_string(::getpid());
  auto db = store::detail::open_postgres(base, store::detail::Access::ReadWrite);
  db->exec_script("DROP SCHEMA IF EXISTS " + schema + " CASCADE; CREATE SCHEMA " + schema);
  return base + (base.find('?') == std::string::npos ? "?" : "&") + "options=-csearch_path%3D" + schema;
}

// The stores a backend-independent test runs against, named for its sections.
struct TestStore {
  std::string backend;
  std::string url;
};
inline std::vector<TestStore> test_stores(const StoreScratch& scratch, const std::string& name) {
  std::vector<TestStore> stores{{"sqlite", scratch.file(name + ".db")}};
  if (!postgres_test_url().empty())
    stores.push_back({"postgresql", fresh_postgres_store(name)});
  else
    WARN("PRIME_TEST_POSTGRES_URL is not set: the PostgreSQL backend is not tested (see README, Experiment store)");
  return stores;
}

}  // namespace prime::test

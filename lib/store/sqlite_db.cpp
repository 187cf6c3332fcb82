// The SQLite backend: one file, WAL journal, foreign keys on, a generous busy timeout so eight
// workers on one file wait for each other instead of failing, prepared statements cached.
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <unordered_map>

#include "store/database.h"
#include "util/error.h"

namespace prime::store::detail {
namespace {

namespace fs = std::filesystem;

bool writable_by_mode(const std::string& path) {
  struct stat info {};
  // Permission bits, not access(): root may write anything, but a file made read-only says
  // the user does not want it changed.
  return ::stat(path.c_str(), &info) == 0 && (info.st_mode & 0222) != 0;
}

// What the file holds, before SQLite is allowed to touch it (SQLite would happily create a
// -wal beside a text file and only fail on the first read).
void check_path(const std::string& path, Access access) {
  std::error_code error;
  const fs::path file(path);
  if (fs::is_directory(file, error))
    throw user_error("store '", path, "' is a directory; give a file path (e.g. ", (file / "runs.db").string(), ")");
  if (!fs::exists(file, error)) {
    if (access == Access::ReadOnly) throw user_error("store '", path, "' does not exist");
    const fs::path parent = file.parent_path().empty() ? fs::path(".") : file.parent_path();
    if (!fs::is_directory(parent, error)) throw user_error("store '", path, "': directory ", parent.string(), " does not exist");
    if (!writable_by_mode(parent.string())) throw user_error("store '", path, "': directory ", parent.string(), " is read-only");
    return;
  }
  if (!fs::is_regular_file(file, error)) throw user_error("store '", path, "' is not a regular file");
  if (access == Access::ReadWrite && !writable_by_mode(path)) throw user_error("store '", path, "' is read-only");
  if (fs::file_size(file, error) == 0) return;  // an empty file becomes a new store
  char header[16] = {};
  std::ifstream in(path, std::ios::binary);
  in.read(header, sizeof(header));
  if (in.gcount() < 16 || std::memcmp(header, "SQLite format 3", 16) != 0)
    throw user_error("store '", path, "' is not an SQLite database (corrupt, or another kind of file)");
}

class SqliteDatabase : public Database {
 public:
  SqliteDatabase(std::string path, Access access) : path_(std::move(path)) {
    check_path(path_, access);
    const int flags = access == Access::ReadOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    if (sqlite3_open_v2(path_.c_str(), &db_, flags | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
      const std::string message = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      db_ = nullptr;
      throw user_error("cannot open store '", path_, "': ", message);
    }
    sqlite3_busy_timeout(db_, 60000);
    try {
      // WAL is switched on by the schema code once the file is known to be a store (or new):
      // setting it writes to the file, and another program's database must stay untouched.
      exec_script("PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL");
    } catch (const Error& error) {
      close();
      throw user_error("store '", path_, "' is not a usable SQLite database: ", error.what());
    }
  }
  ~SqliteDatabase() override { close(); }

  std::string backend() const override { return "sqlite"; }
  std::string display_url() const override { return path_; }
  std::string row_lock_clause() const override { return ""; }
  std::string id_column() const override { return "INTEGER PRIMARY KEY AUTOINCREMENT"; }
  std::string real_type() const override { return "REAL"; }

  std::vector<Row> query(const std::string& sql, const std::vector<SqlValue>& params) override {
    sqlite3_stmt* statement = prepare(sql);
    sqlite3_reset(statement);
    sqlite3_clear_bindings(statement);
    for (size_t index = 0; index < params.size(); ++index) bind(statement, static_cast<int>(index + 1), params[index]);
    std::vector<Row> rows;
    for (;;) {
      const int rc = sqlite3_step(statement);
      if (rc == SQLITE_DONE) break;
      if (rc != SQLITE_ROW) {
        const std::string message = sqlite3_errmsg(db_);
        sqlite3_reset(statement);
        fail(message, sql, rc);
      }
      Row row(sqlite3_column_count(statement));
      for (int column = 0; column < static_cast<int>(row.size()); ++column) row[column] = read(statement, column);
      rows.push_back(std::move(row));
    }
    sqlite3_reset(statement);
    return rows;
  }

  void exec_script(const std::string& sql) override {
    char* message = nullptr;
    const int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &message);
    if (rc != SQLITE_OK) {
      const std::string text = message ? message : sqlite3_errstr(rc);
      sqlite3_free(message);
      fail(text, sql, rc);
    }
  }

  void begin_write() override { exec_script("BEGIN IMMEDIATE"); }
  void commit() override { exec_script("COMMIT"); }
  void rollback() override { exec_script("ROLLBACK"); }

  bool has_table(const std::string& name) override {
    return !query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", {name}).empty();
  }

 private:
  [[noreturn]] void fail(const std::string& message, const std::string& sql, int rc) {
    const int primary = rc & 0xff;
    if (primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT)
      throw user_error("store '", path_, "' is not a valid SQLite database: ", message);
    if (primary == SQLITE_READONLY) throw user_error("store '", path_, "' is read-only: ", message);
    throw Error("store '" + path_ + "': " + message + " (in: " + sql.substr(0, 120) + ")");
  }

  sqlite3_stmt* prepare(const std::string& sql) {
    if (auto it = cache_.find(sql); it != cache_.end()) return it->second;
    sqlite3_stmt* statement = nullptr;
    const int rc = sqlite3_prepare_v2(db_, sql.c_str(), -1, &statement, nullptr);
    if (rc != SQLITE_OK) fail(sqlite3_errmsg(db_), sql, rc);
    // Bulk inserts build statements of many shapes; keep the cache from growing without bound.
    if (cache_.size() > 64) clear_cache();
    cache_.emplace(sql, statement);
    return statement;
  }

  static void bind(sqlite3_stmt* statement, int index, const SqlValue& value) {
    if (const auto* number = std::get_if<int64_t>(&value))
      sqlite3_bind_int64(statement, index, *number);
    else if (const auto* real = std::get_if<double>(&value))
      sqlite3_bind_double(statement, index, *real);
    else if (const auto* text = std::get_if<std::string>(&value))
      sqlite3_bind_text(statement, index, text->data(), static_cast<int>(text->size()), SQLITE_TRANSIENT);
    else
      sqlite3_bind_null(statement, index);
  }

  static SqlValue read(sqlite3_stmt* statement, int column) {
    switch (sqlite3_column_type(statement, column)) {
      case SQLITE_INTEGER: return static_cast<int64_t>(sqlite3_column_int64(statement, column));
      case SQLITE_FLOAT: return sqlite3_column_double(statement, column);
      case SQLITE_NULL: return std::monostate{};
      default: {
        const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(statement, column));
        return std::string(text, sqlite3_column_bytes(statement, column));
      }
    }
  }

  void clear_cache() {
    for (auto& entry : cache_) sqlite3_finalize(entry.second);
    cache_.clear();
  }

  void close() {
    clear_cache();
    if (db_) sqlite3_close(db_);
    db_ = nullptr;
  }

  std::string path_;
  sqlite3* db_ = nullptr;
  std::unordered_map<std::string, sqlite3_stmt*> cache_;
};

}  // namespace

std::unique_ptr<Database> open_sqlite(const std::string& path, Access access) {
  return std::make_unique<SqliteDatabase>(path, access);
}

}  // namespace prime::store::detail

// The backend connection under a Store: one SQL dialect (SQLite's `?` placeholders; the
// PostgreSQL backend numbers them), typed values in and out, explicit write transactions.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <variant>
#include <vector>

namespace prime::store::detail {

// NULL, INTEGER, REAL or TEXT. PostgreSQL results arrive as TEXT and are converted on reading.
using SqlValue = std::variant<std::monostate, int64_t, double, std::string>;
using Row = std::vector<SqlValue>;

bool is_null(const SqlValue& value);
int64_t as_int(const SqlValue& value);
double as_double(const SqlValue& value);  // NULL -> NaN
std::string as_text(const SqlValue& value);
SqlValue real_or_null(double value);  // non-finite -> NULL (SQLite cannot hold NaN)

class Database {
 public:
  virtual ~Database() = default;
  virtual std::string backend() const = 0;  // "sqlite" | "postgresql"
  // One statement, `?` placeholders bound in order; the rows it returns.
  virtual std::vector<Row> query(const std::string& sql, const std::vector<SqlValue>& params = {}) = 0;
  void exec(const std::string& sql, const std::vector<SqlValue>& params = {}) { query(sql, params); }
  // Several ;-separated statements without parameters (schema scripts).
  virtual void exec_script(const std::string& sql) = 0;
  // A write transaction that holds the write lock from its start (BEGIN IMMEDIATE in SQLite),
  // so read-then-write sequences inside it cannot interleave with another writer's.
  virtual void begin_write() = 0;
  virtual void commit() = 0;
  virtual void rollback() = 0;
  // Appended to a SELECT that picks a row to update in a transaction: row locks where the
  // backend has them (PostgreSQL), nothing where the transaction already serialises (SQLite).
  virtual std::string row_lock_clause() const = 0;
  // Appends rows (row-major `values`, columns.size() per row) to `table`: multi-row INSERTs by
  // default; PostgreSQL streams them with COPY (one parse instead of one per statement).
  virtual void insert_rows(const std::string& table, const std::vector<std::string>& columns,
                           const std::vector<SqlValue>& values);
  // Column type words for schema scripts.
  virtual std::string id_column() const = 0;  // an auto-assigned 64-bit primary key
  virtual std::string real_type() const = 0;
  virtual bool has_table(const std::string& name) = 0;
  // The URL without a password (for messages).
  virtual std::string display_url() const = 0;
};

// Rolls back unless committed: an exception inside leaves the store as it was.
class WriteTransaction {
 public:
  explicit WriteTransaction(Database& db) : db_(db) { db_.begin_write(); }
  ~WriteTransaction() {
    if (!done_) {
      try {
        db_.rollback();
      } catch (...) {
      }
    }
  }
  void commit() {
    db_.commit();
    done_ = true;
  }
  WriteTransaction(const WriteTransaction&) = delete;
  WriteTransaction& operator=(const WriteTransaction&) = delete;

 private:
  Database& db_;
  bool done_ = false;
};

enum class Access { ReadWrite, ReadOnly };
std::unique_ptr<Database> open_sqlite(const std::string& path, Access access);
std::unique_ptr<Database> open_postgres(const std::string& url, Access access);

}  // namespace prime::store::detail

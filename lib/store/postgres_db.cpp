// The PostgreSQL backend (libpq): the same SQL as SQLite with `?` renumbered to $1, $2, ...;
// values travel as text (float8 prints round-trippable digits since PostgreSQL 12).
#include "store/database.h"
#include "util/error.h"

#ifdef PRIME_WITH_LIBPQ
#include <libpq-fe.h>

#include <cmath>
#include <cstdio>
#include <regex>
#endif

namespace prime::store::detail {

#ifdef PRIME_WITH_LIBPQ
namespace {

std::string without_password(const std::string& url) {
  static const std::regex password(R"(^([a-z]+://[^:/@]*):[^@]*@)");
  return std::regex_replace(url, password, "$1:***@");
}

std::string numbered_placeholders(const std::string& sql) {
  std::string out;
  out.reserve(sql.size() + 16);
  int next = 1;
  for (char c : sql) {
    if (c == '?')
      out += "$" + std::to_string(next++);
    else
      out += c;
  }
  return out;
}

std::string param_text(const SqlValue& value) {
  if (const auto* real = std::get_if<double>(&value)) {
    char buffer[32];
    std::snprintf(buffer, sizeof(buffer), "%.17g", *real);
    return buffer;
  }
  return as_text(value);
}

class PostgresDatabase : public Database {
 public:
  PostgresDatabase(const std::string& url, Access access) : display_(without_password(url)) {
    // A dead host must not hang a sweep: 10 s unless the URL sets its own connect_timeout
    // (the expanded URL's parameters override the ones before it).
    const char* keywords[] = {"connect_timeout", "dbname", nullptr};
    const char* values[] = {"10", url.c_str(), nullptr};
    conn_ = PQconnectdbParams(keywords, values, 1);
    if (PQstatus(conn_) != CONNECTION_OK) {
      std::string message = PQerrorMessage(conn_);
      while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
      if (PQconnectionNeedsPassword(conn_))
        message += " (the server wants a password and none was given: set PGPASSWORD or add a ~/.pgpass line, "
                   "which libpq reads)";
      PQfinish(conn_);
      conn_ = nullptr;
      throw user_error("cannot connect to the PostgreSQL store ", display_, ": ", message);
    }
    exec_script("SET client_min_messages = warning");
    if (access == Access::ReadOnly) exec_script("SET default_transaction_read_only = on");
  }
  ~PostgresDatabase() override {
    if (conn_) PQfinish(conn_);
  }

  std::string backend() const override { return "postgresql"; }
  std::string display_url() const override { return display_; }
  std::string row_lock_clause() const override { return " FOR UPDATE SKIP LOCKED"; }
  std::string id_column() const override { return "BIGSERIAL PRIMARY KEY"; }
  std::string real_type() const override { return "DOUBLE PRECISION"; }

  std::vector<Row> query(const std::string& sql, const std::vector<SqlValue>& params) override {
    std::vector<std::string> texts(params.size());
    std::vector<const char*> pointers(params.size(), nullptr);
    for (size_t index = 0; index < params.size(); ++index) {
      if (is_null(params[index])) continue;
      texts[index] = param_text(params[index]);
      pointers[index] = texts[index].c_str();
    }
    PGresult* result = PQexecParams(conn_, numbered_placeholders(sql).c_str(), static_cast<int>(params.size()),
                                    nullptr, pointers.data(), nullptr, nullptr, 0);
    check_keep(result, sql);
    std::vector<Row> rows(PQntuples(result));
    const int columns = PQnfields(result);
    for (int row = 0; row < static_cast<int>(rows.size()); ++row) {
      rows[row].resize(columns);
      for (int column = 0; column < columns; ++column)
        if (!PQgetisnull(result, row, column))
          rows[row][column] = std::string(PQgetvalue(result, row, column), PQgetlength(result, row, column));
    }
    PQclear(result);
    return rows;
  }

  void exec_script(const std::string& sql) override {
    check(PQexec(conn_, sql.c_str()), sql);
  }

  void begin_write() override { exec_script("BEGIN"); }
  void commit() override { exec_script("COMMIT"); }
  void rollback() override { exec_script("ROLLBACK"); }

  void insert_rows(const std::string& table, const std::vector<std::string>& columns,
                   const std::vector<SqlValue>& values) override {
    std::string sql = "COPY " + table + " (";
    for (size_t column = 0; column < columns.size(); ++column) sql += (column ? ", " : "") + columns[column];
    check(PQexec(conn_, (sql + ") FROM STDIN").c_str()), sql, PGRES_COPY_IN);
    std::string data;
    for (size_t index = 0; index < values.size(); ++index) {
      data += copy_text(values[index]);
      data += (index + 1) % columns.size() ? '\t' : '\n';
    }
    const bool sent = PQputCopyData(conn_, data.data(), static_cast<int>(data.size())) == 1 && PQputCopyEnd(conn_, nullptr) == 1;
    if (!sent) throw Error("store " + display_ + ": COPY failed: " + PQerrorMessage(conn_));
    check(PQgetResult(conn_), sql);
    while (PGresult* rest = PQgetResult(conn_)) PQclear(rest);
  }

  bool has_table(const std::string& name) override {
    return !query("SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?",
                  {name})
                .empty();
  }

 private:
  // COPY's text format: NULL is \N; backslash, tab, newline and carriage return escaped.
  static std::string copy_text(const SqlValue& value) {
    if (is_null(value)) return "\\N";
    std::string out;
    for (char c : param_text(value)) {
      if (c == '\\') out += "\\\\";
      else if (c == '\t') out += "\\t";
      else if (c == '\n') out += "\\n";
      else if (c == '\r') out += "\\r";
      else out += c;
    }
    return out;
  }

  void check(PGresult* result, const std::string& sql, ExecStatusType expected = PGRES_COMMAND_OK) {
    const ExecStatusType status = PQresultStatus(result);
    if (status == expected || status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) {
      PQclear(result);
      return;
    }
    std::string message = result ? PQresultErrorMessage(result) : PQerrorMessage(conn_);
    const char* state = result ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
    PQclear(result);
    while (!message.empty() && message.back() == '\n') message.pop_back();
    if (PQstatus(conn_) != CONNECTION_OK) throw user_error("lost the PostgreSQL store ", display_, ": ", message);
    if (state && std::string(state) == "25006") throw user_error("store ", display_, " is opened read-only: ", message);
    throw Error("store " + display_ + ": " + message + " (in: " + sql.substr(0, 120) + ")");
  }

  // As check(), but a good result stays for the caller to read (and clear).
  void check_keep(PGresult* result, const std::string& sql) {
    const ExecStatusType status = PQresultStatus(result);
    if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return;
    check(result, sql);
  }

  std::string display_;
  PGconn* conn_ = nullptr;
};

}  // namespace

std::unique_ptr<Database> open_postgres(const std::string& url, Access access) {
  return std::make_unique<PostgresDatabase>(url, access);
}
#else
std::unique_ptr<Database> open_postgres(const std::string& url, Access) {
  throw user_error("this build has no PostgreSQL support (libpq-dev was missing when it was configured); ",
                   "use an SQLite store path instead of ", url.substr(0, url.find(':')), "://...");
}
#endif

}  // namespace prime::store::detail

// Opening stores: forward migration of an older schema, and clear errors (with nothing
// written) for paths and databases that are no prime store.
#include <sqlite3.h>

#include <fstream>
#include <sstream>
#include <regex>
#include <string>
#include <vector>

#include "store/store.h"
#include "test_helpers.h"
#include "test_store_util.h"
#include "util/error.h"

using namespace prime::store;
using prime::test::StoreScratch;

namespace {
void run_sqlite(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  char* message = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &message);
  INFO((message ? message : ""));
  sqlite3_free(message);
  sqlite3_close(db);
  REQUIRE(rc == SQLITE_OK);
}

// The first column of every row `sql` returns.
std::vector<std::string> sqlite_column(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  sqlite3_stmt* statement = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &statement, nullptr) == SQLITE_OK);
  std::vector<std::string> column;
  while (sqlite3_step(statement) == SQLITE_ROW)
    column.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(statement, sqlite3_column_count(statement) - 1)));
  sqlite3_finalize(statement);
  sqlite3_close(db);
  return column;
}
}  // namespace

TEST_CASE("Store: a store of schema version 1 is migrated forward with its data", "[store]") {
  StoreScratch scratch("migrate");
  const std::string path = scratch.file("old.db");
  run_sqlite(path, prime::test::read_text((prime::test::fixtures_dir() / "store_v1.sql").string()));
  CHECK_THROWS_WITH(Store::open(path, OpenMode::ReadOnly), Catch::Contains("older schema version 1"));
  auto store = Store::open(path);
  CHECK(store->schema_version() == 4);
  // Version 3: curves and intermediate values are read from the covering index alone.
  CHECK(sqlite_column(path, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'trial_metrics'") ==
        std::vector<std::string>{"trial_metrics_points"});
  CHECK(sqlite_column(path, "EXPLAIN QUERY PLAN SELECT step, value, time FROM trial_metrics "
                            "WHERE trial_id = 1 AND name = 'loss' ORDER BY step, time") ==
        std::vector<std::string>{"SEARCH trial_metrics USING COVERING INDEX trial_metrics_points (trial_id=? AND name=?)"});
  const Study study = store->study("old");
  const auto trials = store->trials(study.id);
  REQUIRE(trials.size() == 1);
  CHECK(trials[0].values.at(0) == 17.25);
  CHECK(trials[0].param("layer")->value == "GDN");
  CHECK(store->curve(trials[0].id, "loss").at(0).value == 3.5);
  const auto scores = store->layer_scores();
  REQUIRE(scores.size() == 1);
  CHECK(scores[0].score == 0.75);
  CHECK(scores[0].cost_seconds == 0);
  CHECK(scores[0].settings.empty());  // version 4: rows from before have no settings line
  store->add_layer_scores({{"synthetic:tiny", "kl", 4, 0.5, 3.0, "cpu", "source=synthetic:tiny scorer=kl window=8"}});
  CHECK(store->layer_scores("", "kl").at(1).device == "cpu");
  CHECK(store->layer_scores("", "kl").at(1).settings == "source=synthetic:tiny scorer=kl window=8");
  CHECK(store->layer_scores("", "kl").at(1).id > store->layer_scores("", "kl").at(0).id);
  store.reset();
  CHECK(Store::open(path, OpenMode::ReadOnly)->schema_version() == 4);
}

TEST_CASE("Store: paths and databases that are no store give a clear error and stay untouched", "[store]") {
  StoreScratch scratch("bad");
  namespace fs = std::filesystem;
  CHECK_THROWS_WITH(Store::open(scratch.path().string()), Catch::Contains("is a directory"));

  const std::string corrupt = scratch.file("corrupt.db");
  std::ofstream(corrupt) << "this is a text file, not a database\n";
  CHECK_THROWS_WITH(Store::open(corrupt), Catch::Contains("not an SQLite database"));
  CHECK(prime::test::read_text(corrupt) == "this is a text file, not a database\n");

  // A valid SQLite header over garbage pages.
  const std::string truncated = scratch.file("truncated.db");
  std::ofstream(truncated, std::ios::binary) << std::string("SQLite format 3\0", 16) << std::string(4080, '\x7f');
  CHECK_THROWS_AS(Store::open(truncated), prime::UserError);

  const std::string foreign = scratch.file("foreign.db");
  run_sqlite(foreign, "CREATE TABLE users (id INTEGER, name TEXT); INSERT INTO users VALUES (1, 'a');");
  const std::string foreign_bytes = prime::test::read_text(foreign);
  CHECK_THROWS_WITH(Store::open(foreign), Catch::Contains("another program"));
  CHECK_THROWS_WITH(Store::open(foreign, OpenMode::ReadOnly), Catch::Contains("another program"));
  CHECK(prime::test::read_text(foreign) == foreign_bytes);
  CHECK_FALSE(fs::exists(foreign + "-wal"));

  const std::string newer = scratch.file("newer.db");
  run_sqlite(newer, "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (99);");
  CHECK_THROWS_WITH(Store::open(newer), Catch::Contains("newer than this build"));

  CHECK_THROWS_WITH(Store::open(scratch.file("missing.db"), OpenMode::ReadOnly), Catch::Contains("does not exist"));
  CHECK_FALSE(fs::exists(scratch.file("missing.db")));

  const std::string read_only = scratch.file("read_only.db");
  Store::open(read_only)->create_study({"s", {{"loss", Direction::Minimize}}, "{}", {}});
  fs::permissions(read_only, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
  CHECK_THROWS_WITH(Store::open(read_only), Catch::Contains("read-only"));
  CHECK(Store::open(read_only, OpenMode::ReadOnly)->studies().size() == 1);

  const fs::path locked_dir = scratch.path() / "locked";
  fs::create_directories(locked_dir);
  fs::permissions(locked_dir, fs::perms::owner_read | fs::perms::owner_exec);
  CHECK_THROWS_WITH(Store::open((locked_dir / "runs.db").string()), Catch::Contains("read-only"));
  CHECK(fs::is_empty(locked_dir));
  fs::permissions(locked_dir, fs::perms::owner_all);

  CHECK_THROWS_WITH(Store::open("postgresql://prime@127.0.0.1:1/none?connect_timeout=2"),
                    Catch::Contains("cannot connect to the PostgreSQL store"));
  CHECK_THROWS_WITH(Store::open("postgresql://prime:secret@127.0.0.1:1/none?connect_timeout=2"),
                    !Catch::Contains("secret"));
}

TEST_CASE("Store: a PostgreSQL store has the same schema version and refuses a foreign database", "[store][postgres]") {
  if (prime::test::postgres_test_url().empty()) {
    WARN("PRIME_TEST_POSTGRES_URL is not set: skipped (see README, Experiment store)");
    return;
  }
  const std::string url = prime::test::fresh_postgres_store("open");
  {
    auto db = prime::store::detail::open_postgres(url, prime::store::detail::Access::ReadWrite);
    db->exec_script("CREATE TABLE users (id INTEGER)");
  }
  CHECK_THROWS_WITH(Store::open(url), Catch::Contains("another program"));
  const std::string fresh = prime::test::fresh_postgres_store("open");
  CHECK_THROWS_WITH(Store::open(fresh, OpenMode::ReadOnly), Catch::Contains("empty"));
  CHECK(Store::open(fresh)->schema_version() == Store::current_schema_version());
  CHECK(Store::open(fresh, OpenMode::ReadOnly)->studies().empty());
}

// Keeping the password off command lines (where ps shows it): libpq takes it from PGPASSWORD or a
// password file when the URL has none, and a refusal says where to put it.
TEST_CASE("Store: a PostgreSQL URL without its password connects with PGPASSWORD", "[store][postgres]") {
  if (prime::test::postgres_test_url().empty()) {
    WARN("PRIME_TEST_POSTGRES_URL is not set: skipped (see README, Experiment store)");
    return;
  }
  const std::string url = prime::test::fresh_postgres_store("password");
  std::smatch parts;
  if (!std::regex_search(url, parts, std::regex(R"(^(postgres(?:ql)?://[^:/@]+):([^@]+)@(.*)$)"))) {
    WARN("PRIME_TEST_POSTGRES_URL holds no password: skipped");
    return;
  }
  const std::string without = parts[1].str() + "@" + parts[3].str(), password = parts[2].str();
  const prime::test::ScopedEnv no_file("PGPASSFILE", "/nonexistent/prime-test-pgpass");
  {
    const prime::test::ScopedEnv unset("PGPASSWORD", nullptr);
    std::string refusal;
    try {
      Store::open(without);
    } catch (const prime::UserError& error) {
      refusal = error.what();
    }
    if (refusal.empty()) {
      WARN("the test server asks no password on this connection: skipped");
      return;
    }
    CHECK_THAT(refusal, Catch::Contains("PGPASSWORD") && Catch::Contains("~/.pgpass"));
  }
  const prime::test::ScopedEnv set("PGPASSWORD", password.c_str());
  CHECK(Store::open(without)->schema_version() == Store::current_schema_version());
}
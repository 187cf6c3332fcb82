// The store's tables and their forward migrations (README "Experiment store" documents them).
#pragma once

#include <string>

#include "store/database.h"

namespace prime::store::detail {

constexpr int kSchemaVersion = 4;

// The statements that take a store from version `version - 1` to `version` (1 creates it),
// with the backend's column types filled in.
std::string migration_script(const Database& db, int version);

// Makes sure `db` holds a prime store of the current version: creates the schema in an empty
// database, migrates an older one (read-write only). UserError for another program's database,
// a newer schema, or an older one opened read-only. Returns the version found before.
int prepare_schema(Database& db, bool read_only);

int read_schema_version(Database& db);

}  // namespace prime::store::detail

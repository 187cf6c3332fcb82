// AtomicDirectory and AtomicFile: outputs appear complete or not at all, and existing outputs are protected.
#include <ATen/ATen.h>
#include <unistd.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>

#include "io/atomic_dir.h"
#include "io/checkpoint.h"
#include "io/safetensors_writer.h"
#include "io/tensor_file.h"
#include "test_safetensors_util.h"

namespace fs = std::filesystem;
using namespace prime;
using namespace prime::io;
using prime::test::TempDir;

namespace {

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& item : fs::directory_iterator(dir)) names.push_back(item.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

void write_model(const fs::path& dir, float value) {
  SafetensorsWriter writer(dir, {});
  writer.add("w", DType::F32, {4}, [value] { return at::full({4}, value); });
  writer.write();
}

}  // namespace

TEST_CASE("an atomic directory appears only on commit", "[io][atomic_dir]") {
  TempDir parent;
  const fs::path out = parent / "hybrid";
  {
    AtomicDirectory atomic(out, false);
    CHECK(atomic.final_path() == out);
    CHECK(atomic.staging().parent_path() == parent.path());
    CHECK(atomic.staging().filename().string().rfind(".hybrid.tmp-", 0) == 0);
    write_model(atomic.staging(), 1.0f);
    test::write_bytes(atomic.staging() / "config.json", "{}");
    CHECK_FALSE(fs::exists(out));
    atomic.commit();
    CHECK(atomic.committed());
  }
  CHECK(entries(parent.path()) == std::vector<std::string>{"hybrid"});
  CHECK(entries(out) == std::vector<std::string>{"config.json", "model.safetensors"});
  CHECK(Checkpoint::open(out).tensor("w")[0].item<float>() == 1.0f);
}

TEST_CASE("a failure mid-write leaves neither staging nor final directory", "[io][atomic_dir]") {
  TempDir parent;
  const fs::path out = parent / "hybrid";
  try {
    AtomicDirectory atomic(out, false);
    SafetensorsWriter writer(atomic.staging(), WriterOptions{16, {}});  // one tensor per shard
    writer.add("a", DType::F32, {4}, [] { return at::ones({4}); });
    writer.add("b", DType::F32, {4}, []() -> at::Tensor { throw user_error("source tensor b is corrupt"); });
    writer.write();
    atomic.commit();
    FAIL("the producer's error did not propagate");
  } catch (const UserError& error) {
    CHECK_THAT(error.what(), Catch::Contains("source tensor b is corrupt"));
  }
  CHECK(entries(parent.path()).empty());
}

TEST_CASE("an existing output is refused without overwrite and replaced with it", "[io][atomic_dir]") {
  TempDir parent;
  const fs::path out = parent / "hybrid";
  fs::create_directory(out);
  write_model(out, 1.0f);
  test::write_bytes(out / "stale.txt", "old");

  CHECK_THAT(test::user_error_message([&] { AtomicDirectory(out, false); }),
             Catch::Contains(out.string()) && Catch::Contains("already exists"));
  CHECK(entries(parent.path()) == std::vector<std::string>{"hybrid"});  // nothing staged

  {
    AtomicDirectory atomic(out / "", true);  // a trailing slash names the same directory
    CHECK(atomic.final_path() == out);
    write_model(atomic.staging(), 2.0f);
    atomic.commit();
  }
  CHECK(entries(parent.path()) == std::vector<std::string>{"hybrid"});  // old copy removed
  CHECK(entries(out) == std::vector<std::string>{"model.safetensors"});
  CHECK(Checkpoint::open(out).tensor("w")[0].item<float>() == 2.0f);
}

TEST_CASE("atomic directories check the parent and protect precious directories", "[io][atomic_dir]") {
  TempDir parent;
  CHECK_THAT(test::user_error_message([&] { AtomicDirectory(parent / "missing/out", false); }),
             Catch::Contains("parent directory") && Catch::Contains("does not exist"));
  test::write_bytes(parent / "file", "x");
  CHECK_THAT(test::user_error_message([&] { AtomicDirectory(parent / "file", true); }),
             Catch::Contains("not a directory"));
  // Overwriting the working directory (or an ancestor) would delete what the user stands in.
  CHECK_THAT(test::user_error_message([] { AtomicDirectory(fs::current_path(), true); }),
             Catch::Contains("refusing to overwrite"));
  CHECK_THAT(test::user_error_message([] { AtomicDirectory(fs::current_path().parent_path(), true); }),
             Catch::Contains("refusing to overwrite"));
  if (getuid() != 0) {  // root may write anywhere
    fs::create_directory(parent / "readonly");
    fs::permissions(parent / "readonly", fs::perms::owner_read | fs::perms::owner_exec);
    CHECK_THAT(test::user_error_message([&] { AtomicDirectory(parent / "readonly/out", false); }),
               Catch::Contains("not writable"));
    fs::permissions(parent / "readonly", fs::perms::owner_all);
  }
}

TEST_CASE("an atomic file appears only on commit, and an existing one only with overwrite", "[io][atomic_dir]") {
  TempDir parent;
  const fs::path out = parent / "scores.csv";
  {
    AtomicFile file(out, false, "--out");
    CHECK(file.staging().parent_path() == parent.path());
    CHECK(file.staging().filename().string().rfind(".scores.csv.tmp-" + std::to_string(::getpid()) + "-", 0) == 0);
    file.write("layer,score\n");
    CHECK_FALSE(fs::exists(out));
    // Not committed: the staging file goes with it.
  }
  CHECK(entries(parent.path()).empty());
  write_file_atomically(out, "first\n", false, "--out");
  CHECK(test::read_bytes(out) == "first\n");
  CHECK_THAT(test::user_error_message([&] { write_file_atomically(out, "second\n", false, "--out"); }),
             Catch::Contains("--out") && Catch::Contains("already exists") && Catch::Contains("--force"));
  CHECK(test::read_bytes(out) == "first\n");
  fs::permissions(out, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  write_file_atomically(out, "second\n", true, "--out");
  CHECK(test::read_bytes(out) == "second\n");
  CHECK(fs::status(out).permissions() == (fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read));
  CHECK(entries(parent.path()) == std::vector<std::string>{"scores.csv"});

  // A file that appears while it is written is not replaced without overwrite.
  const fs::path racing = parent / "racing.csv";
  AtomicFile file(racing, false, "--out");
  file.write("mine\n");
  test::write_bytes(racing, "theirs\n");
  CHECK_THAT(test::user_error_message([&] { file.commit(); }), Catch::Contains("appeared while it was being written"));
  CHECK(test::read_bytes(racing) == "theirs\n");
}

TEST_CASE("an atomic file checks its path and removes what killed runs left", "[io][atomic_dir]") {
  TempDir parent;
  CHECK_THAT(test::user_error_message([&] { AtomicFile(parent / "missing/out.csv", true, "--out"); }),
             Catch::Contains("--out") && Catch::Contains("does not exist"));
  fs::create_directory(parent / "dir");
  CHECK_THAT(test::user_error_message([&] { AtomicFile(parent / "dir", true, "--out"); }),
             Catch::Contains("is a directory"));
  // A staging file named after a process that no longer exists is a leftover; a live one is not.
  pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, nullptr, 0);
  const fs::path leftover = parent / (".out.csv.tmp-" + std::to_string(child) + "-abc");
  const fs::path alive = parent / (".out.csv.tmp-" + std::to_string(::getpid()) + "-abc");
  test::write_bytes(leftover, "half");
  test::write_bytes(alive, "busy");
  {
    AtomicFile file(parent / "out.csv", false, "--out");
    CHECK(file.removed_stale() == std::vector<fs::path>{leftover});
  }
  CHECK_FALSE(fs::exists(leftover));
  CHECK(fs::exists(alive));
  // A symlink there, even a dangling one, is an existing output: replaced (not followed) only with
  // overwrite.
  fs::create_symlink(parent / "nowhere", parent / "link.csv");
  CHECK_THAT(test::user_error_message([&] { write_file_atomically(parent / "link.csv", "x", false, "--out"); }),
             Catch::Contains("already exists"));
  write_file_atomically(parent / "link.csv", "x", true, "--out");
  CHECK_FALSE(fs::is_symlink(parent / "link.csv"));
  CHECK(test::read_bytes(parent / "link.csv") == "x");
  CHECK_FALSE(fs::exists(parent / "nowhere"));
}

TEST_CASE("a tensor file replaces an existing one only with overwrite and leaves nothing else", "[io][atomic_dir]") {
  TempDir parent;
  const fs::path out = parent / "logits.safetensors";
  save_tensor_file(out, {{"logits", at::full({2, 3}, 1.5f)}}, {{"model", "m"}}, false, "--dump-logits");
  const std::string first = test::read_bytes(out);
  CHECK_THAT(test::user_error_message(
                 [&] { save_tensor_file(out, {{"logits", at::zeros({2, 3})}}, {}, false, "--dump-logits"); }),
             Catch::Contains("--dump-logits") && Catch::Contains("already exists"));
  CHECK(test::read_bytes(out) == first);
  save_tensor_file(out, {{"logits", at::zeros({2, 3})}}, {}, true, "--dump-logits");
  CHECK(test::read_bytes(out) != first);
  CHECK(entries(parent.path()) == std::vector<std::string>{"logits.safetensors"});
  CHECK_THAT(test::user_error_message([&] { save_tensor_file(parent.path(), {{"x", at::zeros({1})}}, {}, true, "--out"); }),
             Catch::Contains("is a directory"));
}

// SafetensorsWriter: every dtype round-trips byte for byte, sharding and the index, metadata,
// progress, declaration checks, write errors, and the Python `safetensors` package reading us.
#include <ATen/ATen.h>
#include <signal.h>
#include <sys/resource.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "test_safetensors_util.h"

namespace fs = std::filesystem;
using namespace prime;
using namespace prime::io;
using prime::test::TempDir;

namespace {

// Declares `tensors` (by name) into `writer`, producing each from the map.
void add_all(SafetensorsWriter& writer, const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  for (const auto& [name, tensor] : tensors)
    writer.add(name, from_scalar_type(tensor.scalar_type()), tensor.sizes().vec(),
               [tensor = tensor] { return tensor; });
}

std::vector<std::pair<std::string, at::Tensor>> every_dtype() {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  uint64_t seed = 1;
  for (DType dtype : kAllDTypes)
    tensors.emplace_back("t." + std::string(dtype_name(dtype)), test::random_tensor(dtype, {3, 5}, seed++));
  tensors.emplace_back("scalar.bf16", test::random_tensor(DType::BF16, {}, seed++));
  tensors.emplace_back("empty.i64", test::random_tensor(DType::I64, {0, 7}, seed++));
  tensors.emplace_back("odd.u8", test::random_tensor(DType::U8, {7}, seed++));
  return tensors;
}

void check_round_trip(const Checkpoint& checkpoint,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  REQUIRE(checkpoint.names().size() == tensors.size());
  for (const auto& [name, want] : tensors) {
    INFO("tensor " << name);
    const at::Tensor got = checkpoint.tensor(name);
    CHECK(got.scalar_type() == want.scalar_type());
    CHECK(got.sizes() == want.sizes());
    CHECK(test::tensor_bytes(got) == test::tensor_bytes(want));
  }
}

}  // namespace

TEST_CASE("every dtype round-trips byte for byte, aligned and zero-copy", "[io][safetensors]") {
  TempDir dir;
  const auto tensors = every_dtype();
  SafetensorsWriter writer(dir.path(), {});
  add_all(writer, tensors);
  std::vector<WriteProgress> progress;
  writer.write([&](const WriteProgress& step) { progress.push_back(step); });
  CHECK(writer.file_names() == std::vector<std::string>{"model.safetensors"});
  CHECK_FALSE(fs::exists(dir / "model.safetensors.index.json"));

  auto checkpoint = Checkpoint::open(dir.path());
  check_round_trip(checkpoint, tensors);

  const std::string bytes = test::read_bytes(dir / "model.safetensors");
  uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  CHECK((8 + header_length) % 8 == 0);
  CHECK(bytes[8 + header_length - 1] != '\0');  // padded with spaces, not NULs
  const auto& file = *checkpoint.files().front();
  for (const TensorInfo& info : file.header().tensors) {
    INFO("tensor " << info.name);
    CHECK((8 + header_length + info.begin) % dtype_size(info.dtype) == 0);
    if (info.nbytes() > 0)
      CHECK(file.tensor(info.name).data_ptr() == file.mapped_bytes().data() + file.data_start() + info.begin);
  }

  REQUIRE(progress.size() == tensors.size());
  CHECK(progress.back().tensors_done == tensors.size());
  CHECK(progress.back().bytes_done == progress.back().bytes_total);
  CHECK(progress.back().bytes_total == writer.total_bytes());
  CHECK(writer.total_bytes() == checkpoint.total_bytes());
}

TEST_CASE("the writer shards by size and writes an index", "[io][safetensors]") {
  TempDir dir;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  // 1000, 1000, 3000 (over the limit: a shard of its own), 1000, 1000, 1000 bytes.
  const std::vector<int64_t> elements = {250, 250, 750, 250, 250, 250};
  for (size_t index = 0; index < elements.size(); ++index)
    tensors.emplace_back("w" + std::to_string(index), test::random_tensor(DType::F32, {elements[index]}, index));
  WriterOptions options;
  options.max_shard_bytes = 2500;
  options.metadata = {{"prime.source", "unit-test"}};
  SafetensorsWriter writer(dir.path(), options);
  add_all(writer, tensors);
  writer.write();

  const std::vector<std::string> files = {
      "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
      "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
      "model.safetensors.index.json"};
  CHECK(writer.file_names() == files);
  for (const auto& name : files) CHECK(fs::exists(dir / name));
  CHECK_FALSE(fs::exists(dir / "model.safetensors"));

  const auto index = nlohmann::json::parse(test::read_bytes(dir / "model.safetensors.index.json"));
  CHECK(index["metadata"]["total_size"] == 8000);
  const std::map<std::string, std::string> expected_map = {
      {"w0", files[0]}, {"w1", files[0]}, {"w2", files[1]},
      {"w3", files[2]}, {"w4", files[2]}, {"w5", files[3]}};
  CHECK(index["weight_map"].get<std::map<std::string, std::string>>() == expected_map);

  auto checkpoint = Checkpoint::open(dir.path());
  check_round_trip(checkpoint, tensors);
  CHECK(checkpoint.names() == std::vector<std::string>{"w0", "w1", "w2", "w3", "w4", "w5"});
  CHECK(checkpoint.total_bytes() == 8000);
  // __metadata__ is in every shard, with the "format" transformers requires.
  for (const auto& file : checkpoint.files())
    CHECK(file->header().metadata ==
          std::map<std::string, std::string>{{"format", "pt"}, {"prime.source", "unit-test"}});
}

TEST_CASE("metadata round-trips and an explicit format is kept", "[io][safetensors]") {
  TempDir dir;
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"prime.plan", R"({"layers": ["*", "GDN"]})"}, {"unicode", "λ→∞"}, {"empty", ""}};
  SafetensorsWriter writer(dir.path(), WriterOptions{1000, metadata});
  writer.add("x", DType::F32, {2}, [] { return at::ones({2}); });
  writer.write();
  CHECK(Checkpoint::open(dir.path()).metadata() == metadata);
}

TEST_CASE("the writer checks declarations against what is produced", "[io][safetensors]") {
  TempDir dir;
  SafetensorsWriter writer(dir.path(), {});
  writer.add("a", DType::BF16, {2, 2}, [] { return at::zeros({2, 2}, at::kFloat); });
  CHECK_THAT(test::user_error_message([&] { writer.add("a", DType::F32, {1}, [] { return at::ones({1}); }); }),
             Catch::Contains("duplicate tensor name a"));
  CHECK_THROWS_AS(writer.write(), InternalError);

  TempDir other;
  SafetensorsWriter shape_writer(other.path(), {});
  shape_writer.add("b", DType::F32, {2, 2}, [] { return at::zeros({4}, at::kFloat); });
  try {
    shape_writer.write();
    FAIL("no error for a shape mismatch");
  } catch (const InternalError& error) {
    CHECK_THAT(error.what(), Catch::Contains("declared F32 [2, 2] but produced as Float [4]"));
  }
  CHECK_THAT(test::user_error_message([] { SafetensorsWriter(fs::path("/nonexistent/dir"), {}); }),
             Catch::Contains("does not exist"));
}

TEST_CASE("non-contiguous produced tensors are written in row-major order", "[io][safetensors]") {
  TempDir dir;
  const at::Tensor base = at::arange(12, at::kFloat).reshape({3, 4});
  SafetensorsWriter writer(dir.path(), {});
  writer.add("t", DType::F32, {4, 3}, [&] { return base.t(); });
  writer.write();
  CHECK(at::equal(Checkpoint::open(dir.path()).tensor("t"), base.t().contiguous()));
}

TEST_CASE("write errors become UserErrors naming the file and the system error", "[io][safetensors]") {
  // A file-size limit makes write() fail with EFBIG, standing in for ENOSPC.
  TempDir dir;
  struct rlimit saved {};
  REQUIRE(getrlimit(RLIMIT_FSIZE, &saved) == 0);
  const auto previous_handler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit limited = saved;
  limited.rlim_cur = 1 << 20;
  REQUIRE(setrlimit(RLIMIT_FSIZE, &limited) == 0);
  std::string message;
  {
    SafetensorsWriter writer(dir.path(), {});
    writer.add("big", DType::F32, {1 << 19}, [] { return at::ones({1 << 19}); });
    message = test::user_error_message([&] { writer.write(); });
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, previous_handler);
  CHECK_THAT(message, Catch::Contains("model.safetensors") && Catch::Contains(std::strerror(EFBIG)));
}

TEST_CASE("the Python safetensors package reads what we write", "[io][safetensors][python]") {
  if (std::system("python3 -c 'import safetensors, torch' >/dev/null 2>&1") != 0) {
    WARN("python3 with safetensors and torch is not available; skipping");
    return;
  }
  TempDir dir;
  fs::create_directory(dir / "ours");
  auto tensors = every_dtype();
  SafetensorsWriter writer(dir / "ours", WriterOptions{200, {{"k", "v"}}});  // several shards
  add_all(writer, tensors);
  writer.write();
  // Python loads every shard and saves all tensors again; we compare what comes back.
  test::write_bytes(dir / "resave.py", R"(
import glob, json, os, sys
from safetensors import safe_open
from safetensors.torch import save_file
src, dst = sys.argv[1], sys.argv[2]
tensors, metadata = {}, None
for path in sorted(glob.glob(os.path.join(src, "*.safetensors"))):
    with safe_open(path, "pt") as f:
        metadata = metadata or f.metadata()
        for name in f.keys():
            tensors[name] = f.get_tensor(name)
save_file(tensors, dst, metadata=metadata)
)");
  const std::string command = "python3 " + (dir / "resave.py").string() + " " + (dir / "ours").string() +
                              " " + (dir / "resaved.safetensors").string();
  REQUIRE(std::system(command.c_str()) == 0);
  auto resaved = Checkpoint::open(dir / "resaved.safetensors");
  check_round_trip(resaved, tensors);
  CHECK(resaved.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"k", "v"}});
}

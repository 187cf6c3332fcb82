// Reading safetensors: dtypes, the file written by the Python `safetensors` package, zero-copy
// views and their lifetime, and Checkpoint over single files, directories and HF-cache symlinks.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "test_safetensors_util.h"

namespace fs = std::filesystem;
using namespace prime;
using namespace prime::io;
using prime::test::TempDir;

namespace {

const fs::path kPyFixture = fs::path(PRIME_FIXTURES_DIR) / "safetensors" / "py_written.safetensors";

// A small checkpoint written by our writer: three F32 tensors in one file.
void write_small(const fs::path& dir, std::map<std::string, std::string> metadata = {}) {
  SafetensorsWriter writer(dir, WriterOptions{5000000000ull, std::move(metadata)});
  for (int64_t index = 0; index < 3; ++index) {
    const std::string name = "layer." + std::to_string(index) + ".weight";
    writer.add(name, DType::F32, {2, 3}, [index] {
      return at::arange(6, at::kFloat).reshape({2, 3}) + static_cast<double>(10 * index);
    });
  }
  writer.write();
}

}  // namespace

TEST_CASE("dtype names, sizes and ATen types round-trip", "[io][safetensors]") {
  const std::vector<std::pair<const char*, size_t>> expected = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"I16", 2},  {"U16", 2},  {"I32", 4},     {"U32", 4},
      {"I64", 8},  {"U64", 8}, {"F16", 2}, {"BF16", 2}, {"F32", 4},  {"F64", 8},     {"F8_E4M3", 1},
      {"F8_E5M2", 1}};
  REQUIRE(std::size(kAllDTypes) == expected.size());
  for (size_t position = 0; position < expected.size(); ++position) {
    const DType dtype = kAllDTypes[position];
    CHECK(dtype_name(dtype) == expected[position].first);
    CHECK(dtype_size(dtype) == expected[position].second);
    CHECK(parse_dtype(expected[position].first) == dtype);
    CHECK(from_scalar_type(to_scalar_type(dtype)) == dtype);
    CHECK(c10::elementSize(to_scalar_type(dtype)) == dtype_size(dtype));
  }
  CHECK(to_scalar_type(DType::BF16) == at::kBFloat16);
  CHECK(to_scalar_type(DType::F8_E4M3) == at::kFloat8_e4m3fn);
  CHECK_THAT(test::user_error_message([] { parse_dtype("F4"); }), Catch::Contains("\"F4\""));
  CHECK_THAT(test::user_error_message([] { from_scalar_type(at::kComplexFloat); }),
             Catch::Contains("ComplexFloat"));
}

TEST_CASE("reads the file written by the Python safetensors package exactly", "[io][safetensors]") {
  auto file = SafetensorsFile::open(kPyFixture);
  CHECK(file->header().tensors.size() == 17);
  CHECK(file->header().metadata == std::map<std::string, std::string>{
                                       {"format", "pt"}, {"source", "make_fixture.py"}});
  const auto f32 = at::kFloat;
  const auto i64 = at::kLong;
  // The formulas of make_fixture.py, recomputed here.
  const std::map<std::string, at::Tensor> expected = {
      {"f32", at::arange(12, f32).reshape({3, 4}) * 0.5 - 1},
      {"bf16", (at::arange(16, f32) * 0.25 - 2).to(at::kBFloat16).reshape({2, 8})},
      {"f16", (at::arange(6, f32) * -1.5).to(at::kHalf)},
      {"f64", at::arange(5, at::kDouble) / 8},
      {"i64", at::arange(4, i64) * 1000000007 - 3},
      {"i32", at::arange(-3, 3, at::kInt).reshape({2, 3})},
      {"i16", at::arange(5, at::kShort) * -300},
      {"i8", at::arange(-4, 4, at::kChar)},
      {"u8", at::arange(10, at::kByte) * 25},
      {"u16", (at::arange(3, i64) * 20000).to(at::kUInt16)},
      {"u32", (at::arange(3, i64) * 2000000000).to(at::kUInt32)},
      {"u64", (at::arange(3, i64) * 4000000000000).to(at::kUInt64)},
      {"bool", at::arange(7, i64).remainder(3) == 0},
      {"f8_e4m3", at::tensor({0.5f, 1.0f, -2.0f, 448.0f}).to(at::kFloat8_e4m3fn)},
      {"f8_e5m2", at::tensor({0.25f, -3.0f, 57344.0f}).to(at::kFloat8_e5m2)},
      {"scalar", at::scalar_tensor(3.25, f32)},
      {"empty", at::zeros({0, 4}, f32)},
  };
  for (const auto& [name, want] : expected) {
    INFO("tensor " << name);
    const at::Tensor got = file->tensor(name);
    CHECK(got.scalar_type() == want.scalar_type());
    CHECK(got.sizes() == want.sizes());
    CHECK(test::tensor_bytes(got) == test::tensor_bytes(want));
  }
  // Spot values, independent of ATen's conversions above.
  CHECK(file->tensor("bf16").to(at::kFloat)[1][7].item<float>() == 1.75f);
  CHECK(file->tensor("i64")[3].item<int64_t>() == 3000000018);
  CHECK(file->tensor("f8_e4m3").to(at::kFloat)[3].item<float>() == 448.0f);
}

TEST_CASE("tensors are zero-copy views into the mapping", "[io][safetensors]") {
  auto file = SafetensorsFile::open(kPyFixture);
  const std::string_view mapped = file->mapped_bytes();
  for (const TensorInfo& info : file->header().tensors) {
    if (info.nbytes() == 0) continue;
    INFO("tensor " << info.name);
    const at::Tensor view = file->tensor(info.name);
    const char* data = static_cast<const char*>(view.data_ptr());
    CHECK(data == mapped.data() + file->data_start() + info.begin);
  }
}

TEST_CASE("views stay valid after the file and checkpoint objects are dropped", "[io][safetensors]") {
  TempDir dir;
  write_small(dir.path());
  at::Tensor from_file, from_checkpoint;
  {
    auto file = SafetensorsFile::open(dir / "model.safetensors");
    from_file = file->tensor("layer.2.weight");
  }
  {
    auto checkpoint = Checkpoint::open(dir.path());
    from_checkpoint = checkpoint.tensor("layer.1.weight");
    checkpoint.release("layer.1.weight");  // drops pages from RSS; the view must still read
  }
  CHECK(at::equal(from_file, at::arange(6, at::kFloat).reshape({2, 3}) + 20));
  CHECK(at::equal(from_checkpoint, at::arange(6, at::kFloat).reshape({2, 3}) + 10));
}

TEST_CASE("Checkpoint opens a file, a directory and HF-cache style symlinked shards", "[io][safetensors]") {
  TempDir dir;
  write_small(dir.path(), {{"origin", "test"}});
  for (const fs::path& path : {dir.path(), dir / "model.safetensors"}) {
    INFO("path " << path);
    auto checkpoint = Checkpoint::open(path);
    CHECK(checkpoint.path() == path);
    CHECK(checkpoint.names() ==
          std::vector<std::string>{"layer.0.weight", "layer.1.weight", "layer.2.weight"});
    CHECK(checkpoint.contains("layer.0.weight"));
    CHECK_FALSE(checkpoint.contains("layer.3.weight"));
    CHECK(checkpoint.total_bytes() == 3 * 6 * 4);
    CHECK(checkpoint.info("layer.1.weight").shape == std::vector<int64_t>{2, 3});
    CHECK(checkpoint.metadata().at("origin") == "test");
    CHECK(checkpoint.tensor("layer.0.weight")[1][2].item<float>() == 5.0f);
  }

  // snapshots/<rev>/model-*.safetensors -> ../../blobs/<hash>, as the Hugging Face cache does.
  TempDir cache;
  fs::create_directories(cache / "blobs");
  fs::create_directories(cache / "snapshots/rev");
  fs::copy_file(dir / "model.safetensors", cache / "blobs/0123abcd");
  fs::create_symlink("../../blobs/0123abcd", cache / "snapshots/rev/model-00001-of-00001.safetensors");
  test::write_bytes(cache / "snapshots/rev/model.safetensors.index.json",
                    R"({"metadata": {"total_size": 48}, "weight_map": {
                       "layer.0.weight": "model-00001-of-00001.safetensors",
                       "layer.2.weight": "model-00001-of-00001.safetensors"}})");
  auto sharded = Checkpoint::open(cache / "snapshots/rev");
  // Only what the index names belongs to the checkpoint.
  CHECK(sharded.names() == std::vector<std::string>{"layer.0.weight", "layer.2.weight"});
  CHECK(sharded.total_bytes() == 48);
  CHECK(sharded.tensor("layer.2.weight")[0][0].item<float>() == 20.0f);
}

TEST_CASE("unaligned data from foreign writers is copied, not viewed", "[io][safetensors]") {
  TempDir dir;
  // The header is padded so the data region is 8-byte aligned; a 1-byte U8 tensor first then
  // puts the F32 data at an odd address.
  std::string header =
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string bytes = test::raw_safetensors(header, 0);
  const float values[2] = {1.5f, -2.0f};
  bytes += '\x07';
  bytes.append(reinterpret_cast<const char*>(values), sizeof values);
  test::write_bytes(dir / "x.safetensors", bytes);
  auto file = SafetensorsFile::open(dir / "x.safetensors");
  const at::Tensor b = file->tensor("b");
  CHECK(reinterpret_cast<uintptr_t>(b.data_ptr()) % 4 == 0);
  CHECK(b[0].item<float>() == 1.5f);
  CHECK(b[1].item<float>() == -2.0f);
  CHECK(file->tensor("a")[0].item<uint8_t>() == 7);
}

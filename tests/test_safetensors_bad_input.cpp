// Every malformed input is refused with a prime::UserError that names the file and the problem.
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
using Catch::Contains;

namespace {

const std::string kWhere = "bad.safetensors";

std::string header_error(const std::string& json, uint64_t data_size) {
  return test::user_error_message([&] { parse_header(json, data_size, kWhere); });
}

// Writes raw bytes to dir/name and returns the message of opening it.
std::string open_error(const TempDir& dir, const std::string& bytes) {
  test::write_bytes(dir / "bad.safetensors", bytes);
  return test::user_error_message([&] { SafetensorsFile::open(dir / "bad.safetensors"); });
}

const char* kTwoTensors = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[%A%]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[%B%]}})";

std::string two_tensors(const std::string& a, const std::string& b) {
  std::string json = kTwoTensors;
  json.replace(json.find("%A%"), 3, a);
  json.replace(json.find("%B%"), 3, b);
  return json;
}

// A sharded checkpoint (two shards, a0/a1 in the first, b0 in the second) to corrupt.
void write_sharded(const fs::path& dir) {
  SafetensorsWriter writer(dir, WriterOptions{16, {}});
  for (const char* name : {"a0", "a1", "b0"})
    writer.add(name, DType::F32, {2}, [] { return at::ones({2}); });
  writer.write();
}

void write_index(const fs::path& dir, const std::string& weight_map) {
  test::write_bytes(dir / "model.safetensors.index.json",
                    R"({"metadata": {"total_size": 24}, "weight_map": )" + weight_map + "}");
}

}  // namespace

TEST_CASE("bad input: a well-formed header parses", "[io][safetensors][bad_input]") {
  const Header header = parse_header(two_tensors("8,16", "0,8"), 16, kWhere);
  REQUIRE(header.tensors.size() == 2);
  CHECK(header.tensors[0].name == "b");  // sorted by begin
  CHECK(header.tensors[1].begin == 8);
}

TEST_CASE("bad input: truncated file", "[io][safetensors][bad_input]") {
  TempDir dir;
  CHECK_THAT(open_error(dir, std::string("\x10\0\0", 3)), Contains("truncated") && Contains("bad.safetensors"));
  CHECK_THAT(open_error(dir, ""), Contains("truncated"));
  // A complete file cut short inside the data region.
  const std::string whole = test::raw_safetensors(two_tensors("0,8", "8,16"), 16);
  CHECK_THAT(open_error(dir, whole.substr(0, whole.size() - 4)),
             Contains("tensor \"b\"") && Contains("truncated"));
}

TEST_CASE("bad input: header length past the end of the file", "[io][safetensors][bad_input]") {
  TempDir dir;
  CHECK_THAT(open_error(dir, test::raw_safetensors("{}", 0, 4096)),
             Contains("header length 4096 runs past the end of the file"));
}

TEST_CASE("bad input: header over 100 MB is refused before reading it", "[io][safetensors][bad_input]") {
  TempDir dir;
  CHECK_THAT(open_error(dir, test::raw_safetensors("{}", 0, 100'000'001)),
             Contains("exceeds the 100 MB limit"));
  CHECK_THAT(open_error(dir, test::raw_safetensors("{}", 0, UINT64_MAX - 1)), Contains("100 MB"));
}

TEST_CASE("bad input: overlapping, gapped and uncovered data offsets", "[io][safetensors][bad_input]") {
  CHECK_THAT(header_error(two_tensors("0,8", "4,12"), 12), Contains("overlap") && Contains(kWhere));
  CHECK_THAT(header_error(two_tensors("0,8", "0,8"), 8), Contains("overlap"));
  CHECK_THAT(header_error(two_tensors("0,8", "12,20"), 20), Contains("gap") && Contains("[8, 12)"));
  CHECK_THAT(header_error(two_tensors("4,12", "12,20"), 20), Contains("gap") && Contains("[0, 4)"));
  CHECK_THAT(header_error(two_tensors("0,8", "8,16"), 20), Contains("4 bytes after the last tensor"));
  CHECK_THAT(header_error(two_tensors("8,0", "8,16"), 16), Contains("before begin"));
  CHECK_THAT(header_error(R"({"__metadata__":{"k":"v"}})", 8), Contains("8 bytes after the last tensor"));
}

TEST_CASE("bad input: unknown dtype is named", "[io][safetensors][bad_input]") {
  CHECK_THAT(header_error(R"({"w":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,2]}})", 2),
             Contains("unknown dtype \"Q4_K\"") && Contains("tensor \"w\"") && Contains(kWhere));
  CHECK_THAT(header_error(R"({"w":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", 8),
             Contains("unknown dtype \"f32\""));
}

TEST_CASE("bad input: shape and byte count disagree", "[io][safetensors][bad_input]") {
  CHECK_THAT(header_error(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 12),
             Contains("shape/bytes mismatch") && Contains("needs 16 bytes"));
  CHECK_THAT(header_error(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
             Contains("non-negative integer"));
  CHECK_THAT(header_error(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
             Contains("non-negative integer"));
  CHECK_THAT(header_error(R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
             Contains("overflows"));
  // Zero-size tensors are fine even next to a huge extent.
  CHECK(parse_header(R"({"w":{"dtype":"F64","shape":[0,9223372036854775807],"data_offsets":[0,0]}})", 0, kWhere)
            .tensors.size() == 1);
}

TEST_CASE("bad input: duplicate names and other malformed JSON", "[io][safetensors][bad_input]") {
  CHECK_THAT(header_error(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                          R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", 2),
             Contains("duplicate key \"w\"") && Contains(kWhere));
  CHECK_THAT(header_error(R"({"w":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1),
             Contains("duplicate key \"dtype\""));
  CHECK_THAT(header_error(R"({"w":{"dtype":"U8","shape":[1]})", 1), Contains("invalid JSON"));
  CHECK_THAT(header_error("[1,2]", 0), Contains("must be a JSON object"));
  CHECK_THAT(header_error(R"({"w":{"dtype":"U8","shape":[1]}})", 1), Contains("lacks \"data_offsets\""));
  CHECK_THAT(header_error(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}})", 1),
             Contains("unknown field \"x\""));
  CHECK_THAT(header_error(R"({"__metadata__":{"n":1}})", 0), Contains("__metadata__ value for \"n\""));
  CHECK_THAT(header_error("{\"\xff\":1}", 0), Contains("invalid JSON"));  // not UTF-8
}

TEST_CASE("bad input: missing tensor", "[io][safetensors][bad_input]") {
  TempDir dir;
  write_sharded(dir.path());
  const auto checkpoint = Checkpoint::open(dir.path());
  const std::string expected = "missing tensor lm_head.weight in " + dir.path().string();
  CHECK_THAT(test::user_error_message([&] { checkpoint.info("lm_head.weight"); }), Contains(expected));
  CHECK_THAT(test::user_error_message([&] { checkpoint.tensor("lm_head.weight"); }), Contains(expected));
  const auto file = SafetensorsFile::open(dir / "model-00001-of-00002.safetensors");
  CHECK(file->find("b0") == nullptr);
  CHECK_THAT(test::user_error_message([&] { file->tensor("b0"); }), Contains("missing tensor b0"));
  TempDir empty;
  CHECK_THAT(test::user_error_message([&] { Checkpoint::open(empty.path()); }),
             Contains("no model.safetensors or model.safetensors.index.json"));
  test::write_bytes(empty / "pytorch_model.bin", "x");
  CHECK_THAT(test::user_error_message([&] { Checkpoint::open(empty.path()); }),
             Contains("pytorch_model.bin") && Contains("only safetensors"));
  CHECK_THAT(test::user_error_message([&] { Checkpoint::open(empty / "nope"); }), Contains("does not exist"));
}

TEST_CASE("bad input: index pointing outside the directory", "[io][safetensors][bad_input]") {
  TempDir dir;
  write_sharded(dir.path());
  // A real shard outside the checkpoint, so that only the name check can stop the read.
  fs::copy_file(dir / "model-00001-of-00002.safetensors", dir.path().parent_path() / "x.safetensors",
                fs::copy_options::overwrite_existing);
  const std::string absolute = (dir.path().parent_path() / "x.safetensors").string();
  for (const std::string& shard : {std::string("../x.safetensors"), absolute, std::string("sub/x.safetensors"),
                                   std::string(".."), std::string("")}) {
    INFO("shard name " << shard);
    write_index(dir.path(), R"({"a0": ")" + shard + R"(", "b0": "model-00002-of-00002.safetensors"})");
    CHECK_THAT(test::user_error_message([&] { Checkpoint::open(dir.path()); }),
               Contains("not a plain file name inside") && Contains("\"" + shard + "\""));
  }
  fs::remove(dir.path().parent_path() / "x.safetensors");
}

TEST_CASE("bad input: index naming a missing shard or a tensor the shard lacks", "[io][safetensors][bad_input]") {
  TempDir dir;
  write_sharded(dir.path());
  write_index(dir.path(), R"({"a0": "model-00001-of-00003.safetensors"})");
  CHECK_THAT(test::user_error_message([&] { Checkpoint::open(dir.path()); }),
             Contains("model-00001-of-00003.safetensors") && Contains("does not exist"));
  write_index(dir.path(), R"({"a0": "model-00002-of-00002.safetensors"})");
  CHECK_THAT(test::user_error_message([&] { Checkpoint::open(dir.path()); }),
             Contains("places tensor \"a0\"") && Contains("does not contain it"));
  write_index(dir.path(), R"({"a0": "model-00001-of-00002.safetensors", "a0": "model-00001-of-00002.safetensors"})");
  CHECK_THAT(test::user_error_message([&] { Checkpoint::open(dir.path()); }), Contains("duplicate key \"a0\""));
  write_index(dir.path(), R"({"a0": 3})");
  CHECK_THAT(test::user_error_message([&] { Checkpoint::open(dir.path()); }), Contains("must be a file name"));
  // A corrupt shard is reported with its own path.
  test::write_bytes(dir / "model-00002-of-00002.safetensors", "short");
  write_index(dir.path(), R"({"b0": "model-00002-of-00002.safetensors"})");
  CHECK_THAT(test::user_error_message([&] { Checkpoint::open(dir.path()); }),
             Contains("model-00002-of-00002.safetensors: file is truncated"));
}

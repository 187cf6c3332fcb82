// "SOURCE+convert:..." specs: the in-memory hybrid equals what prime-convert writes.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <cstdlib>
#include <unistd.h>

#include "convert/in_memory.h"
#include "convert/model_spec.h"
#include "io/atomic_dir.h"
#include "model/load_model.h"
#include "test_helpers.h"
#include "util/error.h"

using namespace prime;
using Catch::Matchers::Contains;

TEST_CASE("convert spec parsing", "[convert]") {
  CHECK_FALSE(convert::parse_convert_spec("qwen3-8b").has_value());
  auto ratio = convert::parse_convert_spec("qwen3-8b+convert:GKA:1:3");
  REQUIRE(ratio.has_value());
  CHECK(ratio->source == "qwen3-8b");
  CHECK(ratio->layers.layer == "GKA");
  CHECK(ratio->layers.ratio == "1:3");
  auto pattern = convert::parse_convert_spec("dir+convert:pattern=GDN-*");
  REQUIRE(pattern.has_value());
  CHECK(pattern->layers.pattern == "GDN-*");
  CHECK_THROWS_AS(convert::parse_convert_spec("dir+convert:GKA"), UserError);
}

TEST_CASE("in-memory conversion equals the written checkpoint and keeps attention exact", "[convert]") {
  at::NoGradGuard no_grad;
  const std::string source = (test::fixtures_dir() / "parity" / "qwen3").string();
  at::Tensor ids = at::randint(0, 256, {1, 17}, at::kLong);

  // All-attention pattern: the source model, bit for bit.
  auto plain = model::load_model(source, {});
  auto same = convert::load_model_spec(source + "+convert:pattern=*-*", {});
  CHECK(at::equal(same.model->forward(ids), plain.model->forward(ids)));

  auto out = std::filesystem::temp_directory_path() / ("prime_inmem_" + std::to_string(::getpid()));
  const std::string command = test::bin_dir() + "/prime-convert --source " + source +
                              " --pattern 'GDN-*' --out " + out.string() + " > /dev/null 2>&1";
  REQUIRE(std::system(command.c_str()) == 0);
  auto written = model::load_model(out.string(), {});
  auto in_memory = convert::load_model_spec(source + "+convert:pattern=GDN-*", {});
  CHECK(in_memory.model->mixer(0).symbol() == "GDN");
  CHECK(at::equal(in_memory.model->forward(ids), written.model->forward(ids)));
  io::remove_tree(out);
}

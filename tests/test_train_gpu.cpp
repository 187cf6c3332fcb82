// Priming on a CUDA device: fp32 matches the CPU, and bf16 autocast (SSM cores kept fp32) trains
// every layer type.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>

#include "test_train_util.h"
#include "train/trainer.h"

using namespace prime;
using namespace prime::train;
using prime::test::TrainDir;


TEST_CASE("priming on CUDA: fp32 follows the CPU run, bf16 autocast trains GDN, Mamba-2 and GKA", "[gpu][train]") {
  if (!prime::test::gpu_available_or_fail()) return;
  TrainDir dir("gpu");
  TrainOptions options;
  options.stage = Stage::Distill;
  options.teacher = prime::test::kTinyTeacher;
  options.model = prime::test::kTinyTeacher + "+convert:pattern=GDN-GKA";
  options.data = {prime::test::write_pattern_shard(dir / "data.tok", 20000)};
  options.seq_len = 64;
  options.batch_tokens = 512;
  options.tokens = 512 * 8;
  options.lr = 3e-3;
  options.schedule = ScheduleKind::Constant;
  options.train = "ssm,norm";
  std::ostringstream log;
  options.out = dir / "cpu";
  run_training(options, "test", log);
  options.device = "cuda";
  options.out = dir / "cuda";
  run_training(options, "test", log);
  const auto cpu = prime::test::step_losses(dir / "cpu/metrics.jsonl");
  const auto cuda = prime::test::step_losses(dir / "cuda/metrics.jsonl");
  REQUIRE(cuda.size() == cpu.size());
  for (size_t i = 0; i < cpu.size(); ++i) {
    CAPTURE(i, cpu[i], cuda[i]);
    CHECK(std::abs(cuda[i] - cpu[i]) <= 1e-3 * std::abs(cpu[i]));  // TF32 off? matmul order differs
  }
  for (const char* pattern : {"GDN-M2", "GKA-*"}) {
    CAPTURE(pattern);
    options.model = prime::test::kTinyTeacher + "+convert:pattern=" + pattern;
    options.dtype = "bf16";
    options.out = dir / (std::string("bf16-") + pattern);
    options.tokens = 512 * 16;
    const TrainResult result = run_training(options, "test", log);
    const auto losses = prime::test::step_losses(options.out + "/metrics.jsonl");
    REQUIRE(losses.size() == 16);
    for (double loss : losses) CHECK(std::isfinite(loss));
    CHECK(losses.back() < losses.front());
    CHECK(result.bad_steps == 0);
  }
}

// Whole priming runs on tiny models: what each stage trains, shared teacher tensors, exact resume
// after SIGKILL, activation recomputation, the divergence guard, and bad input.
#include <catch2/catch.hpp>

#include <chrono>
#include <csignal>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include "io/checkpoint.h"
#include "test_train_util.h"
#include "train/batches.h"
#include "train/checkpoint.h"
#include "train/models.h"
#include "train/step_loss.h"
#include "train/trainer.h"
#include "util/error.h"

using namespace prime;
using namespace prime::train;
using prime::test::TrainDir;

namespace {

TrainOptions tiny_options(const TrainDir& dir, Stage stage) {
  TrainOptions options;
  options.stage = stage;
  options.model = stage == Stage::Pt ? prime::test::kTinyTeacher : prime::test::kTinyTeacher + "+convert:GDN:1:1";
  options.teacher = stage == Stage::Pt ? "" : prime::test::kTinyTeacher;
  options.data = {prime::test::write_pattern_shard(dir / "data.tok", 20000)};
  options.seq_len = 32;
  options.batch_tokens = 128;
  options.tokens = 128 * 6;
  options.lr = 3e-3;
  options.schedule = ScheduleKind::Constant;
  options.out = dir / "run";
  return options;
}

prime::test::CliRun run_shell(const std::string& command) {
  std::string output;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  const int status = ::pclose(pipe);
  return {WEXITSTATUS(status), output};
}

model::TensorMap snapshot(const model::HybridModel& model) {
  model::TensorMap copy;
  for (const auto& [name, tensor] : model.weights()) copy[name] = tensor.detach().clone();
  return copy;
}

}  // namespace

TEST_CASE("batches: stream windows shift targets by one, ranks take disjoint slices, order is seeded", "[train]") {
  TrainDir dir("batches");
  const std::string shard = prime::test::write_pattern_shard(dir / "d.tok", 1000, 60000, 0);
  DataOptions options;
  options.shards = {shard};
  options.seq_len = 10;
  options.sequences_per_micro_batch = 3;
  options.seed = 4;
  TrainData data(options);
  CHECK(data.sequences() == 99);  // windows of 11 tokens every 10
  const Batch batch = data.next();
  CHECK(batch.input_ids.sizes() == at::IntArrayRef({3, 10}));
  CHECK(at::equal(batch.input_ids.narrow(1, 1, 9), batch.targets.narrow(1, 0, 9)));
  CHECK(data.position() == 3);
  TrainData again(options);
  CHECK(at::equal(again.next().input_ids, batch.input_ids));
  options.world = 2;
  options.rank = 1;
  TrainData second_rank(options);
  const Batch other = second_rank.next();
  CHECK(second_rank.position() == 6);
  for (int64_t a = 0; a < 3; ++a)
    for (int64_t b = 0; b < 3; ++b) CHECK_FALSE(at::equal(batch.input_ids[a], other.input_ids[b]));
  options.sequences_per_micro_batch = 60;
  CHECK_THROWS_WITH(TrainData(options), Catch::Contains("one batch needs 120"));
}

TEST_CASE("align trains only the SSM layers, and the teacher's tensors are shared, not copied", "[train]") {
  TrainDir dir("align");
  TrainOptions options = tiny_options(dir, Stage::Align);
  options.align_layers = AlignLayers::Mixer;
  ModelSetup setup;
  setup.student_spec = options.model;
  setup.teacher_spec = options.teacher;
  setup.groups = parse_groups("ssm");
  RunModels models = build_run_models(setup);
  REQUIRE(models.replaced_layers.size() == 1);
  CHECK(models.shared_tensors > 0);
  const auto& student = models.student->weights();
  const auto& teacher = models.teacher->weights();
  // A frozen tensor the two have in common is one tensor.
  CHECK(student.at("model.layers.0.mlp.up_proj.weight").data_ptr() == teacher.at("model.layers.0.mlp.up_proj.weight").data_ptr());
  for (const auto& parameter : models.trained) CHECK(parameter.group == ParamGroup::Ssm);

  const model::TensorMap before = snapshot(*models.student);
  TrainData data({options.data, options.seq_len, 4, 0, 0, 1});
  AdamW optimizer(models.trained, {});
  double first = 0, last = 0;
  for (int step = 0; step < 12; ++step) {
    optimizer.zero_grad();
    StepLoss loss = compute_step_loss(options, models, data.next());
    loss.loss.backward();
    optimizer.step(3e-3);
    (step == 0 ? first : last) = loss.loss.item<double>();
    CHECK(loss.parts.count("mse_layers"));
  }
  CHECK(last < first);
  for (const auto& [name, tensor] : models.student->weights()) {
    CAPTURE(name);
    const bool trained = classify(models.student->config(), name) == ParamGroup::Ssm;
    CHECK(at::equal(tensor.detach(), before.at(name)) != trained);
  }
}

TEST_CASE("recomputed activations give the same gradients", "[train]") {
  TrainDir dir("recompute");
  TrainOptions options = tiny_options(dir, Stage::Distill);
  ModelSetup setup;
  setup.student_spec = options.model;
  setup.teacher_spec = options.teacher;
  setup.groups = parse_groups("all");
  RunModels models = build_run_models(setup);
  TrainData data({options.data, options.seq_len, 2, 0, 0, 1});
  const Batch batch = data.next();
  std::vector<at::Tensor> grads[2];
  for (bool recompute : {false, true}) {
    options.recompute = recompute;
    for (auto& parameter : models.trained) parameter.tensor.mutable_grad() = at::Tensor();
    compute_step_loss(options, models, batch).loss.backward();
    for (auto& parameter : models.trained) grads[recompute].push_back(parameter.tensor.grad().clone());
  }
  for (size_t i = 0; i < grads[0].size(); ++i) {
    CAPTURE(models.trained[i].name);
    CHECK(prime::test::relative_error(grads[1][i], grads[0][i]) < 1e-6);
  }
}

TEST_CASE("prime-train killed with SIGKILL and resumed gives the uninterrupted loss sequence", "[train][cli]") {
  TrainDir dir("resume");
  const std::string data = prime::test::write_pattern_shard(dir / "data.tok", 40000);
  const std::string common = "prime-train --model '" + prime::test::kTinyTeacher + "+convert:GKA:1:1' --teacher '" +
                             prime::test::kTinyTeacher + "' --stage distill --data " + data +
                             " --tokens 2560 --batch-tokens 128 --seq-len 32 --micro-batch-tokens 64 --lr 3e-3 "
                             "--save-every 3 --keep 2 --log-every 100";
  const auto whole = prime::test::run_cli(common + " --out " + (dir / "whole"));
  REQUIRE(whole.exit_code == 0);
  const std::vector<double> expected = prime::test::step_losses(dir / "whole/metrics.jsonl");
  REQUIRE(expected.size() == 20);

  // Start the same run, kill it once a checkpoint exists and a few more steps have run.
  const std::string killed_dir = dir / "killed";
  const pid_t child = ::fork();
  if (child == 0) {
    const std::string command = test::bin_dir() + "/" + common + " --out " + killed_dir + " >/dev/null 2>&1";
    ::execl("/bin/sh", "sh", "-c", ("exec " + command).c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!std::filesystem::exists(checkpoint_path(killed_dir, 6)) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(list_checkpoints(killed_dir).size() >= 1);

  // The plan (models, stage, data, sizes) comes from the run; what is not part of it is given again.
  const auto resumed = prime::test::run_cli("prime-train --resume " + killed_dir +
                                            " --micro-batch-tokens 64 --lr 3e-3 --save-every 3 --keep 2");
  INFO(resumed.output);
  REQUIRE(resumed.exit_code == 0);
  CHECK(resumed.output.find("resuming") != std::string::npos);
  // What this call trained, then the whole run (the steps before the kill are not this call's).
  CHECK_THAT(resumed.output, Catch::Contains("(the run: " + std::to_string(expected.size()) + " steps"));
  const std::vector<double> actual = prime::test::step_losses(killed_dir + "/metrics.jsonl");
  REQUIRE(actual.size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    CAPTURE(i);
    CHECK(actual[i] == expected[i]);
  }
  CHECK(list_checkpoints(killed_dir).size() == 2);  // --keep 2
  // Resuming a finished run trains nothing and says so (no "final loss" of a step not taken).
  const auto again = prime::test::run_cli("prime-train --resume " + killed_dir +
                                          " --micro-batch-tokens 64 --lr 3e-3 --save-every 3 --keep 2");
  INFO(again.output);
  CHECK(again.exit_code == 0);
  CHECK_THAT(again.output, Catch::Contains("nothing to train: the run is complete"));
  CHECK(prime::test::step_losses(killed_dir + "/metrics.jsonl").size() == expected.size());
  // The final checkpoint is a model prime-eval loads as is, with a model card saying what it is; the
  // same step of the uninterrupted run has the same card.
  const auto eval = prime::test::run_cli("prime-eval --model " + killed_dir + "/final --token-ids 1,2,3 --generate 2");
  INFO(eval.output);
  CHECK(eval.exit_code == 0);
  const auto read = [](const std::string& path) {
    std::ifstream in(path);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
  };
  const std::string card = read(killed_dir + "/final/README.md");
  CHECK_THAT(card, Catch::StartsWith("---\n") && Catch::Contains("- hybrid") &&
                       Catch::Contains("prime-train checkpoint, step 20") && Catch::Contains("stage `distill`") &&
                       Catch::Contains("2560 tokens") && Catch::Contains("| hybrid_override_pattern | `") &&
                       Catch::Contains("GKA"));
  CHECK(card == read(dir / "whole/final/README.md"));
}

TEST_CASE("two Gloo ranks under torchrun give the loss curve of one rank with the same global batch", "[train][cli]") {
  TrainDir dir("ranks");
  const std::string data = prime::test::write_pattern_shard(dir / "data.tok", 20000);
  const std::string args = " --model '" + prime::test::kTinyTeacher + "+convert:GDN:1:1' --teacher '" +
                           prime::test::kTinyTeacher + "' --stage align --align-layers mixer --data " + data +
                           " --tokens 2048 --batch-tokens 256 --seq-len 32 --lr 3e-3 --save-every 4";
  const auto one = prime::test::run_cli("prime-train" + args + " --out " + (dir / "one"));
  INFO(one.output);
  REQUIRE(one.exit_code == 0);
  // torchrun comes with the torch wheel setup.sh installs; --standalone has its rendezvous pick a
  // free port (a fixed one can be taken by another test or process).
  const auto two = run_shell("python3 -m torch.distributed.run --no-python --standalone --nproc-per-node 2 " +
                             test::bin_dir() + "/prime-train" + args + " --out " + (dir / "two"));
  INFO(two.output);
  REQUIRE(two.exit_code == 0);
  const std::vector<double> a = prime::test::step_losses(dir / "one/metrics.jsonl"), b = prime::test::step_losses(dir / "two/metrics.jsonl");
  REQUIRE(a.size() == 8);
  REQUIRE(b.size() == a.size());  // rank 0 alone writes metrics
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(i, a[i], b[i]);
    CHECK(std::abs(a[i] - b[i]) <= 1e-5 * std::abs(a[i]));
  }
  CHECK(list_checkpoints(dir / "two").size() == 2);
}

TEST_CASE("a diverging run rolls back with half the learning rate, then stops with its checkpoint intact", "[train]") {
  TrainDir dir("diverge");
  TrainOptions options = tiny_options(dir, Stage::Pt);
  options.tokens = 128 * 40;
  options.save_every = 1;
  options.lr = 1e30;
  options.grad_clip = 0;
  options.max_bad_steps = 2;
  options.max_rollbacks = 2;
  std::ostringstream log;
  try {
    run_training(options, "test", log);
    FAIL("a run at lr 1e30 should diverge");
  } catch (const UserError& error) {
    CHECK_THAT(error.what(), Catch::Contains("diverged") && Catch::Contains("last good checkpoint"));
  }
  CHECK_THAT(log.str(), Catch::Contains("rolled back") && Catch::Contains("learning rate halved"));
  const auto checkpoints = list_checkpoints(options.out);
  REQUIRE_FALSE(checkpoints.empty());
  CHECK_NOTHROW(io::Checkpoint::open(checkpoints.back()));
  CHECK(read_trainer_state(checkpoints.back()).counters.step >= 1);
}

TEST_CASE("prime-train refuses bad input with a clear message and writes nothing", "[train][cli]") {
  TrainDir dir("bad");
  auto expect_error = [&](TrainOptions options, const std::string& message) {
    CAPTURE(message);
    std::ostringstream log;
    CHECK_THROWS_WITH(run_training(options, "test", log), Catch::Contains(message));
  };
  const TrainOptions align = tiny_options(dir, Stage::Align);
  TrainOptions options = align;
  options.teacher = "";
  expect_error(options, "needs --teacher");
  options = align;
  options.teacher = "synthetic:qwen3-0.6b@layers=2,hidden=32,heads=2,kv_heads=1,head_dim=16,intermediate=64,vocab=80";
  expect_error(options, "different vocabularies");
  options = align;
  options.train = "ssm,brains";
  expect_error(options, "unknown parameter group 'brains'");
  options = align;
  options.tokens = 64;
  expect_error(options, "smaller than one step");
  options = align;
  options.batch_tokens = 100;
  expect_error(options, "multiple of --seq-len");
  options = align;
  options.data = {prime::test::write_pattern_shard(dir / "short.tok", 100)};
  expect_error(options, "one batch needs 4");
  options = align;
  options.data = {prime::test::write_pattern_shard(dir / "wide.tok", 1000, 200)};
  expect_error(options, "beyond the model's vocabulary");
  CHECK_FALSE(std::filesystem::exists(align.out));  // nothing written by any of these

  // Resuming with another plan is refused and leaves the run's checkpoint as it was.
  TrainOptions pt = tiny_options(dir, Stage::Pt);
  std::ostringstream log;
  run_training(pt, "test", log);
  const auto before = list_checkpoints(pt.out);
  TrainOptions other = pt;
  other.resume = true;
  other.seq_len = 16;
  expect_error(other, "a checkpoint of another plan");
  CHECK(list_checkpoints(pt.out) == before);
  TrainOptions again = pt;
  expect_error(again, "exists and is not empty");

  const auto not_a_run = prime::test::run_cli("prime-train --resume " + (dir / "nothing-here"));
  CHECK(not_a_run.exit_code == 1);
  CHECK_THAT(not_a_run.output, Catch::Contains("no run.json there"));
  const auto cli = prime::test::run_cli("prime-train --model x --data y --tokens 1K --batch-tokens 12Q --seq-len 8 --out z");
  CHECK(cli.exit_code == 1);
  CHECK_THAT(cli.output, Catch::Contains("--batch-tokens"));
  // --eval-every and --val-data only together: either alone would be silently unused.
  const std::string base = "prime-train --model x --data y --tokens 1K --batch-tokens 1K --seq-len 8 --out z ";
  const auto no_val = prime::test::run_cli(base + "--eval-every 2");
  CHECK(no_val.exit_code == 1);
  CHECK_THAT(no_val.output, Catch::Contains("--eval-every requires --val-data"));
  const auto no_every = prime::test::run_cli(base + "--val-data y");
  CHECK(no_every.exit_code == 1);
  CHECK_THAT(no_every.output, Catch::Contains("--val-data requires --eval-every"));
  CHECK_FALSE(std::filesystem::exists("z"));
}

TEST_CASE("MoE layers train: the router and the chosen experts get gradients", "[train]") {
  TrainDir dir("moe");
  TrainOptions options = tiny_options(dir, Stage::Pt);
  const std::string moe = "synthetic:qwen3-30b-a3b@layers=2,hidden=32,heads=2,kv_heads=1,head_dim=16,intermediate=64,"
                          "moe_intermediate=32,experts=4,experts_per_tok=2,vocab=64,seed=5";
  ModelSetup setup;
  setup.student_spec = moe;
  setup.groups = parse_groups("mlp");
  RunModels models = build_run_models(setup);
  TrainData data({options.data, options.seq_len, 4, 0, 0, 1});
  AdamW optimizer(models.trained, {});
  double first = 0, last = 0;
  for (int step = 0; step < 10; ++step) {
    optimizer.zero_grad();
    const StepLoss loss = compute_step_loss(options, models, data.next());
    loss.loss.backward();
    if (step == 0) {
      int64_t routers = 0, experts_with_grad = 0;
      for (const auto& parameter : models.trained) {
        const bool has_grad = parameter.tensor.grad().defined() && parameter.tensor.grad().abs().sum().item<double>() > 0;
        if (parameter.name.find("mlp.gate.weight") != std::string::npos) {
          ++routers;
          CHECK(has_grad);
        } else if (has_grad) {
          ++experts_with_grad;
        }
      }
      CHECK(routers == 2);
      CHECK(experts_with_grad > 0);
    }
    optimizer.step(3e-3);
    (step == 0 ? first : last) = loss.loss.item<double>();
  }
  CHECK(last < first);
}

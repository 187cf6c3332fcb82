// The store's metrics sink: a step's record only joins a vector; rows reach the store by time,
// by count, on flush() and when the sink ends, and a checkpoint never runs ahead of its curve.
#include <chrono>
#include <thread>

#include "store/store.h"
#include "test_store_util.h"
#include "test_train_util.h"
#include "train/trainer.h"

using namespace prime::store;
using prime::test::StoreScratch;

namespace {

std::vector<int64_t> logged_steps(Store& store, int64_t trial_id, const std::string& metric) {
  std::vector<int64_t> steps;
  for (const MetricPoint& point : store.curve(trial_id, metric)) steps.push_back(point.step);
  return steps;
}

int64_t running_trial(Store& store, const std::string& study_name) {
  const Study study = store.create_study({study_name, {{"loss", Direction::Minimize}}, "{}", {}});
  const int64_t id = store.enqueue_trial(study.id, {});
  REQUIRE(store.claim_trial(study.id, "test"));
  return id;
}

// Forwards to the store's sink; when the record of `probe_step` arrives, notes which steps of
// "loss" the store already holds (what a run killed right then would keep).
class CheckpointProbe : public prime::MetricsSink {
 public:
  CheckpointProbe(Store& store, int64_t trial_id, int64_t probe_step)
      : store_(store), trial_id_(trial_id), probe_step_(probe_step),
        sink_(store.metrics_sink(trial_id, {3600, 1000000})) {}
  void write(const prime::MetricRecord& record) override {
    if (record.kind == "step" && record.step == probe_step_) seen_ = logged_steps(store_, trial_id_, "loss");
    sink_->write(record);
  }
  void flush() override { sink_->flush(); }
  const std::vector<int64_t>& seen() const { return seen_; }

 private:
  Store& store_;
  int64_t trial_id_, probe_step_;
  std::unique_ptr<prime::MetricsSink> sink_;
  std::vector<int64_t> seen_;
};

}  // namespace

TEST_CASE("Store: the metrics sink writes by time, by count, on flush and at its end", "[store]") {
  StoreScratch scratch("sink");
  for (const auto& backend : prime::test::test_stores(scratch, "sink")) {
    SECTION(backend.backend) {
      auto store = Store::open(backend.url);
      const int64_t timed = running_trial(*store, "timed");
      {
        // By time: nothing is written until a record arrives after the interval.
        auto sink = store->metrics_sink(timed, {1.0, 1000000});
        sink->write({"step", 1, {{"loss", 3.0}, {"lr", 1e-3}}, {}});
        sink->write({"step", 2, {{"loss", 2.5}, {"lr", 1e-3}}, {}});
        CHECK(logged_steps(*store, timed, "loss").empty());
        std::this_thread::sleep_for(std::chrono::milliseconds(1100));
        sink->write({"step", 3, {{"loss", 2.0}, {"lr", 1e-3}}, {}});
        CHECK(logged_steps(*store, timed, "loss") == std::vector<int64_t>{1, 2, 3});
        sink->write({"step", 4, {{"loss", 1.5}, {"lr", 1e-3}}, {}});
        CHECK(logged_steps(*store, timed, "loss").size() == 3);
        sink->flush();
        CHECK(logged_steps(*store, timed, "loss").size() == 4);
        sink->write({"step", 5, {{"loss", 1.0}}, {}});
      }
      CHECK(logged_steps(*store, timed, "loss") == std::vector<int64_t>{1, 2, 3, 4, 5});  // the destructor wrote 5
      CHECK(logged_steps(*store, timed, "lr").size() == 4);

      // By count, whatever the interval: a batch is written once 4 rows are pending.
      const int64_t counted = running_trial(*store, "counted");
      auto sink = store->metrics_sink(counted, {3600, 4});
      sink->write({"step", 1, {{"loss", 3.0}, {"lr", 1e-3}}, {}});
      CHECK(logged_steps(*store, counted, "loss").empty());
      sink->write({"step", 2, {{"loss", 2.0}, {"lr", 1e-3}}, {}});
      CHECK(logged_steps(*store, counted, "loss") == std::vector<int64_t>{1, 2});
    }
  }
}

TEST_CASE("Store: every step a training checkpoint covers is in the store when the checkpoint is written", "[store][train]") {
  StoreScratch scratch("checkpoint");
  prime::test::TrainDir dir("store_checkpoint");
  auto store = Store::open(scratch.file("runs.db"));
  const int64_t trial_id = running_trial(*store, "ckpt");
  prime::train::TrainOptions options;
  options.stage = prime::train::Stage::Pt;
  options.model = prime::test::kTinyTeacher;
  options.data = {prime::test::write_pattern_shard(dir / "data.tok", 4000)};
  options.seq_len = 32;
  options.batch_tokens = 64;
  options.tokens = 64 * 5;
  options.save_every = 3;
  options.schedule = prime::train::ScheduleKind::Constant;
  options.out = dir / "run";
  std::ostringstream log;
  // The sink's interval and batch are far beyond this run: only the checkpoint can write.
  CheckpointProbe probe(*store, trial_id, 4);
  prime::train::run_training(options, "test", log, &probe);
  CHECK(probe.seen() == std::vector<int64_t>{1, 2, 3});
  CHECK(logged_steps(*store, trial_id, "loss") == std::vector<int64_t>{1, 2, 3, 4, 5});  // the final save
}

// Curves cut at stage marks: what prime-search writes, and what a foreign "stage" metric must not break.
TEST_CASE("Store: stage_curves cuts a metric at the stage marks", "[store]") {
  StoreScratch scratch("stage_curves");
  auto store = Store::open(scratch.file("runs.db"));
  const auto names = [](const std::vector<NamedCurve>& pieces) {
    std::vector<std::string> out;
    for (const NamedCurve& piece : pieces) out.push_back(piece.name + ":" + std::to_string(piece.points.size()));
    return out;
  };
  // No marks: the whole curve under its own name.
  const int64_t plain = running_trial(*store, "plain");
  store->log_metrics(plain, {{"loss", 1, 3.0}, {"loss", 2, 2.0}});
  CHECK(names(store->stage_curves(plain, "loss")) == std::vector<std::string>{"loss:2"});
  // Points before the first mark keep the plain name; marks that are no stage number (NaN, -1, 1.5)
  // are ignored; a stage number that comes again joins its piece.
  const int64_t marked = running_trial(*store, "marked");
  store->log_metrics(marked, {{"loss", 1, 5.0},        {"stage", 2, 1.0},  {"loss", 2, 4.0},  {"stage", 3, -1.0},
                              {"stage", 3, 1.5},        {"loss", 3, 3.5},   {"stage", 4, 2.0}, {"loss", 4, 3.0},
                              {"stage", 5, std::nan("")}, {"loss", 5, 2.5}, {"stage", 6, 1.0}, {"loss", 6, 2.0}});
  CHECK(names(store->stage_curves(marked, "loss")) ==
        std::vector<std::string>{"loss:1", "loss (stage 1):3", "loss (stage 2):2"});
  // Points in one stage only: one piece, the plain name; the marks themselves are not cut.
  store->log_metrics(marked, {{"val_loss", 4, 3.1}});
  CHECK(names(store->stage_curves(marked, "val_loss")) == std::vector<std::string>{"val_loss:1"});
  CHECK(names(store->stage_curves(marked, "stage")).size() == 1);
  CHECK(store->stage_curves(marked, "nope").front().points.empty());
}

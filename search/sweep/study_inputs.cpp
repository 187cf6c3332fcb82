#include "search/sweep/study_inputs.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <random>
#include <vector>

#include "data/token_shard.h"
#include "io/atomic_dir.h"
#include "train/trainer.h"
#include "util/error.h"

namespace prime::search {

namespace fs = std::filesystem;

namespace {

// Holds an exclusive flock on a file for its lifetime (released too when the process dies).
class FileLock {
 public:
  explicit FileLock(const fs::path& path) : fd_(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644)) {
    if (fd_ < 0) throw user_error("cannot create the lock file ", path.string());
    while (::flock(fd_, LOCK_EX) != 0)
      if (errno != EINTR) throw user_error("cannot lock ", path.string());
  }
  ~FileLock() { ::close(fd_); }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_;
};

}  // namespace

void write_synthetic_shard(const std::string& path, int64_t count, int64_t vocab, uint64_t seed) {
  std::mt19937_64 generator(seed);
  const auto id_below = [&](int64_t n) { return static_cast<uint32_t>(generator() % static_cast<uint64_t>(n)); };
  std::vector<uint32_t> first(vocab), second(vocab);
  // The transition table depends on the vocabulary only, so train and validation streams (other
  // seeds) follow the same language.
  std::mt19937_64 table_generator(0x5eed + static_cast<uint64_t>(vocab));
  for (int64_t v = 0; v < vocab; ++v) {
    first[v] = static_cast<uint32_t>(table_generator() % vocab);
    second[v] = static_cast<uint32_t>(table_generator() % vocab);
  }
  std::vector<uint32_t> ids(count);
  uint32_t previous = id_below(vocab);
  for (int64_t i = 0; i < count; ++i) {
    uint32_t next;
    if (i % 64 >= 48 && i >= 32) {
      next = ids[i - 32];
    } else {
      const uint64_t roll = generator() % 8;
      next = roll < 5 ? first[previous] : roll < 7 ? second[previous] : id_below(vocab);
    }
    ids[i] = previous = next;
  }
  io::TokenShardHeader header;
  header.width = io::width_for_vocab(vocab);
  header.vocab_size = static_cast<uint32_t>(vocab);
  io::TokenShardWriter writer(path, header);
  writer.append(ids);
  writer.finish();
}

StudyInputs prepare_study_inputs(const SweepSpec& spec, const fs::path& study_dir, const std::string& device,
                                 std::ostream& log) {
  StudyInputs inputs;
  inputs.device = device;
  inputs.source = spec.source;
  inputs.teacher = spec.teacher.empty() ? spec.source : spec.teacher;
  inputs.train_data = spec.data.train;
  inputs.val_data = spec.data.val;
  if (!spec.data.synthetic && !spec.pretrain) return inputs;

  fs::create_directories(study_dir);
  const FileLock lock(study_dir / ".inputs.lock");
  if (spec.data.synthetic) {
    inputs.train_data = {(study_dir / "data" / "train.tok").string()};
    inputs.val_data = (study_dir / "data" / "val.tok").string();
    if (!fs::exists(inputs.val_data)) {
      fs::create_directories(study_dir / "data");
      log << "writing the synthetic stream (" << spec.data.synthetic_tokens << " tokens, vocabulary "
          << spec.data.synthetic_vocab << ") to " << (study_dir / "data").string() << "\n";
      write_synthetic_shard(inputs.train_data.front(), spec.data.synthetic_tokens, spec.data.synthetic_vocab,
                            spec.data.synthetic_seed);
      // Written last: its presence says both are complete.
      write_synthetic_shard(inputs.val_data, std::max<int64_t>(4096, spec.data.synthetic_tokens / 8),
                            spec.data.synthetic_vocab, spec.data.synthetic_seed + 1);
    }
  }
  if (spec.pretrain) {
    const fs::path run = study_dir / "source";
    if (!fs::exists(run / "final")) {
      if (fs::exists(run)) io::remove_tree(run);  // a pretraining killed midway (we hold the lock)
      train::TrainOptions options;
      options.device = device;
      options.dtype = "fp32";
      options.log_every = 50;
      for (const auto& item : spec.pretrain->options.items())
        apply_train_value(options, item.key(), item.value(), "pretrain." + item.key());
      options.stage = train::Stage::Pt;
      options.model = spec.source;
      options.data = inputs.train_data;
      options.out = run.string();
      log << "pretraining the source " << spec.source << " (next-token) into " << run.string() << "\n";
      const train::TrainResult result = train::run_training(options, "prime-search pretrain (" + spec.study + ")", log);
      log << "pretrained: " << result.steps << " steps, final loss " << result.last_loss << "\n";
    }
    inputs.source = inputs.teacher = (run / "final").string();
  }
  return inputs;
}

}  // namespace prime::search

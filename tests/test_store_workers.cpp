// Worker processes sharing one store: 8 forked workers finish a 40-trial queue with every
// trial claimed exactly once, and a worker killed mid-trial leaves a stale heartbeat whose trial
// is failed, re-queued and completed by the others. SQLite and PostgreSQL.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <set>
#include <thread>

#include "store/store.h"
#include "test_store_util.h"

using namespace prime::store;
using prime::test::StoreScratch;

namespace {

constexpr double kStaleSeconds = 1.0;

// What a prime-search worker does, minus the training: fail stale trials, claim, heartbeat,
// log a curve, finish; stop when nothing is waiting or running. Appends claimed ids to `log`.
void worker_loop(const std::string& url, const std::string& study_name, const std::string& log, int worker) {
  auto store = Store::open(url);
  const Study study = store->study(study_name);
  std::ofstream claims(log, std::ios::app);
  for (;;) {
    store->fail_stale_trials(study.id, kStaleSeconds, 1);
    auto trial = store->claim_trial(study.id, "worker-" + std::to_string(worker));
    if (!trial) {
      if (store->trials(study.id, TrialState::Running).empty() && store->trials(study.id, TrialState::Waiting).empty())
        return;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    claims << trial->id << std::endl;
    auto sink = store->metrics_sink(trial->id, {3600, 16});
    for (int step = 0; step < 5; ++step) {
      sink->write({"step", step, {{"loss", 1.0 / (step + 1)}}, {}});
      store->heartbeat(trial->id);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    sink->flush();
    store->finish_trial(trial->id, {TrialState::Complete, {{"loss", static_cast<double>(trial->number)}}, {},
                                    std::nullopt, ""});
  }
}

// Forks a worker; the child never returns into Catch.
pid_t spawn(const std::function<void()>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 0;
    try {
      body();
    } catch (const std::exception& error) {
      std::cerr << "worker " << ::getpid() << ": " << error.what() << "\n";
      code = 1;
    }
    ::_exit(code);
  }
  REQUIRE(pid > 0);
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::vector<int64_t> read_ids(const std::string& path) {
  std::vector<int64_t> ids;
  std::ifstream in(path);
  for (int64_t id; in >> id;) ids.push_back(id);
  return ids;
}

Study make_queue(const std::string& url, const std::string& name, int trials) {
  auto store = Store::open(url);
  const Study study = store->create_study({name, {{"loss", Direction::Minimize}}, "{}", {}});
  std::vector<std::vector<TrialParam>> params;
  for (int index = 0; index < trials; ++index) params.push_back({{"index", std::to_string(index), "int"}});
  store->enqueue_trials(study.id, params);
  return study;
}

}  // namespace

TEST_CASE("Store: 8 worker processes finish a 40-trial queue, each trial claimed exactly once", "[store][workers]") {
  StoreScratch scratch("workers");
  for (const auto& backend : prime::test::test_stores(scratch, "workers")) {
    SECTION(backend.backend) {
      make_queue(backend.url, "queue", 40);
      const auto start = std::chrono::steady_clock::now();
      std::vector<pid_t> workers;
      for (int worker = 0; worker < 8; ++worker)
        workers.push_back(spawn([&, worker] {
          worker_loop(backend.url, "queue", scratch.file("claims_" + std::to_string(worker)), worker);
        }));
      for (pid_t pid : workers) CHECK(wait_for(pid) == 0);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::multiset<int64_t> claimed;
      std::set<int> busy_workers;
      for (int worker = 0; worker < 8; ++worker)
        for (int64_t id : read_ids(scratch.file("claims_" + std::to_string(worker)))) {
          claimed.insert(id);
          busy_workers.insert(worker);
        }
      CHECK(claimed.size() == 40);
      CHECK(std::set<int64_t>(claimed.begin(), claimed.end()).size() == 40);
      auto store = Store::open(backend.url);
      const auto done = store->trials(store->study("queue").id, TrialState::Complete);
      CHECK(done.size() == 40);
      CHECK(store->curve(done.at(7).id, "loss").size() == 5);
      CHECK(busy_workers.size() > 1);
      std::cout << "store workers (" << backend.backend << "): 8 processes finished 40 trials in " << seconds << " s\n";
    }
  }
}

TEST_CASE("Store: a worker killed mid-trial leaves a stale trial that is re-queued and completed", "[store][workers]") {
  StoreScratch scratch("killed");
  for (const auto& backend : prime::test::test_stores(scratch, "killed")) {
    SECTION(backend.backend) {
      make_queue(backend.url, "queue", 6);
      // The victim claims one trial, says so through a pipe and then hangs without heartbeats.
      int ready[2];
      REQUIRE(::pipe(ready) == 0);
      const pid_t victim = spawn([&] {
        auto store = Store::open(backend.url);
        auto trial = store->claim_trial(store->study("queue").id, "victim");
        const char byte = trial ? 1 : 0;
        (void)!::write(ready[1], &byte, 1);
        for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
      });
      char byte = 0;
      REQUIRE(::read(ready[0], &byte, 1) == 1);
      REQUIRE(byte == 1);
      ::kill(victim, SIGKILL);
      CHECK(wait_for(victim) == 128 + SIGKILL);
      ::close(ready[0]);
      ::close(ready[1]);

      std::vector<pid_t> workers;
      for (int worker = 0; worker < 2; ++worker)
        workers.push_back(spawn([&, worker] {
          worker_loop(backend.url, "queue", scratch.file("claims_" + std::to_string(worker)), worker);
        }));
      for (pid_t pid : workers) CHECK(wait_for(pid) == 0);

      auto store = Store::open(backend.url);
      const int64_t study_id = store->study("queue").id;
      const auto failed = store->trials(study_id, TrialState::Fail);
      REQUIRE(failed.size() == 1);
      CHECK(failed[0].worker == "victim");
      CHECK_THAT(failed[0].error, Catch::Contains("stale heartbeat"));
      const auto done = store->trials(study_id, TrialState::Complete);
      REQUIRE(done.size() == 6);
      CHECK(done.back().retry_of == failed[0].id);
      CHECK(done.back().param("index")->value == failed[0].param("index")->value);
      CHECK(store->trials(study_id).size() == 7);
    }
  }
}

// Catch2 main. Tests run on one intra-op thread unless PRIME_TEST_THREADS says otherwise: the
// tensors are tiny, and ctest runs several test processes at once on few cores.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <ATen/Parallel.h>

#include <cstdlib>

int main(int argc, char* argv[]) {
  const char* threads = std::getenv("PRIME_TEST_THREADS");
  at::set_num_threads(threads ? std::atoi(threads) : 1);
  return Catch::Session().run(argc, argv);
}

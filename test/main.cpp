// The test binary's main: runs Catch2, then ends the output with the plain
// line "N passed, N failed" (test cases) that CI reads.

#define CATCH_CONFIG_RUNNER
#include <signal.h>

#include <catch2/catch.hpp>
#include <cstdio>

#include "log.hpp"

namespace {

Catch::Totals g_totals;

struct TotalsListener : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testRunEnded(const Catch::TestRunStats& stats) override { g_totals = stats.totals; }
};

}  // namespace

CATCH_REGISTER_LISTENER(TotalsListener)

int main(int argc, char** argv) {
  // A webhook or server that vanishes mid-write must not kill the tests.
  signal(SIGPIPE, SIG_IGN);
  // Unit tests drive jobs in this process; their event lines are noise here.
  SetLogFormat(LogFormat::kSilent);
  int result = Catch::Session().run(argc, argv);
  fflush(stdout);
  printf("%zu passed, %zu failed\n", g_totals.testCases.passed, g_totals.testCases.failed);
  return result;
}

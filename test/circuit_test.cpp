// Unit tests of Circuit (circuit.hpp), the breaker and the adaptive limit,
// with a clock the test moves by hand, and of ClassifyCall (webhook.hpp),
// which tells Circuit what a call's result means.

#include "circuit.hpp"

#include <catch2/catch.hpp>

#include "job.hpp"
#include "webhook.hpp"

namespace {

using std::chrono::milliseconds;

JobOptions Options(int concurrency = 16) {
  JobOptions options;
  options.concurrency = concurrency;
  options.backoff_ms = 100;
  options.max_backoff_ms = 400;
  options.max_outage_ms = 10000;
  return options;
}

// Records signal for a call that started just now.
bool RecordNow(Circuit* circuit, Signal signal, Clock::time_point now, const JobOptions& options) {
  return circuit->Record(signal, circuit->Issue(), "boom", now, options);
}

}  // namespace

TEST_CASE("ClassifyCall tells real answers from faults, overloads and calls that never went out",
          "[unit][circuit]") {
  CallResult r;
  r.status = 200;
  CHECK(ClassifyCall(r) == Signal::kAnswer);
  r.status = 404;
  CHECK(ClassifyCall(r) == Signal::kAnswer);
  r.status = 429;
  CHECK(ClassifyCall(r) == Signal::kOverload);
  r.status = 503;
  CHECK(ClassifyCall(r) == Signal::kOverload);
  r.status = 500;
  CHECK(ClassifyCall(r) == Signal::kFault);
  r.status = 0;
  r.code = CURLE_COULDNT_CONNECT;
  CHECK(ClassifyCall(r) == Signal::kUnreachable);
  r.code = CURLE_OPERATION_TIMEDOUT;
  CHECK(ClassifyCall(r) == Signal::kUnreachable);
  r.sent = true;
  CHECK(ClassifyCall(r) == Signal::kOverload);
  r.code = CURLE_RECV_ERROR;
  CHECK(ClassifyCall(r) == Signal::kOverload);
  // The request's own fault, and a reply too long: the webhook is fine.
  r.code = CURLE_URL_MALFORMAT;
  CHECK(ClassifyCall(r) == Signal::kAnswer);
  r.code = CURLE_OK;
  r.status = 200;
  r.too_large = true;
  CHECK(ClassifyCall(r) == Signal::kAnswer);
}

TEST_CASE(
    "Circuit opens after kOpenAfter failures in a row, and an answer between resets the count",
    "[unit][circuit]") {
  const JobOptions options = Options();
  Circuit circuit(options);
  Clock::time_point now = Clock::now();
  for (int i = 1; i < Circuit::kOpenAfter; ++i) {
    CHECK_FALSE(RecordNow(&circuit, Signal::kFault, now, options));
  }
  CHECK_FALSE(RecordNow(&circuit, Signal::kAnswer, now, options));
  for (int i = 1; i < Circuit::kOpenAfter; ++i) {
    CHECK_FALSE(RecordNow(&circuit, Signal::kFault, now, options));
  }
  CHECK(circuit.closed());
  // The failure that opens it puts its input back, as do all after it.
  CHECK(RecordNow(&circuit, Signal::kFault, now, options));
  CHECK(circuit.state() == CircuitState::kOpen);
  CHECK(RecordNow(&circuit, Signal::kUnreachable, now, options));
  CHECK_FALSE(circuit.Admits(0));
  CHECK(circuit.last_error() == "boom");
}

TEST_CASE("Circuit sends one probe after backoff_ms, doubling the wait up to max_backoff_ms",
          "[unit][circuit]") {
  const JobOptions options = Options();
  Circuit circuit(options);
  Clock::time_point now = Clock::now();
  for (int i = 0; i < Circuit::kOpenAfter; ++i)
    RecordNow(&circuit, Signal::kUnreachable, now, options);
  REQUIRE(circuit.state() == CircuitState::kOpen);
  int64_t expected_wait_ms = options.backoff_ms;
  for (int round = 0; round < 4; ++round) {
    Clock::time_point wake;
    CHECK_FALSE(circuit.ProbeDue(now + milliseconds(expected_wait_ms - 1), &wake));
    CHECK(wake == now + milliseconds(expected_wait_ms));
    now += milliseconds(expected_wait_ms);
    REQUIRE(circuit.ProbeDue(now, &wake));
    Circuit::Ticket probe = circuit.Issue();
    circuit.StartProbe(&probe);
    CHECK(circuit.state() == CircuitState::kHalfOpen);
    CHECK_FALSE(circuit.ProbeDue(now + std::chrono::hours(1), &wake));  // one at a time
    CHECK(circuit.Record(Signal::kFault, probe, "still down", now, options));
    CHECK(circuit.state() == CircuitState::kOpen);
    expected_wait_ms = std::min(expected_wait_ms * 2, options.max_backoff_ms);
  }
  CHECK(expected_wait_ms == options.max_backoff_ms);
}

TEST_CASE("Circuit closes on a real answer and ramps up from one call rather than bursting",
          "[unit][circuit]") {
  const JobOptions options = Options(16);
  Circuit circuit(options);
  Clock::time_point now = Clock::now();
  CHECK(circuit.limit() == 16);  // a job starts at its ceiling
  for (int i = 0; i < Circuit::kOpenAfter; ++i)
    RecordNow(&circuit, Signal::kUnreachable, now, options);
  Clock::time_point wake;
  REQUIRE(circuit.ProbeDue(now + milliseconds(options.backoff_ms), &wake));
  Circuit::Ticket probe = circuit.Issue();
  circuit.StartProbe(&probe);
  CHECK_FALSE(circuit.Record(Signal::kAnswer, probe, "", now, options));
  CHECK(circuit.closed());
  CHECK(circuit.limit() == 1);
  // Slow start: one more a real answer up to half the ceiling...
  for (int i = 0; i < 7; ++i) RecordNow(&circuit, Signal::kAnswer, now, options);
  CHECK(circuit.limit() == 8);
  // ...then about one more a round of limit answers.
  for (int i = 0; i < 8; ++i) RecordNow(&circuit, Signal::kAnswer, now, options);
  CHECK(circuit.limit() == 8);
  RecordNow(&circuit, Signal::kAnswer, now, options);
  CHECK(circuit.limit() == 9);
  for (int i = 0; i < 1000; ++i) RecordNow(&circuit, Signal::kAnswer, now, options);
  CHECK(circuit.limit() == 16);  // never past the ceiling
}

TEST_CASE("Circuit halves its limit once for the calls that were out together", "[unit][circuit]") {
  const JobOptions options = Options(16);
  Circuit circuit(options);
  Clock::time_point now = Clock::now();
  Circuit::Ticket a = circuit.Issue();
  Circuit::Ticket b = circuit.Issue();
  circuit.Record(Signal::kOverload, a, "429", now, options);
  CHECK(circuit.limit() == 8);
  circuit.Record(Signal::kOverload, b, "429", now, options);  // same crowd: no second cut
  CHECK(circuit.limit() == 8);
  circuit.Record(Signal::kOverload, circuit.Issue(), "429", now, options);
  CHECK(circuit.limit() == 4);
  // A 500 is a fault, not an overload: the limit stays.
  circuit.Record(Signal::kAnswer, circuit.Issue(), "", now, options);
  circuit.Record(Signal::kFault, circuit.Issue(), "500", now, options);
  CHECK(circuit.limit() == 4);
  for (int i = 0; i < 10; ++i) circuit.Record(Signal::kOverload, circuit.Issue(), "", now, options);
  CHECK(circuit.limit() == 1);  // never below one
}

TEST_CASE("Circuit with max_outage_ms 0 never opens, and with adaptive false never cuts its limit",
          "[unit][circuit]") {
  JobOptions options = Options(8);
  options.max_outage_ms = 0;
  options.adaptive = false;
  Circuit circuit(options);
  Clock::time_point now = Clock::now();
  for (int i = 0; i < 50; ++i) {
    CHECK_FALSE(RecordNow(&circuit, Signal::kUnreachable, now, options));
  }
  CHECK(circuit.closed());
  CHECK(circuit.limit() == 8);
}

TEST_CASE("Circuit's outage is over max_outage_ms after it opened, later by any pause",
          "[unit][circuit]") {
  const JobOptions options = Options();
  Circuit circuit(options);
  Clock::time_point now = Clock::now();
  for (int i = 0; i < Circuit::kOpenAfter; ++i) RecordNow(&circuit, Signal::kFault, now, options);
  REQUIRE_FALSE(circuit.closed());
  CHECK_FALSE(circuit.OutageOver(now + milliseconds(options.max_outage_ms - 1), options));
  CHECK(circuit.OutageOver(now + milliseconds(options.max_outage_ms), options));
  circuit.Postpone(milliseconds(500));
  CHECK_FALSE(circuit.OutageOver(now + milliseconds(options.max_outage_ms), options));
  CHECK(circuit.OutageDeadline(options) == now + milliseconds(options.max_outage_ms + 500));
  circuit.Reset();
  CHECK(circuit.closed());
  CHECK_FALSE(circuit.OutageOver(now + std::chrono::hours(1), options));
}

TEST_CASE("Circuit::Retune follows a changed ceiling and a breaker turned off", "[unit][circuit]") {
  JobOptions options = Options(16);
  Circuit circuit(options);
  options.concurrency = 4;
  circuit.Retune(options);
  CHECK(circuit.limit() == 4);
  // A limit at its ceiling follows it up; one cut by overload does not.
  options.concurrency = 32;
  circuit.Retune(options);
  CHECK(circuit.limit() == 32);
  circuit.Record(Signal::kOverload, circuit.Issue(), "429", Clock::now(), options);
  REQUIRE(circuit.limit() == 16);
  options.concurrency = 64;
  circuit.Retune(options);
  CHECK(circuit.limit() == 16);
  options.concurrency = 4;
  circuit.Retune(options);
  CHECK(circuit.limit() == 4);
  Clock::time_point now = Clock::now();
  for (int i = 0; i < Circuit::kOpenAfter; ++i) RecordNow(&circuit, Signal::kFault, now, options);
  REQUIRE_FALSE(circuit.closed());
  options.max_outage_ms = 0;
  circuit.Retune(options);
  CHECK(circuit.closed());
}

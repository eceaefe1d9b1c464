// Unit tests of JobStats: the ring of seconds, the latency percentiles and
// the failure messages, with time given by the test, never read.

#include "job_stats.hpp"

#include <catch2/catch.hpp>
#include <thread>

#include "test/harness.hpp"

namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using Clk = JobStats::Clock;

const Clk::time_point kOrigin = Clk::time_point() + std::chrono::hours(1000);

Clk::time_point At(double s) {
  return kOrigin + std::chrono::duration_cast<Clk::duration>(std::chrono::duration<double>(s));
}

}  // namespace

TEST_CASE("the ring counts each second's successes and failures", "[stats]") {
  JobStats stats(kOrigin);
  for (int i = 0; i < 3; ++i) stats.RecordCall(At(0.5), milliseconds(1), true);
  stats.RecordCall(At(0.9), milliseconds(1), false, "boom");
  stats.RecordCall(At(1.1), milliseconds(1), true);
  JobStats::Second now = stats.At(At(1.5), 0);
  JobStats::Second before = stats.At(At(1.5), 1);
  REQUIRE(now.calls == 1);
  REQUIRE(now.succeeded == 1);
  REQUIRE(before.calls == 4);
  REQUIRE(before.succeeded == 3);
  REQUIRE(before.failed == 1);
  REQUIRE(stats.At(At(1.5), 2).calls == 0);  // before the origin
}

TEST_CASE("idle seconds read as zero, not as what their slot held a window ago", "[stats]") {
  JobStats stats(kOrigin);
  stats.RecordCall(At(10.2), milliseconds(1), true);
  stats.RecordCall(At(10.3), milliseconds(1), true);
  // 14 s later, the seconds between were idle.
  for (int ago = 0; ago < 14; ++ago) REQUIRE(stats.At(At(24.0), ago).calls == 0);
  REQUIRE(stats.At(At(24.0), 14).calls == 2);
  // A window later, slot 10 is stale: it still holds second 10's count.
  const double later = 10.0 + JobStats::kWindowSeconds;
  REQUIRE(stats.At(At(later), 0).calls == 0);
  REQUIRE(stats.At(At(later + 5), JobStats::kWindowSeconds - 1).calls == 0);
}

TEST_CASE("the ring rolls over: a second reuses the slot of the one a window before", "[stats]") {
  JobStats stats(kOrigin);
  const int w = JobStats::kWindowSeconds;
  for (int s = 0; s < 2 * w + 7; ++s) {
    for (int i = 0; i < s % 5 + 1; ++i) stats.RecordCall(At(s + 0.5), milliseconds(2), s % 2 == 0);
  }
  const Clk::time_point now = At(2 * w + 6 + 0.5);
  for (int ago = 0; ago < w; ++ago) {
    const int s = 2 * w + 6 - ago;
    INFO("second " << s);
    JobStats::Second got = stats.At(now, ago);
    REQUIRE(got.calls == static_cast<uint64_t>(s % 5 + 1));
    REQUIRE(got.succeeded == (s % 2 == 0 ? got.calls : 0));
  }
  REQUIRE(stats.At(now, w).calls == 0);  // out of the window
  // The recent rate: seconds 1..5 before now.
  double expected = 0;
  for (int ago = 1; ago <= JobStats::kRecentSeconds; ++ago) expected += (2 * w + 6 - ago) % 5 + 1;
  REQUIRE(stats.RecentRate(now) == Approx(expected / JobStats::kRecentSeconds));
}

TEST_CASE("buckets are contiguous, log-spaced and at most a quarter wide", "[stats]") {
  for (int b = 0; b + 1 < JobStats::kBuckets; ++b) {
    INFO("bucket " << b);
    REQUIRE(JobStats::BucketUpperUs(b) == JobStats::BucketLowerUs(b + 1));
    if (b >= 4) REQUIRE(JobStats::BucketUpperUs(b) <= 1.25 * JobStats::BucketLowerUs(b));
  }
  for (uint64_t us : {0ull, 1ull, 3ull, 4ull, 7ull, 8ull, 999ull, 1000ull, 123456ull}) {
    int b = JobStats::BucketOf(us);
    INFO(us << " us in bucket " << b);
    REQUIRE(JobStats::BucketLowerUs(b) <= us);
    REQUIRE(us < JobStats::BucketUpperUs(b));
  }
  REQUIRE(JobStats::BucketLowerUs(JobStats::kBuckets - 1) >= 58e6);  // 60 s and up: the last
  REQUIRE(JobStats::BucketOf(3600ull * 1000 * 1000) == JobStats::kBuckets - 1);
}

TEST_CASE("percentiles of known distributions are within a bucket's width", "[stats]") {
  JobStats empty(kOrigin);
  REQUIRE(empty.Percentile(0.5) == 0);

  // Uniform over 1..1000 ms.
  JobStats uniform(kOrigin);
  for (int ms = 1; ms <= 1000; ++ms) uniform.RecordCall(At(1), milliseconds(ms), true);
  REQUIRE(uniform.Percentile(0.50) == Approx(0.500).epsilon(0.13));
  REQUIRE(uniform.Percentile(0.95) == Approx(0.950).epsilon(0.13));
  REQUIRE(uniform.Percentile(0.99) == Approx(0.990).epsilon(0.13));

  // 90% fast (2 ms), 10% slow (3 s): p50 is fast, p95 and p99 slow.
  JobStats bimodal(kOrigin);
  for (int i = 0; i < 900; ++i) bimodal.RecordCall(At(1), milliseconds(2), true);
  for (int i = 0; i < 100; ++i) bimodal.RecordCall(At(1), seconds(3), false, "slow");
  REQUIRE(bimodal.Percentile(0.50) == Approx(0.002).epsilon(0.25));
  REQUIRE(bimodal.Percentile(0.95) == Approx(3.0).epsilon(0.25));
  REQUIRE(bimodal.Percentile(0.99) == Approx(3.0).epsilon(0.25));
  REQUIRE(bimodal.Percentile(0.50) < bimodal.Percentile(0.95));
}

TEST_CASE("the top messages are counted, most frequent first, and bounded", "[stats]") {
  JobStats stats(kOrigin);
  for (int i = 0; i < 30; ++i) stats.RecordCall(At(1), milliseconds(1), false, "HTTP 500");
  for (int i = 0; i < 10; ++i) stats.RecordCall(At(1), milliseconds(1), false, "timeout");
  stats.RecordCall(At(1), milliseconds(1), true);  // successes count no message
  // Many one-off messages: the table stays bounded, and the frequent ones
  // stay as long as they outnumber the one-offs over the table's size
  // (space-saving's guarantee).
  for (int i = 0; i < 200; ++i) {
    stats.RecordCall(At(1), milliseconds(1), false, "rare " + std::to_string(i));
  }
  for (int i = 0; i < 20; ++i) stats.RecordCall(At(1), milliseconds(1), false, "HTTP 500");
  auto top = stats.TopMessages();
  REQUIRE(top.size() == JobStats::kMessagesShown);
  REQUIRE(top[0].first == "HTTP 500");
  REQUIRE(top[0].second == 50);
  REQUIRE(top[1].first == "timeout");
  REQUIRE(top[1].second == 10);
  for (size_t i = 1; i < top.size(); ++i) REQUIRE(top[i - 1].second >= top[i].second);
  // A message too long is cut.
  stats.RecordCall(At(1), milliseconds(1), false, std::string(5000, 'x'));
  REQUIRE(stats.ToJson(At(1)).find(std::string(JobStats::kMessageBytes + 1, 'x')) ==
          std::string::npos);
}

TEST_CASE("the latest failures are kept newest first, at most kFailuresKept", "[stats]") {
  JobStats stats(kOrigin);
  for (int i = 0; i < 50; ++i) stats.RecordFailure("k" + std::to_string(i), 422, "nope", 3);
  rapidjson::Document doc = ParseJson(stats.ToJson(At(2)));
  const auto& failures = doc["recent_failures"];
  REQUIRE(failures.Size() == JobStats::kFailuresKept);
  REQUIRE(Text(failures[0], "key") == "k49");
  REQUIRE(U64(failures[0], "status") == 422);
  REQUIRE(U64(failures[0], "attempts") == 3);
  REQUIRE(doc["succeeded"].Size() == JobStats::kWindowSeconds);
  REQUIRE(doc["latency"]["buckets"].Size() == 0);
}

TEST_CASE("the stats JSON shows the window oldest first and the histogram's used stretch",
          "[stats]") {
  JobStats stats(kOrigin);
  stats.RecordCall(At(3.2), milliseconds(5), true);
  stats.RecordCall(At(4.2), milliseconds(50), false, "HTTP 503");
  rapidjson::Document doc = ParseJson(stats.ToJson(At(4.5)));
  const auto& ok = doc["succeeded"];
  const auto& failed = doc["failed"];
  const unsigned last = JobStats::kWindowSeconds - 1;
  REQUIRE(failed[last].GetUint64() == 1);  // the current second, last
  REQUIRE(ok[last - 1].GetUint64() == 1);
  REQUIRE(U64(doc["latency"], "calls") == 2);
  const auto& buckets = doc["latency"]["buckets"];
  REQUIRE(buckets.Size() >= 2);
  REQUIRE(buckets[0][0].GetDouble() <= 5.0);
  REQUIRE(buckets[buckets.Size() - 1][1].GetDouble() > 50.0);
  REQUIRE(Text(doc["errors"][0], "message") == "HTTP 503");
}

TEST_CASE("concurrent recording loses no call", "[stats]") {
  JobStats stats(kOrigin);
  const int kThreads = 4;
  const int kCalls = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&stats, t] {
      for (int i = 0; i < kCalls; ++i) stats.RecordCall(At(7.5), milliseconds(1), (i + t) % 4 != 0);
    });
  }
  for (auto& t : threads) t.join();
  JobStats::Second s = stats.At(At(7.9), 0);
  REQUIRE(s.calls == kThreads * kCalls);
  REQUIRE(s.failed == kThreads * kCalls / 4);
}

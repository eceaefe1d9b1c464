// JobStats is what the page at / shows of one job beyond its counters: the
// webhook calls of the last kWindowSeconds at one-second resolution
// (successes and failures), a latency histogram with percentile estimates,
// the most frequent failure messages with their counts, and the latest
// failed entries. Each Job owns one; the Dispatcher's workers record every
// finished attempt (RecordCall) and every final failure (RecordFailure);
// API threads read it as JSON.
//
// Thread-safe. RecordCall on a successful attempt is the hot path (one a
// webhook call, tens of thousands a second): it takes no lock, only relaxed
// atomics, as Metrics does. The failure paths take mutex_, which guards
// the messages and entries only. A reader may see a call counted in the
// ring and not yet in the histogram: the numbers are for eyes, not sums.
// Memory: the ring and the histogram (5.6 KB) are allocated on the first
// call, so a job that never called costs a few hundred bytes.

#ifndef PMMAP_JOB_STATS_HPP_
#define PMMAP_JOB_STATS_HPP_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mutex.hpp"
#include "thread_annotations.hpp"

class JobStats {
 public:
  using Clock = std::chrono::steady_clock;

  // How many seconds the ring keeps, one slot a second.
  static constexpr int kWindowSeconds = 600;
  // The histogram's buckets, in microseconds: [0,1), [1,2), [2,3), [3,4),
  // then four a power of two ([4,5), [5,6), [6,7), [7,8), [8,10), ...), so
  // that each is at most a quarter wider than its lower bound; the last one
  // starts at 58.7 s and takes everything longer.
  static constexpr int kBuckets = 100;
  // How many distinct failure messages are counted (a message past the
  // limit replaces the least frequent, "space-saving"), and how many shown.
  static constexpr size_t kMessagesKept = 64;
  static constexpr size_t kMessagesShown = 20;
  static constexpr size_t kMessageBytes = 200;  // a longer message is cut
  // How many of the latest failed entries are kept.
  static constexpr size_t kFailuresKept = 20;
  // The span of the "recent" rate of calls, in whole seconds before the current one.
  static constexpr int kRecentSeconds = 5;

  // Seconds count from origin, the job's creation.
  explicit JobStats(Clock::time_point origin = Clock::now());
  ~JobStats();
  JobStats(const JobStats&) = delete;
  JobStats& operator=(const JobStats&) = delete;

  // One finished webhook attempt, ended at `end` after `latency`. A failed
  // one (success false) has its message counted.
  void RecordCall(Clock::time_point end, Clock::duration latency, bool success,
                  const std::string& message = std::string());
  // One input's final failure, as its error entry says.
  void RecordFailure(const std::string& key, long status, const std::string& message, int attempts);

  // The estimated latency at quantile q (0 < q <= 1), in seconds, read from
  // the histogram (linear within a bucket); 0 if no call was recorded.
  double Percentile(double q) const;
  // Calls, successes and failures in the whole second `ago` seconds before
  // the one holding now (0: the current, partial second).
  struct Second {
    uint64_t calls = 0;
    uint64_t succeeded = 0;
    uint64_t failed = 0;
  };
  Second At(Clock::time_point now, int ago) const;
  // Calls a second over the kRecentSeconds whole seconds before now.
  double RecentRate(Clock::time_point now) const;
  // The failure messages, most frequent first, at most kMessagesShown.
  std::vector<std::pair<std::string, uint64_t>> TopMessages() const;

  // {"recent_calls_per_sec": ...}: the little that the jobs list shows.
  std::string SummaryJson(Clock::time_point now) const;
  // Everything, as GET /job/{id}/stats answers: the ring oldest first
  // ("succeeded" and "failed", kWindowSeconds each), the latency
  // percentiles in ms and the non-empty stretch of the histogram, the top
  // messages and the latest failures, newest first.
  std::string ToJson(Clock::time_point now) const;

  // The bucket of a latency of us microseconds, and a bucket's bounds.
  static int BucketOf(uint64_t us);
  static double BucketLowerUs(int bucket);
  static double BucketUpperUs(int bucket);

 private:
  struct Failure {
    std::string key;
    long status = 0;
    std::string message;
    int attempts = 0;
    std::chrono::system_clock::time_point at;
  };

  // A ring slot packs the second it counts (from origin_, its low
  // kStampBits) with that second's successes and failures (kCountBits
  // each), so that one compare-and-swap both claims a slot for a new second
  // and counts, and a reader tells a stale slot (an idle second, or one
  // kWindowSeconds old) from a current one.
  static constexpr int kStampBits = 24;  // 194 days before a stamp repeats
  static constexpr int kCountBits = 20;  // a million calls a second
  struct Block {
    std::atomic<uint64_t> ring[kWindowSeconds] = {};
    std::atomic<uint64_t> buckets[kBuckets] = {};
  };
  // The block, allocated by the first call.
  Block* block();
  static Second Unpack(uint64_t slot, uint64_t second);
  uint64_t SecondOf(Clock::time_point t) const;
  void CountMessage(const std::string& message) REQUIRES(mutex_);
  // ToJson's parts.
  void AppendRing(Clock::time_point now, std::string* out) const;
  void AppendLatency(std::string* out) const;
  void AppendFailures(std::string* out) const;

  const Clock::time_point origin_;
  std::atomic<Block*> block_{nullptr};  // owned; set once
  std::atomic<uint64_t> calls_{0};

  mutable Mutex mutex_;
  std::map<std::string, uint64_t> messages_ GUARDED_BY(mutex_);
  // Oldest first. A vector, not a deque, which would allocate for every job
  // up front.
  std::vector<Failure> failures_ GUARDED_BY(mutex_);
};

#endif  // PMMAP_JOB_STATS_HPP_

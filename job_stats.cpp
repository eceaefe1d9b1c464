#include "job_stats.hpp"

#include <algorithm>
#include <cstdio>

#include "json.hpp"
#include "log.hpp"

namespace {

constexpr uint64_t Mask(int bits) { return (uint64_t{1} << bits) - 1; }

void AppendNumber(double value, std::string* out) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.6g", value);
  out->append(buf);
}

}  // namespace

JobStats::JobStats(Clock::time_point origin) : origin_(origin) {}

JobStats::~JobStats() { delete block_.load(); }

JobStats::Block* JobStats::block() {
  Block* block = block_.load(std::memory_order_acquire);
  if (block != nullptr) return block;
  // Two first calls at once both allocate; the loser frees its own.
  Block* fresh = new Block();
  if (block_.compare_exchange_strong(block, fresh, std::memory_order_acq_rel)) return fresh;
  delete fresh;
  return block;
}

uint64_t JobStats::SecondOf(Clock::time_point t) const {
  if (t < origin_) return 0;
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(t - origin_).count());
}

int JobStats::BucketOf(uint64_t us) {
  if (us < 4) return static_cast<int>(us);
  const int k = 63 - __builtin_clzll(us) - 2;  // us is in [4 << k, 8 << k)
  const int bucket = 4 + 4 * k + static_cast<int>((us >> k) - 4);
  return std::min(bucket, kBuckets - 1);
}

double JobStats::BucketLowerUs(int bucket) {
  if (bucket < 4) return bucket;
  const int k = (bucket - 4) / 4;
  return static_cast<double>(uint64_t{4 + static_cast<uint64_t>((bucket - 4) % 4)} << k);
}

double JobStats::BucketUpperUs(int bucket) {
  if (bucket < 4) return bucket + 1;
  const int k = (bucket - 4) / 4;
  return static_cast<double>(uint64_t{5 + static_cast<uint64_t>((bucket - 4) % 4)} << k);
}

void JobStats::RecordCall(Clock::time_point end, Clock::duration latency, bool success,
                          const std::string& message) {
  Block* b = block();
  const uint64_t us = static_cast<uint64_t>(
      std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::microseconds>(latency).count()));
  b->buckets[BucketOf(us)].fetch_add(1, std::memory_order_relaxed);
  calls_.fetch_add(1, std::memory_order_relaxed);

  const uint64_t stamp = SecondOf(end) & Mask(kStampBits);
  std::atomic<uint64_t>& slot = b->ring[SecondOf(end) % kWindowSeconds];
  uint64_t old = slot.load(std::memory_order_relaxed);
  for (;;) {
    uint64_t ok = 0;
    uint64_t failed = 0;
    if ((old >> (2 * kCountBits)) == stamp) {  // else the slot holds an older second: restart it
      ok = (old >> kCountBits) & Mask(kCountBits);
      failed = old & Mask(kCountBits);
    }
    uint64_t& count = success ? ok : failed;
    if (count < Mask(kCountBits)) ++count;
    const uint64_t next = (stamp << (2 * kCountBits)) | (ok << kCountBits) | failed;
    if (slot.compare_exchange_weak(old, next, std::memory_order_relaxed)) break;
  }
  if (!success) {
    MutexLock lock(&mutex_);
    CountMessage(message);
  }
}

void JobStats::CountMessage(const std::string& message) {
  const std::string text = message.substr(0, kMessageBytes);
  auto it = messages_.find(text);
  if (it != messages_.end()) {
    ++it->second;
    return;
  }
  if (messages_.size() < kMessagesKept) {
    messages_.emplace(text, 1);
    return;
  }
  // Space-saving: the newcomer takes the least frequent one's place and
  // count, plus one, so that a message that keeps coming climbs back.
  auto least = std::min_element(messages_.begin(), messages_.end(),
                                [](const auto& a, const auto& b) { return a.second < b.second; });
  const uint64_t count = least->second + 1;
  messages_.erase(least);
  messages_.emplace(text, count);
}

void JobStats::RecordFailure(const std::string& key, long status, const std::string& message,
                             int attempts) {
  Failure failure;
  failure.key = key.substr(0, kMessageBytes);
  failure.status = status;
  failure.message = message.substr(0, kMessageBytes);
  failure.attempts = attempts;
  failure.at = std::chrono::system_clock::now();
  MutexLock lock(&mutex_);
  if (failures_.size() == kFailuresKept) failures_.erase(failures_.begin());
  failures_.push_back(std::move(failure));
}

double JobStats::Percentile(double q) const {
  const Block* b = block_.load(std::memory_order_acquire);
  if (b == nullptr) return 0;
  uint64_t counts[kBuckets];
  uint64_t total = 0;
  for (int i = 0; i < kBuckets; ++i) {
    counts[i] = b->buckets[i].load(std::memory_order_relaxed);
    total += counts[i];
  }
  if (total == 0) return 0;
  const double target = q * static_cast<double>(total);
  double below = 0;
  for (int i = 0; i < kBuckets; ++i) {
    if (counts[i] == 0) continue;
    const double c = static_cast<double>(counts[i]);
    if (below + c >= target) {
      const double within = std::max(0.0, std::min(1.0, (target - below) / c));
      const double lower = BucketLowerUs(i);
      return (lower + within * (BucketUpperUs(i) - lower)) / 1e6;
    }
    below += c;
  }
  return BucketUpperUs(kBuckets - 1) / 1e6;
}

JobStats::Second JobStats::Unpack(uint64_t slot, uint64_t second) {
  Second s;
  if ((slot >> (2 * kCountBits)) != (second & Mask(kStampBits))) return s;
  s.succeeded = (slot >> kCountBits) & Mask(kCountBits);
  s.failed = slot & Mask(kCountBits);
  s.calls = s.succeeded + s.failed;
  return s;
}

JobStats::Second JobStats::At(Clock::time_point now, int ago) const {
  const Block* b = block_.load(std::memory_order_acquire);
  const uint64_t current = SecondOf(now);
  if (b == nullptr || ago < 0 || ago >= kWindowSeconds || static_cast<uint64_t>(ago) > current) {
    return Second();
  }
  const uint64_t second = current - ago;
  return Unpack(b->ring[second % kWindowSeconds].load(std::memory_order_relaxed), second);
}

double JobStats::RecentRate(Clock::time_point now) const {
  uint64_t calls = 0;
  for (int ago = 1; ago <= kRecentSeconds; ++ago) calls += At(now, ago).calls;
  return static_cast<double>(calls) / kRecentSeconds;
}

std::vector<std::pair<std::string, uint64_t>> JobStats::TopMessages() const {
  std::vector<std::pair<std::string, uint64_t>> top;
  {
    MutexLock lock(&mutex_);
    top.assign(messages_.begin(), messages_.end());
  }
  std::stable_sort(top.begin(), top.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  if (top.size() > kMessagesShown) top.resize(kMessagesShown);
  return top;
}

std::string JobStats::SummaryJson(Clock::time_point now) const {
  std::string out = "{\"recent_calls_per_sec\":";
  AppendNumber(RecentRate(now), &out);
  out.push_back('}');
  return out;
}

void JobStats::AppendRing(Clock::time_point now, std::string* out) const {
  Second seconds[kWindowSeconds];
  for (int ago = 0; ago < kWindowSeconds; ++ago) seconds[ago] = At(now, ago);
  out->append("\"succeeded\":[");
  for (int ago = kWindowSeconds - 1; ago >= 0; --ago) {
    out->append(std::to_string(seconds[ago].succeeded)).append(ago > 0 ? "," : "");
  }
  out->append("],\"failed\":[");
  for (int ago = kWindowSeconds - 1; ago >= 0; --ago) {
    out->append(std::to_string(seconds[ago].failed)).append(ago > 0 ? "," : "");
  }
  out->append("]");
}

void JobStats::AppendLatency(std::string* out) const {
  out->append("{\"calls\":").append(std::to_string(calls_.load(std::memory_order_relaxed)));
  const char* const names[] = {"p50_ms", "p95_ms", "p99_ms"};
  const double quantiles[] = {0.50, 0.95, 0.99};
  for (int i = 0; i < 3; ++i) {
    out->append(",\"").append(names[i]).append("\":");
    AppendNumber(Percentile(quantiles[i]) * 1e3, out);
  }
  // [lower_ms, upper_ms, count] from the first non-empty bucket to the last.
  out->append(",\"buckets\":[");
  const Block* b = block_.load(std::memory_order_acquire);
  uint64_t counts[kBuckets] = {};
  int first = kBuckets;
  int last = -1;
  for (int i = 0; b != nullptr && i < kBuckets; ++i) {
    counts[i] = b->buckets[i].load(std::memory_order_relaxed);
    if (counts[i] == 0) continue;
    first = std::min(first, i);
    last = i;
  }
  for (int i = first; i <= last; ++i) {
    out->append(i > first ? ",[" : "[");
    AppendNumber(BucketLowerUs(i) / 1e3, out);
    out->push_back(',');
    AppendNumber(BucketUpperUs(i) / 1e3, out);
    out->append(",").append(std::to_string(counts[i])).append("]");
  }
  out->append("]}");
}

void JobStats::AppendFailures(std::string* out) const {
  out->append("[");
  MutexLock lock(&mutex_);
  for (auto it = failures_.rbegin(); it != failures_.rend(); ++it) {
    const Failure& f = *it;
    out->append(out->back() == '[' ? "{\"key\":" : ",{\"key\":");
    AppendJsonString(f.key, out);
    out->append(",\"status\":").append(std::to_string(f.status)).append(",\"message\":");
    AppendJsonString(f.message, out);
    out->append(",\"attempts\":").append(std::to_string(f.attempts));
    out->append(",\"at\":\"").append(Rfc3339(f.at)).append("\"}");
  }
  out->append("]");
}

std::string JobStats::ToJson(Clock::time_point now) const {
  std::string out = "{\"window_s\":";
  out.append(std::to_string(kWindowSeconds)).append(",\"recent_calls_per_sec\":");
  AppendNumber(RecentRate(now), &out);
  out.push_back(',');
  AppendRing(now, &out);
  out.append(",\"latency\":");
  AppendLatency(&out);
  out.append(",\"errors\":[");
  bool first = true;
  for (const auto& message : TopMessages()) {
    out.append(first ? "{\"message\":" : ",{\"message\":");
    first = false;
    AppendJsonString(message.first, &out);
    out.append(",\"count\":").append(std::to_string(message.second)).append("}");
  }
  out.append("],\"recent_failures\":");
  AppendFailures(&out);
  out.push_back('}');
  return out;
}

// Unit tests of the webhook contract's pure decisions (webhook.hpp): how a
// key becomes a URL, which results succeed, retry or fail, how long to wait
// before the next attempt, how Retry-After is read, and how a call is
// signed. No network is used.

#include "webhook.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <climits>
#include <cstdint>
#include <ctime>
#include <random>
#include <string>

#include "request.hpp"

namespace {

int64_t Ms(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

// The largest of `samples` backoff delays, after checking each is within [0, ceiling].
int64_t MaxBackoff(int attempts, int64_t base_ms, int64_t cap_ms, int64_t ceiling,
                   std::mt19937_64* rng, int samples = 2000) {
  int64_t max = -1;
  for (int i = 0; i < samples; ++i) {
    Clock::duration d = BackoffDelay(attempts, base_ms, cap_ms, rng);
    INFO("attempts " << attempts << " base " << base_ms << " cap " << cap_ms);
    REQUIRE(d >= Clock::duration::zero());
    REQUIRE(Ms(d) <= ceiling);
    max = std::max(max, Ms(d));
  }
  return max;
}

// 2015-10-21 07:28:00 UTC, the date of the HTTP-date examples below.
constexpr time_t kOct21 = 1445412480;

// A reply with the given status and Retry-After value ("" if none).
CallResult Reply(long status, const std::string& retry_after) {
  CallResult result;
  result.status = status;
  result.retry_after = retry_after;
  return result;
}

// A job's options with the given backoff_ms and max_backoff_ms.
JobOptions Backoff(int64_t base_ms, int64_t cap_ms) {
  JobOptions options;
  options.backoff_ms = base_ms;
  options.max_backoff_ms = cap_ms;
  return options;
}

}  // namespace

// EscapeKey

TEST_CASE("EscapeKey keeps the unreserved characters", "[unit][webhook]") {
  const std::string unreserved =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
  CHECK(EscapeKey(unreserved) == unreserved);
  CHECK(EscapeKey("") == "");
}

TEST_CASE("EscapeKey encodes every other byte as lowercase %xx", "[unit][webhook]") {
  CHECK(EscapeKey("a b") == "a%20b");
  CHECK(EscapeKey("#") == "%23");
  CHECK(EscapeKey("?") == "%3f");
  CHECK(EscapeKey("%") == "%25");
  CHECK(EscapeKey("/") == "%2f");
  CHECK(EscapeKey("..%2F") == "..%252F");
  CHECK(EscapeKey("caf\xC3\xA9") == "caf%c3%a9");
  CHECK(EscapeKey(std::string("\0\x7F\xFF", 3)) == "%00%7f%ff");
  CHECK(EscapeKey("+&=:;@!*'(),\"") == "%2b%26%3d%3a%3b%40%21%2a%27%28%29%2c%22");
}

TEST_CASE("EscapeKey leaves only unreserved characters and %xx for every byte value",
          "[unit][webhook]") {
  for (int c = 0; c < 256; ++c) {
    std::string escaped = EscapeKey(std::string(1, static_cast<char>(c)));
    INFO("byte " << c << " -> " << escaped);
    bool unreserved = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                      c == '-' || c == '.' || c == '_' || c == '~';
    if (unreserved) {
      CHECK(escaped == std::string(1, static_cast<char>(c)));
    } else {
      char expected[4];
      snprintf(expected, sizeof(expected), "%%%02x", c);
      CHECK(escaped == expected);
    }
  }
}

// WebhookUrl

TEST_CASE("WebhookUrl adds the escaped key as a path segment", "[unit][webhook]") {
  CHECK(WebhookUrl("http://h:8080/hook", "k1") == "http://h:8080/hook/k1");
  CHECK(WebhookUrl("http://h/hook", "a b/c") == "http://h/hook/a%20b%2fc");
  CHECK(WebhookUrl("http://h", "k") == "http://h/k");
}

TEST_CASE("WebhookUrl adds no double slash when the url ends with one", "[unit][webhook]") {
  CHECK(WebhookUrl("http://h/hook/", "k") == "http://h/hook/k");
  CHECK(WebhookUrl("http://h/", "k") == "http://h/k");
}

TEST_CASE("WebhookUrl keeps the query after the new path", "[unit][webhook]") {
  CHECK(WebhookUrl("http://h/hook?x=1&y=2", "k") == "http://h/hook/k?x=1&y=2");
  CHECK(WebhookUrl("http://h/hook/?x=1", "k") == "http://h/hook/k?x=1");
  CHECK(WebhookUrl("http://h?x=1", "k") == "http://h/k?x=1");
  CHECK(WebhookUrl("http://h/hook?path=/a/b", "k") == "http://h/hook/k?path=/a/b");
}

TEST_CASE("WebhookUrl drops the fragment", "[unit][webhook]") {
  CHECK(WebhookUrl("http://h/hook#frag", "k") == "http://h/hook/k");
  CHECK(WebhookUrl("http://h/hook?x=1#frag", "k") == "http://h/hook/k?x=1");
  CHECK(WebhookUrl("http://h/hook#frag?notquery", "k") == "http://h/hook/k");
  CHECK(WebhookUrl("http://h/#", "k") == "http://h/k");
}

// Judge

TEST_CASE("Judge calls a 2xx reply a success", "[unit][webhook]") {
  for (long status : {200L, 201L, 202L, 204L, 299L}) {
    INFO("status " << status);
    CHECK(Judge(CURLE_OK, status) == Verdict::kSuccess);
  }
}

TEST_CASE("Judge retries 408, 429 and 5xx replies", "[unit][webhook]") {
  for (long status : {408L, 429L, 500L, 502L, 503L, 504L, 599L}) {
    INFO("status " << status);
    CHECK(Judge(CURLE_OK, status) == Verdict::kRetry);
  }
}

TEST_CASE("Judge fails other 4xx and 3xx replies for good", "[unit][webhook]") {
  for (long status : {400L, 401L, 403L, 404L, 409L, 413L, 422L, 499L, 300L, 301L, 302L, 304L}) {
    INFO("status " << status);
    CHECK(Judge(CURLE_OK, status) == Verdict::kFail);
  }
}

TEST_CASE("Judge retries connection errors and timeouts", "[unit][webhook]") {
  for (CURLcode code : {CURLE_COULDNT_CONNECT, CURLE_OPERATION_TIMEDOUT, CURLE_COULDNT_RESOLVE_HOST,
                        CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_GOT_NOTHING}) {
    INFO("code " << code);
    CHECK(Judge(code, 0) == Verdict::kRetry);
  }
}

TEST_CASE("Judge fails errors that a new attempt cannot mend", "[unit][webhook]") {
  for (CURLcode code : {CURLE_WRITE_ERROR, CURLE_URL_MALFORMAT, CURLE_UNSUPPORTED_PROTOCOL,
                        CURLE_ABORTED_BY_CALLBACK, CURLE_PEER_FAILED_VERIFICATION}) {
    INFO("code " << code);
    CHECK(Judge(code, 0) == Verdict::kFail);
  }
  // A 2xx status does not make a failed transfer a success.
  CHECK(Judge(CURLE_WRITE_ERROR, 200) == Verdict::kFail);
}

// SlowsJob

TEST_CASE("SlowsJob is true for 429 and 503 only", "[unit][webhook]") {
  CHECK(SlowsJob(429));
  CHECK(SlowsJob(503));
  for (long status : {0L, 200L, 408L, 500L, 502L, 504L}) {
    INFO("status " << status);
    CHECK_FALSE(SlowsJob(status));
  }
}

// BackoffDelay

TEST_CASE("BackoffDelay stays within [0, base * 2^(attempts-1)] and spreads over it",
          "[unit][webhook]") {
  std::mt19937_64 rng(12345);
  for (int attempts = 1; attempts <= 6; ++attempts) {
    int64_t ceiling = 100LL << (attempts - 1);
    int64_t max = MaxBackoff(attempts, 100, 1000000, ceiling, &rng);
    INFO("attempts " << attempts);
    CHECK(max > ceiling / 2);  // full jitter reaches the upper half
  }
}

TEST_CASE("BackoffDelay is not always the same value", "[unit][webhook]") {
  std::mt19937_64 rng(7);
  Clock::duration first = BackoffDelay(3, 100, 30000, &rng);
  bool differs = false;
  for (int i = 0; i < 100 && !differs; ++i) differs = BackoffDelay(3, 100, 30000, &rng) != first;
  CHECK(differs);
}

TEST_CASE("BackoffDelay respects the cap however many attempts were made", "[unit][webhook]") {
  std::mt19937_64 rng(99);
  // 100 * 2^9 is past the 30000 cap from the tenth attempt on.
  for (int attempts : {10, 11, 12, 31, 32, 33, 63, 64, 65, 100, 1000, INT_MAX}) {
    INFO("attempts " << attempts);
    int64_t max = MaxBackoff(attempts, 100, 30000, 30000, &rng, 500);
    CHECK(max > 15000);
  }
  MaxBackoff(INT_MAX, kMaxBackoffMsLimit, kMaxBackoffMsLimit, kMaxBackoffMsLimit, &rng, 100);
  MaxBackoff(100, 1, kMaxBackoffMsLimit, kMaxBackoffMsLimit, &rng, 100);
  // A base above the cap is cut to the cap from the first attempt.
  MaxBackoff(1, 5000, 300, 300, &rng, 100);
}

TEST_CASE("BackoffDelay with a zero base or cap is zero", "[unit][webhook]") {
  std::mt19937_64 rng(1);
  for (int attempts = 1; attempts <= 100; ++attempts) {
    REQUIRE(BackoffDelay(attempts, 0, 30000, &rng) == Clock::duration::zero());
    REQUIRE(BackoffDelay(attempts, 100, 0, &rng) == Clock::duration::zero());
  }
}

// RetryDelay

// With backoff_ms 100, the backoff after at most four attempts is at most
// 800 ms, so a wait of exactly the 2 s that Retry-After asks can only be the
// header's.

TEST_CASE("RetryDelay waits as long as a 429's Retry-After asks", "[unit][webhook]") {
  std::mt19937_64 rng(3);
  for (int attempts : {1, 2, 4}) {
    INFO("attempts " << attempts);
    CHECK(Ms(RetryDelay(Reply(429, "2"), attempts, Backoff(100, 30000), &rng)) == 2000);
  }
  CHECK(Ms(RetryDelay(Reply(429, "0"), 1, Backoff(100, 30000), &rng)) == 0);
}

TEST_CASE("RetryDelay waits as long as a 503's Retry-After asks", "[unit][webhook]") {
  std::mt19937_64 rng(4);
  for (int attempts : {1, 2, 4}) {
    INFO("attempts " << attempts);
    CHECK(Ms(RetryDelay(Reply(503, "2"), attempts, Backoff(100, 30000), &rng)) == 2000);
  }
  CHECK(Ms(RetryDelay(Reply(503, "0"), 1, Backoff(100, 30000), &rng)) == 0);
}

TEST_CASE("RetryDelay waits no longer than max_backoff_ms whatever Retry-After asks",
          "[unit][webhook]") {
  std::mt19937_64 rng(5);
  for (long status : {429L, 503L}) {
    INFO("status " << status);
    CHECK(Ms(RetryDelay(Reply(status, "120"), 1, Backoff(100, 5000), &rng)) == 5000);
    CHECK(Ms(RetryDelay(Reply(status, "99999999999999999999"), 1, Backoff(100, 5000), &rng)) ==
          5000);
    CHECK(Ms(RetryDelay(Reply(status, "Fri, 01 Jan 2100 00:00:00 GMT"), 1, Backoff(100, 5000),
                        &rng)) == 5000);
    CHECK(Ms(RetryDelay(Reply(status, "2"), 1, Backoff(100, 0), &rng)) == 0);
  }
}

TEST_CASE("RetryDelay backs off after a 500 or a 408, even with a Retry-After", "[unit][webhook]") {
  std::mt19937_64 rng(6);
  for (long status : {500L, 502L, 408L, 0L}) {
    for (int i = 0; i < 200; ++i) {
      INFO("status " << status);
      REQUIRE(Ms(RetryDelay(Reply(status, "2"), 1, Backoff(100, 30000), &rng)) <= 100);
    }
  }
}

TEST_CASE("RetryDelay backs off within [0, min(cap, base * 2^(attempts-1))] without a Retry-After",
          "[unit][webhook]") {
  std::mt19937_64 rng(8);
  // An unreadable Retry-After counts as none.
  for (const char* retry_after : {"", "soon"}) {
    for (long status : {429L, 503L, 500L}) {
      for (int attempts = 1; attempts <= 8; ++attempts) {
        int64_t ceiling = std::min<int64_t>(100LL << (attempts - 1), 3000);
        int64_t max = -1;
        for (int i = 0; i < 500; ++i) {
          INFO("Retry-After '" << retry_after << "' status " << status << " attempts " << attempts);
          int64_t ms =
              Ms(RetryDelay(Reply(status, retry_after), attempts, Backoff(100, 3000), &rng));
          REQUIRE(ms >= 0);
          REQUIRE(ms <= ceiling);
          max = std::max(max, ms);
        }
        CHECK(max > ceiling / 2);  // full jitter reaches the upper half
      }
    }
  }
}

// ParseRetryAfter

TEST_CASE("ParseRetryAfter reads delay-seconds as milliseconds", "[unit][webhook]") {
  int64_t ms = -1;
  REQUIRE(ParseRetryAfter("120", kOct21, &ms));
  CHECK(ms == 120000);
  REQUIRE(ParseRetryAfter("0", kOct21, &ms));
  CHECK(ms == 0);
  REQUIRE(ParseRetryAfter("1", kOct21, &ms));
  CHECK(ms == 1000);
}

TEST_CASE("ParseRetryAfter turns an absurdly long delay into a huge one without overflow",
          "[unit][webhook]") {
  int64_t ms = -1;
  REQUIRE(ParseRetryAfter("99999999999999999999999", kOct21, &ms));
  CHECK(ms >= 1000LL * 1000000000LL);
}

TEST_CASE("ParseRetryAfter reads an HTTP-date relative to the given now", "[unit][webhook]") {
  int64_t ms = -1;
  REQUIRE(ParseRetryAfter("Wed, 21 Oct 2015 07:28:30 GMT", kOct21, &ms));
  CHECK(ms == 30000);
  REQUIRE(ParseRetryAfter("Wed, 21 Oct 2015 07:28:30 GMT", kOct21 + 10, &ms));
  CHECK(ms == 20000);
  // A date in the past means no wait.
  REQUIRE(ParseRetryAfter("Wed, 21 Oct 2015 07:27:00 GMT", kOct21, &ms));
  CHECK(ms == 0);
}

TEST_CASE("ParseRetryAfter refuses a value that is neither seconds nor a date", "[unit][webhook]") {
  for (const char* value : {"", "soon", "-5", "1.5", "+5", "12abc", " 5", "5 "}) {
    INFO("value '" << value << "'");
    int64_t ms = -7;
    CHECK_FALSE(ParseRetryAfter(value, kOct21, &ms));
  }
}

// Signature

TEST_CASE("Signature is the time and the hex HMAC-SHA256 of time.body keyed with the secret",
          "[unit][webhook]") {
  // Expected values from `printf '%s' '<t>.<body>' | openssl dgst -sha256 -hmac <secret>`.
  CHECK(Signature("s3cr3t", 1700000000, "{\"a\":1}") ==
        "t=1700000000,v1=8dbbbbf4523b10bbb793e74d854144c45acccc2d233667b1c06b805b6ded8a84");
  CHECK(Signature("k", 0, "") ==
        "t=0,v1=6b4a4b8b3c40f1e8f53a3d36682e5f99f7ad2ac1df1c93dfe336f329167641e7");
  CHECK(Signature("s3cr3t", 1700000001, "{\"a\":1}") !=
        Signature("s3cr3t", 1700000000, "{\"a\":1}"));
}

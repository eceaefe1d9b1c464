// The Dispatcher runs the worker threads that call webhooks. A job asks it
// for a worker (Job::WorkerStarter) when inputs arrive; each worker owns one
// libcurl easy handle, reused across calls so that connections are kept
// alive, and loops: take an input (Job::NextInput), POST it to url/{key}
// with no lock held, then Job::StoreOutcomeAndNext or
// Job::RetryLaterAndNext. A worker exits when its job has nothing more
// for it.
//
// Thread-safe (provides internal synchronization). The free functions below
// are the webhook contract's decisions, kept pure so that tests can check
// them without a network.

#ifndef PMMAP_DISPATCHER_HPP_
#define PMMAP_DISPATCHER_HPP_

#include <curl/curl.h>

#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "job.hpp"

// Appends key percent-encoded as one URL path segment: every byte outside
// A-Z a-z 0-9 - . _ ~ becomes %xx, in lowercase hex.
void AppendEscapedKey(const std::string& key, std::string* out);
inline std::string EscapeKey(const std::string& key) {
  std::string out;
  AppendEscapedKey(key, &out);
  return out;
}

// The URLs of one job's calls: its url with the path segment /{escaped key}
// added to its path, any query kept after it and any fragment dropped. The
// url is parsed once; a call then sets only its path, where libcurl would
// otherwise parse the whole URL again for every call.
// Not thread-safe: one per worker.
class WebhookUrls {
 public:
  explicit WebhookUrls(const std::string& url);
  ~WebhookUrls();
  WebhookUrls(const WebhookUrls&) = delete;
  WebhookUrls& operator=(const WebhookUrls&) = delete;

  // False if url could not be parsed (it was checked when the job was made).
  bool ok() const { return ok_; }
  // Points the handle at key's URL and returns it, for CURLOPT_CURLU.
  // Returns null if that URL cannot be made.
  CURLU* For(const std::string& key);
  // The whole URL the handle points at.
  std::string Url() const;

 private:
  CURLU* const url_;
  bool ok_ = false;
  std::string base_path_;  // the url's path, ending with '/'
  std::string path_;
};

// The URL of key's call: what WebhookUrls gives, as a string.
std::string WebhookUrl(const std::string& url, const std::string& key);

enum class Verdict { kSuccess, kRetry, kFail };

// What to do with one attempt's result: code is libcurl's, status the HTTP
// status (0 when no reply came).
Verdict Judge(CURLcode code, long status);

// True if the reply asks the whole job to slow down (429 or 503).
inline bool SlowsJob(long status) { return status == 429 || status == 503; }

// The wait before the attempt after `attempts` attempts: a uniform random
// duration in [0, min(cap, base * 2^(attempts-1))] ("full jitter").
Clock::duration BackoffDelay(int attempts, int64_t base_ms, int64_t cap_ms, std::mt19937_64* rng);

// Returns the PMMAP-signature header value for a call made at unix time t:
// "t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with secret>".
std::string Signature(const std::string& secret, time_t t, const std::string& body);

// Parses a Retry-After header value (delay-seconds or an HTTP-date) into
// milliseconds from now. Returns false if it is neither.
bool ParseRetryAfter(const std::string& value, time_t now, int64_t* ms);

class Dispatcher {
 public:
  struct Options {
    std::string ca_file;         // CA bundle for https webhooks; empty: libcurl's default
    size_t max_reply_bytes = 0;  // a longer reply is a final failure
    // Whether the environment may name a proxy (http_proxy and the like).
    // When false, calls skip libcurl's search of the environment.
    bool proxy_from_env = true;
  };

  explicit Dispatcher(Options options);
  // Joins every worker. REQUIRES: every job is done, cancelled or removed,
  // so that the workers exit.
  ~Dispatcher();
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  // Starts a worker for job. Returns false if no thread could be started.
  bool StartWorker(std::shared_ptr<Job> job);
  // Starts a thread that POSTs the ended job to its callback_url.
  bool StartCallback(std::shared_ptr<Job> job);
  // Waits until every thread has exited or timeout passes; returns whether
  // all exited.
  bool WaitForExit(Clock::duration timeout);
  // Joins the threads that have exited.
  void JoinExited();

 private:
  using ThreadList = std::list<std::thread>;

  bool StartThread(std::function<void()> body);
  void RunWorker(const std::shared_ptr<Job>& job);
  void RunCallback(const std::shared_ptr<Job>& job);
  // REQUIRES: mutex_ held.
  void JoinFinished();

  const Options options_;

  std::mutex mutex_;
  // State below is protected by mutex_.
  std::condition_variable exit_cv_;  // a thread announced its exit
  ThreadList threads_;
  std::vector<ThreadList::iterator> finished_;  // exited, not yet joined
};

#endif  // PMMAP_DISPATCHER_HPP_

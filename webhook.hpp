// The webhook side of pmmap. WebhookClient is the libcurl client: it owns
// one easy handle, the multi handle that drives it, and the headers of one
// job's calls, and POSTs an input (or the job's completion callback) to the
// caller's webhook. The free functions are the webhook contract's
// decisions, kept pure so that tests can check them without a network: how
// a key becomes a URL, which results succeed, retry or fail, how long to
// wait before the next attempt, how Retry-After is read, and how a call is
// signed.
//
// The Dispatcher's threads are the callers: each makes its own
// WebhookClient and WebhookUrls and alone uses them. The free functions
// hold no state; any thread may call them.

#ifndef PMMAP_WEBHOOK_HPP_
#define PMMAP_WEBHOOK_HPP_

#include <curl/curl.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <memory>
#include <random>
#include <string>

#include "job.hpp"
#include "net_rules.hpp"

// Appends key percent-encoded as one URL path segment: every byte outside
// A-Z a-z 0-9 - . _ ~ becomes %xx, in lowercase hex.
void AppendEscapedKey(const std::string& key, std::string* out);
inline std::string EscapeKey(const std::string& key) {
  std::string out;
  AppendEscapedKey(key, &out);
  return out;
}

// Parses url for CURLOPT_CURLU; null if it cannot. The caller frees it with
// curl_url_cleanup. A path's "." and ".." segments are kept, not resolved:
// keys "." and ".." are path segments like any other. libcurl never parses
// the URL of a CURLU again.
CURLU* ParseUrl(const std::string& url);

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

// What one call came to.
struct CallResult {
  CURLcode code = CURLE_OK;
  long status = 0;  // the HTTP status; 0 when no reply came
  std::string body;
  std::string retry_after;            // the Retry-After header, read only when SlowsJob(status)
  bool too_large = false;             // the reply passed max_reply_bytes and was abandoned
  bool sent = false;                  // some of the request went out
  char error[CURL_ERROR_SIZE] = {0};  // libcurl's detail of code, if any
  // Why the call was refused before any connection, when every address it
  // resolved to is denied by the net rules ("address 127.0.0.1 is in denied
  // net 127.0.0.0/8"); "" otherwise. A final failure, never retried, and no
  // sign that the webhook is down.
  std::string denied;

  // Readies the result for the next call, keeping its buffers' capacity.
  void Clear() {
    code = CURLE_OK;
    status = 0;
    body.clear();
    retry_after.clear();
    too_large = false;
    sent = false;
    error[0] = '\0';
    denied.clear();
  }
};

// One thread's connection to a job's webhooks: a libcurl easy handle whose
// options are set once, so that each call reuses its kept-alive connection.
// A call allocates nothing of its own: its headers are nodes of this
// object, linked to the job's headers, which are built once.
// Not thread-safe: owned by one thread, which makes every call.
class WebhookClient {
 public:
  // What the server's flags say about every call.
  struct Options {
    std::string ca_file;         // CA bundle for https webhooks; empty: libcurl's default
    size_t max_reply_bytes = 0;  // a longer reply is a final failure
    // Whether the environment may name a proxy (http_proxy and the like).
    // When false, calls skip libcurl's search of the environment.
    bool proxy_from_env = true;
    // Which addresses may be dialled; null allows every one. Each address
    // libcurl is about to connect to is judged (a proxy's, when one is used).
    std::shared_ptr<const NetRules> net_rules;
  };

  // Calls the webhooks of job job_id, set up as job_options say, with its
  // headers, each call limited to timeout_ms and abandoned once *abort is true.
  WebhookClient(const Options& options, const std::string& job_id, const JobOptions& job_options,
                const std::atomic<bool>* abort);
  ~WebhookClient();
  WebhookClient(const WebhookClient&) = delete;
  WebhookClient& operator=(const WebhookClient&) = delete;

  // POSTs body to url once, with the standard headers for the given
  // attempt, blocking until the reply, an error, the timeout or the abort,
  // and stores what came of it in *result.
  void Call(CURLU* url, const std::string& body, int attempt, CallResult* result);
  // Limits every call from now on to timeout_ms (the job's was changed).
  void SetTimeout(int64_t timeout_ms);

 private:
  CURLcode Perform();
  std::string LastHeader(const char* name);
  static size_t OnBody(char* data, size_t size, size_t n, void* self_ptr);
  static curl_socket_t OnOpenSocket(void* self_ptr, curlsocktype purpose, curl_sockaddr* address);

  const size_t max_reply_bytes_;
  const std::shared_ptr<const NetRules> net_rules_;
  const std::string secret_;
  CURL* const curl_;
  CURLM* const multi_;  // drives curl_ and keeps its connection between calls
  const std::atomic<bool>* const abort_;
  bool ready_ = true;  // false if the handle or the headers could not be made
  CallResult* result_ = nullptr;
  curl_slist* job_headers_ = nullptr;  // the same for every call of the job
  curl_slist attempt_header_ = {nullptr, nullptr};
  curl_slist signature_header_ = {nullptr, nullptr};
  curl_slist expect_header_ = {nullptr, nullptr};
  char attempt_line_[32] = {0};
  char signature_line_[128] = {0};  // "PMMAP-signature: t=<10 digits>,v1=<64 hex>"
};

// Returns whether any environment variable through which libcurl would
// send calls through a proxy is set (for Options::proxy_from_env).
bool ProxyInEnvironment();

// Returns the CA bundle for https webhooks: libcurl's built-in one if it
// exists, else the first of the usual places that does (a static binary
// may run on a system whose bundle lives elsewhere), else "".
std::string FindCaBundle();

enum class Verdict { kSuccess, kRetry, kFail };

// What to do with one attempt's result: code is libcurl's, status the HTTP
// status (0 when no reply came).
Verdict Judge(CURLcode code, long status);
// The same for a whole result: a denied address or a reply over the limit
// is a final failure, whatever the code.
Verdict Judge(const CallResult& result);

// True if the reply asks the whole job to slow down (429 or 503).
inline bool SlowsJob(long status) { return status == 429 || status == 503; }

// What a call's result says about the webhook's health, for the job's
// circuit: a real answer, a fault, an overload, or nothing sent at all.
Signal ClassifyCall(const CallResult& result);

// The wait before the attempt after `attempts` attempts: a uniform random
// duration in [0, min(cap, base * 2^(attempts-1))] ("full jitter").
Clock::duration BackoffDelay(int attempts, int64_t base_ms, int64_t cap_ms, std::mt19937_64* rng);

// The wait before the attempt after `attempts` attempts, the last of which
// ended in result, a retryable one: a reply that SlowsJob is waited out for
// as long as its Retry-After asks, at most options.max_backoff_ms; any
// other, or one without a readable Retry-After, for BackoffDelay with
// options.backoff_ms and options.max_backoff_ms.
Clock::duration RetryDelay(const CallResult& result, int attempts, const JobOptions& options,
                           std::mt19937_64* rng);

// The error message of a failed call, for its output entry and the log.
std::string FailureMessage(const CallResult& r, const JobOptions& options);

// Parses a Retry-After header value (delay-seconds or an HTTP-date) into
// milliseconds from now. Returns false if it is neither.
bool ParseRetryAfter(const std::string& value, time_t now, int64_t* ms);

// Returns the PMMAP-signature header value for a call made at unix time t:
// "t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with secret>".
std::string Signature(const std::string& secret, time_t t, const std::string& body);

#endif  // PMMAP_WEBHOOK_HPP_

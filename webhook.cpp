#include "webhook.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <string_view>

#include "metrics.hpp"

namespace {

constexpr std::string_view kAttemptPrefix = "PMMAP-attempt: ";

// libcurl sends "Expect: 100-continue" only with bodies larger than this
// (1 KiB in old versions, 1 MiB in newer ones).
constexpr size_t kSmallBodyBytes = 1024;

// What a call counts as in GET /metrics.
Metrics::Outcome OutcomeOf(const CallResult& r) {
  if (r.code == CURLE_OPERATION_TIMEDOUT) return Metrics::kTimeout;
  if (r.status == 0) return Metrics::kConnectError;
  if (r.status < 300) return Metrics::k2xx;
  if (r.status < 400) return Metrics::k3xx;
  if (r.status < 500) return Metrics::k4xx;
  return Metrics::k5xx;
}

}  // namespace

void AppendEscapedKey(const std::string& key, std::string* out) {
  // Lowercase hex: libcurl 7.88 lowercases it anyway when it is handed a
  // path (WebhookUrls), so this way the bytes sent do not depend on the
  // libcurl version.
  static const char kHex[] = "0123456789abcdef";
  for (unsigned char c : key) {
    if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out->push_back(static_cast<char>(c));
    } else {
      out->push_back('%');
      out->push_back(kHex[c >> 4]);
      out->push_back(kHex[c & 0xF]);
    }
  }
}

CURLU* ParseUrl(const std::string& url) {
  CURLU* parsed = curl_url();
  if (parsed != nullptr &&
      curl_url_set(parsed, CURLUPART_URL, url.c_str(), CURLU_PATH_AS_IS) != CURLUE_OK) {
    curl_url_cleanup(parsed);
    parsed = nullptr;
  }
  return parsed;
}

WebhookUrls::WebhookUrls(const std::string& url) : url_(ParseUrl(url)) {
  char* path = nullptr;
  ok_ = url_ != nullptr && curl_url_set(url_, CURLUPART_FRAGMENT, nullptr, 0) == CURLUE_OK &&
        curl_url_get(url_, CURLUPART_PATH, &path, 0) == CURLUE_OK;
  if (ok_) {
    base_path_ = path;
    if (base_path_.empty() || base_path_.back() != '/') base_path_.push_back('/');
  }
  curl_free(path);
}

WebhookUrls::~WebhookUrls() { curl_url_cleanup(url_); }

CURLU* WebhookUrls::For(const std::string& key) {
  if (!ok_) return nullptr;
  path_ = base_path_;
  AppendEscapedKey(key, &path_);
  return curl_url_set(url_, CURLUPART_PATH, path_.c_str(), 0) == CURLUE_OK ? url_ : nullptr;
}

std::string WebhookUrls::Url() const {
  char* url = nullptr;
  std::string out;
  if (ok_ && curl_url_get(url_, CURLUPART_URL, &url, 0) == CURLUE_OK) out = url;
  curl_free(url);
  return out;
}

std::string WebhookUrl(const std::string& url, const std::string& key) {
  WebhookUrls urls(url);
  urls.For(key);
  return urls.Url();
}

WebhookClient::WebhookClient(const Options& options, const std::string& job_id,
                             const JobOptions& job_options, const std::atomic<bool>* abort)
    : max_reply_bytes_(options.max_reply_bytes),
      net_rules_(options.net_rules),
      secret_(job_options.secret),
      curl_(curl_easy_init()),
      multi_(curl_multi_init()),
      abort_(abort) {
  // libcurl formats every custom header into each request, and the
  // webhook parses it, so a call sends only the headers it needs.
  curl_slist* h = curl_slist_append(nullptr, "Content-Type: application/json");
  job_headers_ = h;
  h = h ? curl_slist_append(h, ("PMMAP-job: " + job_id).c_str()) : nullptr;
  if (h != nullptr && !secret_.empty())
    h = curl_slist_append(h, ("PMMAP-auth: " + secret_).c_str());
  if (h == nullptr || curl_ == nullptr || multi_ == nullptr) {
    ready_ = false;
    return;
  }
  // The headers that change per call are nodes of this object, chained
  // in front of the job's in Call.
  kAttemptPrefix.copy(attempt_line_, kAttemptPrefix.size());
  attempt_header_.data = attempt_line_;
  signature_header_.data = signature_line_;
  // libcurl adds "Expect: 100-continue" to a large POST, which costs a
  // round trip; this empty header stops it.
  expect_header_.data = const_cast<char*>("Expect:");

  curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);  // required with threads
  curl_easy_setopt(curl_, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl_, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(curl_, CURLOPT_POST, 1L);
  curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, &attempt_header_);
  if (!options.proxy_from_env) {
    // Spares libcurl looking up six environment variables per call.
    curl_easy_setopt(curl_, CURLOPT_PROXY, "");
    curl_easy_setopt(curl_, CURLOPT_NOPROXY, "");
  }
  SetTimeout(job_options.timeout_ms);
  curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, &WebhookClient::OnBody);
  curl_easy_setopt(curl_, CURLOPT_WRITEDATA, this);
  // A redirect could lead anywhere, past the rules' check of the URL: a 3xx
  // is a final failure (libcurl's default, stated so that it stays).
  curl_easy_setopt(curl_, CURLOPT_FOLLOWLOCATION, 0L);
  if (net_rules_ != nullptr) {
    curl_easy_setopt(curl_, CURLOPT_OPENSOCKETFUNCTION, &WebhookClient::OnOpenSocket);
    curl_easy_setopt(curl_, CURLOPT_OPENSOCKETDATA, this);
  }
  if (!options.ca_file.empty()) curl_easy_setopt(curl_, CURLOPT_CAINFO, options.ca_file.c_str());
}

WebhookClient::~WebhookClient() {
  if (multi_ != nullptr) curl_multi_cleanup(multi_);
  if (curl_ != nullptr) curl_easy_cleanup(curl_);
  curl_slist_free_all(job_headers_);
}

void WebhookClient::Call(CURLU* url, const std::string& body, int attempt, CallResult* result) {
  result->Clear();
  if (url == nullptr) {
    result->code = CURLE_URL_MALFORMAT;
    return;
  }
  if (!ready_) {
    result->code = CURLE_OUT_OF_MEMORY;
    return;
  }
  result_ = result;
  // std::to_chars: snprintf here cost a tenth of all pmmap adds to a call.
  *std::to_chars(attempt_line_ + kAttemptPrefix.size(), std::end(attempt_line_) - 1, attempt).ptr =
      '\0';
  curl_slist* last = &attempt_header_;
  if (!secret_.empty()) {
    snprintf(signature_line_, sizeof(signature_line_), "PMMAP-signature: %s",
             Signature(secret_, time(nullptr), body).c_str());
    last = last->next = &signature_header_;
  }
  if (body.size() > kSmallBodyBytes) last = last->next = &expect_header_;
  last->next = job_headers_;
  curl_easy_setopt(curl_, CURLOPT_CURLU, url);
  curl_easy_setopt(curl_, CURLOPT_POSTFIELDS, body.data());
  curl_easy_setopt(curl_, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, result->error);
  Metrics::Global().CallStarted();
  result->code = Perform();
  // An abort may come before the transfer starts, when the handle still
  // holds the previous call's reply: nothing of it is read then.
  if (result->code != CURLE_ABORTED_BY_CALLBACK) {
    curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &result->status);
    // Only a reply that slows the job is read for Retry-After: asked of
    // libcurl afterwards, not given to a header callback line by line.
    if (SlowsJob(result->status)) result->retry_after = LastHeader("Retry-After");
    if (result->code != CURLE_OK) {
      long request_bytes = 0;
      curl_easy_getinfo(curl_, CURLINFO_REQUEST_SIZE, &request_bytes);
      result->sent = request_bytes > 0;
    }
    curl_off_t micros = 0;
    curl_easy_getinfo(curl_, CURLINFO_TOTAL_TIME_T, &micros);
    Metrics::Global().CallEnded(OutcomeOf(*result), static_cast<double>(micros) / 1e6);
  } else {
    Metrics::Global().CallAbandoned();
  }
  curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, nullptr);
  // An address refused while another was dialled and answered is no failure.
  if (result->code == CURLE_OK) result->denied.clear();
  result_ = nullptr;
}

void WebhookClient::SetTimeout(int64_t timeout_ms) {
  curl_easy_setopt(curl_, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_ms));
}

// What curl_easy_perform does, in fewer system calls: that polls before
// it starts the transfer, which sends nothing yet; this polls only once
// the request is sent (four polls a call where curl_easy_perform makes
// five). curl_multi_poll, unlike curl_multi_wait, sleeps until libcurl's
// timer when there is no socket to wait for, rather than spinning. Once
// *abort_ is true it gives up within a second, with
// CURLE_ABORTED_BY_CALLBACK, as a progress callback would have.
CURLcode WebhookClient::Perform() {
  if (abort_->load(std::memory_order_relaxed)) return CURLE_ABORTED_BY_CALLBACK;
  if (curl_multi_add_handle(multi_, curl_) != CURLM_OK) return CURLE_OUT_OF_MEMORY;
  CURLcode code = CURLE_OK;
  for (;;) {
    int running = 0;
    CURLMcode m = curl_multi_perform(multi_, &running);
    if (m == CURLM_OK && running > 0) m = curl_multi_poll(multi_, nullptr, 0, 1000, nullptr);
    if (m != CURLM_OK) {
      code = m == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_RECV_ERROR;
      break;
    }
    if (running == 0) {
      int left;
      CURLMsg* msg = curl_multi_info_read(multi_, &left);
      code = msg != nullptr && msg->msg == CURLMSG_DONE ? msg->data.result : CURLE_RECV_ERROR;
      break;
    }
    if (abort_->load(std::memory_order_relaxed)) {
      code = CURLE_ABORTED_BY_CALLBACK;
      break;
    }
  }
  curl_multi_remove_handle(multi_, curl_);
  return code;
}

// The value of the last header called name in the final reply, or "".
std::string WebhookClient::LastHeader(const char* name) {
  curl_header* header;
  if (curl_easy_header(curl_, name, 0, CURLH_HEADER, -1, &header) != CURLHE_OK) return "";
  if (header->amount > 1 &&
      curl_easy_header(curl_, name, header->amount - 1, CURLH_HEADER, -1, &header) != CURLHE_OK) {
    return "";
  }
  std::string value = header->value;
  size_t first = value.find_first_not_of(" \t");
  size_t last = value.find_last_not_of(" \t\r\n");
  return first == std::string::npos ? "" : value.substr(first, last - first + 1);
}

size_t WebhookClient::OnBody(char* data, size_t size, size_t n, void* self_ptr) {
  WebhookClient* self = static_cast<WebhookClient*>(self_ptr);
  CallResult* result = self->result_;
  if (result->body.size() + size * n > self->max_reply_bytes_) {
    result->too_large = true;
    return 0;  // aborts the transfer
  }
  result->body.append(data, size * n);
  return size * n;
}

// Judges the address libcurl has resolved and is about to connect to, so
// that a name (or DNS rebinding) cannot lead past the rules: a denied one
// gets no socket, and the call fails without any connection.
curl_socket_t WebhookClient::OnOpenSocket(void* self_ptr, curlsocktype, curl_sockaddr* address) {
  WebhookClient* self = static_cast<WebhookClient*>(self_ptr);
  NetJudgement judgement = self->net_rules_->Judge(&address->addr);
  if (!judgement.allowed) {
    if (self->result_ != nullptr) self->result_->denied = judgement.Reason();
    return CURL_SOCKET_BAD;
  }
  return socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
}

Verdict Judge(const CallResult& result) {
  if (!result.denied.empty() || result.too_large) return Verdict::kFail;
  return Judge(result.code, result.status);
}

Verdict Judge(CURLcode code, long status) {
  switch (code) {
    case CURLE_OK:
      break;
    // Errors that a new attempt cannot mend.
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_WRITE_ERROR:
    case CURLE_ABORTED_BY_CALLBACK:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_OUT_OF_MEMORY:
      return Verdict::kFail;
    default:
      return Verdict::kRetry;  // connection errors and timeouts
  }
  if (status >= 200 && status < 300) return Verdict::kSuccess;
  if (status == 408 || status == 429 || status >= 500) return Verdict::kRetry;
  return Verdict::kFail;
}

Signal ClassifyCall(const CallResult& r) {
  // A reply too long was an answer; a denied address says nothing of the webhook.
  if (r.too_large || !r.denied.empty()) return Signal::kAnswer;
  if (r.code == CURLE_OK) {
    if (r.status == 429 || r.status == 503) return Signal::kOverload;
    return r.status >= 500 ? Signal::kFault : Signal::kAnswer;
  }
  // Errors of the request itself, which no webhook's health explains.
  if (Judge(r.code, r.status) == Verdict::kFail) return Signal::kAnswer;
  if (!r.sent) return Signal::kUnreachable;
  return Signal::kOverload;  // timed out or reset with the request out
}

Clock::duration BackoffDelay(int attempts, int64_t base_ms, int64_t cap_ms, std::mt19937_64* rng) {
  int64_t ceiling = std::min(base_ms, cap_ms);
  for (int i = 1; i < attempts && ceiling < cap_ms; ++i) ceiling = std::min(ceiling * 2, cap_ms);
  std::uniform_int_distribution<int64_t> pick(0, ceiling);
  return std::chrono::milliseconds(pick(*rng));
}

Clock::duration RetryDelay(const CallResult& result, int attempts, const JobOptions& options,
                           std::mt19937_64* rng) {
  int64_t asked_ms;
  if (SlowsJob(result.status) && ParseRetryAfter(result.retry_after, time(nullptr), &asked_ms)) {
    return std::chrono::milliseconds(std::min(asked_ms, options.max_backoff_ms));
  }
  return BackoffDelay(attempts, options.backoff_ms, options.max_backoff_ms, rng);
}

std::string FailureMessage(const CallResult& r, const JobOptions& options) {
  if (!r.denied.empty()) return "not called: " + r.denied + " (--deny-net)";
  if (r.too_large) return "the reply is larger than the limit";
  if (r.code == CURLE_OK) return "the webhook answered HTTP " + std::to_string(r.status);
  if (r.code == CURLE_OPERATION_TIMEDOUT) {
    return "no reply within timeout_ms (" + std::to_string(options.timeout_ms) + " ms)";
  }
  std::string message = curl_easy_strerror(r.code);
  if (r.error[0] != '\0') message.append(": ").append(r.error);
  return message;
}

bool ParseRetryAfter(const std::string& value, time_t now, int64_t* ms) {
  if (value.empty()) return false;
  bool digits = value.find_first_not_of("0123456789") == std::string::npos;
  if (digits) {
    if (value.size() > 9) {
      *ms = INT64_MAX / 2;  // absurdly long: the caller caps it
    } else {
      *ms = std::stoll(value) * 1000;
    }
    return true;
  }
  time_t at = curl_getdate(value.c_str(), nullptr);
  if (at < 0) return false;
  *ms = at > now ? static_cast<int64_t>(at - now) * 1000 : 0;
  return true;
}

std::string Signature(const std::string& secret, time_t t, const std::string& body) {
  std::string message = std::to_string(static_cast<long long>(t)) + "." + body;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), digest, &digest_len);
  static const char kHex[] = "0123456789abcdef";
  std::string out = "t=" + std::to_string(static_cast<long long>(t)) + ",v1=";
  for (unsigned int i = 0; i < digest_len; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0xF]);
  }
  return out;
}

bool ProxyInEnvironment() {
  static const char* const kNames[] = {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                                       "all_proxy",  "ALL_PROXY",  "no_proxy",    "NO_PROXY"};
  for (const char* name : kNames) {
    if (getenv(name) != nullptr) return true;
  }
  return false;
}

std::string FindCaBundle() {
  static const char* const kBundles[] = {
      "/etc/ssl/certs/ca-certificates.crt",                 // Debian, Ubuntu, Alpine
      "/etc/pki/tls/certs/ca-bundle.crt",                   // Fedora, RHEL
      "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  // RHEL 7+
      "/etc/ssl/ca-bundle.pem",                             // openSUSE
      "/etc/ssl/cert.pem",                                  // Alpine, macOS
  };
  const curl_version_info_data* info = curl_version_info(CURLVERSION_NOW);
  if (info->cainfo != nullptr && access(info->cainfo, R_OK) == 0) return info->cainfo;
  for (const char* bundle : kBundles) {
    if (access(bundle, R_OK) == 0) return bundle;
  }
  return "";
}

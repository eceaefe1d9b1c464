// End-to-end tests of pmmap's operations features: /healthz, /metrics in
// the Prometheus text format, event logs (text and JSON), command-line flags
// and their environment variables, signed webhook calls, the completion
// callback, job expiry, and graceful shutdown on SIGTERM.
//
// Everything runs for real on 127.0.0.1: the pmmap binary ($PMMAP_BIN), a
// cpp-httplib webhook in this process, and raw sockets where a test needs to
// hold a request open across a signal. Every wait is bounded.

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test/harness.hpp"

namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using SteadyClock = std::chrono::steady_clock;

// A distinctive secret: if any of it leaks, a plain substring search finds it.
const char kSecret[] = "ops-SECRET-q7Zx93Lk-never-shown";

// ---------------------------------------------------------------------------
// Small utilities.

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

double SecondsSince(SteadyClock::time_point t) {
  return std::chrono::duration<double>(SteadyClock::now() - t).count();
}

// The complete lines of text (a last line without its newline may still be
// being written, and is left out).
std::vector<std::string> SplitLines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t end = text.find('\n'); end != std::string::npos; end = text.find('\n', start)) {
    if (end > start) lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

// ---------------------------------------------------------------------------
// Processes: the pmmap binary run directly, with a chosen environment.

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs the pmmap binary with args to completion (at most timeout),
// capturing stdout and stderr; as run_as_uid unless kSameUid (see Spawn).
RunResult RunBinary(const std::vector<std::string>& args,
                    const std::map<std::string, std::string>& env = {},
                    milliseconds timeout = seconds(10), int run_as_uid = kSameUid) {
  int out_pipe[2];
  int err_pipe[2];
  REQUIRE(pipe2(out_pipe, O_CLOEXEC) == 0);
  REQUIRE(pipe2(err_pipe, O_CLOEXEC) == 0);
  std::vector<std::string> full = {PmmapBinary()};
  full.insert(full.end(), args.begin(), args.end());
  pid_t pid = Spawn(full, env, out_pipe[1], err_pipe[1], run_as_uid);
  close(out_pipe[1]);
  close(err_pipe[1]);
  RunResult result;
  auto deadline = SteadyClock::now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_fds = 2;
  while (open_fds > 0) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline - SteadyClock::now()).count();
    if (left <= 0) break;
    int n = poll(fds, 2, static_cast<int>(left));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      ssize_t got = read(fds[i].fd, buf, sizeof(buf));
      if (got > 0) {
        sinks[i]->append(buf, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  auto left = std::chrono::duration_cast<milliseconds>(deadline - SteadyClock::now());
  result.exit_code = WaitExit(pid, std::max(left, milliseconds(100)));
  return result;
}

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 connection, for requests that must stay open across a
// signal and for checking that one connection survives a refused request.

class RawConn {
 public:
  // rcvbuf > 0 shrinks the receive buffer, so that a server writing to a
  // connection nobody reads blocks soon.
  explicit RawConn(int port, int rcvbuf = 0) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    if (rcvbuf > 0) REQUIRE(setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) == 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  }
  ~RawConn() { Close(); }
  RawConn(const RawConn&) = delete;
  RawConn& operator=(const RawConn&) = delete;

  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  int local_port() const {
    sockaddr_in addr{};
    socklen_t len = sizeof(addr);
    REQUIRE(getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    return ntohs(addr.sin_port);
  }

  void Send(const std::string& data) {
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      REQUIRE(n > 0);
      off += static_cast<size_t>(n);
    }
  }

  void SendRequest(const std::string& method, const std::string& path, const std::string& body = "",
                   bool with_length = true) {
    std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    if (with_length) {
      req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
             "\r\n";
    }
    Send(req + "\r\n" + body);
  }

  // True if some bytes (or the end) can be read now.
  bool Readable() {
    if (!buf_.empty()) return true;
    pollfd p = {fd_, POLLIN, 0};
    return poll(&p, 1, 0) > 0;
  }

  // Reads one response. status is 0 if the connection ended or timeout
  // passed before a whole response came.
  HttpResult Read(milliseconds timeout) {
    auto deadline = SteadyClock::now() + timeout;
    HttpResult result;
    size_t head_end;
    while ((head_end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill(deadline)) return result;
    }
    std::string head = buf_.substr(0, head_end);
    buf_.erase(0, head_end + 4);
    std::vector<std::string> lines;
    for (size_t start = 0; start <= head.size();) {
      size_t end = head.find("\r\n", start);
      if (end == std::string::npos) end = head.size();
      lines.push_back(head.substr(start, end - start));
      start = end + 2;
    }
    int status = 0;
    if (sscanf(lines[0].c_str(), "HTTP/1.%*d %d", &status) != 1) return result;
    httplib::Headers headers;
    for (size_t i = 1; i < lines.size(); ++i) {
      size_t colon = lines[i].find(':');
      if (colon == std::string::npos) continue;
      std::string value = lines[i].substr(colon + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      headers.emplace(lines[i].substr(0, colon), value);
    }
    std::string body;
    if (HeaderOf(headers, "Transfer-Encoding") == "chunked") {
      for (;;) {
        size_t eol;
        while ((eol = buf_.find("\r\n")) == std::string::npos) {
          if (!Fill(deadline)) return result;
        }
        size_t size = std::stoul(buf_.substr(0, eol), nullptr, 16);
        while (buf_.size() < eol + 2 + size + 2) {
          if (!Fill(deadline)) return result;
        }
        body.append(buf_, eol + 2, size);
        buf_.erase(0, eol + 2 + size + 2);
        if (size == 0) break;
      }
    } else {
      std::string length = HeaderOf(headers, "Content-Length");
      if (length.empty()) return result;  // pmmap always sends one of the two
      size_t n = std::stoul(length);
      while (buf_.size() < n) {
        if (!Fill(deadline)) return result;
      }
      body = buf_.substr(0, n);
      buf_.erase(0, n);
    }
    result.status = status;
    result.headers = std::move(headers);
    result.body = std::move(body);
    return result;
  }

 private:
  bool Fill(SteadyClock::time_point deadline) {
    for (;;) {
      auto left = std::chrono::duration_cast<milliseconds>(deadline - SteadyClock::now()).count();
      if (left <= 0) return false;
      pollfd p = {fd_, POLLIN, 0};
      int n = poll(&p, 1, static_cast<int>(left));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      char buf[8192];
      ssize_t got = recv(fd_, buf, sizeof(buf), 0);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return false;
      buf_.append(buf, static_cast<size_t>(got));
      return true;
    }
  }

  int fd_ = -1;
  std::string buf_;
};

// The server side of the loopback connection server_port <-> client_port
// as /proc/net/tcp shows it: found, state, and its send and receive queues.
struct TcpEntry {
  bool found = false;
  std::string state;  // "01": ESTABLISHED
  unsigned long tx = 0;
  unsigned long rx = 0;
};

TcpEntry ServerSide(int server_port, int client_port) {
  for (const TcpSocket& s : TcpSockets()) {
    if (s.local_port == server_port && s.remote_port == client_port) {
      return TcpEntry{true, s.state, s.tx_queue, s.rx_queue};
    }
  }
  return TcpEntry();
}

// True once the server side of the loopback connection server_port <->
// client_port has read everything the client sent (its receive queue in
// /proc/net/tcp is empty): the server has taken the request in hand.
bool ServerHasRead(int server_port, int client_port) {
  TcpEntry e = ServerSide(server_port, client_port);
  return e.found && e.state == "01" && e.rx == 0;
}

// ---------------------------------------------------------------------------
// The Prometheus text exposition format.

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> help;
  std::map<std::string, std::string> type;
  std::vector<Sample> samples;
  std::vector<std::string> errors;

  // The family a sample belongs to, given the TYPE lines: the sample's own
  // name, or for a histogram's _bucket, _sum and _count, the base name.
  std::string FamilyOf(const std::string& name) const {
    if (type.count(name)) return name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      std::string s = suffix;
      if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
        std::string base = name.substr(0, name.size() - s.size());
        auto it = type.find(base);
        if (it != type.end() && (it->second == "histogram" || it->second == "summary")) return base;
      }
    }
    return "";
  }

  // The value of the one sample with that name and labels; fails the test if none.
  double Get(const std::string& name, const std::map<std::string, std::string>& labels = {}) const {
    for (const Sample& s : samples) {
      if (s.name == name && s.labels == labels) return s.value;
    }
    std::string shown = name + "{";
    for (const auto& kv : labels) shown += kv.first + "=\"" + kv.second + "\",";
    FAIL("no sample " << shown << "}");
    return 0;
  }
};

bool IsNameStart(char c) { return isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':'; }
bool IsNameChar(char c) { return IsNameStart(c) || isdigit(static_cast<unsigned char>(c)); }

bool ParseValue(const std::string& text, double* out) {
  if (text == "+Inf" || text == "Inf") {
    *out = HUGE_VAL;
    return true;
  }
  if (text == "-Inf") {
    *out = -HUGE_VAL;
    return true;
  }
  if (text == "NaN") {
    *out = NAN;
    return true;
  }
  if (text.empty()) return false;
  char* end = nullptr;
  *out = strtod(text.c_str(), &end);
  return end == text.c_str() + text.size();
}

// Reads a "# HELP name text" or "# TYPE name type" line into e; other
// comments are skipped. where prefixes the errors it finds.
void ParseComment(const std::string& line, const std::string& where, Exposition* e) {
  std::istringstream words(line);
  std::string hash, kind, name;
  words >> hash >> kind >> name;
  if (kind != "HELP" && kind != "TYPE") return;  // a plain comment
  if (name.empty()) {
    e->errors.push_back(where + "no metric name");
    return;
  }
  std::string rest;
  std::getline(words, rest);
  rest.erase(0, rest.find_first_not_of(' '));
  auto& table = kind == "HELP" ? e->help : e->type;
  if (table.count(name)) e->errors.push_back(where + "a second " + kind + " for " + name);
  if (kind == "TYPE") {
    static const std::set<std::string> kTypes = {"counter", "gauge", "histogram", "summary",
                                                 "untyped"};
    if (!kTypes.count(rest)) e->errors.push_back(where + "unknown type");
    for (const Sample& s : e->samples) {
      if (s.name == name) e->errors.push_back(where + "TYPE after the family's samples");
    }
  }
  if (kind == "HELP" && rest.empty()) e->errors.push_back(where + "empty HELP");
  table[name] = rest;
}

// Reads a label value from line[*i], just past its opening quote, through
// its closing quote, undoing backslash escapes (\n is a line break);
// returns false if the line ends first.
bool ParseLabelValue(const std::string& line, size_t* i, std::string* value) {
  while (*i < line.size() && line[*i] != '"') {
    if (line[*i] == '\\' && *i + 1 < line.size()) {
      ++*i;
      value->push_back(line[*i] == 'n' ? '\n' : line[*i]);
    } else {
      value->push_back(line[*i]);
    }
    ++*i;
  }
  if (*i >= line.size()) return false;
  ++*i;  // the closing quote
  return true;
}

// Reads a sample's labels from line[*i], just past its '{', through its
// '}'; returns false if they are malformed or a label repeats.
bool ParseLabels(const std::string& line, size_t* i, std::map<std::string, std::string>* labels) {
  bool ok = true;
  for (;;) {
    while (*i < line.size() && line[*i] == ' ') ++*i;
    if (*i < line.size() && line[*i] == '}') {
      ++*i;
      return ok;
    }
    size_t start = *i;
    while (*i < line.size() && IsNameChar(line[*i]) && line[*i] != ':') ++*i;
    std::string label = line.substr(start, *i - start);
    if (label.empty() || *i + 1 >= line.size() || line[*i] != '=' || line[*i + 1] != '"') {
      return false;
    }
    *i += 2;
    std::string value;
    if (!ParseLabelValue(line, i, &value)) return false;
    if (labels->count(label)) ok = false;
    (*labels)[label] = value;
    if (*i < line.size() && line[*i] == ',') ++*i;
  }
}

// Reads a sample line into e unless it is malformed; where prefixes the
// errors it finds, and seen holds the samples read so far, to find repeats.
void ParseSample(const std::string& line, const std::string& where, std::set<std::string>* seen,
                 Exposition* e) {
  Sample s;
  size_t i = 0;
  if (!IsNameStart(line[0])) {
    e->errors.push_back(where + "bad metric name");
    return;
  }
  while (i < line.size() && IsNameChar(line[i])) ++i;
  s.name = line.substr(0, i);
  bool ok = true;
  if (i < line.size() && line[i] == '{') {
    ++i;
    ok = ParseLabels(line, &i, &s.labels);
  }
  if (!ok || i >= line.size() || line[i] != ' ') {
    e->errors.push_back(where + "bad labels or no value");
    return;
  }
  std::istringstream rest(line.substr(i + 1));
  std::string value_text, timestamp, extra;
  rest >> value_text >> timestamp >> extra;
  if (!ParseValue(value_text, &s.value) || !extra.empty()) {
    e->errors.push_back(where + "bad value");
    return;
  }
  std::string family = e->FamilyOf(s.name);
  if (family.empty()) e->errors.push_back(where + "no TYPE line before this sample");
  std::string id = s.name + "{";
  for (const auto& kv : s.labels) id += kv.first + "=" + kv.second + ",";
  if (!seen->insert(id).second) e->errors.push_back(where + "a repeated sample");
  e->samples.push_back(std::move(s));
}

Exposition ParseExposition(const std::string& text) {
  Exposition e;
  std::set<std::string> seen_samples;
  int line_no = 0;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    ++line_no;
    std::string where = "line " + std::to_string(line_no) + " \"" + line + "\": ";
    if (line.empty()) continue;
    if (line[0] == '#') {
      ParseComment(line, where, &e);
    } else {
      ParseSample(line, where, &seen_samples, &e);
    }
  }
  if (!text.empty() && text.back() != '\n')
    e.errors.push_back("the text does not end with a newline");
  for (const auto& entry : e.type) {
    if (!e.help.count(entry.first)) e.errors.push_back("no HELP for " + entry.first);
  }
  for (const auto& entry : e.help) {
    if (!e.type.count(entry.first)) e.errors.push_back("no TYPE for " + entry.first);
  }
  return e;
}

// Checks a histogram family: buckets with increasing le ending at +Inf,
// cumulative counts never decreasing, +Inf equal to _count, and a _sum.
void CheckHistogram(const Exposition& e, const std::string& family) {
  INFO("histogram " << family);
  std::vector<std::pair<double, double>> buckets;  // le, count
  for (const Sample& s : e.samples) {
    if (s.name != family + "_bucket") continue;
    REQUIRE(s.labels.count("le") == 1);
    REQUIRE(s.labels.size() == 1);
    double le;
    REQUIRE(ParseValue(s.labels.at("le"), &le));
    buckets.emplace_back(le, s.value);
  }
  REQUIRE(buckets.size() >= 2);
  for (size_t i = 1; i < buckets.size(); ++i) {
    INFO("bucket " << i << " le=" << buckets[i].first);
    REQUIRE(buckets[i].first > buckets[i - 1].first);
    REQUIRE(buckets[i].second >= buckets[i - 1].second);
  }
  REQUIRE(std::isinf(buckets.back().first));
  REQUIRE(buckets.front().second >= 0);
  double count = e.Get(family + "_count");
  REQUIRE(buckets.back().second == count);
  double sum = e.Get(family + "_sum");
  REQUIRE(sum >= 0);
  REQUIRE((count > 0 || sum == 0));
}

// Reads GET /metrics and checks it is well-formed with every family pmmap
// documents, each with HELP and TYPE.
Exposition Scrape(const std::string& base_url) {
  HttpResult r = Http(base_url, "GET", "/metrics");
  INFO("GET /metrics -> " << r.status << "\n" << r.body);
  REQUIRE(r.status == 200);
  REQUIRE(StartsWith(HeaderOf(r.headers, "Content-Type"), "text/plain"));
  REQUIRE(Contains(HeaderOf(r.headers, "Content-Type"), "version=0.0.4"));
  Exposition e = ParseExposition(r.body);
  std::string errors;
  for (const auto& err : e.errors) errors += err + "\n";
  INFO("format errors:\n" << errors);
  REQUIRE(e.errors.empty());
  const std::map<std::string, std::string> kFamilies = {
      {"pmmap_jobs", "gauge"},
      {"pmmap_inputs_total", "counter"},
      {"pmmap_outputs_total", "counter"},
      {"pmmap_webhook_calls_total", "counter"},
      {"pmmap_retries_total", "counter"},
      {"pmmap_webhook_calls_in_flight", "gauge"},
      {"pmmap_webhook_call_duration_seconds", "histogram"},
  };
  for (const auto& f : kFamilies) {
    INFO("family " << f.first);
    REQUIRE(e.type.count(f.first) == 1);
    REQUIRE(e.type.at(f.first) == f.second);
    REQUIRE(e.help.count(f.first) == 1);
  }
  for (const char* state : {"open", "closing", "done", "cancelled"})
    e.Get("pmmap_jobs", {{"state", state}});
  e.Get("pmmap_inputs_total");
  for (const char* result : {"success", "failure"})
    e.Get("pmmap_outputs_total", {{"result", result}});
  for (const char* outcome : {"2xx", "3xx", "4xx", "5xx", "timeout", "connect_error"}) {
    e.Get("pmmap_webhook_calls_total", {{"outcome", outcome}});
  }
  e.Get("pmmap_retries_total");
  e.Get("pmmap_webhook_calls_in_flight");
  CheckHistogram(e, "pmmap_webhook_call_duration_seconds");
  // Counters are never negative.
  for (const Sample& s : e.samples) {
    INFO("sample " << s.name);
    REQUIRE(s.value >= 0);
  }
  return e;
}

double Calls(const Exposition& e, const char* outcome) {
  return e.Get("pmmap_webhook_calls_total", {{"outcome", outcome}});
}

// ---------------------------------------------------------------------------
// Signatures.

std::string HmacSha256Hex(const std::string& key, const std::string& message) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  REQUIRE(HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
               reinterpret_cast<const unsigned char*>(message.data()), message.size(), digest,
               &len) != nullptr);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0xF]);
  }
  return out;
}

// Checks call's PMMAP-signature: "t=<unix seconds>,v1=<hex HMAC-SHA256 of
// "<t>.<body>" keyed with secret>", with t within [earliest, latest].
void CheckSignature(const Webhook::Call& call, const std::string& secret, time_t earliest,
                    time_t latest) {
  std::string value = HeaderOf(call.headers, "PMMAP-signature");
  INFO("call " << call.path << " attempt " << AttemptOf(call) << " PMMAP-signature: " << value
               << " body: " << call.body);
  REQUIRE(call.headers.count("PMMAP-signature") == 1);
  std::smatch m;
  REQUIRE(std::regex_match(value, m, std::regex("t=([0-9]+),v1=([0-9a-f]{64})")));
  long long t = std::stoll(m[1].str());
  REQUIRE(t >= static_cast<long long>(earliest));
  REQUIRE(t <= static_cast<long long>(latest));
  REQUIRE(m[2].str() == HmacSha256Hex(secret, m[1].str() + "." + call.body));
  // And not with some other key.
  REQUIRE(m[2].str() != HmacSha256Hex(secret + "x", m[1].str() + "." + call.body));
}

// The calls made to one path, in the order they arrived.
std::vector<Webhook::Call> CallsTo(Webhook& hook, const std::string& path) {
  std::vector<Webhook::Call> out;
  for (auto& call : hook.calls()) {
    if (call.path == path) out.push_back(call);
  }
  return out;
}

// Waits (bounded) until the webhook has received a call for key.
bool WaitForCall(Webhook& hook, const std::string& key, milliseconds timeout = seconds(20)) {
  return WaitUntil(
      [&] {
        for (const auto& call : hook.calls()) {
          if (call.key == key) return true;
        }
        return false;
      },
      timeout);
}

std::map<std::string, std::vector<int>> AttemptsByKey(Webhook& hook) {
  std::map<std::string, std::vector<int>> out;
  for (auto& call : hook.calls()) out[call.key].push_back(AttemptOf(call));
  return out;
}

// ---------------------------------------------------------------------------
// Jobs, by base URL (for servers that are not a PmmapProcess).

// Polls GET /job/{id} until it answers 404 (bounded); returns whether it did.
bool WaitGone(const std::string& base_url, const std::string& id, milliseconds timeout) {
  return WaitUntil([&] { return Http(base_url, "GET", "/job/" + id).status == 404; }, timeout);
}

bool JobIs(const rapidjson::Document& job, const char* state) {
  return job.IsObject() && job.HasMember("state") && std::string(job["state"].GetString()) == state;
}

bool CallbackEnded(const rapidjson::Document& job) {
  if (!job.HasMember("callback") || !job["callback"].IsObject()) return false;
  std::string state = job["callback"]["state"].GetString();
  return state == "succeeded" || state == "failed";
}

std::string CallbackJob(const std::string& url, const std::string& callback_url,
                        const std::string& extra = "") {
  return "{\"url\":\"" + url + "\",\"callback_url\":\"" + callback_url + "\",\"secret\":\"" +
         kSecret + "\",\"backoff_ms\":5" + extra + "}";
}

}  // namespace

// ===========================================================================
// 1. Health.

TEST_CASE("GET /healthz answers 200 {\"status\":\"ok\"}", "[ops]") {
  PmmapProcess pmmap;
  HttpResult r = Http(pmmap.base_url(), "GET", "/healthz");
  REQUIRE(r.status == 200);
  REQUIRE(StartsWith(HeaderOf(r.headers, "Content-Type"), "application/json"));
  rapidjson::Document doc = ParseJson(r.body);
  REQUIRE(doc.IsObject());
  REQUIRE(doc.MemberCount() == 1);
  REQUIRE(Text(doc, "status") == "ok");
}

// ===========================================================================
// 2. Metrics.

TEST_CASE("GET /metrics is well-formed Prometheus text before any job", "[ops]") {
  PmmapProcess pmmap;
  Exposition e = Scrape(pmmap.base_url());
  for (const char* state : {"open", "closing", "done", "cancelled"}) {
    REQUIRE(e.Get("pmmap_jobs", {{"state", state}}) == 0);
  }
  REQUIRE(e.Get("pmmap_inputs_total") == 0);
  REQUIRE(e.Get("pmmap_webhook_calls_in_flight") == 0);
  REQUIRE(e.Get("pmmap_webhook_call_duration_seconds_count") == 0);
  // The parser itself rejects what it should.
  REQUIRE_FALSE(ParseExposition("x_total 1\n").errors.empty());              // no TYPE
  REQUIRE_FALSE(ParseExposition("# TYPE x counter\nx 1\n").errors.empty());  // no HELP
  REQUIRE(ParseExposition("# HELP x X.\n# TYPE x counter\nx{a=\"b\"} 1\n").errors.empty());
}

namespace {

// The gates on which the metrics test's webhook holds calls, by key prefix.
struct MetricsGates {
  Gate hold;
  Gate slow;
  Gate stuck;
};

// Answers by key prefix: flaky 500 until its third attempt, bad 404, moved
// 302; hold, slow and stuck wait (at most 20 s) for their gate; then, as
// for any other key, 200 {"ok":true}.
void AnswerByPrefix(MetricsGates& gates, const Webhook::Call& call, httplib::Response& res) {
  const std::string& key = call.key;
  if (StartsWith(key, "flaky") && AttemptOf(call) < 3) {
    res.status = 500;
    res.set_content("try again", "text/plain");
    return;
  }
  if (StartsWith(key, "bad")) {
    res.status = 404;
    res.set_content("no such thing", "text/plain");
    return;
  }
  if (StartsWith(key, "moved")) {
    res.status = 302;
    res.set_header("Location", "/elsewhere");
    return;
  }
  if (StartsWith(key, "hold")) gates.hold.Wait(seconds(20));
  if (StartsWith(key, "slow")) gates.slow.Wait(seconds(20));
  if (StartsWith(key, "stuck")) gates.stuck.Wait(seconds(20));
  res.set_content("{\"ok\":true}", "application/json");
}

// The metrics test's jobs, by the letters its comments give them.
struct MetricsJobs {
  std::string a, b, c, e;
};

// Job A: successes, 500s then success, 4xx, a 3xx, and one call held
// until hold opens. Checks the metrics while that call is held, then lets
// it end and waits until the job is done. Returns its id.
std::string RunMixedJob(const PmmapProcess& pmmap, Webhook& hook, Gate& hold) {
  const std::string base = pmmap.base_url();
  std::string a = CreateJob(pmmap, "{\"url\":\"" + hook.url() +
                                       "\",\"concurrency\":4,\"max_attempts\":5,\"backoff_ms\":5}");
  std::string inputs =
      "[{\"key\":\"ok0\",\"value\":0},{\"key\":\"ok1\",\"value\":1},{\"key\":\"ok2\",\"value\":2},"
      "{\"key\":\"ok3\",\"value\":3},{\"key\":\"flaky0\",\"value\":4},{\"key\":\"flaky1\","
      "\"value\":5},"
      "{\"key\":\"bad0\",\"value\":6},{\"key\":\"bad1\",\"value\":7},{\"key\":\"moved0\",\"value\":"
      "8},"
      "{\"key\":\"hold0\",\"value\":9}]";
  REQUIRE(Http(base, "PUT", "/job/" + a + "/input", inputs).status == 201);
  REQUIRE(Http(base, "POST", "/job/" + a + "/complete").status == 200);
  // Everything but the held call is stored, and the held call reached the webhook.
  REQUIRE(WaitForCall(hook, "hold0"));
  rapidjson::Document mid = WaitForJob(pmmap, a, [](const rapidjson::Document& j) {
    return j["outputs"].GetUint64() == 9 && j["in_flight"].GetUint64() == 1;
  });
  REQUIRE(U64(mid, "outputs") == 9);
  Exposition during = Scrape(base);
  REQUIRE(during.Get("pmmap_webhook_calls_in_flight") == 1);
  REQUIRE(during.Get("pmmap_jobs", {{"state", "closing"}}) == 1);
  REQUIRE(during.Get("pmmap_jobs", {{"state", "done"}}) == 2);
  REQUIRE(during.Get("pmmap_jobs", {{"state", "open"}}) == 0);
  hold.Open();
  rapidjson::Document job_a =
      WaitForJob(pmmap, a, [](const rapidjson::Document& j) { return JobIs(j, "done"); });
  REQUIRE(JobIs(job_a, "done"));
  REQUIRE(U64(job_a, "succeeded") == 7);
  REQUIRE(U64(job_a, "failed") == 3);
  REQUIRE(U64(job_a, "retries") == 4);
  return a;
}

// Job E: cancelled with one call in flight and one input queued. Returns
// its id.
std::string RunCancelledJob(const PmmapProcess& pmmap, Webhook& hook) {
  const std::string base = pmmap.base_url();
  std::string e = CreateJob(pmmap, "{\"url\":\"" + hook.url() + "\",\"concurrency\":1}");
  REQUIRE(Http(base, "PUT", "/job/" + e + "/input",
               "[{\"key\":\"stuck0\",\"value\":0},{\"key\":\"stuck1\",\"value\":1}]")
              .status == 201);
  REQUIRE(WaitForCall(hook, "stuck0"));
  REQUIRE(Http(base, "POST", "/job/" + e + "/cancel").status == 200);
  return e;
}

// Scrapes until no call is in flight (bounded), and returns that scrape;
// fails the test if calls stay in flight.
Exposition ScrapeOnceIdle(const std::string& base) {
  Exposition after;
  bool settled = WaitUntil(
      [&] {
        after = Scrape(base);
        return after.Get("pmmap_webhook_calls_in_flight") == 0;
      },
      seconds(10));
  INFO("in flight after cancel: " << after.Get("pmmap_webhook_calls_in_flight"));
  REQUIRE(settled);
  return after;
}

// Checks what the metrics test's jobs added between two scrapes.
void CheckMetricsAdded(const Exposition& before, const Exposition& after) {
  auto delta = [&](const std::string& name, const std::map<std::string, std::string>& labels = {}) {
    return after.Get(name, labels) - before.Get(name, labels);
  };
  // 10 + 1 + 1 + 2 inputs.
  CHECK(delta("pmmap_inputs_total") == 14);
  // ok x4, flaky x2, hold0 succeeded; bad x2, moved0, slow0, c0, stuck x2 failed.
  CHECK(delta("pmmap_outputs_total", {{"result", "success"}}) == 7);
  CHECK(delta("pmmap_outputs_total", {{"result", "failure"}}) == 7);
  CHECK(Calls(after, "2xx") - Calls(before, "2xx") == 7);
  CHECK(Calls(after, "3xx") - Calls(before, "3xx") == 1);
  CHECK(Calls(after, "4xx") - Calls(before, "4xx") == 2);
  CHECK(Calls(after, "5xx") - Calls(before, "5xx") == 4);
  CHECK(Calls(after, "timeout") - Calls(before, "timeout") == 2);
  CHECK(Calls(after, "connect_error") - Calls(before, "connect_error") == 2);
  // flaky x2 retried twice each, slow0 and c0 once each.
  CHECK(delta("pmmap_retries_total") == 6);
  CHECK(after.Get("pmmap_webhook_calls_in_flight") == 0);
  CHECK(after.Get("pmmap_jobs", {{"state", "done"}}) == 3);
  CHECK(after.Get("pmmap_jobs", {{"state", "open"}}) == 0);
  CHECK(after.Get("pmmap_jobs", {{"state", "closing"}}) == 0);
  CHECK(after.Get("pmmap_jobs", {{"state", "cancelled"}}) == 1);
  // Every call is in the histogram; the two timeouts (400 ms each) are above 0.25 s.
  const std::string h = "pmmap_webhook_call_duration_seconds";
  CHECK(delta(h + "_count") == 18);
  CHECK(delta(h + "_bucket", {{"le", "+Inf"}}) == 18);
  CHECK(delta(h + "_sum") >= 0.75);
  CHECK(after.Get(h + "_bucket", {{"le", "+Inf"}}) - after.Get(h + "_bucket", {{"le", "0.25"}}) >=
        2);
}

// Checks that what the webhook saw agrees with the metrics.
void CheckMetricsCallsSeen(Webhook& hook) {
  auto attempts = AttemptsByKey(hook);
  CHECK(attempts["flaky0"] == std::vector<int>{1, 2, 3});
  CHECK(attempts["flaky1"] == std::vector<int>{1, 2, 3});
  CHECK(attempts["bad0"] == std::vector<int>{1});
  CHECK(attempts["moved0"] == std::vector<int>{1});
  CHECK(attempts["slow0"] == std::vector<int>{1, 2});
  CHECK(attempts["stuck0"] == std::vector<int>{1});
  CHECK(attempts.count("stuck1") == 0);
  CHECK(hook.call_count() == 17);  // and 2 refused connections
}

// Checks the log has one line per final failure of the metrics test's
// jobs, and one for the cancel.
void CheckMetricsLog(const std::string& log, const MetricsJobs& jobs) {
  INFO("log:\n" << log);
  for (const char* key : {"bad0", "bad1", "moved0"}) {
    CHECK(Contains(log, "job " + jobs.a + " failure: key " + key + ": "));
  }
  CHECK(Contains(log, "job " + jobs.b + " failure: key slow0: "));
  CHECK(Contains(log, "job " + jobs.c + " failure: key c0: "));
  size_t failures = 0;
  for (const auto& line : SplitLines(log)) {
    if (Contains(line, " failure: ")) ++failures;
  }
  CHECK(failures == 5);
  CHECK(Contains(log, "job " + jobs.e + " cancelled"));
}

}  // namespace

TEST_CASE("metrics count inputs, outputs, calls by outcome, retries and in-flight calls", "[ops]") {
  MetricsGates gates;
  Webhook hook;
  OpenAtExit open_hold(gates.hold);
  OpenAtExit open_slow(gates.slow);
  OpenAtExit open_stuck(gates.stuck);
  hook.SetHandler([&gates](const Webhook::Call& call, httplib::Response& res) {
    AnswerByPrefix(gates, call, res);
  });
  RefusingPort refusing;
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  Exposition before = Scrape(base);
  MetricsJobs jobs;

  // Job B: one input whose calls time out twice.
  jobs.b = CreateJob(pmmap, "{\"url\":\"" + hook.url() +
                                "\",\"timeout_ms\":400,\"max_attempts\":2,\"backoff_ms\":5}");
  REQUIRE(
      Http(base, "PUT", "/job/" + jobs.b + "/input", "[{\"key\":\"slow0\",\"value\":1}]").status ==
      201);
  REQUIRE(Http(base, "POST", "/job/" + jobs.b + "/complete").status == 200);
  // Job C: one input whose webhook refuses connections, twice (no circuit
  // breaker, which would hold the input for max_outage_ms).
  jobs.c = CreateJob(pmmap, "{\"url\":\"http://127.0.0.1:" + std::to_string(refusing.port()) +
                                "/hook\",\"max_attempts\":2,\"backoff_ms\":5,\"max_outage_ms\":0}");
  REQUIRE(Http(base, "PUT", "/job/" + jobs.c + "/input", "[{\"key\":\"c0\",\"value\":1}]").status ==
          201);
  REQUIRE(Http(base, "POST", "/job/" + jobs.c + "/complete").status == 200);
  for (const std::string& id : {jobs.b, jobs.c}) {
    REQUIRE(
        JobIs(WaitForJob(pmmap, id, [](const rapidjson::Document& j) { return JobIs(j, "done"); }),
              "done"));
  }
  gates.slow.Open();  // pmmap gave up on those calls; let the webhook's handlers end

  jobs.a = RunMixedJob(pmmap, hook, gates.hold);
  jobs.e = RunCancelledJob(pmmap, hook);
  CheckMetricsAdded(before, ScrapeOnceIdle(base));
  CheckMetricsCallsSeen(hook);
  CheckMetricsLog(pmmap.log(), jobs);
}

// ===========================================================================
// 3. Logs, and the secret.

namespace {

struct LogEvent {
  std::string job;    // empty for a server-wide message
  std::string event;  // or the message
  std::string detail;
};

// Parses the server's log: every line must be in the chosen format.
std::vector<LogEvent> ParseLog(const std::string& log, bool json) {
  std::vector<LogEvent> events;
  const std::regex time_re(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z)");
  const std::regex job_re(R"((\S+) pmmap: job ([0-9a-f]{16}) ([a-z]+)(: (.*))?)");
  const std::regex message_re(R"((\S+) pmmap: (.*))");
  for (const std::string& line : SplitLines(log)) {
    INFO("log line: " << line);
    LogEvent ev;
    if (json) {
      rapidjson::Document doc = ParseJson(line);
      REQUIRE(doc.IsObject());
      REQUIRE(std::regex_match(Text(doc, "time"), time_re));
      if (doc.HasMember("job")) {
        ev.job = Text(doc, "job");
        ev.event = Text(doc, "event");
        if (doc.HasMember("detail")) ev.detail = Text(doc, "detail");
        REQUIRE_FALSE(doc.HasMember("message"));
      } else {
        ev.event = Text(doc, "message");
      }
    } else {
      REQUIRE(line.front() != '{');
      std::smatch m;
      if (std::regex_match(line, m, job_re)) {
        REQUIRE(std::regex_match(m[1].str(), time_re));
        ev.job = m[2];
        ev.event = m[3];
        ev.detail = m[5];
      } else {
        REQUIRE(std::regex_match(line, m, message_re));
        REQUIRE(std::regex_match(m[1].str(), time_re));
        ev.event = m[2];
      }
    }
    events.push_back(ev);
  }
  return events;
}

size_t CountEvents(const std::vector<LogEvent>& events, const std::string& job,
                   const std::string& event) {
  size_t n = 0;
  for (const auto& ev : events) {
    if (ev.job == job && ev.event == event) ++n;
  }
  return n;
}

// Answers flaky0's first attempt with a 503 and bad0 with a 404; every
// other call with 200 {"ok":true}.
void AnswerForEventLog(const Webhook::Call& call, httplib::Response& res) {
  if (call.key == "flaky0" && AttemptOf(call) < 2) {
    res.status = 503;
    return;
  }
  if (call.key == "bad0") {
    res.status = 404;
    res.set_content("gone", "text/plain");
    return;
  }
  res.set_content("{\"ok\":true}", "application/json");
}

// The event-log test's jobs, by the letters its comments give them.
struct EventLogJobs {
  std::string a, b, d, e;
};

// Runs jobs through every event (created, completed, failure, done,
// cancelled, deleted, expired) on a pmmap whose jobs expire after a second
// and whose log is in the json or the text format, and waits until both
// expiries are logged.
EventLogJobs RunEveryEvent(const PmmapProcess& pmmap, const std::string& hook_url, bool json) {
  const std::string base = pmmap.base_url();
  const std::string job_body = "{\"url\":\"" + hook_url + "\",\"backoff_ms\":5,\"max_attempts\":3}";
  EventLogJobs jobs;
  // E stays open to the end: it must not expire.
  jobs.e = CreateJob(pmmap, job_body);
  // A: created, completed, one failure (bad0; flaky0 is retried, not failed), done, expired.
  jobs.a = CreateJob(pmmap, job_body);
  const std::string& a = jobs.a;
  REQUIRE(Http(base, "PUT", "/job/" + a + "/input",
               "[{\"key\":\"ok0\",\"value\":0},{\"key\":\"flaky0\",\"value\":1},{\"key\":\"bad0\","
               "\"value\":2}]")
              .status == 201);
  REQUIRE(Http(base, "POST", "/job/" + a + "/complete").status == 200);
  REQUIRE(Http(base, "POST", "/job/" + a + "/complete").status == 200);  // repeated: no second line
  HttpResult out = Http(base, "GET", "/job/" + a + "/output");           // waits until done
  REQUIRE(out.status == 200);
  REQUIRE(ParseJson(out.body).Size() == 3);
  // B: created, deleted while open.
  jobs.b = CreateJob(pmmap, job_body);
  REQUIRE(Http(base, "DELETE", "/job/" + jobs.b).status == 200);
  // D: created, cancelled, expired.
  jobs.d = CreateJob(pmmap, job_body);
  REQUIRE(Http(base, "POST", "/job/" + jobs.d + "/cancel").status == 200);

  REQUIRE(WaitGone(base, a, seconds(8)));
  REQUIRE(WaitGone(base, jobs.d, seconds(8)));
  REQUIRE(WaitUntil(
      [&] {
        auto events = ParseLog(pmmap.log(), json);
        return CountEvents(events, a, "expired") == 1 &&
               CountEvents(events, jobs.d, "expired") == 1;
      },
      seconds(5)));
  return jobs;
}

// Checks that events hold exactly the job events RunEveryEvent caused:
// one of each, no other, the failure naming its key and status, and the
// done line counting outcomes.
void CheckJobEvents(const std::vector<LogEvent>& events, const EventLogJobs& jobs) {
  const std::vector<std::string> kEvents = {"created", "completed", "done",   "cancelled",
                                            "deleted", "expired",   "failure"};
  std::map<std::string, std::map<std::string, size_t>> expected = {
      {jobs.a, {{"created", 1}, {"completed", 1}, {"failure", 1}, {"done", 1}, {"expired", 1}}},
      {jobs.b, {{"created", 1}, {"deleted", 1}}},
      {jobs.d, {{"created", 1}, {"cancelled", 1}, {"expired", 1}}},
      {jobs.e, {{"created", 1}}},
  };
  for (const auto& job : expected) {
    for (const std::string& event : kEvents) {
      INFO("job " << job.first << " event " << event);
      size_t want = job.second.count(event) ? job.second.at(event) : 0;
      CHECK(CountEvents(events, job.first, event) == want);
    }
  }
  // Only those events, all of known jobs.
  for (const auto& ev : events) {
    if (ev.job.empty()) continue;
    INFO("event " << ev.job << " " << ev.event);
    CHECK(expected.count(ev.job) == 1);
    CHECK(std::find(kEvents.begin(), kEvents.end(), ev.event) != kEvents.end());
  }
  // The failure names its key and why; the done line counts outcomes.
  for (const auto& ev : events) {
    if (ev.job == jobs.a && ev.event == "failure") {
      CHECK(Contains(ev.detail, "bad0"));
      CHECK(Contains(ev.detail, "404"));
    }
    if (ev.job == jobs.a && ev.event == "done") CHECK(Contains(ev.detail, "2 succeeded, 1 failed"));
  }
}

// Runs jobs through every event and checks the log, in the json or the
// text format, has one line for each.
void CheckEventLog(bool json) {
  Webhook hook;
  hook.SetHandler(AnswerForEventLog);
  PmmapProcess pmmap({"--job-ttl", "1", "--log-format", json ? "json" : "text"});
  EventLogJobs jobs = RunEveryEvent(pmmap, hook.url(), json);
  // E outlived an expiry pass that came after it was a second old.
  REQUIRE(JobIs(GetJob(pmmap, jobs.e), "open"));
  REQUIRE(pmmap.Stop(SIGTERM) == 0);

  std::string log = pmmap.log();
  INFO("log:\n" << log);
  std::vector<LogEvent> events = ParseLog(log, json);
  bool listening = false;
  for (const auto& ev : events) {
    if (ev.job.empty() &&
        Contains(ev.event, "listening on http://127.0.0.1:" + std::to_string(pmmap.port()))) {
      listening = true;
    }
  }
  REQUIRE(listening);
  CheckJobEvents(events, jobs);
}

}  // namespace

TEST_CASE("the text log has one line per job event and per final failure", "[ops]") {
  CheckEventLog(false);
}

TEST_CASE("--log-format json writes one JSON object per line", "[ops]") { CheckEventLog(true); }

TEST_CASE("a failure whose key holds a line break is still one log line", "[ops]") {
  // Keys are any JSON string, so they may hold \n or \r; the failure line
  // that names one must not break in two (nor let a key forge a line).
  const bool json = GENERATE(false, true);
  INFO("log format " << (json ? "json" : "text"));
  Webhook hook;
  hook.SetHandler([](const Webhook::Call&, httplib::Response& res) { res.status = 404; });
  PmmapProcess pmmap({"--log-format", json ? "json" : "text"});
  const std::string base = pmmap.base_url();
  std::string id = CreateJob(pmmap, "{\"url\":\"" + hook.url() + "\"}");
  REQUIRE(Http(base, "PUT", "/job/" + id + "/input",
               "[{\"key\":\"two\\nlines\",\"value\":0},"
               "{\"key\":\"x\\n2030-01-01T00:00:00.000Z pmmap: job 0123456789abcdef "
               "deleted\",\"value\":1},"
               "{\"key\":\"cr\\rreturn\",\"value\":2}]")
              .status == 201);
  REQUIRE(Http(base, "POST", "/job/" + id + "/complete").status == 200);
  REQUIRE(
      JobIs(WaitForJob(pmmap, id, [](const rapidjson::Document& j) { return JobIs(j, "done"); }),
            "done"));
  REQUIRE(pmmap.Stop(SIGTERM) == 0);
  std::string log = pmmap.log();
  INFO("log:\n" << log);
  // Every line is a whole event in the format; the forged one is not an event.
  std::vector<LogEvent> events = ParseLog(log, json);
  CHECK(CountEvents(events, id, "failure") == 3);
  CHECK(CountEvents(events, "0123456789abcdef", "deleted") == 0);
  for (const auto& line : SplitLines(log)) {
    INFO("line: " << line);
    CHECK_FALSE(Contains(line, "\r"));
  }
}

TEST_CASE("the secret never appears in logs, metrics, job JSON, outputs or the callback body",
          "[ops]") {
  Webhook hook;
  hook.SetHandler([](const Webhook::Call& call, httplib::Response& res) {
    if (call.path == "/cb") return;  // 200, empty
    if (call.key == "bad0") {
      res.status = 400;
      res.set_content("bad input", "text/plain");
      return;
    }
    if (call.key == "flaky0" && AttemptOf(call) < 2) {
      res.status = 500;
      return;
    }
    res.set_content("{\"ok\":true}", "application/json");
  });
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  std::vector<HttpResult> seen;  // every reply pmmap gave
  auto keep = [&](const HttpResult& r) {
    seen.push_back(r);
    return r;
  };
  const std::string body = CallbackJob(hook.url(), hook.url("/cb"));
  HttpResult created = keep(Http(base, "POST", "/job", body));
  REQUIRE(created.status == 201);
  std::string a = Text(ParseJson(created.body), "id");
  REQUIRE(keep(Http(base, "PUT", "/job/" + a + "/input",
                    "[{\"key\":\"ok0\",\"value\":0},{\"key\":\"bad0\",\"value\":1},{\"key\":"
                    "\"flaky0\",\"value\":2}]"))
              .status == 201);
  keep(Http(base, "GET", "/job/" + a));
  keep(Http(base, "GET", "/jobs"));
  // Refusals too: a key repeated with another value, a wrong method, a job without a url.
  REQUIRE(
      keep(Http(base, "PUT", "/job/" + a + "/input", "[{\"key\":\"ok0\",\"value\":9}]")).status ==
      409);
  REQUIRE(keep(Http(base, "PUT", "/job/" + a, "{}")).status == 405);
  REQUIRE(keep(Http(base, "POST", "/job", "{\"secret\":" + Quote(kSecret) + "}")).status == 400);
  REQUIRE(keep(Http(base, "POST", "/job/" + a + "/complete")).status == 200);
  rapidjson::Document done = WaitForJob(pmmap, a, CallbackEnded);
  REQUIRE(Text(done["callback"], "state") == "succeeded");
  keep(Http(base, "GET", "/job/" + a));
  keep(Http(base, "GET", "/job/" + a + "/output"));
  keep(Http(base, "GET", "/job/" + a + "/output?format=ndjson"));
  // B is cancelled (its callback fires too), C deleted.
  std::string b = CreateJob(pmmap, body);
  REQUIRE(keep(Http(base, "POST", "/job/" + b + "/cancel")).status == 200);
  REQUIRE(Text(WaitForJob(pmmap, b, CallbackEnded)["callback"], "state") == "succeeded");
  std::string c =
      CreateJob(pmmap, "{\"url\":\"" + hook.url() + "\",\"secret\":\"" + kSecret + "\"}");
  keep(Http(base, "GET", "/jobs"));
  keep(Http(base, "GET", "/metrics"));
  REQUIRE(keep(Http(base, "DELETE", "/job/" + c)).status == 200);

  // The secret was in use: every call carried it in PMMAP-auth.
  auto calls = hook.calls();
  REQUIRE(calls.size() == 6);  // ok0, bad0, flaky0 x2, two callbacks
  for (const auto& call : calls) REQUIRE(HeaderOf(call.headers, "PMMAP-auth") == kSecret);
  auto callbacks = CallsTo(hook, "/cb");
  REQUIRE(callbacks.size() == 2);
  for (const auto& call : callbacks) {
    INFO("callback body: " << call.body);
    CHECK_FALSE(Contains(call.body, kSecret));
    CHECK_FALSE(Contains(call.body, "secret"));
  }
  for (const HttpResult& r : seen) {
    INFO("reply " << r.status << ": " << r.body);
    CHECK_FALSE(Contains(r.body, kSecret));
    for (const auto& h : r.headers) CHECK_FALSE(Contains(h.second, kSecret));
  }
  REQUIRE(pmmap.Stop(SIGTERM) == 0);
  std::string log = pmmap.log();
  INFO("log:\n" << log);
  CHECK(Contains(log, "job " + a + " failure"));
  CHECK_FALSE(Contains(log, kSecret));
}

// ===========================================================================
// 4. Flags and environment variables.

TEST_CASE("--help prints every flag with its environment variable", "[ops]") {
  for (const char* flag : {"--help", "-h"}) {
    INFO("flag " << flag);
    RunResult r = RunBinary({flag});
    INFO("stdout:\n" << r.out << "\nstderr:\n" << r.err);
    REQUIRE(r.exit_code == 0);
    REQUIRE(r.err.empty());
    const std::vector<std::pair<std::string, std::string>> kFlags = {
        {"--listen", "PMMAP_LISTEN"},
        {"--data-dir", "PMMAP_DATA_DIR"},
        {"--http-threads", "PMMAP_HTTP_THREADS"},
        {"--max-body", "PMMAP_MAX_BODY"},
        {"--max-jobs", "PMMAP_MAX_JOBS"},
        {"--job-ttl", "PMMAP_JOB_TTL"},
        {"--ca-file", "PMMAP_CA_FILE"},
        {"--log-format", "PMMAP_LOG_FORMAT"},
        {"--help", ""},
        {"--version", ""},
    };
    for (const auto& f : kFlags) {
      INFO("documents " << f.first);
      // The flag's entry runs from its name to the next flag's.
      size_t at = r.out.find("  " + f.first + " ");
      REQUIRE(at != std::string::npos);
      size_t next = r.out.find("\n  --", at);
      std::string entry =
          r.out.substr(at, next == std::string::npos ? std::string::npos : next - at);
      if (!f.second.empty()) CHECK(Contains(entry, "(" + f.second));
    }
  }
}

TEST_CASE("--version prints the version; a bad flag or value exits 2", "[ops]") {
  RunResult v = RunBinary({"--version"});
  INFO("stdout: " << v.out << " stderr: " << v.err);
  REQUIRE(v.exit_code == 0);
  REQUIRE(std::regex_match(v.out, std::regex("pmmap [0-9]+\\.[0-9]+\\.[0-9]+\n")));

  struct BadRun {
    std::vector<std::string> args;
    std::map<std::string, std::string> env;
    std::string named;  // what the message must name
  };
  const std::vector<BadRun> kBad = {
      {{"--no-such-flag"}, {}, "--no-such-flag"},
      {{"--listen", "127.0.0.1:0", "--bogus=1"}, {}, "--bogus"},
      {{"--max-jobs"}, {}, "--max-jobs"},
      {{"--max-jobs", "0"}, {}, "--max-jobs"},
      {{"--max-jobs", "two"}, {}, "--max-jobs"},
      {{"--log-format", "xml"}, {}, "--log-format"},
      {{"--listen", "127.0.0.1:0"}, {{"PMMAP_MAX_JOBS", "many"}}, "PMMAP_MAX_JOBS"},
      {{"--listen", "127.0.0.1:0"}, {{"PMMAP_LOG_FORMAT", "yaml"}}, "PMMAP_LOG_FORMAT"},
  };
  for (const BadRun& bad : kBad) {
    std::string shown;
    for (const auto& a : bad.args) shown += a + " ";
    for (const auto& kv : bad.env) shown += kv.first + "=" + kv.second;
    INFO("run: " << shown);
    RunResult r = RunBinary(bad.args, bad.env);
    INFO("stdout: " << r.out << " stderr: " << r.err);
    CHECK(r.exit_code == 2);
    CHECK(Contains(r.err, bad.named));
    CHECK(r.out.empty());
  }
}

namespace {

// With a limit of 2 jobs: the third POST /job is refused with 429, and
// accepted again once one is deleted.
void CheckMaxJobsTwo(const PmmapProcess& pmmap, const std::string& hook_url) {
  const std::string base = pmmap.base_url();
  const std::string body = JobBody(hook_url);
  std::string first = CreateJob(pmmap, body);
  CreateJob(pmmap, body);
  HttpResult third = Http(base, "POST", "/job", body);
  REQUIRE(third.status == 429);
  REQUIRE(StartsWith(HeaderOf(third.headers, "Content-Type"), "application/json"));
  RequireError(third, 429);
  REQUIRE(ParseJson(Http(base, "GET", "/jobs").body).Size() == 2);
  REQUIRE(Http(base, "DELETE", "/job/" + first).status == 200);
  CreateJob(pmmap, body);
  REQUIRE(Http(base, "POST", "/job", body).status == 429);
  REQUIRE(ParseJson(Http(base, "GET", "/jobs").body).Size() == 2);
}

}  // namespace

TEST_CASE("--max-jobs 2 refuses a third job with 429 until one is deleted", "[ops]") {
  Webhook hook;
  PmmapProcess pmmap({"--max-jobs", "2"});
  CheckMaxJobsTwo(pmmap, hook.url());
}

TEST_CASE("PMMAP_MAX_JOBS works like --max-jobs", "[ops]") {
  Webhook hook;
  {
    PmmapProcess pmmap({}, {{"PMMAP_MAX_JOBS", "2"}});
    CheckMaxJobsTwo(pmmap, hook.url());
    REQUIRE(pmmap.Stop(SIGTERM, seconds(20)) == 0);
  }
  {
    // The command line wins over the environment.
    PmmapProcess pmmap({"--max-jobs", "2"}, {{"PMMAP_MAX_JOBS", "1"}});
    CheckMaxJobsTwo(pmmap, hook.url());
    REQUIRE(pmmap.Stop(SIGTERM, seconds(20)) == 0);
  }
  {
    // Another variable, for good measure: PMMAP_LOG_FORMAT.
    PmmapProcess pmmap({}, {{"PMMAP_LOG_FORMAT", "json"}});
    REQUIRE(pmmap.Stop(SIGTERM, seconds(20)) == 0);
    std::vector<std::string> lines = SplitLines(pmmap.log());
    REQUIRE(lines.size() >= 3);  // listening, stopping, stopped
    for (const auto& line : lines) REQUIRE(ParseJson(line).IsObject());
  }
}

TEST_CASE("--max-body 1000 refuses a larger body with 413, changes nothing, keeps the connection",
          "[ops]") {
  Webhook hook;
  PmmapProcess pmmap({"--max-body", "1000"});
  const std::string base = pmmap.base_url();
  std::string id = CreateJob(pmmap, "{\"url\":\"" + hook.url() + "\"}");
  auto padded = [](std::string json, size_t size) {
    REQUIRE(json.size() <= size);
    json.insert(json.size() - 1,
                std::string(size - json.size(), ' '));  // whitespace before the last ] or }
    return json;
  };
  std::string big = padded(MakeInputs(20, "big"), 2000);

  RawConn conn(pmmap.port());
  conn.SendRequest("PUT", "/job/" + id + "/input", big);
  HttpResult refused = conn.Read(seconds(20));
  REQUIRE(refused.status == 413);
  REQUIRE(StartsWith(HeaderOf(refused.headers, "Content-Type"), "application/json"));
  RequireError(refused, 413);
  // Nothing changed, and the same connection still serves requests.
  conn.SendRequest("GET", "/job/" + id, "", false);
  HttpResult job = conn.Read(seconds(20));
  REQUIRE(job.status == 200);
  REQUIRE(U64(ParseJson(job.body), "inputs") == 0);
  // The keys of the refused body were not taken: a body of exactly the limit with them is accepted.
  conn.SendRequest("PUT", "/job/" + id + "/input", padded(MakeInputs(20, "big"), 1000));
  HttpResult accepted = conn.Read(seconds(20));
  INFO("PUT -> " << accepted.body);
  REQUIRE(accepted.status == 201);
  REQUIRE(U64(ParseJson(accepted.body), "inputs") == 20);
  // One byte over the limit is refused.
  conn.SendRequest("PUT", "/job/" + id + "/input", padded(MakeInputs(3, "more"), 1001));
  REQUIRE(conn.Read(seconds(20)).status == 413);
  conn.SendRequest("GET", "/job/" + id, "", false);
  REQUIRE(U64(ParseJson(conn.Read(seconds(20)).body), "inputs") == 20);
  // So is a chunked body over the limit, and the connection survives it too.
  std::string chunked = padded(MakeInputs(20, "chunked"), 2000);
  std::string request = "PUT /job/" + id +
                        "/input HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (size_t at = 0; at < chunked.size(); at += 500) {
    std::string piece = chunked.substr(at, 500);
    char size[16];
    snprintf(size, sizeof(size), "%zx\r\n", piece.size());
    request += size + piece + "\r\n";
  }
  conn.Send(request + "0\r\n\r\n");
  HttpResult chunked_reply = conn.Read(seconds(20));
  REQUIRE(chunked_reply.status == 413);
  RequireError(chunked_reply, 413);
  conn.SendRequest("GET", "/job/" + id, "", false);
  HttpResult after_chunked = conn.Read(seconds(20));
  REQUIRE(after_chunked.status == 200);
  REQUIRE(U64(ParseJson(after_chunked.body), "inputs") == 20);
  conn.Close();

  // Far over the limit too, on a new connection.
  RequireError(Http(base, "PUT", "/job/" + id + "/input", MakeInputs(10000)), 413);
  REQUIRE(U64(GetJob(pmmap, id), "inputs") == 20);

  // POST /job over the limit creates no job.
  std::string big_job = padded("{\"url\":\"" + hook.url() + "\"}", 2000);
  HttpResult post = Http(base, "POST", "/job", big_job);
  REQUIRE(post.status == 413);
  RequireError(post, 413);
  REQUIRE(ParseJson(Http(base, "GET", "/jobs").body).Size() == 1);
}

TEST_CASE("--job-ttl 1 removes ended jobs, never open or closing ones", "[ops]") {
  Gate gate;
  Webhook hook;
  OpenAtExit opener(gate);
  hook.SetHandler([&](const Webhook::Call& call, httplib::Response& res) {
    if (StartsWith(call.key, "hold")) gate.Wait(seconds(20));
    res.set_content("{}", "application/json");
  });
  PmmapProcess pmmap({"--job-ttl", "1"});
  const std::string base = pmmap.base_url();
  const std::string body = "{\"url\":\"" + hook.url() + "\"}";
  std::string open_job = CreateJob(pmmap, body);
  // A closing job: completed, its one call held.
  std::string closing = CreateJob(pmmap, body);
  REQUIRE(
      Http(base, "PUT", "/job/" + closing + "/input", "[{\"key\":\"hold0\",\"value\":0}]").status ==
      201);
  REQUIRE(WaitForCall(hook, "hold0"));
  REQUIRE(Http(base, "POST", "/job/" + closing + "/complete").status == 200);
  // A done job.
  std::string done = CreateJob(pmmap, body);
  REQUIRE(Http(base, "PUT", "/job/" + done + "/input", MakeInputs(2)).status == 201);
  REQUIRE(Http(base, "POST", "/job/" + done + "/complete").status == 200);
  REQUIRE(
      JobIs(WaitForJob(pmmap, done, [](const rapidjson::Document& j) { return JobIs(j, "done"); }),
            "done"));
  auto done_at = SteadyClock::now();

  REQUIRE(WaitGone(base, done, seconds(5)));
  INFO("expired after " << SecondsSince(done_at) << " s");
  HttpResult gone = Http(base, "GET", "/job/" + done);
  REQUIRE(gone.status == 404);
  RequireError(gone, 404);
  REQUIRE(Http(base, "GET", "/job/" + done + "/output").status == 404);
  REQUIRE(Http(base, "DELETE", "/job/" + done).status == 404);
  REQUIRE(WaitUntil([&] { return Contains(pmmap.log(), "job " + done + " expired"); }, seconds(5)));
  // The expiry pass that removed it came over a second after the other two began.
  REQUIRE(JobIs(GetJob(pmmap, open_job), "open"));
  REQUIRE(JobIs(GetJob(pmmap, closing), "closing"));

  // Once the closing job is done, it expires too.
  gate.Open();
  REQUIRE(JobIs(
      WaitForJob(pmmap, closing, [](const rapidjson::Document& j) { return JobIs(j, "done"); }),
      "done"));
  REQUIRE(WaitGone(base, closing, seconds(5)));
  REQUIRE(
      WaitUntil([&] { return Contains(pmmap.log(), "job " + closing + " expired"); }, seconds(5)));
  REQUIRE(JobIs(GetJob(pmmap, open_job), "open"));
  rapidjson::Document jobs = ParseJson(Http(base, "GET", "/jobs").body);
  REQUIRE(jobs.Size() == 1);
  REQUIRE(Text(jobs[0], "id") == open_job);
  CHECK_FALSE(Contains(pmmap.log(), "job " + open_job + " expired"));
}

// ===========================================================================
// 5. Signed calls.

TEST_CASE("with a secret, every call is signed and carries PMMAP-auth and PMMAP-attempt", "[ops]") {
  Webhook hook;
  hook.SetHandler([](const Webhook::Call& call, httplib::Response& res) {
    if (StartsWith(call.key, "flaky") && AttemptOf(call) < 3) {
      res.status = 500;
      return;
    }
    res.set_content("{\"ok\":true}", "application/json");
  });
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  time_t earliest = time(nullptr);
  std::string id = CreateJob(pmmap, "{\"url\":\"" + hook.url() + "\",\"secret\":\"" + kSecret +
                                        "\",\"backoff_ms\":5,\"concurrency\":2}");
  REQUIRE(Http(base, "PUT", "/job/" + id + "/input",
               "[{\"key\":\"a0\",\"value\":{\"x\":[1,2.50,\"\\u00e9\"]}},{\"key\":\"a1\",\"value\":"
               "\"s\"},"
               "{\"key\":\"flaky0\",\"value\":null}]")
              .status == 201);
  REQUIRE(Http(base, "POST", "/job/" + id + "/complete").status == 200);
  REQUIRE(
      JobIs(WaitForJob(pmmap, id, [](const rapidjson::Document& j) { return JobIs(j, "done"); }),
            "done"));
  time_t latest = time(nullptr);

  auto calls = hook.calls();
  REQUIRE(calls.size() == 5);
  for (const auto& call : calls) {
    INFO("call " << call.path);
    CheckSignature(call, kSecret, earliest - 1, latest + 1);
    CHECK(HeaderOf(call.headers, "PMMAP-auth") == kSecret);
    CHECK(HeaderOf(call.headers, "PMMAP-job") == id);
  }
  auto attempts = AttemptsByKey(hook);
  CHECK(attempts["a0"] == std::vector<int>{1});
  CHECK(attempts["a1"] == std::vector<int>{1});
  CHECK(attempts["flaky0"] == std::vector<int>{1, 2, 3});

  // Without a secret: neither a signature nor PMMAP-auth.
  std::string plain = CreateJob(pmmap, "{\"url\":\"" + hook.url("/plain") + "\",\"backoff_ms\":5}");
  REQUIRE(Http(base, "PUT", "/job/" + plain + "/input",
               "[{\"key\":\"p0\",\"value\":1},{\"key\":\"flaky1\",\"value\":2}]")
              .status == 201);
  REQUIRE(Http(base, "POST", "/job/" + plain + "/complete").status == 200);
  REQUIRE(
      JobIs(WaitForJob(pmmap, plain, [](const rapidjson::Document& j) { return JobIs(j, "done"); }),
            "done"));
  size_t plain_calls = 0;
  for (const auto& call : hook.calls()) {
    if (!StartsWith(call.path, "/plain/")) continue;
    ++plain_calls;
    INFO("call " << call.path);
    CHECK(call.headers.count("PMMAP-signature") == 0);
    CHECK(call.headers.count("PMMAP-auth") == 0);
    CHECK(HeaderOf(call.headers, "PMMAP-job") == plain);
  }
  CHECK(plain_calls == 4);
  attempts = AttemptsByKey(hook);
  CHECK(attempts["p0"] == std::vector<int>{1});
  CHECK(attempts["flaky1"] == std::vector<int>{1, 2, 3});
}

TEST_CASE("a secret with a line break is refused: it cannot inject headers into webhook calls",
          "[ops]") {
  // The secret goes into the PMMAP-auth header, where a CR or LF would end
  // it and start a header of the caller's choosing.
  Webhook hook;
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  for (const char* secret : {"abc\\r\\nX-Injected: 1", "abc\\nX-Injected: 1", "abc\\rX: 1"}) {
    HttpResult r = Http(base, "POST", "/job",
                        JobBody(hook.url(), "\"secret\":\"" + std::string(secret) + "\""));
    INFO("secret " << secret << ": POST /job -> " << r.status << " " << r.body);
    CHECK(Contains(RequireError(r, 400), "secret"));
  }
  REQUIRE(ParseJson(Http(base, "GET", "/jobs").body).Size() == 0);
  REQUIRE(hook.call_count() == 0);
}

// ===========================================================================
// 6. Completion callback.

TEST_CASE("callback_url must be an http or https URL; without one, callback is null", "[ops]") {
  Webhook hook;
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  for (const char* bad : {"\"ftp://x\"", "\"not a url\"", "\"http://\"", "\"/relative\"", "5"}) {
    std::string body = "{\"url\":\"" + hook.url() + "\",\"callback_url\":" + std::string(bad) + "}";
    INFO("POST /job " << body);
    HttpResult r = Http(base, "POST", "/job", body);
    REQUIRE(r.status == 400);
    CHECK(Contains(RequireError(r, 400), "callback_url"));
  }
  REQUIRE(ParseJson(Http(base, "GET", "/jobs").body).Size() == 0);
  HttpResult created = Http(base, "POST", "/job", "{\"url\":\"" + hook.url() + "\"}");
  REQUIRE(created.status == 201);
  rapidjson::Document doc = ParseJson(created.body);
  REQUIRE(doc.HasMember("callback"));
  REQUIRE(doc["callback"].IsNull());
  std::string id = Text(doc, "id");
  REQUIRE(Http(base, "POST", "/job/" + id + "/complete").status == 200);
  rapidjson::Document job =
      WaitForJob(pmmap, id, [](const rapidjson::Document& j) { return JobIs(j, "done"); });
  REQUIRE(JobIs(job, "done"));
  REQUIRE(job["callback"].IsNull());
  // Both schemes are accepted.
  for (const char* ok : {"http://127.0.0.1:1/cb", "https://127.0.0.1:1/cb"}) {
    HttpResult r = Http(base, "POST", "/job",
                        "{\"url\":\"" + hook.url() + "\",\"callback_url\":\"" + ok + "\"}");
    INFO(ok << " -> " << r.body);
    REQUIRE(r.status == 201);
    rapidjson::Document d = ParseJson(r.body);
    REQUIRE(Text(d["callback"], "url") == ok);
    REQUIRE(Text(d["callback"], "state") == "waiting");
  }
  CHECK(hook.call_count() == 0);
}

TEST_CASE("when a job is done, its final JSON is POSTed, signed, to callback_url", "[ops]") {
  Webhook hook;
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  time_t earliest = time(nullptr);
  std::string id = CreateJob(pmmap, CallbackJob(hook.url(), hook.url("/cb")));
  REQUIRE(Http(base, "PUT", "/job/" + id + "/input", MakeInputs(3)).status == 201);
  REQUIRE(Http(base, "POST", "/job/" + id + "/complete").status == 200);
  rapidjson::Document job = WaitForJob(pmmap, id, CallbackEnded);
  time_t latest = time(nullptr);
  REQUIRE(JobIs(job, "done"));
  const rapidjson::Value& cb = job["callback"];
  REQUIRE(cb.IsObject());
  CHECK(Text(cb, "url") == hook.url("/cb"));
  CHECK(Text(cb, "state") == "succeeded");
  CHECK(U64(cb, "attempts") == 1);
  CHECK(U64(cb, "status") == 200);

  auto callbacks = CallsTo(hook, "/cb");
  REQUIRE(callbacks.size() == 1);
  const Webhook::Call& call = callbacks[0];
  CheckSignature(call, kSecret, earliest - 1, latest + 1);
  CHECK(HeaderOf(call.headers, "PMMAP-auth") == kSecret);
  CHECK(HeaderOf(call.headers, "PMMAP-job") == id);
  CHECK(AttemptOf(call) == 1);
  rapidjson::Document sent = ParseJson(call.body);
  CHECK(Text(sent, "id") == id);
  CHECK(Text(sent, "state") == "done");
  CHECK(U64(sent, "inputs") == 3);
  CHECK(U64(sent, "outputs") == 3);
  CHECK(U64(sent, "succeeded") == 3);
  CHECK(U64(sent, "pending") == 0);
  CHECK(U64(sent, "in_flight") == 0);
  CHECK(sent["done_at"].IsString());
  CHECK_FALSE(Contains(call.body, kSecret));
  // It came after every input's call.
  for (const auto& c : hook.calls()) {
    if (c.path != "/cb") CHECK(c.at <= call.at);
  }
  CHECK(hook.call_count() == 4);
}

TEST_CASE("when a job is cancelled, the callback fires with state cancelled", "[ops]") {
  Gate gate;
  Webhook hook;
  OpenAtExit opener(gate);
  hook.SetHandler([&](const Webhook::Call& call, httplib::Response& res) {
    if (call.path != "/cb") gate.Wait(seconds(20));
    res.set_content("{}", "application/json");
  });
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  std::string id = CreateJob(pmmap, CallbackJob(hook.url(), hook.url("/cb"), ",\"concurrency\":1"));
  REQUIRE(Http(base, "PUT", "/job/" + id + "/input", MakeInputs(2)).status == 201);
  REQUIRE(WaitForCall(hook, "k0"));
  HttpResult cancel = Http(base, "POST", "/job/" + id + "/cancel");
  REQUIRE(cancel.status == 200);
  rapidjson::Document job = WaitForJob(pmmap, id, CallbackEnded);
  REQUIRE(JobIs(job, "cancelled"));
  CHECK(Text(job["callback"], "state") == "succeeded");
  CHECK(U64(job["callback"], "attempts") == 1);
  CHECK(U64(job["callback"], "status") == 200);
  auto callbacks = CallsTo(hook, "/cb");
  REQUIRE(callbacks.size() == 1);
  rapidjson::Document sent = ParseJson(callbacks[0].body);
  CHECK(Text(sent, "id") == id);
  CHECK(Text(sent, "state") == "cancelled");
  CHECK(U64(sent, "inputs") == 2);
  CHECK(U64(sent, "outputs") == 2);
  CHECK(U64(sent, "failed") == 2);
  CheckSignature(callbacks[0], kSecret, time(nullptr) - 10, time(nullptr) + 1);
}

TEST_CASE("a failing callback is retried by the job's policy", "[ops]") {
  Webhook hook;
  std::atomic<int> mode{0};  // 0: 500 twice then 200; 1: always 500; 2: always 400
  hook.SetHandler([&](const Webhook::Call& call, httplib::Response& res) {
    if (StartsWith(call.path, "/cb")) {
      int m = mode.load();
      if (m == 2) {
        res.status = 400;
      } else if (m == 1 || AttemptOf(call) < 3) {
        res.status = 500;
      }
      return;
    }
    res.set_content("{}", "application/json");
  });
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  auto run = [&](const std::string& cb_path, const std::string& extra) {
    std::string id = CreateJob(pmmap, CallbackJob(hook.url(), hook.url(cb_path), extra));
    REQUIRE(Http(base, "PUT", "/job/" + id + "/input", MakeInputs(1)).status == 201);
    REQUIRE(Http(base, "POST", "/job/" + id + "/complete").status == 200);
    rapidjson::Document job = WaitForJob(pmmap, id, CallbackEnded);
    REQUIRE(JobIs(job, "done"));
    return job;
  };

  SECTION("500 twice, then 200: succeeded after 3 attempts") {
    mode = 0;
    rapidjson::Document job = run("/cb1", "");
    const rapidjson::Value& cb = job["callback"];
    CHECK(Text(cb, "state") == "succeeded");
    CHECK(U64(cb, "attempts") == 3);
    CHECK(U64(cb, "status") == 200);
    CHECK_FALSE(cb.HasMember("message"));
    auto callbacks = CallsTo(hook, "/cb1");
    REQUIRE(callbacks.size() == 3);
    for (size_t i = 0; i < callbacks.size(); ++i) {
      CHECK(AttemptOf(callbacks[i]) == static_cast<int>(i) + 1);
      CheckSignature(callbacks[i], kSecret, time(nullptr) - 10, time(nullptr) + 1);
    }
  }
  SECTION("always 500: failed after max_attempts") {
    mode = 1;
    rapidjson::Document job = run("/cb2", ",\"max_attempts\":3");
    const rapidjson::Value& cb = job["callback"];
    CHECK(Text(cb, "state") == "failed");
    CHECK(U64(cb, "attempts") == 3);
    CHECK(U64(cb, "status") == 500);
    CHECK_FALSE(Text(cb, "message").empty());
    CHECK(CallsTo(hook, "/cb2").size() == 3);
    std::string id = Text(job, "id");
    REQUIRE(WaitUntil([&] { return Contains(pmmap.log(), "job " + id + " failure: callback"); },
                      seconds(5)));
  }
  SECTION("400: failed at once, not retried") {
    mode = 2;
    rapidjson::Document job = run("/cb3", ",\"max_attempts\":3");
    const rapidjson::Value& cb = job["callback"];
    CHECK(Text(cb, "state") == "failed");
    CHECK(U64(cb, "attempts") == 1);
    CHECK(U64(cb, "status") == 400);
    CHECK(CallsTo(hook, "/cb3").size() == 1);
  }
}

// ===========================================================================
// 7. Shutdown.

TEST_CASE("SIGTERM answers waiting callers 503, exits 0 and keeps a durable job's files", "[ops]") {
  TempDir data("pmmap-ops-data");
  Gate gate;
  Webhook hook;
  hook.SetHandler([&gate](const Webhook::Call& call, httplib::Response& res) {
    gate.Wait();
    Echo(call, res);
  });
  PmmapProcess pmmap({"--data-dir", data.path()});
  OpenAtExit open_at_exit(gate);
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":1,\"maxsize\":1"));
  std::string idle = CreateJob(pmmap, JobBody(hook.url()));
  std::vector<std::string> files = ListDir(data.path());
  const std::set<std::string> job_files = {id + ".job",   id + ".journal",   id + ".ndjson",
                                           idle + ".job", idle + ".journal", idle + ".ndjson"};
  REQUIRE(std::set<std::string>(files.begin(), files.end()) == job_files);

  // A PUT of 50 inputs blocks: one call held in flight, one input queued,
  // the queue full.
  RawConn put(pmmap.port());
  put.SendRequest("PUT", "/job/" + id + "/input", MakeInputs(50));
  rapidjson::Document job = WaitForJob(pmmap, id, [](const rapidjson::Document& j) {
    return j["inputs"].GetUint64() == 2 && j["in_flight"].GetUint64() == 1;
  });
  REQUIRE(U64(job, "inputs") == 2);
  // GETs of the outputs wait for their jobs to end, the busy one's and the
  // idle one's; wait until pmmap has read them.
  RawConn get(pmmap.port());
  get.SendRequest("GET", "/job/" + id + "/output", "", false);
  RawConn get_idle(pmmap.port());
  get_idle.SendRequest("GET", "/job/" + idle + "/output", "", false);
  for (const RawConn* conn : {&get, &get_idle}) {
    const int client_port = conn->local_port();
    REQUIRE(WaitUntil([&] { return ServerHasRead(pmmap.port(), client_port); }, seconds(10)));
  }
  REQUIRE_FALSE(put.Readable());
  REQUIRE_FALSE(get.Readable());
  REQUIRE_FALSE(get_idle.Readable());

  // Stopped while a webhook call is held: the waiting callers are answered
  // at once, before that call ends.
  auto signalled = SteadyClock::now();
  REQUIRE(kill(pmmap.pid(), SIGTERM) == 0);
  HttpResult put_reply = put.Read(seconds(10));
  double put_seconds = SecondsSince(signalled);
  HttpResult get_reply = get.Read(seconds(10));
  HttpResult idle_reply = get_idle.Read(seconds(10));
  double get_seconds = SecondsSince(signalled);
  put.Close();
  get.Close();
  get_idle.Close();
  INFO("PUT answered after " << put_seconds << " s, GETs after " << get_seconds << " s");
  REQUIRE(StartsWith(HeaderOf(put_reply.headers, "Content-Type"), "application/json"));
  RequireError(put_reply, 503);
  RequireError(get_reply, 503);
  RequireError(idle_reply, 503);
  CHECK(put_seconds < 3);
  CHECK(get_seconds < 3);
  gate.Open();  // the held call may end: nothing is left to wait for

  int code = pmmap.Stop(0, seconds(15));  // signal 0: only wait
  double exit_seconds = SecondsSince(signalled);
  INFO("exited after " << exit_seconds << " s; log:\n" << pmmap.log());
  REQUIRE(code == 0);
  CHECK(exit_seconds < 8);  // the 5 s grace period, and slack
  // --data-dir is durable: the job files stay, for the next start.
  files = ListDir(data.path());
  CHECK(std::set<std::string>(files.begin(), files.end()) == job_files);
  std::string log = pmmap.log();
  CHECK(Contains(log, "stopping on"));
  CHECK(Contains(log, "pmmap: stopped"));
  CHECK_FALSE(Contains(log, "aborting"));
}

TEST_CASE("SIGTERM is not held up by a caller that stopped reading its output", "[ops]") {
  TempDir data("pmmap-ops-data");  // still removed if pmmap has to be killed
  // 128 replies of 128 KiB: a 16 MiB output, more than the kernel buffers
  // between pmmap and a reader that never reads.
  const std::string reply = "\"" + std::string(128 * 1024, 'x') + "\"";
  Webhook hook;
  hook.SetHandler([&reply](const Webhook::Call&, httplib::Response& res) {
    res.set_content(reply, "application/json");
  });
  PmmapProcess pmmap({"--data-dir", data.path()});
  const std::string base = pmmap.base_url();
  std::string id = CreateJob(pmmap, "{\"url\":\"" + hook.url() + "\",\"concurrency\":8}");
  REQUIRE(Http(base, "PUT", "/job/" + id + "/input", MakeInputs(128)).status == 201);
  REQUIRE(Http(base, "POST", "/job/" + id + "/complete").status == 200);
  REQUIRE(
      JobIs(WaitForJob(pmmap, id, [](const rapidjson::Document& j) { return JobIs(j, "done"); }),
            "done"));
  // A caller asks for the output and never reads it: pmmap's writes back up.
  RawConn reader(pmmap.port(), 4096);
  reader.SendRequest("GET", "/job/" + id + "/output", "", false);
  const int reader_port = reader.local_port();
  // Wait until pmmap is stuck in a write: its send queue holds data and has
  // not moved for a quarter of a second (it cannot move again: nobody reads).
  unsigned long last_tx = 0;
  int still = 0;
  REQUIRE(WaitUntil(
      [&] {
        TcpEntry e = ServerSide(pmmap.port(), reader_port);
        still = e.found && e.rx == 0 && e.tx > 0 && e.tx == last_tx ? still + 1 : 0;
        last_tx = e.tx;
        return still >= 25;  // 25 polls, 10 ms apart
      },
      seconds(20)));
  auto signalled = SteadyClock::now();
  int code = pmmap.Stop(SIGTERM, seconds(10));  // -1: it had to be killed
  double exit_seconds = SecondsSince(signalled);
  INFO("exit code " << code << " after " << exit_seconds << " s; log:\n" << pmmap.log());
  CHECK(code == 0);
  CHECK(exit_seconds < 10);  // the 5 s grace period, and slack
}

TEST_CASE("SIGINT stops the server like SIGTERM", "[ops]") {
  TempDir data("pmmap-ops-data");
  Webhook hook;
  PmmapProcess pmmap({"--data-dir", data.path()});
  std::string id = CreateJob(pmmap, JobBody(hook.url()));
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(3)).status == 201);
  WaitForJob(pmmap, id, [](const rapidjson::Document& d) { return d["outputs"].GetUint64() == 3; });
  // The job is open: a GET of its output waits.
  RawConn get(pmmap.port());
  get.SendRequest("GET", "/job/" + id + "/output", "", false);
  const int get_port = get.local_port();
  REQUIRE(WaitUntil([&] { return ServerHasRead(pmmap.port(), get_port); }, seconds(10)));
  REQUIRE_FALSE(get.Readable());
  REQUIRE(ListDir(data.path()).size() == 3);
  REQUIRE(pmmap.Stop(SIGINT) == 0);
  RequireError(get.Read(seconds(5)), 503);
  CHECK(Contains(pmmap.log(), "stopping on Interrupt"));
  CHECK(ListDir(data.path()).size() == 3);  // durable: kept for the next start
}

TEST_CASE("a data dir pmmap cannot write is refused at start: exit 1, naming the dir and why",
          "[ops]") {
  TempDir tmp("pmmap-ops-unwritable");
  // An existing regular file: mkdir finds it there, and nothing can be made
  // in it, for root too.
  const std::string file = tmp.File("a-file");
  std::ofstream(file) << "not a directory\n";
  std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--data-dir", file};
  RunResult not_dir = RunBinary(args, {}, seconds(10));
  INFO("stdout: " << not_dir.out << " stderr: " << not_dir.err);
  CHECK(not_dir.exit_code == 1);
  CHECK(Contains(not_dir.err, "pmmap: cannot write to " + file + ": Not a directory"));
  CHECK(not_dir.out.empty());

  // A directory of mode 0500, as a volume another user owns looks to pmmap.
  // Root ignores mode bits, so a root test runs pmmap as nobody (uid 65534),
  // given the dir and a way through its parent.
  const int kNobody = 65534;
  const bool root = geteuid() == 0;
  const int uid = root ? kNobody : static_cast<int>(geteuid());
  const std::string dir = tmp.File("read-only");
  REQUIRE(mkdir(dir.c_str(), 0500) == 0);
  if (root) {
    REQUIRE(chown(dir.c_str(), kNobody, kNobody) == 0);
    REQUIRE(chmod(tmp.path().c_str(), 0711) == 0);
  }
  args.back() = dir;
  RunResult denied = RunBinary(args, {}, seconds(10), root ? kNobody : kSameUid);
  INFO("stdout: " << denied.out << " stderr: " << denied.err);
  CHECK(denied.exit_code == 1);
  CHECK(Contains(denied.err, "pmmap: cannot write to " + dir + ": Permission denied"));
  CHECK(Contains(denied.err, "writable by uid " + std::to_string(uid)));
  CHECK(denied.out.empty());
  CHECK(ListDir(dir).empty());
}

TEST_CASE("without --data-dir, the data dir made under TMPDIR is removed on SIGTERM", "[ops]") {
  TempDir tmp("pmmap-ops-tmpdir");
  Webhook hook;
  PmmapProcess pmmap({}, {{"TMPDIR", tmp.path()}});
  const std::string base = pmmap.base_url();
  std::string id = CreateJob(pmmap, "{\"url\":\"" + hook.url() + "\"}");
  REQUIRE(Http(base, "PUT", "/job/" + id + "/input", MakeInputs(3)).status == 201);
  std::vector<std::string> dirs = ListDir(tmp.path());
  REQUIRE(dirs.size() == 1);
  REQUIRE(StartsWith(dirs[0], "pmmap."));
  const std::string data_dir = tmp.path() + "/" + dirs[0];
  CHECK(Contains(pmmap.log(), "with data in " + data_dir));
  CHECK(ListDir(data_dir) == std::vector<std::string>{id + ".ndjson"});
  REQUIRE(pmmap.Stop(SIGTERM, seconds(20)) == 0);
  INFO("log:\n" << pmmap.log());
  CHECK(ListDir(tmp.path()).empty());
}

TEST_CASE("SIGTERM waits the grace period for calls in flight, then aborts them and exits 0",
          "[ops]") {
  TempDir data("pmmap-ops-data");
  Gate gate;
  Webhook hook;
  OpenAtExit opener(gate);
  hook.SetHandler([&](const Webhook::Call&, httplib::Response& res) {
    gate.Wait(seconds(30));
    res.set_content("{}", "application/json");
  });
  PmmapProcess pmmap({"--data-dir", data.path()});
  std::string id = CreateJob(pmmap, "{\"url\":\"" + hook.url() + "\"}");
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(1)).status == 201);
  REQUIRE(WaitForCall(hook, "k0"));
  auto signalled = SteadyClock::now();
  int code = pmmap.Stop(SIGTERM, seconds(20));
  double seconds_taken = SecondsSince(signalled);
  INFO("exited after " << seconds_taken << " s; log:\n" << pmmap.log());
  REQUIRE(code == 0);
  CHECK(seconds_taken >= 4.5);
  CHECK(seconds_taken < 10);
  CHECK(Contains(pmmap.log(), "aborting webhook calls still in flight"));
  CHECK(ListDir(data.path()).size() == 3);  // durable: kept for the next start
}

TEST_CASE("a second SIGTERM during the grace period exits 1 at once", "[ops]") {
  TempDir data("pmmap-ops-data");
  Gate gate;
  Webhook hook;
  OpenAtExit opener(gate);
  hook.SetHandler([&](const Webhook::Call&, httplib::Response& res) {
    gate.Wait(seconds(30));
    res.set_content("{}", "application/json");
  });
  PmmapProcess pmmap({"--data-dir", data.path()});
  std::string id = CreateJob(pmmap, "{\"url\":\"" + hook.url() + "\"}");
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(1)).status == 201);
  REQUIRE(WaitForCall(hook, "k0"));
  REQUIRE(kill(pmmap.pid(), SIGTERM) == 0);
  // Once the first signal is taken (logged), a second one is not merged with it.
  REQUIRE(WaitUntil([&] { return Contains(pmmap.log(), "stopping on"); }, seconds(10)));
  auto second = SteadyClock::now();
  int code = pmmap.Stop(SIGTERM, seconds(20));
  double seconds_taken = SecondsSince(second);
  INFO("exited after " << seconds_taken << " s; log:\n" << pmmap.log());
  REQUIRE(code == 1);
  CHECK(seconds_taken < 3);  // well inside the 5 s grace period
  CHECK_FALSE(Contains(pmmap.log(), "aborting"));
}

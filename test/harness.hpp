// Test harness: starts the real pmmap binary and a real HTTP webhook on
// loopback, and talks to both over HTTP. Everything started is stopped by a
// destructor; every wait is bounded.

#ifndef PMMAP_TEST_HARNESS_HPP_
#define PMMAP_TEST_HARNESS_HPP_

#include <httplib.h>
#include <rapidjson/document.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// Polls pred every `every` until it holds or timeout passes; returns
// whether it held. Every wait in the tests is bounded this way.
inline bool WaitUntil(const std::function<bool()>& pred,
                      std::chrono::milliseconds timeout = std::chrono::seconds(10),
                      std::chrono::milliseconds every = std::chrono::milliseconds(5)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return pred();
    std::this_thread::sleep_for(every);
  }
  return true;
}

// A latch that webhook handlers wait on, for a bounded time, until the test
// opens it: how a test holds webhook calls in flight.
class Gate {
 public:
  void Open() {
    std::lock_guard<std::mutex> lock(mutex_);
    open_ = true;
    cv_.notify_all();
  }
  // Blocks until Open or until limit passes; returns whether it was opened.
  bool Wait(std::chrono::milliseconds limit = std::chrono::seconds(15)) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, limit, [this] { return open_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool open_ = false;
};

// Opens a gate when it goes out of scope, so that a failed assertion never
// leaves handlers waiting. Declared after the Webhook and the PmmapProcess,
// it runs first, so that held calls end before those stop.
class OpenAtExit {
 public:
  explicit OpenAtExit(Gate& gate) : gate_(gate) {}
  ~OpenAtExit() { gate_.Open(); }

 private:
  Gate& gate_;
};

// The pmmap binary under test, running on a free loopback port with its
// stderr kept in a file. The binary is $PMMAP_BIN, or ./pmmap.
class PmmapProcess {
 public:
  explicit PmmapProcess(std::vector<std::string> extra_args = {});
  ~PmmapProcess();
  PmmapProcess(const PmmapProcess&) = delete;
  PmmapProcess& operator=(const PmmapProcess&) = delete;

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  // What the server wrote to stderr so far.
  std::string log() const;
  // Sends sig and waits (at most timeout) for the process to exit. Returns
  // its exit status, or -1 if it had to be killed.
  int Stop(int sig = SIGTERM, std::chrono::milliseconds timeout = std::chrono::seconds(20));

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string log_path_;
};

struct HttpResult {
  int status = 0;  // 0: no reply (connection error or timeout)
  std::string body;
  httplib::Headers headers;
};

// One HTTP request with bounded timeouts (30 s unless given).
HttpResult Http(const std::string& base_url, const std::string& method, const std::string& path,
                const std::string& body = "", const httplib::Headers& headers = {},
                std::chrono::seconds timeout = std::chrono::seconds(30));

// Parses JSON or fails the current test.
rapidjson::Document ParseJson(const std::string& text);

// Creates a job from the given JSON body and returns its id, or fails the test.
std::string CreateJob(const PmmapProcess& pmmap, const std::string& body);

// A JSON array of n inputs: keys prefix0..prefix{n-1}, values {"i": i}.
std::string MakeInputs(int n, const std::string& prefix = "k");

// Reads GET /job/{id} and returns it parsed.
rapidjson::Document GetJob(const PmmapProcess& pmmap, const std::string& id);

// Polls GET /job/{id} until pred holds or timeout passes; returns the last read.
rapidjson::Document WaitForJob(const PmmapProcess& pmmap, const std::string& id,
                               const std::function<bool(const rapidjson::Document&)>& pred,
                               std::chrono::milliseconds timeout = std::chrono::seconds(20));

// Parses NDJSON output into one document per line.
std::vector<rapidjson::Document> ParseLines(const std::string& ndjson);

// A webhook server on 127.0.0.1 running in its own threads. By default it
// answers 200 with {"key": <the decoded last path segment>, "value": <the
// body as sent>}; set a handler to answer otherwise. It records every call.
class Webhook {
 public:
  struct Call {
    std::string path;
    std::string key;  // the last path segment, percent-decoded
    std::string body;
    httplib::Headers headers;
    std::chrono::steady_clock::time_point at;
  };
  using Handler = std::function<void(const Call& call, httplib::Response& res)>;

  Webhook();
  ~Webhook();
  Webhook(const Webhook&) = delete;
  Webhook& operator=(const Webhook&) = delete;

  // Replaces the handler; thread-safe.
  void SetHandler(Handler handler);
  std::string url(const std::string& path = "/hook") const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  int port() const { return port_; }
  std::vector<Call> calls();
  size_t call_count();
  int peak_in_flight() const { return peak_.load(); }
  int in_flight() const { return in_flight_.load(); }
  void Stop();

 private:
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  std::mutex mutex_;
  Handler handler_;
  std::vector<Call> calls_;
  std::atomic<int> in_flight_{0};
  std::atomic<int> peak_{0};
};

#endif  // PMMAP_TEST_HARNESS_HPP_

// Test harness: starts the real pmmap binary and a real HTTP webhook on
// loopback, and talks to both over HTTP. Everything started is stopped by a
// destructor; every wait is bounded. Every helper more than one test file
// uses is here, once; a test file keeps only what it alone needs.
// Assertions (REQUIRE, FAIL) run on the calling thread, so call these from
// the test's own thread, except where a comment says a handler may.

#ifndef PMMAP_TEST_HARNESS_HPP_
#define PMMAP_TEST_HARNESS_HPP_

#include <httplib.h>
#include <rapidjson/document.h>
#include <signal.h>
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

// ---------------------------------------------------------------------------
// Files and directories.

// The whole content of the file at path, or "" if it cannot be read.
std::string ReadFile(const std::string& path);

// The names in directory path, without "." and ".."; fails the test if it
// cannot be opened.
std::vector<std::string> ListDir(const std::string& path);

bool IsDirectory(const std::string& path);

// Removes a file, or a directory with everything in it.
void RemoveTree(const std::string& path);

// A fresh directory under $TMPDIR (or /tmp) named prefix.XXXXXX, removed
// with everything in it when the object goes.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "pmmap-test");
  ~TempDir() { RemoveTree(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// ---------------------------------------------------------------------------
// Processes.

// The binary under test: $PMMAP_BIN, or ./pmmap.
std::string PmmapBinary();

// Run a child as the test's own user (Spawn's run_as_uid).
constexpr int kSameUid = -1;

// Forks and execs args[0] with args, the test's environment plus env (which
// overrides it), stdin from /dev/null, stdout and stderr on out_fd and
// err_fd, and no signal blocked or ignored. Unless run_as_uid is kSameUid,
// the child drops to that uid (and the gid of the same number) first, which
// needs root: how a test running as root sees what a file's mode bits deny.
// Returns the child's pid; a child that cannot drop exits 126.
pid_t Spawn(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
            int out_fd, int err_fd, int run_as_uid = kSameUid);

// Waits at most timeout for pid to exit; returns its exit code (128+signal
// if a signal ended it), or -1 if it had to be killed at the deadline.
int WaitExit(pid_t pid, std::chrono::milliseconds timeout);

// The pmmap binary under test, running on a free loopback port with its
// stderr kept in a file: PmmapBinary() with --listen, then extra_args, in
// the test's environment plus env. A sanitizer report in its log fails the
// test when the object goes.
class PmmapProcess {
 public:
  explicit PmmapProcess(const std::vector<std::string>& extra_args = {},
                        const std::map<std::string, std::string>& env = {});
  ~PmmapProcess();
  PmmapProcess(const PmmapProcess&) = delete;
  PmmapProcess& operator=(const PmmapProcess&) = delete;

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  // What the server wrote to stderr so far.
  std::string log() const;
  // Sends sig (0: none, only wait) and waits at most timeout for the
  // process to exit. Returns its exit code, or -1 if it had to be killed.
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

// The value of the first header called name (any case), or "".
std::string HeaderOf(const httplib::Headers& headers, const std::string& name);

// How many headers are called name (any case).
size_t HeaderCount(const httplib::Headers& headers, const std::string& name);

// Asserts an error reply: the status, and a JSON object whose "error" is a
// non-empty string, which it returns.
std::string RequireError(const HttpResult& r, int status);

// ---------------------------------------------------------------------------
// JSON.

// Parses JSON or fails the current test.
rapidjson::Document ParseJson(const std::string& text);

// v as compact JSON text.
std::string Json(const rapidjson::Value& v);

// s as a JSON string literal.
std::string Quote(const std::string& s);

// The member name of object v, which must be an unsigned integer (U64) or
// a string (Text); either fails the test otherwise.
uint64_t U64(const rapidjson::Value& v, const char* name);
std::string Text(const rapidjson::Value& v, const char* name);

// ---------------------------------------------------------------------------
// Jobs.

// A POST /job body for url; fields, if any, are more members ("a":1,"b":2).
std::string JobBody(const std::string& url, const std::string& fields = "");

// Creates a job from the given JSON body and returns its id, or fails the test.
std::string CreateJob(const PmmapProcess& pmmap, const std::string& body);

// A JSON array of n inputs: keys prefix0..prefix{n-1}, values {"i": i}.
std::string MakeInputs(int n, const std::string& prefix = "k");

// Reads GET /job/{id} and returns it parsed.
rapidjson::Document GetJob(const PmmapProcess& pmmap, const std::string& id);

// Polls GET /job/{id} until pred holds and returns that read; fails the
// test if pred does not hold within timeout.
rapidjson::Document WaitForJob(const PmmapProcess& pmmap, const std::string& id,
                               const std::function<bool(const rapidjson::Document&)>& pred,
                               std::chrono::milliseconds timeout = std::chrono::seconds(20));

// Parses NDJSON output into one document per line.
std::vector<rapidjson::Document> ParseLines(const std::string& ndjson);

// ---------------------------------------------------------------------------
// Sockets.

// A loopback port that refuses connections: bound, so that nothing else
// takes it while the object lives, but never listening.
class RefusingPort {
 public:
  RefusingPort();
  ~RefusingPort();
  RefusingPort(const RefusingPort&) = delete;
  RefusingPort& operator=(const RefusingPort&) = delete;

  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/hook"; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// One IPv4 TCP socket as /proc/net/tcp shows it.
struct TcpSocket {
  std::string local;   // address:port in hex, as the kernel writes it
  std::string remote;  // ditto; "0100007F:1F90" is 127.0.0.1:8080
  int local_port = 0;
  int remote_port = 0;
  std::string state;  // "01": ESTABLISHED
  unsigned long tx_queue = 0;
  unsigned long rx_queue = 0;
  std::string inode;  // "0" until a server has accepted the connection
};

// Every IPv4 TCP socket of the machine, from /proc/net/tcp.
std::vector<TcpSocket> TcpSockets();

// "127.0.0.1:port" as /proc/net/tcp writes it.
std::string LoopbackAddress(int port);

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

  // Listens on port, or on a free one if 0: a test that stops a webhook
  // and starts another on its port plays an outage.
  explicit Webhook(int port = 0);
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

// Answers as the webhook does by default: 200 with {"key": <the key>,
// "value": <the body as sent>}. For handlers that hold a call, then echo.
void Echo(const Webhook::Call& call, httplib::Response& res);

// The PMMAP-attempt header of a webhook call, or 0 if it has none (attempts
// count from 1). Throws nothing, so handlers may call it.
int AttemptOf(const Webhook::Call& call);

#endif  // PMMAP_TEST_HARNESS_HPP_

// The soak test of pmmap: a few minutes of faults against a running server.
// Built and run by `make soak` (SOAK_SECONDS, default 120); not part of CI.
//
//   build/soak --pmmap ./pmmap [--seconds 120] [--clients 6] [--seed N] [--keep]
//
// It starts the pmmap binary on a fresh data directory and, in this process,
// a webhook on 127.0.0.1 that injects a fault at random into each call
// (500/503, 429 with Retry-After, a hang past the job's timeout, a reply cut
// mid-way, a slow reply, garbage bytes) and that is stopped and restarted on
// the same port half-way through. Client threads create jobs, fill them with
// batches of inputs, and complete, cancel or delete them, all in parallel,
// while a prober times GET /healthz every 50 ms and a sampler watches the
// server's memory and file descriptors. At the end it checks every output
// entry of every job it kept, the data directory, the server's memory, file
// descriptors and exit, prints what it found, and exits 0 only if every check
// passed. Every HTTP call has timeouts, every loop a bound, and a watchdog
// kills everything at a hard deadline.

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <httplib.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

// The settings of every job: small, so that a failing input ends quickly.
constexpr int kTimeoutMs = 300;
constexpr int kBackoffMs = 10;
constexpr int kMaxBackoffMs = 200;
constexpr int kMaxAttempts = 4;
// A rough cost of one input per worker under the fault mix below; jobs are
// sized with it so that they can end within a quarter of the run.
constexpr int kEstimatedMsPerInput = 40;
// The limits checked at the end.
constexpr double kHealthzLimitMs = 100;
constexpr long kRssSlackKb = 64 * 1024;
constexpr int kFdSlack = 10;
// The secret of the jobs that have one; the webhook checks their signatures.
const char kSecret[] = "soak-s3cret";
// The webhook's path; the key follows it.
const char kHookPrefix[] = "/hook/";

struct Options {
  std::string pmmap = "./pmmap";
  int seconds = 120;
  int clients = 6;
  uint64_t seed = 0;
  bool keep = false;
};
Options g_opt;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// ---------------------------------------------------------------------------
// Problems found, by category, with a few examples each.

class Problems {
 public:
  void Add(const std::string& category, const std::string& detail) {
    std::lock_guard<std::mutex> lock(mutex_);
    Category& c = categories_[category];
    ++c.count;
    if (c.examples.size() < 5)
      c.examples.push_back(detail.size() > 700 ? detail.substr(0, 700) + "..." : detail);
  }
  uint64_t Count(const std::string& category) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = categories_.find(category);
    return it == categories_.end() ? 0 : it->second.count;
  }
  uint64_t Total() {
    std::lock_guard<std::mutex> lock(mutex_);
    uint64_t n = 0;
    for (auto& c : categories_) n += c.second.count;
    return n;
  }
  void Print() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& c : categories_) {
      printf("  [%s] %" PRIu64 " problem(s); for example:\n", c.first.c_str(), c.second.count);
      for (auto& e : c.second.examples) printf("      - %s\n", e.c_str());
    }
  }

 private:
  struct Category {
    uint64_t count = 0;
    std::vector<std::string> examples;
  };
  std::mutex mutex_;
  std::map<std::string, Category> categories_;
};
Problems g_problems;

// ---------------------------------------------------------------------------
// Figures for the summary.

struct Stats {
  std::atomic<uint64_t> jobs_created{0}, jobs_done{0}, jobs_cancelled{0},
      jobs_cancelled_at_deadline{0}, jobs_deleted{0}, jobs_create_refused{0};
  std::atomic<uint64_t> inputs_accepted{0}, inputs_in_checked_jobs{0}, outputs_checked{0},
      successes{0}, successes_garbage{0}, failures{0}, cancelled_entries{0};
  std::atomic<uint64_t> puts{0}, puts_cut_by_cancel{0}, puts_refused_after_cancel{0},
      puts_404_after_delete{0};
  std::atomic<uint64_t> paged_reads{0}, waiting_readers{0};
  std::atomic<uint64_t> webhook_restarts{0};
};
Stats g_stats;

// ---------------------------------------------------------------------------
// Small helpers.

std::string JsonString(const std::string& s) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
  return std::string(buf.GetString(), buf.GetSize());
}

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// The webhook's successful reply to key, given the body it received: a pure
// function of both, so that the client can tell what each entry must hold.
std::string GoodReply(const std::string& key, const std::string& body) {
  return "{\"k\":" + JsonString(key) + ",\"echo\":" + body +
         ",\"n\":" + std::to_string(Fnv1a(key) % 1000000007) + "}";
}
// The garbage the webhook may answer 200 with: not JSON, and with one byte
// that is not UTF-8.
std::string GarbageReply(const std::string& key) {
  return "<html>garbage for " + key + " \xff\x01 not json";
}
// What pmmap keeps of it: a JSON string, the bad byte replaced by U+FFFD.
std::string GarbageKept(const std::string& key) {
  return "<html>garbage for " + key + " \xEF\xBF\xBD\x01 not json";
}

bool PercentDecode(const std::string& s, std::string* out) {
  out->clear();
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out->push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size() || !isxdigit(static_cast<unsigned char>(s[i + 1])) ||
        !isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      return false;
    }
    out->push_back(static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16)));
    i += 2;
  }
  return true;
}

std::string HexHmacSha256(const std::string& secret, const std::string& message) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), digest, &len);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0xF]);
  }
  return out;
}

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (struct dirent* e = readdir(d)) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) names.push_back(e->d_name);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

int RemoveEntry(const char* path, const struct stat*, int, struct FTW*) { return remove(path); }
void RemoveTree(const std::string& dir) {
  if (!dir.empty()) nftw(dir.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
}

// The server's resident memory, threads and open descriptors.
struct Resources {
  long rss_kb = -1;
  long threads = -1;
  long fds = -1;
};

// CPU time (user + system) used so far by a process, in clock ticks.
long CpuTicks(const std::string& pid) {
  std::string stat = ReadWholeFile("/proc/" + pid + "/stat");
  size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream in(stat.substr(paren + 2));
  std::string field;
  long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {  // fields 14 and 15: utime, stime
    if (i == 14) utime = atol(field.c_str());
    if (i == 15) stime = atol(field.c_str());
  }
  return utime + stime;
}

// CPU time used by the whole machine so far (every core, idle and iowait
// excluded), in clock ticks.
long MachineBusyTicks() {
  std::istringstream in(ReadWholeFile("/proc/stat"));
  std::string cpu;
  long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  return cpu == "cpu" ? user + nice + system + irq + softirq + steal : -1;
}
Resources ReadResources(pid_t pid) {
  Resources r;
  std::string status = ReadWholeFile("/proc/" + std::to_string(pid) + "/status");
  auto field = [&](const char* name) -> long {
    size_t at = status.find(name);
    return at == std::string::npos ? -1 : strtol(status.c_str() + at + strlen(name), nullptr, 10);
  };
  r.rss_kb = field("VmRSS:");
  r.threads = field("Threads:");
  std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
  if (DIR* d = opendir(fd_dir.c_str())) {
    r.fds = 0;
    while (struct dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') ++r.fds;
    }
    closedir(d);
  }
  return r;
}

// ---------------------------------------------------------------------------
// The API client: one fresh connection per call, every timeout bounded.

int g_api_port = 0;

struct Reply {
  int status = 0;  // 0: no reply
  std::string body;
  std::string error;
  double ms = 0;  // how long it took
};

Reply Api(const std::string& method, const std::string& path, const std::string& body = "",
          double read_timeout_s = 10) {
  httplib::Client client("127.0.0.1", g_api_port);
  client.set_keep_alive(false);
  client.set_connection_timeout(2, 0);
  read_timeout_s = std::max(0.2, read_timeout_s);
  time_t sec = static_cast<time_t>(read_timeout_s);
  client.set_read_timeout(sec,
                          static_cast<time_t>((read_timeout_s - static_cast<double>(sec)) * 1e6));
  client.set_write_timeout(10, 0);
  auto send = [&]() -> httplib::Result {
    if (method == "POST") return client.Post(path.c_str(), body, "application/json");
    if (method == "PUT") return client.Put(path.c_str(), body, "application/json");
    if (method == "DELETE") return client.Delete(path.c_str());
    return client.Get(path.c_str());
  };
  Clock::time_point start = Clock::now();
  httplib::Result r = send();
  Reply out;
  out.ms = MsBetween(start, Clock::now());
  if (r) {
    out.status = r->status;
    out.body = r->body;
  } else {
    out.error = httplib::to_string(r.error());
  }
  return out;
}

std::string Describe(const std::string& what, const Reply& r) {
  std::string body = r.body.size() > 300 ? r.body.substr(0, 300) + "..." : r.body;
  while (!body.empty() && body.back() == '\n') body.pop_back();
  char took[64];
  snprintf(took, sizeof(took), " after %.0f ms", r.ms);
  return what + " -> " +
         (r.status == 0 ? "no reply (" + r.error + ")" : std::to_string(r.status) + " " + body) +
         took;
}

// ---------------------------------------------------------------------------
// The fault-injecting webhook.

enum Fault { kOk, kSlow, kGarbage, k5xx, k429, kHang, kCutChunked, kCutLength, kFaultCount };
struct FaultSpec {
  const char* name;
  int percent;
};
const FaultSpec kFaults[kFaultCount] = {
    {"200 at once", 62},
    {"200 slowly (50-150 ms)", 8},
    {"200 with garbage", 6},
    {"500 or 503", 7},
    {"429 Retry-After 0|1", 5},
    {"hang 500 ms (> timeout)", 4},
    {"cut mid-reply (chunked)", 4},
    {"cut mid-reply (length)", 4},
};

class FaultyWebhook {
 public:
  ~FaultyWebhook() { Stop(); }

  // Starts serving on 127.0.0.1:port (0: any free port). Returns the port, or -1.
  int Start(int port) {
    auto server = std::make_unique<httplib::Server>();
    server->new_task_queue = [] { return new httplib::ThreadPool(256); };
    // SO_REUSEADDR, so that the port can be bound again at once after a
    // stop; and the listening socket is kept to raise cpp-httplib's backlog
    // of 5, which would drop bursts of connections from pmmap's workers.
    int listen_fd = -1;
    server->set_socket_options([&listen_fd](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
      listen_fd = sock;
    });
    // A short idle time, so that stop() does not wait long for idle connections.
    server->set_keep_alive_timeout(1);
    server->set_keep_alive_max_count(1000);
    server->set_read_timeout(5, 0);
    server->set_write_timeout(5, 0);
    server->Post(".*",
                 [this](const httplib::Request& req, httplib::Response& res) { Handle(req, res); });
    int bound = port == 0 ? server->bind_to_any_port("127.0.0.1")
                          : (server->bind_to_port("127.0.0.1", port) ? port : -1);
    if (bound <= 0) return -1;
    if (listen_fd >= 0) listen(listen_fd, SOMAXCONN);
    httplib::Server* raw = server.get();
    server_ = std::move(server);
    thread_ = std::thread([raw] { raw->listen_after_bind(); });
    for (int i = 0; i < 1000 && !raw->is_running(); ++i) std::this_thread::sleep_for(Ms(2));
    return bound;
  }

  void Stop() {
    if (!server_) return;
    server_->stop();
    if (thread_.joinable()) thread_.join();
    server_.reset();
  }

  uint64_t calls(int fault) const { return calls_[fault].load(); }
  uint64_t total_calls() const {
    uint64_t n = 0;
    for (const auto& c : calls_) n += c.load();
    return n;
  }
  std::atomic<uint64_t> bad_requests{0};

 private:
  void Bad(const std::string& what) {
    ++bad_requests;
    g_problems.Add("webhook: bad request from pmmap", what);
  }

  // Checks the call against pmmap's contract, then answers it with a fault
  // drawn at random.
  void Handle(const httplib::Request& req, httplib::Response& res) {
    thread_local std::mt19937_64 rng(std::random_device{}() ^
                                     std::hash<std::thread::id>()(std::this_thread::get_id()));
    std::string key;
    std::string target = req.target.substr(0, req.target.find('?'));
    if (target.compare(0, strlen(kHookPrefix), kHookPrefix) != 0 ||
        !PercentDecode(target.substr(strlen(kHookPrefix)), &key) || key.empty()) {
      Bad("target " + req.target);
      res.status = 400;
      return;
    }
    CheckHeaders(req, key);
    rapidjson::Document body;
    body.Parse(req.body.c_str(), req.body.size());
    if (body.HasParseError()) Bad("body of " + key + " is not JSON: " + req.body.substr(0, 200));
    const Fault fault = PickFault(rng);
    ++calls_[fault];
    Answer(fault, key, req.body, rng, &res);
  }

  // The headers of the contract, and the signature when there is a secret.
  void CheckHeaders(const httplib::Request& req, const std::string& key) {
    std::string auth = req.get_header_value("PMMAP-auth");
    int attempt = atoi(req.get_header_value("PMMAP-attempt").c_str());
    if (req.get_header_value("PMMAP-job").size() != 16 || attempt < 1 || attempt > kMaxAttempts ||
        (!auth.empty() && auth != kSecret)) {
      Bad("headers of " + key + ": job=" + req.get_header_value("PMMAP-job") +
          " attempt=" + req.get_header_value("PMMAP-attempt") + " auth=" + auth);
    }
    if (auth.empty()) return;
    std::string sig = req.get_header_value("PMMAP-signature");
    size_t comma = sig.find(",v1=");
    bool good = sig.compare(0, 2, "t=") == 0 && comma != std::string::npos;
    if (good) {
      std::string t = sig.substr(2, comma - 2);
      good = HexHmacSha256(auth, t + "." + req.body) == sig.substr(comma + 4) &&
             std::llabs(atoll(t.c_str()) - static_cast<long long>(time(nullptr))) <= 300;
    }
    if (!good) Bad("signature of " + key + ": " + sig);
  }

  // One of kFaults, each with its percent's chance.
  static Fault PickFault(std::mt19937_64& rng) {
    int pick = static_cast<int>(rng() % 100);
    int fault = 0;
    while (fault < kFaultCount - 1 && pick >= kFaults[fault].percent)
      pick -= kFaults[fault++].percent;
    return static_cast<Fault>(fault);
  }

  // Answers the call to key, whose body was body, as fault says.
  static void Answer(Fault fault, const std::string& key, const std::string& body,
                     std::mt19937_64& rng, httplib::Response* res) {
    std::string reply = GoodReply(key, body);
    switch (fault) {
      case kOk:
        res->set_content(reply, "application/json");
        break;
      case kSlow:
        std::this_thread::sleep_for(Ms(50 + rng() % 101));
        res->set_content(reply, "application/json");
        break;
      case kGarbage:
        res->set_content(GarbageReply(key), "text/html");
        break;
      case k5xx:
        res->status = rng() % 10 < 7 ? 500 : 503;
        res->set_content("{\"error\":\"injected\"}", "application/json");
        break;
      case k429:
        res->status = 429;
        res->set_header("Retry-After", rng() % 2 ? "1" : "0");
        res->set_content("{\"error\":\"slow down\"}", "application/json");
        break;
      case kHang:
        std::this_thread::sleep_for(Ms(kTimeoutMs + 200));
        res->set_content(reply, "application/json");
        break;
      case kCutChunked:
        // Half of the reply in one chunk, then the connection closes
        // without the last chunk.
        res->set_chunked_content_provider("application/json",
                                          [reply](size_t, httplib::DataSink& sink) {
                                            sink.write(reply.data(), reply.size() / 2);
                                            return false;
                                          });
        break;
      case kCutLength:
        // Content-Length promises more than is sent before the connection closes.
        res->set_content_provider(reply.size() + 100, "application/json",
                                  [reply](size_t, size_t, httplib::DataSink& sink) {
                                    sink.write(reply.data(), reply.size());
                                    return false;
                                  });
        break;
      case kFaultCount:  // a count, never drawn
        break;
    }
  }

  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::atomic<uint64_t> calls_[kFaultCount] = {};
};

// ---------------------------------------------------------------------------
// The pmmap process.

class PmmapProcess {
 public:
  ~PmmapProcess() {
    if (pid_ > 0) Stop(Ms(5000));
  }

  bool Start(const std::string& binary, const std::string& data_dir, const std::string& log_path,
             std::string* error) {
    log_path_ = log_path;
    int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (log_fd < 0) {
      *error = "cannot create " + log_path + ": " + strerror(errno);
      return false;
    }
    std::vector<std::string> args = {binary, "--listen", "127.0.0.1:0", "--data-dir", data_dir};
    pid_ = fork();
    if (pid_ < 0) {
      *error = std::string("fork: ") + strerror(errno);
      close(log_fd);
      return false;
    }
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);  // never outlive the soak
      dup2(log_fd, 2);
      int devnull = open("/dev/null", O_RDWR);
      dup2(devnull, 0);
      dup2(devnull, 1);
      signal(SIGPIPE, SIG_DFL);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(&a[0]);
      argv.push_back(nullptr);
      execv(binary.c_str(), argv.data());
      fprintf(stderr, "exec %s: %s\n", binary.c_str(), strerror(errno));
      _exit(127);
    }
    close(log_fd);
    const std::string marker = "listening on http://127.0.0.1:";
    for (int i = 0; i < 1000; ++i) {
      std::string log = ReadWholeFile(log_path_);
      size_t at = log.find(marker);
      if (at != std::string::npos && log.find(' ', at + marker.size()) != std::string::npos) {
        port_ = atoi(log.c_str() + at + marker.size());
        return port_ > 0;
      }
      if (Exited()) {
        *error = "pmmap exited at start: " + log;
        return false;
      }
      std::this_thread::sleep_for(Ms(10));
    }
    *error = "pmmap did not say which port it listens on within 10 s";
    return false;
  }

  // True once the process has exited (its status is then in exit_status()).
  bool Exited() {
    if (pid_ <= 0) return true;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return true;
    }
    return false;
  }

  // SIGTERM, then waits up to timeout, then SIGKILL. Returns the exit status
  // (128+signal if killed by one), or -1 if it had to be killed.
  int Stop(Ms timeout) {
    if (Exited()) return exit_status_;
    kill(pid_, SIGTERM);
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      if (Exited()) return exit_status_;
      std::this_thread::sleep_for(Ms(10));
    }
    kill(pid_, SIGKILL);
    int status;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    exit_status_ = -1;
    return -1;
  }

  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  int exit_status() const { return exit_status_; }
  std::string log() const { return ReadWholeFile(log_path_); }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  int exit_status_ = -1;
  std::string log_path_;
};

// ---------------------------------------------------------------------------
// Run state shared by the threads.

std::string g_data_dir;
std::string g_hook_url;
Clock::time_point g_t0, g_create_end, g_job_deadline, g_hard_deadline;
std::atomic<bool> g_abort{false};  // the server died: stop making calls
std::atomic<int> g_job_seq{0};

double SecondsUntil(Clock::time_point t) {
  return std::chrono::duration<double>(t - Clock::now()).count();
}

struct KeptJob {
  std::string id;
  std::string state;  // what it ended as: done or cancelled
};
std::mutex g_jobs_mutex;
std::vector<KeptJob> g_kept_jobs;      // not deleted by the clients
std::set<std::string> g_deleted_jobs;  // deleted by the clients

// ---------------------------------------------------------------------------
// Inputs.

std::string MakeKey(int job, int i) {
  std::string base = "j" + std::to_string(job) + "-" + std::to_string(i);
  switch (i % 16) {
    case 3:
      return base + "/slash";
    case 5:
      return base + " space?q=1&x#frag";
    case 7:
      return "\xD0\xBA\xD0\xBB\xD1\x8E\xD1\x87-" + base + "-\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80";
    case 9:
      return base + "%u0041%41+plus";
    case 11:
      return base + "\"quote\\back";
    case 13:
      return "." + base + "..";
    default:
      return base;
  }
}

std::string MakeValue(std::mt19937_64& rng, int i) {
  std::string n = std::to_string(i);
  switch (rng() % 10) {
    case 0:
      return "null";
    case 1:
      return n;
    case 2:
      return "12345678901234567890";
    case 3:
      return " -1.250e-3 ";
    case 4:
      return "\"text \\\"quoted\\\" \\\\ \\u00e9\\ud83d\\ude00 \xC3\xA9\xE2\x82\xAC " + n + "\"";
    case 5:
      return "[ ]";
    case 6: {
      int depth = 1 + static_cast<int>(rng() % 20);
      std::string v;
      for (int d = 0; d < depth; ++d) v += d % 2 ? "[ " : "{\"d\" : ";
      v += n;
      for (int d = depth - 1; d >= 0; --d) v += d % 2 ? " ]" : " }";
      return v;
    }
    case 7:
      return "\"" + std::string(1 + rng() % 4096, static_cast<char>('a' + i % 26)) + "\"";
    default:
      return "{ \"i\" : " + n + ", \"s\" : \"v" + n +
             "\",\n \"f\": 1.50, \"a\": [1, -2.5E3, true, false, null, {\"x\": \"y\"}], \"o\": { } "
             "}";
  }
}

struct JobRecord {
  std::string id;
  int seq = 0;
  int concurrency = 1;
  int maxsize = 1;
  bool secret = false;
  std::vector<std::string> keys;
  std::vector<std::string> values;  // JSON text as sent
  std::vector<size_t> batch_ends;   // end index of each batch
  // Batches are sent in order and a cut batch keeps its first inputs, so
  // the inputs pmmap holds are always keys[0, accepted).
  std::atomic<size_t> accepted{0};
  std::atomic<bool> ambiguous{false};  // a PUT whose effect is unknown
  std::atomic<bool> filler_done{false};
};

// Sends the batches in order until one is refused: a 409 once the job is
// cancelled (the batch in progress keeps the inputs it had queued), a 404
// once it is deleted. Counts in job->accepted what pmmap holds.
void Fill(JobRecord* job) {
  static const std::regex kCut("cancelled after ([0-9]+) of ([0-9]+) inputs");
  size_t begin = 0;
  for (size_t end : job->batch_ends) {
    if (g_abort) break;
    std::string body = "[";
    for (size_t i = begin; i < end; ++i) {
      if (i > begin) body += ",\n ";
      body += "{\"key\": " + JsonString(job->keys[i]) + ", \"value\": " + job->values[i] + "}";
    }
    body += "]";
    ++g_stats.puts;
    Reply r = Api("PUT", "/job/" + job->id + "/input", body, SecondsUntil(g_hard_deadline));
    std::smatch m;
    if (r.status == 201) {
      job->accepted += end - begin;
      g_stats.inputs_accepted += end - begin;
      begin = end;
      continue;
    }
    if (r.status == 409 && std::regex_search(r.body, m, kCut) &&
        std::stoul(m[2].str()) == end - begin && std::stoul(m[1].str()) <= end - begin) {
      size_t n = std::stoul(m[1].str());
      job->accepted += n;
      g_stats.inputs_accepted += n;
      ++g_stats.puts_cut_by_cancel;
    } else if (r.status == 409 && r.body.find("is cancelled") != std::string::npos) {
      ++g_stats.puts_refused_after_cancel;
    } else if (r.status == 404) {
      ++g_stats.puts_404_after_delete;
    } else {
      job->ambiguous = true;
      g_problems.Add("api: unexpected reply", Describe("PUT /job/" + job->id + "/input", r));
    }
    break;
  }
  job->filler_done = true;
}

bool WaitFlag(const std::atomic<bool>& flag, Clock::time_point deadline) {
  while (!flag && Clock::now() < deadline) std::this_thread::sleep_for(Ms(5));
  return flag;
}

// Reads GET /job/{id} into doc; returns false (and notes why) on failure.
bool GetJobJson(const std::string& id, rapidjson::Document* doc) {
  Reply r = Api("GET", "/job/" + id);
  if (r.status == 200) {
    doc->Parse(r.body.c_str(), r.body.size());
    if (!doc->HasParseError() && doc->IsObject() && (*doc)["state"].IsString()) return true;
  }
  g_problems.Add("api: unexpected reply", Describe("GET /job/" + id, r));
  return false;
}

uint64_t Field(const rapidjson::Document& doc, const char* name) {
  return doc.HasMember(name) && doc[name].IsUint64() ? doc[name].GetUint64() : UINT64_MAX;
}

// Parses an output body, array or NDJSON, into entries.
bool ParseEntries(const std::string& text, bool ndjson, std::vector<rapidjson::Document>* entries) {
  if (ndjson) {
    size_t pos = 0;
    while (pos < text.size()) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) return false;  // every line ends with a newline
      entries->emplace_back();
      entries->back().Parse(text.c_str() + pos, nl - pos);
      if (entries->back().HasParseError()) return false;
      pos = nl + 1;
    }
    return true;
  }
  rapidjson::Document doc;
  doc.Parse(text.c_str(), text.size());
  if (doc.HasParseError() || !doc.IsArray()) return false;
  for (auto& v : doc.GetArray()) {
    entries->emplace_back();
    entries->back().CopyFrom(v, entries->back().GetAllocator());
  }
  return true;
}

// The check of one ended job's output, entry by entry, against what was sent.
struct OutputCheck {
  OutputCheck(const JobRecord& job, const std::string& state)
      : job(job),
        state(state),
        where("job " + job.id + " (" + state + ")"),
        entries_category(state == "done" ? "done jobs: one entry per input"
                                         : "cancelled jobs: one entry per input"),
        accepted(job.accepted),
        seen(job.keys.size(), 0) {
    for (size_t i = 0; i < job.keys.size(); ++i) index.emplace(job.keys[i], i);
  }

  const JobRecord& job;
  const std::string state;  // what pmmap says the job is: "done" or "cancelled"
  const std::string where;  // how a problem names the job
  const std::string entries_category;
  const size_t accepted;                          // inputs pmmap holds: keys[0, accepted)
  std::unordered_map<std::string, size_t> index;  // key -> its index in job.keys
  std::vector<char> seen;                         // by index: has an entry
  uint64_t successes = 0, failures = 0, cancelled = 0;
};

// A success entry holds the webhook's good reply, or its garbage as a string.
void CheckSuccess(const OutputCheck& c, const std::string& key, size_t i,
                  const rapidjson::Value& got) {
  rapidjson::Document good;
  good.Parse(GoodReply(key, c.job.values[i]).c_str());
  bool garbage =
      got.IsString() && std::string(got.GetString(), got.GetStringLength()) == GarbageKept(key);
  if (garbage) ++g_stats.successes_garbage;
  if (good.HasParseError() || !(got == good || garbage)) {
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    got.Accept(w);
    g_problems.Add("success entries carry the webhook's reply",
                   c.where + ": key " + key + ": got " + buf.GetString() + ", want " +
                       GoodReply(key, c.job.values[i]) + " or the garbage string");
  }
}

bool IsFailureEntry(const rapidjson::Value& e) {
  return e.HasMember("error") && e["error"].IsObject() && e["error"].HasMember("status") &&
         e["error"]["status"].IsInt() && e["error"].HasMember("message") &&
         e["error"]["message"].IsString() && e.HasMember("attempts") && e["attempts"].IsInt();
}

// A failure entry: cancelled (only in a cancelled job), or a retryable
// status after every attempt.
void CheckFailure(OutputCheck* c, const std::string& key, const rapidjson::Value& e) {
  std::string message = e["error"]["message"].GetString();
  int status = e["error"]["status"].GetInt();
  int attempts = e["attempts"].GetInt();
  if (message == "cancelled") {
    ++c->cancelled;
    if (c->state != "cancelled" || status != 0 || attempts < 0 || attempts > kMaxAttempts) {
      g_problems.Add("failure entries are well-formed",
                     c->where + ": key " + key + ": a cancelled entry with status " +
                         std::to_string(status) + ", attempts " + std::to_string(attempts));
    }
    return;
  }
  ++c->failures;
  // Every injected fault is retryable, so a failure used every attempt.
  bool status_ok = status == 0 || status == 200 || status == 429 || status == 500 || status == 503;
  if (!status_ok || attempts != kMaxAttempts) {
    g_problems.Add("failure entries are well-formed",
                   c->where + ": key " + key + ": status " + std::to_string(status) + " after " +
                       std::to_string(attempts) + " attempts: " + message);
  }
}

// One entry: of an accepted key, its only one, a success or a failure.
void CheckEntry(OutputCheck* c, const rapidjson::Value& e) {
  if (!e.IsObject() || !e.HasMember("key") || !e["key"].IsString()) {
    g_problems.Add(c->entries_category, c->where + ": an entry without a key");
    return;
  }
  std::string key(e["key"].GetString(), e["key"].GetStringLength());
  auto it = c->index.find(key);
  if (it == c->index.end() || it->second >= c->accepted) {
    g_problems.Add(c->entries_category, c->where + ": an entry for a key never accepted: " + key);
    return;
  }
  size_t i = it->second;
  if (c->seen[i]++) {
    g_problems.Add(c->entries_category, c->where + ": key " + key + " has more than one entry");
    return;
  }
  if (e.HasMember("value")) {
    ++c->successes;
    CheckSuccess(*c, key, i, e["value"]);
  } else if (IsFailureEntry(e)) {
    CheckFailure(c, key, e);
  } else {
    g_problems.Add(c->entries_category, c->where + ": a malformed entry for key " + key);
  }
}

// Every accepted input has an entry, and there are no others.
void CheckEveryInputHasOne(const OutputCheck& c, size_t entries) {
  size_t missing = 0;
  std::string first_missing;
  for (size_t i = 0; i < c.accepted; ++i) {
    if (!c.seen[i] && missing++ == 0) first_missing = c.job.keys[i];
  }
  if (missing > 0) {
    g_problems.Add(c.entries_category, c.where + ": " + std::to_string(missing) + " of " +
                                           std::to_string(c.accepted) +
                                           " inputs have no entry, e.g. " + first_missing);
  }
  if (entries != c.accepted) {
    g_problems.Add(c.entries_category, c.where + ": " + std::to_string(entries) + " entries for " +
                                           std::to_string(c.accepted) + " inputs");
  }
}

// The job's counters agree with the entries.
void CheckCounters(const OutputCheck& c, const rapidjson::Document& job_json) {
  if (Field(job_json, "inputs") == c.accepted && Field(job_json, "outputs") == c.accepted &&
      Field(job_json, "succeeded") == c.successes &&
      Field(job_json, "failed") == c.failures + c.cancelled && Field(job_json, "pending") == 0 &&
      Field(job_json, "in_flight") == 0) {
    return;
  }
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  job_json.Accept(w);
  g_problems.Add("job counters match the entries",
                 c.where + ": sent " + std::to_string(c.accepted) + ", read " +
                     std::to_string(c.successes) + " successes, " + std::to_string(c.failures) +
                     " failures, " + std::to_string(c.cancelled) + " cancelled; the job says " +
                     buf.GetString());
}

// Checks the output of an ended job against what was sent. state: what
// pmmap says the job is, "done" or "cancelled".
void Verify(const JobRecord& job, const std::string& output, bool ndjson, const std::string& state,
            const rapidjson::Document& job_json) {
  if (job.ambiguous) return;  // already reported
  OutputCheck check(job, state);
  g_stats.inputs_in_checked_jobs += check.accepted;
  std::vector<rapidjson::Document> entries;
  if (!ParseEntries(output, ndjson, &entries)) {
    g_problems.Add(check.entries_category, check.where + ": the output is not valid " +
                                               (ndjson ? "NDJSON" : "JSON array") + ": " +
                                               output.substr(0, 300));
    return;
  }
  for (const auto& e : entries) CheckEntry(&check, e);
  CheckEveryInputHasOne(check, entries.size());
  CheckCounters(check, job_json);
  g_stats.outputs_checked += entries.size();
  g_stats.successes += check.successes;
  g_stats.failures += check.failures;
  g_stats.cancelled_entries += check.cancelled;
}

// Reads the whole output again in pages and checks they add up to it.
void CheckPaged(const JobRecord& job, std::mt19937_64& rng) {
  Reply full = Api("GET", "/job/" + job.id + "/output?wait=false&format=ndjson", "", 30);
  if (full.status != 200) {
    g_problems.Add("api: unexpected reply",
                   Describe("GET /job/" + job.id + "/output?wait=false&format=ndjson", full));
    return;
  }
  size_t total = static_cast<size_t>(std::count(full.body.begin(), full.body.end(), '\n'));
  size_t page = 1 + rng() % 700;
  std::string joined;
  for (size_t offset = 0, i = 0; offset < total + page && i < total / page + 3;
       offset += page, ++i) {
    std::string path = "/job/" + job.id +
                       "/output?wait=false&format=ndjson&offset=" + std::to_string(offset) +
                       "&limit=" + std::to_string(page);
    Reply r = Api("GET", path, "", 30);
    if (r.status != 200) {
      Reply again = Api("GET", path, "", 30);
      g_problems.Add("api: unexpected reply", Describe("GET " + path, r) +
                                                  "; again: " + Describe("", again).substr(0, 60) +
                                                  " bytes " + std::to_string(again.body.size()) +
                                                  " of full " + std::to_string(full.body.size()));
      return;
    }
    joined += r.body;
  }
  ++g_stats.paged_reads;
  if (joined != full.body) {
    g_problems.Add("paged output equals the whole output",
                   "job " + job.id + ": pages of " + std::to_string(page) + " give " +
                       std::to_string(joined.size()) + " bytes, the whole output " +
                       std::to_string(full.body.size()));
  }
}

// A GET /output that waits for the job to end, in its own thread.
struct WaitingReader {
  std::thread thread;
  Reply reply;
  std::atomic<bool> done{false};
  void Start(const std::string& id, bool ndjson) {
    ++g_stats.waiting_readers;
    thread = std::thread([this, id, ndjson] {
      reply = Api("GET", "/job/" + id + "/output" + (ndjson ? "?format=ndjson" : ""), "",
                  std::max(1.0, SecondsUntil(g_hard_deadline)));
      done = true;
    });
  }
  ~WaitingReader() {
    if (thread.joinable()) thread.join();
  }
};

// Cancels the job and reads back its state; returns it ("" on failure).
std::string CancelJob(const std::string& id) {
  Reply r = Api("POST", "/job/" + id + "/cancel");
  rapidjson::Document doc;
  if (r.status == 200) doc.Parse(r.body.c_str(), r.body.size());
  if (r.status != 200 || doc.HasParseError() || !doc.IsObject() || !doc["state"].IsString()) {
    g_problems.Add("api: unexpected reply", Describe("POST /job/" + id + "/cancel", r));
    return "";
  }
  std::string state = doc["state"].GetString();
  if (state != "cancelled" && state != "done") {
    g_problems.Add("api: unexpected reply", Describe("POST /job/" + id + "/cancel (state)", r));
  }
  return state;
}

// Reads the output of an ended job and checks it.
void ReadAndVerify(const JobRecord& job, bool ndjson, const Reply* already_read) {
  Reply out =
      already_read != nullptr
          ? *already_read
          : Api("GET", "/job/" + job.id + "/output" + (ndjson ? "?format=ndjson" : ""), "", 30);
  if (out.status != 200) {
    g_problems.Add("api: unexpected reply", Describe("GET /job/" + job.id + "/output", out));
    return;
  }
  rapidjson::Document doc;
  if (!GetJobJson(job.id, &doc)) return;
  std::string state = doc["state"].GetString();
  if (state != "done" && state != "cancelled") {
    g_problems.Add("api: unexpected reply",
                   "job " + job.id + " is " + state + " after its output was read");
    return;
  }
  Verify(job, out.body, ndjson, state, doc);
  {
    std::lock_guard<std::mutex> lock(g_jobs_mutex);
    g_kept_jobs.push_back({job.id, state});
  }
  if (state == "done") {
    ++g_stats.jobs_done;
  } else {
    ++g_stats.jobs_cancelled;
  }
}

int Uniform(std::mt19937_64& rng, int lo, int hi) {
  return lo + static_cast<int>(rng() % static_cast<uint64_t>(hi - lo + 1));
}

// How a job ends: completed and read, or cancelled or deleted at a random moment.
enum Fate { kComplete, kCancel, kDelete };

// Draws the job's settings, returns how many inputs it gets, and sets fate.
int PlanJob(std::mt19937_64& rng, JobRecord* job, Fate* fate) {
  job->seq = g_job_seq++;
  job->concurrency = Uniform(rng, 1, 16);
  job->maxsize = Uniform(rng, 5, 200);
  job->secret = rng() % 2 == 0;
  const double budget_ms = g_opt.seconds * 1000.0 / 4;
  const int n_max = std::max(
      100, std::min(2000, static_cast<int>(budget_ms * job->concurrency / kEstimatedMsPerInput)));
  const int n = Uniform(rng, 100, n_max);
  int f = Uniform(rng, 0, 99);
  *fate = f < 55 ? kComplete : f < 80 ? kCancel : kDelete;
  return n;
}

// POST /job with the job's settings; sets job->id. False if refused.
bool CreateJob(JobRecord* job) {
  std::string body = "{\"url\": " + JsonString(g_hook_url) +
                     ", \"concurrency\": " + std::to_string(job->concurrency) +
                     ", \"maxsize\": " + std::to_string(job->maxsize) +
                     ", \"timeout_ms\": " + std::to_string(kTimeoutMs) +
                     ", \"max_attempts\": " + std::to_string(kMaxAttempts) +
                     ", \"backoff_ms\": " + std::to_string(kBackoffMs) +
                     ", \"max_backoff_ms\": " + std::to_string(kMaxBackoffMs) +
                     (job->secret ? std::string(", \"secret\": \"") + kSecret + "\"" : "") + "}";
  Reply created = Api("POST", "/job", body);
  rapidjson::Document doc;
  if (created.status == 201) doc.Parse(created.body.c_str(), created.body.size());
  if (created.status != 201 || doc.HasParseError() || !doc.IsObject() || !doc["id"].IsString()) {
    ++g_stats.jobs_create_refused;
    if (!g_abort) g_problems.Add("api: unexpected reply", Describe("POST /job", created));
    std::this_thread::sleep_for(Ms(200));
    return false;
  }
  job->id = doc["id"].GetString();
  ++g_stats.jobs_created;
  return true;
}

// n keys and values, cut into batches of random sizes (now and then one batch).
void MakeInputs(std::mt19937_64& rng, int n, JobRecord* job) {
  for (int i = 0; i < n; ++i) {
    job->keys.push_back(MakeKey(job->seq, i));
    job->values.push_back(MakeValue(rng, i));
  }
  for (int at = 0; at < n;) {
    int size = rng() % 8 == 0 ? n - at : std::min(n - at, Uniform(rng, 1, 600));
    at += size;
    job->batch_ends.push_back(static_cast<size_t>(at));
  }
}

void Complete(const JobRecord& job) {
  Reply r = Api("POST", "/job/" + job.id + "/complete");
  if (r.status != 200)
    g_problems.Add("api: unexpected reply", Describe("POST /job/" + job.id + "/complete", r));
}

// Joins the filler once a cancel or DELETE has released its PUT. verb names
// the check ("cancel" or "delete"); after, the call in the problem's detail.
void JoinFiller(const JobRecord& job, std::thread* filler, const std::string& verb,
                const std::string& after) {
  if (!WaitFlag(job.filler_done, Clock::now() + std::chrono::seconds(10))) {
    g_problems.Add(verb + " releases a blocked PUT",
                   "job " + job.id + ": a PUT still blocked 10 s after " + after);
  }
  filler->join();
}

// Joins a waiting reader once a cancel or DELETE has answered it; verb and
// after as for JoinFiller.
void JoinReader(const JobRecord& job, WaitingReader* reader, const std::string& verb,
                const std::string& after) {
  if (!WaitFlag(reader->done, Clock::now() + std::chrono::seconds(10))) {
    g_problems.Add(
        verb + " answers a waiting GET /output",
        "job " + job.id + ": a waiting GET /output still unanswered 10 s after " + after);
  }
  reader->thread.join();
}

// Completes the filled job and reads its output; cancels it instead if it
// is not done by the deadline (or a PUT went wrong). Checks the output.
void CompleteJob(const JobRecord& job, bool ndjson, std::thread* filler, std::mt19937_64& rng) {
  bool filled = WaitFlag(job.filler_done, g_job_deadline);
  if (filled && !job.ambiguous) {
    Complete(job);
    Reply out = Api("GET", "/job/" + job.id + "/output" + (ndjson ? "?format=ndjson" : ""), "",
                    std::max(1.0, SecondsUntil(g_job_deadline)));
    if (out.status == 200) {
      filler->join();
      ReadAndVerify(job, ndjson, &out);
      if (rng() % 4 != 0) CheckPaged(job, rng);
      return;
    }
    if (out.status != 0)
      g_problems.Add("api: unexpected reply", Describe("GET /job/" + job.id + "/output", out));
  }
  ++g_stats.jobs_cancelled_at_deadline;
  CancelJob(job.id);
  JoinFiller(job, filler, "cancel", "cancel");
  ReadAndVerify(job, ndjson, nullptr);
}

// Cancels the job; checks that this releases the filler and answers the
// waiting reader, if any, then checks the output.
void CancelMidway(const JobRecord& job, bool ndjson, std::thread* filler, WaitingReader* reader) {
  CancelJob(job.id);
  JoinFiller(job, filler, "cancel", "cancel");
  if (reader == nullptr) {
    ReadAndVerify(job, ndjson, nullptr);
    return;
  }
  JoinReader(job, reader, "cancel", "cancel");
  ReadAndVerify(job, ndjson, &reader->reply);
}

// After a DELETE: no file, and 404 for the job and its output.
void CheckDeletedLeavesNothing(const std::string& id) {
  struct stat st;
  if (stat((g_data_dir + "/" + id + ".ndjson").c_str(), &st) == 0) {
    g_problems.Add("deleted jobs leave nothing behind",
                   "job " + id + ": its file is still there after DELETE");
  }
  Reply after = Api("GET", "/job/" + id);
  if (after.status != 404)
    g_problems.Add("deleted jobs leave nothing behind",
                   Describe("GET /job/" + id + " after DELETE", after));
  after = Api("GET", "/job/" + id + "/output?wait=false");
  if (after.status != 404) {
    g_problems.Add("deleted jobs leave nothing behind",
                   Describe("GET /job/" + id + "/output after DELETE", after));
  }
}

// Deletes the job; checks that it leaves nothing behind, releases the
// filler and answers the waiting reader, if any.
void DeleteMidway(const JobRecord& job, std::thread* filler, WaitingReader* reader) {
  Reply r = Api("DELETE", "/job/" + job.id);
  if (r.status != 200)
    g_problems.Add("api: unexpected reply", Describe("DELETE /job/" + job.id, r));
  {
    std::lock_guard<std::mutex> lock(g_jobs_mutex);
    g_deleted_jobs.insert(job.id);
  }
  ++g_stats.jobs_deleted;
  CheckDeletedLeavesNothing(job.id);
  JoinFiller(job, filler, "delete", "DELETE");
  if (reader == nullptr) return;
  JoinReader(job, reader, "delete", "DELETE");
  // 404, or 200 if the job had ended (and the output was sent) before the DELETE.
  if (reader->reply.status != 404 && reader->reply.status != 200) {
    g_problems.Add("delete answers a waiting GET /output",
                   Describe("waiting GET /job/" + job.id + "/output", reader->reply));
  }
}

// Cancels or deletes the job at a random moment: while filling, while
// working, or after; half the time completes it first once filled, and half
// the time a reader waits on its output meanwhile.
void EndMidway(const JobRecord& job, Fate fate, bool ndjson, double est_ms, std::thread* filler,
               std::mt19937_64& rng) {
  const bool complete_first = rng() % 2 == 0;
  std::unique_ptr<WaitingReader> reader;
  if (rng() % 2 == 0) {
    reader = std::make_unique<WaitingReader>();
    reader->Start(job.id, ndjson);
  }
  Clock::time_point act_at = std::min(
      g_job_deadline, Clock::now() + Ms(static_cast<int64_t>(est_ms * (rng() % 1000) / 1000.0)));
  bool completed = false;
  while (Clock::now() < act_at && !g_abort) {
    if (complete_first && !completed && job.filler_done && !job.ambiguous) {
      completed = true;
      Complete(job);
    }
    std::this_thread::sleep_for(Ms(10));
  }
  if (fate == kCancel) {
    CancelMidway(job, ndjson, filler, reader.get());
  } else {
    DeleteMidway(job, filler, reader.get());
  }
}

// One job, start to end, with one of three fates.
void RunJob(std::mt19937_64& rng) {
  JobRecord job;
  Fate fate;
  const int n = PlanJob(rng, &job, &fate);
  if (!CreateJob(&job)) return;
  MakeInputs(rng, n, &job);
  const bool ndjson = rng() % 2 == 0;
  const double est_ms = static_cast<double>(n) * kEstimatedMsPerInput / job.concurrency;
  std::thread filler([&job] { Fill(&job); });
  if (fate == kComplete) {
    CompleteJob(job, ndjson, &filler, rng);
  } else {
    EndMidway(job, fate, ndjson, est_ms, &filler, rng);
  }
}

void ClientLoop(int index) {
  std::mt19937_64 rng(g_opt.seed * 1000003 + static_cast<uint64_t>(index));
  for (int i = 0; i < 100000 && Clock::now() < g_create_end && !g_abort; ++i) RunJob(rng);
}

// ---------------------------------------------------------------------------
// The health prober and resource sampler.

struct Probe {
  double at_s;  // since the start
  double ms;    // -1: failed
};

// CPU used by pmmap and by this process, sampled with the resources.
struct CpuSample {
  double at_s;
  long pmmap_ticks;
  long soak_ticks;
  long machine_ticks;
};
std::vector<CpuSample> g_cpu;  // guarded by g_probe_mutex

// The CPU (100 = one core) that pmmap, this process and every other process
// of the machine used over about [from_s, to_s].
struct CpuShares {
  double pmmap = -1, soak = -1, others = -1;
};
CpuShares CpuShare(double from_s, double to_s) {
  CpuShares out;
  if (g_cpu.size() < 2) return out;
  const CpuSample* a = &g_cpu.front();
  const CpuSample* b = &g_cpu.back();
  for (const auto& c : g_cpu) {
    if (c.at_s <= from_s) a = &c;
  }
  for (auto it = g_cpu.rbegin(); it != g_cpu.rend(); ++it) {
    if (it->at_s >= to_s) b = &*it;
  }
  if (b->at_s <= a->at_s) return out;
  const double scale = 100.0 / static_cast<double>(sysconf(_SC_CLK_TCK)) / (b->at_s - a->at_s);
  out.pmmap = scale * static_cast<double>(b->pmmap_ticks - a->pmmap_ticks);
  out.soak = scale * static_cast<double>(b->soak_ticks - a->soak_ticks);
  out.others =
      scale * static_cast<double>(b->machine_ticks - a->machine_ticks) - out.pmmap - out.soak;
  return out;
}

std::atomic<bool> g_probe_stop{false};
std::mutex g_probe_mutex;
std::vector<Probe> g_probes;
// How late the prober's own timer fired, and when: the machine's load.
double g_prober_late_max_ms = 0;
double g_prober_late_at_s = 0;
Resources g_res_start, g_res_peak, g_res_end;

void ProbeLoop(pid_t pid) {
  Clock::time_point next = Clock::now();
  for (uint64_t i = 0; !g_probe_stop && i < 10000000; ++i) {
    Clock::time_point start = Clock::now();
    httplib::Client client("127.0.0.1", g_api_port);
    client.set_keep_alive(false);
    client.set_connection_timeout(1, 0);
    client.set_read_timeout(1, 0);
    client.set_write_timeout(1, 0);
    auto r = client.Get("/healthz");
    double ms = MsBetween(start, Clock::now());
    bool ok = r && r->status == 200 && r->body.find("\"ok\"") != std::string::npos;
    Resources now;
    CpuSample cpu{0, -1, -1, -1};
    if (i % 5 == 0) {
      now = ReadResources(pid);
      cpu = {SecondsSince(g_t0), CpuTicks(std::to_string(pid)), CpuTicks("self"),
             MachineBusyTicks()};
    }
    {
      std::lock_guard<std::mutex> lock(g_probe_mutex);
      g_probes.push_back({std::chrono::duration<double>(start - g_t0).count(), ok ? ms : -1});
      if (cpu.pmmap_ticks >= 0) g_cpu.push_back(cpu);
      if (now.rss_kb >= 0) {
        g_res_peak.rss_kb = std::max(g_res_peak.rss_kb, now.rss_kb);
        g_res_peak.threads = std::max(g_res_peak.threads, now.threads);
        g_res_peak.fds = std::max(g_res_peak.fds, now.fds);
      }
    }
    next += Ms(50);
    Clock::time_point target = std::max(next, Clock::now());
    std::this_thread::sleep_until(target);
    Clock::time_point woke = Clock::now();
    {
      std::lock_guard<std::mutex> lock(g_probe_mutex);
      if (MsBetween(target, woke) > g_prober_late_max_ms) {
        g_prober_late_max_ms = MsBetween(target, woke);
        g_prober_late_at_s = std::chrono::duration<double>(target - g_t0).count();
      }
    }
    if (woke > next + Ms(50)) next = woke;  // no burst of probes after a stall
  }
}

// ---------------------------------------------------------------------------
// The hard deadline.

std::mutex g_watchdog_mutex;
std::condition_variable g_watchdog_cv;
bool g_watchdog_done = false;
std::atomic<const char*> g_phase{"starting"};
std::atomic<pid_t> g_pmmap_pid{-1};
std::string g_root;

void Watchdog() {
  std::unique_lock<std::mutex> lock(g_watchdog_mutex);
  if (g_watchdog_cv.wait_until(lock, g_hard_deadline, [] { return g_watchdog_done; })) return;
  fprintf(stderr,
          "\nsoak: FAIL: the hard deadline passed during phase \"%s\"; killing pmmap and exiting\n",
          g_phase.load());
  pid_t pid = g_pmmap_pid;
  if (pid > 0) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  if (!g_opt.keep) RemoveTree(g_root);
  fflush(stdout);
  _exit(3);
}

// ---------------------------------------------------------------------------

void Usage() {
  fprintf(stderr,
          "usage: soak [--pmmap PATH] [--seconds N] [--clients N] [--seed N] [--keep]\n"
          "  --pmmap PATH   the binary under test (default ./pmmap)\n"
          "  --seconds N    how long jobs are created and run (default 120; 20 for a quick check)\n"
          "  --clients N    client threads (default 6)\n"
          "  --seed N       seed of the clients' choices (default: random)\n"
          "  --keep         keep the temporary directory (data dir and pmmap's log)\n");
}

bool ParseArgs(int argc, char** argv) {
  g_opt.seed = std::random_device{}();
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--pmmap") {
      g_opt.pmmap = value();
    } else if (a == "--seconds") {
      g_opt.seconds = atoi(value().c_str());
    } else if (a == "--clients") {
      g_opt.clients = atoi(value().c_str());
    } else if (a == "--seed") {
      g_opt.seed = strtoull(value().c_str(), nullptr, 10);
    } else if (a == "--keep") {
      g_opt.keep = true;
    } else {
      return false;
    }
  }
  return !g_opt.pmmap.empty() && g_opt.seconds >= 5 && g_opt.seconds <= 3600 &&
         g_opt.clients >= 1 && g_opt.clients <= 64;
}

std::string Mib(long kb) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(kb) / 1024);
  return buf;
}

// ---------------------------------------------------------------------------
// The run, start to end.

// The webhook in this process and the pmmap process, both under test.
struct Servers {
  FaultyWebhook webhook;
  PmmapProcess pmmap;
  int hook_port = -1;
};

// What the run and the checks at its end found, for the report.
struct Outcome {
  bool server_died = false;
  double run_seconds = 0;
  std::string metrics;  // GET /metrics before the final deletes
  size_t files_before_final_delete = 0;
  int exit_status = -1;  // on SIGTERM, or when it died
  std::string log;       // pmmap's, once stopped
};

// Jobs are created for 70% of the run and must end by its end; the
// watchdog kills everything 90 s after that.
void SetDeadlines() {
  g_t0 = Clock::now();
  const auto run = std::chrono::seconds(g_opt.seconds);
  g_create_end = g_t0 + run * 7 / 10;
  g_job_deadline = g_t0 + run;
  g_hard_deadline = g_t0 + run + std::chrono::seconds(90);
}

void PrintSettings() {
  printf("soak: %d s of faults against %s, %d clients, seed %" PRIu64 "\n", g_opt.seconds,
         g_opt.pmmap.c_str(), g_opt.clients, g_opt.seed);
  printf(
      "soak: jobs: timeout_ms %d, max_attempts %d, backoff_ms %d, max_backoff_ms %d; webhook "
      "faults:",
      kTimeoutMs, kMaxAttempts, kBackoffMs, kMaxBackoffMs);
  for (const auto& f : kFaults) printf(" %s %d%%;", f.name, f.percent);
  printf("\n");
}

// The temporary directory (g_root) and the data directory in it.
bool MakeDirectories() {
  char templ[] = "/tmp/pmmap-soak.XXXXXX";
  if (mkdtemp(templ) == nullptr) {
    perror("soak: mkdtemp");
    return false;
  }
  g_root = templ;
  g_data_dir = g_root + "/data";
  mkdir(g_data_dir.c_str(), 0700);
  return true;
}

void StopWatchdog(std::thread* watchdog) {
  {
    std::lock_guard<std::mutex> lock(g_watchdog_mutex);
    g_watchdog_done = true;
  }
  g_watchdog_cv.notify_all();
  watchdog->join();
}

// The webhook, then the server; then notes where they listen and what the
// server holds at rest.
bool StartServers(Servers* s) {
  s->hook_port = s->webhook.Start(0);
  std::string error;
  if (s->hook_port <= 0 ||
      !s->pmmap.Start(g_opt.pmmap, g_data_dir, g_root + "/pmmap.log", &error)) {
    fprintf(stderr, "soak: cannot start: %s\n",
            s->hook_port <= 0 ? "the webhook cannot listen" : error.c_str());
    return false;
  }
  g_pmmap_pid = s->pmmap.pid();
  g_api_port = s->pmmap.port();
  g_hook_url = "http://127.0.0.1:" + std::to_string(s->hook_port) + "/hook";
  std::this_thread::sleep_for(Ms(200));
  g_res_start = ReadResources(s->pmmap.pid());
  g_res_peak = g_res_start;
  printf("soak: pmmap pid %d on port %d (data in %s), webhook on port %d\n", s->pmmap.pid(),
         g_api_port, g_data_dir.c_str(), s->hook_port);
  printf("soak: pmmap at start: RSS %s, %ld fds, %ld threads\n", Mib(g_res_start.rss_kb).c_str(),
         g_res_start.fds, g_res_start.threads);
  return true;
}

// Stops the webhook and starts it again on its port, as pmmap's calls go on.
void RestartWebhook(Servers* s) {
  Clock::time_point stop_start = Clock::now();
  s->webhook.Stop();
  double stop_ms = MsBetween(stop_start, Clock::now());
  std::this_thread::sleep_for(Ms(1000));
  int port = -1;
  int tries = 0;
  for (; tries < 50 && port <= 0; ++tries) {
    port = s->webhook.Start(s->hook_port);
    if (port <= 0) std::this_thread::sleep_for(Ms(100));
  }
  if (port == s->hook_port) {
    ++g_stats.webhook_restarts;
    printf(
        "soak: [%5.1f s] webhook restarted on port %d (stop took %.0f ms, rebind after %d "
        "tries)\n",
        SecondsSince(g_t0), port, stop_ms, tries);
  } else {
    g_problems.Add("webhook restarts on its port",
                   "cannot bind port " + std::to_string(s->hook_port) + " again");
  }
}

// One line of figures so far, every 10 s of the run.
void PrintProgress(const Servers& s) {
  Resources r = ReadResources(s.pmmap.pid());
  double max_ms = 0;
  size_t slow = 0;
  {
    std::lock_guard<std::mutex> lock(g_probe_mutex);
    for (const auto& p : g_probes) {
      max_ms = std::max(max_ms, p.ms);
      if (p.ms < 0 || p.ms > kHealthzLimitMs) ++slow;
    }
  }
  printf("soak: [%5.1f s] jobs %" PRIu64 " created, %" PRIu64 " done, %" PRIu64
         " cancelled, %" PRIu64 " deleted; %" PRIu64 " inputs; %" PRIu64
         " webhook calls; healthz max %.1f ms (%zu over %.0f ms); "
         "RSS %s, %ld fds, %ld threads\n",
         SecondsSince(g_t0), g_stats.jobs_created.load(), g_stats.jobs_done.load(),
         g_stats.jobs_cancelled.load(), g_stats.jobs_deleted.load(), g_stats.inputs_accepted.load(),
         s.webhook.total_calls(), max_ms, slow, kHealthzLimitMs, Mib(r.rss_kb).c_str(), r.fds,
         r.threads);
}

// Until the clients are done: notes if the server dies (and stops the
// clients' calls), restarts the webhook half-way, and prints progress.
void WatchRun(Servers* s, const std::atomic<int>& clients_running, Outcome* outcome) {
  const Clock::time_point restart_at = g_t0 + std::chrono::seconds(g_opt.seconds) / 2;
  bool restarted = false;
  Clock::time_point next_progress = g_t0 + std::chrono::seconds(10);
  while (clients_running > 0 && Clock::now() < g_hard_deadline) {
    std::this_thread::sleep_for(Ms(50));
    if (!outcome->server_died && s->pmmap.Exited()) {
      outcome->server_died = true;
      g_abort = true;
      g_problems.Add("pmmap stays up and exits cleanly",
                     "pmmap exited during the run with status " +
                         std::to_string(s->pmmap.exit_status()) + " after " +
                         std::to_string(SecondsSince(g_t0)) + " s");
    }
    if (!restarted && Clock::now() >= restart_at) {
      restarted = true;
      RestartWebhook(s);
    }
    if (Clock::now() >= next_progress) {
      next_progress += std::chrono::seconds(10);
      PrintProgress(*s);
    }
  }
  if (!restarted)
    g_problems.Add("webhook restarts on its port", "the run ended before the restart");
}

// The client threads, for the run, while the main thread watches.
void RunClients(Servers* s, Outcome* outcome) {
  std::atomic<int> clients_running{g_opt.clients};
  std::vector<std::thread> clients;
  for (int i = 0; i < g_opt.clients; ++i) {
    clients.emplace_back([i, &clients_running] {
      ClientLoop(i);
      --clients_running;
    });
  }
  WatchRun(s, clients_running, outcome);
  g_phase = "joining clients";
  for (auto& t : clients) t.join();
  outcome->run_seconds = SecondsSince(g_t0);
}

// GET /jobs lists every kept job, ended, and no other; returns the ids it lists.
std::vector<std::string> CheckJobList(const std::set<std::string>& kept) {
  std::vector<std::string> held;
  Reply list = Api("GET", "/jobs", "", 30);
  rapidjson::Document jobs;
  if (list.status == 200) jobs.Parse(list.body.c_str(), list.body.size());
  if (list.status != 200 || jobs.HasParseError() || !jobs.IsArray()) {
    g_problems.Add("api: unexpected reply", Describe("GET /jobs", list));
    return held;
  }
  for (const auto& j : jobs.GetArray()) {
    std::string id = j["id"].GetString();
    std::string state = j["state"].GetString();
    held.push_back(id);
    if (g_deleted_jobs.count(id)) {
      g_problems.Add("deleted jobs leave nothing behind",
                     "GET /jobs still lists deleted job " + id);
    } else if (!kept.count(id)) {
      g_problems.Add("GET /jobs lists the jobs kept",
                     "GET /jobs lists job " + id + ", unknown to the clients");
    }
    if (state != "done" && state != "cancelled") {
      g_problems.Add("GET /jobs lists the jobs kept",
                     "job " + id + " is still " + state + " at the end");
    }
  }
  for (const auto& id : kept) {
    if (std::find(held.begin(), held.end(), id) == held.end()) {
      g_problems.Add("GET /jobs lists the jobs kept", "job " + id + " is missing from GET /jobs");
    }
  }
  return held;
}

// Only the files of jobs not deleted may be in the data directory, and each
// kept job has its file. Returns how many files there are.
size_t CheckDataDir(const std::set<std::string>& kept) {
  std::vector<std::string> files = ListDir(g_data_dir);
  for (const auto& name : files) {
    std::string id = name.size() > 7 && name.compare(name.size() - 7, 7, ".ndjson") == 0
                         ? name.substr(0, name.size() - 7)
                         : "";
    if (!kept.count(id)) {
      g_problems.Add("deleted jobs leave nothing behind",
                     "data directory holds " + name +
                         (g_deleted_jobs.count(id) ? " of a deleted job" : ", of no kept job"));
    }
  }
  for (const auto& id : kept) {
    if (!std::binary_search(files.begin(), files.end(), id + ".ndjson")) {
      g_problems.Add("kept jobs keep their file",
                     "job " + id + " has no file in the data directory");
    }
  }
  return files.size();
}

// Deletes every job the server holds; then nothing may be left of them.
void DeleteEveryJob(const std::vector<std::string>& held) {
  for (const auto& id : held) {
    Reply r = Api("DELETE", "/job/" + id);
    if (r.status != 200) g_problems.Add("api: unexpected reply", Describe("DELETE /job/" + id, r));
  }
  for (const auto& name : ListDir(g_data_dir)) {
    g_problems.Add("data directory empty after deleting every job", "still there: " + name);
  }
  Reply list_after = Api("GET", "/jobs");
  if (list_after.status != 200 || list_after.body.find("[]") != 0) {
    g_problems.Add("data directory empty after deleting every job",
                   Describe("GET /jobs after deleting every job", list_after));
  }
}

// The end: what the server still holds, then delete it all.
void CheckWhatIsLeft(PmmapProcess* pmmap, Outcome* outcome) {
  g_phase = "final checks";
  if (!outcome->server_died && pmmap->Exited()) {
    outcome->server_died = true;
    g_problems.Add("pmmap stays up and exits cleanly", "pmmap exited during the run with status " +
                                                           std::to_string(pmmap->exit_status()));
  }
  if (outcome->server_died) return;
  std::set<std::string> kept;
  for (const auto& j : g_kept_jobs) kept.insert(j.id);
  std::vector<std::string> held = CheckJobList(kept);
  outcome->files_before_final_delete = CheckDataDir(kept);
  outcome->metrics = Api("GET", "/metrics").body;
  DeleteEveryJob(held);
}

// What pmmap's descriptors point to, for the problem's detail.
std::string ListFds(pid_t pid) {
  std::string listing;
  std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
  for (const auto& name : ListDir(fd_dir)) {
    char target[512] = {0};
    ssize_t n = readlink((fd_dir + "/" + name).c_str(), target, sizeof(target) - 1);
    listing += " " + name + "->" + (n > 0 ? std::string(target, static_cast<size_t>(n)) : "?");
  }
  return listing;
}

// Memory and descriptors back near where they started; idle API
// connections close after 3 s, so polls for up to 5 s.
void MeasureEnd(pid_t pid) {
  Clock::time_point until = Clock::now() + Ms(5000);
  do {
    std::this_thread::sleep_for(Ms(100));
    g_res_end = ReadResources(pid);
  } while (g_res_end.fds > g_res_start.fds + kFdSlack && Clock::now() < until);
  g_res_peak.rss_kb = std::max(g_res_peak.rss_kb, g_res_end.rss_kb);
  g_res_peak.fds = std::max(g_res_peak.fds, g_res_end.fds);
  g_res_peak.threads = std::max(g_res_peak.threads, g_res_end.threads);
  if (g_res_end.rss_kb > g_res_start.rss_kb + kRssSlackKb) {
    g_problems.Add("RSS back near its start", "RSS " + Mib(g_res_end.rss_kb) + " at the end, " +
                                                  Mib(g_res_start.rss_kb) + " at the start");
  }
  if (g_res_end.fds > g_res_start.fds + kFdSlack) {
    g_problems.Add("fds back near their start",
                   std::to_string(g_res_end.fds) + " fds at the end, " +
                       std::to_string(g_res_start.fds) + " at the start:" + ListFds(pid));
  }
}

// Stops the webhook, then pmmap with SIGTERM: it must exit 0, and its log
// must hold no crash.
void StopServers(Servers* s, Outcome* outcome) {
  g_phase = "stopping";
  s->webhook.Stop();
  outcome->exit_status = outcome->server_died ? s->pmmap.exit_status() : s->pmmap.Stop(Ms(15000));
  const int exit_status = outcome->exit_status;
  if (!outcome->server_died && exit_status != 0) {
    g_problems.Add("pmmap stays up and exits cleanly",
                   exit_status < 0
                       ? "pmmap did not exit within 15 s of SIGTERM (killed)"
                       : "pmmap exited with status " + std::to_string(exit_status) + " on SIGTERM");
  }
  outcome->log = s->pmmap.log();
  const std::string& log = outcome->log;
  if (log.find("Sanitizer") != std::string::npos ||
      log.find("runtime error:") != std::string::npos ||
      log.find("terminate called") != std::string::npos) {
    g_problems.Add("pmmap stays up and exits cleanly",
                   "pmmap's log has a crash or sanitizer report");
  }
}

// The healthz probes' latencies, sorted, and how many failed or were slow.
struct Health {
  std::vector<double> latencies;
  size_t failed = 0, slow = 0;
};

// The worst of the failed or slow probes, with the CPU use around each.
std::string DescribeWorst(std::vector<Probe> worst) {
  std::string when;
  std::sort(worst.begin(), worst.end(), [](const Probe& a, const Probe& b) {
    return (a.ms < 0 ? 1e9 : a.ms) > (b.ms < 0 ? 1e9 : b.ms);
  });
  for (size_t i = 0; i < worst.size() && i < 8; ++i) {
    char buf[160];
    CpuShares cpu = CpuShare(worst[i].at_s - 1, worst[i].at_s + 0.5);
    snprintf(buf, sizeof(buf),
             " %s at %.1f s (CPU around it: pmmap %.0f%%, soak %.0f%%, others %.0f%%);",
             worst[i].ms < 0 ? "failed"
                             : (std::to_string(static_cast<int>(worst[i].ms)) + " ms").c_str(),
             worst[i].at_s, cpu.pmmap, cpu.soak, cpu.others);
    when += buf;
  }
  return when;
}

// Every probe answered within kHealthzLimitMs; returns the figures.
Health CheckHealth() {
  Health h;
  std::vector<Probe> worst;
  for (const auto& p : g_probes) {
    if (p.ms < 0) {
      ++h.failed;
    } else {
      h.latencies.push_back(p.ms);
      if (p.ms > kHealthzLimitMs) ++h.slow;
    }
    if (p.ms < 0 || p.ms > kHealthzLimitMs) worst.push_back(p);
  }
  std::sort(h.latencies.begin(), h.latencies.end());
  if (h.failed > 0 || h.slow > 0) {
    g_problems.Add("GET /healthz within 100 ms",
                   std::to_string(h.slow) + " probe(s) over 100 ms and " +
                       std::to_string(h.failed) + " failed, of " + std::to_string(g_probes.size()) +
                       ":" + DescribeWorst(worst));
  }
  return h;
}

// ---------------------------------------------------------------------------
// The report.

double Percentile(const std::vector<double>& sorted, double q) {
  return sorted.empty()
             ? 0.0
             : sorted[std::min(sorted.size() - 1, static_cast<size_t>(q * sorted.size()))];
}

// The values of every line of metrics that starts with name, or "-".
std::string MetricValues(const std::string& metrics, const std::string& name) {
  std::string out;
  std::istringstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, name.size(), name) == 0)
      out += (out.empty() ? "" : ", ") + line.substr(name.size());
  }
  return out.empty() ? std::string("-") : out;
}

void PrintJobFigures() {
  printf("%-44s %" PRIu64 "\n", "jobs created", g_stats.jobs_created.load());
  printf("%-44s %" PRIu64 "\n", "  done (output checked)", g_stats.jobs_done.load());
  printf("%-44s %" PRIu64 " (%" PRIu64 " of them because not done by the deadline)\n",
         "  cancelled (output checked)", g_stats.jobs_cancelled.load(),
         g_stats.jobs_cancelled_at_deadline.load());
  printf("%-44s %" PRIu64 "\n", "  deleted mid-way", g_stats.jobs_deleted.load());
  printf("%-44s %" PRIu64 " (%" PRIu64 " cut by a cancel, %" PRIu64
         " refused after cancel, %" PRIu64 " 404 after delete)\n",
         "PUT batches", g_stats.puts.load(), g_stats.puts_cut_by_cancel.load(),
         g_stats.puts_refused_after_cancel.load(), g_stats.puts_404_after_delete.load());
  printf("%-44s %" PRIu64 "\n", "inputs accepted (all jobs)", g_stats.inputs_accepted.load());
  printf("%-44s %" PRIu64 "\n", "inputs of checked jobs", g_stats.inputs_in_checked_jobs.load());
  printf("%-44s %" PRIu64 "\n", "output entries checked", g_stats.outputs_checked.load());
  printf("%-44s %" PRIu64 " (%" PRIu64 " of them garbage kept as a string)\n", "  successes",
         g_stats.successes.load(), g_stats.successes_garbage.load());
  printf("%-44s %" PRIu64 "\n", "  failures (attempts exhausted)", g_stats.failures.load());
  printf("%-44s %" PRIu64 "\n", "  cancelled entries", g_stats.cancelled_entries.load());
  printf("%-44s %" PRIu64 " paged re-reads, %" PRIu64 " waiting readers\n", "other reads",
         g_stats.paged_reads.load(), g_stats.waiting_readers.load());
}

// The webhook's calls by fault, and pmmap's own count of them.
void PrintWebhookFigures(const FaultyWebhook& webhook, const std::string& metrics) {
  printf("%-44s %" PRIu64 "\n", "webhook calls", webhook.total_calls());
  for (int f = 0; f < kFaultCount; ++f)
    printf("  %-42s %" PRIu64 "\n", kFaults[f].name, webhook.calls(f));
  printf("%-44s %" PRIu64 "\n", "webhook restarts", g_stats.webhook_restarts.load());
  printf("%-44s %s\n", "pmmap webhook calls by outcome",
         MetricValues(metrics, "pmmap_webhook_calls_total").c_str());
  printf("%-44s %s\n", "pmmap retries", MetricValues(metrics, "pmmap_retries_total").c_str());
  printf("%-44s %s\n", "pmmap outputs", MetricValues(metrics, "pmmap_outputs_total").c_str());
}

void PrintLatencyDistribution(const std::vector<double>& latencies) {
  const double edges[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1e9};
  size_t counts[10] = {0};
  for (double l : latencies) {
    size_t b = 0;
    while (l >= edges[b] && b < 9) ++b;
    ++counts[b];
  }
  std::string dist;
  double lo = 0;
  for (size_t b = 0; b < 10; ++b) {
    char buf[64];
    if (b == 9) {
      snprintf(buf, sizeof(buf), ">=%.0f:%zu", lo, counts[b]);
    } else {
      snprintf(buf, sizeof(buf), "<%.0f:%zu ", edges[b], counts[b]);
    }
    dist += buf;
    lo = edges[b];
  }
  printf("%-44s %s (ms:count)\n", "healthz latency distribution", dist.c_str());
}

void PrintHealthFigures(const Health& h) {
  const std::vector<double>& l = h.latencies;
  printf("%-44s %zu probes, %zu failed, %zu over %.0f ms\n", "healthz probes", g_probes.size(),
         h.failed, h.slow, kHealthzLimitMs);
  printf("%-44s max %.1f ms; p50 %.1f, p90 %.1f, p99 %.1f, p99.9 %.1f ms\n", "healthz latency",
         l.empty() ? 0 : l.back(), Percentile(l, 0.5), Percentile(l, 0.9), Percentile(l, 0.99),
         Percentile(l, 0.999));
  PrintLatencyDistribution(l);
  printf("%-44s max %.1f ms, at %.1f s (the machine's scheduling delay)\n",
         "prober's own timer lateness", g_prober_late_max_ms, g_prober_late_at_s);
}

// CPU use: on average, and the busiest second of pmmap and of the others.
void PrintCpuFigures(double run_seconds) {
  CpuShares avg = CpuShare(0, run_seconds);
  CpuShares pmmap_max, others_max;
  double pmmap_max_at = 0, others_max_at = 0;
  for (double t = 0; t + 1 <= run_seconds; t += 0.5) {
    CpuShares c = CpuShare(t, t + 1);
    if (c.pmmap > pmmap_max.pmmap) {
      pmmap_max = c;
      pmmap_max_at = t;
    }
    if (c.others > others_max.others) {
      others_max = c;
      others_max_at = t;
    }
  }
  printf("%-44s average: pmmap %.0f%%, soak %.0f%%, other processes %.0f%%\n",
         "CPU (100% = one core)", avg.pmmap, avg.soak, avg.others);
  printf(
      "%-44s pmmap %.0f%% at %.1f s (soak %.0f%%, others %.0f%%); others %.0f%% at %.1f s (pmmap "
      "%.0f%%)\n",
      "  busiest second", pmmap_max.pmmap, pmmap_max_at, pmmap_max.soak, pmmap_max.others,
      others_max.others, others_max_at, others_max.pmmap);
}

void PrintServerFigures(const Outcome& outcome) {
  printf("%-44s start %s, peak %s, end %s\n", "pmmap RSS", Mib(g_res_start.rss_kb).c_str(),
         Mib(g_res_peak.rss_kb).c_str(), Mib(g_res_end.rss_kb).c_str());
  printf("%-44s start %ld, peak %ld, end %ld\n", "pmmap open fds", g_res_start.fds, g_res_peak.fds,
         g_res_end.fds);
  printf("%-44s start %ld, peak %ld, end %ld\n", "pmmap threads", g_res_start.threads,
         g_res_peak.threads, g_res_end.threads);
  printf("%-44s %zu before the final deletes, %zu after\n", "files in the data directory",
         outcome.files_before_final_delete, ListDir(g_data_dir).size());
  printf("%-44s %d\n", "pmmap exit status on SIGTERM", outcome.exit_status);
  std::ifstream load("/proc/loadavg");
  std::string l;
  std::getline(load, l);
  printf("%-44s %s (%u cores)\n", "load average at the end", l.c_str(),
         std::thread::hardware_concurrency());
}

void PrintFigures(const FaultyWebhook& webhook, const Outcome& outcome, const Health& health) {
  printf(
      "\n==================== pmmap soak: %.1f s (jobs created for %.0f s) ====================\n",
      outcome.run_seconds, g_opt.seconds * 0.7);
  PrintJobFigures();
  PrintWebhookFigures(webhook, outcome.metrics);
  PrintHealthFigures(health);
  PrintCpuFigures(outcome.run_seconds);
  PrintServerFigures(outcome);
}

// Every check, in the order the report lists them; each is a category of Problems.
const char* const kChecks[] = {
    "done jobs: one entry per input",
    "success entries carry the webhook's reply",
    "failure entries are well-formed",
    "job counters match the entries",
    "paged output equals the whole output",
    "cancelled jobs: one entry per input",
    "cancel releases a blocked PUT",
    "cancel answers a waiting GET /output",
    "deleted jobs leave nothing behind",
    "delete releases a blocked PUT",
    "delete answers a waiting GET /output",
    "kept jobs keep their file",
    "GET /jobs lists the jobs kept",
    "data directory empty after deleting every job",
    "RSS back near its start",
    "fds back near their start",
    "GET /healthz within 100 ms",
    "pmmap stays up and exits cleanly",
    "webhook restarts on its port",
    "webhook: bad request from pmmap",
    "api: unexpected reply",
};

// Each check's verdict: FAIL, ok, or n/a for the end state's when the
// server is gone.
void PrintChecks(bool server_died) {
  // Checks of the end state cannot run once the server is gone.
  const std::set<std::string> kEndChecks = {"kept jobs keep their file",
                                            "GET /jobs lists the jobs kept",
                                            "data directory empty after deleting every job",
                                            "RSS back near its start", "fds back near their start"};
  printf("\nchecks:\n");
  for (const char* c : kChecks) {
    const char* verdict = g_problems.Count(c) > 0              ? "FAIL"
                          : server_died && kEndChecks.count(c) ? "n/a"
                                                               : "ok";
    printf("  %-4s %s\n", verdict, c);
  }
}

// The problems and the end of pmmap's log if any check failed; removes the
// temporary directory unless kept. Returns main's exit code.
int Conclude(const Outcome& outcome) {
  const bool passed = g_problems.Total() == 0;
  if (!passed) {
    printf("\nproblems:\n");
    g_problems.Print();
    const std::string& log = outcome.log;
    std::string tail = log.size() > 3000 ? log.substr(log.size() - 3000) : log;
    printf("\nthe end of pmmap's log:\n%s\n", tail.c_str());
  }
  if (g_opt.keep) {
    printf("\nkept %s (pmmap.log, data/)\n", g_root.c_str());
  } else {
    RemoveTree(g_root);
  }
  printf("\nsoak: %s\n", passed ? "PASSED" : "FAILED");
  return passed ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (!ParseArgs(argc, argv)) {
    Usage();
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  SetDeadlines();
  PrintSettings();
  if (!MakeDirectories()) return 2;
  std::thread watchdog(Watchdog);

  Servers servers;
  if (!StartServers(&servers)) {
    StopWatchdog(&watchdog);
    servers.webhook.Stop();
    servers.pmmap.Stop(Ms(5000));
    if (!g_opt.keep) RemoveTree(g_root);
    return 2;
  }

  g_phase = "run";
  std::thread prober(ProbeLoop, servers.pmmap.pid());
  Outcome outcome;
  RunClients(&servers, &outcome);
  CheckWhatIsLeft(&servers.pmmap, &outcome);
  g_phase = "measuring the end";
  g_probe_stop = true;
  prober.join();
  if (!outcome.server_died) MeasureEnd(servers.pmmap.pid());
  StopServers(&servers, &outcome);
  StopWatchdog(&watchdog);

  const Health health = CheckHealth();
  PrintFigures(servers.webhook, outcome, health);
  PrintChecks(outcome.server_died);
  return Conclude(outcome);
}

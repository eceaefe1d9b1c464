// pmmap: runs a finite batch of inputs through a caller's webhook with
// bounded concurrency and keeps every reply. This file holds main, the
// command-line flags, the table of jobs, the HTTP routes, and the one
// function that maps a Status to an HTTP status.

#include <httplib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "caller.hpp"
#include "dispatcher.hpp"
#include "http_pool.hpp"
#include "job.hpp"
#include "json.hpp"
#include "log.hpp"
#include "metrics.hpp"
#include "request.hpp"
#include "status.hpp"

namespace {

const char kVersion[] = "pmmap 1.0.0";

// Defaults of the server's flags.
const char kDefaultListen[] = "127.0.0.1:8080";
constexpr size_t kDefaultHttpThreads = 1024;
constexpr size_t kDefaultMaxBody = 32 * 1024 * 1024;
constexpr size_t kDefaultMaxJobs = 10000;
constexpr size_t kDefaultJobTtlSeconds = 24 * 60 * 60;
constexpr size_t kMaxJobTtlSeconds = 100ull * 365 * 24 * 60 * 60;  // "never", without overflow
// How often finished jobs are checked for expiry.
constexpr std::chrono::seconds kExpiryInterval{1};
// On SIGTERM, how long calls in flight may take to finish before they are aborted.
constexpr std::chrono::seconds kShutdownGrace{5};
// Then, how long API connections may take to finish.
constexpr std::chrono::seconds kDrainTimeout{2};
// A kept-alive API connection holds an HTTP thread while it idles, and
// shutdown waits for it: keep the idle time short.
constexpr time_t kKeepAliveSeconds = 3;
constexpr size_t kKeepAliveRequests = 10000;
// A caller reading a large output may pause; give it time before dropping it.
constexpr time_t kWriteTimeoutSeconds = 60;

struct Flags {
  std::string listen = kDefaultListen;
  std::string data_dir;
  size_t http_threads = kDefaultHttpThreads;
  size_t max_body = kDefaultMaxBody;
  size_t max_jobs = kDefaultMaxJobs;
  size_t job_ttl = kDefaultJobTtlSeconds;
  std::string ca_file;
  LogFormat log_format = LogFormat::kText;
};

// The jobs the server knows, by id. Thread-safe (provides internal
// synchronization); the mutex is held to look up and to create a job's
// file, never while a job works or waits.
class JobTable {
 public:
  JobTable(std::string data_dir, size_t max_jobs, Job::WorkerStarter start_worker,
           Job::EndHook on_end)
      : data_dir_(std::move(data_dir)),
        max_jobs_(max_jobs),
        start_worker_(std::move(start_worker)),
        on_end_(std::move(on_end)),
        rng_(std::random_device{}()) {}

  Status Create(JobOptions options, std::shared_ptr<Job>* job) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (shutting_down_) return Status::Unavailable("the server is shutting down");
    if (jobs_.size() >= max_jobs_) {
      return Status::TooMany("the server holds " + std::to_string(jobs_.size()) +
                             " jobs, its limit (--max-jobs): delete finished jobs first");
    }
    std::string id;
    do {
      char buf[17];
      snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(rng_()));
      id = buf;
    } while (jobs_.count(id) > 0);
    bool has_callback = !options.callback_url.empty();
    auto created = std::make_shared<Job>(id, std::move(options), data_dir_ + "/" + id + ".ndjson",
                                         start_worker_);
    if (has_callback) created->SetEndHook(on_end_);
    Status s = created->Open();
    if (!s.ok()) return s;
    jobs_[id] = created;
    order_.push_back(id);
    *job = created;
    return Status::OK();
  }

  std::shared_ptr<Job> Find(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = jobs_.find(id);
    return it == jobs_.end() ? nullptr : it->second;
  }

  std::shared_ptr<Job> Take(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return nullptr;
    std::shared_ptr<Job> job = std::move(it->second);
    jobs_.erase(it);
    order_.erase(std::find(order_.begin(), order_.end(), id));
    return job;
  }

  // Every job, oldest first.
  std::vector<std::shared_ptr<Job>> All() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::shared_ptr<Job>> all;
    for (const std::string& id : order_) all.push_back(jobs_[id]);
    return all;
  }

  // Removes the jobs that ended at or before cutoff.
  void Expire(std::chrono::system_clock::time_point cutoff) {
    for (const auto& job : All()) {
      if (job->EndedBy(cutoff) && Take(job->id())) {
        job->Discard(Job::DiscardReason::kExpired);
        LogJobEvent(job->id(), "expired");
      }
    }
  }

  // Refuses new jobs and stops every job, waking whoever waits on one.
  // Calls in flight go on until AbortAll.
  void Shutdown() {
    std::vector<std::shared_ptr<Job>> all;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      shutting_down_ = true;
      for (auto& entry : jobs_) all.push_back(entry.second);
    }
    for (auto& job : all) job->Discard(Job::DiscardReason::kShutdown);
  }

  void AbortAll() {
    for (auto& job : All()) job->AbandonCalls();
  }

 private:
  const std::string data_dir_;
  const size_t max_jobs_;
  const Job::WorkerStarter start_worker_;
  const Job::EndHook on_end_;

  std::mutex mutex_;
  // State below is protected by mutex_.
  std::mt19937_64 rng_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;
  std::vector<std::string> order_;
  bool shutting_down_ = false;
};

int HttpStatus(const Status& s) {
  switch (s.code()) {
    case Status::kOk:
      return 200;
    case Status::kInvalid:
      return 400;
    case Status::kNotFound:
      return 404;
    case Status::kConflict:
      return 409;
    case Status::kTooLarge:
      return 413;
    case Status::kTooMany:
      return 429;
    case Status::kUnavailable:
      return 503;
    case Status::kInternal:
      return 500;
  }
  return 500;
}

void Reply(httplib::Response& res, int status, std::string json) {
  res.status = status;
  json.push_back('\n');  // so that curl's output ends its line
  res.set_content(json, "application/json");
}

void ReplyError(httplib::Response& res, const Status& s) {
  Reply(res, HttpStatus(s), ErrorJson(s.message()));
}

// Reads the whole request body, whatever its Content-Type says, into *body.
Status ReadBody(const httplib::Request& req, const httplib::ContentReader& reader, size_t max_body,
                std::string* body) {
  // A request with neither header has no body; asking cpp-httplib to read
  // one would wait for the caller to close the connection.
  if (!req.has_header("Content-Length") && !req.has_header("Transfer-Encoding")) {
    return Status::OK();
  }
  bool too_large = false;
  bool ok = reader([&](const char* data, size_t n) {
    if (body->size() + n > max_body) {
      too_large = true;
      return false;
    }
    body->append(data, n);
    return true;
  });
  // cpp-httplib refuses (and skips) a declared length over the limit itself.
  if (!ok && strtoull(req.get_header_value("Content-Length").c_str(), nullptr, 10) > max_body) {
    too_large = true;
  }
  if (too_large) {
    return Status::TooLarge("the body is larger than " + std::to_string(max_body) +
                            " bytes (--max-body)");
  }
  if (!ok) return Status::Invalid("the body could not be read whole");
  return Status::OK();
}

// Routes, and the methods each allows; used to tell 405 from 404.
struct Route {
  const char* pattern;
  const char* methods;
};
const Route kRoutes[] = {
    {R"(/job)", "POST"},
    {R"(/jobs)", "GET"},
    {R"(/job/[^/]+)", "GET, DELETE"},
    {R"(/job/[^/]+/input)", "PUT"},
    {R"(/job/[^/]+/complete)", "POST"},
    {R"(/job/[^/]+/cancel)", "POST"},
    {R"(/job/[^/]+/output)", "GET"},
    {R"(/healthz)", "GET"},
    {R"(/metrics)", "GET"},
};

void InstallRoutes(httplib::Server& server, JobTable& table, const Flags& flags) {
  using httplib::ContentReader;
  using httplib::Request;
  using httplib::Response;
  const size_t max_body = flags.max_body;

  // Looks up the job named in the path, or answers 404.
  auto find = [&table](const Request& req, Response& res) {
    std::shared_ptr<Job> job = table.Find(req.matches[1]);
    if (!job) ReplyError(res, Status::NotFound("no job with id \"" + req.matches[1].str() + "\""));
    return job;
  };

  server.Post(R"(/job)",
              [&table, max_body](const Request& req, Response& res, const ContentReader& reader) {
                std::string body;
                JobOptions options;
                std::shared_ptr<Job> job;
                Status s = ReadBody(req, reader, max_body, &body);
                if (s.ok()) s = ParseJobOptions(body, &options);
                if (s.ok()) s = table.Create(std::move(options), &job);
                if (!s.ok()) return ReplyError(res, s);
                LogJobEvent(job->id(), "created", job->options().url);
                res.set_header("Location", "/job/" + job->id());
                Reply(res, 201, job->ToJson());
              });

  server.Get(R"(/jobs)", [&table](const Request&, Response& res) {
    std::string out = "[";
    for (const auto& job : table.All()) {
      if (out.size() > 1) out.push_back(',');
      out.append(job->ToJson());
    }
    out.push_back(']');
    Reply(res, 200, out);
  });

  server.Get(R"(/job/([^/]+))", [find](const Request& req, Response& res) {
    if (auto job = find(req, res)) Reply(res, 200, job->ToJson());
  });

  server.Delete(R"(/job/([^/]+))", [&table, max_body](const Request& req, Response& res,
                                                      const ContentReader& reader) {
    std::string body;  // ignored, but read so that the connection stays usable
    Status s = ReadBody(req, reader, max_body, &body);
    if (!s.ok()) return ReplyError(res, s);
    std::shared_ptr<Job> job = table.Take(req.matches[1]);
    if (!job)
      return ReplyError(res, Status::NotFound("no job with id \"" + req.matches[1].str() + "\""));
    std::string json = job->ToJson();
    job->Discard(Job::DiscardReason::kDeleted);
    LogJobEvent(job->id(), "deleted");
    Reply(res, 200, json);
  });

  server.Put(R"(/job/([^/]+)/input)",
             [find, max_body](const Request& req, Response& res, const ContentReader& reader) {
               std::string body;
               Status s = ReadBody(req, reader, max_body, &body);
               if (!s.ok()) return ReplyError(res, s);
               std::shared_ptr<Job> job = find(req, res);
               if (!job) return;
               std::vector<Input> inputs;
               s = ParseInputs(body, &inputs);
               body = std::string();  // the inputs hold their own copies now
               if (s.ok()) s = job->Add(std::move(inputs));
               if (!s.ok()) return ReplyError(res, s);
               Reply(res, 201, job->ToJson());
             });

  auto action = [find, max_body](Status (Job::*act)()) {
    return [=](const Request& req, Response& res, const ContentReader& reader) {
      std::string body;  // ignored, but read so that the connection stays usable
      Status s = ReadBody(req, reader, max_body, &body);
      if (!s.ok()) return ReplyError(res, s);
      std::shared_ptr<Job> job = find(req, res);
      if (!job) return;
      s = ((*job).*act)();
      if (!s.ok()) return ReplyError(res, s);
      Reply(res, 200, job->ToJson());
    };
  };
  server.Post(R"(/job/([^/]+)/complete)", action(&Job::Complete));
  server.Post(R"(/job/([^/]+)/cancel)", action(&Job::Cancel));

  server.Get(R"(/job/([^/]+)/output)", [find](const Request& req, Response& res) {
    OutputQuery query;
    Status s = ParseOutputQuery(req.params, req.get_header_value("Accept"), &query);
    if (!s.ok()) return ReplyError(res, s);
    std::shared_ptr<Job> job = find(req, res);
    if (!job) return;
    if (query.wait) {
      // A caller who hangs up before the job ends gives this thread back.
      // Its socket is looked for only once a wait lasts, not on every GET.
      std::unique_ptr<CallerSocket> caller;
      s = job->WaitDone([&] {
        if (!caller) {
          caller.reset(
              new CallerSocket(req.local_addr, req.local_port, req.remote_addr, req.remote_port));
        }
        return caller->HungUp();
      });
    }
    // Read before the entries are counted, so that "done" is never shown
    // over an output that misses some.
    const char* state = JobStateName(job->state());
    std::unique_ptr<OutputReader> opened;
    if (s.ok()) s = job->OpenOutput(query.offset, query.limit, query.format, &opened);
    if (!s.ok()) return ReplyError(res, s);
    std::shared_ptr<OutputReader> reader(std::move(opened));
    auto chunk = std::make_shared<std::string>();
    res.set_header("PMMAP-state", state);
    res.set_chunked_content_provider(
        query.format == OutputReader::kArray ? "application/json" : "application/x-ndjson",
        [reader, chunk](size_t, httplib::DataSink& sink) {
          bool failed = false;
          while (reader->Next(chunk.get(), &failed)) {
            // cpp-httplib takes an empty write for the end of the body.
            if (!chunk->empty()) return sink.write(chunk->data(), chunk->size());
          }
          if (failed) return false;
          sink.done();
          return true;
        });
  });

  server.Get(R"(/healthz)",
             [](const Request&, Response& res) { Reply(res, 200, "{\"status\":\"ok\"}"); });

  server.Get(R"(/metrics)", [&table](const Request&, Response& res) {
    std::map<std::string, uint64_t> jobs_by_state = {
        {"open", 0}, {"closing", 0}, {"done", 0}, {"cancelled", 0}};
    for (const auto& job : table.All()) ++jobs_by_state[JobStateName(job->state())];
    res.set_content(Metrics::Global().Render(jobs_by_state), "text/plain; version=0.0.4");
  });

  // Without these, a POST, PUT, PATCH or DELETE that no route takes would
  // have its body read by cpp-httplib, which waits for the caller to close
  // the connection when the request has no Content-Length.
  auto no_route = [max_body](const Request& req, Response& res, const ContentReader& reader) {
    std::string body;
    ReadBody(req, reader, max_body, &body);
    res.status = 404;  // the error handler says more
  };
  server.Post(".*", no_route);
  server.Put(".*", no_route);
  server.Patch(".*", no_route);
  server.Delete(".*", no_route);

  // Answers what no route did: a JSON error, and 405 for a known path.
  server.set_error_handler(httplib::Server::HandlerWithResponse(
      [](const Request& req, Response& res) -> httplib::Server::HandlerResponse {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        std::string message = "HTTP " + std::to_string(res.status);
        if (res.status == 404) {
          message = "no route " + req.method + " " + req.path;
          static const std::vector<std::regex> patterns = [] {
            std::vector<std::regex> compiled;
            for (const Route& route : kRoutes) compiled.emplace_back(route.pattern);
            return compiled;
          }();
          for (size_t i = 0; i < patterns.size(); ++i) {
            const Route& route = kRoutes[i];
            if (std::regex_match(req.path, patterns[i])) {
              res.status = 405;
              res.set_header("Allow", route.methods);
              message = req.method + " is not allowed on " + req.path +
                        " (allowed: " + route.methods + ")";
              break;
            }
          }
        } else if (res.status == 413) {
          message = "the body is too large";
        }
        res.set_content(ErrorJson(message) + "\n", "application/json");
        return httplib::Server::HandlerResponse::Handled;
      }));
  server.set_exception_handler([](const Request&, Response& res, std::exception_ptr) {
    Reply(res, 500, ErrorJson("internal error"));
  });
}

void PrintHelp() {
  printf(
      "usage: pmmap [flags]\n"
      "\n"
      "Runs finite batches of inputs through webhooks; see README.md for the API.\n"
      "Each flag may also be set by the environment variable shown.\n"
      "\n"
      "  --listen HOST:PORT   address to serve on (PMMAP_LISTEN; default %s)\n"
      "  --data-dir DIR       where job outputs are kept (PMMAP_DATA_DIR;\n"
      "                       default: a fresh folder under $TMPDIR, removed on exit)\n"
      "  --http-threads N     most API connections served at once (PMMAP_HTTP_THREADS;\n"
      "                       default %zu)\n"
      "  --max-body BYTES     largest request body (PMMAP_MAX_BODY; default %zu)\n"
      "  --max-jobs N         most jobs held at once (PMMAP_MAX_JOBS; default %zu)\n"
      "  --job-ttl SECONDS    ended jobs nobody deleted are removed this long after\n"
      "                       they end (PMMAP_JOB_TTL; default %zu)\n"
      "  --ca-file FILE       CA bundle for https webhooks (PMMAP_CA_FILE)\n"
      "  --log-format FORMAT  text or json, one line per event (PMMAP_LOG_FORMAT;\n"
      "                       default text)\n"
      "  --help               print this and exit\n"
      "  --version            print the version and exit\n",
      kDefaultListen, kDefaultHttpThreads, kDefaultMaxBody, kDefaultMaxJobs, kDefaultJobTtlSeconds);
}

bool ParseSize(const std::string& text, size_t low, size_t* out) {
  uint64_t n = 0;
  if (!ParseCount(text, &n) || n < low) return false;
  *out = n;
  return true;
}

// Reads the flags from the environment, then the command line. Returns
// false with a message in *error on a bad one.
bool ParseFlags(int argc, char** argv, Flags* flags, bool* exit_now, std::string* error) {
  struct Spec {
    const char* name;
    const char* env;
    std::function<bool(const std::string&)> set;
  };
  const Spec specs[] = {
      {"--listen", "PMMAP_LISTEN",
       [&](const std::string& v) {
         flags->listen = v;
         return true;
       }},
      {"--data-dir", "PMMAP_DATA_DIR",
       [&](const std::string& v) {
         flags->data_dir = v;
         return !v.empty();
       }},
      {"--http-threads", "PMMAP_HTTP_THREADS",
       [&](const std::string& v) { return ParseSize(v, 1, &flags->http_threads); }},
      {"--max-body", "PMMAP_MAX_BODY",
       [&](const std::string& v) { return ParseSize(v, 1, &flags->max_body); }},
      {"--max-jobs", "PMMAP_MAX_JOBS",
       [&](const std::string& v) { return ParseSize(v, 1, &flags->max_jobs); }},
      {"--job-ttl", "PMMAP_JOB_TTL",
       [&](const std::string& v) {
         return ParseSize(v, 0, &flags->job_ttl) && flags->job_ttl <= kMaxJobTtlSeconds;
       }},
      {"--ca-file", "PMMAP_CA_FILE",
       [&](const std::string& v) {
         flags->ca_file = v;
         return true;
       }},
      {"--log-format", "PMMAP_LOG_FORMAT",
       [&](const std::string& v) {
         if (v != "text" && v != "json") return false;
         flags->log_format = v == "json" ? LogFormat::kJson : LogFormat::kText;
         return true;
       }},
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      PrintHelp();
      *exit_now = true;
      return true;
    }
    if (arg == "--version") {
      printf("%s\n", kVersion);
      *exit_now = true;
      return true;
    }
  }
  for (const Spec& spec : specs) {
    const char* value = getenv(spec.env);
    if (value != nullptr && !spec.set(value)) {
      *error = std::string("bad value for ") + spec.env + ": " + value;
      return false;
    }
  }
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    size_t eq = arg.find('=');
    std::string name = arg.substr(0, eq);
    const Spec* spec = nullptr;
    for (const Spec& s : specs) {
      if (name == s.name) spec = &s;
    }
    if (spec == nullptr) {
      *error = "unknown flag " + arg + " (see --help)";
      return false;
    }
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      *error = name + " needs a value";
      return false;
    }
    if (!spec->set(value)) {
      *error = "bad value for " + name + ": " + value;
      return false;
    }
  }
  return true;
}

// Returns whether any environment variable through which libcurl would
// send calls through a proxy is set.
bool ProxyInEnvironment() {
  static const char* const kNames[] = {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                                       "all_proxy",  "ALL_PROXY",  "no_proxy",    "NO_PROXY"};
  for (const char* name : kNames) {
    if (getenv(name) != nullptr) return true;
  }
  return false;
}

// Returns the CA bundle for https webhooks: libcurl's built-in one if it
// exists, else the first of the usual places that does (a static binary
// may run on a system whose bundle lives elsewhere), else "".
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

bool SplitHostPort(const std::string& listen, std::string* host, int* port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  *host = listen.substr(0, colon);
  if (host->size() > 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  size_t p = 0;
  if (!ParseSize(listen.substr(colon + 1), 0, &p) || p > 65535) return false;
  *port = static_cast<int>(p);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  bool exit_now = false;
  std::string error;
  if (!ParseFlags(argc, argv, &flags, &exit_now, &error)) {
    fprintf(stderr, "pmmap: %s\n", error.c_str());
    return 2;
  }
  if (exit_now) return 0;
  std::string host;
  int port = 0;
  if (!SplitHostPort(flags.listen, &host, &port)) {
    fprintf(stderr, "pmmap: --listen wants HOST:PORT, not %s\n", flags.listen.c_str());
    return 2;
  }

  bool own_data_dir = flags.data_dir.empty();
  if (own_data_dir) {
    const char* tmp = getenv("TMPDIR");
    std::string templ = std::string(tmp != nullptr && *tmp ? tmp : "/tmp") + "/pmmap.XXXXXX";
    if (mkdtemp(&templ[0]) == nullptr) {
      fprintf(stderr, "pmmap: cannot create %s: %s\n", templ.c_str(), strerror(errno));
      return 1;
    }
    flags.data_dir = templ;
  } else if (mkdir(flags.data_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    fprintf(stderr, "pmmap: cannot create %s: %s\n", flags.data_dir.c_str(), strerror(errno));
    return 1;
  }

  // Signals are taken by one thread with sigwait, so block them in every
  // thread; SIGPIPE is blocked so that a vanished peer is an error, not death.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  curl_global_init(CURL_GLOBAL_DEFAULT);

  SetLogFormat(flags.log_format);
  int exit_code = 0;
  {
    Dispatcher::Options dispatch_options;
    dispatch_options.ca_file = flags.ca_file.empty() ? FindCaBundle() : flags.ca_file;
    if (dispatch_options.ca_file.empty()) {
      LogMessage("warning: no CA bundle found; https webhooks will fail (see --ca-file)");
    }
    dispatch_options.max_reply_bytes = flags.max_body;
    dispatch_options.proxy_from_env = ProxyInEnvironment();
    Dispatcher dispatcher(dispatch_options);
    JobTable table(
        flags.data_dir, flags.max_jobs,
        [&dispatcher](std::shared_ptr<Job> job) { return dispatcher.StartWorker(std::move(job)); },
        [&dispatcher](std::shared_ptr<Job> job) {
          return dispatcher.StartCallback(std::move(job));
        });

    httplib::Server server;
    const size_t http_threads = flags.http_threads;
    server.new_task_queue = [http_threads] { return new HttpPool(http_threads); };
    server.set_keep_alive_timeout(kKeepAliveSeconds);
    server.set_keep_alive_max_count(kKeepAliveRequests);
    server.set_write_timeout(kWriteTimeoutSeconds, 0);
    server.set_payload_max_length(flags.max_body);
    InstallRoutes(server, table, flags);

    // cpp-httplib listens with a backlog of 5, so a burst of connections
    // would be dropped: keep the socket and raise the backlog after binding.
    // Its default SO_REUSEPORT would also let a second pmmap share the port
    // unnoticed; SO_REUSEADDR only allows a quick restart. Accepted sockets
    // inherit TCP_NODELAY: cpp-httplib writes a reply's headers and body
    // separately, and Nagle's algorithm would hold the body for the
    // client's delayed ACK, 40 ms a request on a kept-alive connection.
    int listen_fd = -1;
    server.set_socket_options([&listen_fd](int fd) {
      int yes = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
      listen_fd = fd;
    });
    // Port 0 picks a free port; the log line below tells which.
    int bound =
        port == 0 ? server.bind_to_any_port(host) : (server.bind_to_port(host, port) ? port : -1);
    if (bound <= 0) {
      fprintf(stderr, "pmmap: cannot listen on %s: %s\n", flags.listen.c_str(), strerror(errno));
      exit_code = 1;
    } else {
      if (listen_fd >= 0) listen(listen_fd, SOMAXCONN);
      std::mutex stop_mutex;
      std::condition_variable stop_cv;
      bool stopping = false;     // guarded by stop_mutex: a signal came
      bool server_done = false;  // guarded by stop_mutex: listen_after_bind returned

      std::thread signal_thread([&] {
        int sig = 0;
        sigset_t stop_signals;
        sigemptyset(&stop_signals);
        sigaddset(&stop_signals, SIGINT);
        sigaddset(&stop_signals, SIGTERM);
        sigwait(&stop_signals, &sig);
        LogMessage(std::string("stopping on ") + strsignal(sig));
        {
          // Notified under the lock: once main can take it, this thread is
          // done with stop_cv, which main destroys.
          std::lock_guard<std::mutex> lock(stop_mutex);
          stopping = true;
          stop_cv.notify_all();
        }
        // A second signal means now.
        sigwait(&stop_signals, &sig);
        _exit(1);
      });
      signal_thread.detach();  // blocked in sigwait until the process ends

      // Expires old jobs until a signal comes, then runs the shutdown.
      std::thread housekeeper([&] {
        std::unique_lock<std::mutex> lock(stop_mutex);
        while (!stop_cv.wait_for(lock, kExpiryInterval, [&] { return stopping; })) {
          lock.unlock();
          table.Expire(std::chrono::system_clock::now() - std::chrono::seconds(flags.job_ttl));
          lock.lock();
        }
        lock.unlock();
        table.Shutdown();  // answers every waiting caller, removes the files
        server.stop();
        if (!dispatcher.WaitForExit(kShutdownGrace)) {
          LogMessage("aborting webhook calls still in flight");
          table.AbortAll();
        }
        // An API caller that stopped reading holds its connection's thread
        // until the write timeout; its job is gone, so do not wait for it.
        lock.lock();
        if (!stop_cv.wait_for(lock, kDrainTimeout, [&] { return server_done; })) {
          dispatcher.JoinExited();
          if (own_data_dir) rmdir(flags.data_dir.c_str());
          LogMessage("stopped, dropping API connections still open");
          _exit(0);
        }
      });

      std::string shown_host = host.find(':') != std::string::npos ? "[" + host + "]" : host;
      LogMessage("listening on http://" + shown_host + ":" + std::to_string(bound) +
                 " with data in " + flags.data_dir);
      server.listen_after_bind();
      {
        std::lock_guard<std::mutex> lock(stop_mutex);
        stopping = true;  // in case the server stopped by itself
        server_done = true;
      }
      stop_cv.notify_all();
      housekeeper.join();
    }
  }  // joins the dispatcher's threads
  if (own_data_dir) rmdir(flags.data_dir.c_str());
  LogMessage("stopped");
  curl_global_cleanup();
  return exit_code;
}

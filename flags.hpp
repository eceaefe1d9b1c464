// Flags are the server's settings. Each is read from its PMMAP_* environment
// variable, then from the command line, which wins; one table in flags.cpp
// names every flag, its variable, its default and its help line, so that
// parsing and --help cannot drift apart.
//
// Thread-compatible: parsed once by main before any thread starts.

#ifndef PMMAP_FLAGS_HPP_
#define PMMAP_FLAGS_HPP_

#include <cstddef>
#include <string>

#include "journal.hpp"
#include "log.hpp"
#include "net_rules.hpp"

extern const char kVersion[];

// Defaults of the flags, and the limits of their values.
extern const char kDefaultListen[];
// --max-connections by default: half the open-file limit (the other half
// is for job files and webhook connections), within these bounds.
constexpr size_t kMinDefaultMaxConnections = 64;
constexpr size_t kMaxDefaultMaxConnections = 4096;
size_t DefaultMaxConnections();
constexpr size_t kDefaultMaxBody = 32 * 1024 * 1024;
constexpr size_t kDefaultMaxJobs = 10000;
constexpr size_t kDefaultMaxWorkers = 4096;
constexpr size_t kMaxMaxWorkers = 100000;
constexpr size_t kDefaultJobTtlSeconds = 24 * 60 * 60;
constexpr size_t kMaxJobTtlSeconds = 100ull * 365 * 24 * 60 * 60;  // "never", without overflow

struct Flags {
  std::string listen = kDefaultListen;
  std::string host;      // of listen, without brackets around an IPv6 address
  int port = 0;          // of listen; 0 picks a free port
  std::string data_dir;  // empty: a fresh temporary folder, removed on exit; else durable
  FsyncPolicy fsync = FsyncPolicy::kEverySecond;
  size_t max_connections = DefaultMaxConnections();
  size_t http_threads = 0;  // 0: as many as max_connections, so none waits for a thread
  size_t max_body = kDefaultMaxBody;
  size_t max_jobs = kDefaultMaxJobs;
  size_t max_workers = kDefaultMaxWorkers;
  size_t job_ttl_seconds = kDefaultJobTtlSeconds;
  std::string ca_file;  // empty: libcurl's bundle, or the first usual one found
  LogFormat log_format = LogFormat::kText;
  std::string api_token;      // empty: no token is asked for
  bool metrics_open = false;  // GET /metrics needs no token
  NetRules net_rules;         // the defaults, plus --deny-net and --allow-net
};

// What main should do once the flags are read.
enum class FlagsVerdict {
  kRun,    // serve with *flags
  kExit,   // --help or --version was printed: exit 0
  kError,  // *error says which flag or variable was bad: exit 2
};

// Reads the environment, then argv, into *flags.
FlagsVerdict ParseFlags(int argc, char** argv, Flags* flags, std::string* error);

#endif  // PMMAP_FLAGS_HPP_

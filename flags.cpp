#include "flags.hpp"

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "request.hpp"

const char kVersion[] = "pmmap 1.0.0";
const char kDefaultListen[] = "127.0.0.1:8080";

namespace {

// One flag: its name, its environment variable, the word shown for its
// value, its help text (which ends with the default, if it has one) and how
// a value is stored. set returns false if the value is bad.
struct FlagSpec {
  const char* name;
  const char* env;
  const char* value_name;
  std::string help;
  std::function<bool(const std::string& value, Flags* flags)> set;
};

bool ParseSize(const std::string& text, size_t low, size_t high, size_t* out) {
  uint64_t n = 0;
  if (!ParseCount(text, &n) || n < low || n > high) return false;
  *out = n;
  return true;
}

// Splits HOST:PORT, where HOST may be an IPv6 address in brackets.
bool SetListen(const std::string& listen, Flags* flags) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  size_t port = 0;
  if (!ParseSize(listen.substr(colon + 1), 0, 65535, &port)) return false;
  flags->listen = listen;
  flags->host = host;
  flags->port = static_cast<int>(port);
  return true;
}

std::string Default(size_t value) { return " (default " + std::to_string(value) + ")"; }

const std::vector<FlagSpec>& Specs() {
  static const std::vector<FlagSpec> specs = {
      {"--listen", "PMMAP_LISTEN", "HOST:PORT",
       "address to serve on; port 0 picks a free one (default " + std::string(kDefaultListen) + ")",
       SetListen},
      {"--data-dir", "PMMAP_DATA_DIR", "DIR",
       "keep jobs here, durably: they survive a restart (default: a fresh folder under "
       "$TMPDIR, removed on exit, and nothing survives)",
       [](const std::string& v, Flags* f) {
         f->data_dir = v;
         return !v.empty();
       }},
      {"--http-threads", "PMMAP_HTTP_THREADS", "N",
       "most API connections served at once" + Default(kDefaultHttpThreads),
       [](const std::string& v, Flags* f) { return ParseSize(v, 1, SIZE_MAX, &f->http_threads); }},
      {"--max-body", "PMMAP_MAX_BODY", "BYTES", "largest request body" + Default(kDefaultMaxBody),
       [](const std::string& v, Flags* f) { return ParseSize(v, 1, SIZE_MAX, &f->max_body); }},
      {"--max-jobs", "PMMAP_MAX_JOBS", "N", "most jobs held at once" + Default(kDefaultMaxJobs),
       [](const std::string& v, Flags* f) { return ParseSize(v, 1, SIZE_MAX, &f->max_jobs); }},
      {"--job-ttl", "PMMAP_JOB_TTL", "SECONDS",
       "ended jobs nobody deleted are removed this long after they end" +
           Default(kDefaultJobTtlSeconds),
       [](const std::string& v, Flags* f) {
         return ParseSize(v, 0, kMaxJobTtlSeconds, &f->job_ttl_seconds);
       }},
      {"--fsync", "PMMAP_FSYNC", "WHEN",
       "with --data-dir, when accepted inputs reach the disk: everysec (flushed at least once a "
       "second) or always (before PUT answers) (default everysec)",
       [](const std::string& v, Flags* f) {
         if (v != "everysec" && v != "always") return false;
         f->fsync = v == "always" ? FsyncPolicy::kAlways : FsyncPolicy::kEverySecond;
         return true;
       }},
      {"--ca-file", "PMMAP_CA_FILE", "FILE", "CA bundle for https webhooks",
       [](const std::string& v, Flags* f) {
         f->ca_file = v;
         return true;
       }},
      {"--log-format", "PMMAP_LOG_FORMAT", "FORMAT",
       "text or json, one line per event (default text)",
       [](const std::string& v, Flags* f) {
         if (v != "text" && v != "json") return false;
         f->log_format = v == "json" ? LogFormat::kJson : LogFormat::kText;
         return true;
       }},
  };
  return specs;
}

void PrintHelp() {
  printf(
      "usage: pmmap [flags]\n"
      "       pmmap map URL [job flags] < inputs.ndjson > outputs.ndjson  (see pmmap map "
      "--help)\n\n"
      "Runs finite batches of inputs through webhooks; see README.md for the API.\n"
      "Each flag may also be set by the environment variable shown.\n\n");
  for (const FlagSpec& spec : Specs()) {
    std::string usage = std::string(spec.name) + " " + spec.value_name;
    printf("  %-22s %s (%s)\n", usage.c_str(), spec.help.c_str(), spec.env);
  }
  printf("  %-22s %s\n", "--help", "print this and exit");
  printf("  %-22s %s\n", "--version", "print the version and exit");
}

const FlagSpec* FindSpec(const std::string& name) {
  for (const FlagSpec& spec : Specs()) {
    if (name == spec.name) return &spec;
  }
  return nullptr;
}

// Reads "--name value" or "--name=value" at argv[*i], advancing *i past it.
bool ParseArg(int argc, char** argv, int* i, Flags* flags, std::string* error) {
  std::string arg = argv[*i];
  size_t eq = arg.find('=');
  std::string name = arg.substr(0, eq);
  const FlagSpec* spec = FindSpec(name);
  if (spec == nullptr) {
    *error = "unknown flag " + arg + " (see --help)";
    return false;
  }
  std::string value;
  if (eq != std::string::npos) {
    value = arg.substr(eq + 1);
  } else if (*i + 1 < argc) {
    value = argv[++*i];
  } else {
    *error = name + " needs a value";
    return false;
  }
  if (!spec->set(value, flags)) {
    *error = "bad value for " + name + ": " + value;
    return false;
  }
  return true;
}

}  // namespace

FlagsVerdict ParseFlags(int argc, char** argv, Flags* flags, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      PrintHelp();
      return FlagsVerdict::kExit;
    }
    if (arg == "--version") {
      printf("%s\n", kVersion);
      return FlagsVerdict::kExit;
    }
  }
  SetListen(flags->listen, flags);
  for (const FlagSpec& spec : Specs()) {
    const char* value = getenv(spec.env);
    if (value != nullptr && !spec.set(value, flags)) {
      *error = std::string("bad value for ") + spec.env + ": " + value;
      return FlagsVerdict::kError;
    }
  }
  for (int i = 1; i < argc; ++i) {
    if (!ParseArg(argc, argv, &i, flags, error)) return FlagsVerdict::kError;
  }
  return FlagsVerdict::kRun;
}

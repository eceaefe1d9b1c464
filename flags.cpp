#include "flags.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <vector>

#include "request.hpp"

const char kVersion[] = "pmmap 1.0.0";
const char kDefaultListen[] = "127.0.0.1:8080";

namespace {

// How a flag takes its value.
enum class FlagKind {
  kValue,       // --name VALUE; the last one given wins
  kRepeatable,  // --name VALUE, as often as wanted; each adds, and so does
                // the variable's comma-separated list
  kSwitch,      // --name alone means true; the variable says 1/true or 0/false
};

// One flag: its name, its environment variable, the word shown for its
// value, its help text (which ends with the default, if it has one), how it
// takes its value and how a value is stored. set returns false if the
// value is bad.
struct FlagSpec {
  const char* name;
  const char* env;
  const char* value_name;
  std::string help;
  // *why may be set to say more than "bad value".
  std::function<bool(const std::string& value, Flags* flags, std::string* why)> set;
  FlagKind kind = FlagKind::kValue;
};

bool ParseSize(const std::string& text, size_t low, size_t high, size_t* out) {
  uint64_t n = 0;
  if (!ParseCount(text, &n) || n < low || n > high) return false;
  *out = n;
  return true;
}

// Splits HOST:PORT, where HOST may be an IPv6 address in brackets.
bool SetListen(const std::string& listen, Flags* flags, std::string*) {
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

bool ParseSwitch(const std::string& v, bool* out) {
  if (v != "1" && v != "true" && v != "0" && v != "false") return false;
  *out = v == "1" || v == "true";
  return true;
}

// Adds each net of a comma-separated list to the denied or allowed ones.
bool AddNets(const std::string& list, bool deny, Flags* flags, std::string* why) {
  std::stringstream nets(list);
  std::string text;
  bool any = false;
  while (std::getline(nets, text, ',')) {
    Cidr net;
    if (!ParseCidr(text, &net, why)) return false;
    deny ? flags->net_rules.Deny(net) : flags->net_rules.Allow(net);
    any = true;
  }
  return any;
}

// Reads the token from path, without its trailing newline; false, saying
// why, if the file cannot be read or holds no token.
bool ReadTokenFile(const std::string& path, Flags* flags, std::string* why) {
  std::ifstream in(path);
  std::stringstream text;
  if (!in || !(text << in.rdbuf())) {
    *why = "cannot read it";
    return false;
  }
  std::string token = text.str();
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r')) token.pop_back();
  if (token.empty()) *why = "it holds no token";
  flags->api_token = token;
  return !token.empty();
}

const std::vector<FlagSpec>& Specs() {
  static const std::vector<FlagSpec> specs = {
      {"--listen", "PMMAP_LISTEN", "HOST:PORT",
       "address to serve on; port 0 picks a free one (default " + std::string(kDefaultListen) + ")",
       SetListen},
      {"--data-dir", "PMMAP_DATA_DIR", "DIR",
       "keep jobs here, durably: they survive a restart (default: a fresh folder under "
       "$TMPDIR, removed on exit, and nothing survives)",
       [](const std::string& v, Flags* f, std::string*) {
         f->data_dir = v;
         return !v.empty();
       }},
      {"--max-connections", "PMMAP_MAX_CONNECTIONS", "N",
       "most API connections open at once; more are answered 503 and closed (default: half "
       "the open-file limit, from " +
           std::to_string(kMinDefaultMaxConnections) + " to " +
           std::to_string(kMaxDefaultMaxConnections) + "; here " +
           std::to_string(DefaultMaxConnections()) + ")",
       [](const std::string& v, Flags* f, std::string*) {
         return ParseSize(v, 1, SIZE_MAX, &f->max_connections);
       }},
      {"--http-threads", "PMMAP_HTTP_THREADS", "N",
       "most API connections served at once; more wait for a thread (default: as many as "
       "--max-connections)",
       [](const std::string& v, Flags* f, std::string*) {
         return ParseSize(v, 1, SIZE_MAX, &f->http_threads);
       }},
      {"--api-token", "PMMAP_API_TOKEN", "TOKEN",
       "every route but GET /healthz (and GET /, the web page's shell) then needs "
       "\"Authorization: Bearer TOKEN\" (default: none needed)",
       [](const std::string& v, Flags* f, std::string*) {
         f->api_token = v;
         return !v.empty();
       }},
      {"--api-token-file", "PMMAP_API_TOKEN_FILE", "FILE",
       "read --api-token from FILE (its trailing newline dropped), keeping it out of ps",
       ReadTokenFile},
      {"--metrics-open", "PMMAP_METRICS_OPEN", "",
       "GET /metrics needs no token, for scrapers (default off)",
       [](const std::string& v, Flags* f, std::string*) {
         return ParseSwitch(v, &f->metrics_open);
       },
       FlagKind::kSwitch},
      {"--deny-net", "PMMAP_DENY_NET", "CIDR",
       "never call addresses in this net, added to the denied link-local nets " +
           std::string(kDefaultDeniedNets[0]) + " and " + kDefaultDeniedNets[1],
       [](const std::string& v, Flags* f, std::string* why) { return AddNets(v, true, f, why); },
       FlagKind::kRepeatable},
      {"--allow-net", "PMMAP_ALLOW_NET", "CIDR",
       "call addresses in this net even inside a denied one (default none)",
       [](const std::string& v, Flags* f, std::string* why) { return AddNets(v, false, f, why); },
       FlagKind::kRepeatable},
      {"--max-body", "PMMAP_MAX_BODY", "BYTES", "largest request body" + Default(kDefaultMaxBody),
       [](const std::string& v, Flags* f, std::string*) {
         return ParseSize(v, 1, SIZE_MAX, &f->max_body);
       }},
      {"--max-jobs", "PMMAP_MAX_JOBS", "N", "most jobs held at once" + Default(kDefaultMaxJobs),
       [](const std::string& v, Flags* f, std::string*) {
         return ParseSize(v, 1, SIZE_MAX, &f->max_jobs);
       }},
      {"--max-workers", "PMMAP_MAX_WORKERS", "N",
       "most webhook calls in flight across all jobs, shared fairly among them" +
           Default(kDefaultMaxWorkers),
       [](const std::string& v, Flags* f, std::string*) {
         return ParseSize(v, 1, kMaxMaxWorkers, &f->max_workers);
       }},
      {"--job-ttl", "PMMAP_JOB_TTL", "SECONDS",
       "ended jobs nobody deleted are removed this long after they end" +
           Default(kDefaultJobTtlSeconds),
       [](const std::string& v, Flags* f, std::string*) {
         return ParseSize(v, 0, kMaxJobTtlSeconds, &f->job_ttl_seconds);
       }},
      {"--fsync", "PMMAP_FSYNC", "WHEN",
       "with --data-dir, when accepted inputs reach the disk: everysec (flushed at least once a "
       "second) or always (before PUT answers) (default everysec)",
       [](const std::string& v, Flags* f, std::string*) {
         if (v != "everysec" && v != "always") return false;
         f->fsync = v == "always" ? FsyncPolicy::kAlways : FsyncPolicy::kEverySecond;
         return true;
       }},
      {"--ca-file", "PMMAP_CA_FILE", "FILE", "CA bundle for https webhooks",
       [](const std::string& v, Flags* f, std::string*) {
         f->ca_file = v;
         return true;
       }},
      {"--log-format", "PMMAP_LOG_FORMAT", "FORMAT",
       "text or json, one line per event (default text)",
       [](const std::string& v, Flags* f, std::string*) {
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
    std::string usage = spec.name;
    if (spec.kind != FlagKind::kSwitch) usage.append(" ").append(spec.value_name);
    std::string help = spec.help;
    if (spec.kind == FlagKind::kRepeatable) help += "; repeatable, or a comma-separated list";
    printf("  %-22s %s (%s)\n", usage.c_str(), help.c_str(), spec.env);
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
  } else if (spec->kind == FlagKind::kSwitch) {
    value = "true";
  } else if (*i + 1 < argc) {
    value = argv[++*i];
  } else {
    *error = name + " needs a value";
    return false;
  }
  std::string why;
  if (!spec->set(value, flags, &why)) {
    *error = "bad value for " + name + ": " + value + (why.empty() ? "" : " (" + why + ")");
    return false;
  }
  return true;
}

}  // namespace

size_t DefaultMaxConnections() {
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) != 0 || files.rlim_cur == RLIM_INFINITY) {
    return kMaxDefaultMaxConnections;
  }
  return std::clamp<size_t>(files.rlim_cur / 2, kMinDefaultMaxConnections,
                            kMaxDefaultMaxConnections);
}

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
  std::string why;
  SetListen(flags->listen, flags, &why);
  for (const FlagSpec& spec : Specs()) {
    const char* value = getenv(spec.env);
    if (value != nullptr && !spec.set(value, flags, &why)) {
      *error = std::string("bad value for ") + spec.env + ": " + value +
               (why.empty() ? "" : " (" + why + ")");
      return FlagsVerdict::kError;
    }
  }
  for (int i = 1; i < argc; ++i) {
    if (!ParseArg(argc, argv, &i, flags, error)) return FlagsVerdict::kError;
  }
  return FlagsVerdict::kRun;
}

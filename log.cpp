#include "log.hpp"

#include <unistd.h>

#include <chrono>
#include <ctime>

#include "json.hpp"

namespace {

LogFormat g_format = LogFormat::kText;

std::string Now() { return Rfc3339(std::chrono::system_clock::now()); }

// Text lines carry details from callers (keys); escape control characters
// so that a detail can never end its line or forge another.
std::string Escaped(const std::string& detail) {
  std::string out;
  for (unsigned char c : detail) {
    if (c == '\n') {
      out.append("\\n");
    } else if (c == '\r') {
      out.append("\\r");
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      snprintf(buf, sizeof(buf), "\\x%02x", c);
      out.append(buf);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

void Emit(std::string line) {
  line.push_back('\n');
  // One write so that lines from different threads never interleave.
  ssize_t ignored = write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

}  // namespace

std::string Rfc3339(std::chrono::system_clock::time_point t) {
  using namespace std::chrono;
  auto ms = duration_cast<milliseconds>(t.time_since_epoch()).count();
  time_t secs = static_cast<time_t>(ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[64];
  snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
           static_cast<int>(ms % 1000));
  return buf;
}

void SetLogFormat(LogFormat format) { g_format = format; }

void LogMessage(const std::string& message) {
  if (g_format == LogFormat::kSilent) return;
  if (g_format == LogFormat::kText) return Emit(Now() + " pmmap: " + message);
  std::string line = "{\"time\":\"" + Now() + "\",\"message\":";
  AppendJsonString(message, &line);
  Emit(line + "}");
}

void LogJobEvent(const std::string& job_id, const char* event, const std::string& detail) {
  if (g_format == LogFormat::kSilent) return;
  if (g_format == LogFormat::kText) {
    Emit(Now() + " pmmap: job " + job_id + " " + event +
         (detail.empty() ? "" : ": " + Escaped(detail)));
    return;
  }
  std::string line = "{\"time\":\"" + Now() + "\",\"job\":";
  AppendJsonString(job_id, &line);
  line.append(",\"event\":");
  AppendJsonString(event, &line);
  if (!detail.empty()) {
    line.append(",\"detail\":");
    AppendJsonString(detail, &line);
  }
  Emit(line + "}");
}

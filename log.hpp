// One line per event on stderr, as text or as JSON objects (--log-format).
// Thread-safe: each line is written with a single write(2).

#ifndef PMMAP_LOG_HPP_
#define PMMAP_LOG_HPP_

#include <chrono>
#include <string>

enum class LogFormat { kText, kJson, kSilent };  // kSilent: for unit tests

// Returns t as RFC 3339 in UTC with milliseconds: 2026-11-28T07:34:20.123Z.
std::string Rfc3339(std::chrono::system_clock::time_point t);

// Sets the format of every later line. Call before starting threads.
void SetLogFormat(LogFormat format);

// Logs a server-wide message, such as where it listens.
void LogMessage(const std::string& message);

// Logs an event of one job (created, completed, done, cancelled, deleted,
// expired, failure) with an optional detail. Never pass the secret.
void LogJobEvent(const std::string& job_id, const char* event, const std::string& detail = "");

#endif  // PMMAP_LOG_HPP_

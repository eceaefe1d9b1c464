// Parsing at the edge: the bodies and query parameters a caller sends
// become typed, validated structs here, whole, before any job changes. Each
// function returns Status::Invalid with a message that says what was wrong
// and where (a field name, an input's index, a byte offset).

#ifndef PMMAP_REQUEST_HPP_
#define PMMAP_REQUEST_HPP_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "job.hpp"
#include "output.hpp"
#include "status.hpp"

// Limits of the fields of POST /job, checked by ParseJobOptions (job.hpp
// holds their defaults, next to JobOptions' fields).
constexpr int kMaxConcurrency = 1024;
constexpr int64_t kMaxMaxsize = 1000000;
constexpr int64_t kMaxTimeoutMs = 3600000;
constexpr int kMaxMaxAttempts = 100;
constexpr int64_t kMaxBackoffMsLimit = 3600000;  // of backoff_ms and max_backoff_ms
// One call in about 17 minutes: slower rates are surely a mistake.
constexpr double kMinRatePerSec = 0.001;
constexpr double kMaxRatePerSec = 1e6;
constexpr int64_t kMaxMaxOutageMs = 7 * 24 * 3600 * 1000ll;  // a week
// The longest key accepted, in bytes, before percent-encoding.
constexpr size_t kMaxKeyBytes = 1024;

// Parses the body of POST /job.
Status ParseJobOptions(const std::string& body, JobOptions* options);
// Parses the body of POST /job/{id}/redrive: the fields of POST /job, each
// optional, over base (the old job's settings, the secret included); an
// empty body keeps base. The result is checked as ParseJobOptions checks.
Status ParseJobOptionsOver(const std::string& body, const JobOptions& base, JobOptions* options);
// Parses the body of PATCH /job/{id}, an object of some of the settings a
// live job may change (Job::Change), each checked as ParseJobOptions
// checks it (null: the default), into *options; any other field is
// refused, naming it, and *options left unchanged.
Status ParseJobPatch(const std::string& body, JobOptions* options);

// Parses the body of PUT /job/{id}/input: [{"key": "...", "value": ...}, ...].
// Each value is kept as compact JSON, its numbers exactly as written.
Status ParseInputs(const std::string& body, std::vector<Input>* inputs);

// Parses one line of an NDJSON PUT /job/{id}/input, {"key": ..., "value": ...}
// (no newline; not empty), with the checks ParseInputs makes of each input.
Status ParseInputLine(const std::string& line, Input* input);

// ParseInputs' two parsers, apart for tests. The fast one takes the usual
// body, whose keys have no escapes, checking its syntax without decoding;
// it refuses anything else, valid or not (returns false, changes nothing).
// REQUIRES: body is valid UTF-8. The full one, RapidJSON's, judges every
// body and says what is wrong. Where both accept, they give the same inputs.
bool ParseInputsFast(const std::string& body, std::vector<Input>* inputs);
Status ParseInputsFully(const std::string& body, std::vector<Input>* inputs);

struct OutputQuery {
  bool wait = true;
  uint64_t offset = 0;
  uint64_t limit = UINT64_MAX;
  OutputReader::Format format = OutputReader::kArray;
  // ?result=succeeded or failed; offset and limit then count within those.
  OutputReader::Result result = OutputReader::kAll;
};

// Parses the query parameters of GET /job/{id}/output; accept is the
// request's Accept header (application/x-ndjson selects NDJSON).
Status ParseOutputQuery(const std::multimap<std::string, std::string>& params,
                        const std::string& accept, OutputQuery* query);

// Parses a decimal count (digits only, at most 2^64-1) into *out.
bool ParseCount(const std::string& text, uint64_t* out);

// Returns an error message if url is not an absolute http or https URL
// with a host, or an empty string if it is.
std::string CheckWebhookUrl(const std::string& url);

#endif  // PMMAP_REQUEST_HPP_

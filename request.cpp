#include "request.hpp"

#include <curl/curl.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <set>

#include "job_store.hpp"
#include "json.hpp"

namespace {

std::string Quoted(const std::string& s) {
  std::string out;
  AppendJsonString(s, &out);
  return out;
}

// Reads an integer field into *out if it is within [low, high].
bool IntegerIn(const rapidjson::Value& v, int64_t low, int64_t high, int64_t* out) {
  if (!v.IsInt64()) return false;
  int64_t n = v.GetInt64();
  if (n < low || n > high) return false;
  *out = n;
  return true;
}

Status RangeError(const char* field, int64_t low, int64_t high) {
  return Status::Invalid(std::string(field) + ": expected an integer from " + std::to_string(low) +
                         " to " + std::to_string(high));
}

// SAX handler for the body of PUT /job/{id}/input. It checks the shape as
// it goes; each value is copied from the body's text, without whitespace,
// once the parser has checked all of it.
class InputsHandler {
 public:
  // stream reads body; the handler asks it where each value ends.
  // With one_input, the text is a single input object (a line of NDJSON),
  // not an array of them, and messages name it "input".
  InputsHandler(const std::string& body, const rapidjson::StringStream& stream,
                std::vector<Input>* inputs, bool one_input = false)
      : body_(body),
        stream_(stream),
        inputs_(inputs),
        one_input_(one_input),
        where_(one_input ? kList : kStart) {}

  bool Null() { return Scalar(); }
  bool Bool(bool) { return Scalar(); }
  bool Int(int) { return false; }  // unreachable with kParseNumbersAsStringsFlag
  bool Uint(unsigned) { return false; }
  bool Int64(int64_t) { return false; }
  bool Uint64(uint64_t) { return false; }
  bool Double(double) { return false; }
  bool RawNumber(const char*, rapidjson::SizeType, bool) { return Scalar(); }
  bool String(const char* s, rapidjson::SizeType n, bool) {
    if (where_ == kKey) {
      if (n == 0) return Fail(Item() + ".key: must not be empty");
      if (n > kMaxKeyBytes) {
        return Fail(Item() + ".key: longer than " + std::to_string(kMaxKeyBytes) + " bytes");
      }
      if (!IsValidUtf8(s, n))
        return Fail(Item() + ".key: not valid UTF-8 (a lone surrogate escape?)");
      inputs_->back().key.assign(s, n);
      where_ = kItem;
      return true;
    }
    if (where_ == kValue && !IsValidUtf8(s, n)) return BadString();
    return Scalar();
  }
  bool StartObject() {
    if (where_ == kList) {
      inputs_->emplace_back();
      have_key_ = have_value_ = false;
      where_ = kItem;
      return true;
    }
    return Open();
  }
  bool Key(const char* s, rapidjson::SizeType n, bool) {
    if (where_ == kValue) return IsValidUtf8(s, n) || BadString();
    std::string name(s, n);
    if (name == "key") {
      if (have_key_) return Fail(Item() + ": \"key\" is given twice");
      have_key_ = true;
      where_ = kKey;
      return true;
    }
    if (name == "value") {
      if (have_value_) return Fail(Item() + ": \"value\" is given twice");
      have_value_ = true;
      // The value's text starts after the ':' that follows this key. The
      // stream is at or before the key's opening quote (see ScalarEnd),
      // and no ':' can be inside a key that reads "value".
      value_start_ = body_.find(':', stream_.Tell()) + 1;
      where_ = kValue;
      return true;
    }
    return Fail(Item() + ": unknown field " + Quoted(name) +
                " (an input has \"key\" and \"value\")");
  }
  bool EndObject(rapidjson::SizeType) {
    if (where_ == kValue) return Close();
    if (!have_key_) return Fail(Item() + ": missing \"key\"");
    if (!have_value_) return Fail(Item() + ": missing \"value\"");
    where_ = kList;
    return true;
  }
  bool StartArray() {
    if (where_ == kStart) {
      where_ = kList;
      return true;
    }
    return Open();
  }
  bool EndArray(rapidjson::SizeType) {
    if (where_ == kList) {
      where_ = kEnd;
      return true;
    }
    return Close();
  }

  const std::string& error() const { return error_; }

 private:
  enum Where { kStart, kList, kItem, kKey, kValue, kEnd };

  std::string Item() const {
    if (one_input_) return "input";
    return "input[" + std::to_string(inputs_->size() - 1) + "]";
  }

  bool Fail(std::string message) {
    error_ = std::move(message);
    return false;
  }

  // A JSON value that is not where an input's value is.
  bool Misplaced() {
    if (where_ == kKey) return Fail(Item() + ".key: expected a string");
    if (where_ == kList && one_input_) {
      return Fail("expected an object {\"key\": ..., \"value\": ...}");
    }
    if (where_ == kList) {
      return Fail("input[" + std::to_string(inputs_->size()) +
                  "]: expected an object {\"key\": ..., \"value\": ...}");
    }
    return Fail("the body must be a JSON array of {\"key\": ..., \"value\": ...} objects");
  }

  bool BadString() {
    return Fail(Item() + ".value: a string is not valid UTF-8 (a lone surrogate escape?)");
  }

  bool Scalar() {
    if (where_ != kValue) return Misplaced();
    if (depth_ == 0) EndValue(ScalarEnd(value_start_));
    return true;
  }

  // Where the scalar value at or after pos ends. The parser has read it,
  // so the token is valid; but the stream cannot say where it ends:
  // RapidJSON reads strings and numbers through a copy of a StringStream.
  size_t ScalarEnd(size_t pos) const {
    const char* p = SkipJsonSpace(body_.c_str() + pos, body_.c_str() + body_.size());
    size_t start = static_cast<size_t>(p - body_.c_str());
    if (*p == '"') return JsonStringEnd(body_.data(), body_.size(), start);
    // A number, true, false or null. What follows it is not checked yet
    // ("1:" fails only after this call), so stop at the token's end.
    while (isalnum(static_cast<unsigned char>(*p)) || *p == '+' || *p == '-' || *p == '.') ++p;
    return static_cast<size_t>(p - body_.c_str());
  }

  bool Open() {
    if (where_ != kValue) return Misplaced();
    // The list and the input object are two levels above the value.
    if (++depth_ + 2 > kMaxJsonDepth) {
      return Fail(Item() + ".value: nested deeper than " + std::to_string(kMaxJsonDepth) +
                  " levels");
    }
    return true;
  }

  bool Close() {
    // The parser calls this just before it reads the closing bracket,
    // from its own stream, not a copy.
    if (--depth_ == 0) EndValue(stream_.Tell() + 1);
    return true;
  }

  void EndValue(size_t end) {
    AppendWithoutSpace(body_.data() + value_start_, end - value_start_, &inputs_->back().value);
    where_ = kItem;
  }

  const std::string& body_;
  const rapidjson::StringStream& stream_;
  std::vector<Input>* inputs_;
  const bool one_input_;
  Where where_;
  int depth_ = 0;  // nesting inside the current value
  size_t value_start_ = 0;
  bool have_key_ = false;
  bool have_value_ = false;
  std::string error_;
};

bool ParseBool(const std::string& s, bool* out) {
  if (s == "true" || s == "1") {
    *out = true;
  } else if (s == "false" || s == "0") {
    *out = false;
  } else {
    return false;
  }
  return true;
}

}  // namespace

bool ParseCount(const std::string& text, uint64_t* out) {
  if (text.empty() || text.size() > 20 ||
      text.find_first_not_of("0123456789") != std::string::npos) {
    return false;
  }
  errno = 0;
  unsigned long long n = strtoull(text.c_str(), nullptr, 10);
  if (errno == ERANGE) return false;
  *out = n;
  return true;
}

std::string CheckWebhookUrl(const std::string& url) {
  for (unsigned char c : url) {
    if (c <= ' ' || c == 0x7F) return "url: contains a space or control character";
  }
  // libcurl would read "http:/h" and "http:///h" as host h; require "//host".
  size_t authority = url.find("://");
  if (authority == std::string::npos || authority + 3 >= url.size() || url[authority + 3] == '/') {
    return "url: " + Quoted(url) + " is not an absolute URL such as \"http://host/path\"";
  }
  CURLU* parsed = curl_url();
  if (parsed == nullptr) return "url: out of memory";
  std::string error;
  CURLUcode rc = curl_url_set(parsed, CURLUPART_URL, url.c_str(), 0);
  char* scheme = nullptr;
  char* host = nullptr;
  if (rc != CURLUE_OK) {
    error = "url: " + Quoted(url) + " is not an absolute URL (" + curl_url_strerror(rc) + ")";
  } else if (curl_url_get(parsed, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
             (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)) {
    error = "url: the scheme must be http or https";
  } else if (curl_url_get(parsed, CURLUPART_HOST, &host, 0) != CURLUE_OK || host[0] == '\0') {
    error = "url: has no host";
  }
  curl_free(scheme);
  curl_free(host);
  curl_url_cleanup(parsed);
  return error;
}

namespace {

// Parses body, which must be one JSON object, into *doc.
Status ParseJobObject(const std::string& body, rapidjson::Document* doc) {
  if (body.empty())
    return Status::Invalid("the body is empty: expected {\"url\": \"http://host/path\", ...}");
  if (!JsonDepthWithin(body.data(), body.size(), kMaxJsonDepth)) {
    return Status::Invalid("body: nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  }
  size_t nul = body.find('\0');
  if (nul != std::string::npos) {
    return Status::Invalid("body is not valid JSON: unexpected NUL byte at offset " +
                           std::to_string(nul));
  }
  doc->Parse<rapidjson::kParseValidateEncodingFlag>(body.data(), body.size());
  if (doc->HasParseError()) {
    return Status::Invalid(std::string("body is not valid JSON: ") +
                           rapidjson::GetParseError_En(doc->GetParseError()) + " at offset " +
                           std::to_string(doc->GetErrorOffset()));
  }
  if (!doc->IsObject()) {
    return Status::Invalid(
        "the body must be a JSON object such as {\"url\": \"http://host/path\"}");
  }
  return Status::OK();
}

// Stores the string field name, a URL, in *url.
Status ParseUrlField(const std::string& name, const rapidjson::Value& v, std::string* url) {
  if (!v.IsString()) return Status::Invalid(name + ": expected a string");
  url->assign(v.GetString(), v.GetStringLength());
  std::string error = CheckWebhookUrl(*url);
  // CheckWebhookUrl names the field "url"; callback_url's errors say which.
  if (!error.empty()) return Status::Invalid(name == "url" ? error : "callback_" + error);
  return Status::OK();
}

Status ParseSecret(const rapidjson::Value& v, std::string* secret) {
  if (!v.IsString()) return Status::Invalid("secret: expected a string");
  secret->assign(v.GetString(), v.GetStringLength());
  // It goes into a header line: a line break would forge other headers.
  for (unsigned char c : *secret) {
    if (c < 0x20 || c == 0x7F)
      return Status::Invalid("secret: must not contain control characters");
  }
  return Status::OK();
}

// Stores the integer field name, which must lie in [low, high], in *out.
template <typename Int>
Status ParseIntField(const char* name, const rapidjson::Value& v, int64_t low, int64_t high,
                     Int* out) {
  int64_t n = 0;
  if (!IntegerIn(v, low, high, &n)) return RangeError(name, low, high);
  *out = static_cast<Int>(n);
  return Status::OK();
}

// Stores the value v of the field name in *parsed. v is not null.
Status ParseJobField(const std::string& name, const rapidjson::Value& v, JobOptions* parsed) {
  if (name == "url") return ParseUrlField(name, v, &parsed->url);
  if (name == "callback_url") return ParseUrlField(name, v, &parsed->callback_url);
  if (name == "secret") return ParseSecret(v, &parsed->secret);
  if (name == "concurrency") {
    return ParseIntField("concurrency", v, 1, kMaxConcurrency, &parsed->concurrency);
  }
  if (name == "maxsize") return ParseIntField("maxsize", v, 1, kMaxMaxsize, &parsed->maxsize);
  if (name == "timeout_ms") {
    return ParseIntField("timeout_ms", v, 1, kMaxTimeoutMs, &parsed->timeout_ms);
  }
  if (name == "max_attempts") {
    return ParseIntField("max_attempts", v, 1, kMaxMaxAttempts, &parsed->max_attempts);
  }
  if (name == "backoff_ms") {
    return ParseIntField("backoff_ms", v, 0, kMaxBackoffMsLimit, &parsed->backoff_ms);
  }
  if (name == "max_backoff_ms") {
    return ParseIntField("max_backoff_ms", v, 0, kMaxBackoffMsLimit, &parsed->max_backoff_ms);
  }
  if (name == "rate_per_sec") {
    if (!v.IsNumber() || v.GetDouble() < kMinRatePerSec || v.GetDouble() > kMaxRatePerSec) {
      return Status::Invalid("rate_per_sec: expected a number from 0.001 to " +
                             std::to_string(static_cast<int64_t>(kMaxRatePerSec)));
    }
    parsed->rate_per_sec = v.GetDouble();
    return Status::OK();
  }
  if (name == "max_outage_ms") {
    return ParseIntField("max_outage_ms", v, 0, kMaxMaxOutageMs, &parsed->max_outage_ms);
  }
  if (name == "adaptive") {
    if (!v.IsBool()) return Status::Invalid("adaptive: expected true or false");
    parsed->adaptive = v.GetBool();
    return Status::OK();
  }
  return Status::Invalid("unknown field " + Quoted(name));
}

// The fields PATCH /job/{id} may change.
const char* const kLiveFields[] = {"concurrency", "rate_per_sec",   "timeout_ms",    "max_attempts",
                                   "backoff_ms",  "max_backoff_ms", "max_outage_ms", "adaptive"};

// Sets the live field name of *to to its value in from.
void CopyLiveField(const std::string& name, const JobOptions& from, JobOptions* to) {
  if (name == "concurrency") to->concurrency = from.concurrency;
  if (name == "rate_per_sec") to->rate_per_sec = from.rate_per_sec;
  if (name == "timeout_ms") to->timeout_ms = from.timeout_ms;
  if (name == "max_attempts") to->max_attempts = from.max_attempts;
  if (name == "backoff_ms") to->backoff_ms = from.backoff_ms;
  if (name == "max_backoff_ms") to->max_backoff_ms = from.max_backoff_ms;
  if (name == "max_outage_ms") to->max_outage_ms = from.max_outage_ms;
  if (name == "adaptive") to->adaptive = from.adaptive;
}

}  // namespace

Status ParseJobOptions(const std::string& body, JobOptions* options) {
  rapidjson::Document doc;
  Status s = ParseJobObject(body, &doc);
  if (!s.ok()) return s;
  JobOptions parsed;
  std::set<std::string> seen;
  for (const auto& member : doc.GetObject()) {
    std::string name(member.name.GetString(), member.name.GetStringLength());
    const rapidjson::Value& v = member.value;
    if (!seen.insert(name).second) return Status::Invalid(name + ": given twice");
    if (v.IsNull() && name != "url") continue;  // null means the default
    s = ParseJobField(name, v, &parsed);
    if (!s.ok()) return s;
  }
  if (seen.count("url") == 0) {
    return Status::Invalid("url: missing (the webhook, such as \"http://host/path\")");
  }
  *options = std::move(parsed);
  return Status::OK();
}

Status ParseJobOptionsOver(const std::string& body, const JobOptions& base, JobOptions* options) {
  rapidjson::Document doc;
  const char* end = body.data() + body.size();
  if (SkipJsonSpace(body.data(), end) == end) {
    doc.SetObject();
  } else {
    Status s = ParseJobObject(body, &doc);
    if (!s.ok()) return s;
  }
  // Each field the body leaves out is base's; ParseJobOptions judges all.
  rapidjson::Document old;
  old.Parse(JobOptionsJson(base).c_str());
  for (auto& member : old.GetObject()) {
    if (!doc.HasMember(member.name)) {
      doc.AddMember(rapidjson::Value(member.name, doc.GetAllocator()),
                    rapidjson::Value(member.value, doc.GetAllocator()), doc.GetAllocator());
    }
  }
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  doc.Accept(writer);
  return ParseJobOptions(std::string(buffer.GetString(), buffer.GetSize()), options);
}

Status ParseJobPatch(const std::string& body, JobOptions* options) {
  rapidjson::Document doc;
  Status s = ParseJobObject(body, &doc);
  if (!s.ok()) return s;
  JobOptions patched = *options;
  std::set<std::string> seen;
  for (const auto& member : doc.GetObject()) {
    std::string name(member.name.GetString(), member.name.GetStringLength());
    if (std::find(std::begin(kLiveFields), std::end(kLiveFields), name) == std::end(kLiveFields)) {
      return Status::Invalid(Quoted(name) +
                             " cannot be changed on a live job; these can: concurrency, "
                             "rate_per_sec, timeout_ms, max_attempts, backoff_ms, "
                             "max_backoff_ms, max_outage_ms, adaptive");
    }
    if (!seen.insert(name).second) return Status::Invalid(name + ": given twice");
    if (member.value.IsNull()) {
      CopyLiveField(name, JobOptions(), &patched);
      continue;
    }
    s = ParseJobField(name, member.value, &patched);
    if (!s.ok()) return s;
  }
  *options = std::move(patched);
  return Status::OK();
}

bool ParseInputsFast(const std::string& body, std::vector<Input>* inputs) {
  const char* p = body.data();
  const char* end = p + body.size();
  std::vector<Input> parsed;
  p = SkipJsonSpace(p, end);
  if (p == end || *p != '[') return false;
  // The list and the input object are two levels above a value.
  const int max_value_depth = kMaxJsonDepth - 2;
  for (;;) {
    p = SkipJsonSpace(p + 1, end);  // past '[' or ','
    if (p == end || *p != '{') return false;
    Input& input = parsed.emplace_back();
    bool have_key = false;
    bool have_value = false;
    for (;;) {
      p = SkipJsonSpace(p + 1, end);  // past '{' or ','
      if (end - p >= 6 && memcmp(p, "\"key\"", 5) == 0 && !have_key) {
        p = SkipJsonSpace(p + 5, end);
        if (p == end || *p != ':') return false;
        p = SkipJsonSpace(p + 1, end);
        if (p == end || *p != '"') return false;
        // A key without escapes is its own text; others take decoding.
        const char* key = ++p;
        while (p < end && *p != '"' && *p != '\\' && static_cast<unsigned char>(*p) >= 0x20) ++p;
        if (p == end || *p != '"' || p == key || static_cast<size_t>(p - key) > kMaxKeyBytes) {
          return false;
        }
        input.key.assign(key, p - key);
        ++p;
        have_key = true;
      } else if (end - p >= 8 && memcmp(p, "\"value\"", 7) == 0 && !have_value) {
        p = SkipJsonSpace(p + 7, end);
        if (p == end || *p != ':') return false;
        p = AppendJsonValueFast(p + 1, end, max_value_depth, &input.value);
        if (p == nullptr) return false;
        have_value = true;
      } else {
        return false;
      }
      p = SkipJsonSpace(p, end);
      if (p == end || (*p != ',' && *p != '}')) return false;
      if (*p == '}') break;
    }
    if (!have_key || !have_value) return false;
    p = SkipJsonSpace(p + 1, end);  // past '}'
    if (p == end || (*p != ',' && *p != ']')) return false;
    if (*p == ']') break;
  }
  if (SkipJsonSpace(p + 1, end) != end) return false;
  *inputs = std::move(parsed);
  return true;
}

Status ParseInputs(const std::string& body, std::vector<Input>* inputs) {
  if (IsValidUtf8(body.data(), body.size()) && ParseInputsFast(body, inputs)) return Status::OK();
  return ParseInputsFully(body, inputs);
}

namespace {

// ParseInputsFully and ParseInputLine: RapidJSON's judgement of text, an
// array of inputs or, if one_input, one input; what names text in messages.
Status ParseInputsWithHandler(const std::string& text, bool one_input, const char* what,
                              std::vector<Input>* inputs) {
  size_t valid = Utf8PrefixLength(text.data(), text.size());
  if (valid < text.size()) {
    return Status::Invalid(std::string(what) + " is not valid JSON: invalid UTF-8 at offset " +
                           std::to_string(valid));
  }
  std::vector<Input> parsed;
  rapidjson::Reader reader;
  rapidjson::StringStream stream(text.c_str());
  InputsHandler handler(text, stream, &parsed, one_input);
  rapidjson::ParseResult result = reader.Parse<kUtf8ParseFlags>(stream, handler);
  if (!handler.error().empty()) return Status::Invalid(handler.error());
  if (!result) {
    return Status::Invalid(std::string(what) +
                           " is not valid JSON: " + rapidjson::GetParseError_En(result.Code()) +
                           " at offset " + std::to_string(result.Offset()));
  }
  if (stream.Tell() != text.size()) {
    // The stream reads a NUL byte as the end of the text; JSON has none.
    return Status::Invalid(std::string(what) +
                           " is not valid JSON: unexpected NUL byte at offset " +
                           std::to_string(stream.Tell()));
  }
  *inputs = std::move(parsed);
  return Status::OK();
}

}  // namespace

Status ParseInputsFully(const std::string& body, std::vector<Input>* inputs) {
  if (body.empty())
    return Status::Invalid("the body is empty: expected [{\"key\": ..., \"value\": ...}, ...]");
  return ParseInputsWithHandler(body, /*one_input=*/false, "body", inputs);
}

Status ParseInputLine(const std::string& line, Input* input) {
  // The usual line takes the fast parser, as the one input of an array.
  std::string wrapped;
  wrapped.reserve(line.size() + 2);
  wrapped.append("[").append(line).append("]");
  std::vector<Input> parsed;
  if (IsValidUtf8(wrapped.data(), wrapped.size()) && ParseInputsFast(wrapped, &parsed) &&
      parsed.size() == 1) {
    *input = std::move(parsed[0]);
    return Status::OK();
  }
  // Anything else is judged alone, so that messages say where in the line.
  Status s = ParseInputsWithHandler(line, /*one_input=*/true, "the line", &parsed);
  if (!s.ok()) return s;
  *input = std::move(parsed[0]);
  return Status::OK();
}

Status ParseOutputQuery(const std::multimap<std::string, std::string>& params,
                        const std::string& accept, OutputQuery* query) {
  OutputQuery parsed;
  bool format_given = false;
  for (const auto& param : params) {
    const std::string& name = param.first;
    const std::string& value = param.second;
    if (params.count(name) > 1) return Status::Invalid("query parameter " + name + ": given twice");
    if (name == "wait") {
      if (!ParseBool(value, &parsed.wait)) return Status::Invalid("wait: expected true or false");
    } else if (name == "offset") {
      if (!ParseCount(value, &parsed.offset))
        return Status::Invalid("offset: expected a count (0 or more)");
    } else if (name == "limit") {
      if (!ParseCount(value, &parsed.limit))
        return Status::Invalid("limit: expected a count (0 or more)");
    } else if (name == "format") {
      if (value == "json") {
        parsed.format = OutputReader::kArray;
      } else if (value == "ndjson") {
        parsed.format = OutputReader::kNdjson;
      } else {
        return Status::Invalid("format: expected json or ndjson");
      }
      format_given = true;
    } else if (name == "result") {
      if (value == "succeeded") {
        parsed.result = OutputReader::kSucceeded;
      } else if (value == "failed") {
        parsed.result = OutputReader::kFailed;
      } else {
        return Status::Invalid("result: expected succeeded or failed");
      }
    } else {
      return Status::Invalid("unknown query parameter " + Quoted(name) +
                             " (known: wait, offset, limit, format, result)");
    }
  }
  if (!format_given && accept.find("application/x-ndjson") != std::string::npos) {
    parsed.format = OutputReader::kNdjson;
  }
  *query = parsed;
  return Status::OK();
}

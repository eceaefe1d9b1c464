// JSON helpers shared by the request parser and the dispatcher. They read
// untrusted bytes: every one validates UTF-8, bounds the nesting depth (so a
// hostile body cannot exhaust the stack) and never throws.
//
// Numbers are copied as the text the caller wrote, never rounded through a
// double, so a value or a reply passes through pmmap byte-exact apart from
// insignificant whitespace.

#ifndef PMMAP_JSON_HPP_
#define PMMAP_JSON_HPP_

#include <rapidjson/reader.h>
#include <rapidjson/writer.h>

#include <cstddef>
#include <string>

// The deepest nesting of arrays and objects pmmap accepts anywhere.
constexpr int kMaxJsonDepth = 128;

// Appends the compact form of the JSON text [data, data+size) to *out.
// Returns false, with the reason and byte offset in *error, if the text is
// not valid JSON, not valid UTF-8, or nested deeper than kMaxJsonDepth;
// *out may then hold a partial value and should be discarded.
bool AppendCompactJson(const char* data, size_t size, std::string* out, std::string* error);

// Does what AppendCompactJson does, without the reason for a failure, and
// keeps its parser's and writer's stacks from one text to the next, so
// that compacting many small texts (a worker's replies) allocates nothing.
// Not thread-safe.
class JsonCompactor {
 public:
  JsonCompactor();
  ~JsonCompactor();
  JsonCompactor(const JsonCompactor&) = delete;
  JsonCompactor& operator=(const JsonCompactor&) = delete;

  bool Append(const char* data, size_t size, std::string* out);

 private:
  struct Parts;
  Parts* parts_;
};

// Appends the bytes [data, data+size) to *out as a quoted JSON string.
// Invalid UTF-8 sequences become U+FFFD, so the output is always valid JSON.
void AppendJsonString(const char* data, size_t size, std::string* out);
inline void AppendJsonString(const std::string& s, std::string* out) {
  AppendJsonString(s.data(), s.size(), out);
}

// Returns true if the JSON text nests arrays and objects no deeper than
// max_depth. Strings are skipped correctly; other syntax is not checked.
bool JsonDepthWithin(const char* data, size_t size, int max_depth);

// A RapidJSON output stream that appends to a std::string.
struct StringSink {
  typedef char Ch;
  explicit StringSink(std::string* s) : out(s) {}
  void Put(char c) { out->push_back(c); }
  void Flush() {}
  std::string* out;
};

// Writes compact JSON, refusing strings that are not valid UTF-8: the
// parser validates raw bytes, but RapidJSON 1.1.0 turns an escaped lone low
// surrogate ("\udc00") into bytes that are not UTF-8.
using CompactWriter = rapidjson::Writer<StringSink, rapidjson::UTF8<>, rapidjson::UTF8<>,
                                        rapidjson::CrtAllocator, rapidjson::kWriteValidateEncodingFlag>;

// Returns true if [data, data+size) is valid UTF-8.
bool IsValidUtf8(const char* data, size_t size);

// The RapidJSON reader flags pmmap parses untrusted JSON with: no recursion,
// numbers kept as their text, UTF-8 validated.
constexpr unsigned kUntrustedParseFlags = rapidjson::kParseIterativeFlag |
                                         rapidjson::kParseNumbersAsStringsFlag |
                                         rapidjson::kParseValidateEncodingFlag;

// Returns {"error": message} as compact JSON.
std::string ErrorJson(const std::string& message);

#endif  // PMMAP_JSON_HPP_

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

#include <cstddef>
#include <string>

// The deepest nesting of arrays and objects pmmap accepts anywhere.
constexpr int kMaxJsonDepth = 128;

// Appends the compact form of the JSON text [data, data+size) to *out: the
// text itself without the whitespace between its tokens, so that numbers
// and escapes stay as written. Returns false, with the reason and byte
// offset in *error, if the text is not valid JSON, not valid UTF-8, has a
// string whose escapes decode to invalid UTF-8 (a lone surrogate), or
// nests deeper than kMaxJsonDepth; *out is then unchanged.
bool AppendCompactJson(const char* data, size_t size, std::string* out, std::string* error);

// Does what AppendCompactJson does (error may be null), keeping its
// parser's stack from one text to the next, so that compacting many small
// texts (a worker's replies) allocates nothing. Not thread-safe.
class JsonCompactor {
 public:
  JsonCompactor();
  ~JsonCompactor();
  JsonCompactor(const JsonCompactor&) = delete;
  JsonCompactor& operator=(const JsonCompactor&) = delete;

  bool Append(const char* data, size_t size, std::string* out, std::string* error);

 private:
  struct Parts;
  Parts* parts_;
};

// Whether c is whitespace between JSON tokens.
inline bool IsJsonSpace(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

// Returns p advanced past any JSON whitespace, at most to end.
inline const char* SkipJsonSpace(const char* p, const char* end) {
  while (p < end && IsJsonSpace(*p)) ++p;
  return p;
}

// Checks the syntax of the JSON value that starts at p (after any
// whitespace) without decoding it, several times faster than RapidJSON, and
// returns the end of the value. Returns nullptr if the value is not valid
// JSON, nests more than max_depth arrays and objects, holds a \u escape of
// a surrogate (judging it takes decoding) or a number that RapidJSON may
// find too large for a double. So it may refuse valid JSON
// but never accepts invalid: callers fall back to RapidJSON, which gives
// the verdict and says what is wrong. If has_space is not null, it is set
// to whether there is whitespace between the value's tokens: if not, the
// value's text is already compact.
// REQUIRES: [p, end) is valid UTF-8.
const char* SkipJsonValue(const char* p, const char* end, int max_depth, bool* has_space = nullptr);

// Checks the value at p as SkipJsonValue does and appends its compact form
// to *out (one copy when it has no whitespace inside). Returns the value's
// end, or nullptr with *out unchanged.
const char* AppendJsonValueFast(const char* p, const char* end, int max_depth, std::string* out);

// Returns the offset just past the JSON string that starts with the quote
// at data[at], escapes included; at most size.
size_t JsonStringEnd(const char* data, size_t size, size_t at);

// Appends valid JSON text without the whitespace between its tokens.
// REQUIRES: [data, data+size) is valid JSON (strings are not checked).
void AppendWithoutSpace(const char* data, size_t size, std::string* out);

// Appends the bytes [data, data+size) to *out as a quoted JSON string.
// Invalid UTF-8 sequences become U+FFFD, so the output is always valid JSON.
void AppendJsonString(const char* data, size_t size, std::string* out);
inline void AppendJsonString(const std::string& s, std::string* out) {
  AppendJsonString(s.data(), s.size(), out);
}

// Returns true if the JSON text nests arrays and objects no deeper than
// max_depth. Strings are skipped correctly; other syntax is not checked.
bool JsonDepthWithin(const char* data, size_t size, int max_depth);

// Returns the length of the longest prefix of [data, data+size) that is
// valid UTF-8: size if all of it is.
size_t Utf8PrefixLength(const char* data, size_t size);
inline bool IsValidUtf8(const char* data, size_t size) {
  return Utf8PrefixLength(data, size) == size;
}

// The RapidJSON reader flags pmmap parses untrusted JSON with, once
// Utf8PrefixLength has checked its bytes (eight ASCII bytes at a time,
// where RapidJSON would check each character): no recursion, numbers kept
// as their text.
constexpr unsigned kUtf8ParseFlags =
    rapidjson::kParseIterativeFlag | rapidjson::kParseNumbersAsStringsFlag;

// Returns {"error": message} as compact JSON.
std::string ErrorJson(const std::string& message);

#endif  // PMMAP_JSON_HPP_

#include "json.hpp"

#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

// Checks what RapidJSON's reader does not, in text already known to be
// UTF-8: the nesting depth, and that every string decodes to UTF-8
// (RapidJSON 1.1.0 turns an escaped lone surrogate such as "\udc00" into
// bytes that are not). Writes nothing: the compact form of valid text is
// the text without its whitespace.
class CheckHandler : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, CheckHandler> {
 public:
  enum Problem { kNone, kTooDeep, kBadString };

  void Reset() {
    depth_ = 0;
    problem_ = kNone;
  }
  Problem problem() const { return problem_; }

  bool Default() { return true; }
  bool RawNumber(const char*, rapidjson::SizeType, bool) { return true; }
  bool String(const char* s, rapidjson::SizeType n, bool) { return CheckString(s, n); }
  bool Key(const char* s, rapidjson::SizeType n, bool) { return CheckString(s, n); }
  bool StartObject() { return Open(); }
  bool EndObject(rapidjson::SizeType) { return Close(); }
  bool StartArray() { return Open(); }
  bool EndArray(rapidjson::SizeType) { return Close(); }

 private:
  bool CheckString(const char* s, size_t n) {
    if (IsValidUtf8(s, n)) return true;
    problem_ = kBadString;
    return false;
  }
  bool Open() {
    if (++depth_ <= kMaxJsonDepth) return true;
    problem_ = kTooDeep;
    return false;
  }
  bool Close() {
    --depth_;
    return true;
  }

  int depth_ = 0;
  Problem problem_ = kNone;
};

// Returns the length of the valid UTF-8 sequence at p (at most n bytes), or 0.
size_t Utf8SequenceLength(const unsigned char* p, size_t n) {
  unsigned char c = p[0];
  size_t len;
  unsigned min;
  unsigned cp;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) {
    len = 2;
    min = 0x80;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3;
    min = 0x800;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4;
    min = 0x10000;
    cp = c & 0x07;
  } else
    return 0;
  if (len > n) return 0;
  for (size_t i = 1; i < len; ++i) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

bool IsHexDigit(char c) { return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

constexpr uint64_t kEveryByte = 0x0101010101010101ULL;

// True if a byte of word is below n, which is at most 0x80: the classic bit
// trick, exact as to whether any byte is (a borrow may mark more bytes, but
// only above one that is).
bool HasByteBelow(uint64_t word, unsigned char n) {
  return ((word - kEveryByte * n) & ~word & (kEveryByte * 0x80)) != 0;
}

// True if a byte of word is c.
bool HasByte(uint64_t word, char c) {
  return HasByteBelow(word ^ (kEveryByte * static_cast<unsigned char>(c)), 1);
}

// Returns the end of the JSON string that starts with the quote at p, or
// nullptr (see SkipJsonValue).
const char* SkipString(const char* p, const char* end) {
  for (++p; p < end; ++p) {
    // Skip eight plain bytes at a time: none a quote, a backslash or a
    // control character.
    uint64_t word;
    while (end - p >= 8 && (memcpy(&word, p, 8), !HasByteBelow(word, 0x20)) &&
           !HasByte(word, '"') && !HasByte(word, '\\')) {
      p += 8;
    }
    if (p == end) break;
    unsigned char c = static_cast<unsigned char>(*p);
    if (c == '"') return p + 1;
    if (c < 0x20) return nullptr;
    if (c != '\\') continue;
    if (++p == end) return nullptr;
    switch (*p) {
      case '"':
      case '\\':
      case '/':
      case 'b':
      case 'f':
      case 'n':
      case 'r':
      case 't':
        break;
      case 'u':
        if (end - p < 5 || !IsHexDigit(p[1]) || !IsHexDigit(p[2]) || !IsHexDigit(p[3]) ||
            !IsHexDigit(p[4])) {
          return nullptr;
        }
        // U+D800..U+DFFF: a surrogate, whose pairing only decoding can judge.
        if ((p[1] == 'd' || p[1] == 'D') && !(p[2] >= '0' && p[2] <= '7')) return nullptr;
        p += 4;
        break;
      default:
        return nullptr;
    }
  }
  return nullptr;
}

// Returns the end of the JSON number at p, or nullptr. RapidJSON refuses
// numbers too large for a double even when it keeps them as text (over 308
// integer digits, or a positive exponent over 308): those with more than
// 300 integer digits or a positive exponent of three digits are left to it.
const char* SkipNumber(const char* p, const char* end) {
  if (p < end && *p == '-') ++p;
  if (p == end || !IsDigit(*p)) return nullptr;
  if (*p == '0') {
    ++p;
  } else {
    const char* digits = p;
    while (p < end && IsDigit(*p)) ++p;
    if (p - digits > 300) return nullptr;
  }
  if (p < end && *p == '.') {
    if (++p == end || !IsDigit(*p)) return nullptr;
    while (p < end && IsDigit(*p)) ++p;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    ++p;
    bool negative = p < end && *p == '-';
    if (p < end && (*p == '+' || *p == '-')) ++p;
    const char* digits = p;
    while (p < end && IsDigit(*p)) ++p;
    if (p == digits || (!negative && p - digits > 2)) return nullptr;
  }
  return p;
}

// Returns the end of the literal word at p, or nullptr if it is not there.
const char* SkipWord(const char* p, const char* end, const char* word, size_t size) {
  if (static_cast<size_t>(end - p) < size || memcmp(p, word, size) != 0) return nullptr;
  return p + size;
}

}  // namespace

const char* SkipJsonValue(const char* p, const char* end, int max_depth, bool* has_space) {
  // The closing bracket of each array and object still open, innermost last.
  char closers[kMaxJsonDepth];
  if (max_depth > kMaxJsonDepth) max_depth = kMaxJsonDepth;
  int depth = 0;
  bool want_key = false;  // an object's member name comes next, not a value
  bool spaced = false;
  auto skip_space = [&](const char* q) {
    const char* r = SkipJsonSpace(q, end);
    spaced |= r != q;
    return r;
  };
  p = SkipJsonSpace(p, end);  // before the value: not inside it
  for (;;) {
    p = skip_space(p);
    if (p == end) return nullptr;
    if (want_key) {
      if (*p != '"' || (p = SkipString(p, end)) == nullptr) return nullptr;
      p = skip_space(p);
      if (p == end || *p != ':') return nullptr;
      p = skip_space(p + 1);
      if (p == end) return nullptr;
      want_key = false;
    }
    switch (*p) {
      case '[':
      case '{': {
        if (depth >= max_depth) return nullptr;
        char closer = *p == '[' ? ']' : '}';
        p = skip_space(p + 1);
        if (p < end && *p == closer) {
          ++p;  // empty
          break;
        }
        closers[depth++] = closer;
        want_key = closer == '}';
        continue;
      }
      case '"':
        p = SkipString(p, end);
        break;
      case 't':
        p = SkipWord(p, end, "true", 4);
        break;
      case 'f':
        p = SkipWord(p, end, "false", 5);
        break;
      case 'n':
        p = SkipWord(p, end, "null", 4);
        break;
      default:
        p = SkipNumber(p, end);
        break;
    }
    if (p == nullptr) return nullptr;
    // A value has ended: close what it ends, then expect the next one.
    for (;;) {
      if (depth == 0) {
        if (has_space != nullptr) *has_space = spaced;
        return p;
      }
      p = skip_space(p);
      if (p == end) return nullptr;
      if (*p == ',') {
        ++p;
        want_key = closers[depth - 1] == '}';
        break;
      }
      if (*p != closers[depth - 1]) return nullptr;
      ++p;
      --depth;
    }
  }
}

const char* AppendJsonValueFast(const char* p, const char* end, int max_depth, std::string* out) {
  const char* start = SkipJsonSpace(p, end);
  bool has_space;
  const char* value_end = SkipJsonValue(start, end, max_depth, &has_space);
  if (value_end == nullptr) return nullptr;
  if (has_space) {
    AppendWithoutSpace(start, value_end - start, out);
  } else {
    out->append(start, value_end - start);
  }
  return value_end;
}

struct JsonCompactor::Parts {
  rapidjson::Reader reader;
  CheckHandler handler;
};

JsonCompactor::JsonCompactor() : parts_(new Parts) {}

JsonCompactor::~JsonCompactor() { delete parts_; }

bool JsonCompactor::Append(const char* data, size_t size, std::string* out, std::string* error) {
  size_t valid = Utf8PrefixLength(data, size);
  if (valid < size) {
    if (error != nullptr) *error = "invalid UTF-8 at offset " + std::to_string(valid);
    return false;
  }
  const char* end = data + size;
  size_t old_size = out->size();
  const char* value_end = AppendJsonValueFast(data, end, kMaxJsonDepth, out);
  if (value_end != nullptr && SkipJsonSpace(value_end, end) == end) return true;
  out->resize(old_size);
  // Invalid, or valid in a way SkipJsonValue leaves to RapidJSON.
  CheckHandler& handler = parts_->handler;
  handler.Reset();
  rapidjson::MemoryStream stream(data, size);
  rapidjson::ParseResult result = parts_->reader.Parse<kUtf8ParseFlags>(stream, handler);
  if (result && stream.Tell() == size) {
    AppendWithoutSpace(data, size, out);
    return true;
  }
  if (error == nullptr) return false;
  if (result) {
    // MemoryStream reads a NUL byte as the end of the text; JSON has none.
    *error = "unexpected NUL byte at offset " + std::to_string(stream.Tell());
  } else if (handler.problem() == CheckHandler::kTooDeep) {
    *error = "nested deeper than " + std::to_string(kMaxJsonDepth) + " levels at offset " +
             std::to_string(result.Offset());
  } else if (handler.problem() == CheckHandler::kBadString) {
    *error = "a string is not valid UTF-8 (a lone surrogate escape?) ending at offset " +
             std::to_string(result.Offset());
  } else {
    *error = std::string(rapidjson::GetParseError_En(result.Code())) + " at offset " +
             std::to_string(result.Offset());
  }
  return false;
}

bool AppendCompactJson(const char* data, size_t size, std::string* out, std::string* error) {
  return JsonCompactor().Append(data, size, out, error);
}

size_t Utf8PrefixLength(const char* data, size_t size) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(data);
  size_t i = 0;
  while (i < size) {
    // Most text is ASCII: skip it eight bytes at a time.
    uint64_t word;
    while (i + 8 <= size && (memcpy(&word, p + i, 8), (word & 0x8080808080808080ULL) == 0)) i += 8;
    if (i == size) break;
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    size_t len = Utf8SequenceLength(p + i, size - i);
    if (len == 0) return i;
    i += len;
  }
  return size;
}

size_t JsonStringEnd(const char* data, size_t size, size_t at) {
  size_t i = at + 1;
  for (; i < size && data[i] != '"'; ++i) {
    if (data[i] == '\\') ++i;
  }
  return std::min(i + 1, size);
}

void AppendWithoutSpace(const char* data, size_t size, std::string* out) {
  // Copies the runs between whitespace with one append each, so that text
  // without insignificant whitespace, the usual case, is one memcpy.
  size_t run = 0;
  size_t i = 0;
  while (i < size) {
    char c = data[i];
    if (c == '"') {
      i = JsonStringEnd(data, size, i);
    } else if (IsJsonSpace(c)) {
      out->append(data + run, i - run);
      run = ++i;
    } else {
      ++i;
    }
  }
  if (run < size) out->append(data + run, size - run);
}

void AppendJsonString(const char* data, size_t size, std::string* out) {
  static const char kHex[] = "0123456789abcdef";
  const unsigned char* p = reinterpret_cast<const unsigned char*>(data);
  out->push_back('"');
  size_t i = 0;
  while (i < size) {
    unsigned char c = p[i];
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      out->push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    switch (c) {
      case '"':
        out->append("\\\"");
        ++i;
        continue;
      case '\\':
        out->append("\\\\");
        ++i;
        continue;
      case '\n':
        out->append("\\n");
        ++i;
        continue;
      case '\r':
        out->append("\\r");
        ++i;
        continue;
      case '\t':
        out->append("\\t");
        ++i;
        continue;
      default:
        break;
    }
    if (c < 0x20) {
      out->append("\\u00");
      out->push_back(kHex[c >> 4]);
      out->push_back(kHex[c & 0xF]);
      ++i;
      continue;
    }
    size_t len = Utf8SequenceLength(p + i, size - i);
    if (len == 0) {
      out->append("\xEF\xBF\xBD");  // U+FFFD REPLACEMENT CHARACTER
      ++i;
    } else {
      out->append(data + i, len);
      i += len;
    }
  }
  out->push_back('"');
}

bool JsonDepthWithin(const char* data, size_t size, int max_depth) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < size; ++i) {
    char c = data[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

std::string ErrorJson(const std::string& message) {
  std::string out = "{\"error\":";
  AppendJsonString(message, &out);
  out.push_back('}');
  return out;
}

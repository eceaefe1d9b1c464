#include "json.hpp"

#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>

namespace {

// Forwards SAX events to a Writer, copying numbers as raw text and refusing
// to go deeper than kMaxJsonDepth.
class CompactHandler {
 public:
  explicit CompactHandler(std::string* out) : sink_(out), writer_(sink_) {}

  // Starts over, writing to out.
  void Reset(std::string* out) {
    sink_.out = out;
    writer_.Reset(sink_);
    depth_ = 0;
  }

  bool Null() { return writer_.Null(); }
  bool Bool(bool b) { return writer_.Bool(b); }
  bool Int(int) { return false; }  // unreachable with kParseNumbersAsStringsFlag
  bool Uint(unsigned) { return false; }
  bool Int64(int64_t) { return false; }
  bool Uint64(uint64_t) { return false; }
  bool Double(double) { return false; }
  bool RawNumber(const char* s, rapidjson::SizeType n, bool) {
    return writer_.RawValue(s, n, rapidjson::kNumberType);
  }
  bool String(const char* s, rapidjson::SizeType n, bool) { return writer_.String(s, n); }
  bool Key(const char* s, rapidjson::SizeType n, bool) { return writer_.Key(s, n); }
  bool StartObject() { return ++depth_ <= kMaxJsonDepth && writer_.StartObject(); }
  bool EndObject(rapidjson::SizeType n) { --depth_; return writer_.EndObject(n); }
  bool StartArray() { return ++depth_ <= kMaxJsonDepth && writer_.StartArray(); }
  bool EndArray(rapidjson::SizeType n) { --depth_; return writer_.EndArray(n); }

  bool too_deep() const { return depth_ > kMaxJsonDepth; }

 private:
  StringSink sink_;
  CompactWriter writer_;
  int depth_ = 0;
};

// Returns the length of the valid UTF-8 sequence at p (at most n bytes), or 0.
size_t Utf8SequenceLength(const unsigned char* p, size_t n) {
  unsigned char c = p[0];
  size_t len;
  unsigned min;
  unsigned cp;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) { len = 2; min = 0x80; cp = c & 0x1F; }
  else if ((c & 0xF0) == 0xE0) { len = 3; min = 0x800; cp = c & 0x0F; }
  else if ((c & 0xF8) == 0xF0) { len = 4; min = 0x10000; cp = c & 0x07; }
  else return 0;
  if (len > n) return 0;
  for (size_t i = 1; i < len; ++i) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

}  // namespace

bool AppendCompactJson(const char* data, size_t size, std::string* out, std::string* error) {
  CompactHandler handler(out);
  rapidjson::Reader reader;
  rapidjson::MemoryStream stream(data, size);
  rapidjson::ParseResult result = reader.Parse<kUntrustedParseFlags>(stream, handler);
  if (result && stream.Tell() != size) {
    // MemoryStream reads a NUL byte as the end of the text; JSON has none.
    *error = "unexpected NUL byte at offset " + std::to_string(stream.Tell());
    return false;
  }
  if (result) return true;
  if (handler.too_deep()) {
    *error = "nested deeper than " + std::to_string(kMaxJsonDepth) + " levels at offset " +
             std::to_string(result.Offset());
  } else {
    *error = std::string(rapidjson::GetParseError_En(result.Code())) + " at offset " +
             std::to_string(result.Offset());
  }
  return false;
}

struct JsonCompactor::Parts {
  Parts() : handler(nullptr) {}
  rapidjson::Reader reader;
  CompactHandler handler;
};

JsonCompactor::JsonCompactor() : parts_(new Parts) {}

JsonCompactor::~JsonCompactor() { delete parts_; }

bool JsonCompactor::Append(const char* data, size_t size, std::string* out) {
  parts_->handler.Reset(out);
  rapidjson::MemoryStream stream(data, size);
  rapidjson::ParseResult result = parts_->reader.Parse<kUntrustedParseFlags>(stream, parts_->handler);
  // MemoryStream reads a NUL byte as the end of the text; JSON has none.
  return result && stream.Tell() == size;
}

bool IsValidUtf8(const char* data, size_t size) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size;) {
    size_t len = Utf8SequenceLength(p + i, size - i);
    if (len == 0) return false;
    i += len;
  }
  return true;
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
      case '"': out->append("\\\""); ++i; continue;
      case '\\': out->append("\\\\"); ++i; continue;
      case '\n': out->append("\\n"); ++i; continue;
      case '\r': out->append("\\r"); ++i; continue;
      case '\t': out->append("\\t"); ++i; continue;
      default: break;
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
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
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

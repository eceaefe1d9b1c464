// Unit tests of the JSON helpers (json.hpp): compaction that keeps numbers
// exact, string quoting that always yields valid JSON, and the depth limits
// that keep hostile input from exhausting the stack.

#include "json.hpp"

#include <rapidjson/document.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace {

struct Compacted {
  bool ok;
  std::string out;
  std::string error;
};

Compacted Compact(const std::string& text) {
  Compacted result;
  result.ok = AppendCompactJson(text.data(), text.size(), &result.out, &result.error);
  return result;
}

std::string Quote(const std::string& s) {
  std::string out;
  AppendJsonString(s, &out);
  return out;
}

// True if text is one valid JSON value (UTF-8 validated).
bool IsValidJson(const std::string& text) {
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseValidateEncodingFlag>(text.data(), text.size());
  return !doc.HasParseError();
}

// The string that the JSON string literal `quoted` decodes to.
std::string Unquote(const std::string& quoted) {
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseValidateEncodingFlag>(quoted.data(), quoted.size());
  REQUIRE_FALSE(doc.HasParseError());
  REQUIRE(doc.IsString());
  return std::string(doc.GetString(), doc.GetStringLength());
}

std::string Nested(int depth, const std::string& inner = "") {
  return std::string(depth, '[') + inner + std::string(depth, ']');
}

}  // namespace

// AppendCompactJson

TEST_CASE("AppendCompactJson removes insignificant whitespace", "[unit][json]") {
  Compacted c =
      Compact(" \n{ \"a\" : [ 1 ,\t true , null , false , \"x y\" ] ,\r\n \"b\" : { } } \n");
  REQUIRE(c.ok);
  CHECK(c.error.empty());
  CHECK(c.out == "{\"a\":[1,true,null,false,\"x y\"],\"b\":{}}");
}

TEST_CASE("AppendCompactJson keeps the text of every number exactly as written", "[unit][json]") {
  Compacted c =
      Compact("[ 12345678901234567890123 , 2.50 , -0 , 1E+2 , 0.1e-7 , -9223372036854775809 ]");
  REQUIRE(c.ok);
  CHECK(c.out == "[12345678901234567890123,2.50,-0,1E+2,0.1e-7,-9223372036854775809]");
}

TEST_CASE("AppendCompactJson accepts a bare scalar as the whole document", "[unit][json]") {
  CHECK(Compact(" 2.50 ").out == "2.50");
  CHECK(Compact("\"hi\"").out == "\"hi\"");
  CHECK(Compact("null").out == "null");
}

TEST_CASE("AppendCompactJson appends to what the output already holds", "[unit][json]") {
  std::string out = "prefix:";
  std::string error;
  std::string text = "[ 1 ]";
  REQUIRE(AppendCompactJson(text.data(), text.size(), &out, &error));
  CHECK(out == "prefix:[1]");
}

TEST_CASE("AppendCompactJson keeps strings equal to what they encode", "[unit][json]") {
  Compacted c = Compact("[\"tab\\there\", \"quote\\\"\", \"\\u00e9\", \"\xC3\xA9\", \"\\u0001\"]");
  REQUIRE(c.ok);
  rapidjson::Document doc;
  doc.Parse(c.out.c_str());
  REQUIRE(doc.IsArray());
  CHECK(std::string(doc[0].GetString()) == "tab\there");
  CHECK(std::string(doc[1].GetString()) == "quote\"");
  CHECK(std::string(doc[2].GetString()) == "\xC3\xA9");
  CHECK(std::string(doc[3].GetString()) == "\xC3\xA9");
  CHECK(std::string(doc[4].GetString()) == "\x01");
}

TEST_CASE("AppendCompactJson refuses invalid JSON and reports the byte offset", "[unit][json]") {
  Compacted c = Compact("{\"a\":}");
  CHECK_FALSE(c.ok);
  CHECK_THAT(c.error, Catch::Contains("at offset 5"));

  Compacted trailing = Compact("[1] [2]");
  CHECK_FALSE(trailing.ok);
  CHECK_THAT(trailing.error, Catch::Contains("at offset 4"));

  Compacted empty = Compact("");
  CHECK_FALSE(empty.ok);
  CHECK_THAT(empty.error, Catch::Contains("at offset 0"));

  CHECK_FALSE(Compact("[1,]").ok);
  CHECK_FALSE(Compact("{'a':1}").ok);
  CHECK_FALSE(Compact("[01]").ok);
  CHECK_FALSE(Compact("[NaN]").ok);
  CHECK_FALSE(Compact("\"unterminated").ok);
  CHECK_FALSE(Compact("   ").ok);
}

TEST_CASE("AppendCompactJson refuses a document with bytes after a NUL byte", "[unit][json]") {
  // A NUL byte is never valid JSON text: "[1]\0garbage" must not pass as "[1]".
  Compacted c = Compact(std::string("[1]\0garbage", 11));
  CHECK_FALSE(c.ok);
  Compacted alone = Compact(std::string("{}\0", 3));
  CHECK_FALSE(alone.ok);
}

TEST_CASE("AppendCompactJson refuses an escaped lone low surrogate (found by the fuzzer)",
          "[unit][json]") {
  // RapidJSON 1.1.0 decodes "\udc00" to bytes that are not UTF-8; the writer
  // must refuse them, so that stored output is always valid JSON.
  CHECK_FALSE(Compact("{\"s\":\"\\ud17d\\ude00\"}").ok);
  CHECK_FALSE(Compact("\"\\udc00\"").ok);
  Compacted pair = Compact("\"\\ud83d\\ude00\"");  // a proper pair is fine, kept as written
  CHECK(pair.ok);
  CHECK(pair.out == "\"\\ud83d\\ude00\"");
}

TEST_CASE("AppendCompactJson keeps strings and their escapes exactly as written", "[unit][json]") {
  // Whitespace, quotes and backslashes inside strings are not touched.
  std::string text = "{ \"a b\" : \"x \\\" y\\\\\" , \"\\u00e9\\/\" : [ \" \" ] }";
  Compacted c = Compact(text);
  REQUIRE(c.ok);
  CHECK(c.out == "{\"a b\":\"x \\\" y\\\\\",\"\\u00e9\\/\":[\" \"]}");
}

TEST_CASE("AppendCompactJson leaves the output unchanged when it refuses the text",
          "[unit][json]") {
  std::string out = "kept";
  std::string error;
  std::string text = "[1, 2";
  CHECK_FALSE(AppendCompactJson(text.data(), text.size(), &out, &error));
  CHECK(out == "kept");
}

TEST_CASE("JsonCompactor gives the same results as AppendCompactJson when reused", "[unit][json]") {
  JsonCompactor compactor;
  const char* const texts[] = {"[ 1 , 2 ]", "{\"a\":", "\"\\udc00\"",
                               " null ",    "[[[ ]]]", "\"\xFF\""};
  for (int round = 0; round < 2; ++round) {
    for (const char* text : texts) {
      INFO(text);
      std::string reused;
      std::string error;
      bool ok = compactor.Append(text, strlen(text), &reused, &error);
      Compacted fresh = Compact(text);
      CHECK(ok == fresh.ok);
      CHECK(reused == fresh.out);
      CHECK(error == fresh.error);
    }
  }
}

TEST_CASE("Utf8PrefixLength finds the first invalid byte past runs of ASCII", "[unit][json]") {
  std::string ascii(37, 'a');
  CHECK(Utf8PrefixLength(ascii.data(), ascii.size()) == 37);
  std::string mixed = ascii + "\xC3\xA9" + ascii + "\xF0\x9F\x98\x80" + ascii;
  CHECK(Utf8PrefixLength(mixed.data(), mixed.size()) == mixed.size());
  std::string bad = ascii + "\xC3\xA9" + ascii + "\x80" + ascii;
  CHECK(Utf8PrefixLength(bad.data(), bad.size()) == 37 + 2 + 37);
  std::string cut = ascii + "\xE2\x82";  // a truncated three-byte sequence at the end
  CHECK(Utf8PrefixLength(cut.data(), cut.size()) == 37);
  CHECK(Utf8PrefixLength("", 0) == 0);
}

TEST_CASE("AppendCompactJson refuses invalid UTF-8 and says where", "[unit][json]") {
  Compacted bad_byte = Compact("[\"ok\", \"\xFF\"]");
  CHECK_FALSE(bad_byte.ok);
  CHECK_THAT(bad_byte.error, Catch::Contains("at offset"));
  CHECK_FALSE(Compact("\"\xC3\"").ok);          // truncated sequence
  CHECK_FALSE(Compact("\"\xC0\xAF\"").ok);      // overlong "/"
  CHECK_FALSE(Compact("\"\xED\xA0\x80\"").ok);  // UTF-16 surrogate
}

TEST_CASE("AppendCompactJson accepts nesting up to kMaxJsonDepth and refuses one more level",
          "[unit][json]") {
  Compacted at_limit = Compact(Nested(kMaxJsonDepth, "1"));
  REQUIRE(at_limit.ok);
  CHECK(at_limit.out == Nested(kMaxJsonDepth, "1"));

  Compacted too_deep = Compact(Nested(kMaxJsonDepth + 1, "1"));
  CHECK_FALSE(too_deep.ok);
  CHECK_THAT(too_deep.error,
             Catch::Contains("nested deeper than " + std::to_string(kMaxJsonDepth) + " levels"));

  std::string objects;
  for (int i = 0; i <= kMaxJsonDepth; ++i) objects += "{\"a\":";
  objects += "1" + std::string(kMaxJsonDepth + 1, '}');
  CHECK_FALSE(Compact(objects).ok);
}

TEST_CASE("AppendCompactJson refuses 100000 open brackets without crashing", "[unit][json]") {
  Compacted c = Compact(std::string(100000, '['));
  CHECK_FALSE(c.ok);
  CHECK_THAT(c.error, Catch::Contains("nested deeper"));
  Compacted closed = Compact(Nested(100000));
  CHECK_FALSE(closed.ok);
}

// SkipJsonValue

namespace {

// Where SkipJsonValue says the value at the start of text ends: its offset,
// or -1 when it refuses the text.
long SkipEnd(const std::string& text, int max_depth = kMaxJsonDepth) {
  const char* end = SkipJsonValue(text.data(), text.data() + text.size(), max_depth);
  return end == nullptr ? -1 : static_cast<long>(end - text.data());
}

}  // namespace

TEST_CASE("SkipJsonValue finds the end of every kind of valid value", "[unit][json]") {
  // Each value, then what follows it, which is not SkipJsonValue's concern.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"0", ""},
      {"-0", " "},
      {" 12.50e-7", ","},
      {"1E+2", "]"},
      {"0", "1"},
      {"true", " x"},
      {"false", ""},
      {"null", "}"},
      {"\"\"", ""},
      {"\"a \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9 \\uFFFF \xC3\xA9\"", " tail"},
      {"[]", "]"},
      {"{ }", ""},
      {"[ 1 , [ ] , { \"a\" : { \"b\" : [ null ] } } ]", " 5"},
      {"{\"k\":1,\"k\":2}", ""},
      {"\n\t\r [1]", "\n"},
  };
  for (const auto& c : cases) {
    INFO("value: " << c.first << ", then: " << c.second);
    CHECK(SkipEnd(c.first + c.second) == static_cast<long>(c.first.size()));
    // Everything it accepts, RapidJSON accepts too.
    CHECK(IsValidJson(c.first));
  }
}

TEST_CASE("SkipJsonValue finds a string's quote, escape or control byte at every offset",
          "[unit][json]") {
  // Strings are scanned eight bytes at a time: put each kind of byte the
  // scan must stop at in every position of a word, after ASCII and UTF-8.
  for (const std::string& filler : {std::string("a"), std::string("\xC3\xA9")}) {
    for (int n = 0; n < 20; ++n) {
      std::string before;
      for (int i = 0; i < n; ++i) before += filler;
      INFO("filler " << filler << " x" << n);
      std::string plain = "\"" + before + "\"";
      CHECK(SkipEnd(plain + "xxxxxxxxxx") == static_cast<long>(plain.size()));
      std::string escaped = "\"" + before + "\\\"" + before + "\"";
      CHECK(SkipEnd(escaped + "xxxxxxxxxx") == static_cast<long>(escaped.size()));
      CHECK(SkipEnd("\"" + before + "\x1F" + before + "\"xxxxxxxxxx") == -1);
      CHECK(SkipEnd("\"" + before + "\\x" + before + "\"xxxxxxxxxx") == -1);
      CHECK(SkipEnd("\"" + before + "xxxxxxxx") == -1);
    }
  }
}

TEST_CASE("SkipJsonValue says whether whitespace separates the value's tokens", "[unit][json]") {
  auto has_space = [](const std::string& text) {
    bool spaced = false;
    REQUIRE(SkipJsonValue(text.data(), text.data() + text.size(), kMaxJsonDepth, &spaced) !=
            nullptr);
    return spaced;
  };
  // Around the value, or inside its strings, whitespace does not count.
  CHECK_FALSE(has_space(" \n[1,{\"a b\":\" c \"},[]] \n"));
  CHECK_FALSE(has_space(" 12 "));
  CHECK(has_space("[1, 2]"));
  CHECK(has_space("{\"a\" :1}"));
  CHECK(has_space("{\"a\": 1}"));
  CHECK(has_space("[\n]"));
  CHECK(has_space("[[1] ]"));
}

TEST_CASE("AppendJsonValueFast appends the compact value or leaves the output unchanged",
          "[unit][json]") {
  auto append = [](const std::string& text, std::string* out) {
    return AppendJsonValueFast(text.data(), text.data() + text.size(), kMaxJsonDepth, out);
  };
  std::string out = "x";
  std::string spaced = " [1, {\"a b\" : 2}] tail";
  REQUIRE(append(spaced, &out) == spaced.data() + spaced.find(" tail"));
  CHECK(out == "x[1,{\"a b\":2}]");
  std::string compact = "\t{\"k\":[true]},";
  REQUIRE(append(compact, &out) == compact.data() + compact.size() - 1);
  CHECK(out == "x[1,{\"a b\":2}]{\"k\":[true]}");
  CHECK(append("[1,", &out) == nullptr);
  CHECK(append("\"\\ud83d\\ude00\"", &out) == nullptr);
  CHECK(out == "x[1,{\"a b\":2}]{\"k\":[true]}");
}

TEST_CASE("SkipJsonValue refuses invalid JSON that RapidJSON refuses", "[unit][json]") {
  for (const std::string text :
       {"",           " ",        "[",          "[1,]",     "[1 2]",     "[}",      "{]",
        "{\"a\"}",    "{\"a\":}", "{\"a\":1,}", "{1:2}",    "{a:1}",     "-",       "-a",
        "1.",         ".5",       "1e",         "1e+",      "+1",        "tru",     "nul",
        "False",      "NaN",      "Infinity",   "\"abc",    "\"a\x01\"", "\"\\x\"", "\"\\u12g4\"",
        "\"\\u123\"", "'a'",      "[1,[2]",     "{\"a\":[}"}) {
    INFO("text: " << text);
    CHECK_FALSE(IsValidJson(text));
    CHECK(SkipEnd(text) == -1);
  }
  CHECK(SkipEnd(std::string("[1,\0]", 5)) == -1);
  CHECK(SkipEnd(std::string("\"a\0\"", 4)) == -1);
}

TEST_CASE("SkipJsonValue leaves surrogate escapes, huge numbers and deep nesting to RapidJSON",
          "[unit][json]") {
  // A valid surrogate pair and a lone surrogate both take decoding to judge.
  CHECK(SkipEnd("\"\\ud83d\\ude00\"") == -1);
  CHECK(SkipEnd("\"\\uDC00\"") == -1);
  CHECK(SkipEnd("\"\\ud7ff \\ue000\"") == 15);
  // RapidJSON refuses numbers too large for a double, even kept as text.
  CHECK(SkipEnd("1e99") == 4);
  CHECK(SkipEnd("1e-999") == 6);
  CHECK(SkipEnd("1e100") == -1);
  CHECK(SkipEnd(std::string(300, '9')) == 300);
  CHECK(SkipEnd(std::string(301, '9')) == -1);
  CHECK(SkipEnd(Nested(kMaxJsonDepth, "1")) == 2 * kMaxJsonDepth + 1);
  CHECK(SkipEnd(Nested(kMaxJsonDepth + 1, "1")) == -1);
  CHECK(SkipEnd(Nested(3, "1"), 2) == -1);
  CHECK(SkipEnd(std::string(100000, '[')) == -1);
}

TEST_CASE("AppendCompactJson still judges what SkipJsonValue leaves to RapidJSON", "[unit][json]") {
  Compacted pair = Compact(" \"\\ud83d\\ude00\" ");
  REQUIRE(pair.ok);
  CHECK(pair.out == "\"\\ud83d\\ude00\"");
  CHECK_FALSE(Compact("\"\\udc00\"").ok);
  Compacted digits = Compact(std::string(301, '9'));
  REQUIRE(digits.ok);
  CHECK(digits.out == std::string(301, '9'));
  Compacted huge = Compact("1e400");
  CHECK_FALSE(huge.ok);
  CHECK_THAT(huge.error, Catch::Contains("at offset 0"));
}

// AppendJsonString

TEST_CASE("AppendJsonString quotes plain text unchanged", "[unit][json]") {
  CHECK(Quote("") == "\"\"");
  CHECK(Quote("hello world ~!") == "\"hello world ~!\"");
}

TEST_CASE("AppendJsonString escapes quotes, backslashes and control characters", "[unit][json]") {
  CHECK(Quote("a\"b") == "\"a\\\"b\"");
  CHECK(Quote("a\\b") == "\"a\\\\b\"");
  CHECK(Quote("\n\r\t") == "\"\\n\\r\\t\"");
  CHECK(Quote("\x01") == "\"\\u0001\"");
  CHECK(Quote("\x1F") == "\"\\u001f\"");
  CHECK(Quote(std::string("a\0b", 3)) == "\"a\\u0000b\"");
  std::string all_controls;
  for (int c = 0; c < 0x20; ++c) all_controls.push_back(static_cast<char>(c));
  std::string quoted = Quote(all_controls + "\"\\\x7F");
  REQUIRE(IsValidJson(quoted));
  CHECK(Unquote(quoted) == all_controls + "\"\\\x7F");
}

TEST_CASE("AppendJsonString keeps valid multi-byte UTF-8 as it is", "[unit][json]") {
  std::string text = "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80";  // café € 😀
  CHECK(Quote(text) == "\"" + text + "\"");
  CHECK(Unquote(Quote(text)) == text);
}

TEST_CASE("AppendJsonString replaces each invalid UTF-8 byte with U+FFFD", "[unit][json]") {
  const std::string kFffd = "\xEF\xBF\xBD";
  CHECK(Quote("a\xFF"
              "b") == "\"a" + kFffd + "b\"");
  CHECK(Quote("a\xC3") == "\"a" + kFffd + "\"");                        // truncated at the end
  CHECK(Quote("\xC3(") == "\"" + kFffd + "(\"");                        // bad continuation
  CHECK(Quote("\xC0\xAF") == "\"" + kFffd + kFffd + "\"");              // overlong
  CHECK(Quote("\xED\xA0\x80") == "\"" + kFffd + kFffd + kFffd + "\"");  // surrogate
  CHECK(Quote("\xF4\x90\x80\x80") == "\"" + kFffd + kFffd + kFffd + kFffd + "\"");  // > U+10FFFF
}

TEST_CASE("AppendJsonString output is valid JSON for every single byte and byte pair",
          "[unit][json]") {
  for (int a = 0; a < 256; ++a) {
    std::string one(1, static_cast<char>(a));
    INFO("byte " << a);
    REQUIRE(IsValidJson(Quote(one)));
    for (int b = 0x80; b < 256; b += 7) {
      std::string two = one + static_cast<char>(b);
      REQUIRE(IsValidJson(Quote(two)));
    }
  }
}

// JsonDepthWithin

TEST_CASE("JsonDepthWithin compares the deepest nesting of arrays and objects", "[unit][json]") {
  std::string text = "[{\"a\":[1]}]";
  CHECK(JsonDepthWithin(text.data(), text.size(), 3));
  CHECK_FALSE(JsonDepthWithin(text.data(), text.size(), 2));
  std::string flat = "[1][2][3]";
  CHECK(JsonDepthWithin(flat.data(), flat.size(), 1));
  std::string scalar = "42";
  CHECK(JsonDepthWithin(scalar.data(), scalar.size(), 0));
}

TEST_CASE("JsonDepthWithin ignores brackets inside strings", "[unit][json]") {
  std::string text = "[\"[[[[{{{{\", {\"k[[\": \"]]]]\"}]";
  CHECK(JsonDepthWithin(text.data(), text.size(), 2));
  CHECK_FALSE(JsonDepthWithin(text.data(), text.size(), 1));
}

TEST_CASE("JsonDepthWithin handles escaped quotes and backslashes in strings", "[unit][json]") {
  // The string holds an escaped quote: the brackets after it are still inside it.
  std::string quote = "[\"a\\\"[[[[\", 1]";
  CHECK(JsonDepthWithin(quote.data(), quote.size(), 1));
  // The string ends with an escaped backslash: the brackets after it count.
  std::string backslash = "[\"a\\\\\", [[1]]]";
  CHECK_FALSE(JsonDepthWithin(backslash.data(), backslash.size(), 2));
  CHECK(JsonDepthWithin(backslash.data(), backslash.size(), 3));
}

TEST_CASE("JsonDepthWithin refuses 100000 open brackets", "[unit][json]") {
  std::string deep(100000, '[');
  CHECK_FALSE(JsonDepthWithin(deep.data(), deep.size(), kMaxJsonDepth));
  std::string limit = Nested(kMaxJsonDepth);
  CHECK(JsonDepthWithin(limit.data(), limit.size(), kMaxJsonDepth));
}

// ErrorJson

TEST_CASE("ErrorJson wraps the message in an object with an escaped error field", "[unit][json]") {
  CHECK(ErrorJson("no such job") == "{\"error\":\"no such job\"}");
  std::string json = ErrorJson("bad \"x\"\nat \\ \xFF");
  REQUIRE(IsValidJson(json));
  rapidjson::Document doc;
  doc.Parse(json.c_str());
  REQUIRE(doc.IsObject());
  REQUIRE(doc.MemberCount() == 1);
  CHECK(std::string(doc["error"].GetString()) == "bad \"x\"\nat \\ \xEF\xBF\xBD");
}

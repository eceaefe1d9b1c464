// Unit tests of request parsing (request.hpp): the bodies of POST /job and
// PUT /job/{id}/input, the query of GET /job/{id}/output and the webhook URL
// check. Every refusal must say what was wrong and where.

#include "request.hpp"

#include <catch2/catch.hpp>
#include <map>
#include <string>
#include <vector>

#include "json.hpp"

namespace {

const char kUrl[] = "http://127.0.0.1:8080/hook";

// {"url": kUrl, <extra>}
std::string JobBody(const std::string& extra) {
  std::string body = std::string("{\"url\":\"") + kUrl + "\"";
  if (!extra.empty()) body += "," + extra;
  return body + "}";
}

Status ParseJob(const std::string& body, JobOptions* options) {
  return ParseJobOptions(body, options);
}

// The message of the refusal of body; fails the test if body is accepted.
std::string JobError(const std::string& body) {
  JobOptions options;
  Status s = ParseJobOptions(body, &options);
  INFO("body: " << body.substr(0, 200));
  REQUIRE(s.code() == Status::kInvalid);
  REQUIRE_FALSE(s.message().empty());
  return s.message();
}

std::string InputsError(const std::string& body) {
  std::vector<Input> inputs;
  Status s = ParseInputs(body, &inputs);
  INFO("body: " << body.substr(0, 200));
  REQUIRE(s.code() == Status::kInvalid);
  REQUIRE_FALSE(s.message().empty());
  return s.message();
}

using Params = std::multimap<std::string, std::string>;

std::string QueryError(const Params& params, const std::string& accept = "") {
  OutputQuery query;
  Status s = ParseOutputQuery(params, accept, &query);
  REQUIRE(s.code() == Status::kInvalid);
  REQUIRE_FALSE(s.message().empty());
  return s.message();
}

// One field's accepted edges and refused neighbours.
void CheckIntegerRange(const std::string& field, int64_t low, int64_t high) {
  INFO("field " << field);
  JobOptions options;
  CHECK(ParseJob(JobBody("\"" + field + "\":" + std::to_string(low)), &options).ok());
  CHECK(ParseJob(JobBody("\"" + field + "\":" + std::to_string(high)), &options).ok());
  for (const std::string& bad :
       {std::to_string(low - 1), std::to_string(high + 1), std::string("1.5"), std::string("\"5\""),
        std::string("true"), std::string("[1]"), std::string("99999999999999999999")}) {
    INFO("value " << bad);
    std::string message = JobError(JobBody("\"" + field + "\":" + bad));
    CHECK_THAT(message, Catch::StartsWith(field + ":"));
    CHECK_THAT(message, Catch::Contains(std::to_string(low)));
    CHECK_THAT(message, Catch::Contains(std::to_string(high)));
  }
}

}  // namespace

// ParseJobOptions

TEST_CASE("ParseJobOptions fills every default when only the url is given", "[unit][request]") {
  JobOptions options;
  options.concurrency = 77;  // overwritten
  REQUIRE(ParseJob(JobBody(""), &options).ok());
  CHECK(options.url == kUrl);
  CHECK(options.secret.empty());
  CHECK(options.concurrency == kDefaultConcurrency);
  CHECK(options.maxsize == kDefaultMaxsize);
  CHECK(options.timeout_ms == kDefaultTimeoutMs);
  CHECK(options.max_attempts == kDefaultMaxAttempts);
  CHECK(options.backoff_ms == kDefaultBackoffMs);
  CHECK(options.max_backoff_ms == kDefaultMaxBackoffMs);
  CHECK(options.rate_per_sec == 0);
}

TEST_CASE("ParseJobOptions reads every field", "[unit][request]") {
  JobOptions options;
  REQUIRE(ParseJob(JobBody("\"secret\":\"s3\",\"concurrency\":8,\"maxsize\":50,"
                           "\"timeout_ms\":1500,\"max_attempts\":3,\"backoff_ms\":20,"
                           "\"max_backoff_ms\":400,\"rate_per_sec\":2.5"),
                   &options)
              .ok());
  CHECK(options.secret == "s3");
  CHECK(options.concurrency == 8);
  CHECK(options.maxsize == 50);
  CHECK(options.timeout_ms == 1500);
  CHECK(options.max_attempts == 3);
  CHECK(options.backoff_ms == 20);
  CHECK(options.max_backoff_ms == 400);
  CHECK(options.rate_per_sec == 2.5);
}

TEST_CASE("ParseJobOptions accepts each integer field's edges and names it when out of range",
          "[unit][request]") {
  CheckIntegerRange("concurrency", 1, kMaxConcurrency);
  CheckIntegerRange("maxsize", 1, kMaxMaxsize);
  CheckIntegerRange("timeout_ms", 1, kMaxTimeoutMs);
  CheckIntegerRange("max_attempts", 1, kMaxMaxAttempts);
  CheckIntegerRange("backoff_ms", 0, kMaxBackoffMsLimit);
  CheckIntegerRange("max_backoff_ms", 0, kMaxBackoffMsLimit);
}

TEST_CASE("ParseJobOptions accepts rate_per_sec above 0 up to the maximum", "[unit][request]") {
  JobOptions options;
  REQUIRE(ParseJob(JobBody("\"rate_per_sec\":0.001"), &options).ok());
  CHECK(options.rate_per_sec == 0.001);
  REQUIRE(ParseJob(JobBody("\"rate_per_sec\":1000000"), &options).ok());
  CHECK(options.rate_per_sec == kMaxRatePerSec);
  REQUIRE(ParseJob(JobBody("\"rate_per_sec\":7"), &options).ok());
  CHECK(options.rate_per_sec == 7);
  for (const char* bad : {"0", "-1", "1000000.5", "\"5\"", "true", "{}"}) {
    INFO("value " << bad);
    CHECK_THAT(JobError(JobBody(std::string("\"rate_per_sec\":") + bad)),
               Catch::StartsWith("rate_per_sec:"));
  }
}

TEST_CASE("ParseJobOptions reads callback_url and checks it like the url", "[unit][request]") {
  JobOptions options;
  REQUIRE(ParseJob(JobBody("\"callback_url\":\"https://cb.example/done\""), &options).ok());
  CHECK(options.callback_url == "https://cb.example/done");
  REQUIRE(ParseJob(JobBody(""), &options).ok());
  CHECK(options.callback_url.empty());
  CHECK_THAT(JobError(JobBody("\"callback_url\":\"ftp://cb/\"")),
             Catch::StartsWith("callback_url:"));
  CHECK_THAT(JobError(JobBody("\"callback_url\":5")), Catch::StartsWith("callback_url:"));
}

TEST_CASE("ParseJobOptions treats null as the field's default", "[unit][request]") {
  JobOptions options;
  REQUIRE(ParseJob(JobBody("\"secret\":null,\"concurrency\":null,\"maxsize\":null,"
                           "\"timeout_ms\":null,\"max_attempts\":null,\"backoff_ms\":null,"
                           "\"max_backoff_ms\":null,\"rate_per_sec\":null"),
                   &options)
              .ok());
  CHECK(options.secret.empty());
  CHECK(options.concurrency == kDefaultConcurrency);
  CHECK(options.maxsize == kDefaultMaxsize);
  CHECK(options.timeout_ms == kDefaultTimeoutMs);
  CHECK(options.max_attempts == kDefaultMaxAttempts);
  CHECK(options.backoff_ms == kDefaultBackoffMs);
  CHECK(options.max_backoff_ms == kDefaultMaxBackoffMs);
  CHECK(options.rate_per_sec == 0);
}

TEST_CASE("ParseJobOptions refuses a url or secret that is not a string", "[unit][request]") {
  CHECK_THAT(JobError("{\"url\":null}"), Catch::StartsWith("url:"));
  CHECK_THAT(JobError("{\"url\":5}"), Catch::StartsWith("url:"));
  CHECK_THAT(JobError(JobBody("\"secret\":5")), Catch::StartsWith("secret:"));
}

TEST_CASE("ParseJobOptions refuses an unknown field and names it", "[unit][request]") {
  CHECK_THAT(JobError(JobBody("\"concurency\":4")), Catch::Contains("\"concurency\""));
  CHECK_THAT(JobError(JobBody("\"concurency\":4")), Catch::Contains("unknown field"));
}

TEST_CASE("ParseJobOptions refuses a field given twice", "[unit][request]") {
  CHECK_THAT(JobError(JobBody("\"concurrency\":2,\"concurrency\":3")),
             Catch::Contains("concurrency: given twice"));
  CHECK_THAT(JobError(JobBody("\"url\":\"http://other/\"")), Catch::Contains("url: given twice"));
  CHECK_THAT(JobError(JobBody("\"maxsize\":null,\"maxsize\":null")),
             Catch::Contains("maxsize: given twice"));
}

TEST_CASE("ParseJobOptions refuses a body without a url", "[unit][request]") {
  CHECK_THAT(JobError("{}"), Catch::StartsWith("url: missing"));
  CHECK_THAT(JobError("{\"concurrency\":2}"), Catch::StartsWith("url: missing"));
}

TEST_CASE("ParseJobOptions refuses a url that is not an absolute http or https URL",
          "[unit][request]") {
  CHECK_THAT(JobError("{\"url\":\"ftp://host/path\"}"), Catch::Contains("scheme"));
  CHECK_THAT(JobError("{\"url\":\"host/path\"}"), Catch::StartsWith("url:"));
  CHECK_THAT(JobError("{\"url\":\"http://\"}"), Catch::StartsWith("url:"));
  CHECK_THAT(JobError("{\"url\":\"http://a b/\"}"), Catch::Contains("space"));
  CHECK_THAT(JobError("{\"url\":\"\"}"), Catch::StartsWith("url:"));
}

TEST_CASE("ParseJobOptions refuses an empty body, invalid JSON and a body that is not an object",
          "[unit][request]") {
  CHECK_THAT(JobError(""), Catch::Contains("empty"));
  CHECK_THAT(JobError("{\"url\":"), Catch::Contains("at offset 7"));
  CHECK_THAT(JobError("{\"url\":\"http://h/\", \"secret\":\"\xFF\"}"), Catch::Contains("offset"));
  CHECK_THAT(JobError("[]"), Catch::Contains("JSON object"));
  CHECK_THAT(JobError("\"http://h/\""), Catch::Contains("JSON object"));
  CHECK_THAT(JobError("null"), Catch::Contains("JSON object"));
}

TEST_CASE("ParseJobOptions refuses a body with bytes after a NUL byte", "[unit][request]") {
  JobOptions options;
  std::string body = JobBody("") + std::string("\0{}", 3);
  CHECK_FALSE(ParseJob(body, &options).ok());
}

TEST_CASE("ParseJobOptions leaves the options untouched when it refuses the body",
          "[unit][request]") {
  JobOptions options;
  options.url = "http://keep/";
  options.concurrency = 9;
  CHECK_FALSE(ParseJob(JobBody("\"concurrency\":4,\"bogus\":1"), &options).ok());
  CHECK(options.url == "http://keep/");
  CHECK(options.concurrency == 9);
}

TEST_CASE("ParseJobOptions refuses nesting deeper than kMaxJsonDepth", "[unit][request]") {
  std::string too_deep =
      JobBody("\"x\":" + std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']'));
  CHECK_THAT(JobError(too_deep), Catch::Contains("nested deeper"));
  // One level less passes the depth check and fails only on the unknown field.
  std::string at_limit =
      JobBody("\"x\":" + std::string(kMaxJsonDepth - 1, '[') + std::string(kMaxJsonDepth - 1, ']'));
  CHECK_THAT(JobError(at_limit), Catch::Contains("unknown field"));
  CHECK_THAT(JobError(std::string(100000, '[')), Catch::Contains("nested deeper"));
  CHECK_THAT(JobError(std::string(100000, '{')), Catch::Contains("nested deeper"));
}

TEST_CASE("ParseJobOptions does not count brackets inside strings as nesting", "[unit][request]") {
  JobOptions options;
  std::string secret(1000, '[');
  REQUIRE(ParseJob(JobBody("\"secret\":\"" + secret + "\""), &options).ok());
  CHECK(options.secret == secret);
}

// ParseInputs

TEST_CASE("ParseInputs reads a batch of keys and values in order", "[unit][request]") {
  std::vector<Input> inputs;
  REQUIRE(ParseInputs(" [ {\"key\":\"a\",\"value\":1} , {\"value\":\"two\",\"key\":\"b\"},"
                      "{\"key\":\"c\",\"value\":null} ] ",
                      &inputs)
              .ok());
  REQUIRE(inputs.size() == 3);
  CHECK(inputs[0].key == "a");
  CHECK(inputs[0].value == "1");
  CHECK(inputs[1].key == "b");
  CHECK(inputs[1].value == "\"two\"");
  CHECK(inputs[2].key == "c");
  CHECK(inputs[2].value == "null");
  CHECK(inputs[0].attempts == 0);
}

TEST_CASE("ParseInputs keeps each value compact with its numbers exact", "[unit][request]") {
  std::vector<Input> inputs;
  REQUIRE(ParseInputs("[{\"key\":\"k\",\"value\": { \"n\" : 12345678901234567890123 ,"
                      " \"f\" : 2.50 , \"a\" : [ 1 , { } , [ ] , true ] , \"s\" : \"x\\ty\" } }]",
                      &inputs)
              .ok());
  REQUIRE(inputs.size() == 1);
  CHECK(inputs[0].value ==
        "{\"n\":12345678901234567890123,\"f\":2.50,\"a\":[1,{},[],true],"
        "\"s\":\"x\\ty\"}");
}

TEST_CASE("ParseInputs copies every kind of value as written, without the whitespace around it",
          "[unit][request]") {
  std::vector<Input> inputs;
  REQUIRE(ParseInputs("[{\"key\":\"o\",\"value\"\n:\t{ \"a\" : [ ] } \n},"
                      "{\"key\":\"a\",\"value\": [ 1 , \"x\" ] },"
                      "{\"key\":\"s\",\"value\": \" a \\\" b\\u00e9 \" },"
                      "{\"value\": -1.50e+3 ,\"key\":\"n\"},"
                      "{\"key\":\"t\",\"value\":true },"
                      "{\"key\":\"f\",\"value\":false},"
                      "{\"key\":\"z\",\"value\" : null }]",
                      &inputs)
              .ok());
  REQUIRE(inputs.size() == 7);
  CHECK(inputs[0].value == "{\"a\":[]}");
  CHECK(inputs[1].value == "[1,\"x\"]");
  CHECK(inputs[2].value == "\" a \\\" b\\u00e9 \"");
  CHECK(inputs[3].value == "-1.50e+3");
  CHECK(inputs[4].value == "true");
  CHECK(inputs[5].value == "false");
  CHECK(inputs[6].value == "null");
}

TEST_CASE("ParseInputs refuses a scalar value followed by junk (found by the fuzzer)",
          "[unit][request]") {
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":123456:\"a}]"),
             Catch::Contains("at offset 26"));
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":true\"x}]"), Catch::Contains("at offset"));
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":\"s\"\"x}]"), Catch::Contains("at offset"));
}

TEST_CASE("ParseInputs refuses a value string that decodes to invalid UTF-8", "[unit][request]") {
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":\"\\udc00\"}]"),
             Catch::Contains("input[0].value: a string is not valid UTF-8"));
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":{\"\\udc00\":1}}]"),
             Catch::Contains("input[0].value: a string is not valid UTF-8"));
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":\"\xED\xA0\x80\"}]"),
             Catch::Contains("invalid UTF-8 at offset 21"));
}

TEST_CASE("ParseInputs keeps a value that uses the words key and value inside it",
          "[unit][request]") {
  std::vector<Input> inputs;
  REQUIRE(ParseInputs("[{\"key\":\"k\",\"value\":{\"key\":1,\"value\":{\"key\":\"x\"}}}]", &inputs)
              .ok());
  REQUIRE(inputs.size() == 1);
  CHECK(inputs[0].key == "k");
  CHECK(inputs[0].value == "{\"key\":1,\"value\":{\"key\":\"x\"}}");
}

TEST_CASE("ParseInputs accepts an empty array", "[unit][request]") {
  std::vector<Input> inputs(2);
  REQUIRE(ParseInputs("[]", &inputs).ok());
  CHECK(inputs.empty());
}

TEST_CASE("ParseInputs refuses an empty body and a body that is not an array", "[unit][request]") {
  CHECK_THAT(InputsError(""), Catch::Contains("empty"));
  CHECK_THAT(InputsError("{\"key\":\"a\",\"value\":1}"), Catch::Contains("JSON array"));
  CHECK_THAT(InputsError("5"), Catch::Contains("JSON array"));
  CHECK_THAT(InputsError("\"a\""), Catch::Contains("JSON array"));
}

TEST_CASE("ParseInputs refuses an item that is not an object and names its index",
          "[unit][request]") {
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":1},2]"), Catch::StartsWith("input[1]:"));
  CHECK_THAT(InputsError("[[1]]"), Catch::StartsWith("input[0]:"));
  CHECK_THAT(InputsError("[null]"), Catch::StartsWith("input[0]:"));
}

TEST_CASE("ParseInputs refuses an item without key or value", "[unit][request]") {
  CHECK_THAT(InputsError("[{\"value\":1}]"), Catch::Contains("input[0]: missing \"key\""));
  CHECK_THAT(InputsError("[{\"key\":\"a\"}]"), Catch::Contains("input[0]: missing \"value\""));
  CHECK_THAT(InputsError("[{}]"), Catch::StartsWith("input[0]: missing"));
}

TEST_CASE("ParseInputs refuses an empty key", "[unit][request]") {
  CHECK_THAT(InputsError("[{\"key\":\"\",\"value\":1}]"), Catch::StartsWith("input[0].key:"));
}

TEST_CASE("ParseInputs accepts a key of kMaxKeyBytes bytes and refuses a longer one",
          "[unit][request]") {
  std::vector<Input> inputs;
  std::string longest(kMaxKeyBytes, 'k');
  REQUIRE(ParseInputs("[{\"key\":\"" + longest + "\",\"value\":1}]", &inputs).ok());
  CHECK(inputs[0].key == longest);
  // The limit counts bytes, not characters: 513 two-byte characters are 1026 bytes.
  std::string multibyte;
  for (size_t i = 0; i < kMaxKeyBytes / 2 + 1; ++i) multibyte += "\xC3\xA9";
  for (const std::string& key : {longest + "k", multibyte}) {
    std::string message = InputsError("[{\"key\":\"" + key + "\",\"value\":1}]");
    CHECK_THAT(message, Catch::StartsWith("input[0].key:"));
    CHECK_THAT(message, Catch::Contains(std::to_string(kMaxKeyBytes)));
  }
}

TEST_CASE("ParseInputs refuses a key that is not a string", "[unit][request]") {
  for (const char* key : {"1", "null", "true", "[\"a\"]", "{\"a\":1}"}) {
    INFO("key " << key);
    CHECK_THAT(InputsError(std::string("[{\"key\":") + key + ",\"value\":1}]"),
               Catch::Contains("input[0].key: expected a string"));
  }
}

TEST_CASE("ParseInputs refuses an unknown field in an item and names it", "[unit][request]") {
  std::string message = InputsError("[{\"key\":\"a\",\"value\":1,\"extra\":2}]");
  CHECK_THAT(message, Catch::StartsWith("input[0]:"));
  CHECK_THAT(message, Catch::Contains("\"extra\""));
}

TEST_CASE("ParseInputs refuses key or value given twice in one item", "[unit][request]") {
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"key\":\"b\",\"value\":1}]"),
             Catch::Contains("input[0]: \"key\" is given twice"));
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":1,\"value\":2}]"),
             Catch::Contains("input[0]: \"value\" is given twice"));
}

TEST_CASE("ParseInputs names the index of the bad input", "[unit][request]") {
  const std::string good = "{\"key\":\"a\",\"value\":1},{\"key\":\"b\",\"value\":2},";
  CHECK_THAT(InputsError("[" + good + "{\"key\":\"\",\"value\":3}]"),
             Catch::StartsWith("input[2].key:"));
  CHECK_THAT(InputsError("[" + good + "{\"value\":3}]"), Catch::StartsWith("input[2]:"));
  CHECK_THAT(InputsError("[" + good + "{\"key\":\"c\",\"value\":3,\"x\":0}]"),
             Catch::StartsWith("input[2]:"));
  CHECK_THAT(InputsError("[" + good + "7]"), Catch::StartsWith("input[2]:"));
}

TEST_CASE("ParseInputs reports invalid JSON with its byte offset", "[unit][request]") {
  std::string unterminated = "[{\"key\":\"a\",\"value\":1}";
  CHECK_THAT(InputsError(unterminated),
             Catch::Contains("at offset " + std::to_string(unterminated.size())));
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":1},]"), Catch::Contains("at offset 23"));
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":\"\xFF\"}]"), Catch::Contains("at offset"));
  CHECK_THAT(InputsError("[] []"), Catch::Contains("at offset 3"));
}

TEST_CASE("ParseInputs refuses a body with bytes after a NUL byte", "[unit][request]") {
  std::vector<Input> inputs;
  CHECK_FALSE(ParseInputs(std::string("[]\0[{\"key\":1}]", 14), &inputs).ok());
}

TEST_CASE("ParseInputs accepts a value as deep as the limit allows and refuses one level more",
          "[unit][request]") {
  // The array of inputs and the input object take two of the kMaxJsonDepth levels.
  int deepest = kMaxJsonDepth - 2;
  std::vector<Input> inputs;
  std::string value = std::string(deepest, '[') + std::string(deepest, ']');
  REQUIRE(ParseInputs("[{\"key\":\"a\",\"value\":" + value + "}]", &inputs).ok());
  CHECK(inputs[0].value == value);
  std::string too_deep = std::string(deepest + 1, '[') + std::string(deepest + 1, ']');
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":" + too_deep + "}]"),
             Catch::Contains("input[0].value: nested deeper"));
  std::string objects;
  for (int i = 0; i <= deepest; ++i) objects += "{\"a\":";
  objects += "1" + std::string(deepest + 1, '}');
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":" + objects + "}]"),
             Catch::Contains("input[0].value: nested deeper"));
}

TEST_CASE("ParseInputsFast takes the usual body and gives what ParseInputsFully gives",
          "[unit][request]") {
  for (const std::string body : {
           "[{\"key\":\"a\",\"value\":1}]",
           " [ { \"value\" : { \"x\" : [ 1 , \"s \\\" \\u00e9\" ] } , \"key\" : \"b\" } ,"
           "{\"key\":\"c/d e\",\"value\":null} ]\n",
           "[{\"key\":\"\xC3\xA9\",\"value\":-1.5e+3},{\"key\":\"k\",\"value\":\"\"}]",
       }) {
    INFO("body: " << body);
    std::vector<Input> fast;
    std::vector<Input> full;
    REQUIRE(ParseInputsFast(body, &fast));
    REQUIRE(ParseInputsFully(body, &full).ok());
    REQUIRE(fast.size() == full.size());
    for (size_t i = 0; i < fast.size(); ++i) {
      CHECK(fast[i].key == full[i].key);
      CHECK(fast[i].value == full[i].value);
    }
  }
}

TEST_CASE("ParseInputsFast leaves other bodies, valid or not, to ParseInputsFully",
          "[unit][request]") {
  const std::string deep(kMaxJsonDepth - 1, '[');
  for (const std::string& body : {
           // Valid, but not the usual shape: the full parser takes them.
           std::string("[]"),
           std::string("[{\"key\":\"\\u0061\",\"value\":1}]"),
           std::string("[{\"key\":\"a\",\"value\":\"\\ud83d\\ude00\"}]"),
           std::string("[{\"key\":\"a\",\"value\":") + std::string(301, '9') + "}]",
           // Invalid: the full parser says what is wrong.
           std::string("[{\"key\":\"a\",\"value\":1},]"),
           std::string("[{\"key\":\"a\",\"key\":\"b\",\"value\":1}]"),
           std::string("[{\"key\":\"a\"}]"),
           std::string("[{\"key\":\"\",\"value\":1}]"),
           std::string("[{\"key\":\"a\",\"value\":1,\"x\":2}]"),
           std::string("[{\"key\":\"a\",\"value\":1}] x"),
           std::string("[{\"key\":\"a\",\"value\":") + deep + std::string(kMaxJsonDepth - 1, ']') +
               "}]",
           std::string("[{\"key\":\"") + std::string(kMaxKeyBytes + 1, 'k') + "\",\"value\":1}]",
       }) {
    INFO("body: " << body.substr(0, 200));
    std::vector<Input> fast(1);
    CHECK_FALSE(ParseInputsFast(body, &fast));
    CHECK(fast.size() == 1);  // unchanged
    std::vector<Input> full;
    std::vector<Input> both;
    Status full_status = ParseInputsFully(body, &full);
    Status status = ParseInputs(body, &both);
    CHECK(status.code() == full_status.code());
    CHECK(status.message() == full_status.message());
    CHECK(both.size() == full.size());
  }
  std::vector<Input> inputs;
  REQUIRE(ParseInputs("[{\"key\":\"\\u0061\",\"value\":1}]", &inputs).ok());
  CHECK(inputs[0].key == "a");
}

TEST_CASE("ParseInputs refuses 100000 open brackets without crashing", "[unit][request]") {
  InputsError(std::string(100000, '['));
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":" + std::string(100000, '[')),
             Catch::Contains("nested deeper"));
}

TEST_CASE("ParseInputs leaves the inputs untouched when it refuses the body", "[unit][request]") {
  std::vector<Input> inputs(1);
  inputs[0].key = "keep";
  CHECK_FALSE(
      ParseInputs("[{\"key\":\"a\",\"value\":1},{\"key\":\"\",\"value\":1}]", &inputs).ok());
  REQUIRE(inputs.size() == 1);
  CHECK(inputs[0].key == "keep");
}

// ParseOutputQuery

TEST_CASE("ParseOutputQuery defaults to waiting for the whole output as a JSON array",
          "[unit][request]") {
  OutputQuery query;
  query.wait = false;
  query.offset = 9;
  REQUIRE(ParseOutputQuery({}, "", &query).ok());
  CHECK(query.wait);
  CHECK(query.offset == 0);
  CHECK(query.limit == UINT64_MAX);
  CHECK(query.format == OutputReader::kArray);
}

TEST_CASE("ParseOutputQuery reads wait, offset, limit and format", "[unit][request]") {
  OutputQuery query;
  REQUIRE(
      ParseOutputQuery(
          {{"wait", "false"}, {"offset", "2500"}, {"limit", "3"}, {"format", "ndjson"}}, "", &query)
          .ok());
  CHECK_FALSE(query.wait);
  CHECK(query.offset == 2500);
  CHECK(query.limit == 3);
  CHECK(query.format == OutputReader::kNdjson);

  REQUIRE(ParseOutputQuery({{"wait", "0"}, {"limit", "0"}, {"format", "json"}}, "", &query).ok());
  CHECK_FALSE(query.wait);
  CHECK(query.limit == 0);
  CHECK(query.format == OutputReader::kArray);

  REQUIRE(ParseOutputQuery({{"wait", "1"}, {"offset", "9999999999999999999"}}, "", &query).ok());
  CHECK(query.wait);
  CHECK(query.offset == 9999999999999999999ULL);
}

TEST_CASE("ParseOutputQuery selects NDJSON from the Accept header unless format says otherwise",
          "[unit][request]") {
  OutputQuery query;
  REQUIRE(ParseOutputQuery({}, "application/x-ndjson", &query).ok());
  CHECK(query.format == OutputReader::kNdjson);
  REQUIRE(ParseOutputQuery({}, "text/html, application/x-ndjson", &query).ok());
  CHECK(query.format == OutputReader::kNdjson);
  REQUIRE(ParseOutputQuery({}, "application/json", &query).ok());
  CHECK(query.format == OutputReader::kArray);
  REQUIRE(ParseOutputQuery({{"format", "json"}}, "application/x-ndjson", &query).ok());
  CHECK(query.format == OutputReader::kArray);
}

TEST_CASE("ParseOutputQuery refuses an unknown parameter and names it", "[unit][request]") {
  std::string message = QueryError({{"offest", "1"}});
  CHECK_THAT(message, Catch::Contains("\"offest\""));
}

TEST_CASE("ParseOutputQuery refuses bad values and names the parameter", "[unit][request]") {
  CHECK_THAT(QueryError({{"wait", "yes"}}), Catch::StartsWith("wait:"));
  CHECK_THAT(QueryError({{"wait", ""}}), Catch::StartsWith("wait:"));
  CHECK_THAT(QueryError({{"format", "xml"}}), Catch::StartsWith("format:"));
  for (const char* bad : {"", "-1", "+1", "1.5", "abc", "1e3", " 1", "18446744073709551616",
                          "99999999999999999999"}) {
    INFO("value '" << bad << "'");
    CHECK_THAT(QueryError({{"offset", bad}}), Catch::StartsWith("offset:"));
    CHECK_THAT(QueryError({{"limit", bad}}), Catch::StartsWith("limit:"));
  }
}

TEST_CASE("ParseOutputQuery refuses a parameter given twice", "[unit][request]") {
  CHECK_THAT(QueryError({{"limit", "1"}, {"limit", "2"}}), Catch::Contains("limit: given twice"));
}

// CheckWebhookUrl

TEST_CASE("CheckWebhookUrl accepts absolute http and https URLs", "[unit][request]") {
  CHECK(CheckWebhookUrl("http://example.com/hook") == "");
  CHECK(CheckWebhookUrl("https://example.com:8443/a/b?x=1#frag") == "");
  CHECK(CheckWebhookUrl("http://127.0.0.1:9") == "");
  CHECK(CheckWebhookUrl("http://[::1]:8080/") == "");
}

TEST_CASE("CheckWebhookUrl refuses other schemes, relative URLs, missing hosts and spaces",
          "[unit][request]") {
  for (const char* url :
       {"ftp://example.com/", "file:///etc/passwd", "mailto:a@b.c", "example.com/hook", "/hook",
        "//example.com/hook", "", "http://", "http://:80/", "http://?q=1", "http://a b/",
        "http://a/b c", " http://a/", "http://a/\t", "http://a/\x7F", "http://a:99999/"}) {
    INFO("url '" << url << "'");
    std::string error = CheckWebhookUrl(url);
    CHECK_THAT(error, Catch::StartsWith("url:"));
  }
  CHECK_THAT(CheckWebhookUrl("ftp://example.com/"), Catch::Contains("http or https"));
  CHECK_THAT(CheckWebhookUrl("http://a b/"), Catch::Contains("space"));
}

TEST_CASE("ParseInputs refuses a key or a value with an escaped lone surrogate",
          "[unit][request]") {
  // Found by the fuzzer: RapidJSON 1.1.0 decodes "\udc00" to bytes that are
  // not UTF-8, which would reach the URL, the logs and the outcome file.
  CHECK_THAT(InputsError("[{\"key\":\"\\udc00\",\"value\":1}]"),
             Catch::Contains("input[0].key") && Catch::Contains("UTF-8"));
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":1},{\"key\":\"b\",\"value\":[\"\\udc00\"]}]"),
             Catch::Contains("input[1].value") && Catch::Contains("UTF-8"));
  CHECK_THAT(InputsError("[{\"key\":\"a\",\"value\":{\"\\udc00\":1}}]"),
             Catch::Contains("input[0].value"));
}

TEST_CASE("ParseCount takes decimal counts up to 2^64-1 and nothing else", "[unit][request]") {
  uint64_t n = 0;
  CHECK(ParseCount("0", &n));
  CHECK(n == 0);
  CHECK(ParseCount("18446744073709551615", &n));
  CHECK(n == UINT64_MAX);
  CHECK_FALSE(ParseCount("18446744073709551616", &n));
  CHECK_FALSE(ParseCount("", &n));
  CHECK_FALSE(ParseCount("-1", &n));
  CHECK_FALSE(ParseCount("+1", &n));
  CHECK_FALSE(ParseCount("1a", &n));
  CHECK_FALSE(ParseCount(" 1", &n));
}

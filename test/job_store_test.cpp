// Unit tests of job_store.hpp: job records saved, replaced, listed and
// refused, and outcome files scanned at start (counters, index, keys, and
// the cut of a torn or bad tail). Files live in a TempDir.

#include "job_store.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "key_table.hpp"
#include "log.hpp"
#include "output.hpp"
#include "request.hpp"
#include "test/harness.hpp"

namespace {

using SystemTime = std::chrono::system_clock::time_point;

// A time ms milliseconds after the epoch; records keep milliseconds.
SystemTime At(int64_t ms) { return SystemTime(std::chrono::milliseconds(ms)); }

// 2026-11-28T07:34:20.123Z.
constexpr int64_t kSomeTimeMs = 1795851260123;

// A record whose every field differs from its default.
JobRecord FullRecord(const std::string& id) {
  JobRecord record;
  record.id = id;
  record.options.url = "http://127.0.0.1:8080/hook?x=1";
  record.options.secret =
      "s\xC3\xA9"
      "cret \xE2\x98\x83 \xF0\x9F\x94\x91 \"q\" \\ end";
  record.options.concurrency = 7;
  record.options.maxsize = 12345;
  record.options.timeout_ms = 2500;
  record.options.max_attempts = 9;
  record.options.backoff_ms = 0;
  record.options.max_backoff_ms = 4000;
  record.options.rate_per_sec = 0.1;  // no exact binary form: the text must round-trip it
  record.options.callback_url = "https://example.com/done";
  record.state = JobState::kDone;
  record.created_at = At(kSomeTimeMs);
  record.done_at = At(kSomeTimeMs + 61001);
  return record;
}

void RequireSameRecord(const JobRecord& a, const JobRecord& b) {
  REQUIRE(a.id == b.id);
  REQUIRE(a.options.url == b.options.url);
  REQUIRE(a.options.secret == b.options.secret);
  REQUIRE(a.options.concurrency == b.options.concurrency);
  REQUIRE(a.options.maxsize == b.options.maxsize);
  REQUIRE(a.options.timeout_ms == b.options.timeout_ms);
  REQUIRE(a.options.max_attempts == b.options.max_attempts);
  REQUIRE(a.options.backoff_ms == b.options.backoff_ms);
  REQUIRE(a.options.max_backoff_ms == b.options.max_backoff_ms);
  REQUIRE(a.options.rate_per_sec == b.options.rate_per_sec);
  REQUIRE(a.options.callback_url == b.options.callback_url);
  REQUIRE(a.state == b.state);
  REQUIRE(a.created_at == b.created_at);
  REQUIRE(a.done_at == b.done_at);
}

void WriteText(const std::string& path, const std::string& text) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(std::fwrite(text.data(), 1, text.size(), f) == text.size());
  REQUIRE(std::fclose(f) == 0);
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  REQUIRE(stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

// Loads path, which must be refused as Invalid naming it; returns the message.
std::string RequireInvalidRecord(const std::string& path) {
  JobRecord record;
  Status s = LoadJobRecord(path, &record);
  REQUIRE(s.code() == Status::kInvalid);
  REQUIRE(s.message().find(path) != std::string::npos);
  return s.message();
}

// Scans path with stride, requiring success.
OutcomeScan Scan(const std::string& path, uint64_t stride = 1024) {
  OutcomeScan scan;
  Status s = ScanOutcomes(path, stride, &scan);
  INFO(s.message());
  REQUIRE(s.ok());
  return scan;
}

// n outcome lines, every third a failure, keys k0..k{n-1}.
std::vector<std::string> SomeEntries(int n) {
  std::vector<std::string> entries;
  for (int i = 0; i < n; ++i) {
    std::string key = "k" + std::to_string(i);
    entries.push_back(i % 3 == 2 ? ErrorEntry(key, 500, "boom", "{\"why\":\"x\"}", 5)
                                 : SuccessEntry(key, "{\"i\":" + std::to_string(i) + "}"));
  }
  return entries;
}

std::string Lines(const std::vector<std::string>& entries) {
  std::string text;
  for (const std::string& entry : entries) text.append(entry).push_back('\n');
  return text;
}

}  // namespace

TEST_CASE("A job record reads back as it was saved, every field", "[job_store][unit]") {
  TempDir dir;
  JobRecord saved = FullRecord("job1");
  saved.state =
      GENERATE(JobState::kOpen, JobState::kClosing, JobState::kDone, JobState::kCancelled);
  if (GENERATE(false, true)) saved.options.rate_per_sec = 0;  // null: no rate limit
  if (GENERATE(false, true)) saved.options.callback_url.clear();
  if (GENERATE(false, true)) saved.done_at = SystemTime();  // null: not ended yet

  REQUIRE(SaveJobRecord(dir.path(), saved).ok());
  std::string path = JobRecordPath(dir.path(), "job1");
  REQUIRE(path == dir.File("job1.job"));
  REQUIRE(ModeOf(path) == 0600);
  JobRecord loaded;
  Status s = LoadJobRecord(path, &loaded);
  INFO(s.message());
  REQUIRE(s.ok());
  RequireSameRecord(saved, loaded);
  // One JSON object, its options under the names of POST /job.
  rapidjson::Document doc = ParseJson(ReadFile(path));
  REQUIRE(doc["version"].GetInt() == 1);
  REQUIRE(Text(doc["options"], "url") == saved.options.url);
  REQUIRE(Text(doc, "state") == JobStateName(saved.state));
  REQUIRE(Text(doc, "created_at") == "2026-11-28T07:34:20.123Z");
  REQUIRE(doc["done_at"].IsNull() == (saved.done_at == SystemTime()));
  REQUIRE(ListDir(dir.path()) == std::vector<std::string>{"job1.job"});  // no temporary left
}

TEST_CASE("A later save replaces the job record whole", "[job_store][unit]") {
  TempDir dir;
  JobRecord record = FullRecord("j");
  record.state = JobState::kOpen;
  record.done_at = SystemTime();
  REQUIRE(SaveJobRecord(dir.path(), record).ok());
  record.state = JobState::kCancelled;
  record.done_at = At(kSomeTimeMs + 5);
  record.options.secret = "short";  // a shorter file must leave no tail of the longer one
  REQUIRE(SaveJobRecord(dir.path(), record).ok());
  JobRecord loaded;
  REQUIRE(LoadJobRecord(JobRecordPath(dir.path(), "j"), &loaded).ok());
  RequireSameRecord(record, loaded);
  REQUIRE(ListDir(dir.path()) == std::vector<std::string>{"j.job"});
}

TEST_CASE("ListJobRecords gives ids oldest first, ignoring temporaries and other files",
          "[job_store][unit]") {
  TempDir dir;
  std::vector<std::pair<std::string, int64_t>> jobs = {
      {"b", 300}, {"a", 100}, {"c", 200}, {"d", 200}};  // c and d tie: by id
  for (const auto& job : jobs) {
    JobRecord record = FullRecord(job.first);
    record.created_at = At(kSomeTimeMs + job.second);
    REQUIRE(SaveJobRecord(dir.path(), record).ok());
  }
  // A save torn by a crash leaves its temporary beside the record.
  WriteText(dir.File("a.job.tmp"), "{\"version\":1,\"id\":\"a\",\"opt");
  WriteText(dir.File("e.job.tmp"), "");
  WriteText(dir.File("a.journal"), "");
  WriteText(dir.File("a.ndjson"), "");
  REQUIRE(mkdir(dir.File("dir.job").c_str(), 0700) == 0);  // fails to load: last
  WriteText(dir.File("bad.job"), "{not json");             // ditto, by id

  std::vector<std::string> ids = {"stale"};
  REQUIRE(ListJobRecords(dir.path(), &ids).ok());
  REQUIRE(ids == std::vector<std::string>{"a", "c", "d", "b", "bad", "dir"});
}

TEST_CASE("A job record that is not one is refused as Invalid, naming its path",
          "[job_store][unit]") {
  TempDir dir;
  JobRecord record = FullRecord("x");
  REQUIRE(SaveJobRecord(dir.path(), record).ok());
  const std::string good = ReadFile(JobRecordPath(dir.path(), "x"));
  const std::string path = dir.File("y.job");
  auto with = [&good](const std::string& from, const std::string& to) {
    std::string text = good;
    size_t at = text.find(from);
    REQUIRE(at != std::string::npos);
    return text.replace(at, from.size(), to);
  };

  SECTION("torn at every length") {
    std::string torn_good = with("\"id\":\"x\"", "\"id\":\"y\"");
    // Every prefix short of the whole object (its newline may go).
    for (size_t n = 0; n + 1 < torn_good.size(); ++n) {
      WriteText(path, torn_good.substr(0, n));
      INFO("cut to " << n << " bytes");
      RequireInvalidRecord(path);
    }
  }
  SECTION("another file's id") {
    WriteText(path, good);
    REQUIRE(RequireInvalidRecord(path).find("id: expected \"y\"") != std::string::npos);
  }
  SECTION("fields wrong one at a time") {
    std::string y = with("\"id\":\"x\"", "\"id\":\"y\"");
    for (auto& edit : std::vector<std::pair<std::string, std::string>>{
             {"\"version\":1", "\"version\":2"},
             {"\"state\":\"done\"", "\"state\":\"finished\""},
             {"\"created_at\":\"2026-11-28T07:34:20.123Z\"", "\"created_at\":\"yesterday\""},
             {"\"created_at\":\"2026-11-28T07:34:20.123Z\"", "\"created_at\":null"},
             {"\"done_at\":\"", "\"done_at\":\"x"},
             {"\"done_at\":\"", "\"done_at\":1,\"x\":\""},
             {"\"concurrency\":7", "\"concurrency\":0"},
             {"\"url\":\"http://127.0.0.1:8080/hook?x=1\",", ""},
             {"\"version\":1,", ""},
             {"{\"version\":1", "{\"extra\":true,\"version\":1"},
             {"{\"version\":1", "{\"state\":\"open\",\"version\":1"},
             {"\"state\":\"done\"", "\"state\":\"done\\u0000\""}}) {
      std::string text = y;
      size_t at = text.find(edit.first);
      REQUIRE(at != std::string::npos);
      WriteText(path, text.replace(at, edit.first.size(), edit.second));
      INFO(text);
      RequireInvalidRecord(path);
    }
  }
  SECTION("not named {id}.job") {
    WriteText(dir.File("x.json"), good);
    RequireInvalidRecord(dir.File("x.json"));
  }
  SECTION("missing") {
    JobRecord loaded;
    REQUIRE(LoadJobRecord(dir.File("none.job"), &loaded).code() == Status::kNotFound);
  }
}

TEST_CASE("SaveJobRecord refuses what LoadJobRecord would refuse", "[job_store][unit]") {
  TempDir dir;
  JobRecord record = FullRecord("z");
  record.options.url = "ftp://nowhere";  // never valid in POST /job: would be lost at restart
  Status s = SaveJobRecord(dir.path(), record);
  REQUIRE(s.code() == Status::kInvalid);
  record = FullRecord("../z");
  REQUIRE(SaveJobRecord(dir.path(), record).code() == Status::kInvalid);
  REQUIRE(ListDir(dir.path()).empty());
}

TEST_CASE("ParseRfc3339 reads back what Rfc3339 writes, and nothing else", "[job_store][unit]") {
  for (int64_t ms : {int64_t{0}, int64_t{951782400000} /* 2000-02-29 */, kSomeTimeMs,
                     int64_t{4102444799999} /* 2099-12-31T23:59:59.999 */}) {
    SystemTime t;
    INFO(Rfc3339(At(ms)));
    REQUIRE(ParseRfc3339(Rfc3339(At(ms)), &t));
    REQUIRE(t == At(ms));
  }
  SystemTime t = At(42);
  for (const char* bad :
       {"", "2026-11-28T07:34:20Z", "2026-11-28T07:34:20.123", "2026-11-28 07:34:20.123Z",
        "2026-13-28T07:34:20.123Z", "2026-02-29T07:34:20.123Z", "2100-02-29T00:00:00.000Z",
        "2026-11-28T24:00:00.000Z", "2026-11-28T07:60:20.123Z", "2026-11-28T07:34:60.123Z",
        "1969-12-31T23:59:59.999Z", "2026-11-28T07:34:20.123+00:00", "2026-1a-28T07:34:20.123Z",
        "+026-11-28T07:34:20.123Z", "2300-01-01T00:00:00.000Z" /* past system_clock's end */}) {
    INFO(bad);
    REQUIRE_FALSE(ParseRfc3339(bad, &t));
  }
  REQUIRE(t == At(42));
}

TEST_CASE("ScanOutcomes counts entries and indexes every stride entries", "[job_store][unit]") {
  TempDir dir;
  const std::string path = dir.File("o.ndjson");
  const uint64_t stride = 5;
  const int n = GENERATE(1, 4, 5, 6, 23);
  std::vector<std::string> entries = SomeEntries(n);
  WriteText(path, Lines(entries));
  std::vector<uint64_t> index;
  uint64_t offset = 0, succeeded = 0;
  for (int i = 0; i < n; ++i) {
    if (i % stride == 0) index.push_back(offset);
    offset += entries[i].size() + 1;
    if (i % 3 != 2) ++succeeded;
  }

  OutcomeScan scan = Scan(path, stride);
  REQUIRE(scan.entries == static_cast<uint64_t>(n));
  REQUIRE(scan.succeeded == succeeded);
  REQUIRE(scan.failed == n - succeeded);
  REQUIRE(scan.bytes == offset);
  REQUIRE(scan.index == index);
  REQUIRE(scan.keys.size() == static_cast<size_t>(n));
  REQUIRE(scan.repeated_keys == 0);
  REQUIRE(ReadFile(path) == Lines(entries));  // nothing cut
}

TEST_CASE("ScanOutcomes holds exactly the decoded keys written", "[job_store][unit]") {
  TempDir dir;
  const std::string path = dir.File("o.ndjson");
  const std::vector<std::string> keys = {"plain",
                                         "quo\"te",
                                         "back\\slash",
                                         "new\nline",
                                         "tab\t",
                                         "ctl\x01",
                                         "sl/ash",
                                         std::string("nul\0in", 6),
                                         "\xC3\xA9t\xC3\xA9",
                                         "\xE2\x98\x83",
                                         "\xF0\x9F\x98\x80",
                                         "k" + std::string(kMaxKeyBytes - 1, 'x')};
  std::string text;
  for (size_t i = 0; i < keys.size(); ++i) {
    text.append(i % 2 ? ErrorEntry(keys[i], 0, "timed out", "", 3) : SuccessEntry(keys[i], "1"));
    text.push_back('\n');
  }
  // The same key spelt with escapes where AppendJsonString would not use them.
  text.append("{\"key\":\"\\u00e9sc\\/aped\\ud83d\\ude00\",\"value\":[1,{\"key\":2}]}\n");

  WriteText(path, text);
  OutcomeScan scan = Scan(path);
  REQUIRE(scan.entries == keys.size() + 1);
  REQUIRE(scan.keys.size() == keys.size() + 1);
  for (const std::string& key : keys) REQUIRE(scan.keys.Contains(KeyTable::KeyHash(key)));
  REQUIRE(scan.keys.Contains(KeyTable::KeyHash("\xC3\xA9sc/aped\xF0\x9F\x98\x80")));
  REQUIRE_FALSE(scan.keys.Contains(KeyTable::KeyHash("nul")));
  REQUIRE_FALSE(scan.keys.Contains(KeyTable::KeyHash("2")));  // a "key" nested in a value
}

TEST_CASE("ScanOutcomes cuts a torn last entry at every byte, keeping those before it",
          "[job_store][unit]") {
  TempDir dir;
  const std::string path = dir.File("o.ndjson");
  std::vector<std::string> entries = SomeEntries(3);
  const std::string kept = Lines({entries[0], entries[1]});
  const std::string last = GENERATE(SuccessEntry("last", "{\"a\":[1,2,\"x\"]}"),
                                    ErrorEntry("last", 503, "unavailable", "busy", 2));
  // Every prefix of the last line short of its newline, the whole JSON included.
  for (size_t n = 0; n <= last.size(); ++n) {
    WriteText(path, kept + last.substr(0, n));
    INFO("the last line cut to " << n << " bytes");
    OutcomeScan scan = Scan(path, 1);
    REQUIRE(scan.entries == 2);
    REQUIRE(scan.bytes == kept.size());
    REQUIRE(scan.index == std::vector<uint64_t>{0, entries[0].size() + 1});
    REQUIRE_FALSE(scan.keys.Contains(KeyTable::KeyHash("last")));
    REQUIRE(ReadFile(path) == kept);
  }
  // With its newline, the line is whole.
  WriteText(path, kept + last + "\n");
  REQUIRE(Scan(path).entries == 3);
}

TEST_CASE("ScanOutcomes cuts everything from the first line that is not an entry",
          "[job_store][unit]") {
  TempDir dir;
  const std::string path = dir.File("o.ndjson");
  std::vector<std::string> entries = SomeEntries(4);
  const std::string bad = GENERATE(
      as<std::string>{}, "", "garbage", "{\"value\":1}", "{\"key\":1,\"value\":1}",
      "{\"key\":\"a\"}", "{\"key\":\"a\",\"value\":1,\"error\":{}}",
      "{\"key\":\"a\",\"error\":\"x\"}", "{\"key\":\"a\",\"key\":\"b\",\"value\":1}",
      "[\"key\",\"a\"]", "\"key\"", "{\"key\":\"a\",\"value\":1} x",
      std::string("{\"key\":\"a\",\"value\":1}") + '\0' + "x", "{\"key\":\"\xFF\",\"value\":1}",
      "{\"key\":\"a\",\"value\":1", "{\"key\":\"a\",\"value\":01}");
  INFO("bad line: " << bad);
  const std::string kept = Lines({entries[0]});
  SECTION("in the middle") { WriteText(path, kept + bad + "\n" + Lines({entries[2], entries[3]})); }
  SECTION("last, after the last newline") { WriteText(path, kept + bad); }
  OutcomeScan scan = Scan(path);
  REQUIRE(scan.entries == 1);
  REQUIRE(scan.bytes == kept.size());
  REQUIRE(scan.keys.size() == 1);
  REQUIRE(ReadFile(path) == kept);
}

TEST_CASE("ScanOutcomes reads lines longer than its block and files of many blocks",
          "[job_store][unit]") {
  TempDir dir;
  const std::string path = dir.File("o.ndjson");
  std::vector<std::string> entries = SomeEntries(20000);
  entries[7] = SuccessEntry("long", "\"" + std::string(300000, 'v') + "\"");
  WriteText(path, Lines(entries));
  OutcomeScan scan = Scan(path, 1000);
  REQUIRE(scan.entries == entries.size());
  REQUIRE(scan.bytes == Lines(entries).size());
  REQUIRE(scan.index.size() == 20);
  REQUIRE(scan.keys.Contains(KeyTable::KeyHash("long")));
  REQUIRE(scan.repeated_keys == 0);
}

TEST_CASE("ScanOutcomes creates a missing outcome file, empty", "[job_store][unit]") {
  TempDir dir;
  OutcomeScan scan = Scan(dir.File("o.ndjson"));
  REQUIRE(scan.entries == 0);
  REQUIRE(scan.bytes == 0);
  REQUIRE(scan.index == std::vector<uint64_t>{0});
  REQUIRE(ModeOf(dir.File("o.ndjson")) == 0600);
  REQUIRE(ReadFile(dir.File("o.ndjson")).empty());
  OutcomeScan unused;
  REQUIRE(ScanOutcomes(dir.File("o.ndjson"), 0, &unused).code() == Status::kInvalid);
  REQUIRE(ScanOutcomes(dir.File("none/o.ndjson"), 1, &unused).code() == Status::kInternal);
}

TEST_CASE("ScanOutcomes counts a repeated key but keeps its entry", "[job_store][unit]") {
  TempDir dir;
  WriteText(dir.File("o.ndjson"), Lines({SuccessEntry("a", "1"), SuccessEntry("a", "2")}));
  OutcomeScan scan = Scan(dir.File("o.ndjson"));
  REQUIRE(scan.entries == 2);
  REQUIRE(scan.keys.size() == 1);
  REQUIRE(scan.repeated_keys == 1);
}

// Not run by default, nor by "[job_store]": ./pmmap_test "[perf]" prints
// how long a scan of a million typical entries takes, in wall-clock time
// and in CPU time (which a machine shared with other builds inflates less).
TEST_CASE("ScanOutcomes of a million entries, timed", "[perf][.]") {
  TempDir dir;
  const std::string path = dir.File("o.ndjson");
  {
    std::string text;
    std::FILE* f = std::fopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    for (int i = 0; i < 1000000; ++i) {
      text = i % 10 == 9 ? ErrorEntry("key-" + std::to_string(i), 500, "HTTP 500", "oops", 5)
                         : SuccessEntry("key-" + std::to_string(i),
                                        "{\"id\":" + std::to_string(i) + ",\"ok\":true}");
      text.push_back('\n');
      REQUIRE(std::fwrite(text.data(), 1, text.size(), f) == text.size());
    }
    REQUIRE(std::fclose(f) == 0);
  }
  auto start = std::chrono::steady_clock::now();
  std::clock_t cpu_start = std::clock();
  OutcomeScan scan = Scan(path);
  double cpu = static_cast<double>(std::clock() - cpu_start) / CLOCKS_PER_SEC;
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  REQUIRE(scan.entries == 1000000);
  WARN("scanned 1,000,000 entries (" << scan.bytes / 1e6 << " MB) in " << wall << " s, " << cpu
                                     << " s of CPU");
}

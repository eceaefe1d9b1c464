// Unit tests of the journal (journal.hpp): what Append writes, JournalReader
// reads back, in order; what Open keeps of a damaged file (torn tails,
// zeros, flipped bytes); that a failed Append leaves nothing; and the
// flushes (WaitDurable's group commit, SyncIfDirty). Also CRC-32C
// (crc32c.hpp), which checks each record.

#include "journal.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "crc32c.hpp"
#include "job.hpp"
#include "request.hpp"
#include "test/harness.hpp"

namespace {

constexpr uint64_t kHeaderBytes = 16;

using Records = std::vector<std::pair<std::string, std::string>>;

std::vector<Input> MakeInputs(const Records& records) {
  std::vector<Input> inputs(records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    inputs[i].key = records[i].first;
    inputs[i].value = records[i].second;
  }
  return inputs;
}

// n records whose keys start with prefix, with values of about 80 bytes.
Records Numbered(const std::string& prefix, int n) {
  Records records;
  for (int i = 0; i < n; ++i) {
    std::string key = prefix + std::to_string(i);
    records.emplace_back(key, "{\"n\":" + std::to_string(i) + ",\"text\":\"" +
                                  std::string(60, static_cast<char>('a' + i % 26)) + "\"}");
  }
  return records;
}

// Opens path, requiring success; returns the journal and its record count.
std::unique_ptr<Journal> OpenJournal(const std::string& path, uint64_t* records = nullptr,
                                     FsyncPolicy policy = FsyncPolicy::kEverySecond) {
  std::unique_ptr<Journal> journal;
  uint64_t count = 0;
  Status s = Journal::Open(path, policy, &journal, &count);
  INFO(s.message());
  REQUIRE(s.ok());
  if (records) *records = count;
  return journal;
}

uint64_t AppendAll(Journal* journal, const Records& records) {
  uint64_t end = 0;
  Status s = journal->Append(MakeInputs(records), 0, records.size(), &end);
  INFO(s.message());
  REQUIRE(s.ok());
  return end;
}

// Every record of the journal at path from offset to end; fails the test
// if the reader reports an error.
Records ReadAll(const std::string& path, uint64_t end, uint64_t offset = 0) {
  JournalReader reader(path, offset, end);
  Records records;
  Input input;
  std::string error;
  while (reader.Next(&input, &error)) records.emplace_back(input.key, input.value);
  INFO(error);
  REQUIRE(error.empty());
  REQUIRE(reader.offset() == end);
  return records;
}

uint64_t FileSize(const std::string& path) {
  struct stat st;
  REQUIRE(stat(path.c_str(), &st) == 0);
  return static_cast<uint64_t>(st.st_size);
}

void Truncate(const std::string& path, uint64_t size) {
  REQUIRE(truncate(path.c_str(), static_cast<off_t>(size)) == 0);
}

// Appends bytes to the file at path, creating it if missing.
void AppendBytes(const std::string& path, const std::string& bytes) {
  int fd = open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  close(fd);
}

void FlipByte(const std::string& path, uint64_t offset) {
  int fd = open(path.c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  char c = 0;
  REQUIRE(pread(fd, &c, 1, static_cast<off_t>(offset)) == 1);
  c = static_cast<char>(c ^ 0x20);
  REQUIRE(pwrite(fd, &c, 1, static_cast<off_t>(offset)) == 1);
  close(fd);
}

// A journal of three batches, kept with the offset where each record starts.
struct ThreeBatches {
  ThreeBatches() : path(dir.File("journal")) {
    auto journal = OpenJournal(path);
    records = Numbered("k", 12);
    for (size_t i = 0; i < records.size(); ++i) {
      starts.push_back(journal->size());
      AppendAll(journal.get(), {records[i]});
    }
    end = journal->size();
  }

  TempDir dir;
  std::string path;
  Records records;
  std::vector<uint64_t> starts;
  uint64_t end = 0;
};

// Reopens the journal and requires that exactly its first n records remain.
void RequireFirstRecordsKept(const ThreeBatches& j, size_t n) {
  uint64_t count = 99;
  auto journal = OpenJournal(j.path, &count);
  CHECK(count == n);
  uint64_t kept = n < j.starts.size() ? j.starts[n] : j.end;
  CHECK(journal->size() == kept);
  CHECK(FileSize(j.path) == kept);
  Records first(j.records.begin(), j.records.begin() + static_cast<long>(n));
  CHECK(ReadAll(j.path, journal->size()) == first);
}

}  // namespace

TEST_CASE("CRC-32C matches the published check values", "[journal][unit]") {
  CHECK(crc32c::Value("123456789", 9) == 0xe3069283u);
  std::string zeros(32, '\0');
  CHECK(crc32c::Value(zeros.data(), zeros.size()) == 0x8a9136aau);
  std::string text = "a string longer than eight bytes, cut anywhere";
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    uint32_t head = crc32c::Value(text.data(), cut);
    CHECK(crc32c::Extend(head, text.data() + cut, text.size() - cut) ==
          crc32c::Value(text.data(), text.size()));
  }
  CHECK(crc32c::ExtendTable(0, "123456789", 9) == 0xe3069283u);
  // The instruction and the tables agree, at every length and alignment.
  std::string bytes;
  for (int i = 0; i < 300; ++i) bytes.push_back(static_cast<char>(i * 131 + 7));
  for (size_t start = 0; start < 8; ++start) {
    for (size_t n = 0; start + n <= bytes.size(); n += 7) {
      REQUIRE(crc32c::Extend(5, bytes.data() + start, n) ==
              crc32c::ExtendTable(5, bytes.data() + start, n));
    }
  }
}

TEST_CASE("a journal reads back what was appended, in order", "[journal][unit]") {
  TempDir dir;
  std::string path = dir.File("journal");
  uint64_t count = 99;
  auto journal = OpenJournal(path, &count);
  CHECK(count == 0);
  CHECK(journal->size() == kHeaderBytes);
  CHECK(journal->path() == path);
  struct stat st;
  REQUIRE(stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  Records records;
  std::string every_byte;
  for (int c = 0; c < 256; ++c) every_byte.push_back(static_cast<char>(c));
  records.emplace_back(every_byte, "1");
  records.emplace_back(std::string("nul\0inside", 10), "\"\\n\"");
  records.emplace_back("", "null");
  records.emplace_back(std::string(kMaxKeyBytes, 'k'), "");
  // Values around and across the reader's 64 KiB blocks.
  for (size_t size : {1, 80, 65535, 65536, 65537, 200000, 3}) {
    records.emplace_back("size" + std::to_string(size), std::string(size, 'v'));
  }
  std::vector<Input> inputs = MakeInputs(records);
  uint64_t end = 0;
  REQUIRE(journal->Append(inputs, 0, 4, &end).ok());
  REQUIRE(journal->Append(inputs, 4, inputs.size(), &end).ok());
  CHECK(end == journal->size());
  CHECK(end == FileSize(path));

  SECTION("an empty batch appends nothing") {
    uint64_t empty_end = 0;
    REQUIRE(journal->Append(inputs, 2, 2, &empty_end).ok());
    CHECK(empty_end == end);
    CHECK(FileSize(path) == end);
  }
  CHECK(ReadAll(path, end) == records);

  SECTION("a reader stops at the end it was given") {
    AppendAll(journal.get(), Numbered("later", 3));
    CHECK(ReadAll(path, end) == records);
  }
  SECTION("reopening counts the records, and appending goes on after them") {
    journal.reset();
    journal = OpenJournal(path, &count);
    CHECK(count == records.size());
    CHECK(journal->size() == end);
    Records more = Numbered("more", 5);
    uint64_t new_end = AppendAll(journal.get(), more);
    Records all = records;
    all.insert(all.end(), more.begin(), more.end());
    CHECK(ReadAll(path, new_end) == all);
  }
}

TEST_CASE("a journal reader starts at a record boundary it reported", "[journal][unit]") {
  ThreeBatches j;
  JournalReader reader(j.path, 0, j.end);
  Input input;
  std::string error;
  for (int i = 0; i < 5; ++i) REQUIRE(reader.Next(&input, &error));
  CHECK(reader.offset() == j.starts[5]);
  Records rest(j.records.begin() + 5, j.records.end());
  CHECK(ReadAll(j.path, j.end, reader.offset()) == rest);
  CHECK(ReadAll(j.path, j.end, j.end).empty());
}

TEST_CASE("a journal leaves other fields of an input as they were", "[journal][unit]") {
  ThreeBatches j;
  JournalReader reader(j.path, 0, j.end);
  Input input;
  input.attempts = 7;
  std::string error;
  REQUIRE(reader.Next(&input, &error));
  CHECK(input.key == j.records[0].first);
  CHECK(input.attempts == 7);
}

TEST_CASE("a journal cut anywhere in its last record keeps the records before", "[journal][unit]") {
  ThreeBatches j;
  size_t last = j.records.size() - 1;
  for (uint64_t cut = j.starts[last]; cut < j.end; ++cut) {
    INFO("cut at " << cut);
    Truncate(j.path, cut);
    RequireFirstRecordsKept(j, last);
    // Put the record back for the next cut point.
    auto journal = OpenJournal(j.path);
    AppendAll(journal.get(), {j.records[last]});
    REQUIRE(journal->size() == j.end);
  }
  RequireFirstRecordsKept(j, j.records.size());
}

TEST_CASE("a journal cuts off zeros and garbage after its records", "[journal][unit]") {
  ThreeBatches j;
  std::string tail = GENERATE(std::string(1, '\0'), std::string(11, '\0'), std::string(12, '\0'),
                              std::string(4096, '\0'), std::string("garbage, not a record"),
                              std::string(100, '\xff'));
  AppendBytes(j.path, tail);
  RequireFirstRecordsKept(j, j.records.size());
}

TEST_CASE("a journal cuts off a last record with any byte flipped", "[journal][unit]") {
  ThreeBatches j;
  size_t last = j.records.size() - 1;
  for (uint64_t at = j.starts[last]; at < j.end; ++at) {
    INFO("byte flipped at " << at);
    FlipByte(j.path, at);
    RequireFirstRecordsKept(j, last);
    auto journal = OpenJournal(j.path);
    AppendAll(journal.get(), {j.records[last]});
  }
}

// Past a bad record no boundary can be trusted (its lengths may be the
// damaged bytes), so the journal is cut there: the records after it go too.
TEST_CASE("a journal is cut at a damaged record in its middle", "[journal][unit]") {
  ThreeBatches j;
  size_t middle = 5;
  uint64_t at = GENERATE(0, 3, 5, 9, 12, 15);  // checksum, lengths, key, value
  INFO("byte flipped at " << at << " of record " << middle);
  FlipByte(j.path, j.starts[middle] + at);
  RequireFirstRecordsKept(j, middle);
}

TEST_CASE("a journal reader reports a damaged record and where it is", "[journal][unit]") {
  ThreeBatches j;
  FlipByte(j.path, j.starts[3] + 14);
  JournalReader reader(j.path, 0, j.end);
  Input input;
  std::string error;
  int read = 0;
  while (reader.Next(&input, &error)) ++read;
  CHECK(read == 3);
  CHECK(!reader.read_failed());
  CHECK(reader.offset() == j.starts[3]);
  CHECK(error.find("checksum") != std::string::npos);
  CHECK(error.find("offset " + std::to_string(j.starts[3])) != std::string::npos);
}

TEST_CASE("a journal whose creation was cut short starts afresh", "[journal][unit]") {
  TempDir dir;
  std::string path = dir.File("journal");
  { OpenJournal(path); }
  std::string header = ReadFile(path);
  REQUIRE(header.size() == kHeaderBytes);
  std::string torn =
      GENERATE(std::string(), std::string("pmm"), std::string(16, '\0'), std::string(100, '\0'));
  if (torn == "pmm") torn = header.substr(0, 7);
  Truncate(path, 0);
  AppendBytes(path, torn);
  uint64_t count = 99;
  auto journal = OpenJournal(path, &count);
  CHECK(count == 0);
  CHECK(ReadFile(path) == header);
}

TEST_CASE("a journal refuses a file that is not one, and leaves it as it is", "[journal][unit]") {
  TempDir dir;
  std::string path = dir.File("journal");
  std::string content;
  SECTION("text") { content = "{\"key\":\"a\",\"value\":1}\n"; }
  SECTION("a later version") {
    { OpenJournal(path); }
    content = ReadFile(path);
    content[8] = 2;
  }
  AppendBytes(path, "");
  Truncate(path, 0);
  AppendBytes(path, content);
  std::unique_ptr<Journal> journal;
  uint64_t count = 0;
  Status s = Journal::Open(path, FsyncPolicy::kEverySecond, &journal, &count);
  CHECK(!s.ok());
  CHECK(s.message().find(path) != std::string::npos);
  CHECK(ReadFile(path) == content);
}

TEST_CASE("a journal refuses an input over its limits and writes nothing", "[journal][unit]") {
  TempDir dir;
  std::string path = dir.File("journal");
  auto journal = OpenJournal(path);
  Records records = Numbered("k", 3);
  records[1].first = std::string(kMaxKeyBytes + 1, 'k');
  uint64_t end = 0;
  Status s = journal->Append(MakeInputs(records), 0, records.size(), &end);
  CHECK(s.code() == Status::kInvalid);
  CHECK(FileSize(path) == kHeaderBytes);
  CHECK(journal->size() == kHeaderBytes);
}

namespace {

// Runs body in a forked child whose files may not grow past limit bytes
// (RLIMIT_FSIZE, with SIGXFSZ ignored so that a write past it fails with
// EFBIG); returns the child's exit code. body must not use REQUIRE/CHECK:
// it returns the exit code, 0 for success.
int InChildWithFileLimit(uint64_t limit, const std::function<int()>& body) {
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = static_cast<rlim_t>(limit);
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(100);
    _exit(body());
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  return WEXITSTATUS(status);
}

}  // namespace

TEST_CASE("a journal append that fails leaves nothing of its batch", "[journal][unit]") {
  ThreeBatches j;
  Records batch = Numbered("batch", 100);
  // Room for part of the batch (a short write, then EFBIG), or for none of it.
  uint64_t room = GENERATE(0, 1, 500, 5000);
  int code = InChildWithFileLimit(j.end + room, [&] {
    std::unique_ptr<Journal> journal;
    uint64_t count = 0;
    if (!Journal::Open(j.path, FsyncPolicy::kAlways, &journal, &count).ok()) return 1;
    uint64_t end = 0;
    Status s = journal->Append(MakeInputs(batch), 0, batch.size(), &end);
    if (s.code() != Status::kInsufficientStorage) return 2;
    if (s.message().find("File too large") == std::string::npos) return 3;
    if (end != j.end || journal->size() != j.end) return 4;
    struct stat st;
    if (stat(j.path.c_str(), &st) != 0 || static_cast<uint64_t>(st.st_size) != j.end) return 5;
    return 0;
  });
  CHECK(code == 0);
  RequireFirstRecordsKept(j, j.records.size());
}

TEST_CASE("a journal appends again after a failed append", "[journal][unit]") {
  ThreeBatches j;
  Records big = Numbered("big", 100);
  Records small = Numbered("small", 1);
  int code = InChildWithFileLimit(j.end + 1000, [&] {
    std::unique_ptr<Journal> journal;
    uint64_t count = 0;
    if (!Journal::Open(j.path, FsyncPolicy::kAlways, &journal, &count).ok()) return 1;
    uint64_t end = 0;
    if (journal->Append(MakeInputs(big), 0, big.size(), &end).ok()) return 2;
    if (!journal->Append(MakeInputs(small), 0, small.size(), &end).ok()) return 3;
    if (!journal->WaitDurable(end).ok()) return 4;
    return 0;
  });
  CHECK(code == 0);
  uint64_t count = 0;
  auto journal = OpenJournal(j.path, &count);
  Records expected = j.records;
  expected.push_back(small[0]);
  CHECK(count == expected.size());
  CHECK(ReadAll(j.path, journal->size()) == expected);
}

TEST_CASE("a journal under fsync always shares flushes between waiters", "[journal][unit]") {
  TempDir dir;
  std::string path = dir.File("journal");
  auto journal = OpenJournal(path, nullptr, FsyncPolicy::kAlways);
  constexpr int kThreads = 8;
  constexpr int kBatches = 20;
  std::vector<std::thread> threads;
  std::vector<int> failures(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Records batch = Numbered("t" + std::to_string(t) + "-", 10);
      std::vector<Input> inputs = MakeInputs(batch);
      for (int b = 0; b < kBatches; ++b) {
        uint64_t end = 0;
        if (!journal->Append(inputs, 0, inputs.size(), &end).ok()) ++failures[t];
        if (!journal->WaitDurable(end).ok() || journal->durable() < end) ++failures[t];
      }
    });
  }
  for (std::thread& t : threads) t.join();
  CHECK(failures == std::vector<int>(kThreads, 0));
  uint64_t syncs = journal->syncs();
  CHECK(syncs >= 1);
  CHECK(syncs <= kThreads * kBatches);
  // Every batch was flushed before its WaitDurable returned: nothing is left.
  REQUIRE(journal->SyncIfDirty().ok());
  CHECK(journal->syncs() == syncs);
  uint64_t count = 0;
  journal.reset();
  OpenJournal(path, &count);
  CHECK(count == kThreads * kBatches * 10);
}

TEST_CASE("a journal under fsync every second flushes only when dirty", "[journal][unit]") {
  TempDir dir;
  std::string path = dir.File("journal");
  auto journal = OpenJournal(path);
  REQUIRE(journal->SyncIfDirty().ok());
  CHECK(journal->syncs() == 0);  // Open flushed the new file itself
  uint64_t end = AppendAll(journal.get(), Numbered("k", 3));
  REQUIRE(journal->WaitDurable(end).ok());
  CHECK(journal->syncs() == 0);  // returns at once
  REQUIRE(journal->SyncIfDirty().ok());
  CHECK(journal->syncs() == 1);
  CHECK(journal->durable() == journal->size());
  REQUIRE(journal->SyncIfDirty().ok());
  CHECK(journal->syncs() == 1);
  AppendAll(journal.get(), Numbered("m", 1));
  REQUIRE(journal->SyncIfDirty().ok());
  CHECK(journal->syncs() == 2);
}

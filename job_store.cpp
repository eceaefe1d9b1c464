#include "job_store.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <rapidjson/document.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <utility>

#include "json.hpp"
#include "log.hpp"
#include "request.hpp"

namespace {

using SystemTime = std::chrono::system_clock::time_point;
using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

const char kRecordSuffix[] = ".job";
const char kTempSuffix[] = ".tmp";
// Outcome files are read this much at a time.
constexpr size_t kScanBlockBytes = 64 * 1024;

// Closes a file descriptor when it goes, unless released.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) close(fd_);
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;

  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

Status SystemError(const std::string& what, const std::string& path) {
  return Status::Internal(what + " " + path + ": " + strerror(errno));
}

// ---------------------------------------------------------------------------
// Writing a record.

void WriteString(const std::string& s, JsonWriter* w) {
  w->String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}

// The time, or null for the epoch (a time never set).
void WriteTime(SystemTime t, JsonWriter* w) {
  if (t == SystemTime()) {
    w->Null();
  } else {
    WriteString(Rfc3339(t), w);
  }
}

// The fields of POST /job, named as ParseJobOptions reads them; null
// stands for "none" where the default is none.
void WriteOptions(const JobOptions& o, JsonWriter* w) {
  w->StartObject();
  w->Key("url");
  WriteString(o.url, w);
  w->Key("secret");
  WriteString(o.secret, w);
  w->Key("concurrency");
  w->Int(o.concurrency);
  w->Key("maxsize");
  w->Int64(o.maxsize);
  w->Key("timeout_ms");
  w->Int64(o.timeout_ms);
  w->Key("max_attempts");
  w->Int(o.max_attempts);
  w->Key("backoff_ms");
  w->Int64(o.backoff_ms);
  w->Key("max_backoff_ms");
  w->Int64(o.max_backoff_ms);
  w->Key("rate_per_sec");
  if (o.rate_per_sec == 0) {
    w->Null();
  } else {
    w->Double(o.rate_per_sec);  // the shortest text that reads back as the same double
  }
  w->Key("callback_url");
  if (o.callback_url.empty()) {
    w->Null();
  } else {
    WriteString(o.callback_url, w);
  }
  w->Key("max_outage_ms");
  w->Int64(o.max_outage_ms);
  w->Key("adaptive");
  w->Bool(o.adaptive);
  w->EndObject();
}

std::string RecordJson(const JobRecord& record) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  w.Key("version");
  w.Int(kJobRecordVersion);
  w.Key("id");
  WriteString(record.id, &w);
  w.Key("options");
  WriteOptions(record.options, &w);
  w.Key("state");
  w.String(JobStateName(record.state));
  w.Key("created_at");
  WriteString(Rfc3339(record.created_at), &w);
  w.Key("done_at");
  WriteTime(record.done_at, &w);
  w.Key("paused");
  w.Bool(record.paused);
  // Written only when set, so that records of other jobs read as before.
  if (!record.options.redrive_of.empty()) {
    w.Key("redrive_of");
    WriteString(record.options.redrive_of, &w);
  }
  w.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize()) + "\n";
}

// Creates (or truncates) the file at path, mode 0600, with text in it,
// flushed to disk.
Status WriteSynced(const std::string& path, const std::string& text) {
  ScopedFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (fd.get() < 0) return SystemError("cannot create", path);
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return SystemError("cannot write", path);
    done += static_cast<size_t>(n);
  }
  if (fdatasync(fd.get()) != 0) return SystemError("cannot flush", path);
  if (close(fd.release()) != 0) return SystemError("cannot close", path);
  return Status::OK();
}

// Flushes dir's entries, so that a rename in it survives a power cut.
Status SyncDir(const std::string& dir) {
  ScopedFd fd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return SystemError("cannot open", dir);
  if (fsync(fd.get()) != 0) return SystemError("cannot flush", dir);
  return Status::OK();
}

// ---------------------------------------------------------------------------
// Reading a record.

// An id names files: it must not be empty, name a directory, or hold a
// NUL byte or a slash.
bool IsFileId(const std::string& id) {
  return !id.empty() && id != "." && id != ".." && id.find('/') == std::string::npos &&
         id.find('\0') == std::string::npos;
}

bool EndsWith(const std::string& s, const char* suffix) {
  size_t n = strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// The id that the record file at path is named after: its file name
// without ".job".
std::string IdOfRecordPath(const std::string& path) {
  std::string name = path.substr(path.rfind('/') + 1);  // npos + 1 == 0
  return EndsWith(name, kRecordSuffix) ? name.substr(0, name.size() - strlen(kRecordSuffix)) : "";
}

// Reads the whole file at path, which must be at most max_bytes long.
Status ReadSmallFile(const std::string& path, int64_t max_bytes, std::string* text) {
  ScopedFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0 && errno == ENOENT) return Status::NotFound(path + ": no such file");
  if (fd.get() < 0) return SystemError("cannot open", path);
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return SystemError("cannot stat", path);
  if (st.st_size > max_bytes) {
    return Status::Invalid(path + ": not a job record: larger than " + std::to_string(max_bytes) +
                           " bytes");
  }
  text->resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < text->size()) {
    ssize_t n = pread(fd.get(), &(*text)[done], text->size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return SystemError("cannot read", path);
    if (n == 0) break;  // shrank since fstat
    done += static_cast<size_t>(n);
  }
  text->resize(done);
  return Status::OK();
}

Status ParseTimeField(const char* name, const rapidjson::Value& v, bool nullable, SystemTime* t) {
  if (nullable && v.IsNull()) {
    *t = SystemTime();
    return Status::OK();
  }
  if (!v.IsString() || !ParseRfc3339(std::string(v.GetString(), v.GetStringLength()), t)) {
    return Status::Invalid(std::string(name) + ": expected a time such as " +
                           "\"2026-11-28T07:34:20.123Z\"" + (nullable ? " or null" : ""));
  }
  return Status::OK();
}

Status ParseStateField(const rapidjson::Value& v, JobState* state) {
  if (v.IsString()) {
    std::string name(v.GetString(), v.GetStringLength());
    for (JobState s :
         {JobState::kOpen, JobState::kClosing, JobState::kDone, JobState::kCancelled}) {
      if (name == JobStateName(s)) {
        *state = s;
        return Status::OK();
      }
    }
  }
  return Status::Invalid("state: expected \"open\", \"closing\", \"done\" or \"cancelled\"");
}

// Reads the options object with ParseJobOptions, the parser of POST /job.
Status ParseOptionsField(const rapidjson::Value& v, JobOptions* options) {
  if (!v.IsObject()) return Status::Invalid("options: expected an object");
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  v.Accept(w);
  Status s = ParseJobOptions(std::string(buffer.GetString(), buffer.GetSize()), options);
  return s.ok() ? s : Status::Invalid("options: " + s.message());
}

// Parses a record's text into *record; file_id is the id its file's name
// says. Messages do not name the file.
Status ParseRecord(const std::string& text, const std::string& file_id, JobRecord* record) {
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseValidateEncodingFlag>(text.data(), text.size());
  if (doc.HasParseError() || !doc.IsObject()) return Status::Invalid("not a JSON object");
  // "paused" came later: a record without it is not paused.
  static const std::set<std::string> kFields = {"version",    "id",      "options", "state",
                                                "created_at", "done_at", "paused"};
  static const char kRedriveOf[] = "redrive_of";  // optional
  std::set<std::string> seen;
  for (const auto& member : doc.GetObject()) {
    std::string name(member.name.GetString(), member.name.GetStringLength());
    std::string quoted;
    AppendJsonString(name, &quoted);
    if (kFields.count(name) == 0 && name != kRedriveOf) {
      return Status::Invalid("unknown field " + quoted);
    }
    if (!seen.insert(name).second) return Status::Invalid(quoted + ": given twice");
  }
  for (const std::string& name : kFields) {
    if (!doc.HasMember(name.c_str()) && name != "paused")
      return Status::Invalid(name + ": missing");
  }
  if (!doc["version"].IsInt() || doc["version"].GetInt() != kJobRecordVersion) {
    return Status::Invalid("version: expected " + std::to_string(kJobRecordVersion));
  }
  const rapidjson::Value& id = doc["id"];
  if (!id.IsString() || std::string(id.GetString(), id.GetStringLength()) != file_id) {
    return Status::Invalid("id: expected \"" + file_id + "\", the file's name");
  }
  JobRecord parsed;
  parsed.id = file_id;
  Status s = ParseOptionsField(doc["options"], &parsed.options);
  if (s.ok()) s = ParseStateField(doc["state"], &parsed.state);
  if (s.ok()) s = ParseTimeField("created_at", doc["created_at"], false, &parsed.created_at);
  if (s.ok()) s = ParseTimeField("done_at", doc["done_at"], true, &parsed.done_at);
  if (s.ok() && doc.HasMember("paused")) {
    if (doc["paused"].IsBool()) {
      parsed.paused = doc["paused"].GetBool();
    } else {
      s = Status::Invalid("paused: expected true or false");
    }
  }
  if (s.ok() && doc.HasMember(kRedriveOf)) {
    const rapidjson::Value& of = doc[kRedriveOf];
    if (!of.IsString()) return Status::Invalid("redrive_of: expected a string");
    parsed.options.redrive_of.assign(of.GetString(), of.GetStringLength());
  }
  if (s.ok()) *record = std::move(parsed);
  return s;
}

// ---------------------------------------------------------------------------
// Scanning an outcome file.

// SAX handler that checks one line of an outcome file: an object with a
// string "key" and exactly one of "value" (any JSON) and "error" (an
// object). It keeps the decoded key; everything else it only walks.
class EntryHandler {
 public:
  void Reset() {
    depth_ = 0;
    field_ = kOther;
    has_key_ = has_value_ = has_error_ = false;
  }

  bool Null() { return Scalar(); }
  bool Bool(bool) { return Scalar(); }
  bool Int(int) { return Scalar(); }  // unreachable with kParseNumbersAsStringsFlag
  bool Uint(unsigned) { return Scalar(); }
  bool Int64(int64_t) { return Scalar(); }
  bool Uint64(uint64_t) { return Scalar(); }
  bool Double(double) { return Scalar(); }
  bool RawNumber(const char*, rapidjson::SizeType, bool) { return Scalar(); }
  bool String(const char* s, rapidjson::SizeType n, bool) {
    if (depth_ == 1 && field_ == kKey) {
      key_.assign(s, n);
      return true;
    }
    return Scalar();
  }
  bool Key(const char* s, rapidjson::SizeType n, bool) {
    if (depth_ != 1) return true;
    std::string name(s, n);
    bool* seen = nullptr;
    if (name == "key") {
      field_ = kKey;
      seen = &has_key_;
    } else if (name == "value") {
      field_ = kValue;
      seen = &has_value_;
    } else if (name == "error") {
      field_ = kError;
      seen = &has_error_;
    } else {
      field_ = kOther;
      return true;
    }
    if (*seen) return false;  // given twice
    *seen = true;
    return true;
  }
  bool StartObject() {
    if (depth_ > 0 && !Nested(true)) return false;
    ++depth_;
    return true;
  }
  bool StartArray() {
    if (depth_ == 0 || !Nested(false)) return false;
    ++depth_;
    return true;
  }
  bool EndObject(rapidjson::SizeType) {
    --depth_;
    return true;
  }
  bool EndArray(rapidjson::SizeType) {
    --depth_;
    return true;
  }

  // After a parse that succeeded: whether the line was an entry.
  bool complete() const { return has_key_ && has_value_ != has_error_; }
  bool success() const { return has_value_; }
  const std::string& key() const { return key_; }

 private:
  enum Field { kKey, kValue, kError, kOther };

  // A scalar, anywhere but at the top: "key" takes only a string (String
  // handles it), "error" only an object.
  bool Scalar() { return depth_ > 1 || (depth_ == 1 && field_ != kKey && field_ != kError); }
  // An object or array inside the line's object.
  bool Nested(bool is_object) {
    return depth_ > 1 || (field_ != kKey && (field_ != kError || is_object));
  }

  int depth_ = 0;
  Field field_ = kOther;
  bool has_key_ = false;
  bool has_value_ = false;
  bool has_error_ = false;
  std::string key_;
};

// Counts the entries of an outcome file into an OutcomeScan, line by line.
class EntryCounter {
 public:
  EntryCounter(uint64_t stride, OutcomeScan* scan) : stride_(stride), scan_(scan) {}

  // Counts the line [data, data+size), its newline left out, as the next
  // entry; returns false, counting nothing, if it is not one.
  bool Add(const char* data, size_t size) {
    if (!IsValidUtf8(data, size)) return false;
    handler_.Reset();
    rapidjson::MemoryStream stream(data, size);
    // MemoryStream reads a NUL byte as the end of the text: Tell says if one came first.
    if (!reader_.Parse<kUtf8ParseFlags>(stream, handler_) || stream.Tell() != size ||
        !handler_.complete()) {
      return false;
    }
    if (scan_->entries > 0 && scan_->entries % stride_ == 0) scan_->index.push_back(scan_->bytes);
    ++scan_->entries;
    ++(handler_.success() ? scan_->succeeded : scan_->failed);
    uint64_t hash = KeyTable::KeyHash(handler_.key());
    if (scan_->on_key) {
      scan_->on_key(hash);
    } else if (!scan_->keys.Insert(hash, 0)) {
      ++scan_->repeated_keys;
    }
    scan_->bytes += size + 1;
    return true;
  }

 private:
  const uint64_t stride_;
  OutcomeScan* scan_;
  rapidjson::Reader reader_;  // kept, with its stack, from one line to the next
  EntryHandler handler_;
};

// Reads the entries of the file open at fd from its start, a block at a
// time, until the end or a line that is not an entry; the scan's bytes are then
// where the entries kept end.
Status CountEntries(int fd, const std::string& path, EntryCounter* counter) {
  std::string buffer;    // from the start of an unfinished line on
  size_t searched = 0;   // buffer's bytes known to hold no newline
  uint64_t read_at = 0;  // the file offset just past buffer's end
  for (;;) {
    buffer.resize(searched + kScanBlockBytes);
    ssize_t n = pread(fd, &buffer[searched], kScanBlockBytes, static_cast<off_t>(read_at));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return SystemError("cannot read", path);
    if (n == 0) return Status::OK();  // what is left, if anything, is a torn line
    buffer.resize(searched + static_cast<size_t>(n));
    read_at += static_cast<uint64_t>(n);
    size_t begin = 0;
    for (;;) {
      const char* start = buffer.data() + begin;
      const void* newline = memchr(buffer.data() + searched, '\n', buffer.size() - searched);
      if (newline == nullptr) break;
      size_t size = static_cast<size_t>(static_cast<const char*>(newline) - start);
      if (!counter->Add(start, size)) return Status::OK();
      begin += size + 1;
      searched = begin;
    }
    buffer.erase(0, begin);
    searched = buffer.size();
  }
}

}  // namespace

std::string JobRecordPath(const std::string& dir, const std::string& id) {
  return dir + "/" + id + kRecordSuffix;
}

std::string JournalPath(const std::string& dir, const std::string& id) {
  return dir + "/" + id + ".journal";
}

std::string OutcomePath(const std::string& dir, const std::string& id) {
  return dir + "/" + id + ".ndjson";
}

std::string FailuresPath(const std::string& dir, const std::string& id) {
  return dir + "/" + id + ".failed";
}

std::string JobOptionsJson(const JobOptions& options) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  WriteOptions(options, &w);
  return std::string(buffer.GetString(), buffer.GetSize());
}

Status SaveJobRecord(const std::string& dir, const JobRecord& record) {
  if (!IsFileId(record.id)) return Status::Invalid("not a job id: \"" + record.id + "\"");
  std::string path = JobRecordPath(dir, record.id);
  std::string text = RecordJson(record);
  // Never write what LoadJobRecord would refuse: the job would be lost at
  // the next start, not now.
  JobRecord check;
  Status s = ParseRecord(text, record.id, &check);
  if (!s.ok())
    return Status::Invalid(path +
                           ": refusing to save a record that reads back as bad: " + s.message());
  std::string temp = path + kTempSuffix;
  s = WriteSynced(temp, text);
  if (s.ok() && rename(temp.c_str(), path.c_str()) != 0) s = SystemError("cannot rename to", path);
  if (!s.ok()) {
    unlink(temp.c_str());
    return s;
  }
  return SyncDir(dir);
}

Status LoadJobRecord(const std::string& path, JobRecord* record) {
  std::string text;
  Status s = ReadSmallFile(path, kMaxJobRecordBytes, &text);
  if (!s.ok()) return s;
  std::string id = IdOfRecordPath(path);
  if (!IsFileId(id)) return Status::Invalid(path + ": not a job record: not named {id}.job");
  s = ParseRecord(text, id, record);
  return s.ok() ? s : Status::Invalid(path + ": not a job record: " + s.message());
}

Status ListJobRecords(const std::string& dir, std::vector<std::string>* ids) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return SystemError("cannot list", dir);
  std::vector<std::string> found;
  errno = 0;
  while (struct dirent* entry = readdir(d)) {
    std::string id = IdOfRecordPath(entry->d_name);
    if (IsFileId(id)) found.push_back(id);
  }
  bool failed = errno != 0;
  closedir(d);
  if (failed) return SystemError("cannot list", dir);
  // Sorted on (cannot be loaded, created_at, id).
  std::vector<std::pair<std::pair<bool, SystemTime>, std::string>> sorted;
  for (std::string& id : found) {
    JobRecord record;
    bool bad = !LoadJobRecord(JobRecordPath(dir, id), &record).ok();
    sorted.push_back({{bad, bad ? SystemTime() : record.created_at}, std::move(id)});
  }
  std::sort(sorted.begin(), sorted.end());
  ids->clear();
  for (auto& entry : sorted) ids->push_back(std::move(entry.second));
  return Status::OK();
}

Status ScanOutcomes(const std::string& path, uint64_t stride, OutcomeScan* scan) {
  if (stride == 0) return Status::Invalid("ScanOutcomes: the stride must be positive");
  ScopedFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (fd.get() < 0) return SystemError("cannot open", path);
  OutcomeScan result;
  result.on_key = std::move(scan->on_key);
  result.index.push_back(0);
  EntryCounter counter(stride, &result);
  Status s = CountEntries(fd.get(), path, &counter);
  if (!s.ok()) return s;
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return SystemError("cannot stat", path);
  if (static_cast<uint64_t>(st.st_size) > result.bytes) {
    // The cut must reach the disk before Job appends after it.
    if (ftruncate(fd.get(), static_cast<off_t>(result.bytes)) != 0) {
      return SystemError("cannot cut the torn end of", path);
    }
    if (fdatasync(fd.get()) != 0) return SystemError("cannot flush", path);
  }
  *scan = std::move(result);
  return Status::OK();
}

bool ParseRfc3339(const std::string& text, std::chrono::system_clock::time_point* t) {
  // 2026-11-28T07:34:20.123Z: the separators, then the numbers between them.
  static const char kShape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
  if (text.size() != sizeof(kShape) - 1) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    bool digit = text[i] >= '0' && text[i] <= '9';
    if (kShape[i] == 'd' ? !digit : text[i] != kShape[i]) return false;
  }
  auto number = [&text](size_t at, size_t n) { return std::stoi(text.substr(at, n)); };
  int year = number(0, 4), month = number(5, 2), day = number(8, 2);
  int hour = number(11, 2), minute = number(14, 2), second = number(17, 2);
  int millis = number(20, 3);
  static const int kMonthDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  // Rfc3339 writes no earlier year correctly.
  if (year < 1970 || month < 1 || month > 12 || day < 1) return false;
  if (day > kMonthDays[month - 1] + (month == 2 && leap ? 1 : 0)) return false;
  if (hour > 23 || minute > 59 || second > 59) return false;
  // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
  // days_from_civil), with years starting in March so leap days come last.
  int64_t y = year - (month <= 2 ? 1 : 0);
  int64_t era = y / 400;
  int64_t year_of_era = y - era * 400;
  int64_t day_of_year = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
  int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
  int64_t days = era * 146097 + day_of_era - 719468;
  int64_t ms = ((days * 24 + hour) * 60 + minute) * 60 * 1000 + second * 1000 + millis;
  // system_clock counts nanoseconds in 64 bits: it ends in 2262.
  if (ms > std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::duration::max())
               .count()) {
    return false;
  }
  *t = SystemTime(std::chrono::duration_cast<std::chrono::system_clock::duration>(
      std::chrono::milliseconds(ms)));
  return true;
}

// Durable jobs (--data-dir): every accepted input and every outcome is on
// disk, and a restarted pmmap resumes every job where it stopped. These
// tests start the real binary, stop it (SIGTERM, SIGKILL) and start it again
// on the same data dir.

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"

namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Inputs first..last-1 as a JSON array: keys k<i>, values {"i": i}, the
// same every time, so that a batch may be sent again.
std::string Batch(int first, int last) {
  std::string out = "[";
  for (int i = first; i < last; ++i) {
    if (i > first) out += ",";
    out += "{\"key\":\"k" + std::to_string(i) + "\",\"value\":{\"i\":" + std::to_string(i) + "}}";
  }
  return out + "]";
}

// The output of job id as NDJSON lines, read without waiting.
std::vector<rapidjson::Document> OutputNow(const PmmapProcess& pmmap, const std::string& id) {
  HttpResult r = Http(pmmap.base_url(), "GET", "/job/" + id + "/output?wait=false&format=ndjson");
  REQUIRE(r.status == 200);
  return ParseLines(r.body);
}

// How many output entries each key has.
std::map<std::string, int> EntriesByKey(const std::vector<rapidjson::Document>& lines) {
  std::map<std::string, int> count;
  for (const auto& line : lines) ++count[Text(line, "key")];
  return count;
}

bool HasState(const rapidjson::Document& job, const char* state) {
  return Text(job, "state") == state;
}

void PutOk(const PmmapProcess& pmmap, const std::string& id, const std::string& inputs) {
  HttpResult r = Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", inputs);
  INFO(r.body);
  REQUIRE(r.status == 201);
}

int FileMode(const std::string& path) {
  struct stat st;
  REQUIRE(stat(path.c_str(), &st) == 0);
  return st.st_mode & 0777;
}

// Starts pmmap with args and env, its files unable to grow past bytes
// (RLIMIT_FSIZE: a write past it fails with EFBIG). The limit is set in
// this process around the start only: the child keeps it, this process
// gets its own back.
std::unique_ptr<PmmapProcess> StartWithFileLimit(rlim_t bytes, const std::vector<std::string>& args,
                                                 const std::map<std::string, std::string>& env) {
  struct rlimit saved;
  REQUIRE(getrlimit(RLIMIT_FSIZE, &saved) == 0);
  struct rlimit small = saved;
  small.rlim_cur = bytes;
  REQUIRE(setrlimit(RLIMIT_FSIZE, &small) == 0);
  std::unique_ptr<PmmapProcess> pmmap;
  try {
    pmmap.reset(new PmmapProcess(args, env));
  } catch (...) {
    setrlimit(RLIMIT_FSIZE, &saved);
    throw;
  }
  REQUIRE(setrlimit(RLIMIT_FSIZE, &saved) == 0);
  return pmmap;
}

}  // namespace

TEST_CASE(
    "with --data-dir, jobs survive SIGTERM and a restart: ended ones readable, open ones open",
    "[durable]") {
  TempDir data("pmmap-durable");
  Webhook hook;
  std::string done_id;
  std::string open_id;
  std::string done_json;
  std::string done_output;
  {
    PmmapProcess pmmap({"--data-dir", data.path()});
    done_id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":4,\"secret\":\"s\""));
    PutOk(pmmap, done_id, Batch(0, 50));
    REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + done_id + "/complete").status == 200);
    WaitForJob(pmmap, done_id, [](const rapidjson::Document& j) { return HasState(j, "done"); });
    done_json = Http(pmmap.base_url(), "GET", "/job/" + done_id).body;
    done_output = Http(pmmap.base_url(), "GET", "/job/" + done_id + "/output").body;
    open_id = CreateJob(pmmap, JobBody(hook.url()));
    PutOk(pmmap, open_id, Batch(100, 110));
    WaitForJob(pmmap, open_id,
               [](const rapidjson::Document& j) { return U64(j, "outputs") == 10; });
    REQUIRE(pmmap.Stop(SIGTERM) == 0);
  }
  // The files stay, private to the server's user.
  CHECK(FileMode(data.path()) == 0700);
  for (const std::string& name : ListDir(data.path())) {
    INFO(name);
    CHECK(FileMode(data.File(name)) == 0600);
  }
  CHECK(ListDir(data.path()).size() == 6);  // .job, .journal, .ndjson of each

  PmmapProcess pmmap({"--data-dir", data.path()});
  CHECK(Http(pmmap.base_url(), "GET", "/job/" + done_id).body == done_json);
  CHECK(Http(pmmap.base_url(), "GET", "/job/" + done_id + "/output").body == done_output);
  rapidjson::Document open = GetJob(pmmap, open_id);
  CHECK(HasState(open, "open"));
  CHECK(U64(open, "inputs") == 10);
  CHECK(U64(open, "outputs") == 10);
  // It takes more inputs, refuses a used key with another value, and ends.
  PutOk(pmmap, open_id, Batch(110, 120));
  HttpResult reused = Http(pmmap.base_url(), "PUT", "/job/" + open_id + "/input",
                           "[{\"key\":\"k100\",\"value\":\"other\"}]");
  RequireError(reused, 409);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + open_id + "/complete").status == 200);
  WaitForJob(pmmap, open_id, [](const rapidjson::Document& j) { return HasState(j, "done"); });
  std::map<std::string, int> entries = EntriesByKey(OutputNow(pmmap, open_id));
  CHECK(entries.size() == 20);
  for (const auto& entry : entries) CHECK(entry.second == 1);
  CHECK(pmmap.log().find("resumed 2 jobs") != std::string::npos);
}

// PUTs every batch of kInputs, in order, until one is not accepted (the
// server was killed). Runs beside the test's thread: asserts nothing.
void FeedAll(const std::string& base_url, const std::string& id, int inputs, int batch) {
  for (int first = 0; first < inputs; first += batch) {
    HttpResult r = Http(base_url, "PUT", "/job/" + id + "/input", Batch(first, first + batch));
    if (r.status != 201) return;
  }
}

// Kills pmmap with SIGKILL, then joins the thread that was feeding it,
// whether the test got that far or failed first.
class KillAndJoin {
 public:
  KillAndJoin(PmmapProcess* pmmap, std::thread* feeder) : pmmap_(pmmap), feeder_(feeder) {}
  ~KillAndJoin() {
    pmmap_->Stop(SIGKILL);
    feeder_->join();
  }

 private:
  PmmapProcess* pmmap_;
  std::thread* feeder_;
};

TEST_CASE("a job killed with SIGKILL again and again ends with exactly one outcome per input",
          "[durable]") {
  TempDir data("pmmap-durable");
  Webhook hook;
  // Slow enough that each kill lands in the middle of the job.
  hook.SetHandler([](const Webhook::Call& call, httplib::Response& res) {
    std::this_thread::sleep_for(milliseconds(2));
    Echo(call, res);
  });
  const int kInputs = 3000;
  const int kBatch = 250;
  const int kKills = 3;
  std::string id;
  for (int round = 0; round < kKills; ++round) {
    INFO("round " << round);
    PmmapProcess pmmap({"--data-dir", data.path()});
    if (round == 0) id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":4,\"maxsize\":100"));
    // Every batch is sent again after each restart, as a client that got no
    // answer would: a key repeated with the same value is accepted once.
    // The PUTs wait for room in the queue, so the job runs while they do.
    std::thread feeder(FeedAll, pmmap.base_url(), id, kInputs, kBatch);
    KillAndJoin kill_at_exit(&pmmap, &feeder);
    const uint64_t kill_at = static_cast<uint64_t>((round + 1) * kInputs / (kKills + 1));
    WaitForJob(
        pmmap, id, [&](const rapidjson::Document& j) { return U64(j, "outputs") >= kill_at; },
        seconds(60));
  }
  PmmapProcess pmmap({"--data-dir", data.path()});
  FeedAll(pmmap.base_url(), id, kInputs, kBatch);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  rapidjson::Document job = WaitForJob(
      pmmap, id, [](const rapidjson::Document& j) { return HasState(j, "done"); }, seconds(60));
  CHECK(U64(job, "inputs") == kInputs);
  CHECK(U64(job, "outputs") == kInputs);
  std::map<std::string, int> entries = EntriesByKey(OutputNow(pmmap, id));
  REQUIRE(entries.size() == static_cast<size_t>(kInputs));
  for (const auto& entry : entries) {
    INFO(entry.first);
    CHECK(entry.second == 1);
  }
  // Inputs in flight at a kill are sent again: at least once, not exactly.
  CHECK(hook.call_count() >= static_cast<size_t>(kInputs));
}

TEST_CASE("torn tails of the journal and the outcome file are cut off on restart", "[durable]") {
  TempDir data("pmmap-durable");
  Webhook hook;
  std::string id;
  {
    PmmapProcess pmmap({"--data-dir", data.path()});
    id = CreateJob(pmmap, JobBody(hook.url()));
    PutOk(pmmap, id, Batch(0, 5));
    WaitForJob(pmmap, id, [](const rapidjson::Document& j) { return U64(j, "outputs") == 5; });
    REQUIRE(OutputNow(pmmap, id).size() == 5);  // a read writes the outcomes out
    pmmap.Stop(SIGKILL);
  }
  // A crash mid-write: half a record, and zeros, at the end of each file.
  for (const char* suffix : {".journal", ".ndjson"}) {
    std::ofstream out(data.File(id + suffix), std::ios::app | std::ios::binary);
    out << std::string("{\"key\":\"k9", 10) << std::string(100, '\0');
  }
  PmmapProcess pmmap({"--data-dir", data.path()});
  rapidjson::Document job = GetJob(pmmap, id);
  CHECK(U64(job, "inputs") == 5);
  CHECK(U64(job, "outputs") == 5);
  PutOk(pmmap, id, Batch(5, 8));
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  WaitForJob(pmmap, id, [](const rapidjson::Document& j) { return HasState(j, "done"); });
  std::map<std::string, int> entries = EntriesByKey(OutputNow(pmmap, id));
  CHECK(entries.size() == 8);
  for (const auto& entry : entries) CHECK(entry.second == 1);
}

TEST_CASE("a batch that cannot be journaled is refused with 507 and accepts nothing", "[durable]") {
  TempDir data("pmmap-durable");
  Webhook hook;
  // Files of pmmap's over 64 KiB fail to grow (EFBIG).
  std::unique_ptr<PmmapProcess> pmmap =
      StartWithFileLimit(64 * 1024, {"--data-dir", data.path(), "--fsync", "always"}, {});
  std::string id = CreateJob(*pmmap, JobBody(hook.url(), "\"maxsize\":10000"));
  PutOk(*pmmap, id, Batch(0, 10));
  // About 100 KiB of inputs: over the limit.
  HttpResult big = Http(pmmap->base_url(), "PUT", "/job/" + id + "/input", Batch(10, 3000));
  std::string message = RequireError(big, 507);
  CHECK(message.find("journal") != std::string::npos);
  rapidjson::Document job = GetJob(*pmmap, id);
  CHECK(U64(job, "inputs") == 10);
  // Nothing of the refused batch was kept: a small one still fits.
  PutOk(*pmmap, id, Batch(10, 20));
  REQUIRE(Http(pmmap->base_url(), "POST", "/job/" + id + "/complete").status == 200);
  WaitForJob(*pmmap, id, [](const rapidjson::Document& j) { return HasState(j, "done"); });
  CHECK(EntriesByKey(OutputNow(*pmmap, id)).size() == 20);
}

TEST_CASE("deleting a durable job removes its files; a restart does not bring it back",
          "[durable]") {
  TempDir data("pmmap-durable");
  Webhook hook;
  std::string id;
  {
    PmmapProcess pmmap({"--data-dir", data.path(), "--fsync", "always"});
    id = CreateJob(pmmap, JobBody(hook.url()));
    PutOk(pmmap, id, Batch(0, 3));
    REQUIRE(ListDir(data.path()).size() == 3);
    REQUIRE(Http(pmmap.base_url(), "DELETE", "/job/" + id).status == 200);
    CHECK(ListDir(data.path()).empty());
    pmmap.Stop(SIGKILL);
  }
  PmmapProcess pmmap({"--data-dir", data.path()});
  RequireError(Http(pmmap.base_url(), "GET", "/job/" + id), 404);
}

TEST_CASE("outcomes that cannot be written pause the job, GET /job says why, and none is lost",
          "[durable]") {
  TempDir tmp("pmmap-durable");
  Webhook hook;
  // pmmap's files may not grow past 16 KiB (EFBIG) until the test lifts the
  // limit.
  std::unique_ptr<PmmapProcess> started =
      StartWithFileLimit(16 * 1024, {}, {{"TMPDIR", tmp.path()}});
  PmmapProcess& pmmap = *started;
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":4,\"maxsize\":5000"));
  const int kInputs = 3000;  // about 130 KiB of outcomes
  PutOk(pmmap, id, Batch(0, kInputs));
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  rapidjson::Document paused = WaitForJob(
      pmmap, id, [](const rapidjson::Document& j) { return j["storage_error"].IsString(); });
  CHECK(Text(paused, "storage_error").find("File too large") != std::string::npos);
  // Paused: the calls in flight end, and no more start.
  size_t calls = hook.call_count();
  std::this_thread::sleep_for(milliseconds(1500));
  CHECK(hook.call_count() <= calls + 4);
  rapidjson::Document still = GetJob(pmmap, id);
  CHECK(Text(still, "state") == "closing");
  CHECK(U64(still, "outputs") < kInputs);
  // Room again: the job goes on by itself and loses nothing.
  struct rlimit unlimited;
  REQUIRE(getrlimit(RLIMIT_FSIZE, &unlimited) == 0);  // this process's own
  REQUIRE(prlimit(pmmap.pid(), RLIMIT_FSIZE, &unlimited, nullptr) == 0);
  rapidjson::Document done =
      WaitForJob(pmmap, id, [](const rapidjson::Document& j) { return HasState(j, "done"); });
  CHECK(done["storage_error"].IsNull());
  std::map<std::string, int> entries = EntriesByKey(OutputNow(pmmap, id));
  CHECK(entries.size() == static_cast<size_t>(kInputs));
  for (const auto& entry : entries) CHECK(entry.second == 1);
}

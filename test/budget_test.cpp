// The worker budget (--max-workers, dispatcher.hpp) against the real pmmap:
// all jobs together stay within it, and they share it fairly.

#include <catch2/catch.hpp>

#include "harness.hpp"

namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

bool Done(const rapidjson::Document& job) { return Text(job, "state") == "done"; }

// The value of the unlabelled metric name in pmmap's /metrics, or -1.
long Metric(const PmmapProcess& pmmap, const std::string& name) {
  HttpResult r = Http(pmmap.base_url(), "GET", "/metrics");
  size_t at = r.body.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stol(r.body.substr(at + name.size() + 2));
}

}  // namespace

TEST_CASE("three jobs under --max-workers 8 never exceed 8 calls in flight, share them, and finish",
          "[budget]") {
  Webhook webhook;
  webhook.SetHandler([](const Webhook::Call& call, httplib::Response& res) {
    std::this_thread::sleep_for(milliseconds(20));
    Echo(call, res);
  });
  PmmapProcess pmmap({"--max-workers", "8"});
  CHECK(Metric(pmmap, "pmmap_workers_max") == 8);
  // A takes the whole budget first; B and C come while it still has work.
  std::string a = CreateJob(pmmap, JobBody(webhook.url(), "\"concurrency\":8"));
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + a + "/input", MakeInputs(600, "a")).status ==
          201);
  REQUIRE(WaitUntil([&] { return webhook.in_flight() == 8; }));
  std::vector<std::string> others;
  for (const char* prefix : {"b", "c"}) {
    others.push_back(CreateJob(pmmap, JobBody(webhook.url(), "\"concurrency\":8")));
    REQUIRE(
        Http(pmmap.base_url(), "PUT", "/job/" + others.back() + "/input", MakeInputs(40, prefix))
            .status == 201);
  }
  CHECK(Metric(pmmap, "pmmap_workers_waiting") > 0);
  for (const std::string& id : {a, others[0], others[1]}) {
    REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  }
  for (const std::string& id : others) CHECK(U64(WaitForJob(pmmap, id, Done), "succeeded") == 40);
  // B and C finished while A still had work: they were not starved.
  rapidjson::Document a_then = GetJob(pmmap, a);
  CHECK(U64(a_then, "outputs") < 600);
  CHECK(U64(WaitForJob(pmmap, a, Done, seconds(30)), "succeeded") == 600);
  CHECK(webhook.peak_in_flight() == 8);
  CHECK(Metric(pmmap, "pmmap_workers_running") == 0);
  CHECK(Metric(pmmap, "pmmap_workers_waiting") == 0);
}

// End-to-end tests of the core API: the real pmmap binary against a real
// webhook on loopback.

#include <catch2/catch.hpp>

#include "test/harness.hpp"

TEST_CASE("a job runs every input through the webhook and returns every reply", "[api]") {
  Webhook hook;
  PmmapProcess pmmap;
  std::string id = CreateJob(pmmap, "{\"url\":\"" + hook.url() + "\",\"concurrency\":4}");
  HttpResult put = Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(50));
  REQUIRE(put.status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  HttpResult out = Http(pmmap.base_url(), "GET", "/job/" + id + "/output");
  REQUIRE(out.status == 200);
  rapidjson::Document doc = ParseJson(out.body);
  REQUIRE(doc.IsArray());
  REQUIRE(doc.Size() == 50);
  std::set<std::string> keys;
  for (const auto& entry : doc.GetArray()) {
    std::string key = entry["key"].GetString();
    keys.insert(key);
    REQUIRE(entry["value"]["key"].GetString() == key);
    REQUIRE(entry["value"]["value"]["i"].GetInt() == std::stoi(key.substr(1)));
  }
  REQUIRE(keys.size() == 50);
  rapidjson::Document job = GetJob(pmmap, id);
  REQUIRE(std::string(job["state"].GetString()) == "done");
  REQUIRE(job["inputs"].GetUint64() == 50);
  REQUIRE(job["outputs"].GetUint64() == 50);
  REQUIRE(hook.peak_in_flight() <= 4);
}

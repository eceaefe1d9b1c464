// HTTPS webhooks: a TLS server on loopback with a certificate made for the
// test, trusted through --ca-file, and refused without it.

#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <string>
#include <thread>

#include "test/harness.hpp"

namespace {

// A self-signed certificate for 127.0.0.1 in a fresh directory, removed on
// destruction.
class TestCertificate {
 public:
  TestCertificate() {
    char templ[] = "/tmp/pmmap-tls.XXXXXX";
    REQUIRE(mkdtemp(templ) != nullptr);
    dir_ = templ;
    std::string command =
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
        " -addext subjectAltName=IP:127.0.0.1 -keyout " +
        key() + " -out " + cert() + " >/dev/null 2>&1";
    REQUIRE(system(command.c_str()) == 0);
  }
  ~TestCertificate() {
    unlink(key().c_str());
    unlink(cert().c_str());
    rmdir(dir_.c_str());
  }
  std::string cert() const { return dir_ + "/cert.pem"; }
  std::string key() const { return dir_ + "/key.pem"; }

 private:
  std::string dir_;
};

// An HTTPS webhook that answers {"tls": true, "body": <the body>}.
class TlsWebhook {
 public:
  explicit TlsWebhook(const TestCertificate& certificate)
      : server_(certificate.cert().c_str(), certificate.key().c_str()) {
    REQUIRE(server_.is_valid());
    server_.Post(".*", [](const httplib::Request& req, httplib::Response& res) {
      res.set_content("{\"tls\":true,\"body\":" + req.body + "}", "application/json");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    REQUIRE(port_ > 0);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~TlsWebhook() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return "https://127.0.0.1:" + std::to_string(port_) + "/hook"; }

 private:
  httplib::SSLServer server_;
  std::thread thread_;
  int port_ = 0;
};

// Runs one input through a job on url, with the given policy fields, and
// returns its output entry.
rapidjson::Document RunOne(const PmmapProcess& pmmap, const std::string& url,
                           const std::string& fields) {
  std::string id = CreateJob(pmmap, JobBody(url, fields));
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input",
               "[{\"key\":\"k\",\"value\":{\"n\":1}}]")
              .status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  HttpResult out = Http(pmmap.base_url(), "GET", "/job/" + id + "/output?format=ndjson");
  REQUIRE(out.status == 200);
  std::vector<rapidjson::Document> entries = ParseLines(out.body);
  REQUIRE(entries.size() == 1);
  return std::move(entries[0]);
}

}  // namespace

TEST_CASE("an https webhook is called when --ca-file trusts its certificate", "[ops][https]") {
  TestCertificate certificate;
  TlsWebhook hook(certificate);
  PmmapProcess pmmap({"--ca-file", certificate.cert()});
  rapidjson::Document entry = RunOne(pmmap, hook.url(), "\"max_attempts\":1");
  INFO("entry has value: " << entry.HasMember("value"));
  REQUIRE(entry.HasMember("value"));
  REQUIRE(entry["value"]["tls"].GetBool());
  REQUIRE(entry["value"]["body"]["n"].GetInt() == 1);
}

TEST_CASE("an https webhook whose certificate is not trusted fails without retries",
          "[ops][https]") {
  TestCertificate certificate;
  TlsWebhook hook(certificate);
  PmmapProcess pmmap;  // the system's CA bundle does not hold the test's certificate
  // Retries are allowed, and quick: an untrusted certificate must not use them.
  rapidjson::Document entry = RunOne(pmmap, hook.url(), "\"max_attempts\":3,\"backoff_ms\":5");
  REQUIRE(entry.HasMember("error"));
  REQUIRE(entry["error"]["status"].GetInt() == 0);
  std::string message = entry["error"]["message"].GetString();
  INFO(message);
  REQUIRE(message.find("certificate") != std::string::npos);
  REQUIRE(entry["attempts"].GetInt() == 1);
}

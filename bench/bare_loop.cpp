// bare_loop: the design's ceiling for pmmap's benchmark (bench/bench.py).
//
// Starts `threads` threads; each reuses one libcurl easy handle (so one
// kept-alive connection) and POSTs ~80-byte JSON bodies to {url}/{key},
// reading each reply into a string, exactly the per-call work pmmap's
// workers cannot avoid, and nothing else: no queue, no locks, no outcome
// file. `total` requests are split across the threads.
//
// By default each request carries the headers of pmmap's webhook contract
// for a job without a secret (Content-Type, PMMAP-job, PMMAP-attempt), so
// that the request is byte for byte the size of pmmap's and the ratio
// measures only what pmmap does around its calls. With "plain" it sends
// only Content-Type, as a generic client would.
//
//   usage: bare_loop URL THREADS TOTAL [contract|plain]
//   prints: requests=N ok=N failed=N seconds=S rps=R cpu=S (user + system CPU seconds of the
//   process)
//
// Build: g++ -O2 -std=c++17 bare_loop.cpp -o bare_loop -lcurl -pthread

#include <curl/curl.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

size_t OnBody(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

// The same value as bench/bench.py's inputs: {"id":N,"payload":"xx...x"}, padded to 80 bytes.
std::string Body(long id) {
  std::string body = "{\"id\":" + std::to_string(id) + ",\"payload\":\"";
  body.append(body.size() + 2 < 80 ? 80 - 2 - body.size() : 8, 'x');
  body.append("\"}");
  return body;
}

struct Counts {
  long ok = 0;
  long failed = 0;
  std::string first_error;
};

void Run(const std::string& url, bool contract, long first, long count, Counts* counts) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr) {
    counts->failed = count;
    counts->first_error = "curl_easy_init failed";
    return;
  }
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, "Content-Type: application/json");
  if (contract) {
    // A job id is 16 hex digits; the first attempt is 1.
    headers = curl_slist_append(headers, "PMMAP-attempt: 1");
    headers = curl_slist_append(headers, "PMMAP-job: 0123456789abcdef");
  }
  std::string reply;
  std::string body;
  std::string target;
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(curl, CURLOPT_POST, 1L);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 30000L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &reply);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  for (long i = first; i < first + count; ++i) {
    body = Body(i);
    target = url + "/k" + std::to_string(i);
    reply.clear();
    curl_easy_setopt(curl, CURLOPT_URL, target.c_str());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    CURLcode code = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    if (code == CURLE_OK && status == 200 && reply.find("\"ok\":true") != std::string::npos) {
      ++counts->ok;
    } else {
      ++counts->failed;
      if (counts->first_error.empty()) {
        counts->first_error = "key k" + std::to_string(i) + ": curl " + curl_easy_strerror(code) +
                              " " + error + ", HTTP " + std::to_string(status) + ", reply " +
                              reply.substr(0, 200);
      }
    }
  }
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5 ||
      (argc == 5 && strcmp(argv[4], "contract") != 0 && strcmp(argv[4], "plain") != 0)) {
    fprintf(stderr, "usage: %s URL THREADS TOTAL [contract|plain]\n", argv[0]);
    return 2;
  }
  bool contract = argc == 4 || strcmp(argv[4], "contract") == 0;
  std::string url = argv[1];
  while (!url.empty() && url.back() == '/') url.pop_back();
  long threads = strtol(argv[2], nullptr, 10);
  long total = strtol(argv[3], nullptr, 10);
  if (threads < 1 || total < threads) {
    fprintf(stderr, "bare_loop: need THREADS >= 1 and TOTAL >= THREADS\n");
    return 2;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  std::vector<Counts> counts(threads);
  std::vector<std::thread> pool;
  auto start = std::chrono::steady_clock::now();
  long first = 0;
  for (long t = 0; t < threads; ++t) {
    long count = total / threads + (t < total % threads ? 1 : 0);
    pool.emplace_back(Run, url, contract, first, count, &counts[t]);
    first += count;
  }
  for (std::thread& t : pool) t.join();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  long ok = 0, failed = 0;
  std::string first_error;
  for (const Counts& c : counts) {
    ok += c.ok;
    failed += c.failed;
    if (first_error.empty()) first_error = c.first_error;
  }
  rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  double cpu = usage.ru_utime.tv_sec + usage.ru_stime.tv_sec +
               (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
  printf("requests=%ld ok=%ld failed=%ld seconds=%.3f rps=%.0f cpu=%.2f\n", total, ok, failed,
         seconds, total / seconds, cpu);
  if (failed > 0)
    fprintf(stderr, "bare_loop: %ld failed; first: %s\n", failed, first_error.c_str());
  curl_global_cleanup();
  return failed > 0 ? 1 : 0;
}

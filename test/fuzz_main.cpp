// libFuzzer target for everything pmmap parses from outside: the first byte
// picks the parser, the rest is its input. Besides crashes and sanitizer
// reports, it checks properties that must hold for any input: compact JSON
// is valid, means what the text it came from means, and compacts to itself;
// a reply kept as a string is valid JSON; the fast parsers accept only
// what RapidJSON accepts, with the same result; and a net that parses
// contains its own address.

#include <netinet/in.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "json.hpp"
#include "net_rules.hpp"
#include "request.hpp"

namespace {

constexpr unsigned kParseFlags = rapidjson::kParseValidateEncodingFlag |
                                 rapidjson::kParseIterativeFlag |
                                 rapidjson::kParseNumbersAsStringsFlag;

bool ValidJson(const std::string& text) {
  rapidjson::Document doc;
  doc.Parse<kParseFlags>(text.c_str(), text.size());
  return !doc.HasParseError();
}

// Both texts are valid JSON and hold the same values in the same order
// (numbers compared as text; repeated object keys kept). RapidJSON's own
// operator== would find only the first of two repeated keys.
bool SameJson(const std::string& a, const std::string& b) {
  auto canonical = [](const std::string& text, std::string* out) {
    rapidjson::Document doc;
    doc.Parse<kParseFlags>(text.c_str(), text.size());
    if (doc.HasParseError()) return false;
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
    doc.Accept(writer);
    out->assign(buffer.GetString(), buffer.GetSize());
    return true;
  };
  std::string ca;
  std::string cb;
  return canonical(a, &ca) && canonical(b, &cb) && ca == cb;
}

// Compact JSON must be valid and must compact to itself.
void CheckCompact(const std::string& compact) {
  std::string again;
  std::string error;
  if (!ValidJson(compact) || !AppendCompactJson(compact.data(), compact.size(), &again, &error) ||
      again != compact) {
    abort();
  }
}

std::multimap<std::string, std::string> SplitQuery(const std::string& query) {
  std::multimap<std::string, std::string> params;
  size_t start = 0;
  while (start <= query.size()) {
    size_t end = query.find('&', start);
    if (end == std::string::npos) end = query.size();
    std::string pair = query.substr(start, end - start);
    size_t eq = pair.find('=');
    params.emplace(pair.substr(0, eq), eq == std::string::npos ? "" : pair.substr(eq + 1));
    start = end + 1;
  }
  return params;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string input(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 5) {
    case 0: {  // the body of POST /job
      JobOptions options;
      if (ParseJobOptions(input, &options).ok() && options.url.empty()) abort();
      break;
    }
    case 1: {  // the body of PUT /job/{id}/input
      std::vector<Input> inputs;
      if (ParseInputs(input, &inputs).ok()) {
        for (const Input& in : inputs) {
          if (in.key.empty() || in.key.size() > kMaxKeyBytes) abort();
          CheckCompact(in.value);
        }
      }
      // The fast parser accepts only what the full one accepts, as the same inputs.
      std::vector<Input> fast;
      if (IsValidUtf8(input.data(), input.size()) && ParseInputsFast(input, &fast)) {
        std::vector<Input> full;
        if (!ParseInputsFully(input, &full).ok() || full.size() != fast.size()) abort();
        for (size_t i = 0; i < full.size(); ++i) {
          if (full[i].key != fast[i].key || full[i].value != fast[i].value) abort();
        }
      }
      break;
    }
    case 2: {  // the query of GET /job/{id}/output
      OutputQuery query;
      ParseOutputQuery(SplitQuery(input), input, &query);
      break;
    }
    case 3: {  // a webhook's reply, stored as JSON or as a string
      std::string value;
      std::string error;
      // The fast check accepts only what RapidJSON accepts.
      const char* end = input.data() + input.size();
      const char* value_end = IsValidUtf8(input.data(), input.size())
                                  ? SkipJsonValue(input.data(), end, kMaxJsonDepth)
                                  : nullptr;
      if (value_end != nullptr && SkipJsonSpace(value_end, end) == end &&
          (!ValidJson(input) || !JsonDepthWithin(input.data(), input.size(), kMaxJsonDepth))) {
        abort();
      }
      if (AppendCompactJson(input.data(), input.size(), &value, &error)) {
        CheckCompact(value);
        if (!SameJson(input, value)) abort();
      } else {
        value.clear();
        AppendJsonString(input, &value);
        if (!ValidJson(value)) abort();
      }
      break;
    }
    case 4: {  // a --deny-net or --allow-net value
      Cidr net;
      std::string error;
      if (!ParseCidr(input, &net, &error)) {
        if (error.empty()) abort();
        break;
      }
      const int max = net.family == AF_INET ? 32 : 128;
      if (net.prefix < 0 || net.prefix > max || !net.Contains(net.family, net.bytes)) abort();
      NetRules rules;
      rules.Deny(net);
      sockaddr_in6 addr{};
      addr.sin6_family = static_cast<sa_family_t>(net.family);
      if (net.family == AF_INET) {
        memcpy(&reinterpret_cast<sockaddr_in*>(&addr)->sin_addr, net.bytes, 4);
      } else {
        memcpy(&addr.sin6_addr, net.bytes, 16);
      }
      if (rules.Judge(reinterpret_cast<const sockaddr*>(&addr)).allowed) abort();
      break;
    }
  }
  return 0;
}

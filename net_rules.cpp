#include "net_rules.hpp"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>

#include <cstring>

const char* const kDefaultDeniedNets[2] = {"169.254.0.0/16", "fe80::/10"};

namespace {

// ::ffff:0:0/96, the prefix of an IPv4-mapped IPv6 address.
constexpr uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

bool IsMapped(const uint8_t* bytes16) {
  return memcmp(bytes16, kMappedPrefix, sizeof(kMappedPrefix)) == 0;
}

// Whether the first bits bits of a and b are equal.
bool SamePrefix(const uint8_t* a, const uint8_t* b, int bits) {
  int whole = bits / 8;
  if (memcmp(a, b, whole) != 0) return false;
  int rest = bits % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

bool ParsePrefix(const std::string& text, int max, int* prefix) {
  if (text.empty() || text.size() > 3 || text.find_first_not_of("0123456789") != std::string::npos)
    return false;
  *prefix = std::stoi(text);
  return *prefix <= max;
}

std::string AddressText(int family, const uint8_t* bytes) {
  char text[INET6_ADDRSTRLEN] = {0};
  inet_ntop(family, bytes, text, sizeof(text));
  return text;
}

}  // namespace

bool Cidr::Contains(int address_family, const uint8_t* address) const {
  return address_family == family && SamePrefix(address, bytes, prefix);
}

bool ParseCidr(const std::string& text, Cidr* cidr, std::string* error) {
  size_t slash = text.find('/');
  std::string address = text.substr(0, slash);
  Cidr parsed;
  parsed.text = text;
  if (inet_pton(AF_INET, address.c_str(), parsed.bytes) == 1) {
    parsed.family = AF_INET;
  } else if (inet_pton(AF_INET6, address.c_str(), parsed.bytes) == 1) {
    parsed.family = AF_INET6;
  } else {
    *error = "\"" + text + "\" is not a net such as 10.0.0.0/8 or fe80::/10 (\"" + address +
             "\" is not an IPv4 or IPv6 address)";
    return false;
  }
  const int max = parsed.family == AF_INET ? 32 : 128;
  parsed.prefix = max;
  if (slash != std::string::npos && !ParsePrefix(text.substr(slash + 1), max, &parsed.prefix)) {
    *error =
        "\"" + text + "\": the prefix length must be a number from 0 to " + std::to_string(max);
    return false;
  }
  // Host bits set past the prefix are most likely a typo for another net.
  for (int bit = parsed.prefix; bit < max; ++bit) {
    if (parsed.bytes[bit / 8] & (0x80 >> (bit % 8))) {
      Cidr masked = parsed;
      for (int b = parsed.prefix; b < max; ++b) masked.bytes[b / 8] &= ~(0x80 >> (b % 8));
      *error = "\"" + text + "\" has bits set past its prefix (did you mean " +
               AddressText(parsed.family, masked.bytes) + "/" + std::to_string(parsed.prefix) +
               "?)";
      return false;
    }
  }
  if (parsed.family == AF_INET6 && parsed.prefix >= 96 && IsMapped(parsed.bytes)) {
    memmove(parsed.bytes, parsed.bytes + 12, 4);
    memset(parsed.bytes + 4, 0, 12);
    parsed.family = AF_INET;
    parsed.prefix -= 96;
  }
  *cidr = parsed;
  return true;
}

std::string NetJudgement::Reason() const {
  if (allowed) return "";
  if (rule.empty()) return "address " + address + " is not an IPv4 or IPv6 address";
  return "address " + address + " is in denied net " + rule;
}

NetRules::NetRules() {
  for (const char* text : kDefaultDeniedNets) {
    Cidr net;
    std::string error;
    ParseCidr(text, &net, &error);
    denied_.push_back(net);
  }
}

NetJudgement NetRules::Judge(const sockaddr* addr) const {
  if (addr->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(addr);
    return JudgeBytes(AF_INET, reinterpret_cast<const uint8_t*>(&in->sin_addr));
  }
  if (addr->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(addr);
    return JudgeBytes(AF_INET6, reinterpret_cast<const uint8_t*>(&in6->sin6_addr));
  }
  NetJudgement judgement;
  judgement.allowed = false;
  judgement.address = "of family " + std::to_string(addr->sa_family);
  return judgement;
}

bool NetRules::JudgeLiteral(const std::string& text, NetJudgement* judgement) const {
  uint8_t bytes[16];
  if (inet_pton(AF_INET, text.c_str(), bytes) == 1) {
    *judgement = JudgeBytes(AF_INET, bytes);
    return true;
  }
  if (inet_pton(AF_INET6, text.c_str(), bytes) == 1) {
    *judgement = JudgeBytes(AF_INET6, bytes);
    return true;
  }
  return false;
}

NetJudgement NetRules::JudgeBytes(int family, const uint8_t* bytes) const {
  // An IPv4-mapped address reaches the IPv4 host it carries.
  if (family == AF_INET6 && IsMapped(bytes)) {
    family = AF_INET;
    bytes += 12;
  }
  NetJudgement judgement;
  judgement.address = AddressText(family, bytes);
  for (const Cidr& net : allowed_) {
    if (net.Contains(family, bytes)) {
      judgement.rule = net.text;
      return judgement;
    }
  }
  for (const Cidr& net : denied_) {
    if (net.Contains(family, bytes)) {
      judgement.allowed = false;
      judgement.rule = net.text;
      return judgement;
    }
  }
  return judgement;
}

std::string CheckUrlAddress(const NetRules& rules, const std::string& field,
                            const std::string& url) {
  CURLU* parsed = curl_url();
  char* host = nullptr;
  std::string error;
  if (parsed != nullptr && curl_url_set(parsed, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK &&
      curl_url_get(parsed, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
    // libcurl gives an IPv6 host in brackets, and its zone id apart.
    std::string literal = host;
    if (literal.size() > 2 && literal.front() == '[' && literal.back() == ']') {
      literal = literal.substr(1, literal.size() - 2);
    }
    NetJudgement judgement;
    if (rules.JudgeLiteral(literal, &judgement) && !judgement.allowed) {
      error = field + ": " + judgement.Reason();
    }
  }
  curl_free(host);
  curl_url_cleanup(parsed);
  return error;
}

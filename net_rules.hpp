// NetRules say which addresses pmmap may call: a list of denied nets and a
// list of allowed ones, each a CIDR ("10.0.0.0/8", "fe80::/10"). An address
// in an allowed net is allowed even inside a denied one; an address in no
// net is allowed. The server builds one from its flags (--deny-net,
// --allow-net, on top of kDefaultDeniedNets), checks the IP literals of a
// job's URLs with it at POST /job, and hands it to every WebhookClient,
// which judges each address libcurl is about to connect to.
//
// Thread-compatible: built once before any thread starts, then only read.

#ifndef PMMAP_NET_RULES_HPP_
#define PMMAP_NET_RULES_HPP_

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <vector>

// Denied unless an --allow-net says otherwise: link-local, where cloud
// metadata services listen (169.254.169.254; AWS's IPv6 one, fd00:ec2::254,
// is a private address instead, which the README's lock-down denies).
extern const char* const kDefaultDeniedNets[2];

// An IPv4 or IPv6 net. An IPv4-mapped IPv6 net (::ffff:a.b.c.d/96 and
// longer) is kept as the IPv4 net it maps, since addresses are judged so.
struct Cidr {
  int family = AF_INET;  // AF_INET or AF_INET6
  uint8_t bytes[16] = {0};
  int prefix = 0;    // leading bits that count: 0..32 or 0..128
  std::string text;  // as the caller wrote it, for messages

  // Whether the address of family in bytes (4 or 16 of them) is in this net.
  bool Contains(int family, const uint8_t* bytes) const;
};

// Parses "ADDRESS/PREFIX" or a bare ADDRESS (/32 or /128) into *cidr.
// Returns false, saying why in *error, for anything else, or for a net
// whose address has bits set past its prefix ("10.0.0.1/8").
bool ParseCidr(const std::string& text, Cidr* cidr, std::string* error);

// What NetRules made of one address.
struct NetJudgement {
  bool allowed = true;
  std::string address;  // the address judged, as text (IPv4 for a mapped one)
  std::string rule;     // the net that decided, as written; "" when none matched

  // "address 169.254.169.254 is in denied net 169.254.0.0/16", or "" if allowed.
  std::string Reason() const;
};

class NetRules {
 public:
  // The default rules: kDefaultDeniedNets denied, nothing allowed.
  NetRules();

  void Deny(const Cidr& net) { denied_.push_back(net); }
  void Allow(const Cidr& net) { allowed_.push_back(net); }
  const std::vector<Cidr>& denied() const { return denied_; }
  const std::vector<Cidr>& allowed() const { return allowed_; }

  // Judges the address of an AF_INET or AF_INET6 sockaddr; any other family
  // is denied, since it is not what a webhook call should dial.
  NetJudgement Judge(const sockaddr* addr) const;
  // Judges an IP literal (brackets and a zone id already stripped). Returns
  // false, judging nothing, if text is not one.
  bool JudgeLiteral(const std::string& text, NetJudgement* judgement) const;

 private:
  NetJudgement JudgeBytes(int family, const uint8_t* bytes) const;

  std::vector<Cidr> denied_;
  std::vector<Cidr> allowed_;
};

// Returns an error for field (such as "url") if url's host is an IP literal
// that rules deny, or "" if it is not denied (or not a literal: a name is
// judged when libcurl resolves it). url has passed CheckWebhookUrl.
std::string CheckUrlAddress(const NetRules& rules, const std::string& field,
                            const std::string& url);

#endif  // PMMAP_NET_RULES_HPP_

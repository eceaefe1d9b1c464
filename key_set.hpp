// KeySet remembers which input keys a job has seen, in a slot of 8 bytes a
// key (11 to 23 bytes a key with the table's load), so a
// job of a million inputs can refuse a repeated key without holding a
// million strings. It stores a 64-bit hash of each key in an open-addressing
// table: two different keys share a hash with odds of about n^2 / 2^65
// (3 in 100 million for a million keys), and such a pair is refused as a
// repeat. Not thread-safe: Job guards it with its mutex.

#ifndef PMMAP_KEY_SET_HPP_
#define PMMAP_KEY_SET_HPP_

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

class KeySet {
 public:
  // A hash seeded at random per process, finished with splitmix64's mixer,
  // so that keys crafted to share slots in one server do not in another.
  static uint64_t Hash(const std::string& key) {
    static const uint64_t seed = std::random_device{}() * 0x9E3779B97F4A7C15ull;
    uint64_t h = std::_Hash_bytes(key.data(), key.size(), static_cast<size_t>(seed));
    h ^= seed;
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    h ^= h >> 31;
    return h == kEmpty ? 1 : h;
  }

  bool Contains(uint64_t hash) const {
    if (slots_.empty()) return false;
    for (size_t i = hash & mask();; i = (i + 1) & mask()) {
      if (slots_[i] == hash) return true;
      if (slots_[i] == kEmpty) return false;
    }
  }

  // Adds hash; returns false if it was already there.
  bool Insert(uint64_t hash) {
    if ((size_ + 1) * 10 > slots_.size() * 7) Grow();
    for (size_t i = hash & mask();; i = (i + 1) & mask()) {
      if (slots_[i] == hash) return false;
      if (slots_[i] == kEmpty) {
        slots_[i] = hash;
        ++size_;
        return true;
      }
    }
  }

  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = 0;
  static constexpr size_t kInitialSlots = 64;

  size_t mask() const { return slots_.size() - 1; }

  void Grow() {
    std::vector<uint64_t> old;
    old.swap(slots_);
    slots_.assign(old.empty() ? kInitialSlots : old.size() * 2, kEmpty);
    size_ = 0;
    for (uint64_t h : old) {
      if (h != kEmpty) Insert(h);
    }
  }

  std::vector<uint64_t> slots_;
  size_t size_ = 0;
};

#endif  // PMMAP_KEY_SET_HPP_

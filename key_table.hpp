// KeyTable remembers, for each input key a job has accepted, a hash of the
// value it came with, so that a key sent again can be told apart as a
// repeat of the same input (accepted once) or a clash (refused), without
// holding a million strings for a job of a million inputs. Each key takes a
// slot of 16 bytes, a 64-bit hash of the key beside a 64-bit hash of its
// value (23 to 46 bytes a key with the table's load), in an open-addressing
// table.
//
// Two different keys share a key hash with odds of about n^2 / 2^65 (3 in
// 100 million for a million keys); the later one is then refused as a
// repeat with a different value. It would be taken as a repeat, accepted and
// never sent, only if its value hash matched too; since the value hash
// covers the key's bytes as well (ValueHash), that takes a second,
// independent 64-bit collision, odds about n^2 / 2^129, even when the two
// keys carry the same value. The value hash's lowest bit is the table's
// own: a job resumed from its files marks there the keys that already have
// an outcome (MarkDone), so that it holds one table, not two. Not
// thread-safe: Job guards it with its mutex.

#ifndef PMMAP_KEY_TABLE_HPP_
#define PMMAP_KEY_TABLE_HPP_

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

class KeyTable {
 public:
  // The hash of a key, seeded at random per process, so that keys crafted
  // to share slots in one server do not in another. Never 0.
  static uint64_t KeyHash(const std::string& key) {
    uint64_t h = Mix(HashBytes(key, Seed()));
    return h == kEmpty ? 1 : h;
  }

  // The hash of value (compact JSON, as in Input::value) sent with key. It
  // hashes the key again, with another seed, before the value, so that two
  // different keys whose KeyHash collide still differ here.
  // Its lowest bit is always 0: the table keeps its own mark there
  // (MarkDone).
  static uint64_t ValueHash(const std::string& key, const std::string& value) {
    return Mix(HashBytes(value, HashBytes(key, Seed() ^ kValueTweak))) & ~kDoneBit;
  }

  // Sets *value_hash to key_hash's value hash and returns true, or returns
  // false if key_hash is not in the table.
  bool Find(uint64_t key_hash, uint64_t* value_hash) const {
    if (slots_.empty()) return false;
    for (size_t i = key_hash & mask();; i = (i + 1) & mask()) {
      if (slots_[i].key_hash == key_hash) {
        *value_hash = slots_[i].value_hash & ~kDoneBit;
        return true;
      }
      if (slots_[i].key_hash == kEmpty) return false;
    }
  }

  bool Contains(uint64_t key_hash) const {
    uint64_t value_hash;
    return Find(key_hash, &value_hash);
  }

  // Adds key_hash with value_hash; returns false, changing nothing, if
  // key_hash was already there.
  bool Insert(uint64_t key_hash, uint64_t value_hash) {
    if ((size_ + 1) * 10 > slots_.size() * 7) Grow();
    for (size_t i = key_hash & mask();; i = (i + 1) & mask()) {
      if (slots_[i].key_hash == key_hash) return false;
      if (slots_[i].key_hash == kEmpty) {
        slots_[i] = Slot{key_hash, value_hash};
        ++size_;
        return true;
      }
    }
  }

  size_t size() const { return size_; }

  // Makes room for n keys in all, so that adding them never grows the
  // table (which holds the old and the new slots at once while it does).
  void Reserve(size_t n) {
    size_t slots = kInitialSlots;
    while (n * 10 > slots * 7) slots *= 2;
    if (slots > slots_.size()) Grow(slots);
  }

  // Marks key_hash as having an outcome, for a job resumed from its files
  // (which then holds one table, not two). Returns false if key_hash is
  // not in the table or was marked before.
  bool MarkDone(uint64_t key_hash) {
    Slot* slot = SlotOf(key_hash);
    if (slot == nullptr || (slot->value_hash & kDoneBit) != 0) return false;
    slot->value_hash |= kDoneBit;
    return true;
  }
  bool IsDone(uint64_t key_hash) {
    Slot* slot = SlotOf(key_hash);
    return slot != nullptr && (slot->value_hash & kDoneBit) != 0;
  }

 private:
  struct Slot {
    uint64_t key_hash;
    uint64_t value_hash;
  };
  static_assert(sizeof(Slot) == 16, "a key takes 16 bytes");

  static constexpr uint64_t kEmpty = 0;  // a free slot's key_hash
  static constexpr size_t kInitialSlots = 64;
  static constexpr uint64_t kValueTweak = 0x5851F42D4C957F2Dull;
  static constexpr uint64_t kDoneBit = 1;  // in value_hash: MarkDone's mark

  Slot* SlotOf(uint64_t key_hash) {
    if (slots_.empty()) return nullptr;
    for (size_t i = key_hash & mask();; i = (i + 1) & mask()) {
      if (slots_[i].key_hash == key_hash) return &slots_[i];
      if (slots_[i].key_hash == kEmpty) return nullptr;
    }
  }

  static uint64_t Seed() {
    static const uint64_t seed = std::random_device{}() * 0x9E3779B97F4A7C15ull;
    return seed;
  }

  static uint64_t HashBytes(const std::string& bytes, uint64_t seed) {
    return std::_Hash_bytes(bytes.data(), bytes.size(), static_cast<size_t>(seed));
  }

  // splitmix64's finisher, over the seed, so that every bit of the result
  // depends on every bit of the hash.
  static uint64_t Mix(uint64_t h) {
    h ^= Seed();
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    return h ^ (h >> 31);
  }

  size_t mask() const { return slots_.size() - 1; }

  void Grow() { Grow(slots_.empty() ? kInitialSlots : slots_.size() * 2); }

  // Moves every slot into a table of `slots` slots, a power of 2.
  void Grow(size_t slots) {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(slots, Slot{kEmpty, 0});
    size_ = 0;
    for (const Slot& slot : old) {
      if (slot.key_hash != kEmpty) Insert(slot.key_hash, slot.value_hash);
    }
  }

  std::vector<Slot> slots_;
  size_t size_ = 0;
};

#endif  // PMMAP_KEY_TABLE_HPP_

// The adapters a server knows about. Thousands may be registered (cheap: a path and a size);
// at most Limits::max_resident of them, within Limits::max_bytes, are resident, each in a
// slot. Merged adapters (LoRAX merged_adapters) have no folder: their tensors are computed once
// from the components and held in memory; they occupy a slot like any other while resident. A request pins its adapter's slot for its lifetime (acquire/release); residents that
// no request pins are evicted least-recently-used first when another adapter needs room.
//
// The ops see adapters only through projection(layer, target): one LoraProjection per target
// projection with an entry per slot, whose storage never moves, so the model can keep the
// reference. A slot's entries change only when the slot is (re)filled or emptied. With a
// device backend (use_backend), filling a slot uploads the adapter's tensors (f32, one
// allocation) to the backend's memory and the entries point there; emptying frees it.
//
// Threads: every public method takes the bookkeeping mutex, so registration may come from any
// thread. acquire() and release() belong to the engine thread, which is also the only reader
// of projection() and max_rank(); a slot that a running step uses is pinned, so nothing else
// touches its entries while the step reads them.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "backends/ops.h"
#include "lora/adapter.h"

namespace mil {

class AdapterStore {
 public:
  struct Limits {
    int max_resident = 8;                 // slots
    size_t max_bytes = size_t{1} << 30;  // host bytes of all resident adapters together
  };

  AdapterStore(const ModelConfig& base, ShardSpec shard, Limits limits);
  AdapterStore(const AdapterStore&) = delete;
  AdapterStore& operator=(const AdapterStore&) = delete;

  // Registers the PEFT adapter folder `path` under `name`. Validates the config and every
  // tensor's shape now (reading the safetensors header, not the weights), so a bad adapter
  // fails here. Errors: invalid or duplicate name, an adapter larger than max_bytes.
  void add(const std::string& name, const std::string& path);
  // Registers under `name` the LoRAX "linear" merge of registered adapters (see
  // merge_lora_adapters_linear in lora/adapter.h), each with its weight. Reads the components
  // (from memory when resident) and keeps the merged tensors in memory for as long as it is
  // registered; later removing a component does not affect it. Errors: as add(), an unknown
  // component, or components LoRAX would refuse to merge (different ranks).
  void add_merged(const std::string& name, const std::vector<std::pair<std::string, float>>& components);
  // Unregisters and frees. Error if unknown, or pinned by a running request.
  void remove(const std::string& name);

  // The characters and length add() accepts in a name.
  static bool valid_name(std::string_view name);

  bool contains(const std::string& name) const;
  bool resident(const std::string& name) const;  // false when unknown
  std::vector<std::string> names() const;  // sorted
  size_t registered_count() const;
  size_t resident_count() const;
  size_t resident_bytes() const;
  int32_t num_slots() const { return static_cast<int32_t>(slots_.size()); }

  // Makes `name` resident (loading it, evicting unpinned LRU residents as needed), pins it and
  // returns its slot in [0, num_slots()). Errors: unknown name (never the base model instead),
  // a load failure, or no room because every resident adapter is pinned.
  int32_t acquire(const std::string& name);
  // Unpins a slot returned by acquire().
  void release(int32_t slot);

  // The name in `slot`, "" when free. For tests, metrics and logs.
  std::string slot_name(int32_t slot) const;
  // Pins on the adapter `name` (0 when unknown or not resident).
  int32_t pins(const std::string& name) const;
  // Which registration `name` is now (0 when unknown): unique over the store's life, so an
  // adapter removed and registered again under the same name (other weights, maybe) has
  // another. Keys of things computed with an adapter (the engine's prefix cache) use it.
  uint64_t registration(const std::string& name) const;
  // The registration that fills `slot` (pinned by the caller), 0 when free.
  uint64_t slot_registration(int32_t slot) const;

  // Slots filled from now on hold their tensors in `ops`'s memory (a device backend's; the
  // CPU backend reads the host copies in place). Call before the first acquire; `ops` must
  // outlive the store and is used on the thread that calls acquire (the engine thread).
  void use_backend(Ops& ops);

  // Engine thread only; see the top of this file.
  const LoraProjection& projection(int64_t layer, LoraTarget target) const;
  int32_t max_rank() const { return max_rank_.load(std::memory_order_relaxed); }

 private:
  struct Entry {
    std::string path;                            // PEFT folder; "" for in-memory adapters
    std::shared_ptr<const LoraAdapter> memory;   // in-memory (merged) adapters: always set
    size_t bytes = 0;  // what loading it takes, computed at registration
    int32_t slot = -1;
    int32_t pins = 0;
    uint64_t last_used = 0;
    uint64_t registration = 0;                   // see registration()
    std::shared_ptr<const LoraAdapter> adapter;  // set while resident
  };
  // Per target projection: one entry per slot, pointed to by `proj`.
  struct Table {
    std::vector<Tensor> a, b;
    std::vector<float> scale;
    LoraProjection proj;
  };

  Table& table(int64_t layer, LoraTarget t) { return tables_[layer * kNumLoraTargets + static_cast<int>(t)]; }
  Entry& find_locked(const std::string& name, const char* action);
  void fill_slot_locked(int32_t slot, Entry& e);
  void free_slot_locked(int32_t slot);
  void update_max_rank_locked();

  const ModelConfig base_;
  const ShardSpec shard_;
  const Limits limits_;
  mutable std::mutex mu_;
  std::map<std::string, Entry, std::less<>> entries_;
  std::vector<Entry*> slots_;  // owner of each slot, nullptr when free (map nodes never move)
  size_t resident_bytes_ = 0;
  uint64_t clock_ = 0;  // ticks per acquire; orders least-recently-used
  uint64_t registrations_ = 0;  // the last registration() handed out
  std::vector<Table> tables_;
  std::atomic<int32_t> max_rank_{0};
  uint64_t generation_ = 0;  // bumped on every slot change (LoraProjection::generation)
  Ops* backend_ = nullptr;                 // use_backend's; nullptr: host tensors in place
  std::vector<OwnedTensor> device_slots_;  // per slot: its adapter's tensors in device memory
};

}  // namespace mil
